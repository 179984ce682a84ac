"""One reading of a request target's path, shared by every rule that looks at the path.

``allow_paths``, the usage accounting (product and kind, so budgets) and the conversion cache
key all read the path through ``normalise``: a client can never be one thing to the guards and
another to the accounting (issue 16: ``/v4.0/%77ords/…`` passed ``allow_paths`` as words but
was counted as ``other``). Pure, no I/O; callers remember answers per raw path.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

# IIS decodes %uXXXX (a Microsoft extension, no standard): read it as upstream would.
_U_ESCAPE = re.compile(r"%u([0-9a-f]{4})", re.IGNORECASE)
# Still percent-encoded after one decoding: a second decoding upstream would change it.
_ENCODED = re.compile(r"%(?:[0-9a-f]{2}|u[0-9a-f]{4})", re.IGNORECASE)
# Characters that give a path its structure; one that appears through compatibility mapping
# (full-width dot, slash, backslash, percent: U+FF0E, U+FF0F, U+FF3C, U+FF05 and friends)
# makes a path another server may read apart.
_STRUCTURAL = "./\\%"


@dataclass(frozen=True, slots=True)
class NormalPath:
    """``path``: percent-decoded once (and ``%uXXXX``), NFKC, case-folded, dot segments removed,
    without the query; the path upstream acts on. ``clear``: no server could read the target
    as another path (False for dot segments, encoded '/' or '\\', a '\\', double encoding,
    ``%u`` escapes, invalid or overlong UTF-8, full-width structure, control characters)."""

    path: str
    clear: bool


def normalise(raw_target: str) -> NormalPath:
    """The one normalisation of ``raw_target`` (a request target as sent, query allowed)."""
    path = raw_target.partition("?")[0]
    # The usual path: printable ASCII, nothing encoded, no dot segment, no backslash.
    if path.isascii() and path.isprintable() and not ("%" in path or "/." in path or "\\" in path):
        return NormalPath(path.lower(), True)
    return _normalise_odd(path)


def _normalise_odd(path: str) -> NormalPath:
    clear = path.isprintable()  # raw control characters
    expanded = path
    if "%u" in path or "%U" in path:
        clear = False
        expanded = _U_ESCAPE.sub(_utf8_escapes, path)
    raw = unquote_to_bytes(expanded.encode("utf-8", "surrogatepass"))
    try:
        decoded = raw.decode("utf-8")  # strict: overlong forms (%c0%ae) and surrogates fail
    except UnicodeDecodeError:
        clear = False
        decoded = raw.decode("utf-8", "replace")
    if not decoded.isprintable() or _ENCODED.search(decoded):
        clear = False  # decoded controls (%00, %0a), or double encoding (%252e)
    if not decoded.isascii():
        folded = unicodedata.normalize("NFKC", decoded)
        if any(folded.count(c) != decoded.count(c) for c in _STRUCTURAL):
            clear = False
        decoded = folded
    if "\\" in decoded or decoded.count("/") != path.count("/"):
        clear = False  # IIS reads '\' as '/'; an encoded '/' is a separator to some servers
    decoded = decoded.casefold()
    segments = decoded.split("/")
    if any(_is_dot_segment(s) for s in segments):
        clear = False
        decoded = _remove_dot_segments(segments)
    return NormalPath(decoded, clear)


def _utf8_escapes(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return "".join(f"%{b:02X}" for b in char.encode("utf-8", "surrogatepass"))


def _is_dot_segment(segment: str) -> bool:
    """'.', '..', also '...', '.. ' and Tomcat's '..;x': servers read them as dot segments."""
    head = segment.partition(";")[0]
    return "." in head and not head.strip(". ")


def _remove_dot_segments(segments: list[str]) -> str:
    """RFC 3986 §5.2.4 on an absolute path already split at '/'."""
    out: list[str] = []
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    if segments[-1] in (".", ".."):
        out.append("")  # '/a/b/..' is '/a/'
    return "/" + "/".join(out)
