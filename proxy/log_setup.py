"""structlog's processor chain: shared processors, then JSON or console; secrets redacted.

aiohttp's own stdlib loggers go through the same chain via ``ProcessorFormatter``.
Redaction runs after exception formatting, so tracebacks are redacted too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from proxy.access_log import AccessLine
from proxy.log_output import LineSink, SinkHandler, SinkLoggerFactory

LogFormat = Literal["json", "console"]
DEFAULT_FLUSH_INTERVAL = 1.0
REDACTED = "[REDACTED]"
# Configured secrets shorter than this are not masked wherever they occur: a 3-character
# secret would mask ordinary words and numbers in every line. Start-up warns about them.
MIN_SECRET_LENGTH = 8

# Anything that looks like a bearer credential, a JWT (or the start of one: base64url of '{"'),
# or a credential in a form body or query string. One pass of one regex per string.
_TOKEN_PATTERNS = (
    r"(?P<bearer>(?i:bearer)\s+)[^\s\"',;]+",
    r"eyJ[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]*){0,2}",
    r"(?P<field>(?i:client_secret|access_token|refresh_token)[\"']?\s*[=:]\s*[\"']?)[^&\s\"',}]+",
)
# Keys whose values are credentials whatever they look like (a parsed form, a header dict).
SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-proxy-key",
        "client_secret",
        "access_token",
        "refresh_token",
        "password",
        "secret",
        "token",
    }
)


# The request being answered, for every line logged while it is: set once per request (one
# ContextVar.set, cheaper than structlog's bind_contextvars) and added by ``add_request_id``.
CURRENT_REQUEST_ID: ContextVar[str | None] = ContextVar("aspose_proxy_request_id", default=None)


def add_request_id(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """The processor that names the request a line was logged for."""
    request_id = CURRENT_REQUEST_ID.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    return event_dict


# Added by the processors before the redactor, never from outside input.
_OWN_KEYS = frozenset({"timestamp", "level", "logger"})


def short_secrets(named: Iterable[tuple[str, str]]) -> list[str]:
    """The names of the configured secrets too short for the redactor to mask."""
    return [name for name, value in named if 0 < len(value) < MIN_SECRET_LENGTH]


def _mask(match: re.Match[str]) -> str:
    return (match.group("bearer") or match.group("field") or "") + REDACTED


class Redactor:
    """Masks tokens and the configured secrets in every string of an event, however nested."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._use(secrets)
        # Keys repeat (they come from code): remember which need a closer look.
        self._plain_keys: dict[str, bool] = {}

    def _use(self, secrets: Iterable[str]) -> None:
        literal = sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        patterns = [re.escape(s) for s in literal] + list(_TOKEN_PATTERNS)
        self._pattern = re.compile("|".join(patterns))
        self._secrets = tuple(literal)

    def add(self, secrets: Iterable[str]) -> None:
        """Mask these too from now on (a secret rotated in at run time)."""
        self._use([*self._secrets, *secrets])
        for listener in self._listeners:
            listener()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when a secret is added (remembered redactions go stale)."""
        self._listeners.append(listener)

    def _suspect(self, text: str) -> bool:
        """A cheap first look (plain substring tests, ~0.3 us): the full pattern costs
        microseconds per string, and almost no string in a log line holds a credential."""
        low = text.lower()
        if "eyj" in low or "bearer" in low or "_secret" in low or "_token" in low:
            return True
        for secret in self._secrets:  # noqa: SIM110 (a loop: any() and a generator cost more)
            if secret in text:
                return True
        return False

    def redact(self, text: str) -> str:
        if not self._suspect(text):
            return text
        return self._pattern.sub(_mask, text)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value) if self._suspect(value) else value
        if isinstance(value, int | float | bool) or value is None:
            return value
        if isinstance(value, dict):
            return {self._walk(k): self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self._walk(v) for v in value)
        return self.redact(str(value))

    def _value(self, key: object, value: Any) -> Any:
        if isinstance(key, str) and key.lower() in SENSITIVE_KEYS and value:
            return REDACTED
        return self._walk(value)

    def plain_key(self, key: str) -> bool:
        """Neither a credential's name nor suspect itself (keys repeat: remembered)."""
        plain = self._plain_keys.get(key)
        if plain is None:
            plain = key.lower() not in SENSITIVE_KEYS and not self._suspect(key)
            if len(self._plain_keys) < 1024:
                self._plain_keys[key] = plain
        return plain

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        suspect = self._suspect
        for key, value in list(event_dict.items()):
            if key in _OWN_KEYS or key[0] == "_":
                continue  # made by the chain itself, or structlog's meta keys
            if self.plain_key(key):
                kind = type(value)
                if kind in _PLAIN or (kind is str and not suspect(value)):
                    continue  # the common case, checked in one C call
            else:
                del event_dict[key]
                key = self.redact(key)
            event_dict[key] = self._value(key, value)
        return event_dict


