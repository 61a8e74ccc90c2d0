"""Processes that leave the worker's process group (setsid) still end with it.

The worker below starts a grandchild in a new session that keeps the shared-mode
listening socket (fd 3) and the worker's stdout open, then serves. Before the fix it
outlived `down` and a SIGKILLed supervisor (the next `up` failed: address in use) and
each restart leaked the supervisor's two pipe fds. With a cgroup per worker (root, cgroup
v2) and with the subreaper fallback (CLUSTERUI_NO_CGROUPS=1) it dies on stop and down;
with cgroups it also dies with a SIGKILLed supervisor (the guardian kills the cgroups).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import psutil
import pytest
from support import WEB, Env, wait_for

from clusterui.core.apps import PIPE_GRACE
from clusterui.core.cgroups import folder_name

pytestmark = pytest.mark.timeout(120)

ESCAPER = """
import os, runpy, subprocess, sys
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"],
    start_new_session=True,  # setsid: out of the worker's process group
    pass_fds=(3,),  # the listening socket
)
print(f"grandchild {{child.pid}} in session {{os.getsid(child.pid)}}", flush=True)
sys.argv = [{web!r}]
runpy.run_path({web!r}, run_name="__main__")
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def bindable(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def grandchildren(cu: Env) -> list[int]:
    out = cu.run("logs", "esc", "--lines", "1000").stdout
    return [int(p) for p in re.findall(r"grandchild (\d+)", out)]


def escaper_app(cu: Env, fallback: bool) -> int:
    if fallback:
        cu.env["CLUSTERUI_NO_CGROUPS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cu.write("esc.py", ESCAPER.format(web=WEB))
    cu.write(
        "ecosystem.yaml",
        f"""
        apps:
          - name: esc
            script: esc.py
            exec_mode: cluster
            dispatch: shared
            instances: 1
            listen: 127.0.0.1:{port}
            kill_timeout: 1000
        """,
    )
    cu.run("up", "-d", check=True)
    wait_for(lambda: grandchildren(cu), 15, "the grandchild's pid")
    return port


def sup_fds(cu: Env) -> int:
    return len(os.listdir(f"/proc/{cu.supervisor_pid()}/fd"))


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root here")


@pytest.mark.parametrize("fallback", [pytest.param(False, marks=needs_root), True])
def test_down_ends_a_setsid_grandchild_and_frees_the_port(cu: Env, fallback: bool) -> None:
    port = escaper_app(cu, fallback)
    [grandchild] = grandchildren(cu)
    assert alive(grandchild)
    assert os.getsid(grandchild) == grandchild  # it really left the worker's session
    cu.run("down", check=True)
    wait_for(lambda: not alive(grandchild), 10, "the grandchild to die with down")
    assert bindable(port)
    r = cu.run("up", "-d")
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("fallback", [pytest.param(False, marks=needs_root), True])
def test_restarts_leave_no_grandchild_and_no_fd(cu: Env, fallback: bool) -> None:
    escaper_app(cu, fallback)
    cu.run("restart", "esc", check=True)  # the first also opens logs/clusterui.log
    wait_for(lambda: len(grandchildren(cu)) >= 2, 15, "the new grandchild")
    time.sleep(PIPE_GRACE + 1)
    before = sup_fds(cu)
    for i in range(5):
        cu.run("restart", "esc", check=True)
        wait_for(lambda n=i: len(grandchildren(cu)) >= n + 3, 15, "the new grandchild")
    pids = grandchildren(cu)
    wait_for(lambda: [p for p in pids if alive(p)] == pids[-1:], 15, "old grandchildren gone")
    # The pipes of dead workers are closed (two per restart leaked before).
    wait_for(lambda: sup_fds(cu) <= before, 15, f"supervisor fds back to {before}")


@needs_root
def test_a_sigkilled_supervisor_takes_the_grandchild_along(cu: Env) -> None:
    port = escaper_app(cu, fallback=False)
    [grandchild] = grandchildren(cu)
    sup = cu.supervisor_pid()
    folder = os.path.join(_cgroup_base(), folder_name(sup))
    assert os.path.isdir(folder)
    os.kill(sup, signal.SIGKILL)
    wait_for(lambda: not alive(grandchild), 10, "the guardian to kill the worker's cgroup")
    wait_for(lambda: bindable(port), 10, "the port to be free")
    wait_for(lambda: not os.path.exists(folder), 40, f"the guardian to remove {folder}")


def _cgroup_base() -> str:
    from clusterui.core.cgroups import cgroup2_mount, own_cgroup2

    return os.path.join(cgroup2_mount(), own_cgroup2().lstrip("/"))
