"""Plain-text output for the CLI verbs: tables, durations, sizes, log lines."""

from __future__ import annotations

import os
import sys
import time

from clusterui.vocab import states
from clusterui.vocab.safetext import escape

TYPE_CHECKING = False
if TYPE_CHECKING:  # `typing` imports `re`, which `clusterui ls` does without
    from typing import Any

COLUMNS = ("id", "app", "inst", "pid", "status", "restarts", "uptime", "cpu", "memory", "conns")
# ANSI colour per status tone (clusterui.vocab.states).
TONE_COLOURS = {
    "good": "32",
    "starting": "36",
    "busy": "33",
    "waiting": "33",
    "alert": "1;33",  # bold: it needs someone's attention
    "failing": "1;35",  # unhealthy: alive, failing its health probe
    "held": "35",  # pending: waiting for its depends_on
    "idle": "90",
    "bad": "31",
}


def use_colour(stream=sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def human_size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n}"


def worker_table(workers: list[dict[str, Any]], colour: bool = False) -> str:
    rows = []
    for w in workers:
        online = w["pid"] is not None
        rows.append(
            (
                str(w["id"]),
                w["app"],
                str(w["instance"]),
                str(w["pid"] or "-"),
                w["status"]
                + (f" +{len(w['draining_pids'])} draining" if w.get("draining_pids") else ""),
                str(w["restarts"]),
                human_duration(w["uptime"]) if online else "-",
                f"{w['cpu']:.1f}%" if online else "-",
                human_size(w["memory"]) if online else "-",
                f"{w['connections']}/{w['active']}" if w["connections"] else "-",
            )
        )
    if not rows:
        return "no apps loaded"
    # One format per table, not a call per cell: `ls` may list thousands of workers.
    widths = [
        max(len(h), *map(len, column))
        for h, column in zip(COLUMNS, zip(*rows, strict=True), strict=True)
    ]
    specs = [f"{{:<{w}}}" for w in widths]
    lines = ["  ".join(specs).format(*COLUMNS).rstrip()]
    if not colour:
        fmt = "  ".join(specs)
        lines.extend(fmt.format(*r).rstrip() for r in rows)
        return "\n".join(lines)
    specs[4] = "{}"  # the status cell comes padded and coloured
    fmt = "  ".join(specs)
    for r in rows:
        known = states.LOOKS.get(r[4].split()[0])
        code = TONE_COLOURS[known.tone] if known else "0"
        status = f"\x1b[{code}m{r[4].ljust(widths[4])}\x1b[0m"
        lines.append(fmt.format(*r[:4], status, *r[5:]).rstrip())
    return "\n".join(lines)


def ls_text(workers: list[dict[str, Any]], colour: bool = False) -> str:
    """What `clusterui ls` prints: the table, then a line per worker with an error."""
    return "\n".join([worker_table(workers, colour), *worker_errors(workers)])


def worker_errors(workers: list[dict[str, Any]]) -> list[str]:
    """One line per worker with an error or a diagnosis, under the table."""
    out = []
    for w in workers:
        if w.get("error"):
            text = escape(str(w["error"]))
            label = f"{w['app']}:{w['instance']}"
            out.append(f"  {text}" if text.startswith(f"{label} ") else f"  {label}: {text}")
    return out


def log_line(
    line: dict[str, Any], colour: bool = False, with_time: bool = False, raw: bool = False
) -> str:
    """One line for the terminal. The worker's text is escaped (see vocab/safetext) unless
    `raw` (`logs --raw`: the user asked for the bytes as written)."""
    prefix = escape(f"{line['app']}:{line['instance']}")
    stamp = time.strftime("%H:%M:%S ", time.localtime(line["time"])) if with_time else ""
    sep = "|" if line["stream"] == "out" else ("!" if line["stream"] == "err" else "*")
    text = line["text"] if raw else escape(line["text"])
    if colour:
        code = {"out": "36", "err": "31", "sys": "35"}.get(line["stream"], "0")
        return f"{stamp}\x1b[{code}m{prefix} {sep}\x1b[0m {text}"
    return f"{stamp}{prefix} {sep} {text}"


