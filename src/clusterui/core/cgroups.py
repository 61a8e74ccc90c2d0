"""A cgroup (v2) per worker process, so nothing a worker starts escapes a stop.

A process group is not enough: a worker's child can call setsid() and leave it, and
then outlives `stop`, `down` and even a SIGKILLed supervisor, keeping ports and pipes.
A cgroup cannot be left. Each worker is put into its own cgroup,
`<our cgroup2>/clusterui-<owner>/a<n>/w<serial>` (a folder per app, a cgroup per
worker process), between fork and exec; when the
worker's main process exits, `cgroup.kill` ends everything still in it, and the folder
is removed once empty. If the supervisor dies, the guardian kills the whole
`clusterui-<pid>` subtree with one write (see guardian.py).

The supervisor's folder is named for its owner beyond doubt: `<pid namespace>-<pid>-<start
time>`. Another supervisor removes it as stale only when it sees the same PID namespace
and no process with that pid and start time. A pid alone is not enough: a supervisor in
a container's PID namespace shares our cgroup but sees none of our pids, and a pid can be
reused.

Where cgroup v2 is not mounted or not writable (not root, no delegation), `CgroupTree.open`
returns None and says why; the supervisor then falls back to being a child subreaper
(see reaper.py), with the limits documented in RELIABILITY.md.
"""

from __future__ import annotations

import contextlib
import os

from clusterui.core.stats import read_stat

PREFIX = "clusterui-"


def cgroup2_mount() -> str | None:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup on a pure v2 system,
    often /sys/fs/cgroup/unified on a hybrid one; None if it is not mounted."""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[2] == "cgroup2":
                    return fields[1].replace("\\040", " ")
    except OSError:
        pass
    return None


def own_cgroup2() -> str | None:
    """This process's cgroup in the v2 hierarchy ("0::/path" in /proc/self/cgroup)."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


class CgroupTree:
    """The supervisor's folder of worker cgroups, one folder per app inside it. The app
    folders stay for the supervisor's life (an app deleted and loaded again gets its
    folder back), and go with the tree."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._apps: dict[str, str] = {}  # app name -> its folder

    def app_folder(self, app: str, *, make: bool = True) -> str | None:
        """The folder of `app`'s worker cgroups (made on first use with `make`), or None."""
        path = self._apps.get(app)
        if path is None and make:
            path = _made(os.path.join(self.root, f"a{len(self._apps)}"))
            if path is not None:
                self._apps[app] = path
        return path

    @classmethod
    def open(cls, owner_pid: int) -> tuple[CgroupTree | None, str]:
        """Create `clusterui-<owner>` for `owner_pid` under our cgroup; (tree, "") or
        (None, why)."""
        mount = cgroup2_mount()
        if mount is None:
            return None, "cgroup v2 is not mounted"
        mine = own_cgroup2()
        if mine is None:
            return None, "this process is in no cgroup v2 (no 0:: line in /proc/self/cgroup)"
        base = os.path.join(mount, mine.lstrip("/"))
        _remove_stale(base)
        name = folder_name(owner_pid)
        if name is None:
            return None, f"cannot read the PID namespace or start time of pid {owner_pid}"
        root = os.path.join(base, name)
        try:
            os.mkdir(root, 0o755)
        except FileExistsError:
            pass
        except OSError as exc:
            return None, f"cannot create a cgroup under {base}: {exc.strerror or exc}"
        if not os.access(os.path.join(root, "cgroup.kill"), os.W_OK):
            with contextlib.suppress(OSError):
                os.rmdir(root)
            return None, f"{root} has no writable cgroup.kill (kernel older than 5.14?)"
        return cls(root), ""

    def create(self, serial: int, app: str) -> str | None:
        """The folder for one worker process of `app` (made now), or None if that failed."""
        folder = self.app_folder(app)
        return None if folder is None else _made(os.path.join(folder, f"w{serial}"))

    @staticmethod
    def kill(path: str) -> None:
        """SIGKILL every process in the cgroup at `path` (and below it)."""
        with contextlib.suppress(OSError), open(os.path.join(path, "cgroup.kill"), "w") as f:
            f.write("1")

    @staticmethod
    def populated(path: str) -> bool:
        try:
            with open(os.path.join(path, "cgroup.events")) as f:
                return "populated 1" in f.read()
        except OSError:
            return False

    @staticmethod
    def remove(path: str) -> bool:
        """Remove an empty cgroup; False while processes are still dying in it."""
        try:
            os.rmdir(path)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Clean shutdown: every worker is stopped; kill stragglers, remove the folders
        (deepest first: a cgroup with cgroups inside cannot be removed)."""
        self.kill(self.root)
        for folder in _subfolders(self.root):
            for worker in _subfolders(folder):
                self.remove(worker)
            self.remove(folder)
        self.remove(self.root)


def _made(path: str) -> str | None:
    """`path`, a cgroup made now if it was not there; None if it cannot be made."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError:
        return None
    return path


