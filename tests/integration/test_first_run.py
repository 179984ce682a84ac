"""The first ten minutes (issue 18): each stumble a newcomer met, as a real command run.

Every test runs ``python -m proxy`` as a user would and reads its exit code and output.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy import __version__
from tests.clients.harness import demo_process
from tests.integration.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS = {
    "ASPOSE_PROXY_CLIENT_ID": "someone",
    "ASPOSE_PROXY_CLIENT_SECRET": "a-secret-long-enough-to-redact",
}


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something already listens on (127.0.0.1)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


@pytest.mark.parametrize("flag", ["--version", "-V"])
async def test_version_flag_prints_the_version(flag: str) -> None:
    code, out, _ = await run_cli(flag)
    assert code == 0
    assert out.strip() == f"aspose-proxy {__version__}"
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == declared


async def test_a_misspelt_command_is_unknown_with_the_close_match() -> None:
    code, _, err = await run_cli("chekc")
    assert code == 2
    assert "unknown command 'chekc'" in err and "did you mean check?" in err
    assert "run, demo, sandbox, check, config, usage, cache" in err
    assert "unrecognized arguments" not in err


@pytest.mark.parametrize(
    "args",
    [["run"], ["run", "--workers", "2"], ["sandbox"]],
    ids=["run", "run-workers", "sandbox"],
)
async def test_a_port_in_use_is_one_line_with_the_next_step(
    args: list[str], taken_port: int
) -> None:
    """The token fetch used to start before the bind: with a token endpoint that fails at once
    (connection refused), its error line came first, and sometimes even with Aspose's."""
    env = {**CREDENTIALS, "ASPOSE_PROXY_UPSTREAM_URL": "http://127.0.0.1:9"}
    code, _, err = await run_cli(*args, "--port", str(taken_port), env=env)
    assert code == 1
    assert err.strip().count("\n") == 0, err
    assert f"aspose-proxy: cannot listen on 127.0.0.1:{taken_port}: address already in use" in err
    assert "--port 0" in err
    assert "Traceback" not in err


async def test_an_address_this_machine_lacks_is_one_line() -> None:
    args = ("--host", "10.9.9.9", "--port", "0", "--allow-from", "10.0.0.0/8")
    code, _, err = await run_cli("run", *args, env=CREDENTIALS)
    assert code == 1
    assert err.strip().count("\n") == 0, err
    assert "cannot listen on 10.9.9.9:0: cannot assign requested address" in err
    assert "--host 127.0.0.1" in err and "Traceback" not in err


async def test_demo_takes_a_free_port_and_ignores_the_users_settings(
    tmp_path: Path, taken_port: int
) -> None:
    """After "Run against Aspose Cloud" the demo used to exit 2 (a secret file set), fail its
    self-check with 401 (client auth required) and count into the real usage store."""
    (tmp_path / "proxy.toml").write_text('upstream_timout = 5\nclient_id = "from-toml"\n')
    env = {
        "ASPOSE_PROXY_CLIENT_SECRET_FILE": str(tmp_path / "missing-secret"),
        "ASPOSE_PROXY_REQUIRE_CLIENT_AUTH": "true",
        "ASPOSE_PROXY_CONFIG": str(tmp_path / "proxy.toml"),
        "ASPOSE_PROXY_USAGE_STORE": f"sqlite://{tmp_path / 'real-usage.db'}",
        "ASPOSE_PROXY_PORT": "1",
    }
    async with demo_process(tmp_path, port=taken_port, env=env) as demo:
        assert f"Port {taken_port} is in use" in demo.stdout
        assert not demo.proxy_url.endswith(f":{taken_port}")
        assert "downloaded (ok)" in demo.stdout
    assert not (tmp_path / "real-usage.db").exists()
    log = (tmp_path / "demo-stderr.log").read_text()
    loggers = [json.loads(line).get("logger") for line in log.splitlines() if line.startswith("{")]
    assert "proxy.access_log" in loggers, log
    assert "sandbox" not in loggers  # one line per request: the sandbox's only at debug


async def test_a_typo_hint_comes_first_in_the_missing_setting_message() -> None:
    code, _, err = await run_cli(
        "check", env={"ASPOSE_PROXY_CLIENTID": "x", "ASPOSE_PROXY_CLIENT_SECRET": "y" * 20}
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert "did you mean ASPOSE_PROXY_CLIENT_ID?" in lines[0], err
    assert any("client_id: required" in line for line in lines[1:])


async def test_config_exits_non_zero_when_a_required_setting_is_missing() -> None:
    code, out, err = await run_cli("config", env={"ASPOSE_PROXY_CLIENT_ID": "x"})
    assert code == 2
    assert "port = 8080" in out  # still shows what it found
    assert "client_secret: required" in err
    code, _, _ = await run_cli("config", env=CREDENTIALS)
    assert code == 0


@pytest.mark.parametrize("command", ["config", "usage"])
async def test_a_service_link_port_is_ignored_by_commands_that_do_not_listen(
    command: str,
) -> None:
    env = {**CREDENTIALS, "ASPOSE_PROXY_PORT": "tcp://10.96.14.2:8080"}
    code, _, err = await run_cli(command, "--usage-store", "off", env=env)
    assert "ASPOSE_PROXY_PORT" not in err
    assert code == (0 if command == "config" else 1), err  # usage: the store is off


async def test_each_command_help_lists_only_its_own_flags() -> None:
    code, out, _ = await run_cli("check", "--help")
    assert code == 0
    assert "--client-id" in out and "--token-url" in out
    assert "--allow-from" not in out and "--workers" not in out
    code, out, _ = await run_cli("usage", "--help")
    assert "--usage-store" in out and "--client-id" not in out
    for command in ("run", "demo", "sandbox", "check", "config", "usage", "cache"):
        code, out, _ = await run_cli(command, "--help")
        assert code == 0
        flat = re.sub(r"\s+", " ", out)
        assert "default None" not in flat and "default ''" not in flat, command
        assert "example:" in out and "exit codes:" in flat, command


@pytest.mark.parametrize("command", ["run", "sandbox"])
async def test_a_stop_signal_right_after_the_address_is_printed_drains_not_kills(
    command: str,
) -> None:
    """The handlers used to be installed after the address was printed: a SIGTERM sent as soon
    as it appeared killed the process (exit -15, last log lines lost) about half the time."""
    env = {**os.environ, **CREDENTIALS, "ASPOSE_PROXY_UPSTREAM_URL": "http://127.0.0.1:9"}
    for _ in range(5):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", command, "--port", "0",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        assert process.stdout is not None
        assert b"listening on" in await asyncio.wait_for(process.stdout.readline(), 30)
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_single_process_log_lines_carry_no_empty_worker_field(tmp_path: Path) -> None:
    """The "proxy started" line said ``"worker": null`` (``worker=None`` on the console) when no
    worker was running; a single process's lines name no worker at all."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASPOSE_PROXY_")},
        **CREDENTIALS,
        "ASPOSE_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
        "ASPOSE_PROXY_LOG_FORMAT": "json",
    }
    stderr = tmp_path / "run.err"
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "proxy", "run", "--port", "0",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    assert process.stdout is not None
    assert b"listening on" in await asyncio.wait_for(process.stdout.readline(), 30)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    lines = [json.loads(line) for line in stderr.read_text().splitlines() if line.startswith("{")]
    assert "proxy started" in [line["event"] for line in lines]
    assert [line for line in lines if "worker" in line] == []
