"""The config sections of access control: Plano's ``ratelimits``, and Archway's
``archway.clients`` and ``archway.redis``.

Plano's ``ratelimits`` load unchanged; a rate limit for a model the config
does not serve is a warning (Plano would ignore it too). The data is
``ext_proc.access.policy``'s, which the gateway applies per request.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import yaml

from ext_proc.access.policy import UNITS, AccessSettings, Client, RateLimit, TokenLimit, hash_key
from ext_proc.config.reader import Reader

__all__ = ["ACCESS_GATEWAY_KEYS", "read_access"]

ACCESS_GATEWAY_KEYS = ("clients", "redis", "usage")
"""The ``archway:`` keys this module reads (the gateway section leaves them alone)."""

_RATELIMIT_KEYS = ("model", "selector", "limit")
_SELECTOR_KEYS = ("key", "value")
_LIMIT_KEYS = ("tokens", "unit")
_CLIENT_KEYS = ("name", "key", "key_sha256", "models", "limit")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def read_access(
    r: Reader,
    ratelimits: yaml.Node | None,
    session_cache: yaml.Node | None,
    archway: dict[str, yaml.Node],
    models: Collection[str],
    aliases: Collection[str],
) -> AccessSettings | None:
    """``None`` when a section is broken (every problem reported to ``r``)."""
    limits = _ratelimits(r, ratelimits, models, aliases)
    clients = _clients(r, archway.get("clients"), models, aliases)
    redis_url = _redis(r, archway.get("redis"), "archway.redis")
    cache = _session_cache(r, session_cache)
    if cache is None:
        return None
    cache_url, tenant_header = cache
    if isinstance(cache_url, str):
        if isinstance(redis_url, str) and redis_url != cache_url:
            r.error(
                session_cache,
                "routing.session_cache.url",
                "differs from archway.redis",
                "use one Redis for pins and counters: give the same URL, or only one of them",
            )
            return None
        redis_url = cache_url
    usage = r.boolean(archway.get("usage"), "archway.usage") if "usage" in archway else False
    if limits is None or clients is None or redis_url is False or usage is None:
        return None
    return AccessSettings(
        clients=clients,
        ratelimits=limits,
        redis_url=redis_url if isinstance(redis_url, str) else None,
        usage=usage,
        tenant_header=tenant_header,
    )


def _session_cache(
    r: Reader, node: yaml.Node | None
) -> tuple[str | bool | None, str | None] | None:
    """Plano's ``routing.session_cache``: ``(redis URL, tenant header)``; ``None`` if broken."""
    fields = r.mapping(node, "routing.session_cache", ("type", "url", "tenant_header"))
    if fields is None:
        return None
    kind = r.choice(
        fields.get("type"), "routing.session_cache.type", ("memory", "redis"), "session cache"
    )
    tenant = r.text(fields.get("tenant_header"), "routing.session_cache.tenant_header")
    if kind == "redis":
        if "url" not in fields:
            assert node is not None
            r.missing_key(node, "routing.session_cache", "url", "url: redis://localhost:6379")
            return None
        url = _redis(r, fields["url"], "routing.session_cache.url")
        if url is False:
            return None
        return url, tenant.lower() if tenant else None
    return None, tenant.lower() if tenant else None


def _serves(name: str, models: Collection[str], aliases: Collection[str]) -> bool:
    if name in models or name in aliases:
        return True
    provider, sep, _ = name.partition("/")
    return bool(sep) and f"{provider}/*" in models


def _limit(r: Reader, node: yaml.Node | None, path: str) -> TokenLimit | None:
    fields = r.mapping(node, path, _LIMIT_KEYS)
    if fields is None:
        return None
    if node is None or "tokens" not in fields or "unit" not in fields:
        if node is not None:
            missing = "tokens" if "tokens" not in fields else "unit"
            r.missing_key(node, path, missing, "limit: {tokens: 100000, unit: minute}")
        else:
            r.error(None, path, "missing", "add limit: {tokens: 100000, unit: minute}")
        return None
    tokens = r.integer(fields["tokens"], f"{path}.tokens", low=1)
    unit = r.choice(fields["unit"], f"{path}.unit", tuple(UNITS), "unit")
    if tokens is None or unit is None:
        return None
    return TokenLimit(tokens, unit)


