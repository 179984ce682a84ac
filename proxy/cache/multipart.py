"""A multipart body as its parts' (name, filename, content type, SHA-256), parsed as it arrives.

SDKs pick a random boundary on every call, so the raw bytes of two identical uploads differ;
the parts do not. The parser is incremental (fed the chunks as the body is spooled, one pass,
bounded memory: a part's bytes are hashed and dropped) and strict: anything it does not
understand (no parts, headers too long, a body that ends without the closing delimiter) makes
``parts()`` return ``None``, and the caller keys on the raw bytes instead (a miss, never a
wrong hit). RFC 2046 §5.1.1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.message import Message
from email.utils import collapse_rfc2231_value

MAX_HEADERS = 16 * 1024  # bytes of one part's header block


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str
    sha256: bytes


def _part_headers(block: bytes) -> tuple[str, str | None, str]:
    """(name, filename, content type) from a part's header block (ISO-8859-1, as HTTP)."""
    message = Message()
    for line in block.decode("latin-1").split("\r\n"):
        header, sep, value = line.partition(":")
        if sep:
            message[header.strip()] = value.strip()
    name = _param(message, "name")
    filename = _param(message, "filename")
    content_type = message.get("Content-Type", "text/plain").strip().lower()
    return (name or "", filename, content_type)


def _param(message: Message, name: str) -> str | None:
    """A Content-Disposition parameter; an RFC 2231 one (``filename*=UTF-8''...``) decoded,
    so two different encoded file names never read as the same (absent) one."""
    value = message.get_param(name, header="content-disposition")
    if value is None:
        return None
    return collapse_rfc2231_value(value) if isinstance(value, tuple) else str(value)


class MultipartDigest:
    """Feed it the body's chunks; ``parts()`` at the end."""

    __slots__ = ("_buffer", "_current", "_delimiter", "_failed", "_hash", "_parts", "_state")

    def __init__(self, boundary: str) -> None:
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        # The first delimiter may open the body without the CRLF before it.
        self._buffer = bytearray(b"\r\n")
        self._state = "preamble"
        self._parts: list[Part] = []
        self._current: tuple[str, str | None, str] = ("", None, "")
        self._hash = hashlib.sha256()
        self._failed = False

    def feed(self, chunk: bytes) -> None:
        if self._failed or self._state == "end":
            return
        self._buffer += chunk
        while not self._failed and self._step():
            pass

    def _step(self) -> bool:
        """Advance as far as the buffer allows; False when more bytes are needed."""
        buffer, delimiter = self._buffer, self._delimiter
        if self._state == "preamble":
            at = buffer.find(delimiter)
            if at < 0:
                del buffer[: max(0, len(buffer) - len(delimiter))]
                return False
            del buffer[: at + len(delimiter)]
            self._state = "after-delimiter"
            return True
        if self._state == "after-delimiter":
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = "end"
                return False
            end = buffer.find(b"\r\n")
            if end < 0:
                self._failed = len(buffer) > MAX_HEADERS
                return False
            if buffer[:end].strip(b" \t"):  # only transport padding may follow a delimiter
                self._failed = True
                return False
            del buffer[: end + 2]
            self._state = "headers"
            return True
        if self._state == "headers":
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"\r\n":  # a part without headers
                block, consumed = b"", 2
            else:
                end = buffer.find(b"\r\n\r\n", 0, MAX_HEADERS)
                if end < 0:
                    self._failed = len(buffer) > MAX_HEADERS
                    return False
                block, consumed = bytes(buffer[:end]), end + 4
            self._current = _part_headers(block)
            del buffer[:consumed]
            self._hash = hashlib.sha256()
            self._state = "content"
            return True
        if self._state == "content":
            at = buffer.find(delimiter)
            if at < 0:
                keep = len(delimiter) - 1
                if len(buffer) > keep:
                    self._hash.update(buffer[: len(buffer) - keep])
                    del buffer[: len(buffer) - keep]
                return False
            self._hash.update(buffer[:at])
            del buffer[: at + len(delimiter)]
            self._parts.append(Part(*self._current, self._hash.digest()))
            self._state = "after-delimiter"
            return True
        return False

    def parts(self) -> list[Part] | None:
        """The parts in order, or None when the body was not a well-formed multipart body."""
        if self._failed or self._state != "end" or not self._parts:
            return None
        return list(self._parts)
