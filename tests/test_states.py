"""The status vocabulary: every status has a look, and Lifecycle refuses what the table
does not allow."""

from __future__ import annotations

import pytest

from clusterui.cli import render
from clusterui.vocab import states


def test_every_status_has_a_look_and_stored_ones_a_transition_row() -> None:
    assert set(states.LOOKS) == set(states.STATUSES)
    assert set(states.TRANSITIONS) == states.LIVE | states.IDLE
    assert states.SUSPENDED not in states.TRANSITIONS  # shown, never stored
    assert not states.LIVE & states.IDLE


def test_every_look_has_a_known_tone_and_the_cli_a_colour_for_each() -> None:
    assert {look.tone for look in (*states.LOOKS.values(), states.UNKNOWN)} <= set(states.TONES)
    assert set(render.TONE_COLOURS) == set(states.TONES)


def test_a_process_goes_forward_only() -> None:
    life = states.Lifecycle(states.LAUNCHING)
    life.to(states.ONLINE)
    life.to(states.DRAINING)
    with pytest.raises(states.IllegalTransition):
        life.to(states.ONLINE)
    assert life.value == states.DRAINING


def test_idle_statuses_follow_each_other_but_never_become_live() -> None:
    life = states.Lifecycle(states.STOPPED)
    for status in (states.ERRORED, states.WAITING_RESTART, states.STOPPED, states.STOPPED):
        life.to(status)
    with pytest.raises(states.IllegalTransition):
        life.to(states.ONLINE)
    with pytest.raises(states.IllegalTransition):
        states.Lifecycle(states.SUSPENDED)


def test_suspended_is_shown_only_over_a_live_status() -> None:
    assert states.shown(states.ONLINE, True) == states.SUSPENDED
    assert states.shown(states.STOPPING, True) == states.STOPPING
    assert states.shown(states.ONLINE, False) == states.ONLINE
    assert states.look("no-such-status").glyph == "?"
