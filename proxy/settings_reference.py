"""The settings reference, ``docs/settings.md``, generated from the ``Settings`` model.

``python -m proxy.settings_reference > docs/settings.md`` writes it; a test fails when the file
is out of date. Names, env vars, flags, types, defaults, reload behaviour and examples come
from the model (``proxy/settings.py``); only the longer explanations live here, in ``NOTES``.
"""

from __future__ import annotations

import sys

from pydantic.fields import FieldInfo

from proxy.cli import NOT_FLAGS
from proxy.setting_values import example, format_duration, is_duration, kind
from proxy.settings import ENV_PREFIX, Settings

# Defaults that depend on the machine or on another setting, in words.
DEFAULT_TEXT = {
    "client_id": "(none; required)",
    "token_url": "`{upstream_url}/connect/token`",
    "spool_dir": "the system temporary directory",
    "log_format": "`json` off a terminal, else `console`",
    "usage_store": "`sqlite://$XDG_STATE_HOME/aspose-proxy/usage.db` (else `~/.local/state/...`)",
}
HEADER = """# Settings reference

<!-- Generated from the Settings model (proxy/settings.py) by
     `python -m proxy.settings_reference > docs/settings.md`; edit those, not this file. -->

Every setting is a key of the TOML file, the environment variable `ASPOSE_PROXY_<KEY>` and,
except secrets, a flag of `run` and `config` (`check`, `usage` and `cache` take the flags they
use). Durations may be written `30s`, `5m`, `1h30m`, `7d` or as seconds; lists in an environment
variable or a flag as `a,b` or JSON; sizes are bytes. "restart" settings keep their value on a
SIGHUP (a warning names them); the others change at once. How to give them, their precedence and
SIGHUP: [configuration.md](configuration.md).

| setting | environment variable | flag | type | default | on SIGHUP | example | meaning |
|---|---|---|---|---|---|---|---|
"""


def render() -> str:
    """The whole of ``docs/settings.md``."""
    restart = Settings.restart_only()
    rows = []
    for name, field in Settings.model_fields.items():
        flag = "(not a flag)" if name in NOT_FLAGS else f"`--{name.replace('_', '-')}`"
        cells = [
            f"`{name}`",
            f"`{ENV_PREFIX}{name.upper()}`",
            flag,
            kind(field),
            DEFAULT_TEXT.get(name) or _default(field),
            "restart" if name in restart else "at once",
            f"`{example(field)}`" if example(field) else "",
            NOTES.get(name) or f"{field.description}.",
        ]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return HEADER + "\n".join(rows) + "\n"


