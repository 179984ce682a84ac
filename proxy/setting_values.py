"""How a setting's text becomes a value, and what a valid value looks like (issue 18).

Env vars and flags are text: durations may be written ``30s``, ``5m``, ``1h30m`` as well as plain
seconds; lists of words as ``a,b`` as well as JSON. A rejected value is reported with an example
of a valid one, taken from the field's ``examples`` or derived from its type; the settings
reference (``docs/settings.md``) shows the same examples.
"""

from __future__ import annotations

import json
import re
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BeforeValidator
from pydantic.fields import FieldInfo

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
DURATION_EXAMPLE = "30s, 5m, 1h30m or 300"


def parse_duration(value: object) -> object:
    """``"1h30m"`` -> 5400.0, ``"250ms"`` -> 0.25; numbers and number text pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError("not a duration")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


# A number of seconds that may also be written as a duration: `upstream_timeout = "5m"`.
Seconds = Annotated[float, BeforeValidator(parse_duration)]
WholeSeconds = Annotated[int, BeforeValidator(parse_duration)]


def format_duration(seconds: float) -> str:
    """5400 -> ``1h30m``, 30 -> ``30s``, 0.5 -> ``0.5s``: how a duration is best written."""
    if seconds <= 0 or seconds != int(seconds):
        return f"{seconds:g}s"
    whole, parts = int(seconds), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


def comma_list(value: object) -> object:
    """A list setting's text: a JSON list, or items separated by commas."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def is_duration(field: FieldInfo) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in field.metadata)


def kind(field: FieldInfo) -> str:
    """The type in words, for the settings reference and error lines."""
    if is_duration(field):
        return "duration"
    annotation = _unoptional(field.annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(annotation))
    if origin is list:
        (item,) = typing.get_args(annotation)
        return "list of strings" if item is str else "list of tables"
    if origin is dict:
        return "table"
    names = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if annotation in names:
        return names[annotation]
    return getattr(annotation, "__name__", str(annotation)).lower().replace("secretstr", "secret")


def example(field: FieldInfo) -> str:
    """A valid value as one would type it in an env var."""
    if field.examples:
        return str(field.examples[0])
    default: Any = field.get_default(call_default_factory=True)
    if is_duration(field):
        return format_duration(default) if default else "30s"
    annotation = _unoptional(field.annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return str(typing.get_args(annotation)[0])
    if annotation is bool:
        return "true" if not default else "false"
    if isinstance(default, list) and default and all(isinstance(v, str) for v in default):
        return ",".join(default)
    if default not in (None, "", [], {}):
        return str(default)
    return {int: "1", float: "1.5", str: "text"}.get(annotation, "")


def error_example(field: FieldInfo) -> str:
    """What to show after a rejected value: every way a duration may be written."""
    return DURATION_EXAMPLE if is_duration(field) else example(field)


def plain_message(pydantic_message: str) -> str:
    """pydantic's words made short: "Input should be a valid integer, unable to parse string
    as an integer" -> "must be a valid integer"."""
    message = pydantic_message.removeprefix("Value error, ")
    if message == "Field required":  # a table's field left out
        return "required"
    if message.startswith("Input should"):
        message = message.split(", unable to")[0].replace("Input should", "must", 1)
    return message


def _unoptional(annotation: Any) -> Any:
    """``X | None`` -> ``X``."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation
