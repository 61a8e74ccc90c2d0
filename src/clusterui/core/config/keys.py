"""The ecosystem file's vocabulary: the keys clusterui reads, PM2's other spellings of
them, and the PM2 keys it accepts but ignores."""

from __future__ import annotations

import re

from clusterui.core.spec import KEY_KINDS

# Every AppSpec field marked as a key (clusterui.core.spec.key) is one.
KEYS: tuple[str, ...] = tuple(KEY_KINDS)

# PM2's other spellings (lib/API/schema.json) → the key they stand for.
ALIASES: dict[str, str] = {
    "exec": "script",
    "exec_interpreter": "interpreter",
    "node_args": "interpreter_args",
    "interpreterArgs": "interpreter_args",
    "output": "out_file",
    "out": "out_file",
    "out_log": "out_file",
    "error": "error_file",
    "err": "error_file",
    "err_file": "error_file",
    "err_log": "error_file",
    "combine_logs": "merge_logs",
    "cron": "cron_restart",
}

# PM2 keys clusterui accepts and ignores, with a hint where there is a useful one.
PM2_UNIMPLEMENTED: dict[str, str] = {
    "name_prefix": "",
    "filter_env": "",
    "namespace": "",
    "install_url": "",
    "log_file": "use out_file and error_file",
    "log": "use out_file and error_file",
    "disable_logs": "",
    "log_type": "",
    "time": "",
    "pid_file": "",
    "pid": "",
    "source_map_support": "",
    "disable_source_map_support": "",
    "vizion": "",
    "watch_options": "",
    "execute_command": "",
    "force": "",
    "append_env_to_name": "",
    "post_update": "",
    "trace": "",
    "disable_trace": "",
    "v8": "",
    "event_loop_inspector": "",
    "deep_monitoring": "",
    "increment_var": "",
    "instance_var": "CLUSTERUI_INSTANCE and NODE_APP_INSTANCE are set",
    "pmx": "",
    "automation": "",
    "treekill": "the whole process group is always signalled",
    "port": "set PORT in env, or use 'listen'",
    "username": "",
    "uid": "run clusterui as that user; `clusterui export systemd` maps it to User=",
    "user": "run clusterui as that user; `clusterui export systemd` maps it to User=",
    "gid": "run clusterui as that group; `clusterui export systemd` maps it to Group=",
    "windowsHide": "",
    "kill_retry_time": "",
    "write": "",
    "io": "",
    "autostart": "",
    "stop_exit_codes": "",
}

ENV_KEY = re.compile(r"env_[A-Za-z0-9_.-]+")
TOP_KEYS = ("apps",)
# Top-level keys besides `apps` (config.upkeep): where to serve Prometheus metrics.
TOP_METRICS_KEYS = ("metrics_listen", "metrics_public")
TOP_PM2_KEYS = ("deploy",)

INTERPRETERS = {".py": "python", ".js": "node", ".mjs": "node", ".cjs": "node", ".sh": "bash"}


# PM2 keys of the list above that clusterui does not apply (every app runs as clusterui's
# own user) but keeps for `clusterui export`: key → the AppSpec field.
EXPORT_ONLY: dict[str, str] = {"uid": "user", "user": "user", "gid": "group"}
