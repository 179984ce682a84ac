"""Failed client authentications: each counted, one warning per address per minute."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from proxy.access import AccessControl, AccessRules
from proxy.auth_failures import WINDOW, AuthFailures
from proxy.local_tokens import LocalTokens
from proxy.settings import Settings

KEY = "ci-job-access-key-7f3a9c"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def recorder() -> tuple[AuthFailures, list[str], list[tuple[str | None, int]], Clock]:
    counted: list[str] = []
    warned: list[tuple[str | None, int]] = []
    clock = Clock()
    failures = AuthFailures(counted.append, lambda a, n: warned.append((a, n)), clock)
    return failures, counted, warned, clock


def test_one_warning_per_address_per_minute_with_the_count() -> None:
    failures, counted, warned, clock = recorder()
    for _ in range(1000):
        failures.record("127.0.0.1", "access_key")
    failures.record("10.0.0.9", "client_secret")
    assert warned == [("127.0.0.1", 1), ("10.0.0.9", 1)]
    clock.now += WINDOW - 1
    failures.record("127.0.0.1", "access_key")
    assert len(warned) == 2
    clock.now += 1
    failures.record("127.0.0.1", "access_key")
    assert warned[2] == ("127.0.0.1", 1001)  # 999 silent ones, the one a second ago, this one
    assert len(counted) == 1003
    assert set(counted) == {"access_key", "client_secret"}


def access(failed: AuthFailures, **settings: object) -> tuple[AccessControl, AccessRules]:
    issuer = LocalTokens({"alice": SecretStr("alice-local-secret-1")})
    rules = AccessRules.from_settings(Settings(**settings))  # type: ignore[arg-type]
    return AccessControl(rules, issuer.client_of, failed=failed.record), rules


@pytest.mark.parametrize("required", [True, False])
def test_a_wrong_key_or_bearer_token_is_a_failure_a_missing_one_is_not(required: bool) -> None:
    failures, counted, _, _ = recorder()
    control, rules = access(
        failures,
        access_keys={"ci": SecretStr(KEY)},
        local_clients={"alice": SecretStr("alice-local-secret-1")},
        require_client_auth=required,
    )
    requests = [
        (KEY, None),  # right
        (None, None),  # nothing presented
        ("wrong", None),
        ("abc\udcffdef", None),
        (None, "Bearer aspose-proxy.c2RrMQ.1.é"),
    ]
    for key, authorization in requests:
        try:
            control.identify(rules, key, authorization, "127.0.0.1")
        except Exception as error:  # the 401 when required
            assert required and type(error).__name__ == "ClientAuthRequired"
    assert counted == ["access_key", "access_key", "bearer_token"]


def test_the_bearer_scheme_is_case_insensitive_and_odd_tokens_name_nobody() -> None:
    issuer = LocalTokens({"alice": SecretStr("alice-local-secret-1")})
    token = issuer.issue("alice")
    for scheme in ("Bearer", "bearer", "BEARER"):
        assert issuer.client_of(f"{scheme} {token}") == "alice"
    for odd in ("Bearer aspose-proxy.c2RrMQ.1.é", "Bearer aspose-proxy.\udcff", "Bearer", "x"):
        assert issuer.client_of(odd) is None
