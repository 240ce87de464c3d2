"""Access control applied to one request: its key, its model, its token limits.

The request side (``authenticate`` on the headers, ``admit`` once the model is
decided) answers 401, 403 and 429 as ``GatewayError``s, which reach the client
in its API's shape. The response side (``settle``) corrects the counters from
the prompt estimate to the provider's count, once its usage is known.

What the response side needs travels as a ``Ticket`` in ``USAGE_HEADER``: the
request and its response are different ext_proc streams, perhaps on different
workers.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from ext_proc.access.policy import (
    AccessSettings,
    Client,
    Counter,
    client_key,
    counters_for,
    estimate_prompt_tokens,
)
from ext_proc.errors import GatewayError
from ext_proc.state.shared import SharedState
from ext_proc.telemetry.usage import Usage

__all__ = [
    "USAGE_HEADER",
    "Ticket",
    "admit",
    "authenticate",
    "find_client",
    "forbidden",
    "over_limit",
    "settle",
    "unauthorized",
]

log = logging.getLogger("archway.access")

USAGE_HEADER = "x-archway-usage"
"""Set by the routing processor on requests whose answer's usage is counted; the
route echoes it onto the response, where the response processor reads and strips it."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """What a request's response side needs: who spent, on what, what was taken."""

    client: str | None
    provider: str
    model: str
    started_ms: int
    """Wall-clock epoch ms when the request arrived (the two sides may be on
    different workers, so not a monotonic clock)."""
    estimate: int = 0
    counters: tuple[tuple[str, int], ...] = ()
    """(key, window seconds) of each counter the estimate was added to."""

    def header_value(self) -> str:
        data = [self.client, self.provider, self.model, self.started_ms, self.estimate]
        data.append([list(c) for c in self.counters])
        raw = json.dumps(data, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii")

    @staticmethod
    def from_header(value: str | None) -> Ticket | None:
        if not value:
            return None
        try:
            client, provider, model, started, estimate, counters = json.loads(
                base64.urlsafe_b64decode(value.encode("ascii"))
            )
            return Ticket(
                client,
                str(provider),
                str(model),
                int(started),
                int(estimate),
                tuple((str(k), int(w)) for k, w in counters),
            )
        except (ValueError, TypeError, UnicodeError):
            return None


def find_client(settings: AccessSettings, headers: Mapping[str, str]) -> tuple[Client, str]:
    """The client a request's key names and the header it came in, or a 401."""
    key, header = client_key(headers)
    if key is None or header is None:
        raise unauthorized(
            "This gateway needs an API key: send it as `Authorization: Bearer <key>` "
            "(or `x-api-key`)."
        )
    client = settings.lookup(key)
    if client is None:
        raise unauthorized("The API key is not valid for this gateway.")
    return client, header


def unauthorized(message: str) -> GatewayError:
    return GatewayError(
        401, message, code="invalid_api_key", headers=(("www-authenticate", "Bearer"),)
    )


def forbidden(client: Client, model: str, alias: str | None) -> GatewayError | None:
    """A 403 when ``client`` may not use the model (or the alias that named it)."""
    allowed = client.models
    if allowed is None or model in allowed or (alias is not None and alias in allowed):
        return None
    return GatewayError(
        403,
        f"This API key may not use the model {alias or model!r}.",
        code="model_not_allowed",
    )


def over_limit(counter: Counter, estimate: int, retry_after_s: float) -> GatewayError:
    retry = max(1, int(-(-retry_after_s // 1)))
    per = "minute" if counter.window_s == 60 else "hour"
    if estimate > counter.limit:
        message = (
            f"This request (about {estimate} prompt tokens) is larger than {counter.label} "
            f"allows in a {per} ({counter.limit} tokens)."
        )
    else:
        message = (
            f"Token limit reached for {counter.label}: {counter.limit} tokens per {per}. "
            f"Retry after {retry}s."
        )
    return GatewayError(
        429, message, code="rate_limit_exceeded", headers=(("retry-after", str(retry)),)
    )


def authenticate(settings: AccessSettings, headers: Mapping[str, str]) -> Client | None:
    """The client, when keys are required (else ``None``); a 401 for a bad key."""
    if not settings.keys_required:
        return None
    client, _ = find_client(settings, headers)
    return client


async def admit(
    state: SharedState,
    settings: AccessSettings,
    client: Client | None,
    model: str,
    names: tuple[str | None, ...],
    headers: Mapping[str, str],
    body: bytes,
) -> tuple[int, tuple[Counter, ...]]:
    """Take the prompt estimate from every counter the request counts against,
    or refuse it (429) and give back what was taken. Returns the estimate and
    the counters taken from."""
    counters = counters_for(settings, client, model, names, headers)
    if not counters:
        return 0, ()
    estimate = estimate_prompt_tokens(body)
    taken: list[Counter] = []
    for counter in counters:
        admission = await state.admit(counter.key, estimate, counter.limit, counter.window_s)
        if not admission.allowed:
            for done in taken:
                await state.add(done.key, -estimate, done.window_s)
            raise over_limit(counter, estimate, admission.retry_after_s)
        taken.append(counter)
    return estimate, tuple(taken)


async def settle(
    state: SharedState, ticket: Ticket, usage: Usage | None, *, refund: bool = False
) -> None:
    """Replace the estimate by the provider's count (prompt and output); with
    ``refund``, give the estimate back (the provider answered an error).

    An answer without usage (an OpenAI stream that did not ask for it) keeps
    its estimate: its output tokens are not counted."""
    if not ticket.counters:
        return
    if refund:
        delta = -ticket.estimate
    elif usage is None:
        return
    else:
        delta = usage.input_tokens + usage.output_tokens - ticket.estimate
    if delta == 0:
        return
    for key, window_s in ticket.counters:
        await state.add(key, delta, window_s)
