"""Every curl line of the README's ``## Demo`` section, run against ``aspose-proxy demo``.

The lines are taken from README.md itself (so the docs cannot drift from what works): every
line in the section (up to the next ``## `` heading) that starts, after optional whitespace and
an optional ``$ `` prompt, with ``curl `` or with a command that makes or compares a file
(``echo``/``printf``/``head``/``dd`` with ``>``, ``cmp``, ``diff``). Lines ending in ``\\`` are
joined with the next. ``http://localhost:8080`` is rewritten to the demo proxy's real address;
each line runs with ``bash -o pipefail`` in one temporary directory, in order; curl gets
``--fail`` unless the line has it, so an HTTP error fails the test.

A sibling test covers what curl users meet whatever the README says: ``-T`` of a file over
1 MiB (curl sends ``Expect: 100-continue``), ``-o`` and a byte-for-byte comparison, and
``--compressed`` (with a body that really is gzip).
"""

from __future__ import annotations

import gzip
import itertools
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.clients.harness import Completed, demo_process, require_tool, run
from tests.conftest import RunningSandbox
from tests.integration.conftest import ProxyFactory

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCUMENTED_URL = "http://localhost:8080"
FILE_MAKERS = ("echo ", "printf ", "head ", "dd ")
CHECKERS = ("cmp ", "diff ")
MiB = 1024 * 1024
_PROMPT = re.compile(r"^\s*(?:\$\s+)?")
_HAS_FAIL = re.compile(r"(?:^|\s)(?:--fail(?:-with-body)?|-[a-zA-Z]*f[a-zA-Z]*)(?=\s|$)")


@dataclass
class Step:
    line: str
    result: Completed


def demo_section(readme: Path | None = None) -> list[str]:
    """The lines of the ``## Demo`` section, without its heading; fails if there is none."""
    readme = readme or README
    if not readme.exists():
        pytest.fail(
            f"{readme} does not exist yet: the README needs a '## Demo' section with the curl "
            "lines to try against `aspose-proxy demo` (issue 4)",
            pytrace=False,
        )
    lines = readme.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"^##\s+Demo\b", line)]
    if not starts:
        pytest.fail(
            f"{readme.name} has no '## Demo' section yet: it must hold the curl lines to try "
            "against `aspose-proxy demo` (upload with -T, list, download with -o, "
            "--compressed); this test runs every one of them (issue 4)",
            pytrace=False,
        )
    section: list[str] = []
    for line in lines[starts[0] + 1 :]:
        if re.match(r"^##\s", line):
            break
        section.append(line)
    return section


def runnable_lines(section: list[str]) -> list[str]:
    """The curl lines (and file-making/comparing lines), continuations joined, prompts cut."""
    joined: list[str] = []
    pending = ""
    for raw in section:
        text = raw.rstrip()
        if pending:
            text = pending + " " + text.strip()
            pending = ""
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        joined.append(text)
    commands = []
    for text in joined:
        command = _PROMPT.sub("", text, count=1)
        is_curl = command.startswith("curl ")
        makes_file = command.startswith(FILE_MAKERS) and ">" in command
        if is_curl or makes_file or command.startswith(CHECKERS):
            commands.append(command)
    return commands


def for_the_demo(command: str, proxy_url: str) -> str:
    """The documented address replaced by the demo's; ``--fail`` added to curl lines."""
    host_port = proxy_url.removeprefix("http://")
    command = command.replace(DOCUMENTED_URL, proxy_url)
    command = re.sub(r"(?<![\w.-])(?:localhost|127\.0\.0\.1):8080\b", host_port, command)
    if command.startswith("curl ") and not _HAS_FAIL.search(command):
        command = "curl --fail " + command.removeprefix("curl ")
    return command


