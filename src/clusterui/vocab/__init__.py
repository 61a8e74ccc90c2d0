"""Vocabulary shared by every part of clusterui: pure data and pure functions, no I/O.

The supervisor (core), the CLI, the dashboard and the tests all speak these words; this
package imports nothing from the rest of clusterui, so any of them may import it (the
import-linter contracts in pyproject.toml hold it to that).

- `states`: worker statuses, how they are grouped and shown, the allowed transitions;
- `snapshot`: the shape of the state the supervisor serves (`ls --json`, `state` events);
- `exits`: the exit codes of clusterui's processes;
- `logs`: the supervisor's own log stream and the skipped-lines note;
- `safetext`: the one rule for showing text a worker controls (escaped, never markup).
"""
