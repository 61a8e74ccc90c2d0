"""Request metrics a worker reports over its channel: req/s, in flight, latency p50/p99.

Shared by the ASGI/WSGI host (``clusterui.web``) and the servers of
``clusterui.worker``; standard library only. The figures go out as protocol v1
``metrics`` messages under fixed names (``REQ_RATE``...), at most once per
``INTERVAL``, and only while something changes: an idle worker sends one last
``req_rate`` of 0 and then nothing.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

REQ_RATE = "req_rate"  # completed requests per second over the last interval
IN_FLIGHT = "in_flight"  # requests started and not yet answered, now
P50 = "p50_ms"  # latency percentiles over the last WINDOW seconds, in milliseconds
P99 = "p99_ms"
NAMES = (REQ_RATE, IN_FLIGHT, P50, P99)

INTERVAL = 1.0
WINDOW = 10.0  # seconds of latencies behind p50/p99
SAMPLES_PER_INTERVAL = 2048  # latencies kept per interval (a uniform sample beyond this)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


class RequestStats:
    """Counts requests; ``report()`` (called about once per INTERVAL) returns the figures.

    ``begin()`` returns a start time to hand back to ``end()``. Safe from several
    threads (the WSGI thread pool, ThreadingHTTPServer): one short lock per call.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight = 0
        self._done = 0
        self._seen = 0  # completions this interval, sampled or not
        self._latencies: list[float] = []
        self._window: deque[tuple[float, list[float]]] = deque()
        self._last_report = clock()
        self._last_sent: dict[str, float] = {}
        self._rng_state = 0x2545F491

    def begin(self) -> float:
        with self._lock:
            self._in_flight += 1
        return self._clock()

    def end(self, started: float) -> None:
        elapsed = self._clock() - started
        with self._lock:
            self._in_flight -= 1
            self._done += 1
            self._seen += 1
            if len(self._latencies) < SAMPLES_PER_INTERVAL:
                self._latencies.append(elapsed)
            else:
                # Reservoir sampling keeps the interval's sample uniform under heavy load.
                self._rng_state = (self._rng_state * 1103515245 + 12345) & 0x7FFFFFFF
                slot = self._rng_state % self._seen
                if slot < SAMPLES_PER_INTERVAL:
                    self._latencies[slot] = elapsed

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def report(self) -> dict[str, float]:
        """The figures that changed since the last report (empty: nothing to send)."""
        now = self._clock()
        with self._lock:
            done, self._done = self._done, 0
            self._seen = 0
            latencies, self._latencies = self._latencies, []
            in_flight = self._in_flight
        elapsed = max(now - self._last_report, 1e-3)
        self._last_report = now
        if latencies:
            self._window.append((now, latencies))
        while self._window and now - self._window[0][0] > WINDOW:
            self._window.popleft()
        figures: dict[str, float] = {
            REQ_RATE: round(done / elapsed, 1),
            IN_FLIGHT: in_flight,
        }
        if self._window:
            merged = sorted(v for _t, batch in self._window for v in batch)
            figures[P50] = round(percentile(merged, 50) * 1000, 2)
            figures[P99] = round(percentile(merged, 99) * 1000, 2)
        changed = {k: v for k, v in figures.items() if self._last_sent.get(k) != v}
        self._last_sent.update(changed)
        return changed


class Reporter:
    """A daemon thread that sends ``stats.report()`` through ``send`` every INTERVAL.

    For blocking servers; the asyncio host reports from its own event loop instead.
    """

    def __init__(self, stats: RequestStats, send: Callable[[Mapping[str, float]], None]) -> None:
        self._stats = stats
        self._send = send
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clusterui-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            figures = self._stats.report()
            if figures:
                self._send(figures)

    def stop(self) -> None:
        self._stop.set()
