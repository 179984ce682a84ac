"""``check_redis_url``: one rule for every ``redis://`` setting (usage_store, cache_store);
``connect``: one way to open a client for one.

A password never belongs in the URL, in the userinfo or in the query (``?password=``): the
URL is shown on ``/_proxy/``, by ``config`` and in logs. Imports nothing from the package
(``proxy.settings`` uses it through the store modules), and imports redis only when it connects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

if TYPE_CHECKING:
    import redis.asyncio as aioredis
    from pydantic import SecretStr


def check_redis_url(url: str, setting: str, example: str) -> str:
    """``url`` when it names a host and holds no password, else ``ValueError`` (never echoing
    the URL). ``setting`` names the setting (its password is ``<setting>_password``)."""
    parts = urlsplit(url)
    in_query = any(name.lower() == "password" for name, _ in parse_qsl(parts.query))
    if parts.password is not None or in_query:
        raise ValueError(
            "the Redis password does not belong in the URL (it is shown on /_proxy/ and "
            f"in logs): put it in {setting}_password (ASPOSE_PROXY_{setting.upper()}_PASSWORD "
            "or the TOML file)"
        )
    if not parts.hostname:
        raise ValueError(f"a redis {example} is redis://host:port/db")
    return url


def connect(
    url: str, password: SecretStr | None, timeout: float, *, decode_responses: bool = False
) -> aioredis.Redis:
    """A client for a checked ``url``: the password from its own setting, never the URL; every
    connect and socket operation waits ``timeout`` seconds at most."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(
        url,
        password=password.get_secret_value() if password else None,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        decode_responses=decode_responses,
    )
