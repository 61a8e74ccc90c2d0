"""A strict HTTP load client for the web tests: no retries, every error counts.

Keep-alive mode reuses one connection per thread until the server says
``Connection: close`` (then reconnects); close mode sends ``Connection: close`` on a
new connection each time. Any exception or non-200 answer is a failure.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    bodies: Counter = field(default_factory=Counter)
    closes_seen: int = 0  # responses that carried Connection: close (keep-alive mode)


class Load:
    def __init__(
        self,
        port: int,
        *,
        path: str = "/",
        threads: int = 4,
        keep_alive: bool = True,
        host: str = "127.0.0.1",
        pause: float = 0.0,
    ) -> None:
        self.port, self.path, self.host = port, path, host
        self.keep_alive = keep_alive
        self.pause = pause
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> LoadResult:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)
        return self.result

    def _record(self, ok: bool, detail: str, close: bool = False) -> None:
        with self._lock:
            if ok:
                self.result.ok += 1
                self.result.bodies[detail] += 1
            else:
                self.result.failed += 1
                if len(self.result.errors) < 20:
                    self.result.errors.append(detail)
            if close:
                self.result.closes_seen += 1

    def _run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        headers = {} if self.keep_alive else {"Connection": "close"}
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                conn.request("GET", self.path, headers=headers)
                resp = conn.getresponse()
                body = resp.read().decode(errors="replace")
                close = resp.will_close
                if resp.status == 200:
                    self._record(True, body, close and self.keep_alive)
                else:
                    self._record(False, f"HTTP {resp.status}: {body[:80]}")
            except (OSError, http.client.HTTPException) as exc:
                self._record(False, f"{type(exc).__name__}: {exc}")
                close = True
            if close or not self.keep_alive:
                conn.close()
                conn = None
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()
