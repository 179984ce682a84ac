"""Everything the sandbox remembers between requests, hung off the app under one ``AppKey``."""

from __future__ import annotations

import secrets
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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


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

    @classmethod
    def from_config(cls, config: SandboxConfig) -> SandboxState:
        return cls(config, config.client_secret, config.token_lifetime)

    def reset_faults(self) -> None:
        """Back to the configured behaviour; revocations and counters stay as they are."""
        self.token_fault = None
        self.api_fault = None
        self.client_secret = self.config.client_secret
        self.token_lifetime = self.config.token_lifetime

    def storage_dir(self) -> Path:
        """The data directory; it exists only while the app runs."""
        if self.data_dir is None:
            raise RuntimeError("the sandbox app is not running")
        return self.data_dir


STATE: Final = web.AppKey("sandbox_state", SandboxState)
