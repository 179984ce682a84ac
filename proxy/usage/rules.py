"""What the usage settings look like: budgets, rate limits, the store URL, the product list.

Pure data with validation, imported by ``proxy.settings`` (so it imports only leaf modules).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from proxy.redis_url import check_redis_url

# Label values are bounded: a path segment outside this list is counted as "other".
PRODUCTS = frozenset(
    [
        "3d",
        "barcode",
        "cells",
        "diagram",
        "email",
        "html",
        "imaging",
        "note",
        "ocr",
        "omr",
        "page",
        "pdf",
        "psd",
        "slides",
        "svg",
        "tasks",
        "tex",
        "words",
        "zip",
    ]
)
OTHER = "other"
ANY = "*"  # in a budget or rate limit: every client (or product), counted together as one pool
ANONYMOUS = "anonymous"
OFF = "off"


class Budget(BaseModel):
    """At most ``calls`` calls per UTC ``period`` for this client and product (``*`` = all)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: str = Field(min_length=1)
    product: str = ANY
    period: Literal["day", "month"] = "month"
    calls: int = Field(ge=0)

    @field_validator("product")
    @classmethod
    def _known_product(cls, product: str) -> str:
        product = product.lower()
        if product != ANY and product != OTHER and product not in PRODUCTS:
            known = ", ".join(sorted(PRODUCTS))
            raise ValueError(f"unknown product {product!r} (one of {known}, other or *)")
        return product


class RateLimit(BaseModel):
    """A token bucket: ``per_second`` calls on average, ``burst`` at once (``*``: one shared)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: str = Field(min_length=1)
    per_second: float = Field(gt=0)
    burst: int = Field(0, ge=0, description="0: per_second rounded up")

    @model_validator(mode="after")
    def _default_burst(self) -> RateLimit:
        if self.burst == 0:
            object.__setattr__(self, "burst", max(1, math.ceil(self.per_second)))
        return self


def state_dir() -> Path:
    """``$XDG_STATE_HOME/aspose-proxy``, else ``~/.local/state/aspose-proxy``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "aspose-proxy"


def default_store_url() -> str:
    return f"sqlite://{state_dir() / 'usage.db'}"


def check_store_url(url: str) -> str:
    """``off``, ``sqlite:///absolute/path.db`` or ``redis://host:port/db`` (no password in it)."""
    url = url.strip()
    if url.lower() == OFF:
        return OFF
    if url.startswith("sqlite://"):
        path = url.removeprefix("sqlite://")
        if not path.startswith("/") or path.rstrip("/") == "":
            raise ValueError("a sqlite store is sqlite:///absolute/path/usage.db")
        return url
    if url.startswith(("redis://", "rediss://")):
        return check_redis_url(url, "usage_store", "store")
    raise ValueError("must be off, sqlite:///path/usage.db or redis://host:port/db")


def sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite://"))


def kubernetes_sqlite_warning(
    store_url: str, has_limits: bool, environ: Mapping[str, str]
) -> str | None:
    """Issue 17: inside Kubernetes, budgets or rate limits on a SQLite store hold per pod only.

    SQLite is exact for the processes of one host; a pod cannot know how many replicas run, so
    the proxy warns whenever it runs in a pod (``KUBERNETES_SERVICE_HOST``) with such rules.
    """
    if not has_limits or not store_url.startswith("sqlite://"):
        return None
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    return (
        "budgets or rate_limits are set with a SQLite usage_store inside Kubernetes: SQLite is "
        "exact on one host only, so every replica (pod) enforces them on its own and N replicas "
        "allow N times each budget and rate; for several replicas set usage_store to a shared "
        "Redis (redis://host:6379/0, password in usage_store_password)"
    )


def memory_store_workers_warning(store_url: str, has_limits: bool, workers: int) -> str | None:
    """Issue 17: with ``usage_store = "off"`` each worker counts in its own memory, so N
    workers allow N times each budget and rate; said once at start, as for Kubernetes."""
    if not has_limits or store_url != "off" or workers == 1:
        return None
    return (
        "budgets or rate_limits are set with usage_store off and several workers: each worker "
        "counts in its own memory, so N workers allow N times each budget and rate; use a "
        "SQLite store (the default, shared by every process on this host) or Redis"
    )


def applies(budget: Budget | RateLimit, client: str, product: str | None = None) -> bool:
    """Whether a call by ``client`` to ``product`` counts against ``budget``."""
    if budget.client != ANY and budget.client != client:
        return False
    return product is None or not isinstance(budget, Budget) or budget.product in (ANY, product)
