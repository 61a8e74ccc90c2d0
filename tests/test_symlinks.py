"""Links and folders another user controls are refused (run as root, the way servers run
clusterui; the other user is `nobody`, through setpriv).

Each test plants what a less trusted user could, then checks the supervisor neither
wrote through it nor truncated anything, and said why in one sentence.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from support import Env, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a second uid")

NOBODY = 65534
SECRET = b"root's secret, 0600\n"

APP = """
import time
i = 0
while True:
    print("line %d " % i + "x" * 60, flush=True)
    i += 1
    time.sleep(0.05)
"""


@pytest.fixture(autouse=True)
def _traversable(cu: Env) -> None:
    os.chmod(cu.root, 0o755)  # nobody must reach the shared folders inside


def as_nobody(*argv: str) -> None:
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv],
        check=True,
    )


def secret_file(cu: Env) -> Path:
    vault = cu.root / "vault"
    vault.mkdir(mode=0o755)
    path = vault / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def unchanged(path: Path) -> bool:
    st = path.stat()
    return path.read_bytes() == SECRET and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0


def app_with_log(cu: Env, out_file: Path, **keys: object) -> None:
    cu.write("app.py", APP)
    more = "".join(f"\n    {k}: {v}" for k, v in keys.items())
    cu.write(
        "ecosystem.yaml",
        f"apps:\n  - name: app\n    script: app.py\n    out_file: {out_file}{more}\n",
    )


def sys_lines(cu: Env) -> str:
    return "\n".join(
        line
        for line in cu.run("logs", "app", "--lines", "5000").stdout.splitlines()
        if " * " in line
    )


# ---- CLUSTERUI_HOME ---------------------------------------------------------------------


def test_a_home_another_user_owns_is_refused(cu: Env) -> None:
    cu.home.mkdir(mode=0o700)
    os.chown(cu.home, NOBODY, NOBODY)
    r = cu.run("start", "true")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"clusterui: refusing to use {cu.home}: {cu.home} belongs to another user, "
        f"nobody (uid {NOBODY})"
    ]
    assert not (cu.home / "supervisor.pid").exists()
    assert not cu.supervisor_alive()


def test_a_logs_folder_another_user_owns_is_refused(cu: Env) -> None:
    cu.home.mkdir(mode=0o700)
    (cu.home / "logs").mkdir()
    os.chmod(cu.home / "logs", 0o777)
    os.chown(cu.home / "logs", NOBODY, NOBODY)
    r = cu.run("start", "true")
    assert r.returncode == 1, r.stderr
    assert "logs belongs to another user" in r.stderr and len(r.stderr.splitlines()) == 1
    # Left as found, and nothing written into it.
    assert os.listdir(cu.home / "logs") == []


def test_our_own_loose_folders_are_tightened(cu: Env) -> None:
    cu.home.mkdir(mode=0o777)
    os.chmod(cu.home, 0o777)
    (cu.home / "logs").mkdir()
    os.chmod(cu.home / "logs", 0o777)
    app_with_log(cu, cu.home / "logs" / "app.log")
    cu.run("up", "-d", check=True)
    assert stat.S_IMODE(os.stat(cu.home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cu.home / "logs").st_mode) == 0o700


def test_a_home_link_planted_by_another_user_is_refused(cu: Env) -> None:
    target = cu.root / "real-home"
    target.mkdir(mode=0o700)
    parent = cu.root / "shared"
    parent.mkdir()
    os.chmod(parent, 0o1777)  # like /tmp
    link = parent / "home"
    as_nobody("ln", "-s", str(target), str(link))
    r = _run_home(cu, link, "start", "true")
    assert r.returncode == 1
    assert "is a symbolic link owned by another user" in r.stderr, r.stderr


def test_the_owners_own_home_link_is_followed(cu: Env) -> None:
    target = cu.root / "elsewhere"
    target.mkdir(mode=0o700)
    link = cu.root / "home-link"
    link.symlink_to(target)
    app_with_log(cu, target / "logs" / "app.log")
    r = _run_home(cu, link, "up", "-d")
    assert r.returncode == 0, r.stderr
    try:
        assert (target / "supervisor.pid").exists()
    finally:
        _run_home(cu, link, "down")


def _run_home(cu: Env, home: Path, *args: str):
    saved = cu.env["CLUSTERUI_HOME"]
    cu.env["CLUSTERUI_HOME"] = str(home)
    try:
        return cu.run(*args)
    finally:
        cu.env["CLUSTERUI_HOME"] = saved


# ---- log files ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o1777])
def test_a_log_link_another_user_planted_is_not_followed(cu: Env, mode: int) -> None:
    """The attack: nobody plants out.log -> root's 0600 file; with log_max_size and
    log_retain 0 a rotation would also truncate it."""
    secret = secret_file(cu)
    shared = cu.root / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    log = shared / "out.log"
    as_nobody("ln", "-s", str(secret), str(log))
    app_with_log(cu, log, log_max_size="1K", log_retain=0)
    cu.run("up", "-d", check=True)
    wait_for(lambda: "cannot open log file" in sys_lines(cu), 15, "the refusal in the app's log")
    why = "can be written by other users" if mode == 0o777 else "symbolic link owned by another"
    assert why in sys_lines(cu)
    wait_for(lambda: "| line " in cu.run("logs", "app", "--lines", "5").stdout, 15, "output")
    assert unchanged(secret)
    assert os.path.islink(log)  # left alone


def test_a_log_file_another_user_created_is_refused(cu: Env) -> None:
    shared = cu.root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    log = shared / "out.log"
    as_nobody("touch", str(log))
    app_with_log(cu, log)
    cu.run("up", "-d", check=True)
    wait_for(lambda: "belongs to another user, nobody" in sys_lines(cu), 15, "the refusal")
    assert log.stat().st_size == 0


def test_rotation_never_writes_through_a_planted_link(cu: Env) -> None:
    """In a sticky folder we may log (we own our file); nobody plants out.log.1 and
    out.log.2 as links to root's file before a rotation: rename replaces the links."""
    secret = secret_file(cu)
    shared = cu.root / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    log = shared / "out.log"
    app_with_log(cu, log, log_max_size="2K", log_retain=2)
    for name in ("out.log.1", "out.log.2"):
        as_nobody("ln", "-s", str(secret), str(shared / name))
    cu.run("up", "-d", check=True)
    wait_for(lambda: not os.path.islink(shared / "out.log.2"), 20, "two rotations")
    assert unchanged(secret)
    assert log.stat().st_uid == 0 and log.stat().st_size <= 2048
