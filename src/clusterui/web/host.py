"""The host: uvicorn's protocol classes on connections from ``clusterui.worker``.

uvicorn parses HTTP/1.1 (keep-alive, pipelining, bodies, streaming, WebSocket
upgrades); ``clusterui.worker.create_server`` brings the connections (handed over
by the dispatcher, fd 3, or a socket of its own) and runs the drain. What is added
here is what a lossless drain needs and uvicorn's own shutdown does not do:

- a request answered once the drain began carries ``Connection: close`` (the last one
  received on its connection; pipelined requests behind it are still answered);
- a keep-alive connection is closed only after it has been idle for ``idle_grace``
  (uvicorn closes idle ones at once, racing a request already on the wire);
- WebSockets get a close frame with code 1001 (going away) shortly before the
  supervisor's ``kill_timeout`` runs out;
- lifespan shutdown runs once every connection is closed, then the process exits 0.

Request figures (req/s, in flight, p50/p99) go to the supervisor as ``metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import logging
import os
import sys
from typing import Any

import uvicorn
from uvicorn.importer import ImportFromStringError, import_from_string
from uvicorn.server import ServerState

from clusterui import reqstats, worker

logger = logging.getLogger("uvicorn.error")

DEFAULT_KILL_TIMEOUT_MS = 1600  # clusterui's default, when run outside clusterui
# WebSockets are closed this long before kill_timeout, so the close handshake can finish.
WS_CLOSE_MARGIN = 1.0


def ws_close_delay(kill_timeout_ms: int) -> float:
    """Seconds after the drain begins at which open WebSockets get their 1001 close."""
    total = kill_timeout_ms / 1000
    return max(0.0, total - min(WS_CLOSE_MARGIN, total / 3))


class _WebSocketSession:
    """One WebSocket as the app sees it: its send, and whether it is open."""

    __slots__ = ("send_inner", "accepted", "closed")

    def __init__(self, send: Any) -> None:
        self.send_inner = send
        self.accepted = False
        self.closed = False

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.closed and kind == "websocket.close":
            return  # we already closed it for the drain
        await self.send_inner(message)
        if kind == "websocket.accept":
            self.accepted = True
        elif kind in ("websocket.close", "websocket.http.response.body"):
            self.closed = True

    async def going_away(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.send_inner(
                {"type": "websocket.close", "code": 1001, "reason": "server going away"}
            )


class Host:
    """State shared by every connection of this worker."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.stats = reqstats.RequestStats()
        self.websockets: set[_WebSocketSession] = set()
        self.draining = False
        self.idle_grace = opts.idle_grace
        try:
            self.kill_timeout_ms = int(os.environ.get("CLUSTERUI_KILL_TIMEOUT", ""))
        except ValueError:
            self.kill_timeout_ms = DEFAULT_KILL_TIMEOUT_MS

    def instrument(self, app: Any) -> Any:
        stats = self.stats
        websockets = self.websockets

        async def instrumented(scope: Any, receive: Any, send: Any) -> None:
            kind = scope["type"]
            if kind == "http":
                started = stats.begin()
                done = False

                async def counted_send(message: Any) -> None:
                    nonlocal done
                    await send(message)
                    if (
                        not done
                        and message["type"] == "http.response.body"
                        and not message.get("more_body", False)
                    ):
                        done = True
                        stats.end(started)

                try:
                    await app(scope, receive, counted_send)
                finally:
                    if not done:
                        stats.end(started)
            elif kind == "websocket":
                session = _WebSocketSession(send)
                websockets.add(session)
                try:
                    await app(scope, receive, session.send)
                finally:
                    websockets.discard(session)
            else:
                await app(scope, receive, send)

        return instrumented

    async def close_websockets(self) -> None:
        sessions = [s for s in self.websockets if not s.closed]
        if sessions:
            logger.info("closing %d WebSocket(s) with 1001 before kill_timeout", len(sessions))
        await asyncio.gather(*(s.going_away() for s in sessions))


