module.exports = {
  apps: [
    { name: "fine", script: "../worker.js" },
    { name: "broken", script: "../worker.js", instances: true, max_restarts: "many" },
  ],
};
