"""Everything the sandbox remembers between requests, hung off the app under one ``AppKey``."""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web

from proxy.sandbox.config import SandboxConfig
from proxy.sandbox.faults import ApiFault, TokenFault


@dataclass(slots=True)
class Stats:
    """Counters tests read through ``GET /_sandbox/stats``."""

    token_requests: int = 0
    api_requests: int = 0
    unauthorized_sent: int = 0
    expired_token_requests: int = 0
    revoked_token_requests: int = 0
    failed_token_requests: int = 0
    locked_out_requests: int = 0
    conversions: int = 0  # conversions performed (proxy/sandbox/conversions.py)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class Lockout:
    """Aspose's failed-login limit: more than ``threshold`` failed token requests for a client
    id within ``window`` seconds lock it out for ``duration`` seconds (429, ``Retry-After``)."""

    threshold: int
    window: float
    duration: float
    failures: dict[str, deque[float]] = field(default_factory=dict)
    locked_until: dict[str, float] = field(default_factory=dict)

    def seconds_left(self, client_id: str, now: float) -> float:
        """How long ``client_id`` stays locked out (0: not locked)."""
        return max(0.0, self.locked_until.get(client_id, 0.0) - now)

    def failed(self, client_id: str, now: float) -> float:
        """Count a failed request; the lockout it starts, in seconds (0: none)."""
        times = self.failures.setdefault(client_id, deque())
        times.append(now)
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) > self.threshold:
            self.locked_until[client_id] = now + self.duration
            times.clear()
            return self.duration
        return 0.0

    def clear(self) -> None:
        self.failures.clear()
        self.locked_until.clear()

    def as_dict(self) -> dict[str, float]:
        return {"threshold": self.threshold, "window": self.window, "duration": self.duration}


@dataclass(slots=True)
class SandboxState:
    """Mutable state of one sandbox app: live credentials, token generation, faults, counters.

    ``generation`` is embedded in every token; revoking bumps it, so older tokens fail
    however fresh their timestamps are.
    """

    config: SandboxConfig
    client_secret: str
    token_lifetime: float
    signing_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    generation: int = 0
    token_fault: TokenFault | None = None
    api_fault: ApiFault | None = None
    stats: Stats = field(default_factory=Stats)
    data_dir: Path | None = None
    lockout: Lockout = field(default_factory=lambda: Lockout(5, 600, 600))

    @classmethod
    def from_config(cls, config: SandboxConfig) -> SandboxState:
        lockout = Lockout(config.lockout_threshold, config.lockout_window, config.lockout_duration)
        return cls(config, config.client_secret, config.token_lifetime, lockout=lockout)

    def reset_faults(self) -> None:
        """Back to the configured behaviour; revocations and counters stay as they are."""
        self.token_fault = None
        self.api_fault = None
        self.client_secret = self.config.client_secret
        self.token_lifetime = self.config.token_lifetime
        self.lockout.clear()

    def change_secret(self, secret: str) -> None:
        """A new accepted secret; as at Aspose, it lifts every lockout."""
        self.client_secret = secret
        self.lockout.clear()

    def storage_dir(self) -> Path:
        """The data directory; it exists only while the app runs."""
        if self.data_dir is None:
            raise RuntimeError("the sandbox app is not running")
        return self.data_dir


STATE: Final = web.AppKey("sandbox_state", SandboxState)
