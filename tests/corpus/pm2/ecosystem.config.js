// The shape `pm2 init simple` / the PM2 docs give, as found in many repositories.
const path = require("path");

module.exports = {
  apps: [
    {
      name: "api",
      script: "./server.js",
      instances: "max",
      exec_mode: "cluster",
      watch: false,
      max_memory_restart: "1G",
      node_args: "--max-old-space-size=4096",
      env: {
        NODE_ENV: "development",
        PORT: 3000,
      },
      env_production: {
        NODE_ENV: "production",
        PORT: 8080,
      },
      error_file: path.join(__dirname, "logs", "api-error.log"),
      out_file: "./logs/api-out.log",
      log_date_format: "YYYY-MM-DD HH:mm Z",
      merge_logs: true,
      time: true,
    },
    {
      name: "worker",
      script: "worker.js",
      instances: "2",
      autorestart: true,
      max_restarts: "10",
      min_uptime: "10s",
      restart_delay: 4000,
      kill_timeout: 3000,
      cron_restart: "0 0 * * *",
      env: {
        QUEUE: process.env.QUEUE_NAME || "default",
      },
    },
  ],

  deploy: {
    production: {
      user: "deploy",
      host: ["203.0.113.10"],
      ref: "origin/main",
      repo: "git@github.com:example/app.git",
      path: "/var/www/app",
      "post-deploy": "npm install && pm2 reload ecosystem.config.js --env production",
    },
  },
};
