"""Converse answers and errors in each client's shape, checked with the SDKs' own types."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.types import Message
from openai.types.chat import ChatCompletion

from ext_proc.apis import WireAPI
from ext_proc.translate.bedrock import errors, response_to_anthropic, response_to_openai
from ext_proc.translate.bedrock.converse import (
    ANTHROPIC_STOP_REASONS,
    OPENAI_FINISH_REASONS,
)
from tests.fake_bedrock import (
    REASONING_SIGNATURE,
    REASONING_TEXT,
    REPLY_TEXT,
    TOOL_ARGUMENTS,
    TOOL_USE_ID,
    converse_answer,
)

MODEL = "us.anthropic.claude-sonnet-4-5-v1:0"
TOOLS_REQUEST = {"toolConfig": {"tools": [{"toolSpec": {"name": "weather"}}]}}
THINKING_REQUEST = {"additionalModelRequestFields": {"thinking": {"type": "enabled"}}}


def to_openai(answer: dict[str, Any]) -> ChatCompletion:
    out = response_to_openai.translate_response(
        answer, model=MODEL, response_id="chatcmpl-req-1", created=1_750_000_000
    )
    return ChatCompletion.model_validate(out)


def to_anthropic(answer: dict[str, Any]) -> Message:
    out = response_to_anthropic.translate_response(answer, model=MODEL, message_id="msg_req-1")
    return Message.model_validate(out)


def test_text_answer_for_openai() -> None:
    completion = to_openai(converse_answer({}))
    assert completion.id == "chatcmpl-req-1"
    assert completion.model == MODEL
    assert completion.created == 1_750_000_000
    choice = completion.choices[0]
    assert choice.message.content == REPLY_TEXT
    assert choice.message.tool_calls is None
    assert choice.finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    # Cache reads count inside OpenAI's prompt tokens.
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (25, 13, 38)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 4


def test_tool_answer_for_openai() -> None:
    completion = to_openai(converse_answer({**TOOLS_REQUEST, **THINKING_REQUEST}))
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    # Reasoning is left out; the text beside the call stays.
    assert choice.message.content == "Let me check the weather."
    (call,) = choice.message.tool_calls or []
    assert call.id == TOOL_USE_ID
    assert call.function.name == "weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == TOOL_ARGUMENTS  # type: ignore[union-attr]


def test_tool_only_answer_has_null_content() -> None:
    answer = {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t", "name": "f", "input": {}}}],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": 1, "outputTokens": 2, "totalTokens": 3},
    }
    assert to_openai(answer).choices[0].message.content is None
    assert to_anthropic(answer).content[0].type == "tool_use"


def test_text_answer_for_anthropic() -> None:
    message = to_anthropic(converse_answer({}))
    assert message.id == "msg_req-1"
    assert message.model == MODEL
    assert message.stop_reason == "end_turn"
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == REPLY_TEXT  # type: ignore[union-attr]
    assert message.usage.input_tokens == 21
    assert message.usage.output_tokens == 13
    assert message.usage.cache_read_input_tokens == 4
    assert message.usage.cache_creation_input_tokens == 0


def test_tool_and_thinking_answer_for_anthropic() -> None:
    message = to_anthropic(converse_answer({**TOOLS_REQUEST, **THINKING_REQUEST}))
    assert message.stop_reason == "tool_use"
    thinking, text, tool = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking == REASONING_TEXT
    assert thinking.signature == REASONING_SIGNATURE
    assert text.type == "text"
    assert tool.type == "tool_use"
    assert (tool.id, tool.name, tool.input) == (TOOL_USE_ID, "weather", TOOL_ARGUMENTS)


def test_redacted_reasoning_for_anthropic() -> None:
    answer = converse_answer({})
    answer["output"]["message"]["content"].insert(
        0, {"reasoningContent": {"redactedContent": "c2VjcmV0"}}
    )
    block = to_anthropic(answer).content[0]
    assert block.type == "redacted_thinking"
    assert block.data == "c2VjcmV0"


@pytest.mark.parametrize(
    ("converse", "openai", "anthropic"),
    [
        ("end_turn", "stop", "end_turn"),
        ("stop_sequence", "stop", "stop_sequence"),
        ("max_tokens", "length", "max_tokens"),
        ("model_context_window_exceeded", "length", "model_context_window_exceeded"),
        ("tool_use", "tool_calls", "tool_use"),
        ("content_filtered", "content_filter", "refusal"),
        ("guardrail_intervened", "content_filter", "refusal"),
        ("something_new", "stop", "end_turn"),
    ],
)
def test_stop_reasons(converse: str, openai: str, anthropic: str) -> None:
    answer = {**converse_answer({}), "stopReason": converse}
    assert to_openai(answer).choices[0].finish_reason == openai
    assert to_anthropic(answer).stop_reason == anthropic


def test_every_mapped_stop_reason_is_tested() -> None:
    assert set(OPENAI_FINISH_REASONS) == set(ANTHROPIC_STOP_REASONS)
    assert len(OPENAI_FINISH_REASONS) == 7


def test_missing_usage_counts_zero() -> None:
    answer = {"output": {"message": {"content": [{"text": "x"}]}}, "stopReason": "end_turn"}
    usage = to_openai(answer).usage
    assert usage is not None and usage.total_tokens == 0
    assert to_anthropic(answer).usage.input_tokens == 0


# --- errors --------------------------------------------------------------------------

THROTTLED = b'{"message":"Too many requests, please wait before trying again."}'
THROTTLING_HEADER = "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/"


def test_bedrock_error_for_openai() -> None:
    body = json.loads(errors.translate_error(WireAPI.OPENAI, 429, THROTTLED, THROTTLING_HEADER))
    assert body == {
        "error": {
            "message": "Too many requests, please wait before trying again.",
            "type": "invalid_request_error",
            "param": None,
            "code": "ThrottlingException",
        }
    }


@pytest.mark.parametrize(
    ("status", "kind", "anthropic_type"),
    [
        (400, "ValidationException", "invalid_request_error"),
        (403, "AccessDeniedException", "permission_error"),
        (404, "ResourceNotFoundException", "not_found_error"),
        (429, "ThrottlingException", "rate_limit_error"),
        (500, "InternalServerException", "api_error"),
        (503, "ServiceUnavailableException", "api_error"),
    ],
)
def test_bedrock_error_for_anthropic(status: int, kind: str, anthropic_type: str) -> None:
    header = f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    body = json.loads(errors.translate_error(WireAPI.ANTHROPIC, status, b'{"message":"m"}', header))
    assert body == {"type": "error", "error": {"type": anthropic_type, "message": "m"}}


def test_error_name_from_the_body_and_odd_bodies() -> None:
    error = errors.bedrock_error(
        400, b'{"__type":"com.amazon.coral.validate#ValidationException","Message":"bad"}'
    )
    assert (error.code, error.message) == ("ValidationException", "bad")
    error = errors.bedrock_error(502, b"<html>Bad Gateway</html>")
    assert error.code == "upstream_error"
    assert error.message == "Bedrock answered HTTP 502: <html>Bad Gateway</html>"
    assert errors.bedrock_error(500, b"").message == "Bedrock answered HTTP 500."


def test_envoy_replies_in_the_client_shape_pass_unchanged() -> None:
    local = b'{"error":{"message":"upstream connect error","type":"server_error","code":"x"}}'
    assert errors.translate_error(WireAPI.OPENAI, 503, local) == local


def test_the_matched_stop_sequence_reaches_anthropic_clients() -> None:
    answer = {
        **converse_answer({}),
        "stopReason": "stop_sequence",
        "additionalModelResponseFields": {"stop_sequence": "END"},
    }
    message = to_anthropic(answer)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