def _default(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if is_duration(field):
        return f"`{format_duration(value)}`"
    if value is None:
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024 * 1024 and value % (1024 * 1024) == 0:
        return f"`{value}` ({value // (1024 * 1024)} MiB)"
    if isinstance(value, list | dict):
        return (
            f"`{value!r}`".replace("'", '"')
            if value
            else ("`[]`" if isinstance(value, list) else "`{}`")
        )
    return f"`{value}`"


NOTES = {
    "client_id": ("Your Aspose Cloud application's client id."),
    "client_secret": (
        "Its client secret. Never logged or printed; not a flag. Set this or `client_secret_file`."
    ),
    "client_secret_file": (
        "A file holding the secret, e.g. `/run/secrets/aspose_client_secret`; surrounding"
        " whitespace (the newline of `echo secret > file`) is stripped, an empty file "
        "stops start-up (exit 2). A relative path in the TOML file is relative to that "
        "file. Setting both it and `client_secret` is an error."
    ),
    "upstream_url": (
        "The API every request is forwarded to; the client's raw path and query are "
        "appended unchanged."
    ),
    "token_url": (
        "The OAuth client-credentials token endpoint (e.g. "
        "`https://id.aspose.cloud/connect/token`)."
    ),
    "ca_file": (
        "A PEM file of CA certificates trusted for upstream TLS *in addition to* the "
        "system's, e.g. a TLS-inspecting corporate proxy's CA. TLS is always verified; an"
        " untrusted certificate fails closed (503 `token_unavailable` or 502 "
        "`upstream_tls_error`, nothing sent). The egress proxy comes from `HTTPS_PROXY` /"
        " `HTTP_PROXY` / `NO_PROXY`, read once at start-up. See "
        "[security.md](security.md#upstream-tls-and-egress-proxies)."
    ),
    "host": ("Address to listen on (the Docker image sets `0.0.0.0`)."),
    "port": ("Port to listen on; `0` picks a free one (the address is printed at start)."),
    "upstream_timeout": (
        "Wait this long for upstream's response headers (conversions are slow), else 504 "
        "`upstream_timeout`."
    ),
    "connect_timeout": (
        "Time to open a connection to upstream (a wait for a pooled connection does not "
        "count), else 502."
    ),
    "read_timeout": ("Longest gap between two chunks of upstream's response body."),
    "upstream_keepalive_timeout": (
        "Seconds an idle upstream connection stays pooled; keep it below your load "
        "balancer's idle timeout (AWS ALB: 60 s) so that the proxy, not the balancer, "
        "closes idle connections. See "
        "[reliability.md](reliability.md#upstream-faults-resets-stale-pooled-connections)."
    ),
    "token_wait_timeout": (
        "How long a request waits for a token being fetched before it gets 503 `token_unavailable`."
    ),
    "token_timeout": (
        "How long one token request (the proxy's, and `aspose-proxy check`'s) may take; a"
        " token endpoint answers fast or not at all, so this is not `upstream_timeout`."
    ),
    "body_memory_limit": (
        "Request bodies are kept (to replay them after a 401): up to this size in memory;"
        " larger ones with a `Content-Length` stream upstream as they arrive while a copy"
        " goes to a temporary file, larger chunked ones are spooled first."
    ),
    "max_body_size": (
        "Largest request body accepted, else 413 `body_too_large` (before the upload, "
        "with `Expect: 100-continue`)."
    ),
    "spool_dir": (
        "Where bodies over `body_memory_limit` are spilled; the files are removed on "
        "every path. Missing, unwritable or full: 507 `insufficient_storage` for such "
        "bodies, and a log line saying what to fix."
    ),
    "spool_max_size": (
        "Bytes the spool files of the process may hold at once, all bodies together (per "
        "process: per worker). A body whose declared length would pass it gets 507 "
        "`insufficient_storage` before it is read (no `100 Continue`); a chunked body "
        "that reaches it midway gets 507 and its file is removed."
    ),
    "request_body_timeout": (
        "Seconds a request body may send no byte while the proxy waits for one; then 408 "
        "`request_timeout`, the connection is closed, the spool file removed, and an "
        "upload already streaming upstream is cut short (upstream never gets a complete "
        "request)."
    ),
    "request_header_timeout": (
        "A client must send a whole request head (request line and headers) within this "
        "many seconds of connecting, or of the first byte of its next request on a "
        "kept-alive connection; else the connection is closed (slowloris)."
    ),
    "max_connections_per_client": (
        "Connections one client may hold at once (per process: per worker); further ones "
        "are closed as soon as they are accepted. All of loopback (127.0.0.0/8, `::1`) is"
        " one client, an IPv6 client is its /64. Other clients are unaffected."
    ),
    "max_connections": (
        "Connections of all clients together, per process (per worker); further ones are "
        "closed as soon as they are accepted and counted in `/metrics`."
    ),
    "shutdown_grace": (
        "On SIGTERM/SIGINT, how long in-flight requests may finish before the proxy exits."
    ),
    "workers": (
        "Worker processes sharing the port (`SO_REUSEPORT`); `0` = one per CPU. See [All "
        "cores](deployment.md#all-cores-run---workers-n)."
    ),
    "local_token_endpoint": (
        "Answer the SDKs' token requests (`/connect/token`, `/v4.0/words/connect/token`, "
        "`/v3.0/cells/connect/token`, `/v4.0/cells/connect/token`, `/oauth2/token`) "
        "locally with a placeholder token, so SDKs need no real secret."
    ),
    "local_clients": (
        "Client id \u2192 secret pairs the local token endpoint accepts (others get 400 "
        "`invalid_client`); the client id goes into the access log. In the environment as"
        ' JSON: `{"reporting-job": "<at least 16 characters>"}`; a secret shorter than 16'
        " characters stops start-up (exit 2). Not a flag."
    ),
    "allow_from": (
        "Client addresses (CIDRs) that may use the proxy, forwarded requests and local "
        "token endpoints alike; others get 403 `address_not_allowed`. `/healthz` and "
        "`/readyz` answer everyone. The Docker image adds the private ranges. As a flag: "
        "`--allow-from 10.0.0.0/8,127.0.0.0/8`."
    ),
    "metrics_allow_from": (
        "More CIDRs that may read `/metrics` (and nothing else): your Prometheus's network."
    ),
    "access_keys": (
        "Client name \u2192 key; a client sends the key as `X-Proxy-Key` (never forwarded, "
        "never logged) and the access log names it (`client`). JSON in the environment: "
        '`{"ci-job": "a-long-random-key"}`; a key shorter than 16 characters stops '
        'start-up (exit 2); make one with `python3 -c "import secrets; '
        'print(secrets.token_urlsafe(24))"`. Not a flag.'
    ),
    "require_client_auth": (
        "Forward only requests with a valid `X-Proxy-Key`, or `Authorization: Bearer` "
        "with a token the local token endpoint issued to one of `local_clients`; others "
        "get 401 `client_auth_required`. Needs `access_keys` or `local_clients`."
    ),
    "allow_methods": ("HTTP methods forwarded; others get 403 `operation_not_allowed`."),
    "allow_paths": (
        'Path prefixes forwarded, e.g. `["/v4.0/words/"]` (whole segments, '
        "case-insensitive, query not matched); others, and any path with dot segments or "
        "encoded dots or slashes, get 403 `operation_not_allowed`."
    ),
    "allow_origins": (
        "Web page origins allowed to call the proxy; a request with any other `Origin` "
        "header, or without `Origin` but marked `Sec-Fetch-Site: cross-site` or `same-site`,"
        " gets 403 `origin_not_allowed`. Requests with neither (curl, SDKs) are unaffected."
    ),
    "allow_hosts": (
        "Host names answered besides `localhost`, IP literals (`127.0.0.1`, `10.1.2.3`, "
        "`[::1]`) and this machine's own name (any port). On every listener any other "
        "`Host` gets 421 `host_not_allowed` (DNS rebinding): set the names your clients "
        'use, e.g. `["aspose-proxy"]` behind Compose or a Kubernetes Service.'
    ),
    "log_format": (
        "Log lines (on stderr) as JSON or coloured console text. Secrets and tokens are "
        "redacted either way."
    ),
    "log_level": ("`debug`, `info`, `warning`, `error` or `critical` (case-insensitive)."),
    "log_flush_interval": (
        "Seconds: ordinary log lines (the per-request access line) are written in batches"
        " at most this often, as Envoy's access log does; warnings and errors are written"
        " at once, pending lines at exit. `0` writes every line at once."
    ),
    "usage_store": (
        "Where call counts are kept: `sqlite:///absolute/path/usage.db`, "
        "`redis://host:port/db` (shared by replicas and workers; budgets atomic across "
        "them) or `off` (this process's memory only). See [Know and cap what you "
        "spend](usage.md)."
    ),
    "usage_store_password": (
        "The Redis password (a password inside `usage_store` is refused). Not a flag, "
        "never printed."
    ),
    "usage_flush_interval": (
        "Seconds call counts wait in memory before one batched write; a crash loses at "
        "most this interval's counts."
    ),
    "budgets": (
        'Call caps: a list of `{client, product, period, calls}`; `"*"` = all clients (or'
        " products) as one pool; `period` is `day` or `month` (UTC). Over a cap: 429 "
        "`budget_exhausted`. In the environment as JSON."
    ),
    "rate_limits": (
        'Token buckets: a list of `{client, per_second, burst}` (`"*"`: one bucket shared'
        " by all clients), shared by every process using the same `usage_store` (SQLite:"
        " this host; Redis: every replica; `off`: per process). Over it: 429 `rate_limited`."
    ),
    "cache_store": (
        "The conversion cache: `off`, `disk` (`$XDG_CACHE_HOME/aspose-proxy/cache`, else "
        "`~/.cache/aspose-proxy/cache`; `/var/cache/aspose-proxy/cache` in the image), "
        "`file:///absolute/dir`, or `redis://host:port/db` (shared by replicas; a Redis "
        "of its own with `maxmemory-policy allkeys-lru`). A repeated pure conversion is "
        "answered from it: no credit, `X-Cache: HIT`. See [cache.md](cache.md)."
    ),
    "cache_store_password": (
        "The cache Redis's password (a password inside `cache_store` is refused). Not a "
        "flag, never printed."
    ),
    "cache_ttl": ("Seconds an entry is served."),
    "cache_max_size": (
        "Bytes the disk cache may hold, entries and their metadata; the least recently "
        "used go first."
    ),
    "cache_max_entry_size": ("Larger answers are forwarded but not stored."),
    "cache_scope": (
        "`shared`: one cache for every client of the proxy; `client`: entries per client "
        "(see [security.md](security.md#the-conversion-cache))."
    ),
}


if __name__ == "__main__":
    sys.stdout.write(render())
