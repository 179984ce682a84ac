"""The cache stores: disk and Redis pass the SAME cases (one parametrised fixture)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from unittest.mock import patch

import pytest

from proxy.cache.disk import DiskStore
from proxy.cache.flight import Flights
from proxy.cache.redis_store import RedisStore
from proxy.cache.store import CacheStore, CorruptEntry

StoreFactory = Callable[..., CacheStore]
KEY = "ab" + "0" * 62


@pytest.fixture(params=["disk", "redis"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    opened: list[CacheStore] = []
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def factory(ttl: int = 3600, max_size: int = 1 << 30) -> CacheStore:
        store: CacheStore
        if request.param == "disk":
            store = DiskStore(tmp_path / "cache", ttl=ttl, max_size=max_size)
        else:
            store = RedisStore(redis_url, None, ttl=ttl)
        opened.append(store)
        return store

    yield factory
    if opened:
        await opened[0].clear()
    for store in opened:
        await store.close()


async def _put(store: CacheStore, key: str, body: bytes, stored_at: float | None = None) -> None:
    writer = await store.writer(key)
    for at in range(0, len(body), 1000):
        await writer.write(body[at : at + 1000])
    if stored_at is None:
        await writer.commit(200, (("Content-Type", "application/pdf"),))
        return
    with patch("time.time", return_value=stored_at):
        await writer.commit(200, (("Content-Type", "application/pdf"),))


async def _read(store: CacheStore, key: str) -> bytes | None:
    hit = await store.get(key, time.time())
    if hit is None:
        return None
    try:
        return b"".join([chunk async for chunk in hit.body()])
    finally:
        await hit.close()


async def test_an_entry_comes_back_byte_for_byte(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    body = bytes(range(256)) * 1000
    await _put(store, KEY, body)
    hit = await store.get(KEY, time.time())
    assert hit is not None
    assert hit.meta.status == 200
    assert hit.meta.headers == (("Content-Type", "application/pdf"),)
    await hit.close()
    assert await _read(store, KEY) == body
    assert (await store.stats()).entries == 1


async def test_an_empty_body_is_an_entry_too(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    await _put(store, KEY, b"")
    assert await _read(store, KEY) == b""


async def test_an_aborted_entry_is_never_seen(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    writer = await store.writer(KEY)
    await writer.write(b"half of it")
    await writer.abort()
    assert await store.get(KEY, time.time()) is None


async def test_an_expired_entry_is_a_miss(new_store: StoreFactory) -> None:
    store = new_store(ttl=60)
    await store.open()
    await _put(store, KEY, b"old", stored_at=time.time() - 61)
    assert await store.get(KEY, time.time()) is None


async def test_entries_survive_a_reopen(new_store: StoreFactory) -> None:
    first = new_store()
    await first.open()
    await _put(first, KEY, b"kept")
    second = new_store()
    await second.open()
    assert await _read(second, KEY) == b"kept"


async def test_clear_removes_every_entry(new_store: StoreFactory) -> None:
    store = new_store()
    await store.open()
    await _put(store, KEY, b"one")
    await _put(store, "cd" + "1" * 62, b"two")
    assert await store.clear() == 2
    assert await store.get(KEY, time.time()) is None
    assert (await store.stats()).entries == 0


async def test_disk_evicts_the_least_recently_used_beyond_max_size(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=3600, max_size=5000)
    await store.open()
    keys = [f"{i:02d}" + "0" * 62 for i in range(3)]
    await _put(store, keys[0], b"a" * 1500)
    await _put(store, keys[1], b"b" * 1500)
    assert await _read(store, keys[0]) is not None  # 0 is now more recent than 1
    await _put(store, keys[2], b"c" * 1500)  # metadata counts too: over 5000
    assert store.evictions == 1
    assert await store.get(keys[1], time.time()) is None
    assert await _read(store, keys[0]) == b"a" * 1500
    assert (await store.stats()).bytes <= 5000


def _entry_file(root: Path) -> Path:
    return root / KEY[:2] / KEY


async def test_disk_a_truncated_entry_is_a_miss_and_removed(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=3600, max_size=1 << 30)
    await store.open()
    await _put(store, KEY, b"x" * 5000)
    path = _entry_file(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:1000] + data[2000:])  # the trailer survives, the length is wrong
    assert await store.get(KEY, time.time()) is None
    assert not path.exists()


async def test_disk_an_entry_from_before_blake3_is_a_miss_and_replaced(tmp_path: Path) -> None:
    """Entries written with SHA-256 digests (before the body hash became BLAKE3) carry no
    ``blake3`` field: never served unchecked, and the next store replaces them."""
    body = b"x" * 5000
    meta = json.dumps(
        {
            "status": 200,
            "headers": [],
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "stored_at": time.time(),
            "segments": [hashlib.sha256(body).hexdigest()],
        }
    ).encode()
    path = _entry_file(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(body + meta + len(meta).to_bytes(8, "big"))
    store = DiskStore(tmp_path, ttl=3600, max_size=1 << 30)
    await store.open()
    assert await store.get(KEY, time.time()) is None
    await _put(store, KEY, b"y" * 5000)
    assert await _read(store, KEY) == b"y" * 5000


async def test_disk_a_corrupted_body_aborts_the_stream_and_is_removed(tmp_path: Path) -> None:
    store = DiskStore(tmp_path, ttl=3600, max_size=1 << 30)
    await store.open()
    await _put(store, KEY, b"x" * 5000)
    path = _entry_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry):
        await _read(store, KEY)
    assert not path.exists()


CRASH_MID_WRITE = """
import asyncio, os, sys
from pathlib import Path
from proxy.cache.disk import DiskStore

