"""Headless Chromium for tests that need a real browser (the status page, cross-site pages)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

CHROMIUM_MISSING = (
    "chromium is not installed: the status page is tested in a real headless browser "
    "(apt-get install -y chromium; .ci/run installs it when missing)"
)


async def dump_dom(url: str, profile: Path, *, wait_ms: int | None = None) -> str:
    """What Chromium shows after loading ``url`` (scripts would have run by then);
    ``wait_ms``: virtual time to let a page's own requests finish first."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail(CHROMIUM_MISSING, pytrace=False)
    extra = [f"--virtual-time-budget={wait_ms}"] if wait_ms is not None else []
    process = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", *extra, "--dump-dom", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0
    return out.decode()
