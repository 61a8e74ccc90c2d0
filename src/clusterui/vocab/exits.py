"""The exit codes of clusterui's processes (the CLI, the supervisor, the dispatcher and
the children they fork) and the two errors that carry one.

An operation the supervisor refuses raises OpError; the control connection sends its
message and code to the client, which raises ClientError with them, and the CLI prints
the message and exits with the code. Both live here, not in the transport modules, so
every layer names the same codes.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class Exit:
    """The codes, as plain ints: `clusterui ls` must not pay for importing `enum`."""

    OK: Final = 0
    FAILED: Final = 1  # the operation failed (a worker did not start, a reload stopped, ...)
    # The request was wrong: bad arguments, a bad file, an unknown app; for the supervisor
    # and the dispatcher, what they were started with (arguments, inherited fds, home).
    USAGE: Final = 2
    NO_SUPERVISOR: Final = 3  # none is running, or the connection to it was lost
    EXEC_FAILED: Final = 127  # a forked child could not exec its program, as a shell reports it
    INTERRUPTED: Final = 130  # Ctrl-C, as a shell reports SIGINT


class ClusteruiError(Exception):
    """One sentence for the user, and the exit code that goes with it."""

    def __init__(self, message: str, code: int = Exit.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = int(code)


class OpError(ClusteruiError):
    """An operation the supervisor refuses or could not carry out."""


class ClientError(ClusteruiError):
    """What the CLI and the dashboard see: an OpError from the supervisor, or a failure
    to reach it."""
