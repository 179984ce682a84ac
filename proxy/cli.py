"""``aspose-proxy COMMAND [FLAGS]``: run, demo, sandbox, check, config, usage, cache.

Our own argparse, not pydantic-settings' CLI parsing (that would read any process's argv).
Logs go to stderr; a command's own output goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from pydantic import SecretStr

from proxy import __version__
from proxy.cache import cli as cache_cli
from proxy.listening import CannotListen
from proxy.log_setup import MIN_SECRET_LENGTH, configure_logging, short_secrets
from proxy.settings import (
    LOG_LEVELS,
    LoadedSettings,
    Settings,
    SettingsError,
    load_settings,
    typo_hints,
    unknown_env_vars,
)
from proxy.usage.rules import kubernetes_sqlite_warning, memory_store_workers_warning

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
# The settings each command reads (None: every one); its --help lists only these flags.
COMMAND_SETTINGS: dict[str, frozenset[str] | None] = {
    "run": None,
    "config": None,
    "check": frozenset(
        {
            "client_id",
            "client_secret_file",
            "upstream_url",
            "token_url",
            "ca_file",
            "connect_timeout",
            "token_timeout",
            "usage_store",
            "log_format",
            "log_level",
        }
    ),
    "usage": frozenset({"usage_store", "budgets"}),
    "cache": frozenset(
        {"cache_store", "cache_ttl", "cache_max_size", "cache_max_entry_size", "cache_scope"}
    ),
}


@dataclass(frozen=True)
class Command:
    """One subcommand as ``--help`` shows it: a line, an example, the exit codes."""

    summary: str
    example: str
    exits: str


COMMANDS = {
    "run": Command(
        "Run the proxy (the default command).",
        "ASPOSE_PROXY_CLIENT_ID=... ASPOSE_PROXY_CLIENT_SECRET_FILE=secret.txt aspose-proxy run",
        "0 stopped by SIGTERM/SIGINT; 1 cannot listen or a worker failed at start; "
        "2 invalid settings",
    ),
    "demo": Command(
        "Run the offline sandbox and the proxy in front of it, and show what to try "
        "(ignores your ASPOSE_PROXY_* variables and config file).",
        "aspose-proxy demo",
        "0 stopped by Ctrl+C; 1 cannot listen; 2 invalid flags",
    ),
    "sandbox": Command(
        "Run the offline imitation of Aspose Cloud (reads no ASPOSE_PROXY_* variable).",
        "aspose-proxy sandbox --port 8090",
        "0 stopped by Ctrl+C; 1 cannot listen; 2 invalid flags",
    ),
    "check": Command(
        "Fetch one token with the configured credentials and say when it expires; never "
        "sends a request the token schedule of the running proxy would not allow.",
        "ASPOSE_PROXY_CLIENT_SECRET_FILE=secret.txt aspose-proxy check --client-id ...",
        "0 a token was issued; 1 the token request failed or is not allowed yet; "
        "2 invalid or missing settings",
    ),
    "config": Command(
        "Print the effective settings and where each came from (secrets masked).",
        "aspose-proxy config --config proxy.toml",
        "0 the settings are complete and valid; 2 invalid settings or a required one missing",
    ),
    "usage": Command(
        "Calls per client and product, and budgets, read from usage_store "
        "(the proxy need not run).",
        "aspose-proxy usage --period month",
        "0 printed; 1 the store is off or cannot be read; 2 invalid settings",
    ),
    "cache": Command(
        "Stats or clear the conversion cache in cache_store (the proxy need not run).",
        "aspose-proxy cache stats --json",
        "0 done; 1 the cache is off or cannot be used; 2 invalid settings",
    ),
}

log = structlog.get_logger("proxy.cli")


def _shown_default(value: object) -> str:
    """`` (default X)``, or nothing for an empty default: no "default None" in --help."""
    if value in (None, "", [], {}):
        return ""
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"; default {value}"


def _setting_flags(parser: argparse.ArgumentParser, names: frozenset[str] | None) -> None:
    group = parser.add_argument_group("settings (override env vars and the TOML file)")
    group.add_argument(
        "--config", metavar="PATH", help="TOML settings file (or ASPOSE_PROXY_CONFIG)"
    )
    for name, field in Settings.model_fields.items():
        if name in NOT_FLAGS or (names is not None and name not in names):
            continue
        flag = "--" + name.replace("_", "-")
        default = _shown_default(field.get_default(call_default_factory=True))
        help_text = f"{field.description} (env ASPOSE_PROXY_{name.upper()}{default})"
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


def _command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str
) -> argparse.ArgumentParser:
    info = COMMANDS[name]
    return commands.add_parser(
        name,
        help=info.summary.rstrip("."),
        description=info.summary,
        epilog=f"example:\n  {info.example}\n\nexit codes: {info.exits}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


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
    parser.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = _command(commands, "run")
    _setting_flags(run, COMMAND_SETTINGS["run"])
    # Set by the supervisor of `run --workers N` on the workers it starts; not for users.
    run.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    run.add_argument("--supervisor", type=int, help=argparse.SUPPRESS)
    run.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)

    demo = _command(commands, "demo")
    demo.add_argument("--host", default="127.0.0.1", help="proxy address (default 127.0.0.1)")
    demo.add_argument(
        "--port",
        type=int,
        default=8080,
        help="proxy port (default 8080; when taken, a free one is picked)",
    )
    demo.add_argument(
        "--sandbox-port", type=int, default=0, help="sandbox port (default: a free one)"
    )
    demo.add_argument("--log-format", choices=("json", "console"))
    demo.add_argument("--log-level", default="info", help="default info")

    sandbox = _command(commands, "sandbox")
    sandbox.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090, help="default 8090; 0 picks a free port")
    sandbox.add_argument("--client-id", default="demo", help="accepted client id (default demo)")
    sandbox.add_argument("--client-secret", default="demo-secret", help="default demo-secret")
    sandbox.add_argument(
        "--token-lifetime", type=float, default=86400, help="seconds (default 86400)"
    )
    sandbox.add_argument("--data-dir", type=Path, help="where files live (default: a temp dir)")
    sandbox.add_argument("--log-format", choices=("json", "console"))
    sandbox.add_argument("--log-level", default="info", help="default info")

    check = _command(commands, "check")
    _setting_flags(check, COMMAND_SETTINGS["check"])

    config = _command(commands, "config")
    _setting_flags(config, COMMAND_SETTINGS["config"])

    usage = _command(commands, "usage")
    usage.add_argument("--period", choices=("day", "month"), default="day", help="UTC period")
    usage.add_argument("--json", action="store_true", help="the /_proxy/usage JSON")
    _setting_flags(usage, COMMAND_SETTINGS["usage"])

    cache = _command(commands, "cache")
    cache_cli.add_arguments(cache)
    _setting_flags(cache, COMMAND_SETTINGS["cache"])
    return parser


def unknown_command(word: str) -> str | None:
    """The message for a first argument that is no command, or None if it is one (or a flag:
    ``aspose-proxy --port 9000`` is ``run --port 9000``)."""
    if word in COMMANDS or word.startswith("-"):
        return None
    close = difflib.get_close_matches(word, list(COMMANDS), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return f"unknown command {word!r}{hint}; commands: {', '.join(COMMANDS)}"


def _load(args: argparse.Namespace) -> LoadedSettings:
    cli = {
        name: getattr(args, name, None) for name in Settings.model_fields if name not in NOT_FLAGS
    }
    # Kubernetes' ASPOSE_PROXY_PORT=tcp://... service link matters only to a command that listens.
    return load_settings(cli, args.config, listens=args.command == "run")


def _require_credentials(settings: Settings) -> None:
    if problems := missing_credentials(settings):
        raise SettingsError(problems)


def missing_credentials(settings: Settings) -> list[str]:
    """One line per required setting that is not set."""
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
    return problems


def _log_level(value: str) -> str:
    if value.lower() not in LOG_LEVELS:
        raise SettingsError(
            [f"log_level: must be one of {', '.join(LOG_LEVELS)} (from --log-level)"]
        )
    return value.lower()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (problem := unknown_command(argv[0])):
        print(f"aspose-proxy: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "-V", "--version")):
        argv.insert(0, "run")
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except SettingsError as exc:
        # A misspelt variable name first: it is often why a setting is missing or wrong.
        for problem in [*typo_hints(os.environ), *exc.problems]:
            print(f"aspose-proxy: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except CannotListen as exc:
        print(f"aspose-proxy: {exc}", file=sys.stderr)
        return 1
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
        # Like `nginx -t`: a configuration `run` would refuse is not a success.
        missing = missing_credentials(settings)
        for problem in missing:
            print(f"aspose-proxy: {problem}", file=sys.stderr)
        return EXIT_USAGE if missing else 0
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
        workers = settings.workers
        if not workers and has_limits:  # one per CPU
            from proxy.supervisor import usable_cpus

            workers = usable_cpus()
        if alone := memory_store_workers_warning(settings.usage_store, has_limits, workers):
            log.warning(alone)
        for name in short_secrets(settings.named_secrets):
            log.warning(
                f"{name} is shorter than {MIN_SECRET_LENGTH} characters: the log redactor does "
                "not mask it wherever it occurs (that would mask ordinary words); use a longer one"
            )
    if args.command == "check":
        return run(lambda: _check(loaded))
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
    from proxy.token_fingerprints import client_digest
    from proxy.usage.factory import open_store
    from proxy.usage.report import render_table, usage_report
    from proxy.usage.store import EVERY_APPLICATION

    if settings.usage_store == "off":
        print("aspose-proxy: usage_store is off: no calls are kept", file=sys.stderr)
        return 1
    # The configured application's calls; with no client_id set, every application's.
    application = client_digest(settings.client_id) if settings.client_id else EVERY_APPLICATION
    store = open_store(
        settings.usage_store, settings.usage_store_password, create=False, application=application
    )
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


async def _check(loaded: LoadedSettings) -> int:
    from proxy.check_command import check

    def say(line: str) -> None:
        print(f"aspose-proxy: {line}", flush=True)

    def complain(line: str) -> None:
        print(f"aspose-proxy: {line}", file=sys.stderr, flush=True)

    return await check(loaded, say, complain)


async def _run(settings: Settings, args: argparse.Namespace, argv: Sequence[str]) -> int:
    from proxy.app import create_app
    from proxy.listening import listen
    from proxy.reload import SETTINGS_LOADER
    from proxy.server import announce, stop_signal_task

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
    server = await listen(
        app,
        settings.host,
        settings.port,
        shutdown_grace=settings.shutdown_grace,
        reuse_port=worker is not None,
    )
    stopped = await stop_signal_task()
    announce(f"aspose-proxy listening on {server.url} -> {settings.upstream_url}")
    # A worker says which it is; a single process names none (issue 18: no worker=None).
    named = {} if worker is None else {"worker": worker}
    log.info(
        "proxy started", url=server.url, upstream=settings.upstream_url, **named, pid=os.getpid()
    )
    await stopped
    log.info("stopping: finishing in-flight requests", grace_seconds=settings.shutdown_grace)
    await server.stop()
    if worker is not None:
        supervisor.clean_up_after(args.supervisor, args.run_dir)
    log.info("stopped")
    return 0


async def _sandbox(args: argparse.Namespace) -> int:
    from proxy.listening import listen
    from proxy.sandbox import SandboxConfig, create_sandbox_app
    from proxy.server import announce, stop_signal_task

    config = SandboxConfig(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_lifetime=args.token_lifetime,
        data_dir=args.data_dir,
    )
    server = await listen(create_sandbox_app(config), args.host, args.port, shutdown_grace=5)
    stopped = await stop_signal_task()
    announce(
        f"Aspose Cloud sandbox listening on {server.url} "
        f"(sandbox credentials: client_id '{config.client_id}', "
        f"client_secret '{config.client_secret}')"
    )
    await stopped
    await server.stop()
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    return await run_demo(args.host, args.port, args.sandbox_port)
