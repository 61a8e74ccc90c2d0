"""An opt-in Prometheus endpoint: `GET /metrics` in the text exposition format 0.0.4.

Started by `metrics_listen` in an ecosystem file or `clusterui metrics --listen ADDR`.
Loopback only unless explicitly made public (a warning says so): the figures name apps,
pids and ports, and nothing here authenticates the reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import resource
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from clusterui.core.health import is_unhealthy
from clusterui.vocab.exits import OpError

if TYPE_CHECKING:
    from clusterui.core.apps import App

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[tuple[str, dict[str, Any], float]] = []

    def add(self, labels: dict[str, Any], value: float, suffix: str = "") -> None:
        self.samples.append((self.name + suffix, labels, value))

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for name, labels, value in self.samples:
            yield f"{name}{_labels(labels)} {_number(value)}"


# Every family, in the order it is rendered: key, metric name, type, help.
FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("cpu", "clusterui_worker_cpu_percent", "gauge", "CPU use of the worker's process tree"),
    ("mem", "clusterui_worker_memory_bytes", "gauge", "RSS of the worker's process tree"),
    (
        "status",
        "clusterui_worker_status",
        "gauge",
        "The worker's current status (label), always 1",
    ),
    ("restarts", "clusterui_worker_restarts", "counter", "Restarts of the worker slot"),
    ("uptime", "clusterui_worker_uptime_seconds", "gauge", "Uptime of the worker's process"),
    (
        "handed",
        "clusterui_worker_connections_handed",
        "counter",
        "Connections handed to the worker",
    ),
    ("opened", "clusterui_worker_connections_open", "gauge", "Open connections"),
    ("rate", "clusterui_worker_connection_rate", "gauge", "Connections per second"),
    (
        "requests",
        "clusterui_worker_request_rate",
        "gauge",
        "Requests per second, for workers that report it (the req_rate metric)",
    ),
    (
        "custom",
        "clusterui_worker_custom",
        "gauge",
        "Figures the worker reports itself (clusterui.worker.metrics), e.g. requests",
    ),
    ("h_ok", "clusterui_worker_health_up", "gauge", "1 if the last health probe passed"),
    (
        "h_lat",
        "clusterui_worker_health_latency_seconds",
        "gauge",
        "Latency of the last health probe",
    ),
    ("h_probes", "clusterui_worker_health_probes", "counter", "Health probes run"),
    ("h_failed", "clusterui_worker_health_failures", "counter", "Health probes failed"),
    ("reloads", "clusterui_app_reloads", "counter", "Rolling reloads by outcome"),
    ("instances", "clusterui_app_instances", "gauge", "Configured instances"),
    ("sup_cpu", "clusterui_supervisor_cpu_seconds", "counter", "CPU time used by the supervisor"),
    ("sup_rss", "clusterui_supervisor_rss_bytes", "gauge", "RSS of the supervisor"),
)


def render(apps: Iterable[App], display_status: Callable[[Any], str]) -> str:
    """The whole exposition, one pass over the apps."""
    fam = {key: _Family(name, kind, help_text) for key, name, kind, help_text in FAMILIES}
    for app in apps:
        fam["instances"].add({"app": app.name}, app.spec.instances)
        for outcome, n in app.reloads.items():
            fam["reloads"].add({"app": app.name, "outcome": outcome}, n, "_total")
        for i in sorted(app.slots):
            _worker(fam, app, app.slots[i], display_status)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fam["sup_cpu"].add({"mode": "user"}, usage.ru_utime, "_total")
    fam["sup_cpu"].add({"mode": "system"}, usage.ru_stime, "_total")
    fam["sup_rss"].add({}, _rss())
    lines = [line for f in fam.values() for line in f.render()]
    return "\n".join(lines) + "\n"


def _worker(
    fam: dict[str, _Family], app: App, slot: Any, display_status: Callable[[Any], str]
) -> None:
    proc = slot.proc
    labels = {"app": app.name, "instance": slot.instance, "id": slot.id}
    fam["status"].add({**labels, "status": display_status(slot)}, 1)
    fam["restarts"].add(labels, slot.restarts, "_total")
    fam["handed"].add(labels, slot.connections, "_total")
    fam["rate"].add(labels, slot.conn_rate)
    if proc is not None:
        fam["cpu"].add(labels, slot.cpu)
        fam["mem"].add(labels, slot.memory)
        fam["uptime"].add(labels, round(proc.uptime, 3))
        fam["opened"].add(labels, slot.active)
    if slot.req_rate is not None:
        fam["requests"].add(labels, slot.req_rate)
    for key, value in slot.metrics.items():
        fam["custom"].add({**labels, "name": key}, value)
    health = slot.health
    if health is not None:
        fam["h_probes"].add(labels, health.probes, "_total")
        fam["h_failed"].add(labels, health.failed, "_total")
        if proc is not None and proc.probe is not None:
            fam["h_ok"].add(labels, 0 if is_unhealthy(proc) else 1)
        if health.results:
            fam["h_lat"].add(labels, health.results[-1]["latency_ms"] / 1000)


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def parse_address(text: str) -> tuple[str, int]:
    """`PORT`, `HOST:PORT` or `[V6]:PORT` → (host, port); ValueError with a sentence."""
    text = str(text).strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"metrics address {text!r} is not PORT or HOST:PORT")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    n = int(port)
    if not 0 < n < 65536:
        raise ValueError(f"metrics port {n} is out of range 1-65535")
    return host, n


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class MetricsServer:
    """A tiny HTTP/1.0-style server: one request per connection, GET /metrics only."""

    def __init__(self, page: Callable[[], str]) -> None:
        self.page = page
        self.server: asyncio.base_events.Server | None = None
        self.address: str | None = None
        self.scrapes = 0

    async def start(self, host: str, port: int) -> None:
        await self.stop()
        try:
            self.server = await asyncio.start_server(
                self._serve, host, port, limit=MAX_REQUEST, reuse_address=True
            )
        except OSError as exc:
            raise OpError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        sock = self.server.sockets[0].getsockname()
        shown = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
        self.address = f"{shown}:{sock[1]}"

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 1.0)
            self.server = None
            self.address = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
            parts = head.split(b"\r\n", 1)[0].split()
            if len(parts) < 2 or parts[0] not in (b"GET", b"HEAD"):
                self._answer(writer, 405, b"only GET /metrics\n")
            elif parts[1].split(b"?", 1)[0] != b"/metrics":
                self._answer(writer, 404, b"see /metrics\n")
            else:
                self.scrapes += 1
                started = time.monotonic()
                body = self.page().encode()
                body += (
                    b"# HELP clusterui_scrape_seconds Time to render this page\n"
                    b"# TYPE clusterui_scrape_seconds gauge\n"
                    + f"clusterui_scrape_seconds {time.monotonic() - started:.6f}\n".encode()
                )
                self._answer(writer, 200, body if parts[0] == b"GET" else b"", len(body))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _answer(
        writer: asyncio.StreamWriter, code: int, body: bytes, length: int | None = None
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}[code]
        ctype = CONTENT_TYPE if code == 200 else "text/plain"
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body) if length is None else length}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
