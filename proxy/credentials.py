"""Where the client id and secret come from, and noticing when they change.

They come from the settings (env, TOML, or ``client_secret_file``). They change on SIGHUP (the
settings are loaded again: ``client_id`` from TOML, the secret from its file or TOML) and when
``client_secret_file`` changes on disk. Kubernetes updates a mounted Secret by pointing the
``..data`` symlink at a new directory, so the file is polled a few seconds apart and read again
whenever the file it resolves to (path, inode, size, mtime) differs, and its content compared.
Either way the token cache is handed the new credentials; it tries them at once and switches
over only when they work (proxy/tokens.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from pydantic import SecretStr

from proxy.log_setup import add_secrets
from proxy.settings import Settings, read_secret_file

log = structlog.get_logger("proxy.credentials")

POLL_INTERVAL = 2.0


@dataclass(frozen=True, slots=True)
class Credentials:
    """A client id and its secret; the secret never shows in ``repr``."""

    client_id: str
    client_secret: SecretStr

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        return cls(settings.client_id, settings.client_secret or SecretStr(""))

    @property
    def secret(self) -> str:
        return self.client_secret.get_secret_value()


def _signature(path: Path) -> tuple[str, int, int, int, int] | None:
    """What identifies the file behind ``path`` now (symlinks followed), or None if missing."""
    try:
        real = os.path.realpath(path)
        st = os.stat(real)
    except OSError:
        return None
    return (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class CredentialsSource:
    """Hands ``apply(credentials, why)`` the credentials whenever they change.

    ``reload`` is the SIGHUP hook (``proxy.reload``); ``watch`` polls ``client_secret_file``.
    A new secret is added to the log redactor before anything can log it.
    """

    def __init__(
        self,
        settings: Settings,
        apply: Callable[[Credentials, str], object],
        poll_interval: float = POLL_INTERVAL,
    ) -> None:
        self._apply = apply
        self._interval = poll_interval
        self._unreadable = False
        self._follow(settings)

    def _follow(self, settings: Settings) -> None:
        self._client_id = settings.client_id
        self._path = settings.client_secret_file
        self._seen = _signature(self._path) if self._path is not None else None
        self._secret = settings.client_secret.get_secret_value() if settings.client_secret else ""

    def reload(self, settings: Settings) -> None:
        """SIGHUP: the newly loaded settings' credentials (client id from TOML or env too)."""
        if not (settings.client_id and Credentials.from_settings(settings).secret):
            log.error("reloaded settings have no client_id or secret; keeping the current ones")
            return
        add_secrets(settings.secret_values)
        self._follow(settings)
        self._apply(Credentials.from_settings(settings), "SIGHUP")

    def check(self) -> None:
        """One poll: read the file again if what it resolves to changed."""
        if self._path is None:
            return
        seen = _signature(self._path)
        if seen == self._seen and not self._unreadable:
            return
        try:
            secret = read_secret_file(self._path)
        except OSError as exc:  # mid-swap, or removed: keep the current credentials
            if not self._unreadable:
                log.warning(
                    "client_secret_file unreadable; keeping the current credentials",
                    path=str(self._path),
                    error=exc.strerror or type(exc).__name__,
                )
            self._unreadable = True
            return
        self._unreadable = False
        self._seen = seen
        if secret and secret != self._secret:
            self._secret = secret
            add_secrets([secret])
            why = "client_secret_file changed"
            self._apply(Credentials(self._client_id, SecretStr(secret)), why)

    async def watch(self) -> None:
        """Poll forever (a background task of the app)."""
        while True:
            await asyncio.sleep(self._interval)
            self.check()
