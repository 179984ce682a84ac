"""Usage accounting: count the calls, keep them in a store, cap them with budgets and rates.

    rules.py    the settings' shapes (budgets, rate limits, store URL) and the product list
    counter.py  in-memory aggregation on the hot path, a batched flush off it
    store.py    the interface: the Protocols every store and ledger implements, their values
    memory.py   the in-process store (``off``) and ledger
    sqlite.py   the default store (stdlib sqlite3 in a thread, WAL; shared by the host)
    redis.py    the shared store for several processes or machines (atomic budgets)
    factory.py  ``open_store(url)``: the engine a ``usage_store`` URL names
    budgets.py  budget pools per period, reserved in the store's ledger
    rate_limiter.py  token buckets per rate-limit rule, taken in the store's ledger
    outage.py   one log line per store outage (budgets and rates alike)
    gate.py     the step around the forwarder: check, forward, count
    report.py   the ``/_proxy/usage`` JSON and the ``usage`` command's table

Imports nothing at package level: ``proxy.settings`` imports ``proxy.usage.rules``.
"""
