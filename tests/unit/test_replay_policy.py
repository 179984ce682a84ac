"""The retry-once policy (proxy/replay.py) with a fake token source and a fake send: no sockets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from proxy.errors import TokenUnavailable
from proxy.replay import send_with_token
from proxy.tokens import Token


def make_token(value: str) -> Token:
    return Token(value, lifetime=3600.0, obtained_at=0.0, jitter=0.0)


@dataclass
class Response:
    status: int
    token: str
    released: bool = False


@dataclass
class FakeTokens:
    """Hands out ``current``; ``renew`` records what it was given and hands out ``fresh``."""

    current: Token
    fresh: Token | None = None  # None: no new token can be had (renewal cap, failed renewal)
    renewed_with: list[Token] = field(default_factory=list)

    def valid_token(self) -> Token | None:
        return None  # the policy then asks get(), which these tests script

    async def get(self) -> Token:
        return self.current

    async def renew(self, rejected: Token) -> Token | None:
        self.renewed_with.append(rejected)
        if self.fresh is not None:
            self.current = self.fresh
        return self.fresh


@dataclass
class FakeUpstream:
    """Answers with the scripted statuses in turn and records the token of every send."""

    statuses: list[int]
    sent_with: list[str] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)

    async def send(self, token: str) -> Response:
        response = Response(self.statuses[len(self.sent_with)], token)
        self.sent_with.append(token)
        self.responses.append(response)
        return response


def status_of(response: Response) -> int:
    return response.status


def release(response: Response) -> None:
    response.released = True


@pytest.mark.parametrize("status", [200, 204, 302, 400, 403, 404, 500, 503])
async def test_non_401_returned_as_is_after_one_send(status: int) -> None:
    tokens = FakeTokens(make_token("t1"), fresh=make_token("t2"))
    upstream = FakeUpstream([status])
    replays: list[None] = []

    result = await send_with_token(
        tokens, upstream.send, status_of, release, lambda: replays.append(None)
    )

    assert result is upstream.responses[0]
    assert upstream.sent_with == ["t1"]
    assert not result.released
    assert tokens.renewed_with == []
    assert replays == []


async def test_401_releases_first_response_renews_and_replays_with_new_token() -> None:
    old, new = make_token("old"), make_token("new")
    tokens = FakeTokens(old, fresh=new)
    upstream = FakeUpstream([401, 200])
    replays: list[None] = []

    result = await send_with_token(
        tokens, upstream.send, status_of, release, lambda: replays.append(None)
    )

    first, second = upstream.responses
    assert first.released
    assert tokens.renewed_with == [old]  # the very token that got the 401
    assert tokens.renewed_with[0] is old
    assert upstream.sent_with == ["old", "new"]
    assert result is second
    assert result.status == 200
    assert not second.released
    assert len(replays) == 1


async def test_first_401_released_once_a_new_token_is_in_hand() -> None:
    order: list[str] = []
    upstream = FakeUpstream([401, 200])

    class OrderedTokens(FakeTokens):
        async def renew(self, rejected: Token) -> Token | None:
            order.append("renew")
            return await super().renew(rejected)

    def ordered_release(response: Response) -> None:
        order.append("release")
        release(response)

    tokens = OrderedTokens(make_token("a"), fresh=make_token("b"))
    await send_with_token(tokens, upstream.send, status_of, ordered_release)
    assert order == ["renew", "release"]


async def test_second_401_returned_to_caller_after_exactly_two_sends() -> None:
    tokens = FakeTokens(make_token("a"), fresh=make_token("b"))
    upstream = FakeUpstream([401, 401, 200])
    replays: list[None] = []

    result = await send_with_token(
        tokens, upstream.send, status_of, release, lambda: replays.append(None)
    )

    assert result is upstream.responses[1]
    assert result.status == 401
    assert not result.released  # the caller streams upstream's own 401 body
    assert upstream.sent_with == ["a", "b"]
    assert len(tokens.renewed_with) == 1
    assert len(replays) == 1


async def test_without_a_new_token_the_401_goes_back_as_it_is_without_replay() -> None:
    """Issue 16: past the renewal cap, or when the renewal fails, the client gets upstream's 401."""
    tokens = FakeTokens(make_token("a"), fresh=None)
    upstream = FakeUpstream([401, 200])
    replays: list[None] = []

    result = await send_with_token(
        tokens, upstream.send, status_of, release, lambda: replays.append(None)
    )

    assert result is upstream.responses[0]
    assert result.status == 401 and not result.released
    assert upstream.sent_with == ["a"]
    assert replays == []


async def test_token_unavailable_from_get_propagates_without_send() -> None:
    class NoTokens(FakeTokens):
        async def get(self) -> Token:
            raise TokenUnavailable("No access token yet.", retry_after=1)

    upstream = FakeUpstream([200])
    with pytest.raises(TokenUnavailable):
        await send_with_token(NoTokens(make_token("x")), upstream.send, status_of, release)
    assert upstream.sent_with == []
