"""The official Words Python SDK pointed straight at the sandbox, proving the shapes it parses.

The SDK is synchronous (urllib3), so its calls run in a thread while the sandbox serves.
"""

from __future__ import annotations

import asyncio
import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

asposewordscloud = pytest.importorskip("asposewordscloud")
from asposewordscloud import WordsApi  # noqa: E402
from asposewordscloud.models.requests import (  # noqa: E402
    DeleteFileRequest,
    DownloadFileRequest,
    GetFilesListRequest,
    UploadFileRequest,
)
from asposewordscloud.rest import ApiException  # noqa: E402

if TYPE_CHECKING:
    from conftest import RunningSandbox


def words_api(sandbox: RunningSandbox) -> WordsApi:
    return WordsApi(
        client_id=sandbox.config.client_id,
        client_secret=sandbox.config.client_secret,
        base_url=sandbox.url,
        timeout=30,
    )


@pytest.fixture
def document(tmp_path: Path) -> Path:
    path = tmp_path / "report.docx"
    path.write_bytes(b"PK\x03\x04 not really a docx " + bytes(range(256)) * 40)
    return path


async def upload(api: WordsApi, document: Path, remote: str, storage: str | None = None):
    def call():  # the SDK reads .name from a file opened in binary mode
        with document.open("rb") as handle:
            return api.upload_file(UploadFileRequest(handle, remote, storage_name=storage))

    return await asyncio.to_thread(call)


async def test_sdk_upload_list_download_delete(sandbox: RunningSandbox, document: Path) -> None:
    api = words_api(sandbox)

    result = await upload(api, document, "sdk/report.docx")
    assert result.uploaded == ["report.docx"]
    assert result.errors == []

    listing = await asyncio.to_thread(api.get_files_list, GetFilesListRequest("sdk"))
    assert [f.name for f in listing.value] == ["report.docx"]
    entry = listing.value[0]
    assert entry.is_folder is False
    assert entry.size == document.stat().st_size
    assert entry.path == "/sdk/report.docx"
    assert isinstance(entry.modified_date, datetime.datetime)
    assert entry.modified_date.tzinfo is not None

    downloaded = await asyncio.to_thread(api.download_file, DownloadFileRequest("sdk/report.docx"))
    assert downloaded == document.read_bytes()

    await asyncio.to_thread(api.delete_file, DeleteFileRequest("sdk/report.docx"))
    listing = await asyncio.to_thread(api.get_files_list, GetFilesListRequest("sdk"))
    assert listing.value == []
    stats = await sandbox.stats()
    assert stats["token_requests"] == 1  # one token, reused for every call
    assert stats["unauthorized_sent"] == 0


async def test_sdk_respects_storage_name(sandbox: RunningSandbox, document: Path) -> None:
    api = words_api(sandbox)
    await upload(api, document, "only-here.docx", storage="Other")
    other = await asyncio.to_thread(
        api.get_files_list, GetFilesListRequest("", storage_name="Other")
    )
    default = await asyncio.to_thread(api.get_files_list, GetFilesListRequest(""))
    assert [f.name for f in other.value] == ["only-here.docx"]
    assert default.value == []


async def test_sdk_parses_the_words_error_body(sandbox: RunningSandbox) -> None:
    api = words_api(sandbox)
    with pytest.raises(ApiException) as caught:
        await asyncio.to_thread(api.download_file, DownloadFileRequest("missing.docx"))
    assert caught.value.status == 404
    assert caught.value.body.error.code == "NotFound"
    assert caught.value.body.request_id


async def test_sdk_renews_its_token_after_revocation(
    sandbox: RunningSandbox, document: Path
) -> None:
    api = words_api(sandbox)
    await upload(api, document, "a.docx")
    await sandbox.control("revoke")
    listing = await asyncio.to_thread(api.get_files_list, GetFilesListRequest(""))
    assert [f.name for f in listing.value] == ["a.docx"]
    stats = await sandbox.stats()
    assert stats["token_requests"] == 2
    assert stats["revoked_token_requests"] == 1
    assert stats["unauthorized_sent"] == 1


async def test_sdk_chokes_on_the_oauth_error_of_the_token_endpoint(
    sandbox: RunningSandbox,
) -> None:
    """Pins a trap: token errors come in OAuth's shape (``{"error": "invalid_client"}``) and the
    Words SDK, which reads ``RequestId`` from every error body, raises ``KeyError`` on them.
    A proxy in front must therefore answer token failures in the Words error shape."""
    api = WordsApi(client_id="demo", client_secret="wrong", base_url=sandbox.url)
    with pytest.raises(KeyError, match="RequestId"):
        await asyncio.to_thread(api.get_files_list, GetFilesListRequest(""))
    stats = await sandbox.stats()
    assert stats["token_requests"] == 1
    assert stats["api_requests"] == 0
