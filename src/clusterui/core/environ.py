"""The environment a worker gets, layer by layer (README "Environment").

Lowest precedence first:

1. a few basics from the supervisor's own environment (`BASICS`: what any process needs,
   such as PATH and HOME); nothing else of the supervisor's leaks into apps;
2. the caller's environment: the shell that ran `start`, `up`, `reload FILE`, `resurrect`
   or `clusterui FILE` (saved with the app; `--update-env` replaces it);
3. the file's `env`;
4. `env_NAME` with `--env NAME` (the config loader merges 3 and 4 into `AppSpec.env`);
5. clusterui's own variables (`owned`): the CLUSTERUI_* and LISTEN_* names it sets or
   reads (`OWNED_NAMES`), NODE_APP_INSTANCE, and PORT in proxy mode. Other names with
   those prefixes are the user's (a test harness's CLUSTERUI_TEST_OWNER mark, an app's
   LISTEN_ADDR) and pass like any variable.

Values may be secrets: nothing here logs or prints one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clusterui.core.spec import AppSpec

# From the supervisor's environment, below everything else: a worker started by a client
# that sent no environment (an old client) still finds its programs and its locale.
BASICS: tuple[str, ...] = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
)
BASIC_PREFIXES: tuple[str, ...] = ("LC_",)

OWNED_NAMES: frozenset[str] = frozenset(
    {
        "CLUSTERUI_APP",
        "CLUSTERUI_INSTANCE",
        "CLUSTERUI_HOME",
        "CLUSTERUI_DISPATCH",
        "CLUSTERUI_CHANNEL_FD",
        "CLUSTERUI_KILL_TIMEOUT",
        # the dispatcher's and the supervisor's own, never a worker's
        "CLUSTERUI_DISPATCH_MODE",
        "CLUSTERUI_LISTEN_FD",
        "CLUSTERUI_CONTROL_FD",
        "CLUSTERUI_INHERITED_FDS",
        "NODE_APP_INSTANCE",
        # systemd socket activation (shared mode)
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    }
)
# In the caller's environment these describe the caller's shell, not the app: left out
# without a word. CLUSTERUI_HOME picks the supervisor the command talks to (workers get
# their own home from clusterui); PWD would contradict the app's cwd.
CALLER_DROPPED: tuple[str, ...] = ("CLUSTERUI_HOME", "PWD", "OLDPWD", "_")

MAX_VARIABLES = 10_000
MAX_BYTES = 1 << 19  # all names and values together: a request line is at most 1 MiB


def owned(name: str, proxy: bool = False) -> bool:
    """Whether clusterui sets (or reserves) this variable for a worker."""
    return name in OWNED_NAMES or (proxy and name == "PORT")


def basics(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if k in BASICS or k.startswith(BASIC_PREFIXES)}


def capture(environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The caller's environment as sent to the supervisor, and the owned names it set
    (left out; the caller is warned by name)."""
    env: dict[str, str] = {}
    refused: list[str] = []
    for name, value in environ.items():
        if name in CALLER_DROPPED:
            continue
        if owned(name):
            refused.append(name)
            continue
        env[name] = value
    return env, sorted(refused)


def owned_warning(names: Iterable[str], who: str) -> str:
    """One line naming the owned variables `who` set; clusterui's values win."""
    listed = ", ".join(sorted(names))
    return f"warning: {who} sets {listed}, which clusterui sets for each worker; ignored"


def checked(raw: object) -> dict[str, str] | None:
    """A caller environment received over the socket, or None if it is not one."""
    if not isinstance(raw, dict) or len(raw) > MAX_VARIABLES:
        return None
    size = 0
    for k, v in raw.items():
        if not isinstance(k, str) or not isinstance(v, str):
            return None
        if not k or "=" in k or "\0" in k or "\0" in v:
            return None
        size += len(k) + len(v)
    if size > MAX_BYTES:
        return None
    return dict(raw)


def compose(
    supervisor_env: Mapping[str, str],
    caller: Mapping[str, str],
    app_env: Mapping[str, str],
    own: Mapping[str, str],
    proxy: bool = False,
) -> dict[str, str]:
    """The layers, lowest first; owned names from the caller or the file never pass."""
    env = basics(supervisor_env)
    env.update((k, v) for k, v in caller.items() if not owned(k, proxy))
    env.update((k, v) for k, v in app_env.items() if not owned(k, proxy))
    env.update(own)
    return env


def layer(name: str, spec: AppSpec) -> str:
    """Which layer a worker's variable came from, for `clusterui env`."""
    if owned(name, spec.own_port):
        return "clusterui"
    if name in spec.env:
        return "app"
    if name in spec.caller_env:
        return "caller"
    return "supervisor"


def spec_warnings(spec: AppSpec) -> list[str]:
    """The warning for owned names in an app's caller environment (PORT counts in proxy)."""
    names = [k for k in spec.caller_env if owned(k, spec.own_port)]
    return [f"{spec.name}: " + owned_warning(names, "your environment")] if names else []
