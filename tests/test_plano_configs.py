"""Configs in the shapes of Plano's own demos (its model-alias, local-router,
ChatGPT-subscription and agent demos, written afresh here) load unchanged with
dummy keys, and every provider Plano knows is in Archway's catalog."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
import yaml

from ext_proc.apis import Endpoint, WireAPI
from ext_proc.config import load_config
from ext_proc.errors import GatewayError
from ext_proc.routing.body import parse_request
from ext_proc.routing.catalog import CATALOG, spec_for
from ext_proc.routing.decide import decide, look, resolve_model
from ext_proc.routing.plan import plan_request
from ext_proc.routing.resolve import build_routing_table

SCHEMA = Path("/work/shared/reference/plano_config_schema.yaml")


DUMMY_ENV = {
    name: f"dummy-{name.lower()}"
    for name in (
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "AZURE_API_KEY",
        "AWS_BEARER_TOKEN_BEDROCK",
        "GROK_API_KEY",
        "MIMO_API_KEY",
        "ZHIPU_API_KEY",
        "DO_API_KEY",
        "VERCEL_API_KEY",
        "EDENAI_API_KEY",
        "DASHSCOPE_API_KEY",
        "MOONSHOT_API_KEY",
        "DB_PASSWORD",
    )
}

ALIASES_DEMO = """\
version: v0.3.0
listeners:
  - type: model
    name: llm_in
    port: 12000
    max_retries: 2
