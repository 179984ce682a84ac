"""Usage accounting: count the calls, keep them in a store, cap them with budgets and rates.

    rules.py    the settings' shapes (budgets, rate limits, store URL) and the product list
    counter.py  in-memory aggregation on the hot path, a batched flush off it
    store.py    the Protocol every store implements; ``open_store(url)``
    sqlite.py   the default store (stdlib sqlite3 in a thread, WAL)
    redis.py    the shared store for several processes or machines (atomic budgets)
    budgets.py  budget pools and per-client token buckets
    gate.py     the step around the forwarder: check, forward, count
    report.py   the ``/_proxy/usage`` JSON and the ``usage`` command's table

Imports nothing at package level: ``proxy.settings`` imports ``proxy.usage.rules``.
"""
