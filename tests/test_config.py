"""Loading and validating config files: both Plano formats, env substitution, and
error messages that name file, line and key path and say how to fix them."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

import pytest

from ext_proc.config import (
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    ArchRouterOptions,
    Config,
    ConfigError,
    GatewaySettings,
    Listener,
    Overrides,
    RemoteRouterOptions,
    RouterSettings,
    RoutingPreference,
    load_config,
    load_config_text,
    parse_duration,
)
from ext_proc.state import StateStorageConfig

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

ENV = {
    "OPENAI_API_KEY": "sk-openai-TOPSECRET-1",
    "ANTHROPIC_API_KEY": "sk-ant-TOPSECRET-2",
    "MYCORP_API_KEY": "mycorp-TOPSECRET-3",
    "OPENROUTER_API_KEY": "sk-or-TOPSECRET-4",
}
SECRETS = tuple(ENV.values())

MINIMAL = """\
llm_providers:
  - model: openai/gpt-5.2
    access_key: $OPENAI_API_KEY
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text), encoding="utf-8")
    return path


def load(tmp_path: Path, text: str, **kwargs: object) -> Config:
    kwargs.setdefault("environ", ENV)
    return load_config(write(tmp_path, text), **kwargs)  # type: ignore[arg-type]


def problems(tmp_path: Path, text: str, **kwargs: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, **kwargs)
    assert info.value.problems, "a ConfigError always lists its problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def problem(tmp_path: Path, text: str, **kwargs: object) -> str:
    found = problems(tmp_path, text, **kwargs)
    assert len(found) == 1, found
    return found[0]


def where(tmp_path: Path, line: int, path: str) -> str:
    """The start of a message about ``path`` at ``line`` of tmp_path/config.yaml."""
    return f"{tmp_path / 'config.yaml'}:{line}: {path}: "


# ---------------------------------------------------------------------------------------
# The example files
# ---------------------------------------------------------------------------------------

MY_EXAMPLES = (
    "config.yaml",
    "model_routing.yaml",
    "alias_routing.yaml",
    "preference_routing.yaml",
    "plano_current.yaml",
)


@pytest.mark.parametrize("name", MY_EXAMPLES)
def test_examples_load(name: str) -> None:
    config = load_config(EXAMPLES / name, environ=ENV)
    assert config.source == (EXAMPLES / name).resolve()
    assert config.listeners
    assert config.providers
    for provider in config.providers:
        assert provider.access_key in SECRETS
        assert provider.access_key_ref is not None
        assert provider.line is not None


@pytest.mark.parametrize("name", MY_EXAMPLES)
def test_examples_load_without_secrets_when_allowed(name: str) -> None:
    config = load_config(EXAMPLES / name, environ={}, allow_missing_env=True)
    assert all(p.access_key is None for p in config.providers)
    assert all(p.access_key_ref for p in config.providers)


@pytest.mark.parametrize("name", MY_EXAMPLES)
def test_examples_need_their_secrets_by_default(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(EXAMPLES / name, environ={})
    assert "OPENAI_API_KEY is not set" in str(info.value)


def test_hybrid_example() -> None:
    config = load_config(EXAMPLES / "config.yaml", environ=ENV)
    assert config.listeners == (
        Listener(name="egress_traffic", address="0.0.0.0", port=12000, timeout_s=30.0),
    )
    assert [p.model for p in config.providers] == [
        "openai/gpt-5.2",
        "openai/gpt-5",
        "anthropic/claude-sonnet-4-5",
    ]
    assert config.default_provider is not None
    assert config.default_provider.model == "openai/gpt-5.2"
    assert config.aliases == {
        "fast-model": "gpt-5.2",
        "reasoning-model": "gpt-5",
        "creative-model": "claude-sonnet-4-5",
    }
    assert config.routing_preferences == (
        RoutingPreference(
            "complex_reasoning", "deep analysis and complex problem solving", ("openai/gpt-5",)
        ),
        RoutingPreference(
            "creative_tasks",
            "creative writing and content generation",
            ("anthropic/claude-sonnet-4-5",),
        ),
    )
    assert config.warnings == ()
    assert config.version is None
    assert config.overrides == Overrides()
    assert config.gateway == GatewaySettings()


def test_model_routing_example() -> None:
    config = load_config(EXAMPLES / "model_routing.yaml", environ=ENV)
    openai, gpt5, claude = config.providers
    assert (openai.provider, openai.model_id, openai.name) == (
        "openai",
        "gpt-5.2",
        "openai/gpt-5.2",
    )
    assert openai.default and not gpt5.default and not claude.default
    assert openai.access_key == ENV["OPENAI_API_KEY"]
    assert claude.access_key == ENV["ANTHROPIC_API_KEY"]
    assert claude.access_key_ref == "$ANTHROPIC_API_KEY"
    assert (openai.line, gpt5.line, claude.line) == (9, 13, 16)
    assert config.aliases == {}
    assert config.routing_preferences == ()


def test_alias_routing_example() -> None:
    config = load_config(EXAMPLES / "alias_routing.yaml", environ=ENV)
    assert config.default_provider is None
    assert config.aliases["creative-model"] == "claude-sonnet-4-5"


def test_preference_routing_example() -> None:
    config = load_config(EXAMPLES / "preference_routing.yaml", environ=ENV)
    assert [(p.name, p.models) for p in config.routing_preferences] == [
        ("code understanding", ("openai/gpt-5",)),
        ("complex reasoning", ("openai/gpt-5",)),
        ("creative writing", ("anthropic/claude-sonnet-4-5",)),
        ("code generation", ("anthropic/claude-sonnet-4-5",)),
    ]
    assert config.routing_preferences[0].description.startswith("understand and explain")


def test_plano_current_example() -> None:
    path = EXAMPLES / "plano_current.yaml"
    config = load_config(path, environ=ENV)
    assert config.version == "v0.4.0"
    assert config.listeners == (
        Listener(name="model_listener", address="0.0.0.0", port=12000, timeout_s=30.0),
    )
    by_model = {p.model: p for p in config.providers}
    custom = by_model["mycorp/llama-3.3-70b-instruct"]
    assert custom.name == "mycorp-llama"
    assert custom.base_url == "https://llm.mycorp.example/v1"
    assert custom.provider_interface == "openai"
    assert custom.interface == "openai"
    assert by_model["openrouter/*"].wildcard
    assert by_model["anthropic/claude-sonnet-4-5"].access_key_ref == "${ANTHROPIC_API_KEY}"
    prefs = {p.name: p.models for p in config.routing_preferences}
    assert prefs["code generation"] == ("anthropic/claude-sonnet-4-5", "openai/gpt-5")
    assert prefs["internal knowledge"] == ("mycorp/llama-3.3-70b-instruct",)
    assert config.aliases["reasoning-model"] == "openai/gpt-5"
    assert config.overrides.upstream_connect_timeout_s == 10.0
    tracing_line = next(
        n for n, line in enumerate(path.read_text().splitlines(), 1) if line.startswith("tracing:")
    )
    assert config.routing_preferences[0].fallbacks == ()
    assert config.warnings == (
        f"{path}:40: routing_preferences[0].models[1]: 'openai/gpt-5' speaks the openai API "
        "but 'anthropic/claude-sonnet-4-5' speaks anthropic; a failover retry cannot change "
        "API, so it is not in this route's failover chain",
        f"{path}:{tracing_line}: tracing: Plano section not implemented by Archway; ignored",
    )


# ---------------------------------------------------------------------------------------
# Listeners
# ---------------------------------------------------------------------------------------


def test_default_listener_when_listeners_absent(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL)
    assert config.listeners == (
        Listener(name="egress_traffic", address="0.0.0.0", port=12000, timeout_s=300.0),
    )
    assert config.warnings == ()


def test_legacy_listener_defaults_missing_fields(tmp_path: Path) -> None:
    config = load(tmp_path, "listeners:\n  egress_traffic:\n    port: 8080\n" + MINIMAL)
    assert config.listeners == (
        Listener(name="egress_traffic", address="0.0.0.0", port=8080, timeout_s=300.0),
    )


def test_list_listener_defaults_missing_fields(tmp_path: Path) -> None:
    config = load(tmp_path, "listeners:\n  - type: model\n    name: llm\n" + MINIMAL)
    assert config.listeners == (
        Listener(name="llm", address="0.0.0.0", port=12000, timeout_s=300.0),
    )


def test_ingress_traffic_is_ignored_with_a_warning(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        dedent("""\
        listeners:
          ingress_traffic:
            port: 10000
          egress_traffic:
            port: 12000
            timeout: 1m
        """)
        + MINIMAL,
    )
    assert [(lst.name, lst.timeout_s) for lst in config.listeners] == [("egress_traffic", 60.0)]
    assert config.warnings == (
        f"{where(tmp_path, 2, 'listeners.ingress_traffic')}"
        "ingress (prompt) listener not implemented by Archway; ignored",
    )


def test_prompt_and_agent_listeners_are_skipped_with_warnings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        dedent("""\
        listeners:
          - type: agent
            name: agents
            port: 8001
            router: plano_orchestrator_v1
            agents:
              - id: a
                description: b
          - type: model
            name: llm
            port: 12001
            address: 127.0.0.1
            timeout: 45s
            max_retries: 3
          - type: prompt
            name: prompts
            port: 10000
        """)
        + MINIMAL,
    )
    assert config.listeners == (
        Listener(name="llm", address="127.0.0.1", port=12001, timeout_s=45.0, max_retries=3),
    )
    assert config.warnings == (
        f"{where(tmp_path, 2, 'listeners[0]')}agent listener not implemented by Archway; skipped",
        f"{where(tmp_path, 15, 'listeners[2]')}prompt listener not implemented by Archway; skipped",
    )


