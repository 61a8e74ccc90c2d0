#!/usr/bin/env bash
# Mutation testing (mutmut 3) of the modules where a wrong comparison is a broken promise.
# Slow and CPU heavy, so not part of CI. Each target mutates one module and runs only the
# test files that cover it, under `nice -n 10` (MUTATION_NICE), in a scratch copy of this tree
# ($MUTATION_DIR/<target>, default /tmp/clusterui-mutation), so editing meanwhile is safe.
#
#   scripts/mutation.sh [policy|dispatch|reload|logs|loghub|control ...]   (default: all six)
#   then: cd /tmp/clusterui-mutation/<target> && mutmut results  (survivors; `--all` for all)
#         mutmut show <mutant>                                     (its diff)
#         python <this dir>/mutmut/killers.py                      (the test killing each)
#
# Needs `pip install -e '.[mutation]'` (mutmut 3) in .venv. The supervisor and the dispatcher run in their
# own processes; scripts/mutmut/ makes them run the mutants and report which functions
# they called (see its sitecustomize.py).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
OUT=${MUTATION_DIR:-/tmp/clusterui-mutation}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(policy dispatch reload logs loghub control)

for target in "${targets[@]}"; do
  case $target in
    policy)   # the restart policy: backoff, its reset, unstable restarts
      files='"src/clusterui/core/policy.py"'
      tests='"tests/test_policy.py"'
      names=('clusterui.core.policy.*') ;;
    dispatch) # routing (round-robin, least-connections) and drain
      files='"src/clusterui/dispatch/core.py"'
      tests='"tests/test_dispatch.py"'
      names=('clusterui.dispatch.core.*') ;;
    reload)   # the rolling reload and the start/stop steps it is made of
      files='"src/clusterui/core/apps.py"'
      tests='"tests/test_cluster.py"'
      names=('clusterui.core.apps.xǁAppǁrolling_reload*' 'clusterui.core.apps.xǁAppǁ_rolling_reload*'
             'clusterui.core.apps.xǁAppǁ_keep_old*' 'clusterui.core.apps.xǁAppǁwait_ready*'
             'clusterui.core.apps.xǁAppǁstart_slot*' 'clusterui.core.apps.xǁAppǁrequest_stop*') ;;
    logs)     # log rotation (size limit, retained files)
      files='"src/clusterui/core/logs*"'
      tests='"tests/test_log_rotation.py"'
      names=('clusterui.core.logs*LogSink*') ;;
    loghub)   # LogHub's PM2 flags: out_file/error_file, merge_logs, /dev/ paths, a single
              # fork instance, log_date_format, log_max_size/log_retain handed to the sinks
      files='"src/clusterui/core/logs/hub.py"'
      tests='"tests/test_logs.py", "tests/test_logs_files.py"'
      names=('clusterui.core.logs.hub.xǁLogHubǁ_path__*' 'clusterui.core.logs.hub.xǁLogHubǁpaths__*'
             'clusterui.core.logs.hub.xǁLogHubǁattach__*' 'clusterui.core.logs.hub.xǁLogHubǁhistory__*'
             'clusterui.core.logs.hub.xǁLogHubǁ_acquire__*') ;;
    control)  # the control socket: its modes and the peer-credential check
      files='"src/clusterui/core/control.py"'
      tests='"tests/test_control_peer.py"'
      names=('clusterui.core.control.x_peer_uid*' 'clusterui.core.control.xǁControlServerǁ_serve*'
             'clusterui.core.control.xǁControlServerǁstart*') ;;
    *) echo "mutation.sh: unknown target $target (policy dispatch reload logs loghub control)" >&2; exit 2 ;;
  esac
  # MUTANTS="glob ..." narrows a run to some of the target's mutants; MUTATION_KEEP=1
  # runs them in the target's existing work directory (a later batch of a long target).
  [ -z "${MUTANTS:-}" ] || read -r -a names <<<"$MUTANTS"
  work=$OUT/$target
  if [ -n "${MUTATION_KEEP:-}" ] && [ -f "$work/pyproject.toml" ]; then
    # Another batch of the same target: the same mutants and mutmut's recorded stats
    # (which tests run each function), so neither is made again.
    echo "== $target: $work (kept)"
  else
    rm -rf "$work"
    # mutants/src must exist before Python starts, or the PYTHONPATH entry below is skipped.
    mkdir -p "$work/hits" "$work/mutants/src"
    cp -r "$ROOT/src" "$ROOT/tests" "$ROOT/examples" "$ROOT/bench" "$ROOT/pyproject.toml" "$work/"
    cat >>"$work/pyproject.toml" <<TOML

[tool.mutmut]
source_paths = ["src"]
only_mutate = [$files]
also_copy = ["examples", "bench"]  # tests/support.py imports bench/common.py
pytest_add_cli_args = ["-p", "mutmut_hits", "-p", "no:cacheprovider", "-q"]
pytest_add_cli_args_test_selection = [$tests]
use_git_change_detection = false
TOML
    echo "== $target: $work"
  fi
  (
    cd "$work"
    export PATH="$VENV/bin:$PATH"
    # Processes the tests start import the mutated copy, and report their calls.
    export PYTHONPATH="$work/mutants/src:$ROOT/scripts/mutmut"
    export CLUSTERUI_MUTMUT_HITS="$work/hits"
    nice -n "${MUTATION_NICE:-10}" mutmut run --max-children "${MUTATION_JOBS:-1}" "${names[@]}"
    mutmut results --all true | sed 's/^ *//' >"$work/results.txt"
    grep -c ': killed$' "$work/results.txt" | sed "s/^/$target killed: /" || true
    grep -v ': killed$' "$work/results.txt" || true
  )
done
