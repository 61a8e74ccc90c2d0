"""Ecosystem file (PM2-compatible YAML) → validated AppSpec objects.

Every problem is reported as `FILE:LINE: message`, all of them at once, and a file with
any error yields no apps. `spec_from_mapping` runs the same validation on a plain dict
(the CLI's `clusterui start SCRIPT ...`), without line numbers.

One job per module:

- `yamlfile`: YAML text → plain values with their lines (tags, alias bombs and deep
  nesting are refused here);
- `keys`: the keys clusterui reads, PM2's aliases and the PM2 keys it ignores;
- `convert`: one raw value → the typed value an AppSpec holds;
- `builder`: one app's mapping → an AppSpec;
- `loader`: the entry points below;
- `problems`: how a problem is reported.
"""

from clusterui.core.config.keys import ALIASES, KEYS, PM2_UNIMPLEMENTED
from clusterui.core.config.loader import (
    COMMAND_LINE,
    DEFAULT_FILES,
    MAX_FILE_BYTES,
    LoadResult,
    find_default_file,
    load_ecosystem,
    spec_from_mapping,
)
from clusterui.core.config.problems import ConfigError, Problem

__all__ = [
    "ALIASES",
    "COMMAND_LINE",
    "DEFAULT_FILES",
    "KEYS",
    "MAX_FILE_BYTES",
    "PM2_UNIMPLEMENTED",
    "ConfigError",
    "LoadResult",
    "Problem",
    "find_default_file",
    "load_ecosystem",
    "spec_from_mapping",
]