def test_no_model_listener_falls_back_to_the_default(tmp_path: Path) -> None:
    config = load(tmp_path, "listeners:\n  - type: prompt\n    name: p\n" + MINIMAL)
    assert config.listeners[0].name == "egress_traffic"
    assert any("no model listener" in w for w in config.warnings)


def test_listener_type_and_name_are_required(tmp_path: Path) -> None:
    found = problems(tmp_path, "listeners:\n  - name: x\n  - type: model\n" + MINIMAL)
    assert found == [
        f"{where(tmp_path, 2, 'listeners[0]')}missing required key 'type'; add `type: model`",
        f"{where(tmp_path, 3, 'listeners[1]')}missing required key 'name'; "
        "add `name: model_listener`",
    ]


def test_unknown_listener_type(tmp_path: Path) -> None:
    found = problem(tmp_path, "listeners:\n  - type: modle\n    name: x\n" + MINIMAL)
    assert found.startswith(where(tmp_path, 2, "listeners[0].type"))
    assert "did you mean 'model'?" in found


def test_listener_wrong_types(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        dedent("""\
        listeners:
          egress_traffic:
            port: "12000"
            timeout: soon
            message_format: anthropic
            address: [a]
        """)
        + MINIMAL,
    )
    assert found == [
        f"{where(tmp_path, 3, 'listeners.egress_traffic.port')}expected an integer, got a "
        "string '12000'; write a whole number, without quotes",
        f"{where(tmp_path, 4, 'listeners.egress_traffic.timeout')}invalid duration 'soon'; "
        "write a number of seconds or a duration such as 30s, 500ms, 2m or 1h",
        f"{where(tmp_path, 5, 'listeners.egress_traffic.message_format')}unknown format "
        "'anthropic'; use one of: openai",
        f"{where(tmp_path, 6, 'listeners.egress_traffic.address')}expected a string, got a "
        "list; write a single string value",
    ]


def test_listener_port_out_of_range(tmp_path: Path) -> None:
    found = problem(tmp_path, "listeners:\n  egress_traffic:\n    port: 70000\n" + MINIMAL)
    assert found == (
        f"{where(tmp_path, 3, 'listeners.egress_traffic.port')}70000 is out of range; "
        "use a number from 0 to 65535"
    )


def test_port_zero_means_any_free_port(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "listeners:\n  egress_traffic:\n    port: 0\n"
        + MINIMAL
        + "archway:\n  admin_port: 0\n  ext_proc_port: 0\n",
    )
    assert config.listeners[0].port == 0
    assert (config.gateway.admin_port, config.gateway.ext_proc_port) == (0, 0)


def test_duplicate_listeners(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        dedent("""\
        listeners:
          - {type: model, name: a, port: 1000}
          - {type: model, name: a, port: 1001}
          - {type: model, name: b, port: 1000}
        """)
        + MINIMAL,
    )
    assert (
        f"{where(tmp_path, 3, 'listeners')}duplicate listener name 'a' (also at line 2)"
        in (found[0])
    )
    assert found[1].startswith(where(tmp_path, 4, "listeners"))
    assert "listener 'b' and listener 'a' (line 2) both use port 1000" in found[1]


def test_archway_port_clash_with_listener(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        MINIMAL + "archway:\n  admin_address: 0.0.0.0\n  admin_port: 12000\n",
    )
    assert found == (
        f"{where(tmp_path, 6, 'archway.admin_port')}archway.admin_port and listener "
        "'egress_traffic' both use port 12000; give each its own port"
    )


# ---------------------------------------------------------------------------------------
# Providers
# ---------------------------------------------------------------------------------------


