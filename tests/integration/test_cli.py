"""The commands as a user runs them: real processes, real sandbox, exit codes and output."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys

import pytest

from tests.conftest import RunningSandbox
from tests.integration.conftest import LEAK


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", *args,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def credentials(sandbox: RunningSandbox, secret: str = "demo-secret") -> dict[str, str]:
    return {
        "ASPOSE_PROXY_UPSTREAM_URL": sandbox.url,
        "ASPOSE_PROXY_CLIENT_ID": "demo",
        "ASPOSE_PROXY_CLIENT_SECRET": secret,
    }


async def test_check_prints_when_the_token_expires(sandbox: RunningSandbox) -> None:
    code, out, err = await run_cli("check", env=credentials(sandbox))
    assert code == 0, err
    assert "expires in 86400 s" in out
    assert not LEAK.findall(out + err)


async def test_check_with_rejected_credentials_exits_1_with_one_line(
    sandbox: RunningSandbox,
) -> None:
    code, out, err = await run_cli("check", env=credentials(sandbox, "wrong-secret"))
    assert code == 1
    assert err.strip().count("\n") == 0
    assert "invalid_client" in err and "'demo'" in err
    assert "wrong-secret" not in out + err


async def test_check_with_unreachable_token_endpoint_exits_1(sandbox: RunningSandbox) -> None:
    env = {**credentials(sandbox), "ASPOSE_PROXY_TOKEN_URL": "http://127.0.0.1:9/connect/token"}
    code, _, err = await run_cli("check", env=env)
    assert code == 1
    assert "unreachable" in err


async def test_invalid_setting_exits_2_naming_key_and_source() -> None:
    code, _, err = await run_cli("run", env={"ASPOSE_PROXY_PORT": "70000"})
    assert code == 2
    assert "port: must be 0..65535 (from ASPOSE_PROXY_PORT)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("ASPOSE_PROXY_ACCESS_KEYS", '{"ci-job": "zq7-short-key"}', "access_keys"),
        ("ASPOSE_PROXY_LOCAL_CLIENTS", '{"reporting": "zq7-short-key"}', "local_clients"),
    ],
)
async def test_short_client_secrets_exit_2_naming_setting_and_key_not_the_value(
    name: str, value: str, setting: str
) -> None:
    code, out, err = await run_cli("run", env={name: value})
    assert code == 2
    assert f"{setting}: the secret of '" in err and "shorter than 16 characters" in err
    assert 'python3 -c "import secrets; print(secrets.token_urlsafe(24))"' in err
    assert "zq7-short-key" not in out + err


@pytest.mark.parametrize(
    "url", ["redis://cache:6379/0?password=hunter2-x", "redis://:hunter2-x@cache:6379/0"]
)
async def test_a_password_in_the_redis_store_url_exits_2_without_echoing_it(url: str) -> None:
    code, out, err = await run_cli("run", env={"ASPOSE_PROXY_USAGE_STORE": url})
    assert code == 2
    assert "usage_store: " in err and "usage_store_password" in err
    assert "hunter2" not in out + err


async def test_flag_overrides_env_and_config_reports_the_source() -> None:
    env = {"ASPOSE_PROXY_PORT": "7000", "ASPOSE_PROXY_CLIENT_ID": "x"}
    env["ASPOSE_PROXY_CLIENT_SECRET"] = "y" * 20
    code, out, _ = await run_cli("config", "--port", "9999", env=env)
    assert code == 0
    assert "port = 9999  # from --port" in out


async def test_sandbox_command_prints_its_address_and_stops_on_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "sandbox", "--port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
    assert re.search(r"listening on http://127\.0\.0\.1:\d+ ", line), line
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 10) == 0
