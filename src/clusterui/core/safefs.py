"""Opening files where another user could have planted a link: CLUSTERUI_HOME, its
folders, the pid file and every log file (with rotation and truncation).

clusterui often runs as root. A log path in a folder another user can write lets that
user replace the file with a symlink (or a hard link) to any file root can write, and
the supervisor would then append worker output to it, or truncate it on rotation.

The rule, applied to every folder we create files in and all its ancestors:

- A folder is *trusted* when it is owned by us or by root, and neither its group nor
  others may write it, unless it has the sticky bit (like /tmp: others cannot rename
  or delete what we own there).
- A symlink is followed only when it is owned by us or by root and sits in a trusted
  folder: the owner's own deliberate links (a home folder on another disk, a log
  folder on a bigger one, /dev/stdout) keep working; a link another user planted does
  not.
- Files are opened with O_NOFOLLOW relative to a descriptor of the checked folder
  (openat), so the folder that was checked is the folder written to. An existing file
  must be ours (owner uid) with one link; a device or a FIFO (/dev/null, a terminal)
  is taken as it is. A truncation opens without O_TRUNC, checks, then truncates.

Every refusal is an `UnsafePath` (an OSError) whose message is one sentence saying why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path


class UnsafePath(PermissionError):
    """A path we refuse to use; str() is one sentence saying why."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _uid() -> int:
    return os.geteuid()


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (_uid(), 0)


def _who(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, ImportError):
        return f"uid {uid}"


def folder_problem(st: os.stat_result, path: str) -> str | None:
    """Why the folder with this stat is not trusted, or None."""
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a folder"
    if not _owner_ok(st):
        return f"{path} belongs to another user, {_who(st.st_uid)}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        return f"{path} can be written by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_folder(path: str | os.PathLike[str]) -> str:
    """The real path of folder `path` once it and every folder above it are trusted and
    every link on the way may be followed; UnsafePath (or OSError) if not."""
    return _resolve(os.path.abspath(path), depth=0)


def _resolve(path: str, depth: int) -> str:
    if depth > 40:
        raise UnsafePath(f"{path}: too many levels of symbolic links")
    real = "/"
    for part in Path(path).parts[1:]:
        here = os.path.join(real, part)
        st = os.lstat(here)
        if stat.S_ISLNK(st.st_mode):
            if not _owner_ok(st):
                raise UnsafePath(
                    f"{here} is a symbolic link owned by another user, {_who(st.st_uid)}; "
                    "clusterui follows only links owned by you or root"
                )
            target = os.readlink(here)
            real = _resolve(os.path.join(real, target), depth + 1)  # absolute target wins
            continue
        if part == "..":
            real = os.path.dirname(real)
            continue
        problem = folder_problem(st, here)
        if problem:
            raise UnsafePath(problem)
        real = here
    st = os.lstat(real)
    problem = folder_problem(st, real)
    if problem:
        raise UnsafePath(problem)
    return real


def open_folder(path: str | os.PathLike[str]) -> int:
    """A descriptor (O_PATH) of trusted folder `path`, for the *at() calls below."""
    real = check_folder(path)
    fd = os.open(real, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        problem = folder_problem(os.fstat(fd), real)  # the one we hold is the one checked
        if problem:
            raise UnsafePath(problem)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(
    path: str | os.PathLike[str],
    flags: int,
    mode: int = 0o600,
    *,
    truncate: bool = False,
) -> int:
    """Open `path` (flags like O_WRONLY|O_APPEND|O_CREAT) under the rule above; with
    `truncate`, truncate it only once it is known to be ours."""
    path = os.path.abspath(path)
    folder, name = os.path.split(path)
    dfd = open_folder(folder)
    try:
        try:
            st = os.lstat(name, dir_fd=dfd)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode):
            # Our own (or root's) link in a trusted folder: follow it, under the same rule.
            if not _owner_ok(st):
                raise UnsafePath(
                    f"{path} is a symbolic link owned by another user, {_who(st.st_uid)}; "
                    "clusterui follows only links owned by you or root"
                )
            target = os.readlink(name, dir_fd=dfd)
            if not target.startswith("/"):
                target = os.path.join(folder, target)
            if target.startswith(("/proc/", "/dev/")):  # /dev/stdout -> /proc/self/fd/1
                fd = os.open(target, (flags & ~os.O_CREAT) | os.O_CLOEXEC)
                return _checked(fd, path, truncate)
            return open_file(target, flags, mode, truncate=truncate)
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        return _checked(fd, path, truncate)
    finally:
        os.close(dfd)


def _checked(fd: int, path: str, truncate: bool) -> int:
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            if st.st_uid != _uid():
                raise UnsafePath(f"{path} belongs to another user, {_who(st.st_uid)}")
            if st.st_nlink > 1:
                raise UnsafePath(f"{path} has {st.st_nlink} hard links; clusterui wants one")
            if truncate:
                os.ftruncate(fd, 0)
        elif stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{path} is a folder")
    except BaseException:
        os.close(fd)
        raise
    return fd


def replace(src: str, dst: str) -> None:
    """Rename src to dst (one folder, as rotation does) through a checked folder fd.
    rename(2) never follows a link at either end."""
    folder = os.path.dirname(os.path.abspath(src))
    dfd = open_folder(folder)
    try:
        os.replace(os.path.basename(src), os.path.basename(dst), src_dir_fd=dfd, dst_dir_fd=dfd)
    finally:
        os.close(dfd)


def ensure_private_folder(path: str | os.PathLike[str], parents: bool = False) -> str:
    """Create folder `path` 0700 if missing; refuse one another user owns (or a link to
    one), and tighten ours to 0700. Returns its real path."""
    path = os.path.abspath(path)
    with contextlib.suppress(FileExistsError):
        if parents:
            os.makedirs(path, mode=0o700)
        else:
            os.mkdir(path, 0o700)
    parent = os.path.dirname(path)
    real_parent = check_folder(parent)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) and not _owner_ok(st):
        raise UnsafePath(
            f"{path} is a symbolic link owned by another user, {_who(st.st_uid)}; "
            "clusterui follows only links owned by you or root"
        )
    if stat.S_ISLNK(st.st_mode):
        real = os.path.realpath(path)
    else:
        real = os.path.join(real_parent, os.path.basename(path))
    fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if st.st_uid != _uid():
            raise UnsafePath(f"{path} belongs to another user, {_who(st.st_uid)}")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    check_folder(real)
    return real
