"""The replayable request body (proxy/body.py), fed from an aiohttp StreamReader we drive."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import sys
from collections.abc import Iterable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import StreamReader

from proxy.body import SLOW_WRITES, RequestBody, SpoolSpace, TeeBody
from proxy.errors import BodyTooLarge, InsufficientStorage, RequestTimeout
from tests.open_files import open_fd_targets

KiB = 1024
MiB = 1024 * KiB

needs_proc = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="inspects /proc/self/fd"
)


class FakeProtocol:
    """Just what StreamReader calls on its protocol for flow control."""

    def __init__(self) -> None:
        self._reading_paused = False
        self.connected = True

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self, resume_parser: bool = True) -> None:
        self._reading_paused = False


def make_stream() -> StreamReader:
    return StreamReader(FakeProtocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]


def stream_of(chunks: Iterable[bytes], *, eof: bool = True) -> StreamReader:
    stream = make_stream()
    for chunk in chunks:
        stream.feed_data(chunk)
    if eof:
        stream.feed_eof()
    return stream


def split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def payload(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def open_files_in(directory: Path) -> list[str]:
    """Paths of this process's open file descriptors that live in ``directory``."""
    return [t for t in open_fd_targets() if t.startswith(f"{directory}/")]


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


async def read(
    stream: StreamReader, spool: Path, *, memory_limit: int = 64 * KiB, max_size: int = 16 * MiB
) -> RequestBody:
    return await RequestBody.read(
        stream, memory_limit=memory_limit, max_size=max_size, spool_dir=spool
    )


async def collect(body: RequestBody) -> bytes:
    return b"".join([chunk async for chunk in body.chunks()])


async def test_small_body_stays_in_memory(spool: Path) -> None:
    body = await read(stream_of([b"hello", b" ", b"world"]), spool)
    assert body.in_memory == b"hello world"
    assert body.size == 11
    assert os.listdir(spool) == []
    body.close()


async def test_empty_body_is_empty_in_memory(spool: Path) -> None:
    body = await read(stream_of([]), spool)
    assert body.in_memory == b""
    assert body.size == 0


async def test_body_of_exactly_memory_limit_stays_in_memory(spool: Path) -> None:
    data = payload(64 * KiB)
    body = await read(stream_of(split(data, 10_000)), spool, memory_limit=64 * KiB)
    assert body.in_memory == data
    body.close()


async def test_body_one_byte_over_memory_limit_spills(spool: Path) -> None:
    data = payload(64 * KiB + 1)
    body = await read(stream_of(split(data, 10_000)), spool, memory_limit=64 * KiB)
    try:
        assert body.in_memory is None
        assert await collect(body) == data
    finally:
        body.close()


async def test_big_body_spills_to_unlinked_file_and_replays_identically(spool: Path) -> None:
    data = payload(3 * MiB + 123)  # several spill batches and read chunks
    body = await read(stream_of(split(data, 60_000)), spool, memory_limit=100 * KiB)
    try:
        assert body.in_memory is None
        assert body.size == len(data)
        assert os.listdir(spool) == []  # unlinked at once: nothing to leave behind
        first = await collect(body)
        second = await collect(body)
        assert first == data
        assert second == data
    finally:
        body.close()


@needs_proc
async def test_spilled_body_file_lives_in_spool_dir_until_closed(spool: Path) -> None:
    body = await read(stream_of(split(payload(300 * KiB), 50_000)), spool, memory_limit=KiB)
    assert len(open_files_in(spool)) == 1
    assert os.listdir(spool) == []
    body.close()
    assert open_files_in(spool) == []


async def test_over_max_size_in_memory_raises_body_too_large(spool: Path) -> None:
    stream = stream_of([b"x" * 600, b"y" * 600])
    with pytest.raises(BodyTooLarge) as caught:
        await read(stream, spool, memory_limit=64 * KiB, max_size=1000)
    assert caught.value.status == 413
    assert "1000" in caught.value.message


@needs_proc
async def test_over_max_size_after_spilling_raises_and_closes_file(spool: Path) -> None:
    stream = stream_of(split(payload(2 * MiB), 64 * KiB))
    with pytest.raises(BodyTooLarge):
        await read(stream, spool, memory_limit=100 * KiB, max_size=MiB)
    assert open_files_in(spool) == []
    assert os.listdir(spool) == []


