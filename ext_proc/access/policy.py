"""Client keys, allow-lists and token limits as plain data, and the pure
decisions made with them. Nothing here does I/O or keeps state; the config
imports it, so it imports nothing of Archway's."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ARCHWAY_KEY_HEADER",
    "UNITS",
    "AccessSettings",
    "Client",
    "Counter",
    "RateLimit",
    "TokenLimit",
    "client_key",
    "counters_for",
    "estimate_prompt_tokens",
    "hash_key",
]

ARCHWAY_KEY_HEADER = "x-archway-api-key"
"""Where a client's Archway key goes when its usual credential header carries a
provider key for a ``passthrough_auth`` provider. Stripped before forwarding,
like every ``x-archway-`` header."""

UNITS = {"minute": 60, "hour": 3600}
"""Plano's ``limit.unit`` values, as window lengths in seconds."""

_BYTES_PER_TOKEN = 4
"""The prompt estimate made before a request goes upstream: a token for every
four bytes of request body. Corrected to the provider's count once it answers."""


@dataclass(frozen=True, slots=True)
class TokenLimit:
    tokens: int
    unit: str
    """``minute`` or ``hour``."""

    @property
    def window_s(self) -> int:
        return UNITS[self.unit]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One of Plano's ``ratelimits``: requests for ``model`` whose ``header``
    matches share ``limit``; without a ``value`` each header value has its own."""

    model: str
    header: str
    """Lower-cased header name (the selector's ``key``)."""
    value: str | None
    limit: TokenLimit


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    key_sha256: bytes
    """The key's SHA-256 digest: the key itself is never kept."""
    models: frozenset[str] | None = None
    """Models (``provider/model``) and aliases it may use; ``None``: every one."""
    limit: TokenLimit | None = None


@dataclass(frozen=True)
class AccessSettings:
    clients: tuple[Client, ...] = ()
    ratelimits: tuple[RateLimit, ...] = ()
    redis_url: str | None = None
    """Counters and pins shared by several gateways; ``None``: this machine only."""
    tenant_header: str | None = None
    """Plano's ``routing.session_cache.tenant_header``: session pins are per value of it."""
    usage: bool = False
    """``archway.usage``: count the tokens of every answer, not only those of
    translated requests and of requests under a limit."""
    _by_digest: Mapping[bytes, Client] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.clients and not self._by_digest:
            object.__setattr__(self, "_by_digest", {c.key_sha256: c for c in self.clients})

    @property
    def keys_required(self) -> bool:
        return bool(self.clients)

    @property
    def counts_tokens(self) -> bool:
        """Whether requests count against any limit (and so need their usage)."""
        return bool(self.ratelimits) or any(c.limit is not None for c in self.clients)

    @property
    def meters(self) -> bool:
        """Whether native answers pass through Archway's response path to be counted."""
        return self.usage or self.counts_tokens

    def lookup(self, key: str) -> Client | None:
        digest = hash_key(key)
        client = self._by_digest.get(digest)
        # The dict lookup compared digests already; compare_digest keeps the
        # final check constant-time for the one candidate.
        if client is not None and hmac.compare_digest(client.key_sha256, digest):
            return client
        return None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def client_key(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The key a request presents and the header it came in: ``x-archway-api-key``
    first, then ``Authorization: Bearer``, then ``x-api-key`` (Anthropic's SDK)."""
    key = headers.get(ARCHWAY_KEY_HEADER)
    if key:
        return key.strip(), ARCHWAY_KEY_HEADER
    scheme, _, bearer = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and bearer.strip():
        return bearer.strip(), "authorization"
    key = headers.get("x-api-key")
    if key:
        return key.strip(), "x-api-key"
    return None, None


@dataclass(frozen=True, slots=True)
class Counter:
    """One window count a request is admitted against."""

    key: str
    limit: int
    window_s: int
    label: str
    """What the 429 names: the client, or the rate limit's model and header."""


def counters_for(
    settings: AccessSettings,
    client: Client | None,
    model: str,
    names: tuple[str | None, ...],
    headers: Mapping[str, str],
) -> tuple[Counter, ...]:
    """The counters a request for ``model`` (also known by ``names``: its alias,
    the name the client asked for, the provider's id) counts against."""
    out: list[Counter] = []
    if client is not None and client.limit is not None:
        limit = client.limit
        out.append(
            Counter(
                f"client:{client.name}:{limit.window_s}",
                limit.tokens,
                limit.window_s,
                f"the client {client.name!r}",
            )
        )
    for index, rule in enumerate(settings.ratelimits):
        if rule.model != model and rule.model not in names:
            continue
        value = headers.get(rule.header)
        if value is None or (rule.value is not None and value != rule.value):
            continue
        # A digest: header values may be user ids or other things not to store.
        digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        out.append(
            Counter(
                f"ratelimit:{index}:{rule.limit.window_s}:{digest}",
                rule.limit.tokens,
                rule.limit.window_s,
                f"the {rule.header} rate limit of {rule.model!r}",
            )
        )
    return tuple(out)


def estimate_prompt_tokens(body: bytes) -> int:
    return max(1, -(-len(body) // _BYTES_PER_TOKEN))