class _Draining:
    """The drain, mixed in before one of uvicorn's HTTP protocol classes (see the module doc).

    Its methods call super() on purpose: the next class in the MRO is uvicorn's.
    """

    _cu_host: Host  # set per class by drain_protocol_class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        self._cu_draining = False
        self._cu_forced: Any = None
        self._cu_active = 0.0
        self._cu_timer: asyncio.TimerHandle | None = None
        self._cu_upgraded = False

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._cu_draining:
            self._cu_active = self.loop.time()
            self._cu_mark()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._cu_draining:
            self._cu_active = self.loop.time()
            self._cu_mark()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        super().handle_websocket_upgrade(*args)
        ws = self.transport.get_protocol()
        if ws is self:
            return
        self._cu_upgraded = True
        inner_lost = ws.connection_lost
        outer_lost = self.connection_lost  # what clusterui.worker counts closes by

        def connection_lost(exc: Exception | None) -> None:
            try:
                inner_lost(exc)
            finally:
                outer_lost(exc)

        ws.connection_lost = connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self._cu_timer is not None:
            self._cu_timer.cancel()
            self._cu_timer = None
        super().connection_lost(exc)

    # -- the drain (clusterui.worker calls drain() once when it begins)

    def drain(self) -> None:
        if self._cu_draining:
            return
        self._cu_draining = True
        if self._cu_upgraded:
            return  # WebSockets are closed by the host at kill_timeout
        self._cu_active = self.loop.time()
        self._cu_mark()
        self._cu_timer = self.loop.call_later(self._cu_host.idle_grace, self._cu_check)

    def _cu_mark(self) -> None:
        """Make the last request received on this connection close it when answered."""
        cycle = self.cycle
        if cycle is None or self._cu_upgraded:
            return
        pipeline = getattr(self, "pipeline", None)
        last = pipeline[0][0] if pipeline else cycle
        forced = self._cu_forced
        if forced is not None and forced is not last and not forced.response_started:
            forced.keep_alive = True  # a request came in behind it: answer that one too
            self._cu_forced = None
        conn = getattr(self, "conn", None)  # h11 holds pipelined requests itself
        if conn is not None and getattr(conn, "trailing_data", (b"",))[0]:
            return
        if last is not self._cu_forced and not last.response_started and last.keep_alive:
            last.keep_alive = False
            self._cu_forced = last

    def _cu_check(self) -> None:
        self._cu_timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self._cu_upgraded:
            return
        cycle = self.cycle
        busy = (cycle is not None and not cycle.response_complete) or bool(
            getattr(self, "pipeline", None)
        )
        idle_for = self.loop.time() - self._cu_active
        if (
            not busy
            and idle_for >= self._cu_host.idle_grace
            and not transport.get_write_buffer_size()
        ):
            transport.close()
            return
        wait = self._cu_host.idle_grace - idle_for if not busy else self._cu_host.idle_grace
        self._cu_timer = self.loop.call_later(max(wait, 0.05), self._cu_check)


def drain_protocol_class(base: type, host: Host) -> type:
    """uvicorn's HTTP protocol class, with clusterui's drain (see the module doc)."""
    name = f"Draining{base.__name__}"
    return type(name, (_Draining, base), {"_cu_host": host, "__qualname__": name})


def _load_app(opts: argparse.Namespace) -> Any:
    try:
        app = import_from_string(opts.app)
    except ImportFromStringError as exc:
        print(f"clusterui: cannot load {opts.app!r}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if opts.factory:
        app = app()
    if opts.kind == "wsgi":
        from a2wsgi import WSGIMiddleware

        app = WSGIMiddleware(app, workers=opts.threads)
    return app


def _config(opts: argparse.Namespace, app: Any) -> uvicorn.Config:
    # uvicorn tells ASGI 2 from 3; the WSGI adapter is ASGI 3.
    interface = "auto" if opts.kind == "asgi" else "asgi3"
    return uvicorn.Config(
        app,
        http=opts.http,
        ws="none" if opts.kind == "wsgi" else opts.ws,
        lifespan="off" if opts.kind == "wsgi" else opts.lifespan,
        interface=interface,  # type: ignore[arg-type]
        root_path=opts.root_path,
        proxy_headers=opts.proxy_headers,
        forwarded_allow_ips=opts.forwarded_allow_ips,
        timeout_keep_alive=opts.timeout_keep_alive,
        limit_concurrency=opts.limit_concurrency,
        access_log=opts.access_log,
        log_level=opts.log_level,
    )


async def serve(opts: argparse.Namespace, config: uvicorn.Config) -> int:
    loop = asyncio.get_running_loop()
    host = Host(opts)
    config.load()
    config.loaded_app = host.instrument(config.loaded_app)
    lifespan = config.lifespan_class(config)
    await lifespan.startup()
    if lifespan.should_exit:
        logger.error("the app's lifespan startup failed; not serving")
        return 3

    state = ServerState()
    protocol_class = drain_protocol_class(config.http_protocol_class, host)

    def tick_headers() -> None:
        # What uvicorn's Server does once a second: a fresh Date header for every response.
        date = [(b"date", email.utils.formatdate(usegmt=True).encode())]
        state.default_headers = (date if config.date_header else []) + config.encoded_headers
        loop.call_later(1.0, tick_headers)

    def report() -> None:
        figures = host.stats.report()
        if figures:
            worker.metrics(figures)
        loop.call_later(reqstats.INTERVAL, report)

    tick_headers()
    report()

    def on_drain(_server: worker.Server) -> None:
        host.draining = True
        delay = ws_close_delay(host.kill_timeout_ms)
        loop.call_later(delay, lambda: loop.create_task(host.close_websockets()))

    server = await worker.create_server(
        lambda: protocol_class(config=config, server_state=state, app_state=lifespan.state),
        host=opts.host,
        port=opts.port,
        on_drain=on_drain,
        idle_grace=host.idle_grace,
    )
    logger.info(
        "clusterui %s host serving %s (%s, pid %d)", opts.kind, opts.app, server.mode, os.getpid()
    )
    await server.serve_forever()
    if state.tasks:
        # Requests whose client went away may still be running in the app.
        await asyncio.wait(list(state.tasks), timeout=max(host.kill_timeout_ms / 1000, 1.0))
    await lifespan.shutdown()
    figures = host.stats.report()
    if figures:
        worker.metrics(figures)
    return 0


def run(opts: argparse.Namespace) -> int:
    app = _load_app(opts)
    config = _config(opts, app)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            code = runner.run(serve(opts, config))
    except KeyboardInterrupt:
        # SIGINT before serving began (a stop during lifespan startup): nothing to drain.
        return 130
    if code == 0:
        logger.info("drained; exiting")
    return code
