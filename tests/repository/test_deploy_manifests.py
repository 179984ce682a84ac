"""deploy/kubernetes: valid against the Kubernetes schemas (offline), and every env var and
argument of the proxy's containers is one the proxy knows, with a value it accepts."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import psutil
import pytest
import redis as redis_lib
import yaml

from proxy.access import AccessRules
from proxy.cli import COMMANDS, build_parser
from proxy.errors import HostNotAllowed
from proxy.metrics import Metrics
from proxy.settings import CONFIG_ENV_VAR, ENV_PREFIX, Settings, load_settings
from tests.redis_server import dies_with_this_process

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
PROXY_IMAGE = "aspose-cloud-proxy"
KNOWN_ENV = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields} | {CONFIG_ENV_VAR}


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((path.name, doc))
    return found


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{name}:{doc['metadata']['name']}", doc["spec"]["template"]["spec"])
        for name, doc in documents()
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
    ]


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers and the init containers (a native sidecar is one)."""
    return [*spec.get("initContainers", []), *spec["containers"]]


def proxy_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, pod spec, container) for every container running the proxy image."""
    return [
        (f"{where}/{c['name']}", spec, c)
        for where, spec in pod_specs()
        for c in all_containers(spec)
        if c["image"].split(":")[0].endswith(PROXY_IMAGE)
    ]


def secret_data(name: str, key: str) -> str:
    for _, doc in documents():
        if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
            data: dict[str, str] = doc.get("stringData", {})
            assert key in data, f"Secret {name} has no key {key}"
            return data[key]
    raise AssertionError(f"no Secret named {name} in deploy/kubernetes")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_there_are_a_sidecar_a_shared_service_and_a_secret() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in documents()}
    assert ("Secret", "aspose-proxy-credentials") in kinds
    assert ("Deployment", "my-app") in kinds  # the sidecar example
    assert ("Deployment", "aspose-proxy") in kinds and ("Service", "aspose-proxy") in kinds


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_kubernetes_schemas(path: Path) -> None:
    version = kubernetes_validate.latest_version()
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            # strict: an unknown or misspelt field is an error, not silently ignored.
            kubernetes_validate.validate(doc, version, strict=True)


def test_every_pod_turns_service_links_off() -> None:
    specs = pod_specs()
    assert specs
    for where, spec in specs:
        assert spec.get("enableServiceLinks") is False, where


def test_every_container_is_locked_down() -> None:
    for where, spec in pod_specs():
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, where
        for container in all_containers(spec):
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, (where, container["name"])
            assert context.get("readOnlyRootFilesystem") is True, (where, container["name"])
            assert context.get("capabilities", {}).get("drop") == ["ALL"], where
            assert {"requests", "limits"} <= set(container.get("resources", {})), where


def test_proxy_containers_run_as_10001_with_probes_and_writable_dirs_on_empty_dirs() -> None:
    containers = proxy_containers()
    assert len(containers) == 2
    for where, spec, container in containers:
        uid = container["securityContext"].get(
            "runAsUser", spec["securityContext"].get("runAsUser")
        )
        assert uid == 10001, where
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", where
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", where
        env = {e["name"]: e for e in container["env"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
        spool = env["ASPOSE_PROXY_SPOOL_DIR"]["value"]
        assert "emptyDir" in mounts[spool], where
        assert "emptyDir" in mounts["/tmp"], where  # the workers' run directory
        store = env["ASPOSE_PROXY_USAGE_STORE"]["value"]
        if store.startswith("sqlite://"):
            usage_db = Path(store.removeprefix("sqlite://"))
            assert "emptyDir" in mounts[str(usage_db.parent)], where
        # The secret is a file from the Secret volume, never an env value.
        assert "ASPOSE_PROXY_CLIENT_SECRET" not in env, where
        secret_file = Path(env["ASPOSE_PROXY_CLIENT_SECRET_FILE"]["value"])
        secret_volume = mounts[str(secret_file.parent)]["secret"]
        assert secret_volume["secretName"] == "aspose-proxy-credentials"
        assert {"key": "client-secret", "path": secret_file.name} in secret_volume["items"]


def test_proxy_env_and_args_are_settings_and_flags_the_proxy_knows(tmp_path: Path) -> None:
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("a-secret-for-the-test\n")
    for where, _, container in proxy_containers():
        env: dict[str, str] = {}
        for item in container["env"]:
            name = item["name"]
            assert name in KNOWN_ENV, f"{where}: {name} is not a setting"
            if "value" in item:
                env[name] = item["value"]
            else:
                ref = item["valueFrom"]["secretKeyRef"]
                env[name] = secret_data(ref["name"], ref["key"])
        env["ASPOSE_PROXY_CLIENT_SECRET_FILE"] = str(secret_file)
        env["ASPOSE_PROXY_SPOOL_DIR"] = str(tmp_path)
        if env["ASPOSE_PROXY_USAGE_STORE"].startswith("sqlite://"):
            env["ASPOSE_PROXY_USAGE_STORE"] = "off"  # a redis:// URL is checked as it is
        args = container["args"]
        assert args[0] in COMMANDS, where
        parsed = build_parser().parse_args(args)  # an unknown flag exits here
        cli = {name: getattr(parsed, name, None) for name in Settings.model_fields}
        with environment(env):
            settings = load_settings(cli).settings  # every value is accepted
        assert settings.port == 8080 and settings.host == "0.0.0.0", where


def test_shared_service_requires_access_keys_from_a_secret_and_limits_addresses() -> None:
    [(where, _, container)] = [c for c in proxy_containers() if "shared-service" in c[0]]
    env = {e["name"]: e for e in container["env"]}
    assert env["ASPOSE_PROXY_REQUIRE_CLIENT_AUTH"]["value"] == "true"
    ref = env["ASPOSE_PROXY_ACCESS_KEYS"]["valueFrom"]["secretKeyRef"]
    assert yaml.safe_load(secret_data(ref["name"], ref["key"]))  # a JSON map name -> key
    assert env["ASPOSE_PROXY_ALLOW_FROM"]["value"] != '["0.0.0.0/0"]', where
    assert "--workers" in container["args"]


def test_shared_service_answers_the_name_of_its_service_and_refuses_others() -> None:
    # Issue 16: the Host check is on for every listener; callers use the Service's name.
    [(where, _, container)] = [c for c in proxy_containers() if "shared-service" in c[0]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    services = [d["metadata"]["name"] for _, d in documents() if d["kind"] == "Service"]
    with environment({"ASPOSE_PROXY_ALLOW_HOSTS": env["ASPOSE_PROXY_ALLOW_HOSTS"]}):
        rules = AccessRules.from_settings(load_settings().settings)
    rules.check_host_header("aspose-proxy:8080")
    assert "aspose-proxy" in services, where
    with pytest.raises(HostNotAllowed):
        rules.check_host_header("evil.example:8080")


def test_sidecar_callers_use_localhost_which_is_always_answered() -> None:
    [(where, _, container)] = [c for c in proxy_containers() if "sidecar" in c[0]]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert "ASPOSE_PROXY_ALLOW_HOSTS" not in env, where
    AccessRules.from_settings(Settings()).check_host_header("localhost:8080")


def test_every_shared_service_replica_uses_the_redis_of_the_manifest() -> None:
    """Issue 17: 2 replicas x 2 workers share one token schedule, rate limits and budgets."""
    [(where, _, container)] = [c for c in proxy_containers() if "shared-service" in c[0]]
    env = {e["name"]: e for e in container["env"]}
    store = urlsplit(env["ASPOSE_PROXY_USAGE_STORE"]["value"])
    assert store.scheme == "redis" and store.password is None, where
    services = {
        doc["metadata"]["name"]: doc
        for name, doc in documents()
        if name == "shared-service.yaml" and doc["kind"] == "Service"
    }
    service = services[str(store.hostname)]
    assert service["spec"]["ports"][0]["port"] == (store.port or 6379)
    [redis_set] = [
        doc
        for _, doc in documents()
        if doc["kind"] == "StatefulSet"
        and doc["spec"]["template"]["metadata"]["labels"] == service["spec"]["selector"]
    ]
    # The proxy and Redis read the password from the same Secret key.
    password_ref = env["ASPOSE_PROXY_USAGE_STORE_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret_data(password_ref["name"], password_ref["key"])
    [redis] = redis_set["spec"]["template"]["spec"]["containers"]
    redis_env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in redis["env"]}
    assert redis_env["REDIS_PASSWORD"] == password_ref
    script = " ".join(redis["args"])
    assert "requirepass" in script and "$REDIS_PASSWORD" in script
    assert "--maxmemory-policy noeviction" in script  # an evicted counter refills a budget
    assert "--appendonly yes" in script
    [claim] = redis_set["spec"]["volumeClaimTemplates"]
    [mount] = redis["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"] and "--dir " + mount["mountPath"] in script


def test_redis_server_takes_the_manifests_configuration(tmp_path: Path) -> None:
    """The Redis container's start script, run with the real redis-server: a password is
    required, no eviction, AOF on (the port moved to a free one, the data dir to tmp)."""
    [redis_set] = [doc for _, doc in documents() if doc["kind"] == "StatefulSet"]
    [redis] = redis_set["spec"]["template"]["spec"]["containers"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moved = f"--dir {tmp_path} --port {port} --bind 127.0.0.1"
    script = redis["args"][0].replace("--dir /data", moved)
    env = {**os.environ, "REDIS_PASSWORD": "a-password-for-the-test"}
    process = subprocess.Popen(
        [*redis["command"], script],
        env=env,
        stdout=subprocess.DEVNULL,
        preexec_fn=dies_with_this_process,  # the signal survives the script's exec
    )
    try:
        client = redis_lib.Redis(port=port, password="a-password-for-the-test")
        for _ in range(100):
            with contextlib.suppress(redis_lib.ConnectionError):
                client.ping()
                break
            time.sleep(0.05)
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        # exec: the shell is replaced (PID 1 in the pod), so SIGTERM reaches Redis itself.
        assert psutil.Process(process.pid).name() == "redis-server"
        assert "a-password-for-the-test" not in " ".join(psutil.Process(process.pid).cmdline())
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=port).ping()
        client.close()
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- deploy/prometheus/alerts.yml ---------------------------------------------------------------

ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
}


def exported_names() -> set[str]:
    """Every sample name the proxy's /metrics can show, from its own instruments."""
    metrics = Metrics()
    metrics.watch_calls(dict)
    names = set()
    for family in metrics.registry.collect():
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"}
    found = []
    for group in data["groups"]:
        assert group["name"] and group["rules"]
        found.extend(group["rules"])
    return found


