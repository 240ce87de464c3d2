"""How a Responses (and a Bedrock) request is planned, and how conversation state
crosses from the request's stream to the response's: pure functions and the
store edge, without Envoy (the end-to-end tests are test_e2e_responses.py and
test_e2e_bedrock.py)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
)

from ext_proc.apis import Endpoint, WireAPI
from ext_proc.errors import GatewayError
from ext_proc.headers import CLIENT_PATH_HEADER, FALLBACK_CHAIN, TRANSLATE_HEADER
from ext_proc.routing.body import parse_json
from ext_proc.routing.catalog import request_path, serving_api, upstream_for
from ext_proc.routing.decide import Decision, resolve_model
from ext_proc.routing.plan import RequestPlan, continued_response, plan_request
from ext_proc.routing.resolve import build_routing_table, chain_providers
from ext_proc.server.attempt import ATTEMPT_HEADER, AttemptProcessor
from ext_proc.server.conversations import Conversations
from ext_proc.state import pending_key
from ext_proc.state.memory import MemoryStore
from ext_proc.translate.responses.translators import response_context, stored_response_id
from tests.factories import config, provider

PROVIDERS = (
    provider("openai/gpt-5.2"),
    provider("xai/grok-4"),
    provider("groq/llama-3.3-70b"),
    provider("anthropic/claude-sonnet-4-5"),
    provider("azure_openai/my-deployment", base_url="https://res.openai.azure.com"),
    provider("mycorp/llama", base_url="http://llm.internal:8000/v1", provider_interface="openai"),
    provider("mistral/mistral-large"),
    provider(
        "amazon_bedrock/us.amazon.nova-pro-v1:0",
        base_url="https://bedrock-runtime.us-east-1.amazonaws.com",
    ),
)
TABLE = build_routing_table(config(*PROVIDERS))


def plan(
    model: str, body: dict[str, Any], history: list[dict[str, Any]] | None = None
) -> RequestPlan:
    decision = Decision(resolve_model(TABLE, model))
    parsed = parse_json(json.dumps({"model": model, **body}).encode())
    return plan_request(decision, parsed, Endpoint.RESPONSES, {}, history=history or [])


def path_of(request_plan: RequestPlan) -> str:
    return dict(request_plan.set_headers)[":path"]


@pytest.mark.parametrize(
    ("model", "native"),
    [
        ("openai/gpt-5.2", True),
        ("xai/grok-4", True),
        ("azure_openai/my-deployment", True),
        ("mycorp/llama", True),
        ("groq/llama-3.3-70b", False),
        ("mistral/mistral-large", False),
        ("anthropic/claude-sonnet-4-5", False),
        ("amazon_bedrock/us.amazon.nova-pro-v1:0", False),
    ],
)
def test_providers_that_serve_responses_get_it_natively(model: str, native: bool) -> None:
    target = resolve_model(TABLE, model).provider
    assert (serving_api(target, WireAPI.RESPONSES) is WireAPI.RESPONSES) is native
    # Chat clients are never sent to /responses.
    assert serving_api(target, WireAPI.OPENAI) is not WireAPI.RESPONSES


def test_native_paths_and_an_untouched_body() -> None:
    assert path_of(plan("openai/gpt-5.2", {"input": "Hi"})) == "/v1/responses"
    assert path_of(plan("xai/grok-4", {"input": "Hi"})) == "/v1/responses"
    # Azure's Responses API lives under its v1 path, not the deployment's.
    azure = plan("azure_openai/my-deployment", {"input": "Hi"})
    assert path_of(azure) == "/openai/v1/responses"
    assert azure.translation is None
    custom = plan("mycorp/llama", {"input": "Hi"})
    assert path_of(custom) == "/v1/responses"
    assert custom.body == b'{"model": "llama", "input": "Hi"}'
    assert custom.translation is None
    native = plan("openai/gpt-5.2", {"input": "Hi", "previous_response_id": "resp_1"})
    assert native.body == b'{"model": "gpt-5.2", "input": "Hi", "previous_response_id": "resp_1"}'


def test_translated_plan_carries_the_context_and_the_conversation_to_keep() -> None:
    history = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "A"}]}
    ]
    groq = plan("groq/llama-3.3-70b", {"input": "B", "instructions": "Be brief."}, history)
    assert path_of(groq) == "/openai/v1/chat/completions"
    assert groq.translation is not None
    assert dict(groq.set_headers)[TRANSLATE_HEADER].startswith("responses-to-openai;")
    body = json.loads(groq.body or b"")
    assert [m["role"] for m in body["messages"]] == ["system", "user", "user"]
    kept = groq.translation.conversation
    assert kept is not None and [i["role"] for i in kept] == ["user", "user"]
    assert stored_response_id(groq.translation) == response_context(groq.translation).response_id
    unstored = plan("anthropic/claude-sonnet-4-5", {"input": "B", "store": False})
    assert unstored.translation is not None
    assert unstored.translation.conversation is None
    assert stored_response_id(unstored.translation) is None
    assert path_of(unstored) == "/v1/messages"


def test_only_non_native_providers_continue_from_archway_s_state() -> None:
    body = {"input": "Hi", "previous_response_id": "resp_1"}
    for model, expected in (("groq/llama-3.3-70b", "resp_1"), ("openai/gpt-5.2", None)):
        chain = (resolve_model(TABLE, model).provider,)
        assert continued_response(Endpoint.RESPONSES, body, chain) == expected
        assert continued_response(Endpoint.CHAT_COMPLETIONS, body, chain) is None


def test_a_chain_not_all_native_gets_chat_for_every_attempt() -> None:
    # openai serves Responses, its fallback groq does not: every attempt must be
    # able to read the one body, so it is translated to chat for all of them.
    table = build_routing_table(
        config(
            provider("openai/gpt-5.2", fallbacks=("groq/llama-3.3-70b",)),
            provider("groq/llama-3.3-70b"),
            provider("xai/grok-4", fallbacks=("openai/gpt-5.2",)),
        )
    )
    body = {"input": "Hi", "previous_response_id": "resp_1"}
    parsed = parse_json(json.dumps({"model": "openai/gpt-5.2", **body}).encode())
    for model, native in (("openai/gpt-5.2", False), ("xai/grok-4", True)):
        target = resolve_model(table, model)
        chain = chain_providers(table, target)
        planned = plan_request(Decision(target), parsed, Endpoint.RESPONSES, {}, chain=chain)
        assert (planned.translation is None) is native
        assert path_of(planned) == ("/v1/responses" if native else "/v1/chat/completions")
        assert (continued_response(Endpoint.RESPONSES, body, chain) is None) is native


@pytest.mark.parametrize("stream", [False, True])
def test_bedrock_gets_its_model_and_action_in_the_path(stream: bool) -> None:
    decision = Decision(resolve_model(TABLE, "amazon_bedrock/us.amazon.nova-pro-v1:0"))
    body = {"model": "x", "messages": [{"role": "user", "content": "Hi"}], "stream": stream}
    parsed = parse_json(json.dumps(body).encode())
    for endpoint in (Endpoint.CHAT_COMPLETIONS, Endpoint.MESSAGES):
        planned = plan_request(decision, parsed, endpoint, {})
        action = "converse-stream" if stream else "converse"
        assert path_of(planned) == f"/model/us.amazon.nova-pro-v1%3A0/{action}"
        headers = dict(planned.set_headers)
        assert headers["authorization"] == "Bearer sk-amazon_bedrock-secret"
        translated = json.loads(planned.body or b"")
        assert "model" not in translated and translated["messages"][0]["role"] == "user"
    # The base URL's own path, were it set, stays in front.
    bedrock = resolve_model(TABLE, "amazon_bedrock/us.amazon.nova-pro-v1:0").provider
    assert upstream_for(bedrock).path_prefix == ""
    assert request_path(bedrock, upstream_for(bedrock), WireAPI.BEDROCK, stream=stream) == (
        f"/model/us.amazon.nova-pro-v1%3A0/{action}"
    )


@pytest.mark.parametrize(
    ("fallback", "path"),
    [("xai/grok-4", "/v1/responses"), ("groq/llama", "/openai/v1/chat/completions")],
)
def test_a_fallback_attempt_keeps_the_body_s_api(fallback: str, path: str) -> None:
    table = build_routing_table(
        config(
            provider("openai/gpt-5.2", fallbacks=(fallback,)),
            provider("xai/grok-4"),
            provider("groq/llama"),
        )
    )

    async def attempt() -> dict[str, str]:
        processor = AttemptProcessor(table)
        headers = (
            (":path", "/v1/responses"),
            (CLIENT_PATH_HEADER, "/v1/responses"),
            (FALLBACK_CHAIN, f"openai/gpt-5.2 {fallback}"),
            (ATTEMPT_HEADER, "2"),
        )
        values = [HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
        message = ProcessingRequest(request_headers=HttpHeaders(headers=HeaderMap(headers=values)))
        response = await processor.handle(message)
        mutation = response.request_headers.response.header_mutation
        return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}

    assert asyncio.run(attempt())[":path"] == path


def test_conversations_cross_from_request_to_response() -> None:
    async def scenario() -> tuple[list[dict[str, Any]], GatewayError]:
        store = MemoryStore()
        conversations = Conversations(store)
        turn = [{"type": "message", "role": "user", "content": "Hi"}]
        await conversations.begin("resp_a", turn)
        assert await store.get(pending_key("resp_a")) == turn
        await conversations.finish("resp_a", [{"type": "message", "role": "assistant"}])
        kept = await conversations.history("resp_a")
        assert len(store) == 1  # the pending turn is gone
        with pytest.raises(GatewayError) as missing:
            await conversations.history("resp_never")
        return kept, missing.value

    kept, missing = asyncio.run(scenario())
    assert [item["role"] for item in kept] == ["user", "assistant"]
    assert missing.status == 404 and missing.code == "previous_response_not_found"


def test_an_answer_whose_turn_was_never_kept_is_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        conversations = Conversations(MemoryStore())
        # Another worker kept the turn (memory state is per process).
        await conversations.finish("resp_elsewhere", [{"type": "message"}])

    with caplog.at_level(logging.WARNING, logger="archway.state"):
        asyncio.run(scenario())
    assert "resp_elsewhere not stored" in caplog.text


def test_without_state_storage_a_continuation_is_a_400() -> None:
    with pytest.raises(GatewayError) as error:
        asyncio.run(Conversations(None).history("resp_a"))
    assert error.value.status == 400
    assert error.value.code == "state_storage_not_configured"


def test_a_bedrock_fallback_gets_its_model_in_the_path_and_the_body_unchanged() -> None:
    first, second = "us.amazon.nova-pro-v1:0", "anthropic.claude-sonnet-4-5"
    url = "https://bedrock-runtime.us-east-1.amazonaws.com"
    table = build_routing_table(
        config(
            provider(
                f"amazon_bedrock/{first}", base_url=url, fallbacks=(f"amazon_bedrock/{second}",)
            ),
            provider(f"amazon_bedrock/{second}", base_url=url),
        )
    )

    async def attempt() -> tuple[dict[str, str], bool]:
        processor = AttemptProcessor(table)
        headers = (
            (":path", "/model/us.amazon.nova-pro-v1%3A0/converse-stream"),
            (CLIENT_PATH_HEADER, "/v1/chat/completions"),
            (FALLBACK_CHAIN, f"amazon_bedrock/{first} amazon_bedrock/{second}"),
            (ATTEMPT_HEADER, "2"),
        )
        values = [HeaderValue(key=k, raw_value=v.encode()) for k, v in headers]
        message = ProcessingRequest(request_headers=HttpHeaders(headers=HeaderMap(headers=values)))
        response = await processor.handle(message)
        mutation = response.request_headers.response.header_mutation
        body = ProcessingRequest(
            request_body=HttpBody(body=b'{"messages": []}', end_of_stream=True)
        )
        rewritten = await processor.handle(body)
        changed = rewritten.request_body.response.HasField("body_mutation")
        return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}, changed

    headers, changed = asyncio.run(attempt())
    assert headers[":path"] == "/model/anthropic.claude-sonnet-4-5/converse-stream"
    assert not changed
