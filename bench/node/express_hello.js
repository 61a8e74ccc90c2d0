// The same unmodified Express app under clusterui, PM2 cluster mode and Node's cluster
// module (bench/node_cluster.py). Port: $PORT, else 3000.
"use strict";
const express = require("express");

const app = express();
app.get("/", (req, res) => res.send(`hello from pid ${process.pid}\n`));

const server = app.listen(Number(process.env.PORT || 3000));

// What a careful PM2 user writes: close the server on SIGINT, then exit.
process.on("SIGINT", () => server.close(() => process.exit(0)));
