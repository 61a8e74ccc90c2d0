"""The dashboard's remembered choices (its colour theme), in a small JSON file of the user's.

The file is `$XDG_CONFIG_HOME/clusterui/dashboard.json`, or `~/.config/clusterui/
dashboard.json` without XDG_CONFIG_HOME. It holds one JSON object, e.g.
`{"theme": "textual-light"}`; keys this version does not know are kept as they are.

The file is never followed through a symbolic link, neither read nor written: a link
there is refused with a warning (a dotfile manager's link is left alone, not replaced).
Its folders are checked as core/safefs checks CLUSTERUI_HOME's (no folder on the way
another user can write); the clusterui folder is created 0700, the file 0600, written
to a temporary name and renamed over the old one, so a crash leaves the old file or the
new one, never half of one. Reading or writing never raises: what went wrong comes back
as one line for the dashboard to show, and the defaults apply.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clusterui.core import safefs

FILE_NAME = "dashboard.json"
MAX_BYTES = 64 * 1024  # a preferences file is a few dozen bytes: anything this big is not one


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """Where the file lives for this environment (XDG base directory rules)."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME", "")
    # The spec: a relative XDG_CONFIG_HOME is invalid and is ignored.
    root = Path(base) if os.path.isabs(base) else Path(env.get("HOME") or Path.home()) / ".config"
    return root / "clusterui" / FILE_NAME


class PrefsFile:
    """Load and save the dashboard's preferences at `path` (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_path()
        self._data: dict[str, Any] = {}

    def load(self) -> tuple[dict[str, Any], str | None]:
        """The preferences, and a one-line warning when the file is there but unusable."""
        try:
            data = self._read()
        except FileNotFoundError:
            return {}, None
        except safefs.UnsafePath as err:
            return {}, f"{err}; the dashboard uses its default settings."
        except (OSError, ValueError) as err:
            return {}, f"{self.path}: {_reason(err)}; the dashboard uses its default settings."
        self._data = data
        return dict(data), None

    def save(self, **changes: Any) -> str | None:
        """Write the preferences with `changes`; None, or one line saying why not."""
        data = {**self._data, **changes}
        try:
            self._write(data)
        except OSError as err:
            return f"could not save the dashboard settings to {self.path}: {_reason(err)}."
        self._data = data
        return None

    def _read(self) -> dict[str, Any]:
        dfd = safefs.open_folder(self.path.parent)
        try:
            fd = os.open(self.path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
        finally:
            os.close(dfd)
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("not a regular file")
            if st.st_uid != os.geteuid():
                raise ValueError("it belongs to another user")
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES // 1024} KiB")
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        folder = safefs.ensure_private_folder(self.path.parent, parents=True)
        dfd = safefs.open_folder(folder)
        name, tmp = self.path.name, f".{self.path.name}.{os.getpid()}.tmp"
        try:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(name, dir_fd=dfd)
                if stat.S_ISLNK(st.st_mode):
                    raise safefs.UnsafePath(f"{self.path} is a symbolic link; it is left alone")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)  # a stale one from a crash (unlink never follows)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600, dir_fd=dfd)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2, sort_keys=True)
                    f.write("\n")
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
        finally:
            os.close(dfd)


def _reason(err: BaseException) -> str:
    if isinstance(err, safefs.UnsafePath):
        return str(err)
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return "it is a symbolic link, which clusterui does not follow here"
    if isinstance(err, OSError):
        return err.strerror or str(err)
    if isinstance(err, json.JSONDecodeError):
        return f"not valid JSON (line {err.lineno}, column {err.colno})"
    if isinstance(err, UnicodeDecodeError):
        return "not UTF-8 text"
    return str(err)
