"""``check_redis_url``: one rule for every ``redis://`` setting (usage_store, cache_store).

A password never belongs in the URL, in the userinfo or in the query (``?password=``): the
URL is shown on ``/_proxy/``, by ``config`` and in logs. Imports nothing from the package
(``proxy.settings`` uses it through the store modules).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit


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
