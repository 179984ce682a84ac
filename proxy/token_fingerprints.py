"""Salted fingerprints naming credentials in the token schedule's state, never the secrets.

The salt belongs to the state (its ``salt`` field), so every process sharing a state names the
same credentials alike. A process that started while Redis was unreachable made a state, and a
salt, of its own; when Redis is back it must adopt the shared salt, or the secrets it saw
rejected would not match the other replicas' (issue 17). So the fingerprints remember the
credentials they named (in memory only, as the token cache holds them anyway) and can name
them again under another salt.
"""

from __future__ import annotations

import hashlib
import hmac

from proxy.credentials import Credentials

REMEMBERED = 16  # credentials named again under a new salt; older ones are forgotten


class Fingerprints:
    """Names credentials under a salt; re-names, under another, those it has named."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: list[Credentials] = []  # newest last; secrets stay in SecretStr

    def of(self, salt: str, credentials: Credentials) -> str:
        """The fingerprint of ``credentials`` under ``salt`` (hex), remembered for ``rename``."""
        if credentials in self._seen:
            self._seen.remove(credentials)
        self._seen = [*self._seen[-(REMEMBERED - 1) :], credentials]
        return _digest(salt, credentials)

    def rename(self, fp: str, old_salt: str, new_salt: str) -> str | None:
        """``fp`` made under ``old_salt``, made again under ``new_salt``; None when the
        credentials it names were not seen here (or too long ago)."""
        for credentials in self._seen:
            if hmac.compare_digest(_digest(old_salt, credentials), fp):
                return _digest(new_salt, credentials)
        return None


def _digest(salt: str, credentials: Credentials) -> str:
    message = credentials.client_id.encode() + b"\0" + credentials.secret.encode()
    return hmac.new(bytes.fromhex(salt), message, hashlib.sha256).hexdigest()[:24]


def client_digest(client_id: str) -> str:
    """Names an application (its ``client_id``, never the secret) in shared keys: the token
    schedule's, and the budgets' and rate limits' (issue 17), so no client_id is in Redis."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:32]
