// Node's cluster module running an unmodified app: node cluster_primary.js N APP.js
// Round-robin (SCHED_RR, Node's default on Linux). SIGHUP: a rolling reload as a user
// would write it: fork a new worker, wait until it listens, disconnect the old one
// (its servers close, open connections finish), wait for its exit, next.
"use strict";
const cluster = require("cluster");
const path = require("path");

const count = Number(process.argv[2] || 2);
const app = path.resolve(process.argv[3]);
cluster.schedulingPolicy = cluster.SCHED_RR;
cluster.setupPrimary({ exec: app });

const fork = (i) => {
  const w = cluster.fork({ NODE_APP_INSTANCE: String(i) });
  w.instance = i;
  return w;
};
for (let i = 0; i < count; i++) fork(i);
let listening = 0;
cluster.on("listening", () => {
  if (++listening === count) console.log(`ready ${count}`);
});

let reloading = false;
process.on("SIGHUP", async () => {
  if (reloading) return;
  reloading = true;
  for (const old of Object.values(cluster.workers)) {
    const fresh = fork(old.instance);
    await new Promise((resolve) => fresh.once("listening", resolve));
    const gone = new Promise((resolve) => old.once("exit", resolve));
    old.disconnect();
    await gone;
  }
  reloading = false;
  console.log("reloaded");
});
process.on("SIGTERM", () => {
  for (const w of Object.values(cluster.workers)) w.process.kill("SIGKILL");
  process.exit(0);
});
