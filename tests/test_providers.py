from __future__ import annotations

import pytest

from ext_proc.apis import WireAPI
from ext_proc.routing.catalog import (
    CATALOG,
    auth_headers,
    provider_api,
    provider_dialect,
    request_path,
    upstream_for,
)
from tests.factories import provider

REAL = {
    "openai": ("api.openai.com", "/v1/chat/completions"),
    "gemini": ("generativelanguage.googleapis.com", "/v1beta/openai/chat/completions"),
    "groq": ("api.groq.com", "/openai/v1/chat/completions"),
    "mistral": ("api.mistral.ai", "/v1/chat/completions"),
    "deepseek": ("api.deepseek.com", "/v1/chat/completions"),
    "xai": ("api.x.ai", "/v1/chat/completions"),
    "together_ai": ("api.together.xyz", "/v1/chat/completions"),
    "openrouter": ("openrouter.ai", "/api/v1/chat/completions"),
    "xiaomi": ("api.xiaomimimo.com", "/v1/chat/completions"),
    "zhipu": ("open.bigmodel.cn", "/api/paas/v4/chat/completions"),
    "digitalocean": ("inference.do-ai.run", "/v1/chat/completions"),
    "vercel": ("ai-gateway.vercel.sh", "/v1/chat/completions"),
    "edenai": ("api.edenai.run", "/v3/chat/completions"),
}


@pytest.mark.parametrize(("name", "expected"), REAL.items())
def test_catalog_hosts_and_paths(name: str, expected: tuple[str, str]) -> None:
    p = provider(f"{name}/some-model")
    up = upstream_for(p)
    assert (up.host, up.port, up.tls, up.sni, up.host_header) == (
        expected[0],
        443,
        True,
        expected[0],
        expected[0],
    )
    assert up.cluster == name
    assert request_path(p, up) == expected[1]
    assert auth_headers(p)[0] == ("authorization", f"Bearer sk-{name}-secret")


def test_anthropic_native_and_openai_compatible_paths() -> None:
    p = provider("anthropic/claude-sonnet-4-5")
    up = upstream_for(p)
    assert (up.host, up.tls) == ("api.anthropic.com", True)
    assert request_path(p, up) == "/v1/messages"
    assert auth_headers(p) == (
        ("x-api-key", "sk-anthropic-secret"),
        ("anthropic-version", "2023-06-01"),
    )


def test_plain_http_base_url_without_path_uses_v1() -> None:
    p = provider("ollama/llama3.1", base_url="http://127.0.0.1:11434", access_key=None)
    up = upstream_for(p)
    assert (up.host, up.port, up.tls, up.sni) == ("127.0.0.1", 11434, False, None)
    assert up.host_header == "127.0.0.1:11434"
    assert up.cluster == "ollama_127.0.0.1_11434"
    assert request_path(p, up) == "/v1/chat/completions"
    assert auth_headers(p) == ()


def test_base_url_path_is_the_prefix_and_http_host_wins() -> None:
    p = provider(
        "mycorp/llama",
        base_url="https://llm.example.com:8443/api/v2/",
        provider_interface="openai",
        http_host="llm.internal",
        headers=(("X-Team", "search"),),
    )
    up = upstream_for(p)
    assert (up.port, up.path_prefix, up.host_header, up.sni) == (
        8443,
        "/api/v2",
        "llm.internal",
        "llm.example.com",
    )
    assert request_path(p, up) == "/api/v2/chat/completions"
    assert auth_headers(p)[-1] == ("x-team", "search")


def test_azure_uses_deployment_path_and_api_key_header() -> None:
    p = provider("azure_openai/gpt-4o-prod", base_url="https://myres.openai.azure.com")
    up = upstream_for(p)
    path = request_path(p, up)
    assert path == "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21"
    assert auth_headers(p) == (("api-key", "sk-azure_openai-secret"),)


def test_azure_with_a_path_speaks_its_openai_style_api() -> None:
    p = provider("azure_openai/gpt-4o", base_url="https://myres.openai.azure.com/openai/v1")
    assert request_path(p, upstream_for(p)) == "/openai/v1/chat/completions"


@pytest.mark.parametrize(
    ("model", "field"),
    [
        ("openai/gpt-5", "max_completion_tokens"),
        ("azure_openai/gpt-5", "max_completion_tokens"),
        ("groq/llama", "max_tokens"),
        ("anthropic/claude-sonnet-4-5", "max_tokens"),
    ],
)
def test_providers_name_the_output_token_limit_in_their_dialect(model: str, field: str) -> None:
    p = provider(model, base_url="https://myres.openai.azure.com")
    assert provider_dialect(p).max_tokens_field == field


def test_providers_outside_the_catalog_are_served_as_plain_openai() -> None:
    p = provider("mycorp/llama", base_url="http://10.0.0.1:8000")
    assert provider_api(p) is WireAPI.OPENAI
    assert provider_dialect(p).max_tokens_field == "max_tokens"
    assert request_path(p, upstream_for(p)) == "/v1/chat/completions"


def test_passthrough_auth_sends_no_configured_key() -> None:
    p = provider("openai/gpt-5", passthrough_auth=True)
    assert auth_headers(p) == ()


def test_every_catalog_entry_without_default_url_requires_one() -> None:
    assert {n for n, s in CATALOG.items() if s.base_url is None} == {
        "ollama",
        "azure_openai",
        "custom",
        # Plano requires base_url for these too (config_generator's
        # SUPPORTED_PROVIDERS_WITH_BASE_URL).
        "amazon_bedrock",
        "plano",
        "qwen",
    }
    with pytest.raises(ValueError):
        upstream_for(provider("ollama/llama3"))


def test_amazon_bedrock_converse_paths_and_bearer_key() -> None:
    p = provider(
        "amazon_bedrock/us.amazon.nova-pro-v1:0",
        base_url="https://bedrock-runtime.us-west-2.amazonaws.com",
    )
    up = upstream_for(p)
    assert (up.host, up.port, up.tls) == ("bedrock-runtime.us-west-2.amazonaws.com", 443, True)
    assert CATALOG["amazon_bedrock"].api is WireAPI.BEDROCK
    # The model id is one path segment: ':' and the '/' of ARNs are escaped.
    assert request_path(p, up) == "/model/us.amazon.nova-pro-v1%3A0/converse"
    assert request_path(p, up, stream=True) == "/model/us.amazon.nova-pro-v1%3A0/converse-stream"
    arn = provider(
        "amazon_bedrock/arn:aws:bedrock:us-east-1:1:inference-profile/x",
        base_url="https://bedrock-runtime.us-east-1.amazonaws.com",
    )
    assert request_path(arn, upstream_for(arn)).startswith(
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/"
    )
    assert auth_headers(p)[0] == ("authorization", "Bearer sk-amazon_bedrock-secret")


def test_qwen_base_url_without_path_gets_the_compatible_mode_prefix() -> None:
    p = provider("qwen/qwen-max", base_url="https://dashscope-intl.aliyuncs.com")
    up = upstream_for(p)
    assert request_path(p, up) == "/compatible-mode/v1/chat/completions"


def test_chatgpt_sends_codex_headers_to_its_backend() -> None:
    p = provider("chatgpt/gpt-5.2", access_key=None, passthrough_auth=True)
    up = upstream_for(p)
    assert (up.host, up.path_prefix) == ("chatgpt.com", "/backend-api/codex")
    assert dict(auth_headers(p))["originator"] == "codex_cli_rs"
    assert "authorization" not in dict(auth_headers(p))
