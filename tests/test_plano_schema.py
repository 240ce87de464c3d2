"""Every key of Plano's config schema either works in Archway or gets a one-line
warning from the loader: none is silently ignored.

``tests/data/plano_schema_keys.txt`` lists the schema's key paths. Two configs
below (Plano's current format and the spec's) set every one of them; loading
them, each path must be either one Archway reads (``CONSUMED``) or named, itself
or through its section, by a warning.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

from ext_proc.config import load_config

DATA = Path(__file__).resolve().parent / "data"
SCHEMA = Path(
    os.environ.get("ARCHWAY_PLANO_SCHEMA", "/work/shared/reference/plano_config_schema.yaml")
)
KEYS = [
    line
    for line in (DATA / "plano_schema_keys.txt").read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]

CONSUMED = {
    "version",
    "listeners",
    "listeners[].name",
    "listeners[].port",
    "listeners[].address",
    "listeners[].timeout",
    "listeners[].type",
    "listeners[].max_retries",
    "listeners.egress_traffic",
    "listeners.egress_traffic.address",
    "listeners.egress_traffic.port",
    "listeners.egress_traffic.message_format",
    "listeners.egress_traffic.timeout",
    "model_aliases",
    "overrides",
    "overrides.upstream_connect_timeout",
    "overrides.upstream_tls_ca_path",
    "routing",
    "routing.session_ttl_seconds",
    "routing.session_max_entries",
    "routing.session_cache",
    "routing.session_cache.type",
    "routing.session_cache.url",
    "routing.session_cache.tenant_header",
    "ratelimits",
    "ratelimits[].model",
    "ratelimits[].selector",
    "ratelimits[].selector.key",
    "ratelimits[].selector.value",
    "ratelimits[].limit",
    "ratelimits[].limit.tokens",
    "ratelimits[].limit.unit",
    "state_storage",
    "state_storage.type",
    "state_storage.connection_string",
    "routing_preferences",
    "routing_preferences[].name",
    "routing_preferences[].description",
    "routing_preferences[].models",
    *(
        f"{section}{key}"
        for section in ("model_providers", "llm_providers")
        for key in (
            "",
            "[].name",
            "[].access_key",
            "[].model",
            "[].default",
            "[].base_url",
            "[].passthrough_auth",
            "[].http_host",
            "[].provider_interface",
            "[].headers",
            "[].routing_preferences",
            "[].routing_preferences[].name",
            "[].routing_preferences[].description",
        )
    ),
}
"""Schema keys Archway reads and acts on (each has its own tests elsewhere)."""

CURRENT = """\
version: v0.4.0
agents:
  - {id: planner, url: "http://localhost:10500"}
filters:
  - {id: redact, url: "http://localhost:10501", type: http, transport: streamable-http,
     tool: redact}
listeners:
  - type: agent
    name: helpdesk
    port: 8001
    router: plano_orchestrator_v1
    agents:
      - {id: planner, description: plans, default: true, input_filters: [redact]}
  - type: model
    name: llm_in
    address: 127.0.0.1
    port: 12000
    timeout: 30s
    max_retries: 2
    input_filters: [redact]
    output_filters: [redact]
endpoints:
  app: {endpoint: "localhost:8000"}
model_providers:
  - name: main
    model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    default: true
    base_url: https://api.openai.com/v1
    passthrough_auth: false
    http_host: api.openai.com
    headers: {x-team: gateway}
  - model: anthropic/claude-sonnet-4-6
    access_key: $ANTHROPIC_API_KEY
  - model: mycorp/llama
    base_url: https://llm.example.com/v1
    provider_interface: openai
    routing_preferences:
      - {name: chit-chat, description: small talk}
model_aliases:
  smart: {target: gpt-4o}
overrides:
  prompt_target_intent_matching_threshold: 0.6
  optimize_context_window: true
  use_agent_orchestrator: false
  disable_signals: true
  upstream_connect_timeout: 2s
  upstream_tls_ca_path: /etc/ssl/certs/ca-certificates.crt
  llm_routing_model: plano/Arch-Router
  agent_orchestration_model: plano/Plano-Orchestrator
  orchestrator_model_context_length: 4096
prompt_caching:
  enabled: true
  session_affinity: true
  inject_cache_control: true
  min_prefix_tokens: 1024
  session_ttl_seconds: 300
system_prompt: be brief
prompt_targets:
  - name: weather
    default: false
    description: the weather
    auto_llm_dispatch_on_response: true
    parameters:
      - {name: city, additionalProperties: false, required: true, default: Paris,
         description: a city, type: str, enum: [Paris], in_path: false, format: text}
    endpoint: {name: app, path: /weather, http_method: GET, http_headers: {a: b}}
    system_prompt: answer
