"""The send policy: the one rule for a second send, after httpx's ``auth_flow``.

A request goes upstream at most twice (``MAX_SENDS``). After a send:

- the pooled connection was stale (it broke before any answer): resend once, idempotent
  methods only (RFC 9110 §9.2.2: safe to send twice);
- upstream answered 401: renew the token (unless another request already did) and replay
  once; the first 401 is released, never shown to the client. When no new token can be had
  (the renewal cap, or the renewal failed), the sender gives the 401 back as it is;
- anything else, or a second send whatever it gave: done. The answer goes back to the client
  (a second 401 as it is), a failure is raised.

The policy is a generator, free of sockets and tokens: it yields what to do, the sender
(``proxy.forward``) carries it out and sends back what happened::

    policy = send_policy(idempotent)
    action = next(policy)              # SEND
    action = policy.send(outcome)      # RESEND or REPLAY; StopIteration when done
"""

from __future__ import annotations

import enum
from collections.abc import Generator

MAX_SENDS = 2


class Action(enum.Enum):
    SEND = "send"  # with the token held
    RESEND = "resend"  # the same request again, on a fresh connection
    REPLAY = "replay"  # renew the token, then the same request again


class Outcome(enum.Enum):
    ANSWERED = "answered"  # any status but 401
    UNAUTHORIZED = "unauthorized"  # 401
    STALE = "stale"  # the connection broke before any answer


Policy = Generator[Action, Outcome, None]


def send_policy(idempotent: bool) -> Policy:
    """What to do after each send, for a request of an (RFC 9110) idempotent method or not."""
    outcome = yield Action.SEND
    for _ in range(MAX_SENDS - 1):
        if outcome is Outcome.STALE and idempotent:
            outcome = yield Action.RESEND
        elif outcome is Outcome.UNAUTHORIZED:
            outcome = yield Action.REPLAY
        else:
            return


def next_action(policy: Policy, outcome: Outcome) -> Action | None:
    """The policy's answer to ``outcome``: the next send, or None when it is done."""
    try:
        return policy.send(outcome)
    except StopIteration:
        return None
