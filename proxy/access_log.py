"""The one access line per request, written without structlog's machinery around it.

Measured (issue 11): through the processor chain the line was ~62k of the proxy's ~640k
instructions per small request; this writer renders the same fields, in the same order, with
the same timestamp, redaction and quoting, for a fraction of that. In JSON the line is one
f-string: only what the client chose (the path, a request id it sent, an unusual method, a
client name) gets the redactor's look and JSON quoting, and the quoted path is remembered (API
clients repeat a few paths); everything else is the proxy's own text, quoted once. The
console format takes the processor chain. ``tests/unit/test_access_line.py`` renders every
line both ways and compares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from proxy.bounded_cache import BoundedCache

ACCESS_LOGGER = "proxy.access_log"
REMEMBERED = 4096  # distinct paths (or client names) whose quoted text is kept
# The methods the proxy forwards (proxy/forward.py): quoted once, never client-chosen text.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# A string as the JSON encoder quotes it (ensure_ascii), without its per-call set-up.
_quote = json.encoder.encode_basestring_ascii
_TAIL = f', "logger": "{ACCESS_LOGGER}"}}'

Processor = Callable[[Any, str, Any], Any]


class AccessLine:
    """Writes the line for one answered request; ``enabled`` is read per request (a reload
    may change the level)."""

    def __init__(
        self,
        write: Callable[[str], None],
        enabled: bool,
        now: Callable[[], str],
        redact: Callable[[str], str],
        processors: Sequence[Processor],
        *,
        json_lines: bool,
    ) -> None:
        self._write = write
        self.enabled = enabled
        self._now = now
        self._redact = redact
        self._processors = tuple(processors)  # the console's chain, ending in its renderer
        self._json = json_lines
        # Client-chosen text as it appears in the line (redacted, quoted), by raw value.
        self._paths: BoundedCache[str, str] = BoundedCache(REMEMBERED)
        self._quoted = self._own_quoted()

    def forget(self) -> None:
        """A secret was added: what was quoted before must be looked at again."""
        self._paths.clear()
        self._quoted = self._own_quoted()

    @staticmethod
    def _own_quoted() -> BoundedCache[str, str]:
        """The methods the proxy forwards, quoted once (never client-chosen text)."""
        quoted: BoundedCache[str, str] = BoundedCache(REMEMBERED)
        quoted.update((m, _quote(m)) for m in METHODS)
        return quoted

    def _text(self, value: str) -> str:
        """``value`` redacted and JSON-quoted."""
        return _quote(self._redact(value))

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        status: int,
        duration_ms: float,
        client: str | None = None,
        aborted: bool = False,
        id_from_client: bool = True,
        remote_addr: str | None = None,
        bytes_received: int = 0,
        bytes_sent: int = 0,
    ) -> None:
        """Write the line for one answered request (``path`` without its query)."""
        if not self._json:  # the console: through the processor chain
            event: Any = {
                "event": "request",
                "request_id": request_id,
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": round(duration_ms, 2),
                "remote_addr": remote_addr,
                "bytes_received": bytes_received,
                "bytes_sent": bytes_sent,
            }
            if aborted:
                event["aborted"] = True
            if client:
                event["client"] = client
            event["logger"], event["level"] = ACCESS_LOGGER, "info"
            for processor in self._processors:
                event = processor(None, "info", event)
            self._write(event)
            return
        quoted_path = self._paths.get(path)
        if quoted_path is None:
            quoted_path = self._paths.remember(path, self._text(path))
        quoted_method = self._quoted.get(method)
        if quoted_method is None:
            quoted_method = self._text(method)
        rid = self._text(request_id) if id_from_client else f'"{request_id}"'
        remote = "null" if remote_addr is None else _quote(remote_addr)
        extra = ""
        if aborted:
            extra = ', "aborted": true'
        if client:
            quoted_client = self._quoted.get(client)
            if quoted_client is None:
                quoted_client = self._quoted.remember(client, self._text(client))
            extra += f', "client": {quoted_client}'
        self._write(
            f'{{"timestamp": "{self._now()}", "level": "info", "event": "request", '
            f'"request_id": {rid}, "method": {quoted_method}, "path": {quoted_path}, '
            f'"status": {status}, "duration_ms": {duration_ms:.2f}, "remote_addr": {remote}, '
            f'"bytes_received": {bytes_received}, "bytes_sent": {bytes_sent}{extra}{_TAIL}'
        )