def _subfolders(path: str) -> list[str]:
    """The cgroups directly inside `path`."""
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


class CpuUse:
    """Whether anything in a cgroup has run since the last look: its `cpu.stat`
    usage_usec (kept open, read with pread), which the kernel keeps whether or not the
    cpu controller is enabled. The sampler then skips reading each idle worker's own
    figures (core/stats.py)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, bytes]] = {}  # folder -> (fd, last usage line)

    def still(self, folder: str) -> bool:
        """True if nothing in `folder` has used the CPU since the last call for it; False
        the first time, and when it cannot be read."""
        entry = self._seen.get(folder)
        try:
            if entry is None:
                fd = os.open(os.path.join(folder, "cpu.stat"), os.O_RDONLY | os.O_CLOEXEC)
                entry = (fd, b"")
            line = os.pread(entry[0], 64, 0).partition(b"\n")[0]
        except OSError:
            if entry is not None:
                self.forget(folder)
            return False
        self._seen[folder] = (entry[0], line)
        return line == entry[1]

    def forget(self, folder: str) -> None:
        entry = self._seen.pop(folder, None)
        if entry is not None:
            with contextlib.suppress(OSError):
                os.close(entry[0])

    def keep(self, folders: set[str]) -> None:
        """Close what is kept for folders no longer asked about."""
        for folder in [f for f in self._seen if f not in folders]:
            self.forget(folder)


def folder_name(pid: int) -> str | None:
    """`clusterui-<pid namespace inode>-<pid>-<start time>`: one process, across
    namespaces and pid reuse; None if /proc cannot say."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None
    start = _start_time(pid)
    inode = ns.partition("[")[2].rstrip("]")
    if start is None or not inode.isdigit():
        return None
    return f"{PREFIX}{inode}-{pid}-{start}"


def _start_time(pid: int) -> str | None:
    """When `pid` started (clock ticks since boot), as the folder name writes it."""
    st = read_stat(pid)
    return None if st is None else str(st.start)


def _stale(name: str, our_ns: str) -> bool:
    """Whether the folder `name` is a supervisor's that is gone. Folders of other PID
    namespaces, and names we do not know, are never ours to judge."""
    ns, _, rest = name[len(PREFIX) :].partition("-")
    pid, _, start = rest.partition("-")
    if not name.startswith(PREFIX) or ns != our_ns or not pid.isdigit() or not start:
        return False
    return _start_time(int(pid)) != start


def _remove_stale(base: str) -> None:
    """Folders of supervisors that are gone (their guardian could not remove them while
    killed processes waited to be reaped): kill what is left, remove what is empty."""
    ours = folder_name(os.getpid())
    try:
        names = os.listdir(base)
    except OSError:
        return
    if ours is None:
        return
    for name in names:
        if _stale(name, ours[len(PREFIX) :].partition("-")[0]):
            CgroupTree(os.path.join(base, name)).close()


def enter(path: str) -> None:
    """In the forked child, before exec: move this process into the cgroup at `path`."""
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, b"0")
    finally:
        os.close(fd)
