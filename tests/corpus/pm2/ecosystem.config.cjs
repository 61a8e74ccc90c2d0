module.exports = {
  apps: [{ name: "cjs-app", script: "worker.js", instances: 1, env_production: { NODE_ENV: "production" } }],
};
