"""The cache key: SHA-256 over length-prefixed fields, so no two requests share one by accident.

Plain concatenation would let ``("ab", "c")`` and ``("a", "bc")`` collide; every field here
is preceded by its length. In the key: a schema version, the upstream base URL and the
``client_id`` (two applications never share entries), the client's name when
``cache_scope = "client"``, the method, the decoded path, the query sorted by name (repeated
values in their order), the media type of ``Content-Type`` without its boundary, ``Accept``,
``Accept-Encoding`` (its codings, lower case and sorted: upstream compresses by it and the
entry keeps the body as received, so a client that cannot read gzip must never get a gzip
entry), the request's ``Content-Encoding``, and the body: its SHA-256, or for
``multipart/*`` the ordered parts as (name, filename, content type, SHA-256) computed while
the body is spooled. Authorization, X-Proxy-Key, User-Agent, Content-Length and request ids
stay out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import Message

from proxy.cache.multipart import MultipartDigest, Part

SCHEMA = "aspose-proxy-cache/2"  # 2: Accept-Encoding joined the key


def _utf8(text: str) -> bytes:
    """Text as UTF-8; lone surrogates (undecodable bytes in a path or query) kept as such."""
    return text.encode("utf-8", "surrogatepass")


def _optional(text: str | None) -> bytes:
    """``None`` and ``""`` must differ: a marker byte in front."""
    return b"\x00" if text is None else b"\x01" + _utf8(text)


def media_type(content_type: str | None) -> tuple[str, str | None]:
    """``Content-Type`` as (media type with its parameters but no boundary, the boundary)."""
    if not content_type:
        return "", None
    message = Message()
    message["Content-Type"] = content_type
    kept = [message.get_content_type()]
    boundary = None
    for name, value in (message.get_params(header="content-type") or [])[1:]:
        if name.lower() == "boundary":
            boundary = value if isinstance(value, str) else None
        else:
            kept.append(f"{name.lower()}={value}")
    return ";".join(kept), boundary


def codings(accept_encoding: str | None) -> str:
    """``Accept-Encoding`` as its codings, lower case, sorted: ``gzip, br`` = ``br,gzip``."""
    if not accept_encoding:
        return ""
    return ",".join(sorted({c.strip().lower() for c in accept_encoding.split(",") if c.strip()}))


class BodyDigest:
    """The body's fingerprint, fed chunk by chunk while it is spooled (one read of the body)."""

    __slots__ = ("_multipart", "_raw", "size")

    def __init__(self, content_type: str | None) -> None:
        self._raw = hashlib.sha256()
        media, boundary = media_type(content_type)
        is_multipart = media.startswith("multipart/") and bool(boundary)
        self._multipart = MultipartDigest(boundary) if is_multipart and boundary else None
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._raw.update(chunk)
        if self._multipart is not None:
            self._multipart.feed(chunk)

    def fields(self) -> list[bytes]:
        """The body's fields of the key: its parts when it parsed as multipart, else its hash."""
        parts = self._multipart.parts() if self._multipart is not None else None
        if parts is None:
            return [b"raw", self._raw.digest()]
        return [
            b"multipart",
            str(len(parts)).encode(),
            *_part_fields(parts),
        ]


def _part_fields(parts: Sequence[Part]) -> Iterable[bytes]:
    for part in parts:
        yield _utf8(part.name)
        yield (b"\x00" if part.filename is None else b"\x01" + part.filename.encode())
        yield _utf8(part.content_type)
        yield part.sha256


@dataclass(frozen=True, slots=True)
class KeyInput:
    """Everything but the body that goes into the key."""

    upstream: str
    client_id: str
    scope_client: str | None  # the client's name under cache_scope = "client", else None
    method: str
    path: str
    query: Sequence[tuple[str, str]]
    content_type: str | None
    accept: str | None
    accept_encoding: str | None = None
    content_encoding: str | None = None  # of the request body: the same bytes gzip or not


def cache_key(request: KeyInput, body: Sequence[bytes]) -> str:
    """The hex SHA-256 of the length-prefixed fields."""
    digest = hashlib.sha256()
    query = sorted(request.query, key=lambda item: item[0])  # stable: repeats keep their order
    fields: list[bytes] = [
        SCHEMA.encode(),
        _utf8(request.upstream),
        _utf8(request.client_id),
        b"\x00" if request.scope_client is None else b"\x01" + _utf8(request.scope_client),
        _utf8(request.method),
        _utf8(request.path),
        str(len(query)).encode(),
    ]
    for name, value in query:
        fields += (_utf8(name), _utf8(value))
    fields += (
        _utf8(media_type(request.content_type)[0]),
        _utf8(request.accept or ""),
        _utf8(codings(request.accept_encoding)),
        _utf8(codings(request.content_encoding)),
        *body,
    )
    for field in fields:
        digest.update(len(field).to_bytes(8, "big"))
        digest.update(field)
    return digest.hexdigest()
