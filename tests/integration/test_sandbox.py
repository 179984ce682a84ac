"""The offline Aspose sandbox over real HTTP on loopback: tokens, storage, test endpoints,
fault switches and counters, each checked by what a client can observe."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import jwt
import psutil
import pytest
import structlog
from yarl import URL

from proxy.sandbox.diagnostics import GZIP_TEXT, credential_fingerprint, pattern_bytes

if TYPE_CHECKING:
    from conftest import RunningSandbox, SandboxFactory

TOKEN_PATHS = [
    "/connect/token",
    "/v4.0/words/connect/token",
    "/v3.0/cells/connect/token",
    "/v4.0/cells/connect/token",
    "/oauth2/token",
]
STORAGE = "/v4.0/words/storage"
FORM = "application/x-www-form-urlencoded"


def assert_words_error(body: Any, code: str | None = None) -> None:
    """The shape the Words SDK parses: RequestId, Error{Code, Message, Description, DateTime}."""
    assert set(body) >= {"RequestId", "Error"}
    assert isinstance(body["RequestId"], str) and body["RequestId"]
    assert set(body["Error"]) >= {"Code", "Message", "Description", "DateTime"}
    datetime.strptime(body["Error"]["DateTime"], "%Y-%m-%dT%H:%M:%SZ")
    if code is not None:
        assert body["Error"]["Code"] == code


async def post_form(sandbox: RunningSandbox, path: str, body: str) -> tuple[int, Any]:
    headers = {"Content-Type": FORM, "Accept": "application/json"}
    async with sandbox.session.post(sandbox.url + path, data=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def creds(
    client_id: str = "demo",
    secret: str = "demo-secret",
    grant: str = "client_credentials",
) -> str:
    return f"grant_type={grant}&client_id={client_id}&client_secret={secret}"


async def api(
    sandbox: RunningSandbox, method: str, path: str, *, token: str | None = None, **kwargs: Any
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    """One API call with a fresh token (or the given one); returns status, body, response."""
    token = token if token is not None else await sandbox.token()
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    url = URL(sandbox.url + path, encoded=True)
    async with sandbox.session.request(method, url, headers=headers, **kwargs) as resp:
        return resp.status, await resp.read(), resp


# --- token endpoints -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", TOKEN_PATHS)
async def test_every_token_path_issues_an_hs256_jwt(sandbox: RunningSandbox, path: str) -> None:
    status, body = await post_form(sandbox, path, creds())
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 86400
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert claims["client_id"] == "demo"
    assert claims["jti"]
    assert 86400 <= claims["exp"] - claims["iat"] <= 86401


async def test_each_token_is_unique(sandbox: RunningSandbox) -> None:
    first, second = await sandbox.token(), await sandbox.token()
    assert first != second


async def test_unencoded_body_from_words_sdk_is_accepted(sandbox_factory: SandboxFactory) -> None:
    """The Words Python SDK concatenates the secret without URL-encoding it."""
    sandbox = await sandbox_factory(client_secret="a+b/c=d%41")
    status, body = await post_form(sandbox, "/v4.0/words/connect/token", creds(secret="a+b/c=d%41"))
    assert status == 200, body
    encoded = "grant_type=client_credentials&client_id=demo&client_secret=a%2Bb%2Fc%3Dd%2541"
    status, body = await post_form(sandbox, "/connect/token", encoded)
    assert status == 200, body


async def test_http_basic_client_credentials_are_accepted(sandbox: RunningSandbox) -> None:
    auth = "Basic " + base64.b64encode(b"demo:demo-secret").decode()
    async with sandbox.session.post(
        sandbox.url + "/connect/token",
        data="grant_type=client_credentials",
        headers={"Authorization": auth, "Content-Type": FORM},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["token_type"] == "Bearer"


@pytest.mark.parametrize(
    "body",
    [creds(secret="wrong"), creds(client_id="someone-else"), "grant_type=client_credentials"],
)
async def test_bad_credentials_get_invalid_client(sandbox: RunningSandbox, body: str) -> None:
    assert await post_form(sandbox, "/connect/token", body) == (400, {"error": "invalid_client"})


async def test_wrong_grant_type_gets_unsupported_grant_type(sandbox: RunningSandbox) -> None:
    status, body = await post_form(sandbox, "/connect/token", creds(grant="password"))
    assert (status, body) == (400, {"error": "unsupported_grant_type"})


async def test_missing_grant_type_gets_invalid_request(sandbox: RunningSandbox) -> None:
    status, body = await post_form(sandbox, "/connect/token", "client_id=demo")
    assert (status, body) == (400, {"error": "invalid_request"})


async def test_configured_token_lifetime_is_announced(sandbox_factory: SandboxFactory) -> None:
    sandbox = await sandbox_factory(token_lifetime=120)
    status, body = await post_form(sandbox, "/connect/token", creds())
    assert status == 200
    assert body["expires_in"] == 120


# --- bearer tokens on API paths ----------------------------------------------------------------


async def test_api_without_token_gets_401_in_words_shape(sandbox: RunningSandbox) -> None:
    async with sandbox.session.get(sandbox.url + f"{STORAGE}/disc") as resp:
        assert resp.status == 401
        assert_words_error(await resp.json(), "Unauthorized")
    assert (await sandbox.stats())["unauthorized_sent"] == 1


@pytest.mark.parametrize("token", ["garbage", "a.b.c", ""])
async def test_api_with_bad_token_gets_401(sandbox: RunningSandbox, token: str) -> None:
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/disc", token=token)
    assert status == 401
    assert_words_error(json.loads(body), "Unauthorized")


async def test_token_from_another_sandbox_is_rejected(sandbox_factory: SandboxFactory) -> None:
    first, second = await sandbox_factory(), await sandbox_factory()
    status, _, _ = await api(first, "GET", f"{STORAGE}/disc", token=await second.token())
    assert status == 401


async def test_unknown_api_path_gets_404_in_words_shape(sandbox: RunningSandbox) -> None:
    status, body, _ = await api(sandbox, "GET", "/v4.0/words/no/such/thing")
    assert status == 404
    assert_words_error(json.loads(body), "NotFound")


async def test_unknown_api_path_without_token_gets_401_not_404(sandbox: RunningSandbox) -> None:
    async with sandbox.session.get(sandbox.url + "/v4.0/words/no/such/thing") as resp:
        assert resp.status == 401


async def test_wrong_method_gets_405_in_words_shape(sandbox: RunningSandbox) -> None:
    status, body, resp = await api(sandbox, "POST", f"{STORAGE}/disc")
    assert status == 405
    assert "GET" in resp.headers["Allow"]
    assert_words_error(json.loads(body))


async def test_revoke_invalidates_tokens_issued_before(sandbox: RunningSandbox) -> None:
    old = await sandbox.token()
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=old))[0] == 200
    await sandbox.control("revoke")
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/disc", token=old)
    assert status == 401
    assert_words_error(json.loads(body), "Unauthorized")
    assert (await api(sandbox, "GET", f"{STORAGE}/disc"))[0] == 200  # a new token works
    stats = await sandbox.stats()
    assert stats["revoked_token_requests"] == 1
    assert stats["expired_token_requests"] == 0


async def test_token_expires_after_its_lifetime(sandbox: RunningSandbox) -> None:
    await sandbox.control("token-lifetime", {"seconds": 1})
    status, body = await post_form(sandbox, "/connect/token", creds())
    assert (status, body["expires_in"]) == (200, 1)
    token = body["access_token"]
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=token))[0] == 200
    await asyncio.sleep(2.1)
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=token))[0] == 401
    stats = await sandbox.stats()
    assert stats["expired_token_requests"] == 1
    assert stats["revoked_token_requests"] == 0


async def test_rotate_secret_changes_accepted_secret_but_keeps_tokens(
    sandbox: RunningSandbox,
) -> None:
    before = await sandbox.token()
    await sandbox.control("rotate-secret", {"client_secret": "new-secret"})
    assert (await post_form(sandbox, "/connect/token", creds()))[0] == 400
    assert (await post_form(sandbox, "/connect/token", creds(secret="new-secret")))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=before))[0] == 200
    await sandbox.reset()
    assert (await post_form(sandbox, "/connect/token", creds()))[0] == 200


# --- storage -------------------------------------------------------------------------------------


async def test_raw_upload_then_download_round_trips(sandbox: RunningSandbox) -> None:
    data = b"raw body \x00\xff" * 1000
    status, body, _ = await api(sandbox, "PUT", f"{STORAGE}/file/docs/a.docx", data=data)
    assert status == 200
    assert json.loads(body) == {"Uploaded": ["a.docx"], "Errors": []}
    status, body, resp = await api(sandbox, "GET", f"{STORAGE}/file/docs/a.docx")
    assert status == 200
    assert body == data
    assert resp.headers["Content-Length"] == str(len(data))
    assert (sandbox.data_dir / "First Storage" / "docs" / "a.docx").read_bytes() == data


def multipart(*parts: tuple[str, bytes | str, str | None, str]) -> aiohttp.MultipartWriter:
    """A form-data body from (field name, content, filename or None, content type) parts."""
    writer = aiohttp.MultipartWriter("form-data")
    for name, content, filename, content_type in parts:
        part = writer.append(content, {"Content-Type": content_type})
        extra = {"filename": filename} if filename else {}
        part.set_content_disposition("form-data", name=name, **extra)
    return writer


NOTE = ("note", "a text field before the file", None, "text/plain")


@pytest.mark.parametrize(
    ("field", "filename"),
    [("fileContent", "x.docx"), ("fileContent", None), ("File", "x.pdf"), ("x.pdf", None)],
)
async def test_multipart_upload_stores_the_file_part(
    sandbox: RunningSandbox, field: str, filename: str | None
) -> None:
    body = multipart(NOTE, (field, b"multipart bytes", filename, "application/octet-stream"))
    status, answer, _ = await api(sandbox, "PUT", f"{STORAGE}/file/m/up.bin", data=body)
    assert status == 200, answer
    assert json.loads(answer) == {"Uploaded": ["up.bin"], "Errors": []}
    assert (await api(sandbox, "GET", f"{STORAGE}/file/m/up.bin"))[1] == b"multipart bytes"


async def test_multipart_without_file_part_is_rejected(sandbox: RunningSandbox) -> None:
    body = multipart(NOTE, ("other", "nor here", None, "text/plain"))
    status, _, _ = await api(sandbox, "PUT", f"{STORAGE}/file/m/none.bin", data=body)
    assert status == 400
    _, exists, _ = await api(sandbox, "GET", f"{STORAGE}/exist/m/none.bin")
    assert json.loads(exists) == {"Exists": False, "IsFolder": False}


async def test_upload_overwrites_existing_file(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/o.txt", data=b"first version")
    await api(sandbox, "PUT", f"{STORAGE}/file/o.txt", data=b"second")
    assert (await api(sandbox, "GET", f"{STORAGE}/file/o.txt"))[1] == b"second"


async def test_list_folder_answers_storage_files(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/lst/b.txt", data=b"12345")
    await api(sandbox, "PUT", f"{STORAGE}/folder/lst/a-sub")
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/folder/lst")
    assert status == 200
    value = json.loads(body)["Value"]
    assert [e["Name"] for e in value] == ["a-sub", "b.txt"]
    for item in value:
        assert set(item) == {"Name", "IsFolder", "ModifiedDate", "Size", "Path"}
        modified = datetime.strptime(item["ModifiedDate"], "%Y-%m-%dT%H:%M:%SZ")
        assert abs(modified.replace(tzinfo=UTC).timestamp() - time.time()) < 60
    folder, file = value
    assert (folder["IsFolder"], folder["Size"], folder["Path"]) == (True, 0, "/lst/a-sub")
    assert (file["IsFolder"], file["Size"], file["Path"]) == (False, 5, "/lst/b.txt")


async def test_list_storage_root(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/top.txt", data=b"t")
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/folder/")
    assert status == 200
    assert [e["Name"] for e in json.loads(body)["Value"]] == ["top.txt"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/file/missing.docx"),
        ("DELETE", "/file/missing.docx"),
        ("GET", "/folder/missing"),
        ("DELETE", "/folder/missing"),
        ("PUT", "/file/copy/missing.docx?destPath=x.docx"),
        ("PUT", "/folder/move/missing?destPath=x"),
    ],
)
async def test_missing_objects_get_404_in_words_shape(
    sandbox: RunningSandbox, method: str, path: str
) -> None:
    status, body, _ = await api(sandbox, method, STORAGE + path)
    assert status == 404
    assert_words_error(json.loads(body), "NotFound")


async def test_delete_file_removes_it(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/d.txt", data=b"x")
    assert (await api(sandbox, "DELETE", f"{STORAGE}/file/d.txt"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/file/d.txt"))[0] == 404


async def test_copy_and_move_file(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/src.txt", data=b"payload")
    assert (await api(sandbox, "PUT", f"{STORAGE}/file/copy/src.txt?destPath=c/copy.txt"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/file/src.txt"))[1] == b"payload"
    assert (await api(sandbox, "GET", f"{STORAGE}/file/c/copy.txt"))[1] == b"payload"
    assert (await api(sandbox, "PUT", f"{STORAGE}/file/move/src.txt?destPath=moved.txt"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/file/src.txt"))[0] == 404
    assert (await api(sandbox, "GET", f"{STORAGE}/file/moved.txt"))[1] == b"payload"


async def test_copy_without_dest_path_is_rejected(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/src.txt", data=b"payload")
    status, body, _ = await api(sandbox, "PUT", f"{STORAGE}/file/copy/src.txt")
    assert status == 400
    assert_words_error(json.loads(body), "BadRequest")


async def test_folder_create_copy_move_delete(sandbox: RunningSandbox) -> None:
    assert (await api(sandbox, "PUT", f"{STORAGE}/folder/f1/deep"))[0] == 200
    await api(sandbox, "PUT", f"{STORAGE}/file/f1/deep/x.txt", data=b"x")
    assert (await api(sandbox, "PUT", f"{STORAGE}/folder/copy/f1?destPath=f2"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/file/f2/deep/x.txt"))[1] == b"x"
    assert (await api(sandbox, "PUT", f"{STORAGE}/folder/move/f2?destPath=f3"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/folder/f2"))[0] == 404
    assert (await api(sandbox, "GET", f"{STORAGE}/file/f3/deep/x.txt"))[1] == b"x"
    # copying a folder into itself would never end
    assert (await api(sandbox, "PUT", f"{STORAGE}/folder/copy/f3?destPath=f3/inner"))[0] == 400
    # a non-empty folder goes only with recursive=true
    assert (await api(sandbox, "DELETE", f"{STORAGE}/folder/f3"))[0] == 400
    assert (await api(sandbox, "DELETE", f"{STORAGE}/folder/f3?recursive=true"))[0] == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/folder/f3"))[0] == 404
    await api(sandbox, "PUT", f"{STORAGE}/folder/empty")
    assert (await api(sandbox, "DELETE", f"{STORAGE}/folder/empty"))[0] == 200


async def test_exist_reports_files_and_folders(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/e/f.txt", data=b"x")
    results = {}
    for path in ("e/f.txt", "e", "nothing"):
        status, body, _ = await api(sandbox, "GET", f"{STORAGE}/exist/{path}")
        assert status == 200
        results[path] = json.loads(body)
    assert results == {
        "e/f.txt": {"Exists": True, "IsFolder": False},
        "e": {"Exists": True, "IsFolder": True},
        "nothing": {"Exists": False, "IsFolder": False},
    }


async def test_disc_usage_counts_stored_bytes(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/u1.bin", data=b"a" * 100)
    await api(sandbox, "PUT", f"{STORAGE}/file/sub/u2.bin", data=b"b" * 23)
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/disc")
    usage = json.loads(body)
    assert status == 200
    assert usage["UsedSize"] == 123
    assert usage["TotalSize"] >= usage["UsedSize"]


async def test_storage_name_selects_a_separate_storage(sandbox: RunningSandbox) -> None:
    await api(sandbox, "PUT", f"{STORAGE}/file/s.txt?storageName=Second", data=b"second")
    assert (await api(sandbox, "GET", f"{STORAGE}/file/s.txt"))[0] == 404
    assert (await api(sandbox, "GET", f"{STORAGE}/file/s.txt?storageName=Second"))[1] == b"second"
    assert (sandbox.data_dir / "Second" / "s.txt").read_bytes() == b"second"
    _, body, _ = await api(sandbox, "GET", f"{STORAGE}/folder/?storageName=Second")
    assert [e["Name"] for e in json.loads(body)["Value"]] == ["s.txt"]
    status, _, _ = await api(
        sandbox,
        "PUT",
        f"{STORAGE}/file/copy/s.txt?srcStorageName=Second&destStorageName=First%20Storage"
        "&destPath=from-second.txt",
    )
    assert status == 200
    assert (await api(sandbox, "GET", f"{STORAGE}/file/from-second.txt"))[1] == b"second"


@pytest.mark.parametrize(
    "path",
    [
        "/file/../../outside.txt",
        "/file/a/%2E%2E/%2E%2E/outside.txt",
        "/file/a%2F..%2F..%2Foutside.txt",
        "/file/..%5C..%5Coutside.txt",
        "/folder/..",
        "/file/ok.txt?storageName=..",
        "/file/ok.txt?storageName=a%2F..%2F..",
    ],
)
async def test_path_traversal_is_rejected(sandbox: RunningSandbox, path: str) -> None:
    status, body, _ = await api(sandbox, "PUT", STORAGE + path, data=b"evil")
    assert status == 400
    assert_words_error(json.loads(body), "BadRequest")
    assert not (sandbox.data_dir / "outside.txt").exists()
    assert not (sandbox.data_dir.parent / "outside.txt").exists()


class PeakRss:
    """Samples this process's resident memory in a thread; ``peak`` is the highest seen."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.baseline = self.peak = self.process.memory_info().rss
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_large_upload_and_download_stream_without_buffering(
    sandbox: RunningSandbox,
) -> None:
    """256 MiB through the sandbox and back must never grow this process by that much."""
    size, chunk = 256 * 1024**2, 1024**2
    block = pattern_bytes(chunk)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // chunk):
            yield block

    token = await sandbox.token()
    with PeakRss() as upload_rss:
        status, _, _ = await api(
            sandbox, "PUT", f"{STORAGE}/file/big.bin", data=body(), token=token
        )
    assert status == 200
    assert (sandbox.data_dir / "First Storage" / "big.bin").stat().st_size == size
    digest, received = hashlib.sha256(), 0
    with PeakRss() as download_rss:
        async with sandbox.session.get(
            f"{sandbox.url}{STORAGE}/file/big.bin", headers={"Authorization": f"Bearer {token}"}
        ) as resp:
            assert resp.headers["Content-Length"] == str(size)
            async for piece in resp.content.iter_chunked(chunk):
                digest.update(piece)
                received += len(piece)
    expected = hashlib.sha256()
    for _ in range(size // chunk):
        expected.update(block)
    assert received == size
    assert digest.hexdigest() == expected.hexdigest()
    assert upload_rss.growth < 96 * 1024**2
    assert download_rss.growth < 96 * 1024**2


# --- test endpoints under /v4.0/sandbox ----------------------------------------------------------


async def test_echo_describes_the_request_as_received(sandbox: RunningSandbox) -> None:
    payload = b"0123456789" * 5000

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 4096):
            yield payload[i : i + 4096]

    status, body, _ = await api(
        sandbox,
        "PATCH",
        "/v4.0/sandbox/echo/some%20where/deep?b=2&a=%20x",
        headers={"X-Zulu": "1", "X-Alpha": "2", "X-Zulu-Again": "3"},
        data=chunks(),
    )
    assert status == 200
    echoed = json.loads(body)
    assert echoed["method"] == "PATCH"
    assert echoed["path"] == "/v4.0/sandbox/echo/some%20where/deep"
    assert echoed["query"] == "b=2&a=%20x"
    names = [name for name, _ in echoed["headers"]]
    assert names.index("X-Zulu") < names.index("X-Alpha") < names.index("X-Zulu-Again")
    assert ["Transfer-Encoding", "chunked"] in echoed["headers"]
    assert echoed["body_length"] == len(payload)
    assert echoed["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_echo_never_returns_the_authorization_value(sandbox: RunningSandbox) -> None:
    # Issue 16: a page that can read the echo (the sandbox reachable by mistake) gets no token.
    token = await sandbox.token()
    status, body, _ = await api(sandbox, "GET", "/v4.0/sandbox/echo/x", token=token)
    assert status == 200
    assert token.encode() not in body
    [shown] = [v for k, v in json.loads(body)["headers"] if k.lower() == "authorization"]
    assert shown == f"Bearer {credential_fingerprint(token.encode())}"


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil.example:8090"},
        {"Origin": "https://evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_control_switches_get_the_proxys_host_and_origin_rules(
    sandbox: RunningSandbox, headers: dict[str, str]
) -> None:
    before = (await sandbox.stats())["token_requests"]
    url = f"{sandbox.url}/_sandbox/token-fault"
    async with sandbox.session.post(url, json={"status": 500}, headers=headers) as response:
        assert response.status in (403, 421)
        assert (await response.json())["error"] in ("host_not_allowed", "origin_not_allowed")
    assert await sandbox.token()  # no fault was switched on
    assert (await sandbox.stats())["token_requests"] == before + 1


async def test_a_refused_host_is_not_told_to_set_the_proxys_allow_hosts(
    sandbox: RunningSandbox,
) -> None:
    """The sandbox has no allow_hosts and reads no ASPOSE_PROXY_* variable: its 421 must not
    send the user to them."""
    url = f"{sandbox.url}/_sandbox/stats"
    async with sandbox.session.get(url, headers={"Host": "evil.example"}) as response:
        assert response.status == 421
        refusal = await response.json()
    assert refusal["error"] == "host_not_allowed"
    assert "allow_hosts" not in refusal["message"]
    assert "ASPOSE_PROXY" not in refusal["message"]


@pytest.mark.parametrize("size", [0, 1, 255, 256, 70000])
async def test_bytes_sends_n_deterministic_bytes(sandbox: RunningSandbox, size: int) -> None:
    status, body, resp = await api(sandbox, "GET", f"/v4.0/sandbox/bytes?size={size}")
    assert status == 200
    assert resp.headers["Content-Length"] == str(size)
    assert body == (bytes(range(256)) * (size // 256 + 1))[:size]


@pytest.mark.parametrize("query", ["", "?size=-1", "?size=abc"])
async def test_bytes_rejects_bad_size(sandbox: RunningSandbox, query: str) -> None:
    status, body, _ = await api(sandbox, "GET", f"/v4.0/sandbox/bytes{query}")
    assert status == 400
    assert_words_error(json.loads(body), "BadRequest")


async def test_gzip_sends_a_precompressed_body(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw_session,
        raw_session.get(f"{sandbox.url}/v4.0/sandbox/gzip", headers=headers) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.content_type == "text/plain"
        assert gzip.decompress(await resp.read()).decode() == GZIP_TEXT
    assert GZIP_TEXT == "hello from the sandbox\n" * 100
    async with sandbox.session.get(f"{sandbox.url}/v4.0/sandbox/gzip", headers=headers) as resp:
        assert await resp.text() == GZIP_TEXT


async def test_redirect_answers_302_with_location(sandbox: RunningSandbox) -> None:
    target = "http://example.invalid/elsewhere?x=1"
    status, _, resp = await api(
        sandbox,
        "GET",
        "/v4.0/sandbox/redirect?to=http%3A%2F%2Fexample.invalid%2Felsewhere%3Fx%3D1",
        allow_redirects=False,
    )
    assert status == 302
    assert resp.headers["Location"] == target


async def test_delay_holds_back_the_headers(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    started = time.monotonic()
    status, body, _ = await api(sandbox, "GET", "/v4.0/sandbox/delay?seconds=0.6", token=token)
    assert status == 200
    assert time.monotonic() - started >= 0.6
    assert json.loads(body) == {"delayed": 0.6}


async def test_drip_sends_headers_at_once_and_body_slowly(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    started = time.monotonic()
    async with sandbox.session.get(
        f"{sandbox.url}/v4.0/sandbox/drip?seconds=1&size=10",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        headers_after = time.monotonic() - started
        assert resp.headers["Content-Length"] == "10"
        body = await resp.read()
    assert headers_after < 0.5
    assert time.monotonic() - started >= 0.9
    assert body == bytes(range(10))


@pytest.mark.parametrize("code", [200, 201, 302, 404, 418, 500, 503])
async def test_status_answers_the_requested_status(sandbox: RunningSandbox, code: int) -> None:
    status, body, _ = await api(
        sandbox, "GET", f"/v4.0/sandbox/status/{code}", allow_redirects=False
    )
    assert status == code
    parsed = json.loads(body)
    if code >= 400:
        assert_words_error(parsed)
    else:
        assert parsed == {"status": code}


@pytest.mark.parametrize("code", [204, 304])
async def test_status_without_body(sandbox: RunningSandbox, code: int) -> None:
    status, body, _ = await api(sandbox, "GET", f"/v4.0/sandbox/status/{code}")
    assert (status, body) == (code, b"")


async def test_hop_headers_arrive_as_sent(sandbox: RunningSandbox) -> None:
    _, _, resp = await api(sandbox, "GET", "/v4.0/sandbox/hop-headers")
    received = {k.decode().lower(): v.decode() for k, v in resp.raw_headers}
    assert received["connection"] == "X-Secret-Hop"
    assert received["keep-alive"] == "timeout=5"
    assert received["proxy-authenticate"] == "Basic"
    assert received["trailer"] == "X-Foo"
    assert received["upgrade"] == "h2c"
    assert received["x-secret-hop"] == "1"
    assert received["x-kept"] == "yes"


async def test_diagnostics_need_a_token(sandbox: RunningSandbox) -> None:
    async with sandbox.session.get(f"{sandbox.url}/v4.0/sandbox/echo/x") as resp:
        assert resp.status == 401


# --- fault switches ------------------------------------------------------------------------------


async def test_token_fault_with_count_fails_that_many_requests(sandbox: RunningSandbox) -> None:
    await sandbox.token_fault(status=500, body="garbage text", count=2)
    for _ in range(2):
        async with sandbox.session.post(sandbox.url + "/connect/token", data=creds()) as resp:
            assert resp.status == 500
            assert await resp.text() == "garbage text"
    assert await sandbox.token()
    assert (await sandbox.stats())["token_requests"] == 3


async def test_token_fault_body_alone_answers_200_garbage(sandbox: RunningSandbox) -> None:
    await sandbox.token_fault(body="<html>not json</html>")
    for _ in range(2):  # count null: lasts until cleared
        async with sandbox.session.post(
            sandbox.url + "/v4.0/words/connect/token", data=creds()
        ) as resp:
            assert resp.status == 200
            assert await resp.text() == "<html>not json</html>"
    await sandbox.reset()
    assert await sandbox.token()


async def test_token_fault_delay_only_slows_the_answer(sandbox: RunningSandbox) -> None:
    await sandbox.token_fault(delay=0.5)
    started = time.monotonic()
    assert await sandbox.token()
    assert time.monotonic() - started >= 0.5


async def test_api_fault_status_with_count(sandbox: RunningSandbox) -> None:
    await sandbox.api_fault(status=503, count=1)
    status, body, _ = await api(sandbox, "GET", f"{STORAGE}/disc")
    assert status == 503
    assert_words_error(json.loads(body), "ServiceUnavailable")
    assert (await api(sandbox, "GET", f"{STORAGE}/disc"))[0] == 200


async def test_api_fault_401_always_answers_unauthorized(sandbox: RunningSandbox) -> None:
    await sandbox.api_fault(status=401)
    for _ in range(3):
        status, body, _ = await api(sandbox, "GET", f"{STORAGE}/disc")
        assert status == 401
        assert_words_error(json.loads(body), "Unauthorized")
    assert (await sandbox.stats())["unauthorized_sent"] == 3
    await sandbox.reset()
    assert (await api(sandbox, "GET", f"{STORAGE}/disc"))[0] == 200


async def test_api_fault_delay_holds_back_headers(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    await sandbox.api_fault(delay=0.5, count=1)
    started = time.monotonic()
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=token))[0] == 200
    assert time.monotonic() - started >= 0.5
    started = time.monotonic()
    assert (await api(sandbox, "GET", f"{STORAGE}/disc", token=token))[0] == 200
    assert time.monotonic() - started < 0.5


async def test_api_fault_reset_breaks_the_body(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    await sandbox.api_fault(reset=True, count=1)
    async with sandbox.session.get(
        f"{sandbox.url}/v4.0/sandbox/bytes?size=10",
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    status, body, _ = await api(sandbox, "GET", "/v4.0/sandbox/bytes?size=10", token=token)
    assert (status, body) == (200, bytes(range(10)))


async def test_api_fault_does_not_touch_token_or_control_paths(sandbox: RunningSandbox) -> None:
    await sandbox.api_fault(status=500)
    assert await sandbox.token()
    assert (await sandbox.stats())["api_requests"] == 0


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("api-fault", {"status": 42}),
        ("api-fault", {"statsu": 500}),
        ("api-fault", {"reset": "yes"}),
        ("token-fault", {"count": 0}),
        ("token-fault", {"delay": -1}),
        ("token-lifetime", {"seconds": 0}),
        ("rotate-secret", {}),
    ],
)
async def test_malformed_switch_requests_are_rejected(
    sandbox: RunningSandbox, name: str, spec: dict[str, Any]
) -> None:
    async with sandbox.session.post(f"{sandbox.url}/_sandbox/{name}", json=spec) as resp:
        assert resp.status == 400
        assert "error" in await resp.json()


async def test_invalid_json_to_a_switch_is_rejected(sandbox: RunningSandbox) -> None:
    async with sandbox.session.post(f"{sandbox.url}/_sandbox/api-fault", data=b"{nope") as resp:
        assert resp.status == 400


async def test_switches_answer_with_what_they_set(sandbox: RunningSandbox) -> None:
    assert await sandbox.api_fault(status=503) == {
        "api_fault": {"status": 503, "delay": 0.0, "reset": False, "count": None}
    }
    assert await sandbox.token_fault(status=500, body="x", count=3) == {
        "token_fault": {"status": 500, "body": "x", "delay": 0.0, "count": 3}
    }


async def test_stats_count_requests_and_reset(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    await api(sandbox, "GET", f"{STORAGE}/disc", token=token)
    await api(sandbox, "GET", f"{STORAGE}/disc", token="bad")
    assert await sandbox.stats() == {
        "token_requests": 1,
        "api_requests": 2,
        "unauthorized_sent": 1,
        "expired_token_requests": 0,
        "revoked_token_requests": 0,
        "failed_token_requests": 0,
        "locked_out_requests": 0,
        "conversions": 0,
    }
    assert await sandbox.control("stats/reset") == {
        "token_requests": 0,
        "api_requests": 0,
        "unauthorized_sent": 0,
        "expired_token_requests": 0,
        "revoked_token_requests": 0,
        "failed_token_requests": 0,
        "locked_out_requests": 0,
        "conversions": 0,
    }


# --- logging -------------------------------------------------------------------------------------


async def test_one_log_line_per_request_without_secrets(sandbox: RunningSandbox) -> None:
    token = await sandbox.token()
    with structlog.testing.capture_logs() as logs:
        await api(sandbox, "GET", "/v4.0/sandbox/echo/x?client_secret=demo-secret", token=token)
    lines = [entry for entry in logs if entry.get("path") == "/v4.0/sandbox/echo/x"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["method"], line["status"]) == ("GET", 200)
    assert isinstance(line["duration_ms"], float)
    flat = repr(logs)
    assert token not in flat
    assert "demo-secret" not in flat
