"""The send policy (proxy/replay.py), driven by hand: no sockets, no tokens, no clock.

Each test plays the sender: it sends the policy what each send gave and checks what the
policy asks for next. "At most two sends" holds for every sequence of outcomes.
"""

from __future__ import annotations

import itertools

import pytest

from proxy.replay import MAX_SENDS, Action, Outcome, next_action, send_policy

ANSWERED, UNAUTHORIZED, STALE = Outcome.ANSWERED, Outcome.UNAUTHORIZED, Outcome.STALE


def _play(idempotent: bool, outcomes: list[Outcome]) -> list[Action]:
    """The actions the policy asks for while the sends give ``outcomes`` in turn."""
    policy = send_policy(idempotent)
    actions = [next(policy)]
    for outcome in outcomes:
        action = next_action(policy, outcome)
        if action is None:
            break
        actions.append(action)
    return actions


def test_the_first_send_uses_the_token_held() -> None:
    assert next(send_policy(True)) is Action.SEND


@pytest.mark.parametrize("idempotent", [True, False])
def test_an_answer_other_than_401_is_done_after_one_send(idempotent: bool) -> None:
    assert _play(idempotent, [ANSWERED]) == [Action.SEND]


@pytest.mark.parametrize("idempotent", [True, False])
def test_a_401_is_replayed_once_with_a_renewed_token(idempotent: bool) -> None:
    assert _play(idempotent, [UNAUTHORIZED, ANSWERED]) == [Action.SEND, Action.REPLAY]


def test_a_second_401_goes_back_after_exactly_two_sends() -> None:
    assert _play(True, [UNAUTHORIZED, UNAUTHORIZED, UNAUTHORIZED]) == [
        Action.SEND,
        Action.REPLAY,
    ]


def test_a_stale_connection_is_resent_once_for_an_idempotent_method() -> None:
    assert _play(True, [STALE, ANSWERED]) == [Action.SEND, Action.RESEND]


def test_a_stale_connection_is_not_resent_for_a_post() -> None:
    assert _play(False, [STALE]) == [Action.SEND]


def test_a_401_after_a_stale_resend_is_not_replayed_a_third_time() -> None:
    assert _play(True, [STALE, UNAUTHORIZED]) == [Action.SEND, Action.RESEND]


def test_a_stale_connection_on_the_replay_is_not_resent() -> None:
    assert _play(True, [UNAUTHORIZED, STALE]) == [Action.SEND, Action.REPLAY]


@pytest.mark.parametrize("idempotent", [True, False])
@pytest.mark.parametrize("outcomes", list(itertools.product(Outcome, repeat=3)))
def test_never_more_than_two_sends(idempotent: bool, outcomes: tuple[Outcome, ...]) -> None:
    actions = _play(idempotent, list(outcomes))
    assert len(actions) <= MAX_SENDS == 2
    assert actions[0] is Action.SEND and Action.SEND not in actions[1:]
