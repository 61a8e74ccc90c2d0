"""What systemd does for a socket-activated service with Restart=always, in miniature.

Run under `systemd-socket-activate` (which binds the socket and execs us with it as
fd 3): start the command with the socket, LISTEN_PID set to the new process (as
systemd sets it), and start it again whenever it exits. We keep the socket open all
along, as systemd does, so connections wait in its queue between two runs. SIGTERM
is passed to the command, and then we exit.
"""

from __future__ import annotations

import os
import signal
import sys
import time

RESTART_SEC = 0.1


def main() -> int:
    argv = sys.argv[1:]
    child = 0
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child:
            os.kill(child, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    starts = 0
    while not stopping:
        pid = os.fork()
        if pid == 0:
            os.environ["LISTEN_PID"] = str(os.getpid())
            os.execvp(argv[0], argv)
        child = pid
        starts += 1
        print(f"restart_always: start {starts}: pid {pid}", file=sys.stderr, flush=True)
        _pid, status = os.waitpid(pid, 0)
        child = 0
        print(f"restart_always: pid {pid} exited ({status})", file=sys.stderr, flush=True)
        time.sleep(RESTART_SEC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
