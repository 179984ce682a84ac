"""The send policy: the one rule for a second send.

A request goes upstream at most twice (``MAX_SENDS``). After a send:

- the pooled connection was stale (it broke before any answer): resend once, idempotent
  methods only (RFC 9110 §9.2.2: safe to send twice);
- upstream answered 401: renew the token (unless another request already did) and replay
  once; the first 401 is released, never shown to the client. When no new token can be had
  (the renewal cap, or the renewal failed), the sender gives the 401 back as it is;
- anything else, or a second send whatever it gave: done. The answer goes back to the client
  (a second 401 as it is), a failure is raised.

A pure function, free of sockets and tokens: the sender (``proxy.forward``) tells it what the
last send gave, it answers what to do next, as httpx's ``auth_flow`` generator does. Not a
generator itself: creating and finishing one per request cost ~9,000 instructions (1.7 % of a
small request under callgrind; a plain call costs a few hundred).
"""

from __future__ import annotations

import enum

MAX_SENDS = 2


class Action(enum.Enum):
    RESEND = "resend"  # the same request again, on a fresh connection
    REPLAY = "replay"  # renew the token, then the same request again


class Outcome(enum.Enum):
    ANSWERED = "answered"  # any status but 401
    UNAUTHORIZED = "unauthorized"  # 401
    STALE = "stale"  # the connection broke before any answer


# The members under module names, for the per-request code: on Python 3.11 reading a member
# off its class (``Outcome.STALE``) goes through ``EnumType.__getattr__``, ~850 instructions
# a read (a plain global: a few); five reads a request were ~4,200 instructions, 0.8 % of a
# small request under callgrind (Python 3.12 drops the hook).
RESEND, REPLAY = Action.RESEND, Action.REPLAY
ANSWERED, UNAUTHORIZED, STALE = Outcome.ANSWERED, Outcome.UNAUTHORIZED, Outcome.STALE


def next_send(outcome: Outcome, sends: int, idempotent: bool) -> Action | None:
    """After ``sends`` sends, the last of which gave ``outcome``: how to send again, or None
    when done. ``idempotent``: the request's method is (RFC 9110 §9.2.2)."""
    if sends >= MAX_SENDS:
        return None
    if outcome is UNAUTHORIZED:
        return REPLAY
    if outcome is STALE and idempotent:
        return RESEND
    return None
