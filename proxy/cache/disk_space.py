"""The disk cache's size bound, held for every process sharing the directory.

``run --workers N``, or several proxies on one volume, write to one directory: the bound is on
the directory, not per process. Every change to the set of entries (an entry renamed into
place, one removed, a clear) happens under an exclusive ``flock`` on ``lock`` and updates
``usage``, the directory's entry count and bytes. Only when that total goes over
``cache_max_size`` (or ``usage`` is missing or unreadable) is the directory scanned, the real
total taken, and the least recently used entries (oldest mtime) removed down to LOW_WATER of
the bound, so a full cache is scanned once per tenth of its size written, not per entry (a
scan costs about 3 µs an entry here: 30 ms for 10,000). Anything that makes ``usage``
overcount (a file removed by hand) only brings the next scan forward.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

TEMP_DIR = "tmp"
LOCK_FILE = "lock"
USAGE_FILE = "usage"
LOW_WATER = 0.9


@dataclass(frozen=True, slots=True)
class Usage:
    """The directory's entries and bytes after a change, and how many entries it evicted."""

    entries: int
    bytes: int
    evicted: int = 0


def entry_path(root: Path, key: str) -> Path:
    return root / key[:2] / key


def scan(root: Path) -> list[tuple[float, str, int]]:
    """(mtime, key, size) of every entry, least recently used first."""
    found = []
    for shard in root.iterdir() if root.is_dir() else ():
        if shard.name == TEMP_DIR or not shard.is_dir():
            continue
        for entry in os.scandir(shard):
            with contextlib.suppress(OSError):
                info = entry.stat()
                found.append((info.st_mtime, entry.name, info.st_size))
    found.sort()
    return found


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """The directory's lock, held by one thread of one process at a time."""
    with (root / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


def _read(root: Path) -> tuple[int, int] | None:
    try:
        entries, size = (root / USAGE_FILE).read_text().split()
        return int(entries), int(size)
    except (OSError, ValueError):
        return None


def settle(root: Path, max_size: int, entries: int = 0, size: int = 0) -> Usage:
    """With the lock held: add (``entries``, ``size``) to the recorded usage; when it goes
    over ``max_size`` (or none is recorded), scan and evict. Returns the usage recorded."""
    recorded = _read(root)
    if recorded is not None and recorded[1] + size <= max_size:
        usage = Usage(max(recorded[0] + entries, 0), max(recorded[1] + size, 0))
    else:
        usage = _evict(root, max_size)
    (root / USAGE_FILE).write_text(f"{usage.entries} {usage.bytes}\n")
    return usage


def _evict(root: Path, max_size: int) -> Usage:
    """The real total; over ``max_size``, the least recently used removed down to LOW_WATER."""
    found = scan(root)
    total = sum(size for _, _, size in found)
    evicted = 0
    if total > max_size:
        for _, key, size in found:
            if total <= max_size * LOW_WATER:
                break
            with contextlib.suppress(FileNotFoundError):
                entry_path(root, key).unlink()
            total -= size
            evicted += 1
    return Usage(len(found) - evicted, total, evicted)


def install(root: Path, temp: Path, key: str, max_size: int) -> Usage:
    """Rename a complete temporary file into place as ``key``'s entry, and count it."""
    final = entry_path(root, key)
    final.parent.mkdir(exist_ok=True)
    with locked(root):
        try:
            replaced = final.stat().st_size
        except FileNotFoundError:
            replaced = None
        os.replace(temp, final)
        size = final.stat().st_size
        if replaced is None:
            return settle(root, max_size, 1, size)
        return settle(root, max_size, 0, size - replaced)


def remove(root: Path, key: str, max_size: int) -> Usage:
    with locked(root):
        path = entry_path(root, key)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return settle(root, max_size)
        return settle(root, max_size, -1, -size)


def rescan(root: Path, max_size: int) -> Usage:
    """Count the directory afresh (at start: what other processes or a crash left)."""
    with locked(root):
        (root / USAGE_FILE).unlink(missing_ok=True)
        return settle(root, max_size)


def clear(root: Path, max_size: int) -> int:
    """Remove every entry; how many there were."""
    with locked(root):
        removed = 0
        for _, key, _ in scan(root):
            with contextlib.suppress(OSError):
                entry_path(root, key).unlink()
                removed += 1
        (root / USAGE_FILE).unlink(missing_ok=True)
        settle(root, max_size)
        return removed


def current(root: Path, max_size: int) -> Usage:
    with locked(root):
        return settle(root, max_size)
