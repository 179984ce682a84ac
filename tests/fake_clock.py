"""A clock the tests move by hand, for code that takes its clock as a parameter."""

from __future__ import annotations


class FakeClock:
    """A mutable float read as the clock (monotonic or wall, as the code under test wants)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
