"""``aspose-proxy check`` is safe to run and talks (issue 18): real processes, the real sandbox.

Each run is a separate process, as a user runs it; the token schedule they share is the state
file under this test's ``$XDG_STATE_HOME`` (tests/conftest.py), as a running proxy's would be.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import RunningSandbox
from tests.integration.conftest import LEAK
from tests.integration.test_cli import credentials, run_cli

CLASS_NAME = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


async def test_five_checks_with_a_wrong_secret_make_at_most_the_schedules_requests(
    sandbox: RunningSandbox,
) -> None:
    """Five runs used to send five rejected requests: the (imitated) application was locked."""
    results = [await run_cli("check", env=credentials(sandbox, "wrong-secret")) for _ in range(5)]
    stats = await sandbox.stats()
    assert stats["failed_token_requests"] <= 4  # the schedule's budget; in fact 1 (30 s step)
    assert stats["failed_token_requests"] == 1
    assert stats["locked_out_requests"] == 0
    assert all(code == 1 for code, _, _ in results)
    first_err = results[0][2]
    assert "invalid_client" in first_err and "The next attempt is allowed at 20" in first_err
    for _, out, err in results[1:]:
        assert err.startswith("aspose-proxy: not sending a token request: ")
        assert re.search(r"next attempt at 20\d\d-\d\d-\d\dT\d\d:\d\d:\d\dZ", err), err
        assert "locks an application out for 10 minutes" in err  # why
        assert "fetching" not in out
    assert "wrong-secret" not in "".join(out + err for _, out, err in results)


async def test_check_after_a_rejected_secret_tries_a_new_secret_at_once(
    sandbox: RunningSandbox,
) -> None:
    await run_cli("check", env=credentials(sandbox, "wrong-secret"))
    code, out, err = await run_cli("check", env=credentials(sandbox))
    assert code == 0, err
    assert "expires in 86400 s" in out


async def test_check_says_what_it_does_first_and_where_the_secret_came_from(
    sandbox: RunningSandbox, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("wrong-secret-from-a-file\n")
    env = credentials(sandbox)
    del env["ASPOSE_PROXY_CLIENT_SECRET"]
    env["ASPOSE_PROXY_CLIENT_SECRET_FILE"] = str(secret_file)
    code, out, err = await run_cli("check", env=env)
    assert code == 1
    assert out.startswith(f"aspose-proxy: fetching a token from {sandbox.url}/connect/token")
    assert "timeout 30 s" in out
    assert f"the file {secret_file} (client_secret_file" in err
    assert err.startswith("aspose-proxy: ") and err.strip().count("\n") == 0
    assert not CLASS_NAME.search(out + err)
    assert not LEAK.findall(out + err)


async def test_check_explains_a_429_lockout(sandbox: RunningSandbox) -> None:
    await sandbox.token_fault(status=429)
    code, _, err = await run_cli("check", env=credentials(sandbox))
    assert code == 1
    assert "429 Too Many Requests" in err
    assert re.search(r"locked client_id 'demo' out .* until 20\d\d-\d\d-\d\dT", err), err
    assert "every service using this application is affected" in err
    code, _, err = await run_cli("check", env=credentials(sandbox))  # the block is kept
    assert code == 1 and err.startswith("aspose-proxy: not sending a token request")
    assert (await sandbox.stats())["token_requests"] == 1


async def test_check_ends_within_token_timeout_against_a_hanging_token_endpoint(
    sandbox: RunningSandbox,
) -> None:
    """It used to wait upstream_timeout (300 s); run_cli gives up after 30 s."""
    await sandbox.token_fault(delay=120)
    code, out, err = await run_cli("check", "--token-timeout", "1s", env=credentials(sandbox))
    assert code == 1
    assert "(secret from" in out and "timeout 1 s" in out
    assert "did not answer within token_timeout (1 s)" in err


async def test_an_unreachable_token_endpoint_is_said_in_words(sandbox: RunningSandbox) -> None:
    env = {**credentials(sandbox), "ASPOSE_PROXY_TOKEN_URL": "http://127.0.0.1:9/connect/token"}
    code, _, err = await run_cli("check", env=env)
    assert code == 1
    assert "unreachable (connection refused)" in err
    assert not CLASS_NAME.search(err), err


async def test_a_token_host_that_does_not_resolve_is_said_in_words(sandbox: RunningSandbox) -> None:
    """A misspelt host said "unreachable (unknown error -2)": the resolver's code read as
    an errno."""
    env = {**credentials(sandbox), "ASPOSE_PROXY_TOKEN_URL": "http://no-such-host.invalid/t"}
    code, _, err = await run_cli("check", env=env)
    assert code == 1
    assert "cannot resolve no-such-host.invalid" in err, err
    assert "unknown error" not in err and not CLASS_NAME.search(err), err


async def test_check_keeps_the_schedule_in_redis_when_the_usage_store_is_redis(
    sandbox: RunningSandbox, redis_url: str, tmp_path: Path
) -> None:
    """Two hosts' checks (separate state directories) share one schedule through Redis."""
    env = {**credentials(sandbox, "wrong-secret"), "ASPOSE_PROXY_USAGE_STORE": redis_url}
    first = await run_cli("check", env={**env, "XDG_STATE_HOME": str(tmp_path / "a")})
    second = await run_cli("check", env={**env, "XDG_STATE_HOME": str(tmp_path / "b")})
    assert first[0] == second[0] == 1
    assert "not sending a token request" in second[2]
    assert (await sandbox.stats())["failed_token_requests"] == 1
