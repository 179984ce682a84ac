"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os

import pytest

from tests.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock, moved by hand."""
    return FakeClock()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ASPOSE_PROXY_* variable from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("ASPOSE_PROXY_"):
            monkeypatch.delenv(name)
