"""What the proxy's one access-log line costs per request, and what caching/redaction change.

Calls ``proxy.log_setup.configure_logging`` exactly as ``aspose-proxy run`` does (JSON to a
file), then times the middleware's call
``log.info("request", method=..., path=..., status=..., duration_ms=...)`` with:
  * the module-level lazy logger as in proxy/middleware.py (cache_logger_on_first_use=False),
  * the same with ``structlog.configure(cache_logger_on_first_use=True)``,
  * each at level info (line written) and warning (line filtered out),
  * info without the Redactor processor (its share of the cost).
Also times ``uuid.uuid4().hex`` (request ids) against a prefix+counter id.
Single process, no sockets; a few seconds.

    .venv/bin/python bench/micro_logging.py --n 20000
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import tempfile
import timeit
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import structlog
from _common import machine_facts, table, write_results

from proxy.log_setup import Redactor, configure_logging


def time_call(fn: Any, n: int, repeat: int) -> float:
    """Median microseconds per call over ``repeat`` rounds of ``n`` calls."""
    rounds = timeit.repeat(fn, number=n, repeat=repeat)
    return statistics.median(rounds) / n * 1e6


def access_line(log: Any) -> Any:
    def call() -> None:
        log.info(
            "request", method="GET", path="/v4.0/words/storage/disc", status=200, duration_ms=1.23
        )

    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="calls per round (max 1e6)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; the median is kept")
    args = parser.parse_args(argv)
    if not 1 <= args.n <= 1_000_000 or not 1 <= args.repeat <= 50:
        parser.error("--n 1..1e6, --repeat 1..50")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "log", "w") as sink:
        secrets = ["bench-secret"]
        for level in ("info", "warning"):
            for cached in (False, True):
                configure_logging("json", level, secrets, stream=sink)
                if cached:
                    structlog.configure(cache_logger_on_first_use=True)
                structlog.contextvars.clear_contextvars()
                structlog.contextvars.bind_contextvars(request_id=uuid.uuid4().hex)
                log = structlog.get_logger("proxy.access")  # what middleware.py holds
                key = f"access line, level {level}, {'cached' if cached else 'lazy (as now)'}"
                results[key] = time_call(access_line(log), args.n, args.repeat)
        # the Redactor's share: the same chain without it
        configure_logging("json", "info", secrets, stream=sink)
        structlog.configure(cache_logger_on_first_use=True)
        procs = [p for p in structlog.get_config()["processors"] if not isinstance(p, Redactor)]
        structlog.configure(processors=procs)
        log = structlog.get_logger("proxy.access")
        results["access line, level info, cached, no Redactor"] = time_call(
            access_line(log), args.n, args.repeat
        )
        structlog.reset_defaults()

    prefix = os.urandom(6).hex()
    counter = itertools.count()
    results["request id: uuid.uuid4().hex"] = time_call(
        lambda: uuid.uuid4().hex, args.n, args.repeat
    )
    results["request id: prefix + counter"] = time_call(
        lambda: f"{prefix}{next(counter):010x}", args.n, args.repeat
    )

    print(table(["what", "us per call"], [[k, v] for k, v in results.items()]))
    path = write_results(
        "micro-logging",
        {"machine": machine_facts(), "n": args.n, "repeat": args.repeat, "us_per_call": results},
    )
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
