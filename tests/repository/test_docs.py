"""The docs stay true and reachable (issue 18): the generated settings reference, every relative
link and anchor, the README's size, every error code explained, the licence and the changelog."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from proxy import __version__, errors
from proxy.settings import Settings
from proxy.settings_reference import NOTES, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
README_LIMIT = 15_000


def test_the_settings_reference_is_generated_from_the_model() -> None:
    """Fails when a setting changed and docs/settings.md was not regenerated."""
    current = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    assert current == render(), (
        "docs/settings.md is out of date: python -m proxy.settings_reference > docs/settings.md"
    )


def test_the_settings_reference_has_one_row_per_setting() -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| `ASPOSE_PROXY_([A-Z_]+)` \|", render(), re.M)
    assert [name for name, _ in rows] == list(Settings.model_fields)
    assert all(env == name.upper() for name, env in rows)
    assert set(NOTES) <= set(Settings.model_fields)  # no note for a setting that is gone


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, re.M)}


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z]+:", t)]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    broken = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{path.relative_to(ROOT)}: {broken}"


def test_the_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[a](missing.md) [b](#title) [c](#nowhere) [d](https://x.y/z)\n")
    assert relative_links(page) == ["missing.md", "#title", "#nowhere"]
    assert "title" in anchors(page) and "nowhere" not in anchors(page)


TEST_NAME = re.compile(r"`(?:tests/[\w/]*?(test_\w+)\.py(?:::(test_\w+))?|(test_\w+))")


def named_tests(path: Path) -> list[str]:
    """The tests a page cites in code spans (`test_x`, `tests/a/test_b.py::test_x`, a module)."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return [name for groups in TEST_NAME.findall(text) for name in groups if name]


def existing_tests() -> set[str]:
    names = set()
    for module in (ROOT / "tests").rglob("test_*.py"):
        names.add(module.stem)
        names.update(re.findall(r"^(?:async )?def (test_\w+)", module.read_text(), re.M))
    return names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_test_the_docs_cite_exists(path: Path) -> None:
    """docs/security.md and reliability.md name each guarantee's test: a renamed or removed
    test must not leave a guarantee pointing at nothing."""
    missing = sorted(set(named_tests(path)) - existing_tests())
    assert not missing, f"{path.relative_to(ROOT)} cites tests that do not exist: {missing}"


def test_the_cited_test_checker_reads_names_and_paths(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("`test_a`, `tests/unit/test_b.py::test_c`, `x`\n```\ndef test_d\n```\n")
    assert named_tests(page) == ["test_a", "test_b", "test_c"]


def test_the_readme_fits_on_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= README_LIMIT


def test_troubleshooting_explains_every_error_code() -> None:
    text = (ROOT / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    codes = {
        cls.code
        for cls in vars(errors).values()
        if isinstance(cls, type) and issubclass(cls, errors.ProxyError) and cls.code
    }
    assert codes
    missing = sorted(code for code in codes if f"| `{code}` |" not in text)
    assert not missing, missing


def test_the_licence_is_the_one_pyproject_declares() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert declared == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License\n")


def test_the_changelog_has_the_version_the_cli_shows() -> None:
    assert f"\n## {__version__}\n" in (ROOT / "CHANGELOG.md").read_text()