def test_provider_fields(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        model_providers:
          - model: openai/gpt-5.2
            access_key: literal-key
          - name: claude-via-router
            model: openrouter/anthropic/claude-sonnet-4-5
            access_key: ${OPENROUTER_API_KEY}
            passthrough_auth: true
            http_host: openrouter.ai
            headers:
              HTTP-Referer: https://example.com
              X-Title: Archway
          - model: groq/*
        """,
    )
    literal, routed, wildcard = config.providers
    assert literal.access_key == "literal-key"
    assert literal.access_key_ref is None
    assert literal.name == "openai/gpt-5.2"
    assert routed.provider == "openrouter"
    assert routed.model_id == "anthropic/claude-sonnet-4-5"
    assert routed.name == "claude-via-router"
    assert routed.access_key == ENV["OPENROUTER_API_KEY"]
    assert routed.access_key_ref == "${OPENROUTER_API_KEY}"
    assert routed.passthrough_auth is True
    assert routed.http_host == "openrouter.ai"
    assert routed.headers == (("HTTP-Referer", "https://example.com"), ("X-Title", "Archway"))
    assert (literal.line, routed.line, wildcard.line) == (2, 4, 12)
    assert wildcard.wildcard and wildcard.model_id == "*" and wildcard.access_key is None


def test_providers_needing_base_url(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: ollama/llama3.2
          - model: azure_openai/gpt-4o
          - model: custom/my-model
          - model: ollama/qwen3
            base_url: http://localhost:11434
          - model: ollama/phi4
            provider_interface: openai
        """,
    )
    assert found == [
        f"{where(tmp_path, 2, 'llm_providers[0]')}provider 'ollama' has no standard address, "
        "so it needs base_url; add base_url: http://localhost:11434",
        f"{where(tmp_path, 3, 'llm_providers[1]')}provider 'azure_openai' has no standard "
        "address, so it needs base_url; add base_url: https://YOUR-RESOURCE.openai.azure.com",
        f"{where(tmp_path, 4, 'llm_providers[2]')}provider 'custom' has no standard address, "
        "so it needs base_url; add base_url: https://llm.example.com/v1",
        f"{where(tmp_path, 7, 'llm_providers[4]')}provider 'ollama' has no standard address, "
        "so it needs base_url; add base_url: http://localhost:11434",
    ]


def test_unknown_provider_needs_base_url_and_provider_interface(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n  - model: mycorp/llama\n")
    assert found.startswith(where(tmp_path, 2, "llm_providers[0]"))
    assert "unknown provider 'mycorp' in 'mycorp/llama'" in found
    assert "needs both base_url and provider_interface" in found


def test_unknown_provider_did_you_mean(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n  - model: OpenAI/gpt-5.2\n")
    assert "unknown provider 'OpenAI'" in found
    assert "did you mean 'openai'?" in found


def test_unknown_provider_with_interface_still_needs_base_url(tmp_path: Path) -> None:
    found = problem(
        tmp_path, "llm_providers:\n  - model: mycorp/llama\n    provider_interface: openai\n"
    )
    assert found.startswith(where(tmp_path, 2, "llm_providers[0]"))
    assert "needs base_url" in found


def test_provider_interface_must_be_in_the_catalog(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: co/command
            base_url: https://api.example.com/v1
            provider_interface: cohere
        """,
    )
    assert found.startswith(where(tmp_path, 4, "llm_providers[0].provider_interface"))
    assert "provider_interface 'cohere' is not supported by Archway; use one of: openai" in found


def test_base_url_must_be_http(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: ollama/a
            base_url: localhost:11434
          - model: ollama/b
            base_url: ftp://example.com
          - model: ollama/c
            base_url: http://example.com:99999
          - model: ollama/d
            base_url: http://127.0.0.1:11434
        """,
    )
    assert [p.split(": ")[1] for p in found] == [
        "llm_providers[0].base_url",
        "llm_providers[1].base_url",
        "llm_providers[2].base_url",
    ]
    assert found[0] == (
        f"{where(tmp_path, 3, 'llm_providers[0].base_url')}base_url 'localhost:11434' is not an "
        "http(s) URL; write it like https://api.example.com/v1"
    )


def test_base_url_with_credentials_is_not_echoed(tmp_path: Path) -> None:
    found = problem(
        tmp_path, "llm_providers:\n  - model: ollama/a\n    base_url: ftp://user:pw-SECRET@host\n"
    )
    assert "pw-SECRET" not in found
    assert "is not an http(s) URL" in found


def test_model_must_be_provider_slash_model(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: gpt-4o
          - model: openai/
          - model: openai/gpt-*
          - model: openai/gpt 5
        """,
    )
    assert found[0] == (
        f"{where(tmp_path, 2, 'llm_providers[0].model')}'gpt-4o' is not in provider/model form; "
        "write the provider first, e.g. 'openai/gpt-4o'"
    )
    assert found[1].startswith(where(tmp_path, 3, "llm_providers[1].model"))
    assert "not in provider/model form" in found[1]
    assert found[2].startswith(where(tmp_path, 4, "llm_providers[2].model"))
    assert "only a whole model id can be a wildcard; write openai/*" in found[2]
    assert "'openai/gpt 5' is not in provider/model form" in found[3]


def test_model_is_required(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n  - name: x\n")
    assert found.startswith(where(tmp_path, 2, "llm_providers[0]"))
    assert "missing required key 'model'" in found


def test_duplicate_model_names_both_lines(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
          - model: openai/gpt-5
          - model: openai/gpt-5.2
        """,
    )
    assert found == (
        f"{where(tmp_path, 4, 'llm_providers[2].model')}duplicate model 'openai/gpt-5.2' "
        "(also at line 2); remove one of the two entries"
    )


def test_duplicate_name(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - {model: openai/gpt-5.2, name: fast}
          - {model: openai/gpt-5, name: fast}
        """,
    )
    assert found.startswith(where(tmp_path, 3, "llm_providers[1].name"))
    assert "duplicate name 'fast' (also at line 2)" in found


def test_more_than_one_default_names_both(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            default: true
          - model: openai/gpt-5
          - model: anthropic/claude-sonnet-4-5
            default: true
        """,
    )
    assert found == (
        f"{where(tmp_path, 5, 'llm_providers[2].default')}more than one default model: "
        "'anthropic/claude-sonnet-4-5' and 'openai/gpt-5.2' (line 2); "
        "keep `default: true` on one model only"
    )


def test_provider_wrong_types(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            default: "yes"
            passthrough_auth: 1
            name: 42
            headers: [a, b]
        """,
    )
    assert found == [
        f"{where(tmp_path, 3, 'llm_providers[0].default')}expected true or false, got a "
        "string 'yes'; write true or false, without quotes",
        f"{where(tmp_path, 4, 'llm_providers[0].passthrough_auth')}expected true or false, got "
        "an integer (1); write true or false",
        f"{where(tmp_path, 5, 'llm_providers[0].name')}expected a string, got an integer (42); "
        "put the value in quotes",
        f"{where(tmp_path, 6, 'llm_providers[0].headers')}expected a mapping, got a list; "
        "write it as indented `key: value` lines",
    ]


def test_bad_header_name_and_value(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            headers:
              "Bad Name": ok
              X-Token: 12345
              X-Empty:
        """,
    )
    assert found[0].startswith(where(tmp_path, 4, "llm_providers[0].headers['Bad Name']"))
    assert "not a valid HTTP header name" in found[0]
    assert found[1] == (
        f"{where(tmp_path, 5, 'llm_providers[0].headers.X-Token')}expected a string, got an "
        "integer; put the value in quotes"
    )
    assert found[2].startswith(where(tmp_path, 6, "llm_providers[0].headers.X-Empty"))


def test_providers_must_be_a_list(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n  model: openai/gpt-5.2\n")
    assert found.startswith(where(tmp_path, 2, "llm_providers"))
    assert "expected a list, got a mapping" in found


def test_no_providers(tmp_path: Path) -> None:
    found = problem(tmp_path, "version: v0.4.0\n")
    assert "llm_providers: no models are configured" in found
    assert "e.g. `- model: openai/gpt-5.2`" in found


def test_both_provider_sections_is_an_error(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
        model_providers:
          - model: openai/gpt-5.2
        """,
    )
    assert found == (
        f"{where(tmp_path, 3, 'model_providers')}llm_providers (line 1) and model_providers "
        "are both set; keep one list: model_providers is Plano's current name for llm_providers"
    )


# ---------------------------------------------------------------------------------------
# Aliases and routing preferences
# ---------------------------------------------------------------------------------------

PROVIDERS = """\
llm_providers:
  - model: openai/gpt-5.2
  - model: openai/gpt-5
  - model: anthropic/claude-sonnet-4-5
"""


def test_alias_targets(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
          - model: groq/*
        model_aliases:
          a: {target: gpt-5.2}
          b: {target: openai/gpt-5.2}
          c: {target: groq/llama-3.3-70b}
          d: {target: llama-3.3-70b}
          plano.summarize.v1: {target: gpt-5.2}
        """,
    )
    assert config.aliases == {
        "a": "gpt-5.2",
        "b": "openai/gpt-5.2",
        "c": "groq/llama-3.3-70b",
        "d": "llama-3.3-70b",
        "plano.summarize.v1": "gpt-5.2",
    }


def test_alias_target_matching_no_model_lists_the_models(tmp_path: Path) -> None:
    found = problem(tmp_path, PROVIDERS + "model_aliases:\n  fast:\n    target: gpt-9\n")
    assert found == (
        f"{where(tmp_path, 7, 'model_aliases.fast.target')}alias target 'gpt-9' matches no "
        "configured model; available models: openai/gpt-5.2, openai/gpt-5, "
        "anthropic/claude-sonnet-4-5; use one of those, or add 'gpt-9' to llm_providers"
    )


def test_alias_key_path_quotes_dotted_names(tmp_path: Path) -> None:
    found = problem(tmp_path, PROVIDERS + "model_aliases:\n  plano.v1:\n    target: nope/x\n")
    assert found.startswith(where(tmp_path, 7, "model_aliases['plano.v1'].target"))


def test_ambiguous_bare_alias_target(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-4o
          - model: openrouter/gpt-4o
        model_aliases:
          x: {target: gpt-4o}
        """,
    )
    assert found.startswith(where(tmp_path, 5, "model_aliases.x.target"))
    assert "is ambiguous: it is served by openai/gpt-4o, openrouter/gpt-4o" in found
    assert "write the full provider/model" in found


def test_alias_needs_target(tmp_path: Path) -> None:
    found = problems(tmp_path, PROVIDERS + "model_aliases:\n  x: {tagret: gpt-5}\n  y: gpt-5\n")
    assert found == [
        f"{where(tmp_path, 6, 'model_aliases.x.tagret')}unknown key 'tagret'; "
        "did you mean 'target'?",
        f"{where(tmp_path, 6, 'model_aliases.x')}missing required key 'target'; "
        "add `target: provider/model`",
        f"{where(tmp_path, 7, 'model_aliases.y')}expected a mapping, got a string 'gpt-5'; "
        "write it as indented `key: value` lines",
    ]


def test_alias_to_a_wildcard_is_an_error(tmp_path: Path) -> None:
    found = problem(
        tmp_path, "llm_providers:\n  - model: openai/*\nmodel_aliases:\n  x: {target: openai/*}\n"
    )
    assert "alias target 'openai/*' is a wildcard" in found


def test_top_level_routing_preferences(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        PROVIDERS
        + dedent("""\
        routing_preferences:
          - name: code
            description: writing code
            models: [gpt-5, openai/gpt-5.2]
            selection_policy: {prefer: cheapest}
        """),
    )
    assert config.routing_preferences == (
        RoutingPreference(
            "code",
            "writing code",
            ("openai/gpt-5", "openai/gpt-5.2"),
            fallbacks=("openai/gpt-5.2",),
        ),
    )
    assert config.warnings == (
        f"{where(tmp_path, 9, 'routing_preferences[0].selection_policy')}"
        "Plano setting not used by Archway; ignored",
    )


def test_route_models_of_another_api_are_warned_and_not_failed_over_to(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        PROVIDERS
        + dedent("""        routing_preferences:
          - name: code
            description: writing code
            models: [anthropic/claude-sonnet-4-5, gpt-5]
        """),
    )
    (code,) = config.routing_preferences
    assert code.models == ("anthropic/claude-sonnet-4-5", "openai/gpt-5")
    assert code.fallbacks == ()
    assert config.warnings == (
        f"{where(tmp_path, 8, 'routing_preferences[0].models[1]')}'openai/gpt-5' speaks the "
        "openai API but 'anthropic/claude-sonnet-4-5' speaks anthropic; a failover retry "
        "cannot change API, so it is not in this route's failover chain",
    )


def test_route_fallbacks_beyond_four_are_warned(tmp_path: Path) -> None:
    names = [f"openai/m{n}" for n in range(6)]
    config = load(
        tmp_path,
        "llm_providers:\n"
        + "".join(f"  - model: {n}\n" for n in names)
        + f"routing_preferences:\n  - {{name: r, description: d, models: [{', '.join(names)}]}}\n",
    )
    assert config.routing_preferences[0].fallbacks == tuple(names[1:5])
    assert len(config.warnings) == 1
    assert "at most 4 fallbacks are tried; 'openai/m5' is left out" in config.warnings[0]


def test_inline_preferences_of_one_name_merge_in_order_as_in_plano(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        model_providers:
          - model: openai/gpt-5
            routing_preferences:
              - {name: code, description: writing code}
          - model: openai/gpt-5.2
            routing_preferences:
              - {name: code, description: code again}
              - {name: chat, description: small talk}
        """,
    )
    assert config.routing_preferences == (
        RoutingPreference(
            "code",
            "writing code",
            ("openai/gpt-5", "openai/gpt-5.2"),
            fallbacks=("openai/gpt-5.2",),
        ),
        RoutingPreference("chat", "small talk", ("openai/gpt-5.2",)),
    )
    assert config.warnings == (
        f"{where(tmp_path, 7, 'model_providers[1].routing_preferences[0].name')}routing preference "
        "'code' was described differently at line 4; the first description is kept, as in Plano",
    )


def test_inline_preferences_in_current_format(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        version: v0.4.0
        listeners:
          - {type: model, name: llm, port: 12000}
        model_providers:
          - model: openai/gpt-5
            routing_preferences:
              - {name: reasoning, description: hard problems}
        routing_preferences:
          - {name: chat, description: small talk, models: [openai/gpt-5]}
        """,
    )
    assert [(p.name, p.models) for p in config.routing_preferences] == [
        ("reasoning", ("openai/gpt-5",)),
        ("chat", ("openai/gpt-5",)),
    ]


def test_routing_preference_model_matching_nothing(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        PROVIDERS
        + dedent("""\
        routing_preferences:
          - name: code
            description: writing code
            models:
              - openai/gpt-5
              - mistral/codestral
        """),
    )
    assert found.startswith(where(tmp_path, 10, "routing_preferences[0].models[1]"))
    assert "model 'mistral/codestral' matches no configured model" in found
    assert "available models: openai/gpt-5.2, openai/gpt-5, anthropic/claude-sonnet-4-5" in found


def test_routing_preference_required_keys(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        PROVIDERS
        + dedent("""\
        routing_preferences:
          - name: code
          - description: x
            models: []
        """),
    )
    assert found == [
        f"{where(tmp_path, 6, 'routing_preferences[0]')}missing required key 'description'; "
        "add `description: ...`",
        f"{where(tmp_path, 6, 'routing_preferences[0]')}missing required key 'models'; "
        "add `models: [provider/model, ...]`",
        f"{where(tmp_path, 7, 'routing_preferences[1]')}missing required key 'name'; "
        "add `name: ...`",
        f"{where(tmp_path, 8, 'routing_preferences[1].models')}the list is empty; "
        "name at least one model, e.g. [openai/gpt-5.2]",
    ]


def test_duplicate_routing_preference_names(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5
        routing_preferences:
          - name: code
            description: writing code
            models: [openai/gpt-5]
          - name: code
            description: also code
            models: [openai/gpt-5]
        """,
    )
    assert found.startswith(where(tmp_path, 7, "routing_preferences[1].name"))
    assert "duplicate routing preference 'code' (also at line 4)" in found
    assert "give each routing preference its own name" in found


def test_a_top_level_preference_replaces_an_inline_one_of_its_name(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5
            routing_preferences:
              - name: code
                description: writing code
          - model: openai/gpt-5.2
        routing_preferences:
          - name: code
            description: also code
            models: [openai/gpt-5.2]
        """,
    )
    assert config.routing_preferences == (
        RoutingPreference("code", "also code", ("openai/gpt-5.2",)),
    )
    assert config.warnings == (
        f"{where(tmp_path, 4, 'llm_providers[0].routing_preferences[0].name')}routing preference "
        "'code' is also defined top-level (line 8), which wins, as in Plano; this one is ignored",
    )


def test_inline_preference_misspelt_key(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5
            routing_preferences:
              - name: code
                descripton: writing code
        """,
    )
    assert found == [
        f"{where(tmp_path, 4, 'llm_providers[0].routing_preferences[0]')}missing required key "
        "'description'; add `description: ...`",
        f"{where(tmp_path, 5, 'llm_providers[0].routing_preferences[0].descripton')}unknown key "
        "'descripton'; did you mean 'description'?",
    ]


# ---------------------------------------------------------------------------------------
# Unknown keys, Plano sections, overrides and Archway's own settings
# ---------------------------------------------------------------------------------------


def test_unknown_top_level_key_did_you_mean(tmp_path: Path) -> None:
    found = problems(tmp_path, "llm_provders:\n  - model: openai/gpt-5.2\n")
    assert found[0] == (
        f"{where(tmp_path, 1, 'llm_provders')}unknown key 'llm_provders'; "
        "did you mean 'llm_providers'?"
    )


def test_unknown_nested_key_did_you_mean(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n  - model: openai/gpt-5.2\n    acces_key: x\n")
    assert found == (
        f"{where(tmp_path, 3, 'llm_providers[0].acces_key')}unknown key 'acces_key'; "
        "did you mean 'access_key'?"
    )


def test_unknown_key_without_a_close_match_lists_the_allowed_keys(tmp_path: Path) -> None:
    found = problem(tmp_path, MINIMAL + "overrides:\n  zzz: 1\n")
    assert found.startswith(where(tmp_path, 5, "overrides.zzz"))
    assert "unknown key 'zzz'; allowed keys here: " in found
    assert "upstream_connect_timeout" in found


def test_plano_sections_warn_once_each(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL
        + dedent("""\
        tracing:
          random_sampling: 100
          exporters:
            - {type: posthog, url: https://x, api_key: phc-TOPSECRET}
        mode: llm
        prompt_guards: {}
        endpoints:
          app: {endpoint: "localhost:8000"}
        system_prompt: be nice
        agents: []
        filters: []
        prompt_targets: []
        ratelimits: []
        routing: {session_ttl_seconds: 60, session_cache: {type: memory}}
        model_metrics_sources: []
        prompt_caching: {enabled: true}
        """),
    )
    sections = [w.split(": ")[1] for w in config.warnings]
    assert sections == [
        "tracing",
        "mode",
        "prompt_guards",
        "endpoints",
        "system_prompt",
        "agents",
        "filters",
        "prompt_targets",
        "model_metrics_sources",
        "prompt_caching",
    ]
    assert config.warnings[0] == (
        f"{where(tmp_path, 4, 'tracing')}Plano section not implemented by Archway; ignored"
    )
    assert not any("TOPSECRET" in w for w in config.warnings)


def test_plano_section_with_unset_variable_is_not_an_error(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "tracing:\n  exporters:\n    - {api_key: $PH}\n")
    assert len(config.warnings) == 1


def test_state_storage_is_loaded(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL).state_storage is None
    memory = load(tmp_path, MINIMAL + "state_storage: {type: memory}\n")
    assert memory.state_storage == StateStorageConfig("memory")
    assert memory.warnings == ()
    dsn = "postgresql://archway:pw-TOPSECRET@db:5432/state"
    postgres = load(
        tmp_path,
        MINIMAL + "state_storage:\n  type: postgres\n  connection_string: $PG\n",
        environ={**ENV, "PG": dsn},
    )
    assert postgres.state_storage == StateStorageConfig("postgres", dsn)
    assert postgres.warnings == ()
    assert "TOPSECRET" not in repr(postgres)


@pytest.mark.parametrize(
    ("section", "line", "message"),
    [
        ("state_storage: {type: redis}", 4, "type 'redis' is not one of memory, postgres"),
        ("state_storage: {type: postgres}", 4, "type postgres needs a connection_string"),
        ("state_storage: {connection_string: x}", 4, "missing required key 'type'"),
        ("state_storage: {type: memory, ttl: 1}", 4, "unknown key 'ttl'"),
        (
            "state_storage: {type: postgres, connection_string: $PG}",
            4,
            "environment variable PG is not set",
        ),
    ],
)
def test_bad_state_storage(tmp_path: Path, section: str, line: int, message: str) -> None:
    found = problem(tmp_path, MINIMAL + section + "\n")
    assert found.startswith(f"{tmp_path / 'config.yaml'}:{line}: state_storage")
    assert message in found


def test_overrides(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL
        + dedent("""\
        overrides:
          upstream_connect_timeout: 1500ms
          upstream_tls_ca_path: /etc/pki/tls/certs/ca-bundle.crt
          optimize_context_window: true
          llm_routing_model: Plano-Orchestrator
        """),
    )
    assert config.overrides == Overrides(
        upstream_connect_timeout_s=1.5, upstream_tls_ca_path="/etc/pki/tls/certs/ca-bundle.crt"
    )
    assert config.warnings == (
        f"{where(tmp_path, 7, 'overrides.optimize_context_window')}"
        "Plano setting not used by Archway; ignored",
        f"{where(tmp_path, 8, 'overrides.llm_routing_model')}"
        "Archway runs the preference router itself and ignores this; set router.model_path "
        "to a converted Arch-Router directory (archway router convert)",
    )


def test_overrides_bad_timeout(tmp_path: Path) -> None:
    found = problem(tmp_path, MINIMAL + "overrides:\n  upstream_connect_timeout: 0s\n")
    assert found.startswith(where(tmp_path, 5, "overrides.upstream_connect_timeout"))
    assert "more than zero" in found


def test_archway_settings(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL
        + dedent("""\
        archway:
          ext_proc_address: 0.0.0.0
          ext_proc_port: 19002
          admin_address: 127.0.0.2
          admin_port: 19901
          max_request_body_bytes: 1048576
          message_timeout: 250ms
          failure_mode_allow: true
        """),
    )
    assert config.gateway == GatewaySettings(
        ext_proc_address="0.0.0.0",
        ext_proc_port=19002,
        admin_address="127.0.0.2",
        admin_port=19901,
        max_request_body_bytes=1048576,
        message_timeout_s=0.25,
        failure_mode_allow=True,
    )
    assert load(tmp_path, MINIMAL).gateway.max_request_body_bytes == (
        DEFAULT_MAX_REQUEST_BODY_BYTES
    )


def test_archway_settings_are_checked(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        MINIMAL
        + dedent("""\
        archway:
          ext_proc_prot: 1
          max_request_body_bytes: 0
          failure_mode_allow: maybe
        """),
    )
    assert found == [
        f"{where(tmp_path, 5, 'archway.ext_proc_prot')}unknown key 'ext_proc_prot'; "
        "did you mean 'ext_proc_port'?",
        f"{where(tmp_path, 6, 'archway.max_request_body_bytes')}0 is out of range; "
        "use a number at least 1",
        f"{where(tmp_path, 7, 'archway.failure_mode_allow')}expected true or false, got a "
        "string 'maybe'; write true or false, without quotes",
    ]


PREFERENCES = """\
routing_preferences:
  - name: code generation
    description: writing new code
    models: [openai/gpt-5.2]
"""


def test_router_section_absent_or_null_means_no_router(tmp_path: Path) -> None:
    assert load(tmp_path, MINIMAL).router is None
    assert load(tmp_path, MINIMAL + "router:\n").router is None


def test_arch_router_settings_with_defaults(tmp_path: Path) -> None:
    (tmp_path / "models" / "arch").mkdir(parents=True)
    config = load(tmp_path, MINIMAL + PREFERENCES + "router:\n  model_path: models/arch\n")
    assert config.router == RouterSettings(
        backend="arch_router",
        model_path=(tmp_path / "models" / "arch").resolve(),
        timeout_s=5.0,
        token_budget=2048,
        max_messages=16,
        options=ArchRouterOptions(),
        line=8,
    )
    assert config.warnings == ()


def test_arch_router_settings_all_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL
        + PREFERENCES
        + dedent(f"""\
        router:
          backend: arch_router
          model_path: {tmp_path}
          timeout: 750ms
          token_budget: 1024
          max_messages: 8
          device: cpu
          compute_type: int8
          intra_threads: 2
          max_batch_size: 4
          batch_wait: 5ms
          max_new_tokens: 12
          static_prompt: false
        """),
    )
    assert config.router is not None
    assert (config.router.timeout_s, config.router.token_budget, config.router.max_messages) == (
        0.75,
        1024,
        8,
    )
    assert config.router.options == ArchRouterOptions(
        device="cpu",
        compute_type="int8",
        intra_threads=2,
        max_batch_size=4,
        batch_wait_s=0.005,
        max_new_tokens=12,
        static_prompt=False,
    )


def test_remote_router_is_inferred_from_endpoint(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        MINIMAL
        + PREFERENCES
        + dedent("""\
        router:
          endpoint: http://127.0.0.1:8000/v1
          model: katanemo/Arch-Router-1.5B
          access_key: $OPENAI_API_KEY
        """),
    )
    assert config.router is not None
    assert config.router.backend == "remote"
    assert config.router.model_path is None
    assert config.router.options == RemoteRouterOptions(
        endpoint="http://127.0.0.1:8000/v1",
        model="katanemo/Arch-Router-1.5B",
        access_key=ENV["OPENAI_API_KEY"],
    )
    assert ENV["OPENAI_API_KEY"] not in repr(config.router)


def test_router_problems_name_line_key_and_fix(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        MINIMAL
        + PREFERENCES
        + dedent("""\
        router:
          backend: arch-router
        """),
    )
    assert found == [
        f"{where(tmp_path, 9, 'router.backend')}unknown backend 'arch-router'; "
        "did you mean 'arch_router'?"
    ]
    found = problems(
        tmp_path,
        MINIMAL
        + PREFERENCES
        + dedent("""\
        router:
          backend: arch_router
          model_path: missing/dir
          timeout: soon
          intra_threads: -1
          endpoint: http://x:1/v1
          devise: cpu
        """),
    )
    missing = (tmp_path / "missing" / "dir").resolve()
    assert found == [
        f"{where(tmp_path, 10, 'router.model_path')}{str(missing)!r} does not exist; convert "
        "the model with `archway router convert SRC OUT` and set model_path to OUT",
        f"{where(tmp_path, 11, 'router.timeout')}invalid duration 'soon'; write a number of "
        "seconds or a duration such as 30s, 500ms, 2m or 1h",
        f"{where(tmp_path, 12, 'router.intra_threads')}-1 is out of range; use a number at least 0",
        f"{where(tmp_path, 13, 'router.endpoint')}endpoint is a setting of backend 'remote', "
        "not 'arch_router'; remove it, or set backend: remote",
        f"{where(tmp_path, 14, 'router.devise')}unknown key 'devise'; did you mean 'device'?",
    ]


def test_arch_router_needs_a_model_path_and_remote_an_endpoint(tmp_path: Path) -> None:
    found = problems(tmp_path, MINIMAL + PREFERENCES + "router:\n  timeout: 2s\n")
    assert found == [
        f"{where(tmp_path, 9, 'router')}missing required key 'model_path'; add "
        "`model_path: DIR`, a converted Arch-Router directory"
    ]
    found = problems(tmp_path, MINIMAL + PREFERENCES + "router:\n  backend: remote\n")
    assert any("missing required key 'endpoint'" in line for line in found)
    assert any("missing required key 'model'" in line for line in found)


def test_remote_router_with_an_empty_required_key_is_an_error(tmp_path: Path) -> None:
    # Once silently no router at all; now said, like a missing key.
    section = "router:\n  endpoint: http://127.0.0.1:8000/v1\n  model:\n"
    found = problems(tmp_path, MINIMAL + PREFERENCES + section)
    assert len(found) == 1 and "router: missing required key 'model'" in found[0]


def test_router_without_preferences_warns(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + f"router:\n  model_path: {tmp_path}\n")
    assert config.router is not None
    assert config.warnings == (
        f"{where(tmp_path, 4, 'router')}a router is configured but there are no "
        "routing_preferences, so it is never asked",
    )


def test_reserved_route_names_are_refused(tmp_path: Path) -> None:
    found = problem(tmp_path, MINIMAL + PREFERENCES.replace("code generation", "other"))
    assert found == (
        f"{where(tmp_path, 5, 'routing_preferences[0].name')}'other' is reserved: the router "
        "answers it when no route fits or it fails; rename the routing preference"
    )


def test_plano_routing_section_points_at_the_router_section(tmp_path: Path) -> None:
    config = load(tmp_path, MINIMAL + "routing:\n  model: Arch-Router\n")
    # The warning is on the key itself: routing's session_* keys are Archway's too.
    assert config.warnings == (
        f"{where(tmp_path, 5, 'routing.model')}Archway runs the preference router itself and "
        "ignores this; set router.model_path to a converted Arch-Router directory "
        "(archway router convert)",
    )


def test_router_section_must_be_a_mapping(tmp_path: Path) -> None:
    found = problem(tmp_path, MINIMAL + "router: arch-router\n")
    assert found.startswith(where(tmp_path, 4, "router"))
    assert "expected a mapping" in found


def test_unknown_version_warns(tmp_path: Path) -> None:
    config = load(tmp_path, 'version: "v9"\n' + MINIMAL)
    assert config.version == "v9"
    assert config.warnings[0].startswith(where(tmp_path, 1, "version"))


def test_numeric_version_is_an_error(tmp_path: Path) -> None:
    found = problem(tmp_path, "version: 0.2\n" + MINIMAL)
    assert found == (
        f"{where(tmp_path, 1, 'version')}expected a string, got a number (0.2); "
        'put it in quotes: version: "0.2"'
    )


# ---------------------------------------------------------------------------------------
# Whole-file problems
# ---------------------------------------------------------------------------------------


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            access_key: sk-TOPSECRET: more
        """,
    )
    assert found.startswith(f"{tmp_path / 'config.yaml'}:3: YAML syntax error: ")
    assert "mapping values are not allowed here" in found
    assert "TOPSECRET" not in found


def test_tab_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    found = problem(tmp_path, "llm_providers:\n\t- model: openai/gpt-5.2\n")
    assert found.startswith(f"{tmp_path / 'config.yaml'}:2: YAML syntax error")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    found = problem(tmp_path, "- model: openai/gpt-5.2\n")
    assert found.startswith(f"{tmp_path / 'config.yaml'}:1: the top level must be a mapping")


def test_empty_file(tmp_path: Path) -> None:
    found = problem(tmp_path, "# nothing here\n")
    assert found.startswith(f"{tmp_path / 'config.yaml'}:1: the config is empty")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert info.value.problems == [
        f"{tmp_path / 'nope.yaml'}: cannot read the config file: No such file or directory; "
        "check the path"
    ]


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            model: openai/gpt-5
        """,
    )
    assert found == (
        f"{where(tmp_path, 3, 'llm_providers[0].model')}duplicate key 'model' (also at line 2); "
        "keep only one of them"
    )


def test_all_problems_are_collected_in_line_order(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: gpt-4o
          - model: ollama/llama3
        model_aliases:
          x: {target: nope}
        tracng: {}
        listeners:
          egress_traffic:
            port: x
        """,
    )
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == [2, 3, 5, 6, 9]


def test_yaml_anchors_and_merge_keys(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        llm_providers:
          - &first
            model: openai/gpt-5.2
            access_key: $OPENAI_API_KEY
            headers: {X-Team: ml}
          - <<: *first
            model: openai/gpt-5
        """,
    )
    first, second = config.providers
    assert second.access_key == first.access_key == ENV["OPENAI_API_KEY"]
    assert second.headers == (("X-Team", "ml"),)
    assert second.model == "openai/gpt-5"


def test_load_config_text_without_a_source() -> None:
    config = load_config_text(MINIMAL, environ=ENV)
    assert config.source is None
    with pytest.raises(ConfigError) as info:
        load_config_text(MINIMAL, environ={})
    assert info.value.problems == [
        "<config>:3: llm_providers[0].access_key: environment variable OPENAI_API_KEY is not "
        "set; export OPENAI_API_KEY=... before loading the config"
    ]


def test_load_config_text_with_a_source(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=from-dotenv\n")
    config = load_config_text(MINIMAL, source=tmp_path / "x.yaml", environ={})
    assert config.source == (tmp_path / "x.yaml").resolve()
    assert config.providers[0].access_key == "from-dotenv"


# ---------------------------------------------------------------------------------------
# Environment variables and .env
# ---------------------------------------------------------------------------------------


def test_missing_variable_names_file_line_path_and_fix(tmp_path: Path) -> None:
    found = problem(tmp_path, MINIMAL, environ={})
    assert found == (
        f"{where(tmp_path, 3, 'llm_providers[0].access_key')}environment variable "
        f"OPENAI_API_KEY is not set; export OPENAI_API_KEY=... or add it to "
        f"{tmp_path.resolve() / '.env'}"
    )


def test_every_missing_variable_is_reported(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            access_key: $A
          - model: ollama/x
            base_url: http://${HOST}:${PORT}
        """,
        environ={},
    )
    assert [p.split("environment variable ")[1].split(" ")[0] for p in found] == [
        "A",
        "HOST",
        "PORT",
    ]
    assert found[1].startswith(where(tmp_path, 5, "llm_providers[1].base_url"))


def test_braced_variables_and_dollar_dollar(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        llm_providers:
          - model: ollama/x
            base_url: http://${HOST}:11434
            access_key: pa$$word
            headers:
              X-Cost: "$$5 per ${UNIT}"
        """,
        environ={"HOST": "gpu-1", "UNIT": "call"},
    )
    provider = config.providers[0]
    assert provider.base_url == "http://gpu-1:11434"
    assert provider.access_key == "pa$word"
    assert provider.access_key_ref is None
    assert provider.headers == (("X-Cost", "$5 per call"),)


def test_variables_in_numbers_and_booleans(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        listeners:
          egress_traffic:
            port: ${PORT}
            timeout: $TIMEOUT
        llm_providers:
          - model: openai/gpt-5.2
            default: $IS_DEFAULT
        """,
        environ={"PORT": "8080", "TIMEOUT": "2m", "IS_DEFAULT": "true"},
    )
    assert config.listeners[0].port == 8080
    assert config.listeners[0].timeout_s == 120.0
    assert config.providers[0].default is True


def test_variable_that_is_not_a_number(tmp_path: Path) -> None:
    found = problem(
        tmp_path,
        "listeners:\n  egress_traffic:\n    port: $PORT\n" + MINIMAL,
        environ={"PORT": "http", **ENV},
    )
    assert found.startswith(where(tmp_path, 3, "listeners.egress_traffic.port"))
    assert "expected an integer, got $PORT = 'http'" in found


def test_dotenv_beside_the_config(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        dedent(
            """\
            # keys for local runs
            export OPENAI_API_KEY=sk-from-dotenv   # trailing comment
            ANTHROPIC_API_KEY="sk-ant \\"quoted\\""
            MYCORP_API_KEY='single $quoted'
            HASH=abc#def

            EMPTY=
            """
        )
    )
    config = load(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            access_key: $OPENAI_API_KEY
          - model: anthropic/claude-sonnet-4-5
            access_key: $ANTHROPIC_API_KEY
          - model: mycorp/llama
            base_url: https://x.example/v1
            provider_interface: openai
            access_key: $MYCORP_API_KEY
            headers: {X-Hash: $HASH, X-Empty: "[$EMPTY]"}
        """,
        environ={},
    )
    openai, anthropic, mycorp = config.providers
    assert openai.access_key == "sk-from-dotenv"
    assert anthropic.access_key == 'sk-ant "quoted"'
    assert mycorp.access_key == "single $quoted"
    assert mycorp.headers == (("X-Hash", "abc#def"), ("X-Empty", "[]"))


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=from-dotenv\n")
    config = load(tmp_path, MINIMAL, environ={"OPENAI_API_KEY": "from-env"})
    assert config.providers[0].access_key == "from-env"


def test_default_environ_is_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "from-os-environ")
    config = load_config(write(tmp_path, MINIMAL))
    assert config.providers[0].access_key == "from-os-environ"


def test_bad_dotenv_line_is_reported_without_its_text(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OPENAI_API_KEY=ok\nthis is sk-TOPSECRET garbage\n")
    found = problems(
        tmp_path, MINIMAL + "  - model: openai/gpt-5\n    access_key: $OTHER\n", environ={}
    )
    assert found == [
        f"{tmp_path.resolve() / '.env'}:2: cannot parse this line; write it as KEY=VALUE",
        f"{where(tmp_path, 5, 'llm_providers[1].access_key')}environment variable OTHER is not "
        f"set; export OTHER=... or add it to {tmp_path.resolve() / '.env'}",
    ]
    assert "TOPSECRET" not in "\n".join(found)


def test_dotenv_is_not_read_when_the_environment_has_everything(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("garbage line\n")
    assert load(tmp_path, MINIMAL).providers[0].access_key == ENV["OPENAI_API_KEY"]


def test_allow_missing_env_only_relaxes_access_key(tmp_path: Path) -> None:
    text = """\
        llm_providers:
          - model: openai/gpt-5.2
            access_key: $OPENAI_API_KEY
          - model: ollama/x
            base_url: $OLLAMA_URL
            headers: {X-Token: $TOKEN}
        """
    found = problems(tmp_path, text, environ={}, allow_missing_env=True)
    assert found == [
        f"{where(tmp_path, 5, 'llm_providers[1].base_url')}environment variable OLLAMA_URL is "
        f"not set; export OLLAMA_URL=... or add it to {tmp_path.resolve() / '.env'}",
        f"{where(tmp_path, 6, 'llm_providers[1].headers.X-Token')}environment variable TOKEN "
        f"is not set; export TOKEN=... or add it to {tmp_path.resolve() / '.env'}",
    ]
    config = load(
        tmp_path,
        text,
        environ={"OLLAMA_URL": "http://localhost:11434", "TOKEN": "t"},
        allow_missing_env=True,
    )
    assert config.providers[0].access_key is None
    assert config.providers[0].access_key_ref == "$OPENAI_API_KEY"


# ---------------------------------------------------------------------------------------
# Secrets stay secret
# ---------------------------------------------------------------------------------------


def test_secrets_never_appear_in_repr(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        llm_providers:
          - model: openai/gpt-5.2
            access_key: $OPENAI_API_KEY
            headers:
              X-Api-Token: header-TOPSECRET
          - model: anthropic/claude-sonnet-4-5
            access_key: literal-TOPSECRET
        """,
    )
    text = repr(config) + str(config)
    assert "TOPSECRET" not in text
    assert "$OPENAI_API_KEY" in text


def test_secrets_never_appear_in_problems_or_warnings(tmp_path: Path) -> None:
    text = """\
        listeners:
          - type: model
            name: x
            router: plano_orchestrator_v1
        llm_providers:
          - model: openai/gpt-5.2
            access_key: literal-TOPSECRET
            acess_key: other-TOPSECRET
            headers:
              Authorization: Bearer header-TOPSECRET
              "Bad Header": header2-TOPSECRET
              X-Num: [list-TOPSECRET]
          - model: nope
            access_key: [seq-TOPSECRET]
          - model: openai/gpt-5.2
            access_key: $OPENAI_API_KEY
            base_url: https://u:pw-TOPSECRET@host/v1
            default: maybe
        tracing:
          exporters: [{type: posthog, url: x, api_key: tracing-TOPSECRET}]
        """
    found = "\n".join(problems(tmp_path, text))
    assert "TOPSECRET" not in found
    assert ENV["OPENAI_API_KEY"] not in found
    assert len(found.splitlines()) >= 5


# ---------------------------------------------------------------------------------------
# parse_duration
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30s", 30.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("1m30s", 90.0),
        (" 10s ", 10.0),
        ("0s", 0.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (30, 30.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(value: str | int | float, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["", "s", "30 s", "5 minutes", "-1s", "1d", "1.2.3s", "nan", "inf", -1, True]
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)  # type: ignore[arg-type]


def test_public_api() -> None:
    import ext_proc.config as module

    for name in ("load_config", "load_config_text", "parse_duration"):
        assert name in module.__all__


def test_unset_key_is_one_error_not_a_cascade(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "llm_providers:\n"
        "  - model: openai/gpt-5.2\n"
        "    access_key: $UNSET_FOR_CASCADE_TEST\n"
        "model_aliases:\n"
        "  fast-model:\n"
        "    target: gpt-5.2\n"
    )
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert len(err.value.problems) == 1
    assert "UNSET_FOR_CASCADE_TEST" in err.value.problems[0]


FALLBACKS = """\
llm_providers:
  - model: openai/gpt-5
    access_key: k
    default: true
    timeout: 20s
    fallbacks: [openai/gpt-5.2, groq/llama-3.3-70b]
  - model: openai/gpt-5.2
    access_key: k
  - model: anthropic/claude-sonnet-4-5
    access_key: k
  - model: groq/*
    access_key: k
model_aliases:
  fast:
    target: gpt-5.2
    fallbacks: [openai/gpt-5]
"""


def test_fallbacks_and_timeouts_load() -> None:
    config = load_config_text(FALLBACKS)
    gpt5 = config.providers[0]
    assert gpt5.fallbacks == ("openai/gpt-5.2", "groq/llama-3.3-70b")
    assert gpt5.timeout_s == 20.0
    assert config.providers[1].fallbacks == ()
    assert config.alias_fallbacks == {"fast": ("openai/gpt-5",)}


@pytest.mark.parametrize(
    ("replace", "line", "message"),
    [
        ("[openai/gpt-5.2, groq/llama-3.3-70b]", 6, "matches no configured model"),
        ("[anthropic/claude-sonnet-4-5]", 6, "speaks the anthropic API"),
        ("[openai/gpt-5]", 6, "already in this chain"),
        ("openai/gpt-5.2", 6, "expected a list"),
        ("[groq/a, groq/b, groq/c, groq/d, groq/e]", 6, "at most 4"),
    ],
)
def test_fallback_errors(replace: str, line: int, message: str) -> None:
    text = FALLBACKS.replace("[openai/gpt-5.2, groq/llama-3.3-70b]", replace)
    if replace.startswith("[openai/gpt-5.2, groq"):
        text = text.replace("  - model: groq/*\n    access_key: k\n", "")
    with pytest.raises(ConfigError) as err:
        load_config_text(text)
    problem = next(p for p in err.value.problems if message in p)
    assert problem.startswith(f"<config>:{line}: llm_providers[0].fallbacks")
