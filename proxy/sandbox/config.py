"""The sandbox's start-up settings: what the CLI and the test fixtures choose once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Credentials the token endpoints accept, token lifetime, lockout and where files live.

    ``data_dir=None`` means a temporary directory that the app creates on start-up and
    removes on clean-up; a given directory is used as is and never removed.
    """

    client_id: str = "demo"
    client_secret: str = "demo-secret"  # noqa: S105 (the documented demo secret)
    token_lifetime: float = 86400
    data_dir: Path | None = None
    # Aspose's lockout: more than `lockout_threshold` failed token requests for a client id
    # within `lockout_window` seconds answer 429 for `lockout_duration` seconds.
    lockout_threshold: int = 5
    lockout_window: float = 600
    lockout_duration: float = 600
    # `demo` logs its requests at debug: there the proxy's access line is the one per request.
    request_log_level: int = logging.INFO

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("client_id must not be empty")
        if self.token_lifetime <= 0:
            raise ValueError("token_lifetime must be positive")
        if self.lockout_threshold < 0 or self.lockout_window <= 0 or self.lockout_duration <= 0:
            raise ValueError("lockout_threshold must be >= 0, window and duration positive")
