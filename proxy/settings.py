"""The proxy's settings and where each value came from.

Sources, highest priority first: CLI flags > env vars ``ASPOSE_PROXY_*`` > TOML file > defaults.
Each layer is read on its own (rather than merged inside pydantic-settings) so that ``config``
can say where every value came from and a validation error can name the source of the bad value.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from proxy.cache.location import check_cache_store
from proxy.setting_values import (
    Seconds,
    WholeSeconds,
    comma_list,
    error_example,
    example,
    plain_message,
)
from proxy.usage.rules import Budget, RateLimit, check_store_url, default_store_url

ENV_PREFIX = "ASPOSE_PROXY_"
CONFIG_ENV_VAR = f"{ENV_PREFIX}CONFIG"
# What Kubernetes injects for a Service named aspose-proxy[-anything] (service links):
# ..._SERVICE_HOST, ..._SERVICE_PORT[_NAME], ..._PORT=tcp://ip:port, ..._PORT_8080_TCP[_ADDR...].
_SERVICE_LINK_NAME = re.compile(
    r"^\w*?_(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT_\d+_(TCP|UDP|SCTP)(_PROTO|_PORT|_ADDR)?)$"
)
_SERVICE_LINK_VALUE = re.compile(r"^(tcp|udp|sctp)://", re.IGNORECASE)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MiB = 1024 * 1024
# Access keys and local client secrets: at least this long (issue 16), and how to make one.
MIN_CLIENT_SECRET_LENGTH = 16
# The loopback networks: the default of allow_from (checked against it in the bind warning).
DEFAULT_ALLOW_FROM = ("127.0.0.0/8", "::1/128")
MAKE_SECRET = 'python3 -c "import secrets; print(secrets.token_urlsafe(24))"'  # noqa: S105 (a command)

T = TypeVar("T")


class _ReadAtStart:
    """The marker of ``AtStart``; pydantic keeps it in the field's ``metadata``."""

    def __repr__(self) -> str:
        return "READ_AT_START"


READ_AT_START: Final = _ReadAtStart()
# A setting read once at start-up (listening socket, sessions, pools, files, workers, log output,
# stores): a reload that changes it keeps the running value and says a restart is needed.
AtStart = Annotated[T, READ_AT_START]