async def test_max_size_is_inclusive(spool: Path) -> None:
    data = payload(5000)
    body = await read(stream_of(split(data, 1000)), spool, memory_limit=100, max_size=5000)
    try:
        assert await collect(body) == data
    finally:
        body.close()


@needs_proc
async def test_client_disconnect_mid_body_closes_spool_file(spool: Path) -> None:
    stream = stream_of(split(payload(300 * KiB), 50_000), eof=False)
    task = asyncio.create_task(read(stream, spool, memory_limit=KiB))
    for _ in range(100):  # let it spill and block waiting for more data
        await asyncio.sleep(0.005)
        if open_files_in(spool):
            break
    assert len(open_files_in(spool)) == 1
    stream.set_exception(aiohttp.ClientConnectionError("client went away"))
    with pytest.raises(aiohttp.ClientConnectionError):
        await task
    assert open_files_in(spool) == []


@needs_proc
async def test_cancelled_read_closes_spool_file(spool: Path) -> None:
    stream = stream_of(split(payload(300 * KiB), 50_000), eof=False)
    task = asyncio.create_task(read(stream, spool, memory_limit=KiB))
    for _ in range(100):
        await asyncio.sleep(0.005)
        if open_files_in(spool):
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_files_in(spool) == []


async def test_close_is_idempotent(spool: Path) -> None:
    spilled = await read(stream_of([payload(10 * KiB)]), spool, memory_limit=KiB)
    spilled.close()
    spilled.close()
    in_memory = await read(stream_of([b"abc"]), spool)
    in_memory.close()
    in_memory.close()
    assert in_memory.in_memory == b"abc"


# TeeBody: sent upstream while it arrives, copied to the spool for a replay (issue 11).


async def open_tee(stream: StreamReader, spool: Path | None) -> TeeBody:
    return await TeeBody.open(stream, spool_dir=spool)


async def drain(body: TeeBody) -> bytes:
    return b"".join([chunk async for chunk in body.stream()])


@needs_proc
async def test_tee_yields_the_body_as_it_arrives_and_keeps_a_whole_copy(spool: Path) -> None:
    data = payload(3 * MiB + 17)
    stream = stream_of([], eof=False)
    body = await open_tee(stream, spool)
    try:
        assert len(open_files_in(spool)) == 1 and os.listdir(spool) == []
        sent = body.stream()
        stream.feed_data(data[:1000])
        # The first chunk is handed on before the rest of the body exists.
        assert await asyncio.wait_for(sent.__anext__(), 1) == data[:1000]
        for part in split(data[1000:], 70_000):
            stream.feed_data(part)
        stream.feed_eof()
        rest = b"".join([chunk async for chunk in sent])
        assert data[:1000] + rest == data
        assert body.size == len(data)
        assert await collect(body) == data  # the replay copy
        assert await collect(body) == data
    finally:
        body.close()
    assert open_files_in(spool) == []


@pytest.mark.parametrize("slow", [False, True], ids=["fast-disk", "slow-disk"])
async def test_tee_finish_completes_the_copy_after_the_first_send_stopped_early(
    spool: Path, slow: bool, request: pytest.FixtureRequest
) -> None:
    """A 401 (or a stale connection) ends the first send while the client still uploads; on a
    slow disk the copy has gone on in a thread by then."""
    if slow:
        request.getfixturevalue("slow_disk")
    data = payload(5 * MiB)
    parts = split(data, 64 * KiB)
    stream = stream_of(parts[:20], eof=False)
    body = await open_tee(stream, spool)
    sender = asyncio.create_task(drain(body))
    await asyncio.sleep(0.05)
    sender.cancel()  # what releasing the first response does to aiohttp's body writer
    with pytest.raises(asyncio.CancelledError):
        await sender
    for part in parts[20:]:
        stream.feed_data(part)
    stream.feed_eof()
    try:
        await body.finish()
        assert body.size == len(data)
        assert await collect(body) == data
    finally:
        body.close()


async def test_tee_finish_after_a_complete_first_send_reads_nothing_more(spool: Path) -> None:
    data = payload(2 * MiB)
    body = await open_tee(stream_of(split(data, 100_000)), spool)
    try:
        assert await drain(body) == data
        await body.finish()
        assert await collect(body) == data
    finally:
        body.close()


async def test_tee_missing_spool_dir_fails_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(InsufficientStorage) as caught:
        await open_tee(stream_of([b"x"]), tmp_path / "gone")
    assert caught.value.status == 507
    assert str(tmp_path) not in caught.value.message  # local paths go to the log only


