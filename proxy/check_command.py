"""``aspose-proxy check``: one token request, safe to run next to a running proxy (issue 18).

It goes by the same token schedule as the proxy (``open_schedule``: the same state file, or
Redis), so five runs with a wrong secret cannot lock the Aspose application out: a request the
schedule would not allow is not sent, and the user is told when the next one is and why. It says
what it does before doing it, and explains the answers a newcomer meets (a 429 lockout, an
``invalid_client`` from one of the two token hosts) in one line each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

from proxy.credentials import Credentials
from proxy.settings import LoadedSettings, Settings
from proxy.token_client import TokenFetchError, recorded_request, request_token
from proxy.token_schedule import Decision, Schedule, open_schedule, wall_time

# The two hosts that issue Aspose Cloud tokens (docs/troubleshooting.md#invalid_client).
TOKEN_HOSTS = {
    "api.aspose.cloud": "https://id.aspose.cloud/connect/token",
    "id.aspose.cloud": "https://api.aspose.cloud/connect/token",
}
BUSY_POLL = 0.2
Say = Callable[[str], None]


async def check(loaded: LoadedSettings, say: Say, complain: Say) -> int:
    """0 when a token was issued; 1 when the request failed or was not allowed now."""
    settings = loaded.settings
    credentials = Credentials.from_settings(settings)
    schedule = open_schedule(settings)
    try:
        return await _check(loaded, credentials, schedule, say, complain)
    finally:
        await schedule.store.close()


async def _check(
    loaded: LoadedSettings, credentials: Credentials, schedule: Schedule, say: Say, complain: Say
) -> int:
    settings = loaded.settings
    decision = await _permission(schedule, credentials, settings.token_timeout)
    if not decision.allowed:
        complain(refusal(decision))
        return 1
    say(
        f"fetching a token from {settings.token_url} for client_id '{settings.client_id}' "
        f"(secret from {secret_source(loaded)}; timeout {settings.token_timeout:g} s)..."
    )
    from proxy.upstream import Egress, create_token_session

    # The same TLS trust (ca_file) and egress proxy as the running proxy's token requests.
    async with create_token_session(Egress.from_settings(settings)) as session:
        answer = await recorded_request(
            schedule, decision, credentials, lambda c: request_token(session, settings, c)
        )  # also on Ctrl+C: the schedule learns what was sent
    if isinstance(answer, TokenFetchError):
        after = await schedule.ask(credentials, have_token=False, reserve=False)
        complain(explain(answer, loaded, after, schedule))
        return 1
    expires = datetime.fromtimestamp(time.time() + answer.expires_in, UTC)
    say(
        f"ok: client_id '{settings.client_id}' got a token from {settings.token_url}; "
        f"it expires in {answer.expires_in:.0f} s, at {expires.isoformat(timespec='seconds')}"
    )
    return 0


async def _permission(schedule: Schedule, credentials: Credentials, patience: float) -> Decision:
    """The schedule's answer; while another process tries these credentials, wait a little."""
    deadline = time.monotonic() + patience
    while True:
        decision = await schedule.ask(credentials, have_token=False)
        if not decision.busy or time.monotonic() > deadline:
            return decision
        await asyncio.sleep(BUSY_POLL)


def refusal(decision: Decision) -> str:
    """Why no request was sent, and when the next one is allowed."""
    if decision.busy:
        return (
            "not sending a token request: another aspose-proxy process is requesting a token "
            "with these credentials right now; try again in a minute"
        )
    return (
        f"not sending a token request: {decision.reason}. (check keeps the running proxy's "
        "token schedule: Aspose locks an application out for 10 minutes after more than 5 "
        "failed token requests, for every service using it)"
    )


def explain(
    error: TokenFetchError, loaded: LoadedSettings, after: Decision, schedule: Schedule
) -> str:
    """One line: what the token endpoint said, what it means, and what to do."""
    settings = loaded.settings
    if error.rate_limited:
        wait = 600.0 if error.retry_after is None else error.retry_after
        until = wall_time(schedule.now() + wait, schedule.now)
        return (
            f"the token endpoint answered 429 Too Many Requests: Aspose has locked client_id "
            f"'{settings.client_id}' out after too many failed token requests, until {until}; "
            "every service using this application is affected until then (a new client "
            "secret from the Aspose Cloud dashboard lifts the lock at once)"
        )
    if error.rejected:
        return (
            f"{error.reason}: the secret from {secret_source(loaded)} does not match; "
            f"{host_hint(settings)}. {next_attempt(after, schedule)}"
        )
    return f"{error.reason}. {next_attempt(after, schedule)}"


def host_hint(settings: Settings) -> str:
    """Which host issued the answer, and the other one to try."""
    host = urlsplit(settings.token_url).hostname or settings.token_url
    other = TOKEN_HOSTS.get(host)
    if other is None:
        return f"the token was requested from {host} (token_url)"
    return (
        f"the token was requested from {host}; applications are issued for api.aspose.cloud or "
        f"id.aspose.cloud: if the dashboard's credentials are right, try token_url = {other}"
    )


def next_attempt(decision: Decision, schedule: Schedule) -> str:
    if decision.allowed:
        return "The next attempt is allowed now."
    return f"The next attempt is allowed at {wall_time(decision.until, schedule.now)}."


def secret_source(loaded: LoadedSettings) -> str:
    """Where the secret came from, in words: a file, an env var or the TOML file."""
    origin = loaded.origins.get("client_secret", "default")
    if origin.startswith("client_secret_file"):
        where = loaded.origins.get("client_secret_file", "")
        return f"the file {loaded.settings.client_secret_file} (client_secret_file, from {where})"
    if origin.startswith("ASPOSE_PROXY_"):
        return f"the environment variable {origin}"
    return f"client_secret in {origin}"
