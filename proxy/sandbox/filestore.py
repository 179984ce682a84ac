"""The storage's file system side: safe path resolution and blocking file operations.

Every function here blocks; the HTTP handlers call them through ``asyncio.to_thread``.
Each named storage is a subfolder of the data directory.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from proxy.sandbox.errors import BadRequestError, utc_iso

DEFAULT_STORAGE: Final = "First Storage"


class StoragePathError(BadRequestError):
    """A path or storage name tries to leave its storage (``..``) or is malformed: 400."""


@dataclass(frozen=True, slots=True)
class Location:
    """A path inside one storage: the file on disk and the path the client knows it by."""

    root: Path
    file: Path
    relative: str

    @property
    def api_path(self) -> str:
        return "/" + self.relative


def _segments(path: str) -> list[str]:
    if "\0" in path:
        raise StoragePathError("Path must not contain NUL characters.")
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoragePathError("Path must not contain '..' segments.")
    return parts


def storage_root(data_dir: Path, storage_name: str | None) -> Path:
    """The folder of a named storage, created on first use."""
    name = storage_name or DEFAULT_STORAGE
    if name.startswith(".") or _segments(name) != [name]:
        raise StoragePathError(f"Invalid storage name {name!r}.")
    root = data_dir / name
    root.mkdir(parents=True, exist_ok=True)
    return root


def locate(data_dir: Path, storage_name: str | None, path: str) -> Location:
    """Resolve ``path`` inside a storage, refusing anything that ends up outside it."""
    root = storage_root(data_dir, storage_name)
    parts = _segments(path)
    file = root.joinpath(*parts)
    # A symlink inside the data dir could still point out of it.
    if not file.resolve().is_relative_to(root.resolve()):
        raise StoragePathError("Path leaves the storage.")
    return Location(root, file, "/".join(parts))


def entry(location: Location, child: Path) -> dict[str, object]:
    """One ``StorageFile`` as the SDKs deserialise it (PascalCase keys)."""
    info = child.stat()
    is_folder = child.is_dir()
    relative = child.relative_to(location.root).as_posix()
    return {
        "Name": child.name,
        "IsFolder": is_folder,
        "ModifiedDate": utc_iso(info.st_mtime),
        "Size": 0 if is_folder else info.st_size,
        "Path": "/" + relative,
    }


def list_folder(location: Location) -> list[dict[str, object]]:
    """Folder entries sorted by name; raises ``FileNotFoundError`` for a missing folder."""
    if not location.file.is_dir():
        raise FileNotFoundError(location.relative)
    children = sorted(location.file.iterdir(), key=lambda p: p.name)
    return [entry(location, c) for c in children if not c.name.startswith(".upload-")]


def open_upload(target: Path) -> tuple[BinaryIO, Path]:
    """A temp file beside ``target`` so a broken upload never leaves half a file behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=".upload-", dir=target.parent)
    return os.fdopen(fd, "wb"), Path(temp)


def finish_upload(handle: BinaryIO, temp: Path, target: Path, ok: bool) -> None:
    """Close the temp file and either move it into place or delete it."""
    handle.close()
    if ok:
        os.replace(temp, target)
    else:
        temp.unlink(missing_ok=True)


def copy_file(src: Path, dst: Path, move: bool) -> None:
    if not src.is_file():
        raise FileNotFoundError(str(src))
    if dst.is_dir():
        raise IsADirectoryError(str(dst))
    if dst.exists() and dst.samefile(src):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        os.replace(src, dst)
    else:
        shutil.copyfile(src, dst)


def copy_folder(src: Path, dst: Path, move: bool) -> None:
    """Copy or move a folder; an existing destination is merged into."""
    if not src.is_dir():
        raise FileNotFoundError(str(src))
    if dst.resolve().is_relative_to(src.resolve()):
        raise StoragePathError("A folder cannot be copied or moved into itself.")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if move:
        shutil.rmtree(src)


def delete_folder(folder: Path, recursive: bool) -> None:
    """Remove a folder; a non-empty one only when ``recursive``."""
    if not folder.is_dir():
        raise FileNotFoundError(str(folder))
    if recursive:
        shutil.rmtree(folder)
    else:
        folder.rmdir()  # OSError (ENOTEMPTY) when not empty


def disc_usage(root: Path, data_dir: Path) -> dict[str, int]:
    """Bytes used by one storage, and the size of the disk under the data directory."""
    used = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    return {"UsedSize": used, "TotalSize": shutil.disk_usage(data_dir).total}
