"""The shape of the state the supervisor serves: the `state` op, `state` events to a
subscribed dashboard, and (a subset) `clusterui ls --json`.

The supervisor builds these (clusterui.core.snapshot), the CLI and the dashboard read
them, and tests/fake_client.py fakes them; all four use these types.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from clusterui.vocab.lsfields import LS_JSON_KEYS

HISTORY = 120  # samples kept per series: one per supervisor tick, so two minutes


class Series(TypedDict):
    """A worker's recent samples, oldest first, all the same length."""

    cpu: list[float]
    memory: list[int]
    conn_rate: list[float]
    req_rate: list[float]
    time: list[float]


class RestartRecord(TypedDict):
    time: float
    reason: str
    exit_code: int | None
    signal: str | None


class ProbeResult(TypedDict):
    time: float
    ok: bool
    latency_ms: float
    detail: str  # "HTTP 200", "no answer within 500 ms", "exit code 1", ...


class HealthInfo(TypedDict):
    """A worker's health probes (an app with a health_check only)."""

    ok: bool | None  # the current process's last probe; None: not probed yet
    consecutive_failures: int
    probes: int  # over the slot's life
    failed: int
    last: ProbeResult | None
    recent: list[ProbeResult]  # oldest first, at most 10


class WorkerRow(TypedDict):
    id: int
    app: str
    instance: int
    pid: int | None
    status: str  # a clusterui.vocab.states status
    restarts: int
    uptime: float
    cpu: float
    memory: int
    connections: int  # handed to it over its life (across replacements)
    active: int  # open right now
    conn_rate: float
    req_rate: float | None  # requests/s where the worker reports them (metrics req_rate)
    exit_code: int | None
    exit_signal: str | None
    error: str | None
    metrics: dict[str, float]  # at most dispatch.protocol.METRIC_NAMES_MAX names
    metrics_dropped: int  # metric updates or names refused by the cap (core/metric_cap.py)
    draining_pids: list[int]  # older processes a reload is replacing (serving, then draining)
    log_dropped: int  # lines its log files could not take (a full disk), marked in them
    restart_history: list[RestartRecord]
    out_file: str
    err_file: str
    health: HealthInfo | None
    history: NotRequired[Series]  # left out when asked for state without history


class AppRow(TypedDict):
    name: str
    exec_mode: str
    dispatch: str | None  # None without 'listen'
    listen: str | None
    instances: int
    watch: bool
    watch_paths: list[str]
    last_watch_event: str | None
    source: str
    script: str
    args: list[str]
    cwd: str
    interpreter: str | None
    env_names: list[str]
    reloading: bool
    listener_pid: int | None  # the (primary) dispatcher
    dispatchers: list[DispatcherRow]  # every dispatcher of the listener, the primary first
    depends_on: dict[str, str]  # app name -> condition
    waiting_for: str | None  # "waiting for db: healthy (db:0 is unhealthy)" while pending
    cron_restart: str | None
    cron_next: float | None  # epoch seconds
    health_check: str | None  # its kind: http, tcp or exec
    reloads: dict[str, int]  # rolling reloads: {"ok": n, "failed": m}
    preload: PreloadInfo | None  # None without `preload: true`


class DispatcherRow(TypedDict):
    """One dispatcher process of an app's listener (`dispatchers: N`)."""

    pid: int
    accepted: int  # connections it accepted, as it last reported (from zero if replaced)


class PreloadInfo(TypedDict):
    """An app's zygote (`preload: true`, core.zygote)."""

    pid: int | None  # None while there is none (stopped, or given up)
    root: int | None  # the root zygote that forked it (None: it was exec'd)
    modules: int  # the top-level imports it has imported
    gave_up: str | None  # why workers start without it until the next start/reload


class HostInfo(TypedDict):
    cpu: float
    memory_used: int
    memory_total: int
    cpus: int


class SupervisorInfo(TypedDict):
    pid: int
    started_at: float
    uptime: float
    home: str
    version: str
    files: list[str]
    host: HostInfo
    conn_rate: float
    metrics_listen: str | None  # where Prometheus metrics are served, if they are


class Snapshot(TypedDict):
    supervisor: SupervisorInfo
    apps: list[AppRow]
    workers: list[WorkerRow]


class TreeProcess(TypedDict):
    """One process of a worker's tree (the `tree` operation, core/proctree.py)."""

    pid: int
    ppid: int
    depth: int  # 0: the worker itself, 1: its child, 2: a grandchild, ...
    name: str  # as the worker set it: sanitise before showing (vocab/safetext.py)
    cmdline: str  # the same, cut to 300 characters
    cpu: float | None  # % of one CPU since the previous call; None on the first
    memory: int  # RSS bytes
    status: str  # psutil's: running, sleeping, stopped, zombie, ...
    left: str | None  # None, or what it left: "session", "group" or "orphan" (the leak)


class WorkerTree(TypedDict):
    """A worker and the processes below it: one item of the `tree` operation's answer."""

    id: int
    app: str
    instance: int
    pid: int
    processes: list[TreeProcess]  # the worker first, then depth first
    more: int  # processes left out past the 200 sent


def ls_json(workers: list[WorkerRow]) -> list[dict[str, Any]]:
    """The rows `clusterui ls --json` prints."""
    # .get: a key an older supervisor does not send is null, not a crash
    return [{k: w.get(k) for k in LS_JSON_KEYS} for w in workers]
