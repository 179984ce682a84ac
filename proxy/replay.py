"""The retry-once policy, after httpx's auth flow: send, and on 401 renew and replay once.

Kept free of sockets: ``send`` and ``release`` are passed in, so the policy is unit-tested
with plain functions. A second 401 goes back to the client as it is.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from proxy.tokens import Token

R = TypeVar("R")


class TokenSource(Protocol):
    def valid_token(self) -> Token | None: ...
    async def get(self) -> Token: ...
    async def renew(self, rejected: Token) -> Token | None: ...


async def send_with_token(
    tokens: TokenSource,
    send: Callable[[str], Awaitable[R]],
    status_of: Callable[[R], int],
    release: Callable[[R], object],
    on_replay: Callable[[], None] = lambda: None,
    may_replay: Callable[[], bool] = lambda: True,
) -> R:
    """``send(token)``; on 401 renew the token, release that response and send once more.

    When no new token can be had (``renew`` gives None) the 401 goes back as it is.

    ``may_replay`` is asked first: a request already resent once (a stale connection) is not
    sent a third time, its 401 goes back to the client as it is.
    """
    # The held token when it is valid (nearly always: no coroutine), else wait for one.
    token = tokens.valid_token() or await tokens.get()
    response = await send(token.value)
    if status_of(response) != 401 or not may_replay():
        return response
    fresh = await tokens.renew(token)
    if fresh is None:  # no new token now (renewal cap, or the renewal failed): the 401 as is
        return response
    release(response)  # a replayed 401 is never shown to the client
    on_replay()
    return await send(fresh.value)