def upkeep_lines(app: dict[str, Any], spec: dict[str, Any]) -> list[str]:
    """describe: health check, start order and cron restart of one app."""
    lines = []
    check = spec.get("health_check")
    if check:
        what = {
            "http": f"http GET {check['path']} expects {check['status']}",
            "tcp": "tcp connect",
            "exec": "exec " + " ".join(check["command"]),
        }[check["kind"]]
        if check.get("port"):
            what += f" on port {check['port']}"
        lines.append(
            f"health     {escape(str(what))}  every {check['interval']}ms, timeout "
            f"{check['timeout']}ms, replaced after {check['failures']} failures"
            + (f", first after {check['initial_delay']}ms" if check["initial_delay"] else "")
        )
    if app.get("depends_on"):
        deps = ", ".join(f"{k}: {v}" for k, v in app["depends_on"].items())
        lines.append(f"depends on {deps}")
    if app.get("waiting_for"):
        lines.append(f"waiting    {escape(str(app['waiting_for']))}")
    preload = app.get("preload")
    if preload:
        if preload.get("gave_up"):
            said = f"not in use: the zygote {preload['gave_up']}"
        elif preload.get("pid"):
            said = f"zygote pid {preload['pid']}, {preload.get('modules', 0)} module(s) imported"
            if preload.get("root"):
                said += f", forked by root zygote {preload['root']}"
        else:
            said = "no zygote now (started with the next worker)"
        lines.append(f"preload    {escape(said)}")
    if app.get("cron_restart"):
        nxt = app.get("cron_next")
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(nxt)) if nxt else "-"
        lines.append(f"cron       {app['cron_restart']}  next run {when}")
    reloads = app.get("reloads")
    if reloads and (reloads.get("ok") or reloads.get("failed")):
        lines.append(f"reloads    {reloads.get('ok', 0)} ok, {reloads.get('failed', 0)} failed")
    return lines


def health_lines(health: dict[str, Any] | None) -> list[str]:
    if not health:
        return []
    state = {True: "passing", False: "FAILING", None: "not probed yet"}[health["ok"]]
    lines = [
        f"  health     {state}  ({health['probes']} probes, {health['failed']} failed, "
        f"{health['consecutive_failures']} in a row)"
    ]
    for r in health["recent"][-3:]:
        when = time.strftime("%H:%M:%S", time.localtime(r["time"]))
        mark = "ok  " if r["ok"] else "FAIL"
        detail = escape(str(r["detail"]))
        lines.append(f"  probe      {when}  {mark}  {r['latency_ms']:.1f} ms  {detail}")
    return lines


# A quarter of a second more for `describe` when the supervisor first sees a worker's
# child, so that the child's CPU % is known (a first reading has nothing to compare
# with): the `tree` op's settle.
DESCRIBE_SETTLE = 0.25

# What a process below a worker left (core/proctree.py), for `describe`.
LEFT_WORDS = {"session": "left its session", "group": "left its group", "orphan": "orphan"}


def tree_lines(tree: dict[str, Any] | None) -> list[str]:
    """The processes below one worker, indented by depth (the caller escapes the lines)."""
    procs = [p for p in (tree or {}).get("processes", []) if p["depth"] > 0]
    if not procs:
        return []
    out = [
        f"  processes  {len(procs)} below it"
        + (f" (+{tree['more']} more)" if tree and tree.get("more") else "")
    ]
    for p in procs:
        cpu = "-" if p["cpu"] is None else f"{p['cpu']:.1f}%"
        left = LEFT_WORDS.get(p["left"] or "")
        out.append(
            f"    {'  ' * (p['depth'] - 1)}pid {p['pid']}  cpu {cpu}  memory "
            f"{human_size(p['memory'])}  {p['cmdline'] or p['name']}"
            + (f"  [{left}]" if left else "")
        )
    return out


