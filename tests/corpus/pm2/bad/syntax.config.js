module.exports = {
  apps: [
    { name: "a" script: "../worker.js" },
  ],
};
