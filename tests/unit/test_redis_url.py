"""check_redis_url: no Redis password in any store URL (usage_store, cache_store), never echoed."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from proxy.settings import Settings

SECRET = "hunter2-never-shown"


@pytest.mark.parametrize("setting", ["usage_store", "cache_store"])
@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@cache:6379/0",
        f"redis://cache:6379/0?password={SECRET}",
        f"rediss://cache:6379/0?PASSWORD={SECRET}&ssl_cert_reqs=none",
    ],
)
def test_a_password_in_a_redis_url_is_refused_without_echoing_it(setting: str, url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        Settings(**{setting: url})
    assert f"{setting}_password" in str(refused.value)
    assert SECRET not in str(refused.value)


@pytest.mark.parametrize("setting", ["usage_store", "cache_store"])
def test_a_redis_url_without_password_is_kept(setting: str) -> None:
    assert getattr(Settings(**{setting: "redis://cache:6379/2"}), setting) == "redis://cache:6379/2"