model_providers:
  - model: openai/gpt-5-mini
    access_key: $OPENAI_API_KEY
    default: true
  - model: openai/*
    access_key: $OPENAI_API_KEY
  - model: anthropic/*
    access_key: $ANTHROPIC_API_KEY
  - model: anthropic/claude-haiku-4-5
    access_key: $ANTHROPIC_API_KEY
  - model: azure_openai/gpt-5-mini-deploy
    access_key: $AZURE_API_KEY
    base_url: https://example-resource.openai.azure.com
  - model: amazon_bedrock/us.amazon.nova-lite-v1:0
    access_key: $AWS_BEARER_TOKEN_BEDROCK
    base_url: https://bedrock-runtime.eu-west-1.amazonaws.com
  - model: amazon_bedrock/us.anthropic.claude-sonnet-4-v1:0
    access_key: $AWS_BEARER_TOKEN_BEDROCK
    base_url: https://bedrock-runtime.eu-west-1.amazonaws.com
  - model: ollama/qwen3
    base_url: http://localhost:11434
  - model: xai/grok-4
    access_key: $GROK_API_KEY
model_aliases:
  quick:
    target: claude-haiku-4-5
  coder:
    target: us.amazon.nova-lite-v1:0
  chat:
    target: gpt-5-mini
routing_preferences:
  - name: chat
    description: everyday questions
    models: [openai/gpt-5-mini, xai/grok-4]
tracing:
  random_sampling: 100
"""

LOCAL_ROUTER_DEMO = """\
version: v0.3.0
overrides:
  llm_routing_model: plano/Arch-Router-1.5B
listeners:
  - type: model
    name: llm_in
    port: 12000
model_providers:
  - model: plano/Arch-Router-1.5B
    base_url: http://localhost:11434
  - model: openai/gpt-4o-mini
    access_key: $OPENAI_API_KEY
    default: true
  - model: openai/gpt-4.1
    access_key: $OPENAI_API_KEY
    routing_preferences:
      - name: writing code
        description: writing new functions or classes
"""

STATE_DEMO = """\
version: v0.3.0
model_providers:
  - model: openai/gpt-4o-mini
    access_key: $OPENAI_API_KEY
    default: true
state_storage:
  type: postgres
  connection_string: "postgresql://app:$DB_PASSWORD@db.example:5432/plano"
"""

CHATGPT_DEMO = """\
version: v0.3.0
listeners:
  - type: model
    name: llm_in
    port: 12000
model_providers:
  - model: chatgpt/*
"""

AGENT_DEMO = """\
version: v0.3.0
agents:
  - id: planner
    url: http://localhost:10500
filters:
  - id: redact
    url: http://localhost:10501
model_providers:
  - model: openai/gpt-4o
    access_key: $OPENAI_API_KEY
    default: true
listeners:
  - type: agent
    name: helpdesk
    port: 8001
    router: plano_orchestrator_v1
    agents:
      - id: planner
        description: plans the steps
        filter_chain: [redact]
  - type: model
    name: llm_in
    port: 12000
    input_filters: [redact]
tracing:
  random_sampling: 50
"""

EVERY_HOSTED_PROVIDER = """\
version: v0.4.0
model_providers:
  - model: xiaomi/mimo-v2-flash
    access_key: $MIMO_API_KEY
    default: true
  - model: zhipu/glm-4.6
    access_key: $ZHIPU_API_KEY
  - model: digitalocean/llama3.3-70b-instruct
    access_key: $DO_API_KEY
  - model: vercel/openai/gpt-5
    access_key: $VERCEL_API_KEY
  - model: edenai/mistral/mistral-small
    access_key: $EDENAI_API_KEY
  - model: qwen/qwen3-max
    access_key: $DASHSCOPE_API_KEY
    base_url: https://dashscope-intl.aliyuncs.com
  - model: moonshotai/kimi-k2
    access_key: $MOONSHOT_API_KEY
"""


def load(tmp_path: Path, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "config.yaml"
    path.write_text(dedent(text), encoding="utf-8")
    return load_config(path, environ=DUMMY_ENV)


def test_alias_demo_with_bedrock_loads_and_resolves(tmp_path: Path) -> None:
    config = load(tmp_path, ALIASES_DEMO)
    table = build_routing_table(config)
    coder = resolve_model(table, "coder")
    assert coder.model == "amazon_bedrock/us.amazon.nova-lite-v1:0"
    assert coder.upstream.host == "bedrock-runtime.eu-west-1.amazonaws.com"
    assert spec_for(coder.provider).api is WireAPI.BEDROCK  # type: ignore[union-attr]
    assert resolve_model(table, "quick").model == "anthropic/claude-haiku-4-5"
    assert [w.split(": ")[1] for w in config.warnings] == ["tracing"]


def test_a_bedrock_request_is_refused_until_converse_is_wired(
    tmp_path: Path,
) -> None:
    table = build_routing_table(load(tmp_path, ALIASES_DEMO))
    headers = {"content-type": "application/json"}
    body = b'{"model": "coder", "messages": [{"role": "user", "content": "hi"}]}'
    parsed = parse_request(headers, body)
    decision = decide(table, look(table, parsed.data, headers))
    with pytest.raises(GatewayError) as info:
        plan_request(decision, parsed, Endpoint.CHAT_COMPLETIONS, headers)
    assert info.value.status == 400
    assert info.value.code == "unsupported_api_pair"
    assert "bedrock converse API" in info.value.message


def test_local_router_demo_loads_its_plano_model_as_an_openai_server(tmp_path: Path) -> None:
    config = load(tmp_path, LOCAL_ROUTER_DEMO)
    router_model = resolve_model(build_routing_table(config), "plano/Arch-Router-1.5B")
    assert (router_model.upstream.host, router_model.upstream.port) == ("localhost", 11434)
    assert spec_for(router_model.provider).api is WireAPI.OPENAI  # type: ignore[union-attr]
    assert [w.split(": ")[1] for w in config.warnings] == ["overrides.llm_routing_model"]


def test_chatgpt_demo_forwards_the_clients_token(tmp_path: Path) -> None:
    config = load(tmp_path, CHATGPT_DEMO)
    (chatgpt,) = config.providers
    assert chatgpt.passthrough_auth and chatgpt.access_key is None
    decision = resolve_model(build_routing_table(config), "chatgpt/gpt-5.2")
    assert decision.upstream.host == "chatgpt.com"


def test_agent_demo_loads_with_one_warning_per_unimplemented_part(tmp_path: Path) -> None:
    config = load(tmp_path, AGENT_DEMO)
    assert [w.split(": ")[1] for w in config.warnings] == [
        "agents",
        "filters",
        "listeners[0]",
        "listeners[1].input_filters",
        "tracing",
    ]
    assert [listener.port for listener in config.listeners] == [12000]


def test_every_hosted_provider_of_plano_needs_only_a_key(tmp_path: Path) -> None:
    config = load(tmp_path, EVERY_HOSTED_PROVIDER)
    assert config.warnings == ()
    table = build_routing_table(config)
    hosts = {p.provider: table.upstreams[p.model].host for p in config.providers}
    assert hosts == {
        "xiaomi": "api.xiaomimimo.com",
        "zhipu": "open.bigmodel.cn",
        "digitalocean": "inference.do-ai.run",
        "vercel": "ai-gateway.vercel.sh",
        "edenai": "api.edenai.run",
        "qwen": "dashscope-intl.aliyuncs.com",
        "moonshotai": "api.moonshot.ai",
    }


@pytest.mark.parametrize("provider", ["amazon_bedrock", "plano", "qwen"])
def test_providers_plano_requires_base_url_for_need_it_here_too(
    tmp_path: Path, provider: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"model_providers:\n  - model: {provider}/m\n    access_key: k\n")
    with pytest.raises(Exception, match=f"provider '{provider}' has no standard address"):
        load_config(path, environ={})


def test_every_provider_interface_in_plano_schema_is_in_the_catalog() -> None:
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    for section in ("model_providers", "llm_providers"):
        props = schema["properties"][section]["items"]["properties"]
        missing = set(props["provider_interface"]["enum"]) - set(CATALOG)
        assert not missing, f"{section}: {missing}"


def test_archway_check_accepts_the_alias_demo(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(ALIASES_DEMO, encoding="utf-8")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), **DUMMY_ENV},
        cwd=root,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "amazon_bedrock/us.amazon.nova-lite-v1:0" in done.stdout
    assert "llm_in: 0.0.0.0:12000, timeout 300s, max_retries 2" in done.stdout
    assert "chat -> openai/gpt-5-mini (then xai/grok-4): everyday questions" in done.stdout
    assert "dummy-" not in done.stdout + done.stderr


def test_archway_check_names_the_state_storage_and_hides_its_password(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(STATE_DEMO, encoding="utf-8")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), **DUMMY_ENV},
        cwd=root,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "state storage: postgres" in done.stdout
    assert "dummy-db_password" not in done.stdout + done.stderr
    assert load(tmp_path, STATE_DEMO).state_storage is not None
