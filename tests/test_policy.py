"""PM2's restart policy as scripted histories of exits (uptime in ms is the fake clock)."""

import time

import pytest
from support import wait_for, web_app, web_wrapper

from clusterui.core.policy import BACKOFF_CAP_MS, RestartTracker
from clusterui.core.spec import AppSpec


def spec(**kw) -> AppSpec:
    return AppSpec(name="a", script="/bin/true", **kw)


def run(tracker: RestartTracker, s: AppSpec, uptimes: list[float]) -> list[tuple[str, int]]:
    out = []
    for up in uptimes:
        d = tracker.on_exit(s, up)
        out.append((d.action, d.delay_ms))
    return out


def test_autorestart_off_stops():
    decision = RestartTracker().on_exit(spec(autorestart=False), 5000)
    assert (decision.action, decision.reason) == ("stop", "autorestart is off")


def test_max_restarts_1_errors_at_the_first_unstable_exit():
    s = spec(max_restarts=1, min_uptime=1000)
    assert run(RestartTracker(), s, [10]) == [("errored", 0)]
    assert run(RestartTracker(), s, [5000, 10]) == [("restart", 0), ("errored", 0)]


def test_unstable_restarts_reach_errored_at_max_restarts():
    s = spec(max_restarts=3, min_uptime=1000)
    t = RestartTracker()
    assert run(t, s, [10, 10, 10]) == [("restart", 0), ("restart", 0), ("errored", 0)]


def test_errored_says_why_in_the_log_line_and_notice():
    s = spec(max_restarts=2, min_uptime=1000)
    t = RestartTracker()
    run(t, s, [10])
    decision = t.on_exit(s, 10)
    assert decision.action == "errored"
    assert decision.reason == "2 unstable restarts (each up less than 1000 ms)"


def test_a_stable_run_ends_the_unstable_streak():
    s = spec(max_restarts=3, min_uptime=1000)
    t = RestartTracker()
    history = run(t, s, [10, 10, 5000, 10, 10])
    assert [a for a, _ in history] == ["restart"] * 5
    assert t.unstable_restarts == 2
    assert t.on_exit(s, 10).action == "errored"


def test_restart_delay_is_fixed_without_backoff():
    s = spec(restart_delay=250, min_uptime=0)
    assert run(RestartTracker(), s, [1, 1, 1]) == [("restart", 250)] * 3


def test_exponential_backoff_grows_by_1_5_and_caps_at_15s():
    s = spec(exp_backoff_restart_delay=100, min_uptime=0, max_restarts=1000)
    delays = [d for _, d in run(RestartTracker(), s, [5] * 14)]
    assert delays[:5] == [100, 150, 225, 337, 505]
    assert max(delays) == BACKOFF_CAP_MS == delays[-1]
    assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))


def test_backoff_resets_after_30s_up():
    s = spec(exp_backoff_restart_delay=100, min_uptime=0)
    t = RestartTracker()
    run(t, s, [5, 5, 5])
    assert t.prev_backoff_ms == 225
    assert t.on_exit(s, 31_000).delay_ms == 100


def test_backoff_reset_boundary_is_exactly_30s_up():
    """PM2 resets after 30 s up: 30,000 ms resets, 29,999 ms does not (nor 3 s or 29 s)."""
    s = spec(exp_backoff_restart_delay=100, min_uptime=0, max_restarts=1000)
    for uptime, want in [(3_000, 337), (29_000, 337), (29_999, 337), (30_000, 100)]:
        t = RestartTracker()
        run(t, s, [5, 5, 5])  # 100, 150, 225
        assert t.on_exit(s, uptime).delay_ms == want, uptime


def test_min_uptime_boundary_a_run_of_exactly_min_uptime_is_stable():
    """`uptime < min_uptime` is unstable: exactly min_uptime counts as a stable run."""
    s = spec(max_restarts=2, min_uptime=1000)
    t = RestartTracker()
    assert run(t, s, [999]) == [("restart", 0)]
    assert t.unstable_restarts == 1
    assert run(t, s, [1000]) == [("restart", 0)]
    assert t.unstable_restarts == 0
    assert run(t, s, [999, 999]) == [("restart", 0), ("errored", 0)]


def test_manual_restart_forgives_history():
    s = spec(max_restarts=2, exp_backoff_restart_delay=100)
    t = RestartTracker()
    run(t, s, [5])
    t.reset()
    assert t.unstable_restarts == 0
    assert t.on_exit(s, 5).delay_ms == 100


def test_max_restarts_zero_never_restarts():
    assert RestartTracker().on_exit(spec(max_restarts=0), 60_000).action == "errored"


@pytest.mark.parametrize("verb", ["start", "reload"])
def test_a_manual_start_forgives_the_crash_history(cu, verb):
    """Through the supervisor: an app errored after max_restarts unstable runs gets the
    full max_restarts again when started by hand, not one run; so does a reload, which
    starts a slot with nothing serving."""
    # Up for 3 s: long enough that `up -d` and `start` see it online on a busy machine.
    crash = "import time\nopen('starts', 'a').write('x')\ntime.sleep(3)\nraise SystemExit(3)\n"
    cu.write("crash.py", crash)
    cu.write(
        "ecosystem.yaml",
        """
        apps:
          - name: crash
            script: crash.py
            max_restarts: 3
            min_uptime: 60000
        """,
    )
    starts = cu.root / "starts"

    def errored_after(n: int) -> bool:
        ran = starts.read_text() if starts.exists() else ""
        return cu.ls()[0]["status"] == "errored" and ran == n * "x"

    assert cu.run("up", "-d").returncode == 0
    wait_for(lambda: errored_after(3), 60, "errored after 3 starts")
    assert cu.run(verb, "crash").returncode == 0
    wait_for(lambda: errored_after(6), 60, "errored after 3 more starts")
    time.sleep(0.5)
    assert starts.read_text() == 6 * "x"


def test_a_reload_forgives_the_crash_history_of_the_slot_it_hands_over(cu):
    """Two unstable runs of max_restarts 3, then a reload hands the socket to a new
    worker: that worker starts with a clean history, so one more crash is restarted
    rather than being the third strike."""
    script = web_wrapper(
        cu,
        """
        import os, threading, time
        def crash_on_cue():  # each kill.N file is one crash, of whichever worker sees it
            while True:
                for name in sorted(os.listdir(".")):
                    if name.startswith("kill."):
                        try:
                            os.unlink(name)
                        except FileNotFoundError:
                            continue
                        os._exit(3)
                time.sleep(0.05)
        threading.Thread(target=crash_on_cue, daemon=True).start()
        """,
    )
    web_app(cu, instances=1, script=script, max_restarts=3, min_uptime=60000)

    def online_after(restarts: int) -> dict | None:
        row = cu.ls()[0]
        return row if row["status"] == "online" and row["restarts"] == restarts else None

    wait_for(lambda: online_after(0), 20, "online")
    for n in (1, 2):
        (cu.root / f"kill.{n}").write_text("")
        wait_for(lambda n=n: online_after(n), 20, f"online after crash {n}")
    assert cu.run("reload", "web").returncode == 0
    wait_for(lambda: online_after(3), 20, "online after the reload")
    (cu.root / "kill.3").write_text("")
    wait_for(lambda: online_after(4), 20, "restarted after the crash that follows the reload")
