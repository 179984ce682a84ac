"""``aspose-proxy cache stats [--json]`` and ``aspose-proxy cache clear``: the configured store,
read or emptied without a running proxy."""

from __future__ import annotations

import argparse
import json
import sys

from proxy.cache.engines import open_cache_store
from proxy.settings import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cache`` command's own arguments (the setting flags are added by the caller)."""
    parser.add_argument("action", choices=("stats", "clear"), help="show the store or empty it")
    parser.add_argument("--json", action="store_true", help="stats as JSON")


async def run(settings: Settings, action: str, *, as_json: bool) -> int:
    store = open_cache_store(settings)
    if store is None:
        print("aspose-proxy: cache_store is off: nothing is cached", file=sys.stderr)
        return 1
    try:
        await store.open()
        if action == "clear":
            removed = await store.clear()
            print(f"removed {removed} entries from {store.description}")
            return 0
        stats = await store.stats()
    except Exception as exc:
        print(f"aspose-proxy: cannot use {store.description} ({exc})", file=sys.stderr)
        return 1
    finally:
        await store.close()
    report = {"store": store.description, "entries": stats.entries, "bytes": stats.bytes}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(f"store    {report['store']}\nentries  {stats.entries}\nbytes    {stats.bytes}")
    return 0
