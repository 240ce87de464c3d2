"""Loading Plano's ``ratelimits`` and Archway's ``archway.clients`` / ``archway.redis``."""

from __future__ import annotations

import hashlib
from pathlib import Path
from textwrap import dedent

import pytest

from ext_proc.access.policy import (
    AccessSettings,
    Client,
    TokenLimit,
    client_key,
    counters_for,
    hash_key,
)
from ext_proc.config import Config, ConfigError, load_config

ENV = {"OPENAI_API_KEY": "sk-openai", "TEAM_A_KEY": "team-a-secret"}

BASE = """\
llm_providers:
  - model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    default: true
  - model: anthropic/claude-sonnet-4
    access_key: $OPENAI_API_KEY
model_aliases:
  fast: {target: openai/gpt-4o}
"""


def load(tmp_path: Path, extra: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + dedent(extra))
    return load_config(path, environ=ENV)


def problems(tmp_path: Path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, extra)
    return info.value.problems


def test_no_sections_means_no_access_control(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.access == AccessSettings()
    assert not config.access.keys_required and not config.access.meters


def test_plano_ratelimits_load_unchanged(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        ratelimits:
          - model: openai/gpt-4o
            selector: {key: x-user-id, value: alice}
            limit: {tokens: 1000, unit: minute}
          - model: fast
            selector: {key: X-Team}
            limit: {tokens: 50000, unit: hour}
        """,
    )
    first, second = config.access.ratelimits
    assert (first.model, first.header, first.value) == ("openai/gpt-4o", "x-user-id", "alice")
    assert first.limit == TokenLimit(1000, "minute") and first.limit.window_s == 60
    assert (second.header, second.value, second.limit.window_s) == ("x-team", None, 3600)
    assert config.access.counts_tokens and config.access.meters
    assert not any("ratelimits" in w for w in config.warnings)


def test_ratelimit_for_an_unknown_model_warns(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        ratelimits:
          - model: nowhere/model
            selector: {key: x-user-id, value: a}
            limit: {tokens: 10, unit: minute}
        """,
    )
    assert any("never applies" in w for w in config.warnings)


def test_bad_ratelimits_are_errors(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        ratelimits:
          - model: openai/gpt-4o
            selector: {key: x-user-id}
            limit: {tokens: 10, unit: day}
        """,
    )
    assert len(found) == 1 and "ratelimits[0].limit.unit" in found[0] and "day" in found[0]
    found = problems(tmp_path, "ratelimits:\n  - model: openai/gpt-4o\n")
    assert any("'selector'" in p for p in found) and any("'limit'" in p for p in found)


def test_clients_by_env_key_and_by_digest(tmp_path: Path) -> None:
    digest = hashlib.sha256(b"team-b-secret").hexdigest()
    config = load(
        tmp_path,
        f"""\
        archway:
          clients:
            - name: team-a
              key: $TEAM_A_KEY
              models: [fast, anthropic/claude-sonnet-4]
              limit: {{tokens: 500, unit: minute}}
            - name: team-b
              key_sha256: {digest}
        """,
    )
    a, b = config.access.clients
    assert a == Client(
        "team-a",
        hash_key("team-a-secret"),
        frozenset({"fast", "anthropic/claude-sonnet-4"}),
        TokenLimit(500, "minute"),
    )
    assert b.models is None and b.limit is None
    assert config.access.lookup("team-b-secret") == b
    assert config.access.lookup("team-a-secret") == a
    assert config.access.lookup("nope") is None
    # The key is nowhere in the loaded config.
    assert "team-a-secret" not in repr(config)


def test_client_problems(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        archway:
          clients:
            - name: a
              key: literal-secret-in-file
            - name: a
              key_sha256: abc
            - name: c
              key: $TEAM_A_KEY
              models: [openai/unknown-model]
            - name: d
        """,
    )
    text = "\n".join(found)
    assert "a client key written into the config" in text
    assert "literal-secret-in-file" not in text
    assert "duplicate client name 'a'" in text
    assert "not a SHA-256 digest" in text
    assert "no provider or alias serves 'openai/unknown-model'" in text
    assert "give exactly one of key and key_sha256" in text


def test_redis_url_from_archway_or_plano_session_cache(tmp_path: Path) -> None:
    config = load(tmp_path, "archway:\n  redis: redis://cache:6379/0\n")
    assert config.access.redis_url == "redis://cache:6379/0"
    config = load(
        tmp_path,
        """\
        routing:
          session_cache: {type: redis, url: "redis://shared:6379", tenant_header: X-Tenant}
        """,
    )
    assert config.access.redis_url == "redis://shared:6379"
    assert config.access.tenant_header == "x-tenant"
    assert not config.warnings
    found = problems(tmp_path, "archway:\n  redis: http://cache\n")
    assert "not a Redis URL" in found[0]


def test_client_key_headers() -> None:
    assert client_key({"authorization": "Bearer k1"}) == ("k1", "authorization")
    assert client_key({"x-api-key": "k2"}) == ("k2", "x-api-key")
    assert client_key({"x-archway-api-key": "k3", "authorization": "Bearer p"}) == (
        "k3",
        "x-archway-api-key",
    )
    assert client_key({"authorization": "Basic abc"}) == (None, None)


def test_counters_a_request_counts_against(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        ratelimits:
          - model: fast
            selector: {key: x-user-id}
            limit: {tokens: 100, unit: minute}
          - model: openai/gpt-4o
            selector: {key: x-user-id, value: vip}
            limit: {tokens: 1000, unit: hour}
        archway:
          clients:
            - {name: team-a, key: $TEAM_A_KEY, limit: {tokens: 10, unit: hour}}
        """,
    )
    access = config.access
    client = access.clients[0]
    by_alias = counters_for(access, client, "openai/gpt-4o", ("fast",), {"x-user-id": "bob"})
    assert [c.limit for c in by_alias] == [10, 100]
    vip = counters_for(access, None, "openai/gpt-4o", (None,), {"x-user-id": "vip"})
    assert [c.limit for c in vip] == [1000]
    # Each selector value has its own counter; the value itself is not in the key.
    alice = counters_for(access, None, "openai/gpt-4o", ("fast",), {"x-user-id": "alice"})
    bob = counters_for(access, None, "openai/gpt-4o", ("fast",), {"x-user-id": "bob"})
    assert alice[0].key != bob[0].key and "alice" not in alice[0].key
    assert counters_for(access, None, "anthropic/claude-sonnet-4", (None,), {}) == ()


def test_a_ticket_survives_its_header_and_garbage_is_none() -> None:
    from ext_proc.access.gate import Ticket

    ticket = Ticket("team-a", "openai", "openai/gpt-4o", 1_700_000_000_000, 42, (("k", 60),))
    assert Ticket.from_header(ticket.header_value()) == ticket
    assert Ticket(None, "p", "m", 0).header_value().isascii()
    for bad in (None, "", "not base64!", "bm90IGpzb24=", "W10="):
        assert Ticket.from_header(bad) is None
