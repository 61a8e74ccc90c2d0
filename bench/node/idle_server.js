// The idle worker for bench/idle.py: the same program runs under clusterui and PM2.
// An HTTP server that nobody calls (on $PORT if set, else an ephemeral port) and a
// timer that fires once a second, so the event loop is alive but idle.
"use strict";
const http = require("http");

const server = http.createServer((req, res) => res.end("idle\n"));
server.listen(Number(process.env.PORT || 0), "127.0.0.1");

let ticks = 0;
setInterval(() => {
  ticks += 1;
}, 1000);

const stop = () => server.close(() => process.exit(0));
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
