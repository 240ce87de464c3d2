"""The wire APIs and client endpoints (``ext_proc.apis``), and the translator
registry that pairs them."""

from __future__ import annotations

import ast
import json
from itertools import permutations
from pathlib import Path

import pytest

from ext_proc.apis import (
    Endpoint,
    ErrorShape,
    WireAPI,
    client_api,
    endpoint_for,
    path_prefixes,
)
from ext_proc.errors import GatewayError, error_body
from ext_proc.routing.endpoints import classify, listing_api
from ext_proc.translate import TranslationContext, translate_response, translator_for

PACKAGE = Path(__file__).resolve().parent.parent / "ext_proc"


def _ext_proc_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] == "ext_proc"}


def test_apis_is_a_leaf_and_errors_needs_only_it() -> None:
    assert _ext_proc_imports(PACKAGE / "apis.py") == set()
    assert _ext_proc_imports(PACKAGE / "errors.py") == {"ext_proc.apis"}


@pytest.mark.parametrize(
    ("method", "path", "endpoint"),
    [
        ("POST", "/v1/chat/completions", Endpoint.CHAT_COMPLETIONS),
        ("POST", "/chat/completions/", Endpoint.CHAT_COMPLETIONS),
        ("POST", "/v1/messages?beta=true", Endpoint.MESSAGES),
        ("GET", "/v1/models", Endpoint.MODELS),
        ("GET", "/models", Endpoint.MODELS),
    ],
)
def test_each_path_is_one_endpoint(method: str, path: str, endpoint: Endpoint) -> None:
    assert endpoint_for(path) is endpoint
    assert classify(method, path) is endpoint


def test_unserved_paths_and_methods_are_refused_with_what_is_served() -> None:
    with pytest.raises(GatewayError) as missing:
        classify("POST", "/v1/completions")
    assert missing.value.status == 404
    for row in ("POST /v1/chat/completions", "POST /v1/messages", "GET /v1/models"):
        assert row in missing.value.message
    with pytest.raises(GatewayError) as wrong:
        classify("GET", "/v1/messages")
    assert wrong.value.status == 405
    assert wrong.value.headers == (("allow", "POST"),)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/v1/messages", WireAPI.ANTHROPIC),
        ("/v1/messages/count_tokens", WireAPI.ANTHROPIC),
        ("/v1/chat/completions", WireAPI.OPENAI),
        ("/v1/responses", WireAPI.OPENAI),
        ("/", WireAPI.OPENAI),
    ],
)
def test_the_client_api_is_judged_from_the_path(path: str, api: WireAPI) -> None:
    assert client_api(path) is api


def test_every_api_has_its_facts() -> None:
    for api in WireAPI:
        assert api.upstream_path.startswith("/")
        assert api.error_shape in ErrorShape
        assert api.sdk_header_prefix.endswith("-")
    # Bedrock's Converse API is a provider's only: no client endpoint speaks it.
    assert {e.api for e in Endpoint} == set(WireAPI) - {WireAPI.BEDROCK}


def test_error_shapes_follow_the_api() -> None:
    error = GatewayError(404, "no such model", code="model_not_found", param="model")
    assert json.loads(error_body(WireAPI.ANTHROPIC, error)) == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "no such model"},
    }
    assert json.loads(error_body(WireAPI.OPENAI, error))["error"]["code"] == "model_not_found"
    assert path_prefixes(ErrorShape.ANTHROPIC) == ("/v1/messages",)
    assert "/v1/chat/completions" in path_prefixes(ErrorShape.OPENAI)


def test_the_models_listing_answers_each_sdk_in_its_shape() -> None:
    assert listing_api({"anthropic-version": "2023-06-01"}) is WireAPI.ANTHROPIC
    assert listing_api({"authorization": "Bearer x"}) is WireAPI.OPENAI


def test_every_pair_of_apis_has_a_translator_and_one_api_needs_none() -> None:
    for api in WireAPI:
        assert translator_for(api, api) is None
    clients = {e.api for e in Endpoint}
    for client, provider in permutations(clients, 2):
        translator = translator_for(client, provider)
        assert translator is not None
        assert (translator.client, translator.provider) == (client, provider)
    # The Converse translators are built but not yet on the request path.
    for client in clients:
        with pytest.raises(GatewayError, match="cannot translate"):
            translator_for(client, WireAPI.BEDROCK)


def test_a_response_that_cannot_be_utf8_is_escaped_not_failed() -> None:
    # A lone surrogate escape is valid JSON; the client gets it back as written.
    translator = translator_for(WireAPI.ANTHROPIC, WireAPI.OPENAI)
    assert translator is not None
    completion = {
        "id": "c",
        "model": "m",
        "choices": [{"message": {"content": "a\\ud800b"}, "finish_reason": "stop"}],
    }
    body = json.dumps(completion).replace("\\\\ud800", "\\ud800").encode()
    context = TranslationContext(WireAPI.ANTHROPIC, WireAPI.OPENAI)
    out = translate_response(translator, context, body, created=1)
    assert b"\\ud800" in out
    assert json.loads(out)["content"][0]["text"] == "a\ud800b"
