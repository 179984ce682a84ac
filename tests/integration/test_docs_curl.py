"""The curl lines that moved out of the README's demo (issue 18) still work: those of the
README's client section and of ``docs/clients.md``, run in order against ``aspose-proxy demo``
(``$B`` is the documented ``http://localhost:8080``, rewritten to the demo's address)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.clients.harness import demo_process
from tests.integration.test_readme_curl import ROOT, run_lines, runnable_lines

SECTIONS = [
    (ROOT / "README.md", "Use it from curl, Postman or an SDK"),
    (ROOT / "docs" / "clients.md", "Use with curl"),
]


def section_lines(path: Path, heading: str) -> list[str]:
    text = path.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{path.name} has no '## {heading}' section"
    return match.group(1).splitlines()


@pytest.mark.parametrize(("path", "heading"), SECTIONS, ids=["README", "docs-clients"])
async def test_documented_curl_lines_run_against_the_demo(
    tmp_path: Path, path: Path, heading: str
) -> None:
    commands = [c for c in runnable_lines(section_lines(path, heading)) if c.startswith("curl ")]
    assert commands, f"{path.name} '## {heading}' has no curl line"
    assert all("$B/" in command for command in commands)
    workdir = tmp_path / "work"
    workdir.mkdir()
    (workdir / "report.docx").write_bytes(b"PK\x03\x04 not really a document\n")
    async with demo_process(tmp_path) as demo:
        lines = [command.replace("$B/", "http://localhost:8080/") for command in commands]
        steps = await run_lines(lines, demo.proxy_url, workdir)
    assert len(steps) == len(commands)
    assert (workdir / "copy.docx").exists() or "copy.docx" not in " ".join(commands)
