"""The one normalisation of a request path, shared by allow_paths, accounting and the cache."""

from __future__ import annotations

import pytest

from proxy.paths import normalise
from proxy.usage.counter import classify


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/v4.0/Words/x?q=1", "/v4.0/words/x"),
        ("/v4.0/%77ords/x", "/v4.0/words/x"),
        ("/v4.0/%57ORDS/x", "/v4.0/words/x"),
        ("/a%20b", "/a b"),
        ("/v4.0/words/%E6%96%87.docx", "/v4.0/words/文.docx"),
        ("/v4.0/%EF%BD%97ords/x", "/v4.0/words/x"),  # a full-width letter is read as upstream may
    ],
)
def test_clear_paths_are_decoded_once_and_case_folded(raw: str, path: str) -> None:
    target = normalise(raw)
    assert target.clear
    assert target.path == path


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        ("/a/../b", "/b"),
        ("/a/%2e/b", "/a/b"),
        ("/a/b/..", "/a/"),
        ("/a/b%2Fc", "/a/b/c"),
        ("/v4.0/cells/..%5cwords", "/v4.0/cells/..\\words"),
        ("/v4.0/%u0077ords/x", "/v4.0/words/x"),  # IIS's %u escape, read as IIS reads it
        ("/v4.0/words/%c0%ae%c0%ae/x", "/v4.0/words/\ufffd\ufffd\ufffd\ufffd/x"),  # overlong
        ("/v4.0/words/%ff/x", "/v4.0/words/\ufffd/x"),  # not UTF-8
        ("/v4.0/words/%EF%BC%8E%EF%BC%8E/cells", "/v4.0/cells"),  # full-width dots
        ("/v4.0/words%EF%BC%8Fx", "/v4.0/words/x"),  # full-width slash
        ("/v4.0/words/%0a/x", "/v4.0/words/\n/x"),
        ("/v4.0/words/%252e%252e/x", "/v4.0/words/%2e%2e/x"),  # double encoding
    ],
)
def test_paths_another_server_could_read_differently_are_not_clear(raw: str, path: str) -> None:
    target = normalise(raw)
    assert not target.clear
    assert target.path == path


@pytest.mark.parametrize(
    "raw",
    ["/v4.0/words/x", "/v4.0/%77ords/x", "/v4.0/Words/x", "/V4.0/WORDS/x", "/v4.0/%u0077ords/x"],
)
def test_classification_reads_the_normalised_path(raw: str) -> None:
    assert classify(raw) == ("words", "api")


def test_dot_segments_are_classified_as_the_product_upstream_acts_on() -> None:
    assert classify("/v4.0/words/../cells/%73torage/x") == ("cells", "storage")
