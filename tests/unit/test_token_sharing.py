"""The access token shared between replicas through Redis (proxy/token_sharing.py, issue 17):
sealed with a key only the holders of the client secret can derive; Redis sees no token."""

from __future__ import annotations

import base64
import time

import redis

from proxy.token_schedule import new_state
from proxy.token_schedule_redis import RedisScheduleStore
from proxy.token_sharing import SharedToken, seal, unseal
from tests.unit.token_fakes import CLIENT_ID, SECRET, creds

TOKEN = "eyJhbGciOi.the-access-token-value.signature"


def test_a_sealed_token_opens_only_with_the_same_secret_and_name() -> None:
    token = SharedToken(TOKEN, 3600.0, 1000.0)
    sealed = seal(token, creds(SECRET), "name")
    assert unseal(sealed, creds(SECRET), "name") == token
    assert unseal(sealed, creds("another-secret"), "name") is None
    assert unseal(sealed, creds(SECRET), "another-name") is None  # not moved between keys
    assert unseal("not a sealed token", creds(SECRET), "name") is None
    assert TOKEN not in repr(token)


async def test_redis_holds_no_plaintext_token(redis_url: str) -> None:
    store = RedisScheduleStore(redis_url, None, CLIENT_ID, new_state)
    share = store.token_share
    assert share is not None
    await share.save(TOKEN, 3600.0, time.time(), creds(SECRET))
    loaded = await share.load(creds(SECRET))
    assert loaded is not None and loaded.value == TOKEN
    assert await share.load(creds("a-rotated-secret")) is None
    await store.close()
    client = redis.Redis.from_url(redis_url)
    stored = b"".join(client.dump(key) or b"" for key in client.keys("*"))
    raw = b"".join(base64.b64decode(client.get(key) or b"") for key in client.keys("*"))
    client.close()
    for secret_thing in (TOKEN.encode(), SECRET.encode(), CLIENT_ID.encode()):
        assert secret_thing not in stored and secret_thing not in raw
        assert b"the-access-token-value" not in stored + raw
