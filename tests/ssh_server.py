"""A small SSH server for tests/test_ssh.py, built on asyncssh (a PyPI package, so a fresh
machine needs no Debian openssh-server).

    python tests/ssh_server.py DIR

DIR holds host_key and authorized_keys (OpenSSH formats). The server listens on a free
loopback port and prints it on stdout. Each session runs its command (`ssh host CMD`)
with `sh -c` in its own session on a new pseudo-terminal, like sshd: the pty is the
command's controlling terminal, sized as the client asked, with a bare environment.
When the connection drops, the pty's master side is closed, so the kernel hangs up the
terminal and the command gets SIGHUP, which is what the test is about.

The process names itself "asyncsshd" (its comm), so a test can tell that a process runs
under the SSH server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import pty
import signal
import struct
import sys
import termios
from pathlib import Path

import asyncssh

_PR_SET_NAME = 15


def _name_process(name: bytes) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def _set_size(fd: int, cols: int, rows: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtySession(asyncssh.SSHServerSession):
    """One `exec` (or shell) request, run on a pseudo-terminal."""

    def __init__(self) -> None:
        self.chan: asyncssh.SSHServerChannel | None = None
        self.term = "xterm"
        self.size = (80, 24)
        self.command: str | None = None
        self.pid = 0
        self.master = -1

    def connection_made(self, chan: asyncssh.SSHServerChannel) -> None:
        self.chan = chan

    def pty_requested(self, term_type: str, term_size: tuple, term_modes: dict) -> bool:
        self.term = term_type or "xterm"
        self.size = (term_size[0] or 80, term_size[1] or 24)
        return True

    def shell_requested(self) -> bool:
        self.command = None
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def session_started(self) -> None:
        argv = ["/bin/sh", "-c", self.command] if self.command else ["/bin/sh", "-i"]
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": os.environ.get("HOME", "/root"),
            "TERM": self.term,
            "SHELL": "/bin/sh",
        }
        pid, master = pty.fork()
        if pid == 0:  # the child: a new session whose controlling terminal is the pty
            try:
                signal.signal(signal.SIGHUP, signal.SIG_DFL)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.master = pid, master
        _set_size(master, *self.size)
        asyncio.get_running_loop().add_reader(master, self._output)

    def _output(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every process holding the terminal has closed it
            data = b""
        if data:
            if self.chan is not None:
                with contextlib.suppress(BrokenPipeError):
                    self.chan.write(data)
            return
        self._close_master()
        asyncio.ensure_future(self._finish())

    async def _finish(self) -> None:
        _, status = await asyncio.to_thread(os.waitpid, self.pid, 0)
        if self.chan is not None:
            self.chan.exit(os.waitstatus_to_exitcode(status) & 0xFF)

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.write(self.master, data)

    def eof_received(self) -> bool:
        return True  # the client sent all its input; the command's output still flows

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.master >= 0:
            _set_size(self.master, width, height)

    def connection_lost(self, exc: Exception | None) -> None:
        # The client is gone: hang up the terminal (the command gets SIGHUP), then reap it.
        if self.master >= 0:
            self._close_master()
            asyncio.ensure_future(asyncio.to_thread(os.waitpid, self.pid, 0))
        self.chan = None

    def _close_master(self) -> None:
        if self.master >= 0:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.master = -1


class Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # a key from authorized_keys is required

    def password_auth_supported(self) -> bool:
        return False

    def session_requested(self) -> PtySession:
        return PtySession()


async def main(directory: Path) -> None:
    server = await asyncssh.create_server(
        Server,
        "127.0.0.1",
        0,
        server_host_keys=[str(directory / "host_key")],
        authorized_client_keys=str(directory / "authorized_keys"),
        encoding=None,
        allow_scp=False,
        line_editor=False,  # bytes pass through as they are, like sshd
    )
    port = server.sockets[0].getsockname()[1]
    print(port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    _name_process(b"asyncsshd")
    asyncio.run(main(Path(sys.argv[1])))
