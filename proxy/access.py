"""Who may connect, who may use the proxy and what they may do: pure decisions, no I/O.

``AccessRules.from_settings`` parses every rule once (networks, host names, key digests, path
prefixes); each check then takes plain request facts and returns a client name, ``None`` or
raises a ``ProxyError``. The middleware applies them in one fixed order (see its docstring):
address -> Host/Origin -> client auth -> operation. Rules that are empty or open are skipped,
and the two checks that run on every request (address, Host) remember their answers.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from multidict import istr

from proxy.bounded_cache import BoundedCache
from proxy.errors import (
    AddressNotAllowed,
    ClientAuthRequired,
    HostNotAllowed,
    OperationNotAllowed,
    OriginNotAllowed,
)
from proxy.paths import normalise
from proxy.settings import DEFAULT_ALLOW_FROM, Settings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# The private ranges the Docker image adds (RFC 1918, RFC 4193), quoted in the bind warning.
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
KEY_HEADER = istr("X-Proxy-Key")
FETCH_SITE = istr("Sec-Fetch-Site")  # set by browsers on every request (Fetch Metadata)
_CACHE_LIMIT = 1024  # distinct client addresses or Host values remembered per rules object
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
_CROSS_SITE = frozenset({"cross-site", "same-site"})  # Sec-Fetch-Site values of other pages


class RouteKind(enum.Enum):
    """Which guards a route gets: probes none, /metrics its own address list, local token
    endpoints address and Host/Origin, forwarded requests all of them."""

    PROBE = "probe"
    METRICS = "metrics"
    LOCAL = "local"
    FORWARD = "forward"


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    """CIDRs (or bare addresses) as networks; host bits are ignored (``10.1.2.3/8``)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