class Settings(BaseSettings):
    """Every setting is a top-level TOML key and the env var ``ASPOSE_PROXY_<KEY>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
        frozen=True,
    )

    client_id: str = Field(
        "",
        examples=["0a1b2c3d-aaaa-bbbb-cccc-0123456789ab"],
        description="Aspose Cloud application client id",
    )
    client_secret: SecretStr | None = Field(
        None, examples=["(from a secret store)"], description="its secret (env or TOML only)"
    )
    client_secret_file: Path | None = Field(
        None,
        examples=["/run/secrets/aspose_client_secret"],
        description="file holding the secret, e.g. /run/secrets/aspose_client_secret",
    )
    upstream_url: AtStart[str] = Field("https://api.aspose.cloud", description="where requests go")
    token_url: AtStart[str] = Field(
        "",
        examples=["https://id.aspose.cloud/connect/token"],
        description="token endpoint (default {upstream_url}/connect/token)",
    )
    ca_file: AtStart[Path | None] = Field(
        None,
        examples=["/etc/ssl/certs/corporate-ca.pem"],
        description="PEM CA certificates trusted for upstream TLS besides the system's",
    )
    host: AtStart[str] = Field("127.0.0.1", description="address to listen on")
    port: AtStart[int] = Field(8080, description="port to listen on, 0 picks a free one")
    upstream_timeout: AtStart[Seconds] = Field(
        300.0, gt=0, description="seconds to wait for upstream response headers"
    )
    connect_timeout: AtStart[Seconds] = Field(
        10.0, gt=0, description="seconds to open an upstream connection"
    )
    read_timeout: AtStart[Seconds] = Field(
        60.0, gt=0, description="longest gap between body chunks, seconds"
    )
    upstream_keepalive_timeout: AtStart[Seconds] = Field(
        15.0,
        gt=0,
        description="seconds idle upstream connections stay pooled (below load balancers' idle)",
    )
    token_wait_timeout: AtStart[Seconds] = Field(
        5.0, gt=0, description="how long a request waits for a token fetch, seconds"
    )
    token_timeout: AtStart[Seconds] = Field(
        30.0, gt=0, description="seconds one token request may take (the proxy's and check's)"
    )
    body_memory_limit: AtStart[int] = Field(
        1 * MiB, ge=0, description="request body bytes kept in memory before spilling to disk"
    )
    max_body_size: AtStart[int] = Field(
        2048 * MiB, gt=0, description="larger request bodies get 413"
    )
    spool_dir: AtStart[Path | None] = Field(
        None,
        examples=["/srv/aspose-proxy/spool"],
        description="where spilled bodies go (system temp dir)",
    )
    spool_max_size: AtStart[int] = Field(
        8192 * MiB,
        gt=0,
        description="bytes all spool files of the process may hold at once; beyond it 507",
    )
    shutdown_grace: AtStart[Seconds] = Field(
        30.0, ge=0, description="seconds in-flight requests get after SIGTERM"
    )
    request_header_timeout: AtStart[Seconds] = Field(
        10.0, gt=0, description="seconds a client has to send a whole request head"
    )
    request_body_timeout: AtStart[Seconds] = Field(
        30.0, gt=0, description="seconds without a request body byte before 408 and a close"
    )
    max_connections_per_client: AtStart[int] = Field(
        256,
        ge=1,
        description="simultaneous connections one client may hold (all of loopback is one "
        "client, an IPv6 client is its /64), per process",
    )
    max_connections: AtStart[int] = Field(
        1024, ge=1, description="simultaneous connections of all clients together, per process"
    )
    workers: AtStart[int] = Field(
        1, ge=0, le=256, description="processes sharing the port (SO_REUSEPORT); 0 = one per CPU"
    )
    local_token_endpoint: AtStart[bool] = Field(
        True, description="answer SDK token requests locally with a placeholder"
    )
    local_clients: AtStart[dict[str, SecretStr]] = Field(
        default_factory=dict,
        examples=['{"my-app": "a-local-secret-of-16-chars-or-more"}'],
        description="client id -> secret the local endpoint accepts",
    )
    allow_from: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALLOW_FROM),
        description="CIDRs of client addresses that may use the proxy (others get 403)",
    )
    metrics_allow_from: list[str] = Field(
        default_factory=list,
        examples=["10.42.0.0/16"],
        description="more CIDRs that may read /metrics only (a Prometheus network)",
    )
    access_keys: dict[str, SecretStr] = Field(
        default_factory=dict,
        examples=['{"ci-job": "a-key-of-16-characters-or-more"}'],
        description="client name -> key sent as X-Proxy-Key (env/TOML only)",
    )
    require_client_auth: bool = Field(
        False, description="forward only with a valid X-Proxy-Key or local client token"
    )
    allow_methods: list[str] = Field(
        default_factory=list,
        examples=["GET,PUT"],
        description="HTTP methods forwarded; empty = all",
    )
    allow_paths: list[str] = Field(
        default_factory=list,
        examples=["/v4.0/words/,/v3.0/pdf/"],
        description="path prefixes forwarded, e.g. /v4.0/words/; empty = all",
    )
    allow_origins: list[str] = Field(
        default_factory=list,
        examples=["http://localhost:3000"],
        description="web page origins allowed to call the proxy",
    )
    allow_hosts: list[str] = Field(
        default_factory=list,
        examples=["aspose-proxy.internal"],
        description="Host names answered besides localhost, IP literals and this machine's name",
    )
    log_format: AtStart[Literal["json", "console"] | None] = Field(
        None, examples=["json"], description="json (default off a terminal) or console"
    )
    log_level: str = Field("info", description="debug, info, warning, error or critical")
    log_flush_interval: AtStart[Seconds] = Field(
        1.0, ge=0, description="seconds ordinary log lines may wait to be written in a batch"
    )
    usage_store: AtStart[str] = Field(
        default_factory=default_store_url,
        examples=["sqlite:///var/lib/aspose-proxy/usage.db"],
        description="where call counts live: sqlite:///path/usage.db, redis://host:port/db or off",
    )
    usage_store_password: AtStart[SecretStr | None] = Field(
        None,
        examples=["(from a secret store)"],
        description="the Redis password for usage_store (env or TOML only)",
    )
    usage_flush_interval: AtStart[Seconds] = Field(
        1.0, gt=0, description="seconds call counts wait in memory before a batched write"
    )
    budgets: list[Budget] = Field(
        default_factory=list,
        examples=['[{"client": "*", "product": "words", "period": "month", "calls": 1000}]'],
        description="call caps: [{client, product, period, calls}]",
    )
    rate_limits: list[RateLimit] = Field(
        default_factory=list,
        examples=['[{"client": "*", "per_second": 5, "burst": 10}]'],
        description="token buckets: [{client, per_second, burst}]",
    )
    cache_store: AtStart[str] = Field(
        "off",
        examples=["disk"],
        description="conversion cache: off, disk, file:///absolute/dir or redis://host:port/db",
    )
    cache_store_password: AtStart[SecretStr | None] = Field(
        None,
        examples=["(from a secret store)"],
        description="the Redis password for cache_store (env or TOML only)",
    )
    cache_ttl: AtStart[WholeSeconds] = Field(
        604800, gt=0, description="seconds a cached conversion is served"
    )
    cache_max_size: AtStart[int] = Field(
        1024 * MiB, gt=0, description="bytes the disk cache may hold (least recently used go)"
    )
    cache_max_entry_size: AtStart[int] = Field(
        64 * MiB, gt=0, description="larger conversion answers are not cached"
    )
    cache_scope: AtStart[Literal["shared", "client"]] = Field(
        "shared", description="shared: one cache for all clients; client: entries per client"
    )

    @classmethod
    def restart_only(cls) -> frozenset[str]:
        """The settings typed ``AtStart[...]``: a reload cannot change them."""
        return frozenset(n for n, f in cls.model_fields.items() if READ_AT_START in f.metadata)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any
    ) -> Any:
        """Only explicit values: ``load_settings`` reads and layers the sources itself."""
        return (init_settings,)

    @field_validator("port")
    @classmethod
    def _port_in_range(cls, port: int) -> int:
        if not 0 <= port <= 65535:
            raise ValueError("must be 0..65535")
        return port

    @field_validator("usage_store")
    @classmethod
    def _store_url(cls, url: str) -> str:
        return check_store_url(url)

    @field_validator("cache_store")
    @classmethod
    def _cache_store_url(cls, url: str) -> str:
        return check_cache_store(url)

    @field_validator("budgets", "rate_limits", mode="before")
    @classmethod
    def _json_list(cls, value: object) -> object:
        """A CLI flag brings the list as JSON text (``_read_env`` parses env vars)."""
        return json.loads(value) if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level.lower()

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator(
        "allow_from",
        "metrics_allow_from",
        "allow_methods",
        "allow_paths",
        "allow_origins",
        "allow_hosts",
        mode="before",
    )
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """A flag's or env var's value: a JSON list, or items separated by commas."""
        return comma_list(value)

    @field_validator("allow_from", "metrics_allow_from")
    @classmethod
    def _cidrs(cls, cidrs: list[str]) -> list[str]:
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address or CIDR like 10.0.0.0/8") from None
        return cidrs

    @field_validator("allow_paths")
    @classmethod
    def _absolute_paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must start with /")
        return paths

    @field_validator("access_keys", "local_clients")
    @classmethod
    def _strong_keys(cls, keys: dict[str, SecretStr]) -> dict[str, SecretStr]:
        """A short key can be guessed (issue 16: ~1,900 tries a second); a throttle would lock
        out every local client together, so a weak key is refused at start instead."""
        for name, key in keys.items():
            if not name or not key.get_secret_value():
                raise ValueError("every entry needs a non-empty name and secret")
            if len(key.get_secret_value()) < MIN_CLIENT_SECRET_LENGTH:
                raise ValueError(
                    f"the secret of {name!r} is shorter than {MIN_CLIENT_SECRET_LENGTH} "
                    f"characters; make a good one with: {MAKE_SECRET}"
                )
        return keys

    @field_validator("ca_file")
    @classmethod
    def _loadable_ca_file(cls, path: Path | None) -> Path | None:
        """Read once here so that a bad file stops start-up (exit 2), not the first request.
        A bare context: loading the system's CAs too would only cost time (~50 ms)."""
        if path is not None:
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
            except ssl.SSLError:  # an OSError too: caught first
                raise ValueError(f"{path} holds no PEM CA certificate") from None
            except OSError as exc:
                raise ValueError(f"cannot read {path} ({exc.strerror or exc})") from None
        return path

    @field_validator("upstream_url", "token_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if url and not url.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return url.rstrip("/")

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        if self.client_secret is not None and self.client_secret_file is not None:
            raise ValueError(
                "client_secret_file: set client_secret or client_secret_file, not both"
            )
        if self.client_secret_file is not None:
            try:
                secret = read_secret_file(self.client_secret_file)
            except OSError as exc:
                raise ValueError(
                    f"client_secret_file: cannot read {self.client_secret_file} "
                    f"({exc.strerror or exc})"
                ) from None
            if not secret:  # else a rejected token request that counts toward the lockout
                raise ValueError(
                    f"client_secret_file: {self.client_secret_file} is empty; write the "
                    "secret into it, e.g. printf '%s' \"$SECRET\" > FILE"
                )
            object.__setattr__(self, "client_secret", SecretStr(secret))
        if not self.token_url:
            object.__setattr__(self, "token_url", f"{self.upstream_url}/connect/token")
        local = self.local_clients and self.local_token_endpoint  # can issue client tokens
        if self.require_client_auth and not (self.access_keys or local):
            raise ValueError(
                "require_client_auth: set access_keys or local_clients (with "
                "local_token_endpoint on) too, or no client could authenticate"
            )
        return self

    @property
    def named_secrets(self) -> tuple[tuple[str, str], ...]:
        """Every configured secret with the setting it comes from (``access_keys.ci-job``)."""
        named = [
            (f"local_clients.{k}", v.get_secret_value()) for k, v in self.local_clients.items()
        ]
        named += [(f"access_keys.{k}", v.get_secret_value()) for k, v in self.access_keys.items()]
        if self.usage_store_password is not None:
            named.append(("usage_store_password", self.usage_store_password.get_secret_value()))
        if self.cache_store_password is not None:
            named.append(("cache_store_password", self.cache_store_password.get_secret_value()))
        if self.client_secret is not None:
            named.append(("client_secret", self.client_secret.get_secret_value()))
        return tuple((name, value) for name, value in named if value)

    @property
    def secret_values(self) -> tuple[str, ...]:
        """Every configured secret, for the log redactor."""
        return tuple(value for _, value in self.named_secrets)


def read_secret_file(path: Path) -> str:
    """The secret in ``path`` without surrounding whitespace (``echo secret > file`` adds a
    newline; an editor may add spaces); raises ``OSError``."""
    return path.read_text(encoding="utf-8").strip()


class SettingsError(Exception):
    """Settings could not be loaded; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedSettings:
    """The settings and, per key, the human name of the source that set it."""

    settings: Settings
    origins: dict[str, str]


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError([f"config: file {path} does not exist"]) from None
    except OSError as exc:
        raise SettingsError([f"config: cannot read {path} ({exc.strerror})"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"config: {path} is not valid TOML ({exc})"]) from None


# Paths in a TOML file are relative to that file, not to wherever the proxy was started.
_FILE_PATHS = ("client_secret_file", "ca_file")


def _relative_to(values: dict[str, Any], base: Path) -> dict[str, Any]:
    for key in _FILE_PATHS:
        if isinstance(values.get(key), str) and not Path(values[key]).is_absolute():
            values[key] = str(base / values[key])
    return values


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' env reading, except that a list of words may be ``a,b`` (not JSON)."""

    def decode_complex_value(self, field_name: str, field: Any, value: Any) -> Any:
        try:
            return super().decode_complex_value(field_name, field, value)
        except ValueError:
            if field.annotation == list[str]:
                return value  # the field's validator splits it at the commas
            raise


def _read_env() -> dict[str, Any]:
    """``ASPOSE_PROXY_<KEY>`` (any case) for each setting; maps and models as JSON."""
    try:
        return dict(_EnvSource(Settings)())
    except Exception as exc:  # pydantic-settings' SettingsError: bad JSON in a complex value
        match = re.search(r'field "(\w+)"', str(exc))
        name = match.group(1) if match else "settings"
        field = Settings.model_fields.get(name)
        hint = f"; a valid value: {example(field)}" if field is not None else ""
        raise SettingsError(
            [f"{name}: not valid JSON (from {ENV_PREFIX}{name.upper()}){hint}"]
        ) from None


def _is_service_link(port: object) -> bool:
    return isinstance(port, str) and bool(_SERVICE_LINK_VALUE.match(port.strip()))


def _refuse_service_link(port: object) -> None:
    """``ASPOSE_PROXY_PORT=tcp://10.0.0.1:8080`` is Kubernetes' doing, not the user's: say so."""
    if isinstance(port, str) and _is_service_link(port):
        raise SettingsError(
            [
                f"port: {ENV_PREFIX}PORT is {port.strip()!r}, a Kubernetes service link (a "
                "Service named aspose-proxy in the namespace sets it in every pod); set "
                "enableServiceLinks: false in the pod spec (or pass --port)"
            ]
        )


def unknown_env_vars(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``ASPOSE_PROXY_*`` names that are no setting (typos), each with the closest known name.

    Kubernetes service links (``ASPOSE_PROXY_SERVICE_HOST``, ``..._PORT_8080_TCP``, a
    ``tcp://`` value) are recognised and skipped: the user did not write them.
    """
    known = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    known.add(CONFIG_ENV_VAR)
    found = []
    for name, value in sorted(environ.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if _SERVICE_LINK_NAME.match(upper) or _SERVICE_LINK_VALUE.match(value.strip()):
            continue
        close = difflib.get_close_matches(upper, sorted(known), n=1, cutoff=0.8)
        found.append((name, close[0] if close else None))
    return found


def typo_hints(environ: Mapping[str, str]) -> list[str]:
    """One line per misspelt ``ASPOSE_PROXY_*`` name that has a close match: shown before a
    settings error, since the typo is often why a setting is missing."""
    return [
        f"unknown variable {name} ignored (did you mean {close}?)"
        for name, close in unknown_env_vars(environ)
        if close
    ]


def load_settings(
    cli: Mapping[str, Any] | None = None,
    config_path: str | Path | None = None,
    *,
    listens: bool = True,
) -> LoadedSettings:
    """Layer defaults < TOML < env < CLI and validate; raise ``SettingsError`` with clear lines.

    ``listens``: the command binds ``port`` (``run``); the others ignore a Kubernetes service
    link in ``ASPOSE_PROXY_PORT``.
    """
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    layers: list[tuple[dict[str, Any], str]] = []
    path = config_path or os.environ.get(CONFIG_ENV_VAR) or None
    if path:
        layers.append((_relative_to(_read_toml(Path(path)), Path(path).parent), str(path)))
    env = _read_env()
    if "port" not in cli:
        if listens:
            _refuse_service_link(env.get("port"))
        elif _is_service_link(env.get("port")):
            del env["port"]
    layers.append((env, "env"))
    layers.append((dict(cli), "cli"))

    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for values, source in layers:
        for key, value in values.items():
            merged[key] = value
            if source == "env":
                origins[key] = f"{ENV_PREFIX}{key.upper()}"
            elif source == "cli":
                origins[key] = f"--{key.replace('_', '-')}"
            else:
                origins[key] = source
    try:
        settings = Settings(**merged)
    except ValidationError as exc:
        raise SettingsError(_describe(exc, origins)) from None
    for key in Settings.model_fields:
        origins.setdefault(key, "default")
    if "client_secret_file" in merged:
        origins["client_secret"] = f"client_secret_file ({settings.client_secret_file})"
    if "token_url" not in merged:
        origins["token_url"] = "default (from upstream_url)"  # noqa: S105
    return LoadedSettings(settings, origins)


def _describe(exc: ValidationError, origins: Mapping[str, str]) -> list[str]:
    """One line per problem: ``key: message (from source)``, never the rejected value."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        message = plain_message(str(error["msg"]))
        if error["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(Settings.model_fields), n=1)
            message = f"unknown setting (did you mean {close[0]}?)" if close else "unknown setting"
        if not key and ": " in message:  # model-level checks name their own key
            key, message = message.split(": ", 1)
        where = origins.get(key, "default")
        field = Settings.model_fields.get(key)
        listed = "one of" in message or error["type"] == "literal_error"  # choices named
        valid = error_example(field) if field is not None and error["loc"] and not listed else ""
        hint = f"; a valid value: {valid}" if valid else ""
        # Inside a list or table, the entry and field at fault: budgets[0].calls.
        inner = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"][1:])
        lines.append(f"{key or 'settings'}{inner}: {message} (from {where}){hint}")
    return lines
