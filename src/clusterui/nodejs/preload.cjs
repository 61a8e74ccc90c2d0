'use strict';
// clusterui's preload for Node workers in cluster mode (node --require <this file>).
//
// Like Node's cluster module in a worker, it turns the app's own server.listen() into a
// registration: the server does not bind; clusterui's dispatcher accepts on the shared
// socket and hands each connection over Node's IPC channel (NODE_CHANNEL_FD) as a
// NODE_HANDLE message, which this file gives to the server. Every message of ours is an
// internal one ({"cmd": "NODE_CLUSTERUI", ...}), so the app's process.on('message')
// never sees it. Wire format: README, "The Node channel".
//
// It does nothing unless clusterui started this process with its channel (CLUSTERUI_NODE).

(function clusteruiPreload() {
  if (process.env.CLUSTERUI_NODE !== '1') return;
  const env = process.env;
  const waitReady = env.CLUSTERUI_WAIT_READY === '1';
  const shutdownWithMessage = env.CLUSTERUI_SHUTDOWN_WITH_MESSAGE === '1';
  const killSignal = env.CLUSTERUI_KILL_SIGNAL || 'SIGINT';
  const idleGrace = Number(env.CLUSTERUI_IDLE_GRACE_MS) || 1000;
  // Not for the app's own children (a child node started by the app is not a worker).
  for (const key of ['CLUSTERUI_NODE', 'CLUSTERUI_WAIT_READY', 'CLUSTERUI_SHUTDOWN_WITH_MESSAGE',
    'CLUSTERUI_KILL_SIGNAL', 'CLUSTERUI_IDLE_GRACE_MS']) {
    delete env[key];
  }
  if (typeof process.send !== 'function' || !process.channel) return;

  const net = require('net');
  const TAG = 'NODE_CLUSTERUI';
  const SWEEP_MS = 100;

  const send = (msg) => {
    if (!process.connected) return;
    msg.cmd = TAG;
    process.send(msg, undefined, { swallowErrors: true }, () => {});
  };

  // ---- the servers that registered instead of binding --------------------------------

  const servers = new Set(); // listening now
  const entries = new Set(); // every server that ever registered: drained together
  let bound = null; // the address the dispatcher listens on, once known
  let waiting = []; // listen() calls waiting for the dispatcher's answer
  let ready = false;
  let appReady = !waitReady;
  let draining = false;
  let closedCount = 0;
  let flushScheduled = false;
  let refs = 0;
  let cursor = 0;

  // A listening server keeps the process alive, as a bound one would.
  const keepAlive = setInterval(() => {
    if (!process.connected) startDrain(); // the supervisor is gone
  }, 1000);
  keepAlive.unref();
  const ref = (d) => {
    refs += d;
    if (refs > 0) keepAlive.ref(); else keepAlive.unref();
  };

  function flushClosed() {
    flushScheduled = false;
    if (closedCount) {
      send({ t: 'closed', n: closedCount });
      closedCount = 0;
    }
  }

  function maybeReady() {
    if (!ready && appReady && !draining && servers.size) {
      ready = true;
      send({ t: 'ready' });
    }
  }

  // PM2's wait_ready contract: the app says process.send('ready') when it can serve.
  const originalSend = process.send;
  process.send = function clusteruiSend(message, ...rest) {
    if (message === 'ready' && !appReady) {
      appReady = true;
      process.nextTick(maybeReady);
    }
    return originalSend.call(this, message, ...rest);
  };

  function makeHandle(entry) {
    const handle = {
      listen() { return 0; },
      close(cb) {
        if (servers.delete(entry)) {
          if (entry.reffed) ref(-1);
          if (!servers.size && ready && !draining) {
            ready = false;
            send({ t: 'unready' });
          }
        }
        if (typeof cb === 'function') process.nextTick(cb);
      },
      ref() { if (!entry.reffed) { entry.reffed = true; ref(1); } },
      unref() { if (entry.reffed) { entry.reffed = false; ref(-1); } },
    };
    // server.address(): a TCP handle answers getsockname; a pipe server shows its path.
    if (bound && bound.port !== undefined) {
      handle.getsockname = (out) => {
        out.address = bound.address;
        out.family = bound.family;
        out.port = bound.port;
        return 0;
      };
    }
    return handle;
  }

  function track(entry) {
    const { server, sockets } = entry;
    server.on('connection', (socket) => {
      sockets.set(socket, 0);
      socket.once('close', () => {
        sockets.delete(socket);
        closedCount++;
        if (!flushScheduled) {
          flushScheduled = true;
          setImmediate(flushClosed);
        }
        if (draining) maybeFinish();
      });
    });
  }

  // HTTP during a drain: every response not yet started says Connection: close, and a
  // connection's last activity is noted, so one idle for idleGrace can be closed. Nothing
  // of this runs per request before the drain.
  function drainHttp(entry) {
    const { server, sockets } = entry;
    const now = Date.now();
    for (const socket of sockets.keys()) {
      sockets.set(socket, now);
      const res = socket._httpMessage; // the response in progress on it, if any
      if (res && !res.headersSent) res.shouldKeepAlive = false;
    }
    server.prependListener('request', (req, res) => {
      res.shouldKeepAlive = false;
      const socket = req.socket;
      if (sockets.has(socket)) sockets.set(socket, Date.now());
      res.once('finish', () => {
        if (sockets.has(socket)) sockets.set(socket, Date.now());
      });
    });
  }

  // ---- request figures: req/s, in flight, p50/p99 over 10 s (as clusterui/reqstats.py) --

  const SAMPLES = 2048; // latencies kept per second (a uniform sample beyond)
  const WINDOW_NS = 10n * 1000000000n;
  const stats = { inFlight: 0, done: 0, seen: 0, batch: [], window: [], last: {}, timer: null };

  function countRequests(server) {
    const http = require('http');
    const https = require('https');
    if (!(server instanceof http.Server || server instanceof https.Server)) return;
    server.prependListener('request', (req, res) => {
      const started = process.hrtime.bigint();
      let ended = false;
      stats.inFlight++;
      const end = () => {
        if (ended) return;
        ended = true;
        stats.inFlight--;
        stats.done++;
        stats.seen++;
        const ms = Number(process.hrtime.bigint() - started) / 1e6;
        if (stats.batch.length < SAMPLES) stats.batch.push(ms);
        else {
          const slot = Math.floor(Math.random() * stats.seen);
          if (slot < SAMPLES) stats.batch[slot] = ms;
        }
      };
      res.once('finish', end);
      res.once('close', end);
    });
    if (stats.timer === null) {
      stats.at = process.hrtime.bigint();
      stats.timer = setInterval(reportRequests, 1000);
      stats.timer.unref();
    }
  }

  function percentile(sorted, q) {
    const rank = Math.max(1, Math.min(sorted.length, Math.ceil((q / 100) * sorted.length)));
    return sorted[rank - 1];
  }

  function reportRequests() {
    const now = process.hrtime.bigint();
    const elapsed = Math.max(Number(now - stats.at) / 1e9, 1e-3);
    stats.at = now;
    const done = stats.done;
    stats.done = 0;
    stats.seen = 0;
    if (stats.batch.length) {
      stats.window.push([now, stats.batch]);
      stats.batch = [];
    }
    while (stats.window.length && now - stats.window[0][0] > WINDOW_NS) stats.window.shift();
    const figures = { req_rate: Math.round((done / elapsed) * 10) / 10, in_flight: stats.inFlight };
    if (stats.window.length) {
      const merged = [].concat(...stats.window.map((w) => w[1])).sort((a, b) => a - b);
      figures.p50_ms = Math.round(percentile(merged, 50) * 100) / 100;
      figures.p99_ms = Math.round(percentile(merged, 99) * 100) / 100;
    }
    const changed = {};
    let any = false;
    for (const [name, value] of Object.entries(figures)) {
      if (stats.last[name] !== value) {
        changed[name] = value;
        stats.last[name] = value;
        any = true;
      }
    }
    if (any) send({ t: 'metrics', values: changed }); // an idle worker: one 0, then nothing
  }

  function register(server, args) {
    // sockets: each open connection -> its last activity (kept during a drain only)
    const entry = { server, handle: null, sockets: new Map(), reffed: false };
    entry.handle = makeHandle(entry);
    entry.handle.ref();
    track(entry);
    servers.add(entry);
    server._handle = entry.handle;
    entries.add(entry);
    countRequests(server);
    originalListen2.apply(server, args); // emits 'listening' on the next tick
    process.nextTick(maybeReady);
  }

  function fail(server, args, answer) {
    const [address, port] = args;
    const err = new Error(`listen ${answer.code || 'EADDRINUSE'}: ${answer.message || ''}`);
    err.code = answer.code || 'EADDRINUSE';
    err.errno = answer.errno;
    err.syscall = 'listen';
    err.address = address;
    if (port >= 0) err.port = port;
    process.nextTick(() => server.emit('error', err));
  }

  // ---- listen(): ask the dispatcher instead of binding ---------------------------------

  let claimed = null; // the first address this process listened on: the app's port
  const originalListen2 = net.Server.prototype._listen2;
  net.Server.prototype._listen2 = function clusteruiListen(address, port, addressType,
    backlog, fd) {
    // A handle or fd of its own, or a second address: the server binds as without us.
    const key = port >= 0 ? `${address || ''}:${port}` : `pipe:${address}`;
    if (this._handle || typeof fd === 'number' || (claimed !== null && claimed !== key)) {
      return originalListen2.apply(this, arguments);
    }
    claimed = key;
    const args = Array.prototype.slice.call(arguments);
    if (bound) {
      register(this, args);
      return;
    }
    waiting.push({ server: this, args });
    ref(1); // waiting for the answer keeps the process alive, as a bind would
    if (waiting.length === 1) {
      send(port >= 0 ? { t: 'listen', address: address || null, port }
        : { t: 'listen', path: address });
    }
  };

  // ---- the dispatcher's messages -------------------------------------------------------

  function deliver(handle) {
    const list = [...servers];
    if (!list.length || !handle) {
      if (handle) handle.close();
      closedCount++;
      if (!flushScheduled) { flushScheduled = true; setImmediate(flushClosed); }
      return;
    }
    const entry = list[cursor++ % list.length];
    entry.handle.onconnection(0, handle);
  }

  process.on('internalMessage', (msg, handle) => {
    if (msg === null || typeof msg !== 'object' || msg.cmd !== TAG) return;
    switch (msg.t) {
      case 'conn':
        deliver(handle);
        break;
      case 'listening': {
        bound = { address: msg.address, family: msg.family, port: msg.port, path: msg.path };
        const todo = waiting;
        waiting = [];
        for (const { server, args } of todo) register(server, args);
        ref(-todo.length);
        break;
      }
      case 'listen-error': {
        const todo = waiting;
        waiting = [];
        claimed = null;
        for (const { server, args } of todo) fail(server, args, msg);
        ref(-todo.length);
        break;
      }
      case 'drain':
        startDrain();
        break;
      default:
        break;
    }
  });

  // ---- drain: finish what is open, close the rest, then stop as the app would ----------

  let sweeper = null;
  let finished = false;

  function startDrain() {
    if (draining) return;
    draining = true;
    ready = false;
    for (const entry of entries) if (isHttp(entry.server)) drainHttp(entry);
    sweeper = setInterval(sweep, SWEEP_MS);
    sweep();
  }

  function sweep() {
    const now = Date.now();
    for (const entry of entries) {
      for (const [socket, last] of entry.sockets) {
        // Idle: no response in progress, and nothing asked for idleGrace.
        if (!socket._httpMessage && now - last >= idleGrace && isHttp(entry.server)) {
          socket.destroy();
        }
      }
    }
    maybeFinish();
  }

  function isHttp(server) {
    return typeof server.closeIdleConnections === 'function';
  }

  function maybeFinish() {
    if (finished) return;
    for (const entry of entries) if (entry.sockets.size) return;
    finished = true;
    clearInterval(sweeper);
    for (const entry of [...servers]) entry.server.close();
    // Now stop as PM2 would have stopped the app: its own handlers still run.
    setImmediate(() => {
      if (shutdownWithMessage && process.listenerCount('message')) {
        process.emit('message', 'shutdown');
      } else if (process.listenerCount(killSignal)) {
        // Signals arrive asynchronously and a signal listener does not keep Node running:
        // hold on until the app's handlers have run, then let it end as it chooses.
        const hold = setTimeout(() => {}, 2 ** 31 - 1);
        process.prependOnceListener(killSignal, () => setImmediate(() => clearTimeout(hold)));
        process.kill(process.pid, killSignal);
      } else {
        process.kill(process.pid, killSignal); // its default action, as under PM2
      }
    });
  }
})();
