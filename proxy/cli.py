"""``aspose-proxy COMMAND [FLAGS]``: run, demo, sandbox, check, config.

Our own argparse, not pydantic-settings' CLI parsing (that would read any process's argv).
Logs go to stderr; a command's own output goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from proxy import __version__
from proxy.cache import cli as cache_cli
from proxy.log_setup import MIN_SECRET_LENGTH, configure_logging, short_secrets
from proxy.settings import (
    LOG_LEVELS,
    LoadedSettings,
    Settings,
    SettingsError,
    load_settings,
    unknown_env_vars,
)
from proxy.token_client import TokenFetchError, request_token
from proxy.usage.rules import kubernetes_sqlite_warning

EXIT_USAGE = 2
# Settings that are never CLI flags: a secret on the command line is visible in `ps`.
NOT_FLAGS = frozenset(
    {
        "client_secret",
        "local_clients",
        "access_keys",
        "usage_store_password",
        "cache_store_password",
    }
)
COMMANDS = ("run", "demo", "sandbox", "check", "config", "usage", "cache")

log = structlog.get_logger("proxy.cli")


def _setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("settings (override env vars and the TOML file)")
    group.add_argument(
        "--config", metavar="PATH", help="TOML settings file (or ASPOSE_PROXY_CONFIG)"
    )
    for name, field in Settings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        flag = "--" + name.replace("_", "-")
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (env ASPOSE_PROXY_{name.upper()}; default {default!r})"
        if field.annotation is bool:
            group.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, help=help_text
            )
        elif name == "log_format":
            group.add_argument(flag, dest=name, choices=("json", "console"), help=help_text)
        elif name == "log_level":
            group.add_argument(
                flag, dest=name, metavar="{" + ",".join(LOG_LEVELS) + "}", help=help_text
            )
        else:
            group.add_argument(flag, dest=name, metavar=name.upper(), help=help_text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aspose-proxy",
        description=(
            "A local proxy to the Aspose Cloud REST API that fetches, caches and renews the "
            "access token for every client. Point curl, Postman or an SDK at it with no "
            "credentials. Without a command, runs the proxy."
        ),
        epilog="Try it without an Aspose account: aspose-proxy demo",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy (the default command)")
    _setting_flags(run)
    # Set by the supervisor of `run --workers N` on the workers it starts; not for users.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    run.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)

    demo = commands.add_parser(
        "demo",
        help="run the offline sandbox and the proxy in front of it, and show how to use them",
    )
    demo.add_argument("--host", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    demo.add_argument(
        "--port", type=int, default=8080, help="proxy port, 0 picks one (default 8080)"
    )
    demo.add_argument(
        "--sandbox-port", type=int, default=0, help="sandbox port (default: a free one)"
    )
    demo.add_argument("--log-format", choices=("json", "console"))
    demo.add_argument("--log-level", default="info")

    sandbox = commands.add_parser(
        "sandbox",
        help="run the offline imitation of Aspose Cloud (reads no ASPOSE_PROXY_* variable)",
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090, help="default 8090; 0 picks a free port")
    sandbox.add_argument("--client-id", default="demo", help="accepted client id (default demo)")
    sandbox.add_argument("--client-secret", default="demo-secret", help="default demo-secret")
    sandbox.add_argument(
        "--token-lifetime", type=float, default=86400, help="seconds (default 86400)"
    )
    sandbox.add_argument("--data-dir", type=Path, help="where files live (default: a temp dir)")
    sandbox.add_argument("--log-format", choices=("json", "console"))
    sandbox.add_argument("--log-level", default="info")

    check = commands.add_parser(
        "check", help="fetch one token with the configured credentials and say when it expires"
    )
    _setting_flags(check)

    config = commands.add_parser(
        "config", help="print the effective settings and where each came from (secrets masked)"
    )
    _setting_flags(config)

    usage = commands.add_parser(
        "usage",
        help="calls per client and product, and budgets, read from usage_store (the proxy "
        "need not run)",
    )
    usage.add_argument("--period", choices=("day", "month"), default="day", help="UTC period")
    usage.add_argument("--json", action="store_true", help="the /_proxy/usage JSON")
    _setting_flags(usage)

    cache = commands.add_parser(
        "cache", help="stats or clear the conversion cache in cache_store (the proxy need not run)"
    )
    cache_cli.add_arguments(cache)
    _setting_flags(cache)
    return parser


def _load(args: argparse.Namespace) -> LoadedSettings:
    cli = {
        name: getattr(args, name, None) for name in Settings.model_fields if name not in NOT_FLAGS
    }
    return load_settings(cli, args.config)


def _require_credentials(settings: Settings) -> None:
    problems = []
    if not settings.client_id:
        problems.append(
            "client_id: required (set ASPOSE_PROXY_CLIENT_ID or client_id in the TOML file)"
        )
    if settings.client_secret is None:
        problems.append(
            "client_secret: required (set ASPOSE_PROXY_CLIENT_SECRET, or client_secret_file, "
            "e.g. /run/secrets/aspose_client_secret)"
        )
    if problems:
        raise SettingsError(problems)


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise SettingsError(
            [f"log_level: must be one of {', '.join(LOG_LEVELS)} (from --log-level)"]
        )
    return value.lower()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"aspose-proxy: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from proxy.server import run

    if args.command == "sandbox":
        configure_logging(args.log_format, _log_level(args.log_level))
        return run(lambda: _sandbox(args))
    if args.command == "demo":
        configure_logging(args.log_format, _log_level(args.log_level), ["demo-secret"])
        return run(lambda: _demo(args))
    loaded = _load(args)
    settings = loaded.settings
    if args.command == "config":
        for name, close in unknown_env_vars(os.environ):
            hint = f" (did you mean {close}?)" if close else ""
            print(f"aspose-proxy: warning: unknown variable {name} ignored{hint}", file=sys.stderr)
        print(render_config(loaded))
        return 0
    if args.command == "usage":
        return asyncio.run(_usage(settings, args.period, as_json=args.json))
    if args.command == "cache":
        return asyncio.run(cache_cli.run(settings, args.action, as_json=args.json))
    _require_credentials(settings)
    configure_logging(
        settings.log_format,
        settings.log_level,
        settings.secret_values,
        flush_interval=settings.log_flush_interval,
    )
    if getattr(args, "worker", None) is None:  # the supervisor has said it already
        _warn_unknown_env_vars()
        has_limits = args.command == "run" and bool(settings.budgets or settings.rate_limits)
        if replicas := kubernetes_sqlite_warning(settings.usage_store, has_limits, os.environ):
            log.warning(replicas)
        for name in short_secrets(settings.named_secrets):
            log.warning(
                f"{name} is shorter than {MIN_SECRET_LENGTH} characters: the log redactor does "
                "not mask it wherever it occurs (that would mask ordinary words); use a longer one"
            )
    if args.command == "check":
        return run(lambda: _check(settings))
    return run(lambda: _run(settings, args, argv))


def _warn_unknown_env_vars() -> None:
    """A typo in a variable name would otherwise be silently ignored."""
    for name, close in unknown_env_vars(os.environ):
        log.warning("unknown environment variable ignored", name=name, did_you_mean=close)


def render_config(loaded: LoadedSettings) -> str:
    """The effective settings as TOML, each with its source; secrets masked."""
    lines = []
    for name, value in loaded.settings.model_dump().items():
        shown: Any = value
        if isinstance(value, SecretStr):
            shown = "**********"
        elif isinstance(value, dict):
            shown = {k: "**********" for k in value}
        elif isinstance(value, Path):
            shown = str(value)
        if shown is None:
            lines.append(f"# {name} = (not set)  # from {loaded.origins[name]}")
            continue
        lines.append(f"{name} = {_toml_value(shown)}  # from {loaded.origins[name]}")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


async def _usage(settings: Settings, period: str, *, as_json: bool) -> int:
    """``usage``: the report straight from the store, as a table or as the JSON."""
    from proxy.usage.factory import open_store
    from proxy.usage.report import render_table, usage_report

    if settings.usage_store == "off":
        print("aspose-proxy: usage_store is off: no calls are kept", file=sys.stderr)
        return 1
    store = open_store(settings.usage_store, settings.usage_store_password, create=False)
    try:
        await store.open()
        report = await usage_report(period, store.rows, settings.budgets)
    except Exception as exc:
        print(f"aspose-proxy: cannot read {store.description} ({exc})", file=sys.stderr)
        return 1
    finally:
        await store.close()
    print(json.dumps(report, indent=2) if as_json else render_table(report))
    return 0


async def _check(settings: Settings) -> int:
    from proxy.upstream import Egress, create_token_session

    # The same TLS trust (ca_file) and egress proxy as the running proxy's token fetches.
    async with create_token_session(Egress.from_settings(settings)) as session:
        try:
            answer = await request_token(session, settings)
        except TokenFetchError as exc:
            print(f"error: {exc.reason}", file=sys.stderr)
            return 1
    expires = datetime.fromtimestamp(time.time() + answer.expires_in, UTC)
    print(
        f"ok: client_id '{settings.client_id}' got a token from {settings.token_url}; "
        f"it expires in {answer.expires_in:.0f} s, at {expires.isoformat(timespec='seconds')}"
    )
    return 0


async def _run(settings: Settings, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from proxy.app import create_app
    from proxy.reload import SETTINGS_LOADER
    from proxy.server import announce, start_server, wait_for_stop_signal

    worker: int | None = args.worker
    local_token_key = None
    if worker is not None or settings.workers != 1:  # one process needs no supervisor (issue 11)
        from proxy import supervisor

        if worker is None:
            count, fallback = supervisor.worker_count(
                settings.workers, supervisor.usable_cpus(), supervisor.reuse_port_supported()
            )
            if fallback:
                log.warning(fallback)
            if count > 1:
                return await supervisor.Supervisor(settings, argv, count).run()
        else:
            supervisor.follow_parent(args.supervisor)
            local_token_key = supervisor.read_local_token_key(args.run_dir)
    app = create_app(settings, local_token_key=local_token_key)
    app[SETTINGS_LOADER] = lambda: _load(args).settings  # SIGHUP: the same sources again
    server = await start_server(
        app,
        settings.host,
        settings.port,
        shutdown_grace=settings.shutdown_grace,
        reuse_port=worker is not None,
    )
    announce(f"aspose-proxy listening on {server.url} -> {settings.upstream_url}")
    log.info(
        "proxy started",
        url=server.url,
        upstream=settings.upstream_url,
        worker=worker,
        pid=os.getpid(),
    )
    await wait_for_stop_signal()
    log.info("stopping: finishing in-flight requests", grace_seconds=settings.shutdown_grace)
    await server.stop()
    if worker is not None:
        supervisor.clean_up_after(args.supervisor, args.run_dir)
    log.info("stopped")
    return 0


async def _sandbox(args: argparse.Namespace) -> int:
    from proxy.sandbox import SandboxConfig, create_sandbox_app
    from proxy.server import announce, start_server, wait_for_stop_signal

    config = SandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        data_dir=args.data_dir,
    )
    server = await start_server(create_sandbox_app(config), args.host, args.port, shutdown_grace=5)
    announce(
        f"Aspose Cloud sandbox listening on {server.url} "
        f"(sandbox credentials: client_id '{config.client_id}', "
        f"client_secret '{config.client_secret}')"
    )
    await wait_for_stop_signal()
    await server.stop()
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return await run_demo(args.host, args.port, args.sandbox_port)