def _ratelimits(
    r: Reader, node: yaml.Node | None, models: Collection[str], aliases: Collection[str]
) -> tuple[RateLimit, ...] | None:
    entries = r.sequence(node, "ratelimits")
    if entries is None:
        return None
    out: list[RateLimit] = []
    ok = True
    for i, entry in enumerate(entries):
        path = f"ratelimits[{i}]"
        fields = r.mapping(entry, path, _RATELIMIT_KEYS)
        if fields is None:
            ok = False
            continue
        for key, example in (
            ("model", "model: openai/gpt-4o"),
            ("selector", "selector: {key: x-user-id}"),
            ("limit", "limit: {tokens: 100000, unit: minute}"),
        ):
            if key not in fields:
                r.missing_key(entry, path, key, example)
                ok = False
        if not ok:
            continue
        model = r.text(fields["model"], f"{path}.model")
        selector = r.mapping(fields["selector"], f"{path}.selector", _SELECTOR_KEYS)
        limit = _limit(r, fields["limit"], f"{path}.limit")
        if model is None or selector is None or limit is None:
            ok = False
            continue
        header = r.text(selector.get("key"), f"{path}.selector.key")
        if header is None or not _HEADER_NAME.fullmatch(header):
            if header is not None or "key" not in selector:
                r.error(
                    fields["selector"],
                    f"{path}.selector.key",
                    "missing or not a header name",
                    "name the request header that selects the limit, e.g. key: x-user-id",
                )
            ok = False
            continue
        value = r.text(selector.get("value"), f"{path}.selector.value")
        if value == "*":
            value = None  # every value its own limit, as when no value is given
        if not _serves(model, models, aliases):
            r.warn(
                fields["model"],
                f"{path}.model",
                f"no provider or alias serves {model!r}, so this limit never applies",
            )
        out.append(RateLimit(model, header.lower(), value, limit))
    return tuple(out) if ok else None


def _clients(
    r: Reader, node: yaml.Node | None, models: Collection[str], aliases: Collection[str]
) -> tuple[Client, ...] | None:
    entries = r.sequence(node, "archway.clients")
    if entries is None:
        return None
    out: list[Client] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    ok = True
    for i, entry in enumerate(entries):
        path = f"archway.clients[{i}]"
        fields = r.mapping(entry, path, _CLIENT_KEYS)
        if fields is None:
            ok = False
            continue
        name = r.text(fields.get("name"), f"{path}.name")
        if name is None:
            if "name" not in fields:
                r.missing_key(entry, path, "name", "name: team-a")
            ok = False
            continue
        if name in names:
            r.error(fields["name"], f"{path}.name", f"duplicate client name {name!r}", None)
            ok = False
        names.add(name)
        digest = _client_digest(r, entry, fields, path)
        if digest is None:
            ok = False
            continue
        if digest in digests:
            r.error(entry, path, "two clients have the same key", "give each client its own key")
            ok = False
        digests.add(digest)
        allowed: frozenset[str] | None = None
        if "models" in fields:
            listed = r.sequence(fields["models"], f"{path}.models")
            if listed is None:
                ok = False
                continue
            chosen: set[str] = set()
            for j, item in enumerate(listed):
                model = r.text(item, f"{path}.models[{j}]")
                if model is None:
                    ok = False
                elif model == "*":
                    chosen.add("*")
                elif not _serves(model, models, aliases):
                    r.error(
                        item,
                        f"{path}.models[{j}]",
                        f"no provider or alias serves {model!r}",
                        "name a configured provider/model or a model_aliases entry",
                    )
                    ok = False
                else:
                    chosen.add(model)
            allowed = None if "*" in chosen else frozenset(chosen)
        limit = None
        if "limit" in fields:
            limit = _limit(r, fields["limit"], f"{path}.limit")
            if limit is None:
                ok = False
        out.append(Client(name, digest, allowed, limit))
    return tuple(out) if ok else None


def _client_digest(
    r: Reader, entry: yaml.Node, fields: dict[str, yaml.Node], path: str
) -> bytes | None:
    if ("key" in fields) == ("key_sha256" in fields):
        r.error(
            entry,
            path,
            "give exactly one of key and key_sha256",
            "key: $TEAM_A_KEY (from the environment) or key_sha256: <hex digest of the key>",
        )
        return None
    if "key_sha256" in fields:
        text = r.text(fields["key_sha256"], f"{path}.key_sha256")
        if text is None or not _SHA256_HEX.fullmatch(text):
            if text is not None:
                r.error(
                    fields["key_sha256"],
                    f"{path}.key_sha256",
                    "not a SHA-256 digest (64 hex digits)",
                    'write the output of: printf %s "$KEY" | sha256sum',
                )
            return None
        return bytes.fromhex(text)
    raw = r.raw_text(fields["key"], f"{path}.key", secret=True)
    if raw is None:
        return None
    if "$" not in raw:
        r.error(
            fields["key"],
            f"{path}.key",
            "a client key written into the config",
            "keep keys out of the file: key: $TEAM_A_KEY, or key_sha256: <digest>",
        )
        return None
    missing_ok = r.allow_missing_env
    key = r.expand(raw, fields["key"], f"{path}.key", missing_ok=missing_ok)
    if not key:
        # A tool that sends no requests (render) may load a config whose keys are
        # unset; such a client can never match a real key.
        return hash_key(f"\0unset:{path}") if missing_ok else None
    return hash_key(key)


def _redis(r: Reader, node: yaml.Node | None, path: str) -> str | bool | None:
    """The URL, ``None`` when absent, ``False`` when broken."""
    if node is None:
        return None
    url = r.text(node, path, secret=True)
    if url is None:
        return False
    if not url.startswith(_REDIS_SCHEMES):
        r.error(
            node,
            path,
            "not a Redis URL",
            "write redis://HOST:6379/0 (rediss:// for TLS, unix:///path for a socket)",
        )
        return False
    try:
        import redis  # noqa: F401
    except ImportError:
        r.error(
            node,
            path,
            "the redis client is not installed",
            "pip install 'archway[redis]'",
        )
        return False
    return url