def test_alert_rules_are_well_formed() -> None:
    for rule in rules():
        assert ("alert" in rule) != ("record" in rule), rule
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning", "info")
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alert_expressions_use_only_metrics_the_proxy_exports() -> None:
    exported = exported_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        for name in re.findall(r"\baspose_proxy[a-z0-9_:]*", rule["expr"]):
            assert name in exported | recorded, f"{rule.get('alert') or rule['record']}: {name}"


def test_the_alerts_cover_what_operators_need() -> None:
    text = " ".join(rule["expr"] for rule in rules())
    for needed in (
        "aspose_proxy_requests_total",  # request rate and error ratio
        "aspose_proxy_upstream_latency_seconds_bucket",  # p99
        "aspose_proxy_token_fetches_total",  # token refresh failures
        "aspose_proxy_token_seconds_to_expiry",
        "aspose_proxy_replays_total",
        'aspose_proxy_errors_total{status=~"401|403|421|429"}',  # rejected clients by code
    ):
        assert needed in text, needed


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
@pytest.mark.parametrize(
    "command",
    [
        ["check", "rules", str(ALERTS)],
        # alerts_test.yml: the alerts fire on two workers' series, aggregated over pid.
        ["test", "rules", str(ALERTS.with_name("alerts_test.yml"))],
    ],
    ids=["check", "unit-tests"],
)
def test_promtool_accepts_the_rules(command: list[str]) -> None:
    done = subprocess.run(
        ["promtool", *command], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_operations_guide_documents_every_metric_family() -> None:
    readme = (ROOT / "docs" / "operations.md").read_text()
    for name in sorted(exported_names()):
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert f"`{family}`" in readme, family


def test_the_sidecar_starts_before_the_app_and_stops_after_it() -> None:
    [(where, spec, container)] = [c for c in proxy_containers() if "sidecar" in c[0]]
    assert container in spec.get("initContainers", []), where  # a native sidecar
    assert container["restartPolicy"] == "Always"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # The app reaches it on loopback; no Service in front of it. The image's own allow_from
    # admits the private ranges (every other pod), so the sidecar narrows it to loopback.
    env = {e["name"]: e.get("value") for e in container["env"]}
    allowed = load_settings_from_env({"ASPOSE_PROXY_ALLOW_FROM": env["ASPOSE_PROXY_ALLOW_FROM"]})
    assert allowed == {"127.0.0.0/8", "::1/128"}
    app = spec["containers"][0]
    assert "http://127.0.0.1:8080/" in " ".join(app["args"])


def load_settings_from_env(values: dict[str, str]) -> set[str]:
    """allow_from as the proxy reads it from these environment variables."""
    with environment(values):
        return {str(net) for net in load_settings().settings.allow_from}
