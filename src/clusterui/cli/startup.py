"""`clusterui startup [--user]` / `unstartup` (PM2's `pm2 startup` / `pm2 unstartup`).

A systemd unit that starts the supervisor at boot and resurrects CLUSTERUI_HOME/dump.yaml
(`clusterui save` writes it). As root: a system unit, `clusterui-USER.service`, wanted by
multi-user.target. Otherwise (or with --user): a user unit, `clusterui.service`, wanted by
default.target; it starts at boot only with lingering on (`loginctl enable-linger`).

Enabling is the symlink `systemctl enable` would make, made here, so it works with no
running systemd and under `--root DIR` (packaging, tests). `systemctl daemon-reload` runs
when systemd is running and the root is `/`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clusterui.core.dump import DUMP_NAME
from clusterui.core.home import Home

MARKER = "# Written by `clusterui startup`; `clusterui unstartup` removes it."


class StartupError(Exception):
    pass


@dataclass
class Unit:
    name: str
    path: Path  # the unit file, under the root
    wants: Path  # the enabling symlink, under the root
    user_unit: bool


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/") if root != Path("/") else path


def locate(root: Path, user_unit: bool) -> Unit:
    if user_unit:
        base = Path.home() / ".config/systemd/user"
        name, target = "clusterui.service", "default.target"
    else:
        base = Path("/etc/systemd/system")
        name, target = f"clusterui-{getpass.getuser()}.service", "multi-user.target"
    path = _under(root, base / name)
    return Unit(name, path, path.parent / f"{target}.wants" / name, user_unit)


def _quote(value: str) -> str:
    """A value for a unit file: quoted, with systemd's specifiers (%) and $ escaped."""
    text = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def render(home: Home, user_unit: bool, path_env: str) -> str:
    python = sys.executable
    command = f"{_quote(python)} -m clusterui"
    lines = [
        MARKER,
        "[Unit]",
        f"Description=clusterui: the apps saved in {home.root}/{DUMP_NAME}".replace("%", "%%"),
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        # `resurrect` starts the supervisor in the background, loads the dump and exits;
        # the supervisor writes its pid file before it answers, so systemd finds it.
        "Type=forking",
    ]
    if not user_unit:
        lines.append(f"User={getpass.getuser()}")
    lines += [
        f"Environment={_quote('CLUSTERUI_HOME=' + str(home.root))}",
        f"Environment={_quote('PATH=' + path_env)}",
        f"PIDFile={str(home.pidfile).replace('%', '%%')}",
        f"ExecStart={command} resurrect",
        f"ExecStop={command} down",
        "Restart=on-failure",
        "RestartSec=2",
        "TimeoutStopSec=60",
        "",
        "[Install]",
        f"WantedBy={'default.target' if user_unit else 'multi-user.target'}",
        "",
    ]
    return "\n".join(lines)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".clusterui-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # replaces a planted symlink instead of writing through it
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _ours(path: Path) -> bool:
    try:
        return not path.is_symlink() and path.read_text().startswith(MARKER)
    except OSError:
        return False


def _systemd_running(root: Path) -> bool:
    return (
        root == Path("/")
        and Path("/run/systemd/system").is_dir()
        and bool(shutil.which("systemctl"))
    )


def _daemon_reload(unit: Unit) -> str:
    argv = ["systemctl", *(["--user"] if unit.user_unit else []), "daemon-reload"]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not run {' '.join(argv)}: {e}"
    return (
        f"ran {' '.join(argv)}"
        if r.returncode == 0
        else f"{' '.join(argv)} failed: {r.stderr.strip()}"
    )


def install(home: Home, user_unit: bool, root: Path) -> list[str]:
    """Write and enable the unit; the lines say what was done and how to undo it."""
    unit = locate(root, user_unit)
    if unit.path.exists() and not _ours(unit.path):
        raise StartupError(f"{unit.path} exists and was not written by clusterui; left alone")
    _write(unit.path, render(home, user_unit, os.environ.get("PATH", os.defpath)))
    unit.wants.parent.mkdir(parents=True, exist_ok=True)
    link_target = Path("..") / unit.name
    if unit.wants.is_symlink() and os.readlink(unit.wants) == str(link_target):
        pass
    elif unit.wants.exists() or unit.wants.is_symlink():
        raise StartupError(f"{unit.wants} exists and is not clusterui's link; left alone")
    else:
        os.symlink(link_target, unit.wants)
    ctl = "systemctl --user" if user_unit else "systemctl"
    out = [f"wrote {unit.path}", f"enabled it: {unit.wants} -> {link_target}"]
    if _systemd_running(root):
        out.append(_daemon_reload(unit))
        out.append(f"start it now with: {ctl} start {unit.name}")
    elif root == Path("/"):
        out.append("systemd is not running here: the unit takes effect at the next boot")
    if not (home.root / DUMP_NAME).exists():
        out.append(f"nothing is saved yet: run `clusterui save` so {DUMP_NAME} has your apps")
    if user_unit:
        user = getpass.getuser()
        out.append(
            "a user unit starts at boot only if your user lingers: "
            f"`sudo loginctl enable-linger {user}` (as root, `clusterui startup` writes a"
            " system unit instead)"
        )
    out.append(f"undo: clusterui unstartup{' --user' if user_unit else ''}")
    return out


def uninstall(user_unit: bool, root: Path) -> list[str]:
    unit = locate(root, user_unit)
    out = []
    if unit.wants.is_symlink() and os.readlink(unit.wants) == str(Path("..") / unit.name):
        unit.wants.unlink()
        out.append(f"removed {unit.wants}")
    if unit.path.exists() or unit.path.is_symlink():
        if not _ours(unit.path):
            raise StartupError(f"{unit.path} was not written by clusterui; left alone")
        unit.path.unlink()
        out.append(f"removed {unit.path}")
    if not out:
        return [f"no clusterui unit at {unit.path}; nothing to remove"]
    if _systemd_running(root):
        out.append(_daemon_reload(unit))
    out.append("the running supervisor and its apps were left alone (`clusterui down` stops them)")
    return out
