"""The Postman collection in ``examples/postman/``, run by newman through the proxy.

The collection carries no auth at all: run against ``aspose-proxy demo`` every check passes;
run straight against the sandbox (no proxy to add the token) it fails, which proves the
proxy did the authenticating. newman comes from ``tests/clients/node`` (npm); missing, it is
installed, and if that fails the test fails, never skips.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.clients.harness import (
    NODE_BIN,
    Completed,
    demo_process,
    ensure_node_modules,
    run,
)
from tests.conftest import RunningSandbox
from tests.integration.conftest import RunningProxy

# a cold `npm install` may run first (when node_modules is missing)
pytestmark = pytest.mark.timeout(600)

ROOT = Path(__file__).resolve().parents[2]
COLLECTION = ROOT / "examples" / "postman" / "aspose-proxy.postman_collection.json"
SCHEMA_V21 = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
STEPS = [
    "Upload a file",
    "List the folder",
    "Download the file",
    "Delete the file",
    "List the folder again",
]


def load_collection() -> dict[str, Any]:
    collection: dict[str, Any] = json.loads(COLLECTION.read_text(encoding="utf-8"))
    return collection


def walk(node: Any) -> list[Any]:
    """Every dict and list inside ``node``, depth first."""
    found = [node]
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        found.extend(walk(child))
    return found


async def newman(base_url: str, workdir: Path) -> tuple[Completed, dict[str, Any]]:
    await ensure_node_modules()
    report = workdir / "newman-report.json"
    result = await run(
        [
            str(NODE_BIN / "newman"),
            "run",
            str(COLLECTION),
            "--env-var",
            f"baseUrl={base_url}",
            "--reporters",
            "cli,json",
            "--reporter-json-export",
            str(report),
            "--color",
            "off",
            "--timeout-request",
            "30000",
        ],
        cwd=workdir,
        timeout=180,
    )
    assert report.exists(), result.explain()
    summary: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))["run"]
    return result, summary


def test_collection_is_v21_with_a_base_url_variable_and_no_auth() -> None:
    collection = load_collection()
    assert collection["info"]["schema"] == SCHEMA_V21
    variables = {v["key"]: v["value"] for v in collection["variable"]}
    assert variables["baseUrl"] == "http://localhost:8080"
    assert [item["name"] for item in collection["item"]] == STEPS

    for node in walk(collection):
        if isinstance(node, dict):
            assert "auth" not in node, f"auth set in {node.get('name', node)}"
    for item in collection["item"]:
        request = item["request"]
        assert request["url"]["raw"].startswith("{{baseUrl}}/v4.0/words/storage/")
        header_names = {h["key"].lower() for h in request["header"]}
        assert "authorization" not in header_names
        scripts = [e for e in item["event"] if e["listen"] == "test"]
        assert scripts and "pm.test(" in "\n".join(scripts[0]["script"]["exec"]), item["name"]

    upload = collection["item"][0]["request"]
    assert upload["method"] == "PUT"
    assert upload["body"]["mode"] == "raw"
    assert [i["request"]["method"] for i in collection["item"]] == [
        "PUT",
        "GET",
        "GET",
        "DELETE",
        "GET",
    ]


async def test_newman_runs_the_collection_against_the_demo(tmp_path: Path) -> None:
    async with demo_process(tmp_path) as demo:
        result, summary = await newman(demo.proxy_url, tmp_path)
    assert result.returncode == 0, result.explain()
    stats = summary["stats"]
    assert stats["requests"] == {"total": 5, "pending": 0, "failed": 0}, result.explain()
    assert stats["assertions"]["failed"] == 0, result.explain()
    assert stats["assertions"]["total"] == 9, result.explain()  # every pm.test ran
    assert summary["failures"] == [], result.explain()


async def test_newman_through_the_proxy_fixture(
    proxy: RunningProxy, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    result, summary = await newman(proxy.url, tmp_path)
    assert result.returncode == 0, result.explain()
    assert summary["stats"]["assertions"] == {"total": 9, "pending": 0, "failed": 0}
    stats = await sandbox.stats()
    assert stats["api_requests"] == 5
    assert stats["unauthorized_sent"] == 0
    assert stats["token_requests"] == 1  # the proxy's one fetch; Postman fetched none


async def test_collection_fails_without_the_proxy(sandbox: RunningSandbox, tmp_path: Path) -> None:
    """Straight at the sandbox the requests carry no token, so newman must report failures:
    the checks are real and the collection holds no credentials of its own."""
    result, summary = await newman(sandbox.url, tmp_path)
    assert result.returncode != 0, result.explain()
    assert summary["stats"]["assertions"]["failed"] > 0
    assert (await sandbox.stats())["unauthorized_sent"] == 5
