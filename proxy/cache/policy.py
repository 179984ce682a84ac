"""What may be cached: the allow-list of pure conversions and the bypass rules. Pure, no I/O.

A call is cacheable only when its answer depends on nothing but (method, path, query, body):
nothing read from or written to storage, no remote URL fetched, no secret that changes the
request on every call. Sources for each row: docs/cache.md. Matching is on the path as
``proxy.paths.normalise`` gives it (decoded, case-folded; a path that is not ``clear`` is
never cached), the same one the access rules use, so a client cannot be one thing to the
guards and another here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping

# (method, path pattern), spelt as the SDKs send it and case-folded when compiled: matching is
# on the normalised (case-folded) path. A {segment} is one path segment. Sources: docs/cache.md.
ALLOWED: tuple[tuple[str, str], ...] = (
    ("PUT", "/v4.0/words/convert"),
    ("PUT", "/v4.0/cells/convert/spreadsheet"),
    ("PUT", "/v4.0/cells/convert/spreadsheet/pdf"),
    ("PUT", "/v4.0/cells/convert/spreadsheet/csv"),
    ("PUT", "/v4.0/cells/convert/spreadsheet/json"),
    ("PUT", "/v4.0/cells/convert/worksheet/pdf"),
    ("PUT", "/v4.0/cells/convert/worksheet/image"),
    ("PUT", "/v4.0/cells/convert/worksheet/html"),
    ("PUT", "/v4.0/cells/convert/worksheet/html-table"),
    ("PUT", "/v4.0/cells/convert/range/pdf"),
    ("PUT", "/v4.0/cells/convert/range/image"),
    ("PUT", "/v4.0/cells/convert/range/html"),
    ("PUT", "/v4.0/cells/convert/range/csv"),
    ("PUT", "/v4.0/cells/convert/range/json"),
    ("PUT", "/v4.0/cells/convert/table/pdf"),
    ("PUT", "/v4.0/cells/convert/table/image"),
    ("PUT", "/v4.0/cells/convert/table/html"),
    ("PUT", "/v4.0/cells/convert/table/csv"),
    ("PUT", "/v4.0/cells/convert/table/json"),
    ("PUT", "/v4.0/cells/convert/chart/pdf"),
    ("PUT", "/v4.0/cells/convert/chart/image"),
    ("PUT", "/v3.0/cells/convert"),
    ("POST", "/v3.0/slides/convert/{format}"),
    ("POST", "/v3.0/pdf/convert/xlsx"),
    ("POST", "/v3.0/imaging/convert"),
    ("POST", "/v3.0/imaging/resize"),
    ("POST", "/v3.0/imaging/crop"),
    ("POST", "/v3.0/imaging/rotateflip"),
    ("POST", "/v3.0/imaging/deskew"),
    ("POST", "/v3.0/imaging/grayscale"),
    ("POST", "/v3.0/imaging/updateImage"),
    ("POST", "/v3.0/imaging/tiff/toFax"),
    ("POST", "/v3.0/imaging/frames/{frameId}"),  # "range" included: frames/range
    ("POST", "/v3.0/imaging/bmp"),
    ("POST", "/v3.0/imaging/emf"),
    ("POST", "/v3.0/imaging/gif"),
    ("POST", "/v3.0/imaging/jpg"),
    ("POST", "/v3.0/imaging/jpg2000"),
    ("POST", "/v3.0/imaging/psd"),
    ("POST", "/v3.0/imaging/svg"),
    ("POST", "/v3.0/imaging/tiff"),
    ("POST", "/v3.0/imaging/webp"),
    ("POST", "/v3.0/imaging/wmf"),
    ("GET", "/v4.0/barcode/generate/{type}"),
    ("POST", "/v4.0/barcode/generate-body"),
    ("POST", "/v4.0/barcode/generate-multipart"),
    ("POST", "/v4.0/barcode/recognize-body"),
    ("POST", "/v4.0/barcode/recognize-multipart"),
    ("POST", "/v4.0/barcode/scan-body"),
    ("POST", "/v4.0/barcode/scan-multipart"),
)

# Query parameters (compared case-folded: the API binds them case-insensitively) that make a
# call touch storage, fetch a URL, or carry a password: such calls are forwarded, never cached.
BYPASS_QUERY = frozenset(
    name.casefold()
    for name in (
        "outPath",
        "outStorageName",
        "storage",
        "storageName",
        "folder",
        "destFolder",
        "fontsLocation",
        "fontsFolder",
        "password",
        "encryptedPassword",
        "fileUrl",
        "url",
    )
)
BYPASS_HEADERS = ("password",)  # Slides takes a document password as a header


class Decision(enum.Enum):
    """What the cache step does with a request."""

    NONE = "none"  # not on the allow-list: untouched, no X-Cache header
    BYPASS = "bypass"  # on the list but not cacheable this time: forwarded, X-Cache: BYPASS
    LOOKUP = "lookup"  # answer from the cache if there, else forward and store
    REFRESH = "refresh"  # Cache-Control: no-cache: forward and store (X-Cache: MISS)


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[a-z]+\\\}", "[^/]+", re.escape(pattern.casefold())) + "/?")


_ROUTES: dict[str, tuple[re.Pattern[str], ...]] = {}
for _method, _pattern in ALLOWED:
    _ROUTES[_method] = (*_ROUTES.get(_method, ()), _compile(_pattern))


def is_allow_listed(method: str, path: str | None) -> bool:
    """Is (method, normalised path) one of the pure conversions? ``None`` (a path the access
    rules refuse to interpret) never is."""
    if path is None:
        return False
    return any(route.fullmatch(path) for route in _ROUTES.get(method, ()))


def _directives(cache_control: str | None) -> frozenset[str]:
    if not cache_control:
        return frozenset()
    return frozenset(part.split("=", 1)[0].strip().lower() for part in cache_control.split(","))


def decide(
    method: str,
    path: str | None,
    query_names: Iterable[str],
    headers: Mapping[str, str],
) -> Decision:
    """The cache's decision for one request (``headers`` looked up case-insensitively)."""
    if not is_allow_listed(method, path):
        return Decision.NONE
    if any(name.casefold() in BYPASS_QUERY for name in query_names):
        return Decision.BYPASS
    if any(headers.get(name) is not None for name in BYPASS_HEADERS):
        return Decision.BYPASS
    directives = _directives(headers.get("Cache-Control"))
    if "no-store" in directives:
        return Decision.BYPASS
    if "no-cache" in directives:
        return Decision.REFRESH
    return Decision.LOOKUP
