"""The send policy (proxy/replay.py), asked by hand: no sockets, no tokens, no clock.

Each test plays the sender: it tells the policy what each send gave and checks what the
policy asks for next. "At most two sends" holds for every sequence of outcomes.
"""

from __future__ import annotations

import itertools

import pytest

from proxy.replay import MAX_SENDS, Action, Outcome, next_send

ANSWERED, UNAUTHORIZED, STALE = Outcome.ANSWERED, Outcome.UNAUTHORIZED, Outcome.STALE


def _play(idempotent: bool, outcomes: list[Outcome]) -> list[Action | None]:
    """What the policy asks for after each send while the sends give ``outcomes`` in turn;
    the list ends with None (done)."""
    asked: list[Action | None] = []
    for sends, outcome in enumerate(outcomes, start=1):
        asked.append(next_send(outcome, sends, idempotent))
        if asked[-1] is None:
            break
    return asked


@pytest.mark.parametrize("idempotent", [True, False])
def test_an_answer_other_than_401_is_done_after_one_send(idempotent: bool) -> None:
    assert _play(idempotent, [ANSWERED]) == [None]


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_401_is_replayed_once_with_a_renewed_token(idempotent: bool) -> None:
    assert _play(idempotent, [UNAUTHORIZED, ANSWERED]) == [Action.REPLAY, None]


def test_a_second_401_goes_back_after_exactly_two_sends() -> None:
    assert _play(True, [UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED]) == [Action.REPLAY, None]


def test_a_stale_connection_is_resent_once_for_an_idempotent_method() -> None:
    assert _play(True, [STALE, ANSWERED]) == [Action.RESEND, None]


def test_a_stale_connection_is_not_resent_for_a_post() -> None:
    assert _play(False, [STALE]) == [None]


def test_a_401_after_a_stale_resend_is_not_replayed_a_third_time() -> None:
    assert _play(True, [STALE, UNAUTHORIZED]) == [Action.RESEND, None]


def test_a_stale_connection_on_the_replay_is_not_resent() -> None:
    assert _play(True, [UNAUTHORIZED, STALE]) == [Action.REPLAY, None]


@pytest.mark.parametrize("idempotent", [True, False])
@pytest.mark.parametrize("outcomes", list(itertools.product(Outcome, repeat=3)))
def test_never_more_than_two_sends(idempotent: bool, outcomes: tuple[Outcome, ...]) -> None:
    """Every send after the first is one the policy asked for: at most MAX_SENDS in all."""
    asked = _play(idempotent, list(outcomes))
    sends = 1 + sum(action is not None for action in asked)
    assert sends <= MAX_SENDS == 2
