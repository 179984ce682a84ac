"""The Words v4.0 storage API over HTTP, streaming bodies both ways so size never matters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import BodyPartReader, web

from proxy.sandbox import filestore
from proxy.sandbox.errors import words_error
from proxy.sandbox.filestore import Location
from proxy.sandbox.state import STATE

CHUNK: Final = 256 * 1024
PREFIX: Final = "/v4.0/words/storage"


def _locate(request: web.Request, path: str, storage_param: str = "storageName") -> Location:
    data_dir = request.app[STATE].storage_dir()
    return filestore.locate(data_dir, request.query.get(storage_param), path)


def _not_found(what: str, path: str) -> web.Response:
    return words_error(404, f"Error while loading {what} '{path}' from storage.", code="NotFound")


def _bad_request(message: str) -> web.Response:
    return words_error(400, message, code="BadRequest")


def _flag(request: web.Request, name: str, default: bool) -> bool:
    value = request.query.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes")


async def _file_part(request: web.Request) -> BodyPartReader | None:
    """The file in a multipart upload: part ``fileContent``, else the first part that looks
    like a file (has a filename or a non-text content type), since the SDKs name it
    differently."""
    reader = await request.multipart()
    while True:
        part = await reader.next()
        if part is None:
            return None
        if isinstance(part, BodyPartReader):
            content_type = part.headers.get("Content-Type", "text/plain")
            if part.name == "fileContent" or part.filename or "text/plain" not in content_type:
                return part
        await part.release()


async def _receive(target: Location, read: Callable[[], Awaitable[bytes]]) -> None:
    """Write chunks to disk as they arrive; only a complete upload replaces the target."""
    handle, temp = await asyncio.to_thread(filestore.open_upload, target.file)
    ok = False
    try:
        while chunk := await read():
            await asyncio.to_thread(handle.write, chunk)
        ok = True
    finally:
        await asyncio.to_thread(filestore.finish_upload, handle, temp, target.file, ok)


async def upload_file(request: web.Request) -> web.Response:
    """``PUT .../file/{path}`` with the raw bytes or a multipart form."""
    location = _locate(request, request.match_info["path"])
    if not location.relative or location.file.is_dir():
        return _bad_request(f"'{location.relative}' is a folder, not a file path.")
    if request.content_type.startswith("multipart/"):
        part = await _file_part(request)
        if part is None:
            return _bad_request("The multipart body has no file part.")
        await _receive(location, lambda: part.read_chunk(CHUNK))
    else:
        await _receive(location, lambda: request.content.read(CHUNK))
    return web.json_response({"Uploaded": [location.file.name], "Errors": []})


async def download_file(request: web.Request) -> web.StreamResponse:
    """``GET .../file/{path}``: the raw bytes, read from disk chunk by chunk."""
    location = _locate(request, request.match_info["path"])
    if not location.file.is_file():
        return _not_found("file", location.api_path)
    handle = await asyncio.to_thread(location.file.open, "rb")
    try:
        size = await asyncio.to_thread(lambda: handle.seek(0, 2))
        await asyncio.to_thread(handle.seek, 0)
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        response.content_length = size
        response.headers["Content-Disposition"] = f'attachment; filename="{location.file.name}"'
        await response.prepare(request)
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(handle.close)


async def delete_file(request: web.Request) -> web.Response:
    location = _locate(request, request.match_info["path"])
    if not location.file.is_file():
        return _not_found("file", location.api_path)
    await asyncio.to_thread(location.file.unlink)
    return web.Response()


async def _copy_or_move(request: web.Request, folder: bool, move: bool) -> web.Response:
    """``PUT .../{file,folder}/{copy,move}/{src}?destPath=``, across storages if asked."""
    dest_path = request.query.get("destPath")
    if dest_path is None:
        return _bad_request("The destPath parameter is required.")
    src = _locate(request, request.match_info["src"], "srcStorageName")
    dst = _locate(request, dest_path, "destStorageName")
    operation = filestore.copy_folder if folder else filestore.copy_file
    try:
        await asyncio.to_thread(operation, src.file, dst.file, move)
    except FileNotFoundError:
        return _not_found("folder" if folder else "file", src.api_path)
    except IsADirectoryError:
        return _bad_request(f"'{dst.api_path}' is a folder.")
    return web.Response()


async def copy_file(request: web.Request) -> web.Response:
    return await _copy_or_move(request, folder=False, move=False)


async def move_file(request: web.Request) -> web.Response:
    return await _copy_or_move(request, folder=False, move=True)


async def copy_folder(request: web.Request) -> web.Response:
    return await _copy_or_move(request, folder=True, move=False)


async def move_folder(request: web.Request) -> web.Response:
    return await _copy_or_move(request, folder=True, move=True)


async def create_folder(request: web.Request) -> web.Response:
    location = _locate(request, request.match_info["path"])
    if location.file.is_file():
        return _bad_request(f"'{location.api_path}' is a file.")
    await asyncio.to_thread(location.file.mkdir, parents=True, exist_ok=True)
    return web.Response()


async def list_folder(request: web.Request) -> web.Response:
    """``GET .../folder/{path}``: ``{"Value": [StorageFile, ...]}``."""
    location = _locate(request, request.match_info["path"])
    try:
        entries = await asyncio.to_thread(filestore.list_folder, location)
    except FileNotFoundError:
        return _not_found("folder", location.api_path)
    return web.json_response({"Value": entries})


async def delete_folder(request: web.Request) -> web.Response:
    """``DELETE .../folder/{path}?recursive=``; a non-empty folder needs ``recursive=true``."""
    location = _locate(request, request.match_info["path"])
    if not location.relative:
        return _bad_request("The storage root cannot be deleted.")
    try:
        await asyncio.to_thread(
            filestore.delete_folder, location.file, _flag(request, "recursive", False)
        )
    except FileNotFoundError:
        return _not_found("folder", location.api_path)
    except OSError:
        return _bad_request(f"Folder '{location.api_path}' is not empty; use recursive=true.")
    return web.Response()


async def object_exists(request: web.Request) -> web.Response:
    location = _locate(request, request.match_info["path"])
    exists = await asyncio.to_thread(location.file.exists)
    is_folder = exists and await asyncio.to_thread(location.file.is_dir)
    return web.json_response({"Exists": exists, "IsFolder": is_folder})


async def disc_usage(request: web.Request) -> web.Response:
    state = request.app[STATE]
    location = _locate(request, "")
    usage = await asyncio.to_thread(filestore.disc_usage, location.root, state.storage_dir())
    return web.json_response(usage)


def add_routes(app: web.Application) -> None:
    """Copy and move first: the router tries resources in order, and ``{path:.*}`` eats all."""
    app.router.add_put(f"{PREFIX}/file/copy/{{src:.*}}", copy_file)
    app.router.add_put(f"{PREFIX}/file/move/{{src:.*}}", move_file)
    app.router.add_put(f"{PREFIX}/folder/copy/{{src:.*}}", copy_folder)
    app.router.add_put(f"{PREFIX}/folder/move/{{src:.*}}", move_folder)
    app.router.add_put(f"{PREFIX}/file/{{path:.*}}", upload_file)
    app.router.add_get(f"{PREFIX}/file/{{path:.*}}", download_file, allow_head=False)
    app.router.add_delete(f"{PREFIX}/file/{{path:.*}}", delete_file)
    app.router.add_put(f"{PREFIX}/folder/{{path:.*}}", create_folder)
    app.router.add_get(f"{PREFIX}/folder/{{path:.*}}", list_folder, allow_head=False)
    app.router.add_delete(f"{PREFIX}/folder/{{path:.*}}", delete_folder)
    app.router.add_get(f"{PREFIX}/exist/{{path:.*}}", object_exists, allow_head=False)
    app.router.add_get(f"{PREFIX}/disc", disc_usage, allow_head=False)
