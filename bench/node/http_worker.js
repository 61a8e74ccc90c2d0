// The Node twin of examples/web.py for bench/dispatch.py: the same body
// ("hello from web instance N pid P\n", same length), keep-alive, graceful stop.
// One program for every way it runs:
//   - under Node's cluster module (bench/node/cluster_rr.js) or PM2 cluster mode:
//     listen($PORT) goes through the cluster primary;
//   - under clusterui `dispatch: shared`: the listening socket is fd 3 (LISTEN_FDS=1,
//     LISTEN_PID = our pid, systemd's convention);
//   - under clusterui `dispatch: proxy` or alone: listen on $PORT.
"use strict";
const http = require("http");

const instance = process.env.NODE_APP_INSTANCE || process.env.CLUSTERUI_INSTANCE || "0";
const body = Buffer.from(`hello from web instance ${instance} pid ${process.pid}\n`);
const headers = { "Content-Type": "text/plain", "Content-Length": body.length };
const closing = { ...headers, Connection: "close" };
let stopping = false;

const server = http.createServer((req, res) => {
  res.sendDate = false; // examples/web.py sends no Date header either
  // While stopping, answer and close, as examples/web.py does while it drains.
  res.writeHead(200, stopping ? closing : headers);
  res.end(body);
});
server.keepAliveTimeout = 60000; // wrk keeps its connections busy; do not cut them

const inherited =
  process.env.LISTEN_FDS === "1" && Number(process.env.LISTEN_PID) === process.pid;
if (inherited) {
  server.listen({ fd: 3 });
} else {
  server.listen(Number(process.env.PORT || 8000), process.env.HOST || "127.0.0.1");
}

// Graceful stop (PM2's recommended pattern): stop accepting, finish what is open.
// server.close() also closes idle keep-alive connections (Node >= 19).
const stop = () => {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections?.();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
