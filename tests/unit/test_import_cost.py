"""Start-up cost (issue 11): what ``aspose-proxy run`` imports stays what it needs.

Each heavy module here once cost resident memory for nothing: PyJWT pulls in ``cryptography``
(~9 MiB) where that is installed, only to read a token's ``exp``; the sandbox is its own
command. (pydantic-settings stays: it is the project's mandated settings library.)
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time

import pytest

from proxy.tokens import _lifetime, _unverified_claims

NOT_AT_STARTUP = (
    "jwt",
    "cryptography",
    "proxy.sandbox",
    "proxy.demo",
    "matplotlib",
)


def test_run_imports_no_jwt_cryptography_or_sandbox() -> None:
    code = (
        "import sys, proxy.cli, proxy.app, proxy.serve\n"
        f"print(','.join(m for m in {NOT_AT_STARTUP!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"


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