_PLAIN = frozenset({int, float, bool, type(None)})


class IsoTimestamp:
    """``timestamp`` as structlog's ``TimeStamper(fmt="iso", utc=True)`` writes it, with the
    date-time part formatted once per second (a fifth of the cost, on every log line)."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            moment = datetime.fromtimestamp(second, UTC)
            self._second, self._prefix = second, moment.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict["timestamp"] = self.now()
        return event_dict


_LEAD = ("timestamp", "level", "event")


def lead_fields(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Every line starts with ``timestamp``, ``level``, ``event`` (issue 18): what a reader
    scans first, in the same place on every line."""
    lead = {key: event_dict.pop(key) for key in _LEAD if key in event_dict}
    lead.update(event_dict)
    return lead


# Built once: json.dumps(default=...) builds a new encoder on every call.
_json_encoder = json.JSONEncoder(default=repr)


def _dumps(obj: Any, **_: Any) -> str:
    return _json_encoder.encode(obj)


def default_format(stream: TextIO) -> LogFormat:
    """JSON in containers and pipes (stdout not a terminal), console on a terminal."""
    return "console" if sys.stdout.isatty() and stream.isatty() else "json"


def build_processors(
    log_format: LogFormat, secrets: Iterable[str] = ()
) -> tuple[list[Processor], Processor]:
    """The shared chain and the final renderer; tests render through exactly these."""
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        add_request_id,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        IsoTimestamp(),
        structlog.processors.StackInfoRenderer(),
        # Plain tracebacks: never local variables (they may hold secrets).
        structlog.processors.format_exc_info,
        Redactor(secrets),
        lead_fields,
    ]
    renderer: Processor
    if log_format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    return shared, renderer


def configure_logging(
    log_format: LogFormat | None = None,
    log_level: str = "info",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    flush_interval: float | None = None,
) -> LineSink:
    """Route structlog and stdlib logging through one chain to ``stream`` (stderr).

    ``flush_interval`` batches ordinary lines (None: 1 s, or 0 on a terminal).
    """
    global _sink, _access, _redactor
    stream = stream or sys.stderr
    if flush_interval is None:
        flush_interval = 0.0 if stream.isatty() else DEFAULT_FLUSH_INTERVAL
    shared, renderer = build_processors(log_format or default_format(stream), secrets)
    level = logging.getLevelNamesMapping()[log_level.upper()]
    if _sink is not None:
        _sink.close()
    _sink = sink = LineSink(stream, flush_interval)

    handler = SinkHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # We write one canonical line per request ourselves; aiohttp's access log would duplicate it.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=SinkLoggerFactory(sink),
        cache_logger_on_first_use=False,
    )
    # The per-request line gets a lean path of its own: no context to merge (the request id
    # is passed in), no stack or exception to render; same timestamp, redaction and renderer.
    timestamper = next(p for p in shared if isinstance(p, IsoTimestamp))
    _redactor = redactor = next(p for p in shared if isinstance(p, Redactor))
    _access = AccessLine(
        sink.write,
        level <= logging.INFO,
        timestamper.now,
        redactor.redact,
        (timestamper, redactor, lead_fields, renderer),
        json_lines=isinstance(renderer, structlog.processors.JSONRenderer),
    )
    redactor.on_change(_access.forget)
    return sink


def add_secrets(secrets: Iterable[str]) -> None:
    """Redact these values too (credentials reloaded at run time)."""
    if _redactor is not None:
        _redactor.add(secrets)


def set_log_level(log_level: str) -> None:
    """Change the level of every logger and of the access line (a settings reload)."""
    level = logging.getLevelNamesMapping()[log_level.upper()]
    logging.getLogger().setLevel(level)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))
    if _access is not None:
        _access.enabled = level <= logging.INFO


def access_logger() -> AccessLine:
    """The writer of the one line per request; logging is configured first if it was not."""
    if _access is None:
        configure_logging()
    assert _access is not None
    return _access


# The one sink of this process: logging configuration is process-wide by nature.
_sink: LineSink | None = None
_access: AccessLine | None = None
_redactor: Redactor | None = None
