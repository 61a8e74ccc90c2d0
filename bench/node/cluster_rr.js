// Node's cluster module as an anchor for bench/dispatch.py: a primary that forks
// N workers running bench/node/http_worker.js on $PORT.
//   node cluster_rr.js [N] [rr|none]
// rr (default): cluster.SCHED_RR, the primary accepts and passes each connection to
// the next worker (what clusterui's round-robin is compared with).
// none: cluster.SCHED_NONE, the workers share the listening socket and the kernel
// spreads connections (Node's counterpart of SO_REUSEPORT / clusterui `shared`).
"use strict";
const cluster = require("cluster");
const path = require("path");

const workers = Number(process.argv[2] || 2);
const policy = process.argv[3] || "rr";

if (cluster.isPrimary) {
  // Must be set before the first fork.
  cluster.schedulingPolicy = policy === "none" ? cluster.SCHED_NONE : cluster.SCHED_RR;
  cluster.setupPrimary({ exec: path.join(__dirname, "http_worker.js") });
  let listening = 0;
  for (let i = 0; i < workers; i++) {
    cluster.fork({ NODE_APP_INSTANCE: String(i) });
  }
  cluster.on("listening", () => {
    listening += 1;
    if (listening === workers) console.log(`ready ${workers} ${policy}`);
  });
  const stop = () => {
    for (const w of Object.values(cluster.workers)) w.kill("SIGTERM");
    process.exit(0);
  };
  process.on("SIGINT", stop);
  process.on("SIGTERM", stop);
}