def uploaded_file(command: str) -> str | None:
    """The file a curl line uploads with ``-T``/``--upload-file``, if any."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for flag, value in itertools.pairwise(words):
        if flag in ("-T", "--upload-file"):
            return value
    return None


async def run_lines(commands: list[str], proxy_url: str, workdir: Path) -> list[Step]:
    bash = require_tool("bash", "install bash")
    require_tool("curl", "install curl (apt-get install curl)")
    steps = []
    for command in commands:
        line = for_the_demo(command, proxy_url)
        result = await run([bash, "-o", "pipefail", "-c", line], cwd=workdir, timeout=120)
        steps.append(Step(line, result))
        assert result.returncode == 0, f"README line failed: {command}\n{result.explain()}"
    return steps


async def test_readme_demo_curl_lines_run_against_the_demo(tmp_path: Path) -> None:
    commands = runnable_lines(demo_section())
    curl_lines = [c for c in commands if c.startswith("curl ")]
    assert curl_lines, "README '## Demo' has no line starting with 'curl '"
    for command in curl_lines:
        assert "aspose.cloud" not in command, (
            f"a README demo line reaches the real Aspose Cloud: {command}"
        )
        assert "localhost:8080" in command or "127.0.0.1:8080" in command, (
            f"a README demo line does not talk to the proxy at localhost:8080: {command}"
        )
    workdir = tmp_path / "work"
    workdir.mkdir()
    async with demo_process(tmp_path) as demo:
        steps = await run_lines(commands, demo.proxy_url, workdir)
    assert len(steps) == len(commands)


async def test_readme_demo_covers_what_curl_users_do(tmp_path: Path) -> None:
    """The issue asks the demo section to show a GET, an upload with ``-T`` of a file over
    1 MiB, a download with ``-o`` and ``--compressed``."""
    commands = runnable_lines(demo_section())
    curl_lines = [c for c in commands if c.startswith("curl ")]
    missing = []
    if not any(uploaded_file(c) for c in curl_lines):
        missing.append("an upload with -T")
    if not any(re.search(r"(?:^|\s)(?:-o|--output)\s", c) for c in curl_lines):
        missing.append("a download with -o")
    if not any("--compressed" in c for c in curl_lines):
        missing.append("a GET with --compressed")
    if not any(
        not uploaded_file(c) and not re.search(r"\s-X\s*(?!GET)[A-Z]", c) for c in curl_lines
    ):
        missing.append("a plain GET")
    assert not missing, f"README '## Demo' lacks: {', '.join(missing)}"

    workdir = tmp_path / "work"
    workdir.mkdir()
    async with demo_process(tmp_path) as demo:
        await run_lines(commands, demo.proxy_url, workdir)
    sizes = {
        name: (workdir / name).stat().st_size
        for name in filter(None, map(uploaded_file, curl_lines))
        if (workdir / name).exists()
    }
    assert any(size > MiB for size in sizes.values()), (
        f"README '## Demo' uploads no file over 1 MiB with -T (sizes: {sizes}); "
        "make one first, e.g. `head -c 2000000 /dev/urandom > big.bin`"
    )


async def test_curl_large_upload_download_and_compressed_through_the_demo(
    tmp_path: Path,
) -> None:
    require_tool("curl", "install curl (apt-get install curl)")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * MiB + 12345))
    async with demo_process(tmp_path) as demo:
        url = f"{demo.proxy_url}/v4.0/words/storage/file/curl/big.bin"

        upload = await run(["curl", "--fail", "-sS", "-v", "-T", str(big), url], cwd=tmp_path)
        assert upload.returncode == 0, upload.explain()
        assert re.search(r"(?im)^> Expect: 100-continue", upload.stderr), upload.explain()
        assert re.search(r"(?m)^< HTTP/1\.1 100 Continue", upload.stderr), upload.explain()
        assert '"Uploaded": ["big.bin"]' in upload.stdout.replace("'", '"'), upload.explain()

        copy = tmp_path / "big-copy.bin"
        download = await run(["curl", "--fail", "-sS", "-o", str(copy), url], cwd=tmp_path)
        assert download.returncode == 0, download.explain()
        assert copy.read_bytes() == big.read_bytes()

        listing = await run(
            [
                "curl",
                "--fail",
                "-sS",
                "--compressed",
                f"{demo.proxy_url}/v4.0/words/storage/folder/curl",
            ],
            cwd=tmp_path,
        )
        assert listing.returncode == 0, listing.explain()
        assert '"Name": "big.bin"' in listing.stdout, listing.explain()

        # a body that upstream really gzips: passed through compressed, curl inflates it
        gz = await run(
            ["curl", "--fail", "-sS", "-v", "--compressed", f"{demo.proxy_url}/v4.0/sandbox/gzip"],
            cwd=tmp_path,
        )
        assert gz.returncode == 0, gz.explain()
        assert re.search(r"(?im)^< Content-Encoding: gzip", gz.stderr), gz.explain()
        assert gz.stdout == "hello from the sandbox\n" * 100
        raw = tmp_path / "raw.gz"
        plain = await run(
            ["curl", "--fail", "-sS", "-o", str(raw), f"{demo.proxy_url}/v4.0/sandbox/gzip"],
            cwd=tmp_path,
        )
        assert plain.returncode == 0, plain.explain()
        assert gzip.decompress(raw.read_bytes()) == b"hello from the sandbox\n" * 100

        deleted = await run(["curl", "--fail", "-sS", "-X", "DELETE", url], cwd=tmp_path)
        assert deleted.returncode == 0, deleted.explain()
        gone = await run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url])
        assert gone.stdout == "404", gone.explain()


async def test_curl_oversized_upload_is_refused_before_the_body_is_sent(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    """With ``Expect: 100-continue`` the proxy checks the declared size first: curl gets 413
    instead of ``100 Continue`` and never sends the body (the README says so)."""
    require_tool("curl", "install curl (apt-get install curl)")
    proxy = await proxy_factory(max_body_size=MiB)
    big = tmp_path / "too-big.bin"
    big.write_bytes(os.urandom(2 * MiB))
    url = f"{proxy.url}/v4.0/words/storage/file/curl/too-big.bin"
    result = await run(["curl", "-sS", "-v", "-T", str(big), url], cwd=tmp_path)
    assert result.returncode == 0, result.explain()
    assert re.search(r"(?im)^> Expect: 100-continue", result.stderr), result.explain()
    assert re.search(r"(?m)^< HTTP/1\.1 413", result.stderr), result.explain()
    assert not re.search(r"(?m)^< HTTP/1\.1 100", result.stderr), result.explain()
    assert (await sandbox.stats())["api_requests"] == 0
