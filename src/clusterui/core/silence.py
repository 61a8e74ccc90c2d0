"""When the supervisor does not answer: how long a command waits, and why it gave up.

Standard library only: the quick CLI verbs (cli/quick.py) use it as the full client does.
"""

from __future__ import annotations

CALL_TIMEOUT = 60.0  # seconds a request may go unanswered (and unpinged) by default


def process_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (R, S, T, Z, ...), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The name field may hold spaces and parentheses: the state follows the last ')'.
    return data[data.rfind(b")") + 2 :][:1].decode() or None


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def silent_reason(pid: int | None, op: str, timeout: float) -> str:
    """One sentence on why `op` got no answer: a stopped supervisor says so."""
    who = f"the supervisor (pid {pid})" if pid else "the supervisor"
    if pid and process_state(pid) in ("T", "t"):
        return (
            f"{who} is stopped (SIGSTOP or a debugger) and did not answer {op} within "
            f"{timeout:g} s; `kill -CONT {pid}` resumes it (and the request, still queued)"
        )
    return f"{who} did not answer {op} within {timeout:g} s (raise it with --timeout)"
