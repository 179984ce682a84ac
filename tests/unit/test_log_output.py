"""The batching log sink: ordinary lines wait (at most flush_interval), urgent ones do not."""

from __future__ import annotations

import asyncio
import io

from proxy.log_output import MAX_PENDING, LineSink


async def test_ordinary_lines_are_batched_until_the_interval_passes() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, flush_interval=0.2)
    sink.write("one")
    sink.write("two")
    assert stream.getvalue() == ""
    await asyncio.sleep(0.4)
    assert stream.getvalue() == "one\ntwo\n"
    sink.close()


async def test_an_urgent_line_writes_everything_pending_in_order() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, flush_interval=60)
    sink.write("access")
    sink.write("error", urgent=True)
    assert stream.getvalue() == "access\nerror\n"
    sink.close()


async def test_a_full_buffer_is_written_without_waiting() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, flush_interval=60)
    line = "x" * 1000
    for _ in range(MAX_PENDING // 1000 + 1):
        sink.write(line)
    assert stream.getvalue().count("\n") == MAX_PENDING // 1000 + 1
    sink.close()


def test_outside_an_event_loop_lines_are_written_at_once() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, flush_interval=60)
    sink.write("cli output")
    assert stream.getvalue() == "cli output\n"
    sink.close()


async def test_zero_interval_writes_every_line_and_close_flushes() -> None:
    stream = io.StringIO()
    sink = LineSink(stream, flush_interval=0)
    sink.write("now")
    assert stream.getvalue() == "now\n"
    batched = LineSink(stream, flush_interval=60)
    batched.write("pending")
    batched.close()
    assert stream.getvalue() == "now\npending\n"
    sink.close()
