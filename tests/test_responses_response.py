"""Whole answers as Response objects, and upstream errors in the Responses
error shape; every Response validated by the openai SDK's own types."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.translate.responses.output import translate_error
from ext_proc.translate.responses.request import ResponseContext, parse_request
from ext_proc.translate.responses.response_from_anthropic import (
    translate_response as from_anthropic,
)
from ext_proc.translate.responses.response_from_chat import translate_response as from_chat
from tests.fake_providers import REPLY_TEXT, TOOL_ARGUMENTS, anthropic_message, openai_completion
from tests.responses_checks import sdk_response

WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def context(**fields: Any) -> ResponseContext:
    request = parse_request({"model": "gpt-x", "input": "Hi", "tools": [WEATHER], **fields})
    return request.context("resp_7f3a", 1741570283)


def test_chat_text_answer() -> None:
    ctx = context(metadata={"k": "v"}, temperature=0.3, instructions="Be kind.")
    response = sdk_response(from_chat(ctx, openai_completion("gpt-x-2025")))
    assert response.id == "resp_7f3a"
    assert response.created_at == 1741570283
    assert response.status == "completed" and response.incomplete_details is None
    assert response.model == "gpt-x-2025"
    assert response.output_text == REPLY_TEXT
    (message,) = response.output
    assert message.type == "message" and message.id == "msg_7f3a_0"
    assert message.status == "completed"
    # The request's settings come back, as OpenAI's Response repeats them.
    assert response.metadata == {"k": "v"}
    assert response.temperature == 0.3
    assert response.instructions == "Be kind."
    assert response.tools[0].name == "get_weather"
    assert response.tool_choice == "auto" and response.parallel_tool_calls is True
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (25, 13, 38)
    assert usage.input_tokens_details.cached_tokens == 4
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_chat_tool_calls_are_function_call_items() -> None:
    completion = openai_completion("gpt-x", tool="get_weather")
    second = {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location":"Lyon"}'},
    }
    completion["choices"][0]["message"]["tool_calls"].append(second)
    response = sdk_response(from_chat(context(), completion))
    calls = response.output
    assert [c.type for c in calls] == ["function_call", "function_call"]
    assert calls[0].call_id == "call_Dn2RJJSxzDm49vlVTehseJ0k"
    assert json.loads(calls[0].arguments) == TOOL_ARGUMENTS
    assert (calls[1].call_id, calls[1].id) == ("call_2", "fc_7f3a_1")
    assert response.status == "completed"


def test_chat_length_is_incomplete_and_refusal_is_kept() -> None:
    completion = openai_completion("gpt-x")
    completion["choices"][0]["finish_reason"] = "length"
    completion["choices"][0]["message"]["refusal"] = "I can't help with that."
    response = sdk_response(from_chat(context(), completion))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    parts = response.output[0].content
    assert [p.type for p in parts] == ["output_text", "refusal"]


def test_chat_content_filter_is_incomplete() -> None:
    completion = openai_completion("gpt-x")
    completion["choices"][0]["finish_reason"] = "content_filter"
    response = sdk_response(from_chat(context(), completion))
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "content_filter"


def test_anthropic_text_then_tool_call_in_order() -> None:
    message = anthropic_message("claude-x", tool="get_weather")
    response = sdk_response(from_anthropic(context(), message))
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output_text == "Let me check the weather."
    call = response.output[1]
    assert call.call_id == "toolu_01A09q90qw90lq917835lq9" and call.name == "get_weather"
    assert json.loads(call.arguments) == TOOL_ARGUMENTS
    assert response.model == "claude-x-20250929"
    usage = response.usage
    assert usage is not None
    # Anthropic counts cache reads apart; Responses counts them inside input_tokens.
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (25, 13, 38)
    assert usage.input_tokens_details.cached_tokens == 4


def test_anthropic_max_tokens_is_incomplete_and_thinking_is_not_returned() -> None:
    message = anthropic_message("claude-x")
    message["content"].insert(0, {"type": "thinking", "thinking": "hmm", "signature": "s"})
    message["stop_reason"] = "max_tokens"
    message["usage"]["cache_creation_input_tokens"] = 10
    response = sdk_response(from_anthropic(context(max_output_tokens=13), message))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 13
    assert [item.type for item in response.output] == ["message"]
    assert response.output_text == REPLY_TEXT
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == 35 and usage.input_tokens_details.cache_write_tokens == 10


def test_an_empty_answer_is_one_empty_message() -> None:
    message = anthropic_message("claude-x")
    message["content"] = []
    response = sdk_response(from_anthropic(context(), message))
    assert response.output_text == ""
    assert len(response.output) == 1


@pytest.mark.parametrize(
    ("status", "body", "message", "code"),
    [
        (
            429,
            b'{"type":"error","error":{"type":"rate_limit_error","message":"Slow down."}}',
            "Slow down.",
            "rate_limit_error",
        ),
        (
            400,
            b'{"error":{"message":"Bad tool.","type":"invalid_request_error","param":null,'
            b'"code":"invalid_value"}}',
            "Bad tool.",
            "invalid_value",
        ),
        (502, b"upstream connect error", "The model provider answered HTTP 502", "upstream_error"),
    ],
)
def test_errors_come_back_in_the_responses_shape(
    status: int, body: bytes, message: str, code: str
) -> None:
    error = json.loads(translate_error(status, body))["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"].startswith(message)
    assert error["code"] == code
    assert error["type"] == ("server_error" if status >= 500 else "invalid_request_error")