def is_loopback_host(host: str) -> bool:
    """Is ``host`` (an address or name from settings, no port) a loopback listener?"""
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _address(remote: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:
        return None
    # A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _host_name(host: str) -> str:
    """The name part of a Host header value, lower case: no port, no brackets, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name, sep, port = host.rpartition(":")
        if not sep or not port.isdigit() or ":" in name:  # no port, or a bare IPv6 address
            name = host
    return name.rstrip(".")


def _is_local_name(name: str, own_names: frozenset[str]) -> bool:
    """``localhost``, this machine's own name, or an IP literal (v4 or bracketed v6): a name a
    DNS-rebinding page cannot serve its own content under."""
    if name == "localhost" or name in own_names:
        return True
    return (name[:1].isdigit() or ":" in name) and _address(name) is not None


def own_host_names(hostname: str) -> frozenset[str]:
    """This machine's name (``socket.gethostname()``) and its first label, lower case."""
    name = hostname.strip().lower().rstrip(".")
    return frozenset(n for n in (name, name.partition(".")[0]) if n)


def _path_prefix(prefix: str) -> str:
    """Prefixes match whole segments: ``/v4.0/words`` matches ``/v4.0/words/x``, not
    ``/v4.0/wordsx``. Lower case: the Aspose API's routes are case-insensitive."""
    return prefix.strip().lower().rstrip("/") + "/"


def _answers() -> BoundedCache[Any, bool]:
    return BoundedCache(_CACHE_LIMIT)


@dataclass(frozen=True, slots=True, eq=False)
class AccessRules:
    """Every access rule, parsed once; replaced whole when settings are reloaded."""

    allow_from: tuple[Network, ...] = ()
    metrics_allow_from: tuple[Network, ...] = ()
    allow_hosts: frozenset[str] = frozenset()
    own_names: frozenset[str] = frozenset()  # this machine's host name
    allow_origins: frozenset[str] = frozenset()
    access_keys: tuple[tuple[str, bytes], ...] = ()  # (name, SHA-256 of the key)
    local_clients: frozenset[str] = frozenset()
    require_client_auth: bool = False
    allow_methods: frozenset[str] = frozenset()
    allow_paths: tuple[str, ...] = ()
    # Derived, so the middleware skips what cannot refuse anything with one attribute read.
    everyone: bool = field(init=False, default=False)
    key_names: dict[bytes, str] = field(init=False, default_factory=dict, repr=False)
    identifies_clients: bool = field(init=False, default=False)
    limits_operations: bool = field(init=False, default=False)
    # Remembered answers (the middleware reads them first): per client address, per Host value.
    address_answers: BoundedCache[str | None, bool] = field(default_factory=_answers, repr=False)
    metrics_address_answers: BoundedCache[str | None, bool] = field(
        default_factory=_answers, repr=False
    )
    host_answers: BoundedCache[str | None, bool] = field(default_factory=_answers, repr=False)
    path_answers: BoundedCache[str, bool] = field(default_factory=_answers, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, hostname: str | None = None) -> AccessRules:
        """``hostname``: this machine's name (default ``socket.gethostname()``)."""
        keys = tuple(
            (name, _digest(key.get_secret_value())) for name, key in settings.access_keys.items()
        )
        return cls(
            allow_from=parse_networks(settings.allow_from),
            metrics_allow_from=parse_networks(settings.metrics_allow_from),
            allow_hosts=frozenset(_host_name(h) for h in settings.allow_hosts),
            own_names=own_host_names(socket.gethostname() if hostname is None else hostname),
            allow_origins=frozenset(o.strip().lower().rstrip("/") for o in settings.allow_origins),
            access_keys=keys,
            local_clients=frozenset(settings.local_clients),
            require_client_auth=settings.require_client_auth,
            allow_methods=frozenset(m.upper() for m in settings.allow_methods),
            allow_paths=tuple(_path_prefix(p) for p in settings.allow_paths),
        )

    def __post_init__(self) -> None:
        v4 = any(n.version == 4 and n.prefixlen == 0 for n in self.allow_from)
        v6 = any(n.version == 6 and n.prefixlen == 0 for n in self.allow_from)
        object.__setattr__(self, "everyone", v4 and v6)  # allow_from 0.0.0.0/0 and ::/0
        self.key_names.update((digest, name) for name, digest in self.access_keys)
        object.__setattr__(self, "identifies_clients", bool(self.access_keys or self.local_clients))
        object.__setattr__(self, "limits_operations", bool(self.allow_methods or self.allow_paths))

    def check_address(self, remote: str | None, *, metrics: bool = False) -> None:
        """``allow_from`` (plus ``metrics_allow_from`` for /metrics), else 403."""
        cache = self.metrics_address_answers if metrics else self.address_answers
        allowed = cache.get(remote)
        if allowed is None:
            ip = _address(remote) if remote else None
            networks = self.allow_from + self.metrics_allow_from if metrics else self.allow_from
            allowed = cache.remember(remote, ip is not None and any(ip in net for net in networks))
        if not allowed:
            setting = "allow_from or metrics_allow_from" if metrics else "allow_from"
            raise AddressNotAllowed(
                f"The address {remote or '(unknown)'} is not in the proxy's {setting} setting."
            )

    def admits(
        self, remote: str | None, host: str | None, origin: str | None, fetch_site: str | None
    ) -> bool:
        """Whether the address, Host and browser rules admit a caller (for answers that skip
        the guards: a DNS-rebound page from an admitted address is not admitted)."""
        try:
            self.check_address(remote)
            self.check_host_header(host)
            self.check_browser(origin, fetch_site)
        except (AddressNotAllowed, HostNotAllowed, OriginNotAllowed):
            return False
        return True

    def check_host_header(self, host: str | None) -> None:
        """DNS rebinding (issue 16: whatever the listener): a Host that is ``localhost``, an IP
        literal, this machine's name or in ``allow_hosts``, else 421.

        A request without Host (HTTP/1.0) cannot come from a browser and passes.
        """
        if host is None:
            return
        allowed = self.host_answers.get(host)
        if allowed is None:
            name = _host_name(host)
            allowed = self.host_answers.remember(
                host, _is_local_name(name, self.own_names) or name in self.allow_hosts
            )
        if not allowed:
            raise HostNotAllowed(
                "The Host header names neither localhost, an IP address, this machine's name "
                "nor a name in allow_hosts: add the name clients use to allow_hosts "
                "(ASPOSE_PROXY_ALLOW_HOSTS)."
            )

    def check_browser(self, origin: str | None, fetch_site: str | None) -> None:
        """A web page's request only from ``allow_origins``: one carrying ``Origin``, or one
        a browser marks ``Sec-Fetch-Site: cross-site`` or ``same-site`` (an ``<img>`` or a
        ``no-cors`` fetch sends no Origin). ``same-origin``, ``none`` or no header (curl, the
        SDKs) pass."""
        if origin is not None:
            if origin.lower() not in self.allow_origins:
                raise OriginNotAllowed("Requests from web pages of this origin are not allowed.")
        elif fetch_site is not None and fetch_site.lower() in _CROSS_SITE:
            raise OriginNotAllowed(
                "Requests from other sites' web pages (Sec-Fetch-Site) are not allowed."
            )

    def client(
        self,
        key: str | None,
        authorization: str | None,
        local_client_of: Callable[[str | None], str | None],
    ) -> str | None:
        """The client's name (access key name or local client id), or None.

        The key's SHA-256 digest is looked up among the digests of the configured keys: the
        time taken depends on the digest, which a caller cannot steer towards a key's, so it
        shows neither which key matched nor how close a guess came (the lookup replaced a
        compare_digest over every key: the same guarantee for fewer instructions). With
        ``require_client_auth``, no valid credential is a 401.
        """
        name = None
        if key is not None and self.access_keys:
            try:
                name = self.key_names.get(hashlib.sha256(key.encode()).digest())
            except UnicodeEncodeError:  # a non-UTF-8 header byte: a wrong key (issue 16)
                name = None
        if name is None and self.local_clients:
            local = local_client_of(authorization)
            if local in self.local_clients:  # not "" (anonymous) nor a removed client
                name = local
        if name is None and self.require_client_auth:
            raise ClientAuthRequired(
                "This proxy requires X-Proxy-Key with an access key, or a bearer token from its "
                "token endpoint issued to one of its local clients."
            )
        return name

    def check_operation(self, method: str, raw_path: str) -> None:
        """``allow_methods`` and ``allow_paths`` (matched on the normalised path), else 403."""
        if self.allow_methods and method not in self.allow_methods:
            raise OperationNotAllowed(f"The method {method} is not allowed by allow_methods.")
        if self.allow_paths:
            key = raw_path.partition("?")[0]
            allowed = self.path_answers.get(key)
            if allowed is None:
                target = normalise(key)
                allowed = self.path_answers.remember(
                    key, target.clear and (target.path + "/").startswith(self.allow_paths)
                )
            if not allowed:
                raise OperationNotAllowed(
                    "The path is not under any prefix in allow_paths, or could be read as "
                    "another path (dot segments, encoded slashes or dots, %u escapes, invalid "
                    "UTF-8, full-width dots or slashes, control characters)."
                )


@dataclass(slots=True)
class AccessControl:
    """What the middleware's guards read: the current rules (swapped whole on reload), which
    guards each route gets, and how to read a local client's bearer token."""

    rules: AccessRules
    local_client_of: Callable[[str | None], str | None]
    route_kinds: dict[object, RouteKind] = field(default_factory=dict)
    # Told of each wrong credential: (client address, which credential).
    failed: Callable[[str | None, str], None] = field(default=lambda _address, _credential: None)

    def identify(
        self, rules: AccessRules, key: str | None, authorization: str | None, remote: str | None
    ) -> str | None:
        """``rules.client``, telling ``failed`` of a credential that names nobody (an
        ``X-Proxy-Key``, or a bearer token where local clients are configured)."""
        try:
            name = rules.client(key, authorization, self.local_client_of)
        except ClientAuthRequired:
            self._tell_failure(rules, key, authorization, remote)
            raise
        if name is None:
            self._tell_failure(rules, key, authorization, remote)
        return name

    def _tell_failure(
        self, rules: AccessRules, key: str | None, authorization: str | None, remote: str | None
    ) -> None:
        if key is not None and rules.access_keys:
            self.failed(remote, "access_key")
        elif authorization is not None and rules.local_clients:
            self.failed(remote, "bearer_token")

    def reload(self, settings: Settings) -> None:
        """A reload hook: the new settings' rules replace the old ones in one assignment."""
        self.rules = AccessRules.from_settings(settings)


def _no_local_client(_: str | None) -> str | None:
    return None


NO_LOCAL_CLIENTS: Callable[[str | None], str | None] = _no_local_client


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def startup_warnings(settings: Settings) -> list[str]:
    """Settings that are valid but probably not what the operator meant."""
    warnings = []
    if not is_loopback_host(settings.host) and tuple(settings.allow_from) == DEFAULT_ALLOW_FROM:
        ranges = ", ".join(f'"{r}"' for r in (*DEFAULT_ALLOW_FROM, *PRIVATE_RANGES))
        warnings.append(
            f"listening on {settings.host} but allow_from admits only loopback clients, so "
            "everyone else gets 403 address_not_allowed; set allow_from to the networks of "
            f"your clients, e.g. ASPOSE_PROXY_ALLOW_FROM='[{ranges}]'"
        )
    for name in ("upstream_url", "token_url"):
        parts = urlsplit(getattr(settings, name))
        if parts.scheme == "http" and not is_loopback_host(parts.hostname or ""):
            warnings.append(
                f"{name} is plain http:// to {parts.hostname}: the client secret and access "
                "tokens would cross the network unencrypted; use https://"
            )
    return warnings
