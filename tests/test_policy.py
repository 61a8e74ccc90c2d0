"""PM2's restart policy as scripted histories of exits (uptime in ms is the fake clock)."""

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
    assert RestartTracker().on_exit(spec(autorestart=False), 5000).action == "stop"


def test_unstable_restarts_reach_errored_at_max_restarts():
    s = spec(max_restarts=3, min_uptime=1000)
    t = RestartTracker()
    assert run(t, s, [10, 10, 10]) == [("restart", 0), ("restart", 0), ("errored", 0)]


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


def test_manual_restart_forgives_history():
    s = spec(max_restarts=2, exp_backoff_restart_delay=100)
    t = RestartTracker()
    run(t, s, [5])
    t.reset()
    assert t.unstable_restarts == 0
    assert t.on_exit(s, 5).delay_ms == 100


def test_max_restarts_zero_never_restarts():
    assert RestartTracker().on_exit(spec(max_restarts=0), 60_000).action == "errored"
