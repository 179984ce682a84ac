"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest

from tests.fake_clock import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    """A fake monotonic clock, moved by hand."""
    return FakeClock()