def dispatcher_lines(app: dict[str, Any]) -> list[str]:
    """The dispatcher processes of an app's listener, each with what it accepted."""
    rows = app.get("dispatchers") or []  # an older supervisor does not say
    if not rows:
        return []
    each = ", ".join(f"pid {d['pid']} (accepted {d['accepted']})" for d in rows)
    return [f"dispatch   {len(rows)} dispatcher{'s' if len(rows) > 1 else ''}: {each}"]


def describe(info: dict[str, Any], trees: list[dict[str, Any]] | None = None) -> str:
    """`describe`: everything about one target, as text; with `trees` (the `tree`
    operation's answer), the processes below each worker too."""
    below = {t["id"]: t for t in trees or []}
    app = info["app"]
    spec = info["spec"]
    head = [spec["interpreter"], *spec["interpreter_args"]] if spec["interpreter"] else []
    head.append(spec["script"])
    kind = "asgi" if spec.get("asgi") else "wsgi" if spec.get("wsgi") else None
    if kind:
        head = [kind, spec[kind]]
    command = " ".join([*head, *spec["args"]])
    lines = [
        f"app        {app['name']}  ({app['exec_mode']}"
        + (f", {app['dispatch']} on {app['listen']})" if app["listen"] else ")"),
        f"source     {app['source']}",
        f"command    {command}",
        f"cwd        {spec['cwd']}",
        *dispatcher_lines(app),
        f"env        {', '.join(app['env_names']) or '-'}",
        f"watch      {'on' if app['watch'] else 'off'}"
        + (f" ({', '.join(app['watch_paths'])})" if app["watch_paths"] else ""),
        f"restart    autorestart={spec['autorestart']} max_restarts={spec['max_restarts']} "
        f"min_uptime={spec['min_uptime']}ms restart_delay={spec['restart_delay']}ms "
        f"exp_backoff={spec['exp_backoff_restart_delay']}ms kill_timeout={spec['kill_timeout']}ms",
        *upkeep_lines(app, spec),
    ]
    for w in info["workers"]:
        last = w["exit_signal"] or (f"code {w['exit_code']}" if w["exit_code"] is not None else "-")
        lines += [
            "",
            f"worker {w['id']}  {w['app']}:{w['instance']}  pid {w['pid'] or '-'}  {w['status']}",
            f"  restarts {w['restarts']}  uptime {human_duration(w['uptime'])}  "
            f"cpu {w['cpu']:.1f}%  memory {human_size(w['memory'])}  "
            f"connections {w['connections']} (open {w['active']})",
            f"  last exit  {last}" + (f"  error: {w['error']}" if w["error"] else ""),
            f"  out log    {w['out_file']}",
            f"  err log    {w['err_file']}",
            *(
                [f"  log lines  {w['log_dropped']} dropped (the files could not take them)"]
                if w.get("log_dropped")
                else []
            ),
        ]
        for r in w["restart_history"][-5:]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"]))
            why = r["signal"] or (f"code {r['exit_code']}" if r["exit_code"] is not None else "")
            lines.append(f"  restarted  {when}  {r['reason']}  {why}".rstrip())
        if w["metrics"]:
            lines.append("  metrics    " + ", ".join(f"{k}={v}" for k, v in w["metrics"].items()))
        lines += health_lines(w.get("health"))
        lines += tree_lines(below.get(w["id"]))
    # Metric names, env names, errors and watch events can come from a worker: escape all.
    return "\n".join(escape(line, keep_tab=False) for line in lines)


def event_who(event: dict[str, Any]) -> str:
    """APP:INSTANCE, or APP for an app-wide event."""
    inst = event.get("instance")
    return f"{event.get('app')}:{inst}" if inst is not None else str(event.get("app"))


def event_line(event: dict[str, Any], who_width: int = 0) -> str:
    """One line of `clusterui events`: local date and time, who, kind, reason (escaped:
    a reason holds text workers control, such as file names and probe output)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(event.get("time") or 0)))
    who = event_who(event).ljust(who_width)
    kind = str(event.get("kind") or "?")
    return escape(f"{when}  {who}  {kind:<13}  {event.get('reason') or ''}", keep_tab=False)