async def test_tee_spool_write_failure_stops_the_first_send(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = await open_tee(stream_of(split(payload(4 * MiB), 64 * KiB)), spool)

    def full(data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    assert body._file is not None
    monkeypatch.setattr(body._file, "write", full)
    try:
        with pytest.raises(InsufficientStorage):
            await drain(body)
        assert isinstance(body.failure, InsufficientStorage)
        with pytest.raises(InsufficientStorage):
            await body.finish()  # no replay from a broken copy
    finally:
        body.close()


async def test_read_spool_failure_gives_insufficient_storage(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(InsufficientStorage):
        await read(stream_of(split(payload(MiB), 64 * KiB)), not_a_dir, memory_limit=KiB)


async def test_tee_finish_waits_for_the_cancelled_first_send_to_let_go_of_the_stream(
    spool: Path,
) -> None:
    """Releasing a 401 cancels aiohttp's body writer, but the cancellation lands a loop turn
    later: reading the client stream before then would race the writer for it."""
    data = payload(MiB)
    stream = stream_of([data[:1000]], eof=False)
    body = await open_tee(stream, spool)
    sender = asyncio.create_task(drain(body))
    await asyncio.sleep(0.01)  # the writer now waits in readany() for more of the body
    sender.cancel()  # ... and finish() is called before the cancellation has landed

    async def rest() -> None:
        await asyncio.sleep(0.01)
        stream.feed_data(data[1000:])
        stream.feed_eof()

    feeder = asyncio.create_task(rest())
    try:
        async with asyncio.timeout(2):
            await body.finish()  # in this task: wait_for's new task would hide the race
        assert await collect(body) == data
    finally:
        await feeder
        body.close()


# Spool writes: on the loop while fast, in a thread after a slow one (issue 11).


async def test_tee_chunk_is_in_the_copy_before_it_is_handed_on(spool: Path) -> None:
    """Fast spool writes happen on the loop, before the chunk goes upstream: no thread hop."""
    data = payload(3 * MiB)
    body = await open_tee(stream_of(split(data, 700_000)), spool)
    try:
        assert body._file is not None
        sent = 0
        async for chunk in body.stream():
            sent += len(chunk)
            assert os.fstat(body._file.fileno()).st_size == sent
        assert await collect(body) == data
    finally:
        body.close()


@pytest.fixture
def slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every spool write counts as slow: after SLOW_WRITES, each body is copied in a thread."""
    monkeypatch.setattr("proxy.body.SLOW_WRITE", -1.0)


async def trickle(stream: StreamReader, parts: list[bytes]) -> None:
    """Feed ``parts`` one loop turn apart, as a socket would: readany() gets many chunks."""
    for part in parts:
        stream.feed_data(part)
        await asyncio.sleep(0)
    stream.feed_eof()


@pytest.mark.usefixtures("slow_disk")
async def test_tee_after_a_slow_spool_write_the_copy_goes_on_in_a_thread(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = payload(5 * MiB + 3)
    stream = make_stream()
    body = await open_tee(stream, spool)
    assert body._file is not None
    batches: list[int] = []
    writelines = body._file.writelines

    def counted(lines: list[bytes]) -> None:
        batches.append(sum(map(len, lines)))
        writelines(lines)

    monkeypatch.setattr(body._file, "writelines", counted)
    feeder = asyncio.create_task(trickle(stream, split(data, 300_000)))
    try:
        assert await drain(body) == data
        assert body._slow_writes == SLOW_WRITES
        # All but the first SLOW_WRITES chunks, written on the loop before the switch.
        assert batches and sum(batches) == len(data) - SLOW_WRITES * 300_000
        assert await collect(body) == data
    finally:
        await feeder
        body.close()


@pytest.mark.usefixtures("slow_disk")
async def test_tee_spool_failure_in_the_thread_stops_the_first_send(
    spool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = make_stream()
    body = await open_tee(stream, spool)
    assert body._file is not None
    spool_file = body._file
    write = spool_file.write

    def on_the_loop(data: bytes) -> int:
        monkeypatch.setattr(spool_file, "writelines", writelines_full)
        return write(data)

    def writelines_full(lines: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_file, "write", on_the_loop)
    feeder = asyncio.create_task(trickle(stream, split(payload(4 * MiB), 64 * KiB)))
    try:
        with pytest.raises(InsufficientStorage):
            await drain(body)
        assert isinstance(body.failure, InsufficientStorage)
        with pytest.raises(InsufficientStorage):
            await body.finish()
    finally:
        feeder.cancel()
        body.close()


@pytest.mark.parametrize("slow", [False, True], ids=["on-the-loop", "slow-disk-thread"])
async def test_read_spills_and_replays_identically(
    spool: Path, request: pytest.FixtureRequest, slow: bool
) -> None:
    """Spool writes on the loop, and after slow ones in a thread: the same copy either way."""
    if slow:
        request.getfixturevalue("slow_disk")
    data = payload(5 * MiB + 3)
    stream = make_stream()
    feeder = asyncio.create_task(trickle(stream, split(data, 300_000)))
    body = await read(stream, spool, memory_limit=KiB if slow else 64 * KiB)
    await feeder
    try:
        assert body.spilled and body.in_memory is None
        assert await collect(body) == data
    finally:
        body.close()


# -- bounds against slow or greedy clients (issue 16) ---------------------------------------


async def test_a_body_that_stalls_raises_request_timeout_and_closes_its_spool_file(
    spool: Path,
) -> None:
    stream = stream_of([b"s" * (100 * KiB)], eof=False)  # spilled, then nothing more
    with pytest.raises(RequestTimeout):
        await RequestBody.read(
            stream, memory_limit=64 * KiB, max_size=MiB, spool_dir=spool, body_timeout=0.05
        )
    assert open_files_in(spool) == []


async def test_a_tee_that_stalls_stops_its_send_with_request_timeout(spool: Path) -> None:
    stream = stream_of([b"t" * KiB], eof=False)
    body = await TeeBody.open(stream, spool_dir=spool, size=MiB, body_timeout=0.05)
    sent = []
    with pytest.raises(RequestTimeout):
        async for chunk in body.stream():
            sent.append(chunk)
    assert sent == [b"t" * KiB]
    body.close()
    assert open_files_in(spool) == []


async def test_the_deadline_is_per_silence_not_for_the_whole_body(spool: Path) -> None:
    stream = make_stream()

    async def trickle() -> None:
        for _ in range(12):  # 0.6 s in all, never 0.5 s without a byte
            await asyncio.sleep(0.05)
            stream.feed_data(b"x")
        stream.feed_eof()

    feeding = asyncio.create_task(trickle())
    body = await RequestBody.read(
        stream, memory_limit=KiB, max_size=KiB, spool_dir=spool, body_timeout=0.5
    )
    await feeding
    assert body.in_memory == b"x" * 12


async def test_spilled_bodies_take_spool_space_and_give_it_back(spool: Path) -> None:
    space = SpoolSpace(300 * KiB)
    first = await RequestBody.read(
        stream_of(split(payload(200 * KiB), 10_000)),
        memory_limit=64 * KiB,
        max_size=MiB,
        spool_dir=spool,
        space=space,
    )
    assert space.used == 200 * KiB
    with pytest.raises(InsufficientStorage):  # 200 KiB more would pass 300 KiB
        await RequestBody.read(
            stream_of(split(payload(200 * KiB), 10_000)),
            memory_limit=64 * KiB,
            max_size=MiB,
            spool_dir=spool,
            space=space,
        )
    assert space.used == 200 * KiB  # the refused body gave back what it took
    assert len(open_files_in(spool)) == 1
    first.close()
    assert space.used == 0


async def test_a_body_in_memory_takes_no_spool_space(spool: Path) -> None:
    space = SpoolSpace(1)
    body = await RequestBody.read(
        stream_of([b"m" * KiB]), memory_limit=64 * KiB, max_size=MiB, spool_dir=spool, space=space
    )
    assert body.in_memory == b"m" * KiB
    assert space.used == 0


async def test_a_tee_takes_its_declared_length_before_reading(spool: Path) -> None:
    space = SpoolSpace(MiB)
    stream = stream_of([b"a"], eof=False)
    held = await TeeBody.open(stream, spool_dir=spool, size=600 * KiB, space=space)
    assert space.used == 600 * KiB
    with pytest.raises(InsufficientStorage):
        await TeeBody.open(make_stream(), spool_dir=spool, size=600 * KiB, space=space)
    assert space.used == 600 * KiB
    assert len(open_files_in(spool)) == 1  # the refused one opened no file
    held.close()
    assert space.used == 0
