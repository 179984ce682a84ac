"""The official Words Python SDK (``aspose-words-cloud``) through the proxy, into the sandbox.

The SDK is given the proxy as its base URL and made-up credentials: it fetches its token from
the proxy's local token endpoint and never learns the real one. The SDK is synchronous
(urllib3), so its calls run in a thread while the proxy and the sandbox serve on this loop.
A missing SDK is a failure, not a skip: it is a test dependency.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from asposewordscloud import WordsApi
from asposewordscloud.models.requests import (
    DeleteFileRequest,
    DownloadFileRequest,
    GetFilesListRequest,
    UploadFileRequest,
)
from asposewordscloud.rest import ApiException
from pydantic import SecretStr

from tests.conftest import RunningSandbox
from tests.integration.conftest import LogCapture, ProxyFactory, RunningProxy

# Not the sandbox's credentials: with local_token_endpoint on, any pair works.
ANY_ID = "my-laptop"
ANY_SECRET = "not-a-real-secret"


def words_api(proxy: RunningProxy, client_id: str = ANY_ID, secret: str = ANY_SECRET) -> WordsApi:
    return WordsApi(client_id=client_id, client_secret=secret, base_url=proxy.url, timeout=30)


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "report.docx"
    path.write_bytes(b"PK\x03\x04 not really a docx " + bytes(range(256)) * 64)
    return path


async def upload(api: WordsApi, document: Path, remote: str) -> Any:
    def call() -> Any:  # the SDK reads .name from a file object opened in binary mode
        with document.open("rb") as handle:
            return api.upload_file(UploadFileRequest(handle, remote))

    return await asyncio.to_thread(call)


async def names_in(api: WordsApi, folder: str) -> list[str]:
    listing = await asyncio.to_thread(api.get_files_list, GetFilesListRequest(folder))
    return [entry.name for entry in listing.value]


def sdk_token_requests(logs: LogCapture) -> int:
    """How many token requests reached the proxy (the SDK's own fetches)."""
    return sum(
        1
        for line in map(json.loads, logs.events("request"))
        if line.get("logger") == "proxy.access_log" and line["path"] == "/v4.0/words/connect/token"
    )


async def test_python_sdk_round_trip_through_the_proxy(
    proxy: RunningProxy, sandbox: RunningSandbox, document: Path, logs: LogCapture
) -> None:
    api = words_api(proxy)

    result = await upload(api, document, "sdk-python/report.docx")
    assert result.uploaded == ["report.docx"]
    assert result.errors == []
    assert (sandbox.data_dir / "First Storage" / "sdk-python" / "report.docx").read_bytes() == (
        document.read_bytes()
    )

    listing = await asyncio.to_thread(api.get_files_list, GetFilesListRequest("sdk-python"))
    assert [entry.name for entry in listing.value] == ["report.docx"]
    assert listing.value[0].size == document.stat().st_size
    assert listing.value[0].path == "/sdk-python/report.docx"

    downloaded = await asyncio.to_thread(
        api.download_file, DownloadFileRequest("sdk-python/report.docx")
    )
    assert downloaded == document.read_bytes()

    await asyncio.to_thread(api.delete_file, DeleteFileRequest("sdk-python/report.docx"))
    assert await names_in(api, "sdk-python") == []

    stats = await sandbox.stats()
    assert stats["token_requests"] == 1  # only the proxy's own fetch reached upstream
    assert stats["unauthorized_sent"] == 0
    assert sdk_token_requests(logs) == 1  # the SDK fetched its placeholder once, locally


async def test_upstream_token_revoked_halfway_is_invisible_to_the_sdk(
    proxy: RunningProxy, sandbox: RunningSandbox, document: Path, logs: LogCapture
) -> None:
    api = words_api(proxy)
    await upload(api, document, "revoked/a.docx")

    await sandbox.control("revoke")  # the proxy's upstream token is now refused

    assert await names_in(api, "revoked") == ["a.docx"]  # the next call just works
    downloaded = await asyncio.to_thread(api.download_file, DownloadFileRequest("revoked/a.docx"))
    assert downloaded == document.read_bytes()

    stats = await sandbox.stats()
    assert stats["revoked_token_requests"] == 1  # the proxy met the 401 ...
    assert stats["token_requests"] == 2  # ... renewed its token once and replayed
    assert sdk_token_requests(logs) == 1  # the SDK never saw a 401, so never re-fetched


async def test_sdk_sees_upstream_errors_in_the_shape_it_parses(proxy: RunningProxy) -> None:
    api = words_api(proxy)
    with pytest.raises(ApiException) as caught:
        await asyncio.to_thread(api.download_file, DownloadFileRequest("missing/none.docx"))
    assert caught.value.status == 404
    assert caught.value.body.error.code == "NotFound"


@pytest.mark.parametrize(
    ("name", "secret"),
    [("alice", "alice-secret-0123456"), ("bob", "b0b+s3cret/x=0123456")],
    ids=["plain-secret", "secret-with-a-plus"],
)
async def test_sdk_with_a_local_client(
    proxy_factory: ProxyFactory, document: Path, name: str, secret: str
) -> None:
    """The SDK sends ``client_secret=`` + the secret unencoded, so ``+`` must not become a
    space on the proxy's side (generated secrets often contain ``+``, base64's alphabet)."""
    proxy = await proxy_factory(local_clients={name: SecretStr(secret)})
    api = words_api(proxy, name, secret)
    await upload(api, document, f"{name}/report.docx")
    assert await names_in(api, name) == ["report.docx"]


async def test_sdk_with_unknown_local_client_is_refused(
    proxy_factory: ProxyFactory, sandbox: RunningSandbox
) -> None:
    """The refusal is OAuth's 400 ``{"error": "invalid_client"}`` (the issue asks for that
    shape); the Words SDK cannot parse it and raises ``KeyError('RequestId')``. Either way
    nothing reaches the sandbox's storage."""
    proxy = await proxy_factory(local_clients={"alice": SecretStr("alice-secret-0123456")})
    api = words_api(proxy, "mallory", "guess")
    before = await sandbox.stats()
    with pytest.raises((ApiException, KeyError)):
        await asyncio.to_thread(api.get_files_list, GetFilesListRequest(""))
    assert (await sandbox.stats())["api_requests"] == before["api_requests"]
