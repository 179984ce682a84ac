"""Start-up cost (issue 11): what ``aspose-proxy run`` imports stays what it needs.

Each heavy module here once cost resident memory for nothing: PyJWT pulls in ``cryptography``
(~9 MiB) where that is installed, only to read a token's ``exp``; the sandbox is its own
command. (pydantic-settings stays: it is the project's mandated settings library.) A redis
client, SQLite and the supervisor of ``--workers N`` are loaded only by the runs that use them.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time

import pytest

from proxy.settings import Settings
from proxy.token_client import _lifetime, _unverified_claims
from proxy.upstream import Egress

NOT_AT_STARTUP = (
    "jwt",
    "cryptography",
    "proxy.sandbox",
    "proxy.demo",
    "matplotlib",
    "redis",
    "sqlite3",
    "proxy.usage.redis",
    "proxy.usage.sqlite",
    "proxy.supervisor",
    "ctypes",
)
# What one `aspose-proxy run` (one process, usage_store off) loads from start to stop.
UNUSED_IN_A_RUN = ("proxy.supervisor", "ctypes", "redis", "sqlite3", *NOT_AT_STARTUP)
# structlog (mandated) imports colorama where one is installed (a machine with awscli has it),
# and colorama imports ctypes: what the mandated libraries alone load is not the proxy's cost.
BASELINE = "import sys, structlog, aiohttp, pydantic_settings\nbase = set(sys.modules)\n"


def test_start_up_imports_no_heavy_or_rarely_needed_module() -> None:
    code = (
        BASELINE + "import proxy.cli, proxy.app, proxy.server\n"
        f"print(','.join(m for m in {NOT_AT_STARTUP!r} if m in set(sys.modules) - base))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"


def test_a_single_process_run_loads_no_supervisor_and_no_unused_store() -> None:
    code = (
        BASELINE + "import proxy.cli, proxy.server\n"
        "async def stop_at_once() -> None: ...\n"
        "proxy.server.wait_for_stop_signal = stop_at_once\n"
        "proxy.cli.main(['run', '--port', '0', '--shutdown-grace', '0', '--usage-store', 'off'])\n"
        "loaded = set(sys.modules) - base\n"
        f"print('loaded:', ','.join(m for m in {UNUSED_IN_A_RUN!r} if m in loaded))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASPOSE_PROXY_")}
    env |= {
        "ASPOSE_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",  # nothing there: no token, no matter
        "ASPOSE_PROXY_CLIENT_ID": "import-cost",
        "ASPOSE_PROXY_CLIENT_SECRET": "import-cost-secret",
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loaded: \n" in done.stdout, done.stdout


def test_without_ca_file_the_sessions_use_aiohttps_verified_context() -> None:
    # True: aiohttp's own context (system CAs, verification on), built once when aiohttp is
    # imported; a second copy of the system's CAs would cost ~0.7 MiB and ~50 ms (issue 11).
    assert Egress.from_settings(Settings(client_id="x", usage_store="off")).tls is True


def _jwt(payload: object) -> str:
    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = part(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    return f"{header}.{part(json.dumps(payload).encode())}.{part(b'signature')}"


def test_exp_is_read_from_an_unverified_jwt() -> None:
    exp = int(time.time()) + 600
    assert _unverified_claims(_jwt({"exp": exp, "sub": "x"})) == {"exp": exp, "sub": "x"}
    assert _lifetime(86400, _jwt({"exp": exp})) == pytest.approx(600, abs=5)


@pytest.mark.parametrize(
    "token",
    [
        "opaque-token",
        "a.b",
        "a.b.c.d",
        "eyJhbGciOiJSUzI1NiJ9.!!!.sig",  # not base64url
        "eyJhbGciOiJSUzI1NiJ9." + base64.urlsafe_b64encode(b"\xff\xfe").decode() + ".sig",
        "eyJhbGciOiJSUzI1NiJ9." + base64.urlsafe_b64encode(b"not json").decode() + ".sig",
        _jwt([1, 2, 3]),  # JSON, not an object
        "eyJhbGciOiJSUzI1NiJ9.é.sig",  # not ASCII
    ],
)
def test_anything_but_a_jwt_has_no_claims(token: str) -> None:
    assert _unverified_claims(token) == {}
    assert _lifetime(120, token) == 120
