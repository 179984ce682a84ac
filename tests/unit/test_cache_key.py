"""The cache key: length-prefixed fields; multipart keyed by its parts, not its boundary."""

from __future__ import annotations

import hashlib

from proxy.cache.key import BodyDigest, KeyInput, cache_key, media_type
from proxy.cache.multipart import MultipartDigest


def _multipart(boundary: str, parts: list[tuple[str, str | None, str, bytes]]) -> bytes:
    out = b""
    for name, filename, ctype, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        out += f"Content-Type: {ctype}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _request(**changes: object) -> KeyInput:
    values: dict[str, object] = {
        "upstream": "https://api.aspose.cloud",
        "client_id": "app",
        "scope_client": None,
        "method": "PUT",
        "path": "/v4.0/words/convert",
        "query": [("format", "pdf")],
        "content_type": "multipart/form-data; boundary=x",
        "accept": "application/json",
    }
    values.update(changes)
    return KeyInput(**values)  # type: ignore[arg-type]


def _digest(content_type: str, body: bytes, chunk: int = 7) -> BodyDigest:
    digest = BodyDigest(content_type)
    for at in range(0, len(body), chunk):
        digest.update(body[at : at + chunk])
    return digest


PARTS = [
    ("document", "report.docx", "application/octet-stream", b"PK\x03\x04" + b"x" * 500),
    ("options", None, "application/json", b'{"a": 1}'),
]


def test_two_uploads_with_different_boundaries_have_one_key() -> None:
    one = _digest("multipart/form-data; boundary=aaa111", _multipart("aaa111", PARTS))
    two = _digest("multipart/form-data; boundary=B2b2", _multipart("B2b2", PARTS), chunk=3)
    assert cache_key(_request(), one.fields()) == cache_key(_request(), two.fields())


def test_a_changed_part_changes_the_key() -> None:
    changed = [PARTS[0], ("options", None, "application/json", b'{"a": 2}')]
    one = _digest("multipart/form-data; boundary=b", _multipart("b", PARTS))
    two = _digest("multipart/form-data; boundary=b", _multipart("b", changed))
    assert one.fields() != two.fields()


def test_the_parts_are_name_filename_type_and_hash_in_order() -> None:
    parser = MultipartDigest("zz")
    body = _multipart("zz", PARTS)
    for byte in range(len(body)):  # the worst split: one byte at a time
        parser.feed(body[byte : byte + 1])
    parts = parser.parts()
    assert parts is not None
    assert [(p.name, p.filename, p.content_type) for p in parts] == [
        ("document", "report.docx", "application/octet-stream"),
        ("options", None, "application/json"),
    ]
    assert parts[0].sha256 == hashlib.sha256(PARTS[0][3]).digest()


def test_a_truncated_multipart_body_falls_back_to_the_raw_hash() -> None:
    body = _multipart("b", PARTS)[:-10]
    assert _digest("multipart/form-data; boundary=b", body).fields() == [
        b"raw",
        hashlib.sha256(body).digest(),
    ]


def test_fields_are_length_prefixed_not_concatenated() -> None:
    assert cache_key(_request(query=[("ab", "c")]), []) != cache_key(
        _request(query=[("a", "bc")]), []
    )
    assert cache_key(_request(), [b"ab", b"c"]) != cache_key(_request(), [b"a", b"bc"])


def test_query_is_sorted_by_name_and_repeats_keep_their_order() -> None:
    one = _request(query=[("b", "1"), ("a", "x"), ("a", "y")])
    two = _request(query=[("a", "x"), ("a", "y"), ("b", "1")])
    three = _request(query=[("a", "y"), ("a", "x"), ("b", "1")])
    assert cache_key(one, []) == cache_key(two, [])
    assert cache_key(two, []) != cache_key(three, [])


def test_every_identity_field_separates_entries() -> None:
    base = cache_key(_request(), [])
    for change in (
        {"upstream": "https://other"},
        {"client_id": "other"},
        {"scope_client": "ci"},
        {"scope_client": ""},
        {"method": "POST"},
        {"path": "/v4.0/words/convert/x"},
        {"accept": "application/pdf"},
        {"content_type": "application/octet-stream"},
        {"content_encoding": "gzip"},  # the same bytes, another document
    ):
        assert cache_key(_request(**change), []) != base, change


def test_the_boundary_is_not_part_of_the_media_type() -> None:
    assert media_type('multipart/form-data; boundary="x y"; charset=UTF-8') == (
        "multipart/form-data;charset=UTF-8",
        "x y",
    )
    assert cache_key(_request(content_type="multipart/form-data; boundary=1"), []) == cache_key(
        _request(content_type="multipart/form-data; boundary=2"), []
    )


def test_accept_encoding_separates_entries_whatever_the_order_of_its_codings() -> None:
    plain = cache_key(_request(), [])
    gzip = cache_key(_request(accept_encoding="gzip, br"), [])
    assert gzip != plain  # a gzip entry must never answer a client that cannot read it
    assert gzip == cache_key(_request(accept_encoding="BR,gzip"), [])


def test_rfc_2231_file_names_are_read_not_dropped() -> None:
    def parts(filename_star: str) -> list[bytes]:
        body = (
            '--b\r\nContent-Disposition: form-data; name="document"; '
            f"filename*=UTF-8''{filename_star}\r\n\r\nsame bytes\r\n--b--\r\n"
        ).encode()
        return _digest("multipart/form-data; boundary=b", body).fields()

    assert parts("r%C3%A9sum%C3%A9.docx") != parts("other.docx")
    assert parts("r%C3%A9sum%C3%A9.docx")[3] == b"\x01r\xc3\xa9sum\xc3\xa9.docx"