async def main():
    store = DiskStore(Path(sys.argv[1]), ttl=3600, max_size=1 << 30)
    await store.open()
    writer = await store.writer(sys.argv[2])
    await writer.write(b"partial")
    os._exit(1)  # the process dies mid-write: no commit, no abort

asyncio.run(main())
"""


async def test_disk_a_crash_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_MID_WRITE, str(tmp_path), KEY], check=False, timeout=60
    )
    assert crashed.returncode == 1
    assert len(list((tmp_path / "tmp").iterdir())) == 1
    restarted = DiskStore(tmp_path, ttl=3600, max_size=1 << 30)
    await restarted.open()
    assert await restarted.get(KEY, time.time()) is None
    assert list((tmp_path / "tmp").iterdir()) == []  # the stray temporary file is gone


async def test_disk_a_process_starting_on_a_shared_directory_keeps_anothers_write(
    tmp_path: Path,
) -> None:
    """A worker (re)starting removes the temporary files a crash left, not the one another
    process is writing at that moment (its commit would fail and the entry be lost)."""
    writing = DiskStore(tmp_path, ttl=3600, max_size=1 << 30)
    await writing.open()
    writer = await writing.writer(KEY)
    await writer.write(b"x" * 5000)
    stray = tmp_path / "tmp" / ("cd" + "0" * 62 + ".dead")
    stray.write_bytes(b"left by a crash")
    await DiskStore(tmp_path, ttl=3600, max_size=1 << 30).open()  # another worker starts
    assert not stray.exists()
    await writer.commit(200, ())
    assert await _read(writing, KEY) == b"x" * 5000


async def test_redis_a_body_evicted_apart_from_its_metadata_is_a_miss(redis_url: str) -> None:
    store = RedisStore(redis_url, None, ttl=3600)
    await store.open()
    try:
        await _put(store, KEY, b"y" * 3000)
        await store.client.setrange(f"aspose-proxy:cache:{KEY}:b", 0, b"Z")
        with pytest.raises(CorruptEntry):
            await _read(store, KEY)
        await _put(store, KEY, b"y" * 3000)
        await store.client.delete(f"aspose-proxy:cache:{KEY}:b")
        assert await store.get(KEY, time.time()) is None
    finally:
        await store.clear()
        await store.close()


async def test_single_flight_one_leader_the_others_wait_for_its_outcome() -> None:
    flights = Flights()
    assert flights.lead("k") is None
    waiter = flights.lead("k")
    assert waiter is not None and not waiter.done()
    flights.land("k", stored=True)
    assert await waiter is True
    assert flights.lead("k") is None  # landed: the next request leads again
