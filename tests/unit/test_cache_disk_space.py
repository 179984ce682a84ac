"""The disk cache's size bound, shared by the processes on one directory (no sockets)."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.cache import disk_space


def _install(root: Path, key: str, size: int, max_size: int, mtime: int) -> disk_space.Usage:
    temp = root / disk_space.TEMP_DIR / key
    temp.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(b"x" * size)
    os.utime(temp, (mtime, mtime))
    return disk_space.install(root, temp, key, max_size)


def _keys(root: Path) -> list[str]:
    return [key for _, key, _ in disk_space.scan(root)]


def test_installed_entries_are_counted_and_a_replaced_one_once(tmp_path: Path) -> None:
    _install(tmp_path, "aa1", 100, 10_000, 1)
    usage = _install(tmp_path, "bb2", 200, 10_000, 2)
    assert (usage.entries, usage.bytes) == (2, 300)
    usage = _install(tmp_path, "aa1", 150, 10_000, 3)
    assert (usage.entries, usage.bytes, usage.evicted) == (2, 350, 0)


def test_over_the_bound_the_least_recently_used_go_down_to_the_low_water_mark(
    tmp_path: Path,
) -> None:
    for i in range(10):
        usage = _install(tmp_path, f"k{i}", 100, 1000, i)
    assert (usage.entries, usage.bytes) == (10, 1000)
    usage = _install(tmp_path, "k10", 100, 1000, 10)  # 1100 > 1000: down to 900
    assert (usage.entries, usage.bytes, usage.evicted) == (9, 900, 2)
    assert _keys(tmp_path) == [f"k{i}" for i in range(2, 11)]


def test_a_file_removed_by_hand_is_found_at_the_next_scan(tmp_path: Path) -> None:
    for i in range(3):
        _install(tmp_path, f"k{i}", 100, 1000, i)
    disk_space.entry_path(tmp_path, "k0").unlink()
    usage = disk_space.rescan(tmp_path, 1000)
    assert (usage.entries, usage.bytes) == (2, 200)


def test_two_directory_views_share_one_count(tmp_path: Path) -> None:
    """What one process records, the next change by another builds on (one ``usage``)."""
    _install(tmp_path, "k1", 100, 1000, 1)
    assert disk_space.current(tmp_path, 1000) == disk_space.Usage(1, 100)
    disk_space.remove(tmp_path, "k1", 1000)
    assert disk_space.current(tmp_path, 1000) == disk_space.Usage(0, 0)