ratelimits:
  - model: openai/gpt-4o
    selector: {key: x-user, value: alice}
    limit: {tokens: 100, unit: minute}
tracing:
  random_sampling: 10
  trace_arch_internal: false
  opentracing_grpc_endpoint: http://localhost:4317
  span_attributes: {header_prefixes: [x-], static: {env: test}}
  exporters:
    - {type: posthog, url: "https://x", api_key: phc-1, distinct_id_header: x-user,
       capture_messages: false}
mode: llm
routing:
  llm_provider: plano
  model: Arch-Router
  session_ttl_seconds: 60
  session_max_entries: 100
  session_cache: {type: redis, url: "redis://localhost", tenant_header: x-tenant}
  routing_budget: {max_switch_spend_pct: 10, replenish_on_rebind: true,
                   cache_read_discount: 0.1, record_counterfactual: false}
  route_on_user_only: true
state_storage:
  type: postgres
  connection_string: postgresql://u:p@localhost/db
prompt_guards:
  input_guards:
    jailbreak:
      on_exception: {message: no}
routing_preferences:
  - name: coding
    description: writing code
    models: [anthropic/claude-sonnet-4-6, openai/gpt-4o]
    selection_policy: {prefer: cheapest}
model_metrics_sources:
  - {type: prometheus, provider: openai, url: "http://localhost:9090", refresh_interval: 60,
     model_aliases: {}, query: up}
"""

SPEC = """\
version: v0.1
listeners:
  egress_traffic: {address: 0.0.0.0, port: 12000, message_format: openai, timeout: 30s}
  ingress_traffic: {address: 0.0.0.0, port: 10000, message_format: openai, timeout: 30s}
llm_providers:
  - name: main
    model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    default: true
    base_url: https://api.openai.com/v1
    passthrough_auth: false
    http_host: api.openai.com
    headers: {x-team: gateway}
    routing_preferences:
      - {name: coding, description: writing code}
  - model: mycorp/llama
    base_url: https://llm.example.com/v1
    provider_interface: openai
"""

ENV = {"OPENAI_API_KEY": "sk-1", "ANTHROPIC_API_KEY": "sk-2"}


def _paths(node: Any, path: str = "") -> set[str]:
    """Every key path in a loaded YAML document, list items as ``[]``; the
    insides of free-form maps (``endpoints``, ``headers``, ...) are not walked."""
    out: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else str(key)
            out.add(child)
            if any(k.startswith((f"{child}.", f"{child}[]")) for k in KEYS):
                out |= _paths(value, child)
    elif isinstance(node, list):
        for item in node:
            out |= _paths(item, path + "[]")
    return out


def _warned(tmp_path: Path, name: str, text: str) -> set[str]:
    path = tmp_path / name
    path.write_text(dedent(text), encoding="utf-8")
    config = load_config(path, environ=ENV)
    found = set()
    for warning in config.warnings:
        # FILE:LINE: key.path: message
        key_path = warning.split(": ", 2)[1]
        found.add(re.sub(r"\[\d+\]", "[]", key_path))
    return found


def _covered(key: str, warned: set[str]) -> bool:
    parts = re.split(r"(?=\.|\[\])", key)
    return any("".join(parts[:n]) in warned for n in range(1, len(parts) + 1))


def test_the_two_configs_set_every_schema_key() -> None:
    written = _paths(yaml.safe_load(CURRENT)) | _paths(yaml.safe_load(SPEC))
    assert sorted(set(KEYS) - written) == []
    assert sorted(written - set(KEYS)) == []


def test_every_schema_key_is_consumed_or_warned(tmp_path: Path) -> None:
    warned = _warned(tmp_path, "current.yaml", CURRENT) | _warned(tmp_path, "spec.yaml", SPEC)
    silent = [key for key in KEYS if key not in CONSUMED and not _covered(key, warned)]
    assert silent == [], "schema keys neither read nor warned about"
    # A key Archway reads is not also called ignored.
    assert sorted(CONSUMED & warned) == []


def test_the_key_list_matches_plano_schema() -> None:
    if not SCHEMA.is_file():
        pytest.skip(f"Plano's schema is not at {SCHEMA} (set ARCHWAY_PLANO_SCHEMA)")
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    found: list[str] = []

    def walk(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            return
        for combinator in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(combinator, []):
                walk(sub, path)
        for key, sub in node.get("properties", {}).items():
            child = f"{path}.{key}" if path else key
            if child not in found:
                found.append(child)
            walk(sub, child)
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(schema, "")
    assert found == KEYS
