"""The conversion cache (issue 19): pure conversions answered again without a call upstream.

One job per module: ``policy`` (what may be cached), ``key`` and ``multipart`` (what a request
is), ``store`` (the Protocol), ``disk`` and ``redis_store`` (the two engines), ``flight`` (one
upstream call per key in flight), ``location`` (the ``cache_store`` setting), ``step`` (the
pipeline's lookup and store step), ``cli`` (``aspose-proxy cache``). This file imports nothing:
``proxy.settings`` imports ``location`` and must stay cheap.
"""
