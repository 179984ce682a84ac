"""The cache's allow-list and bypass rules, on the path the access rules normalise."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from proxy.cache.policy import BYPASS_QUERY, Decision, decide
from proxy.cache.step import stored_headers
from proxy.paths import normalise


def _decide(method: str, target: str, **headers: str) -> Decision:
    path, _, query = target.partition("?")
    names = [pair.partition("=")[0] for pair in query.split("&") if pair]
    normal = normalise(path)
    return decide(method, normal.path if normal.clear else None, names, CIMultiDict(headers))


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("PUT", "/v4.0/words/convert?format=pdf"),
        ("PUT", "/v4.0/cells/convert/spreadsheet?format=pdf"),
        ("PUT", "/v4.0/cells/convert/spreadsheet/pdf"),
        ("PUT", "/v4.0/cells/convert/spreadsheet/csv"),
        ("PUT", "/v4.0/cells/convert/spreadsheet/json"),
        ("PUT", "/v3.0/cells/convert?format=xlsx"),
        ("POST", "/v3.0/slides/convert/pdf"),
        ("POST", "/v3.0/pdf/convert/xlsx"),
        ("POST", "/v3.0/imaging/convert?format=png"),
        # Confirmed in the SDK sources this round (docs/cache.md):
        ("PUT", "/v4.0/cells/convert/worksheet/pdf?worksheet=Sheet1"),
        ("PUT", "/v4.0/cells/convert/range/json?worksheet=Sheet1&range=A1:C3"),
        ("PUT", "/v4.0/cells/convert/table/html"),
        ("PUT", "/v4.0/cells/convert/chart/image?chartIndex=0"),
        ("POST", "/v3.0/imaging/updateImage?rotateFlipMethod=Rotate90FlipNone"),
        ("POST", "/v3.0/imaging/tiff/toFax"),
        ("POST", "/v3.0/imaging/frames/2?newWidth=10"),
        ("POST", "/v3.0/imaging/frames/range?startFrameId=0&endFrameId=2"),
        ("POST", "/v3.0/imaging/deskew"),
        ("POST", "/v3.0/imaging/grayscale"),
        ("POST", "/v3.0/imaging/jpg?quality=80"),
        ("POST", "/v3.0/imaging/webp"),
        ("GET", "/v4.0/barcode/generate/QR?data=x"),
        ("POST", "/v4.0/barcode/generate-body"),
        ("POST", "/v4.0/barcode/generate-multipart"),
        ("POST", "/v4.0/barcode/recognize-body"),
        ("POST", "/v4.0/barcode/recognize-multipart"),
        ("POST", "/v4.0/barcode/scan-body"),
        ("POST", "/v4.0/barcode/scan-multipart"),
    ],
)
def test_allow_listed_conversions_are_looked_up(method: str, target: str) -> None:
    assert _decide(method, target) is Decision.LOOKUP


def test_matching_is_on_the_decoded_case_folded_path() -> None:
    assert _decide("PUT", "/V4.0/Words/CONVERT") is Decision.LOOKUP
    assert _decide("PUT", "/v4.0/words/%63onvert") is Decision.LOOKUP


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/v4.0/words/convert"),  # wrong method
        ("PUT", "/v3.0/slides/convert/pdf"),  # PUT saves to storage
        ("PUT", "/v4.0/words/storage/file/a.docx"),
        ("PUT", "/v4.0/words/convert/extra"),
        ("POST", "/v3.0/slides/convert/pdf/more"),
        ("PUT", "/v4.0/words/x/../convert"),  # a dot segment: refused by the normalisation
        ("GET", "/v4.0/barcode/recognize"),
        ("PUT", "/v4.0/cells/convert/workbook/pdf"),  # no such kind
        ("PUT", "/v4.0/cells/content/convert/text"),
        ("POST", "/v3.0/pdf/convert/doc"),  # PDF's other in-body conversions: PUT, outPath
        ("PUT", "/v3.0/pdf/convert/xlsx"),
        ("POST", "/v3.0/pdf/create/html"),  # HTML may load remote resources
        ("POST", "/v3.0/imaging/ai/objectdetection/bounds"),  # a model, not a conversion
        ("POST", "/v3.0/imaging/ai/imageSearch/create"),  # reads storage
        ("POST", "/v3.0/imaging/frames/1/extra"),
    ],
)
def test_everything_else_is_untouched(method: str, target: str) -> None:
    assert _decide(method, target) is Decision.NONE


@pytest.mark.parametrize("name", sorted(BYPASS_QUERY))
def test_storage_url_and_password_parameters_bypass(name: str) -> None:
    assert _decide("PUT", f"/v4.0/words/convert?format=pdf&{name}=x") is Decision.BYPASS


def test_bypass_parameters_match_whatever_their_case() -> None:
    assert _decide("PUT", "/v4.0/words/convert?OUTPATH=x") is Decision.BYPASS
    assert _decide("PUT", "/v4.0/words/convert?outPath=x") is Decision.BYPASS


def test_a_password_header_bypasses() -> None:
    assert _decide("POST", "/v3.0/slides/convert/pdf", password="p") is Decision.BYPASS


def test_no_store_bypasses_and_no_cache_refreshes() -> None:
    target = "/v4.0/words/convert"
    assert _decide("PUT", target, **{"Cache-Control": "no-store"}) is Decision.BYPASS
    assert _decide("PUT", target, **{"Cache-Control": "max-age=0, No-Cache"}) is Decision.REFRESH


def test_an_entry_keeps_the_answers_headers_but_never_cookies_or_per_answer_ones() -> None:
    """Issue 19: never ``Set-Cookie`` (one client's cookie served to another) nor what
    belongs to one answer (its date, age, request id, length, X-Cache)."""
    upstream = [
        ("Content-Type", "application/pdf"),
        ("Set-Cookie", "session=abc"),
        ("Content-Disposition", 'attachment; filename="a.pdf"'),
        ("set-cookie", "b=2"),
        ("Content-Encoding", "gzip"),
        ("Date", "Sat, 05 Dec 2026 17:00:00 GMT"),
        ("Age", "3"),
        ("X-Request-Id", "abc123"),
        ("Content-Length", "10"),
        ("X-Cache", "MISS"),
        ("Vary", "Accept-Encoding"),
    ]
    assert stored_headers(upstream) == (
        ("Content-Type", "application/pdf"),
        ("Content-Disposition", 'attachment; filename="a.pdf"'),
        ("Content-Encoding", "gzip"),
        ("Vary", "Accept-Encoding"),
    )
