"""File-watch reload: one watchfiles watcher per app, turning bursts into one reload.

A change reloads a cluster app (rolling, zero failed requests) or restarts a fork
app. Changes that arrive while a reload runs queue exactly one more. An app that
writes into its own watched folder is detected and its watch paused, instead of
reloading itself forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path

import watchfiles

from clusterui.core.spec import AppSpec

DEFAULT_IGNORE_DIRS = {
    ".git",
    "__pycache__",
    ".venv",
    "venv",
    "node_modules",
    ".hg",
    ".svn",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".tox",
}
DEFAULT_IGNORE_GLOBS = ("*.pyc", "*.pyo", "*.swp", "*.swx", "*~", ".#*", "*.log", ".DS_Store")
# Feedback-loop guard: this many reloads in a row, each triggered within FEEDBACK_WINDOW
# seconds of the previous reload finishing, pause the watch.
FEEDBACK_STREAK = 4
FEEDBACK_WINDOW = 2.5  # seconds from a reload's end to the next burst, plus watch_delay


class WatchFilter:
    """watchfiles filter: the defaults, the app's ignore_watch, its logs and the home."""

    def __init__(self, spec: AppSpec, extra_paths: list[str]):
        self.spec = spec
        self.globs = tuple(DEFAULT_IGNORE_GLOBS) + tuple(spec.ignore_watch)
        self.paths = tuple(os.path.abspath(p) for p in extra_paths if p)

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        return not self.ignored(path)

    def ignored(self, path: str) -> bool:
        path = os.path.abspath(path)
        if any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths):
            return True
        rel = os.path.relpath(path, self.spec.cwd)
        # Relative parts only: a project that itself lives under some .venv still works.
        if any(part in DEFAULT_IGNORE_DIRS for part in Path(rel).parts):
            return True
        name = os.path.basename(path)
        for glob in self.globs:
            g = glob.rstrip("/")
            if fnmatch.fnmatch(name, g) or fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(path, g):
                return True
            # An ignored folder ("build", "data/*" or "data/") covers everything under it.
            if any(fnmatch.fnmatch(part, g) for part in Path(rel).parts):
                return True
            if rel.startswith(g + "/"):
                return True
        return False


REARM_POLL = 1.0  # seconds between checks that the watched folders are still the same


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class AppWatcher:
    """Runs while watch is on for one app; calls `reload(reason)` once per burst."""

    def __init__(
        self,
        spec: AppSpec,
        reload: Callable[[str], Awaitable[None]],
        on_event: Callable[[str], None],
        ignore_paths: list[str],
    ):
        self.spec = spec
        self._reload = reload
        self._on_event = on_event
        self.filter = WatchFilter(spec, ignore_paths)
        self._task: asyncio.Task | None = None
        self._stop = asyncio.Event()
        self._pending: set[str] = set()
        self._reloading = False
        self._last_reload_end = 0.0
        self._streak: deque[str] = deque(maxlen=FEEDBACK_STREAK)
        self.reloads = 0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run())
        # Let the task create its inotify watches now: changes from here on are seen.
        for _ in range(3):
            await asyncio.sleep(0)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    async def _run(self) -> None:
        """Watch until stopped, re-arming when a watched folder is deleted and made again
        (inotify's watch dies with the folder, so the old one would stay silent)."""
        first = True
        while not self._stop.is_set():
            paths = [p for p in self.spec.watch if os.path.exists(p)]
            if not paths:
                if first:
                    self._on_event(f"watch: none of {', '.join(self.spec.watch)} exists")
                    return
                await self._wait_for_paths()
                continue
            if not first:
                self._on_event(f"watch re-armed on {', '.join(paths)}")
            first = False
            await self._watch(paths)

    async def _wait_for_paths(self) -> None:
        while self._reloading and not self._stop.is_set():  # the deletion's own reload
            await asyncio.sleep(0.1)
        self._on_event(
            f"watch broken: {', '.join(self.spec.watch)} is gone; it resumes when it exists"
        )
        while not self._stop.is_set() and not any(os.path.exists(p) for p in self.spec.watch):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), REARM_POLL)

    async def _watch(self, paths: list[str]) -> None:
        """One arming: returns when a watched path is deleted or replaced (or on stop)."""
        ids = {p: _identity(p) for p in paths}
        delay = max(10, self.spec.watch_delay)
        async for changes in watchfiles.awatch(
            *paths,
            watch_filter=self.filter,
            step=delay,
            debounce=max(1600, delay * 4),
            stop_event=self._stop,
            ignore_permission_denied=True,
            rust_timeout=int(REARM_POLL * 1000),
            yield_on_timeout=True,  # an empty batch now and then: time to check the roots
        ):
            if changes:
                self._changed(sorted({p for _, p in changes}))
            if any(_identity(p) != ident for p, ident in ids.items()):
                return

    def _changed(self, paths: list[str]) -> None:
        # Batches that arrive before or during a reload pile into one pending set.
        self._pending.update(paths)
        if not self._reloading:
            self._reloading = True
            asyncio.ensure_future(self._drain())

    def _describe(self, paths: set[str]) -> str:
        files = [p for p in sorted(paths) if not os.path.isdir(p)] or sorted(paths)
        first = os.path.relpath(files[0], self.spec.cwd)
        what = first if len(files) == 1 else f"{first} and {len(files) - 1} more"
        return f"{what} changed"

    async def _drain(self) -> None:
        try:
            while self._pending and not self._stop.is_set():
                reason = self._describe(self._pending)
                self._pending = set()
                if self._feedback_loop(reason):
                    return
                self.reloads += 1
                await self._reload(reason)
                self._last_reload_end = time.monotonic()
        finally:
            self._reloading = False

    def _feedback_loop(self, reason: str) -> bool:
        """True (and watch paused) when reloads keep retriggering themselves."""
        window = FEEDBACK_WINDOW + self.spec.watch_delay / 1000
        quick = time.monotonic() - self._last_reload_end < window
        if not quick:
            self._streak.clear()
        self._streak.append(reason)
        if len(self._streak) < FEEDBACK_STREAK or len(set(self._streak)) > 2:
            return False
        self._stop.set()
        self._on_event(
            f"watch paused: {reason} right after each of the last {FEEDBACK_STREAK} reloads; "
            "the app seems to write into its own watched folder (add it to ignore_watch)"
        )
        return True
