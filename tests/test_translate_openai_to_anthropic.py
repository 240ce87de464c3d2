"""An OpenAI client served by Anthropic: request, response, stream and errors,
with bodies shaped like the ones the real APIs send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.apis import COMMON_DIALECT, WireAPI
from ext_proc.errors import GatewayError
from ext_proc.translate import TranslationContext, context_from_header, translator_for
from ext_proc.translate.openai_anthropic import INCLUDE_USAGE, OpenAIToAnthropic
from ext_proc.translate.openai_anthropic.request import DEFAULT_MAX_TOKENS
from ext_proc.translate.openai_anthropic.request import translate_request as to_anthropic
from ext_proc.translate.openai_anthropic.response import translate_response
from ext_proc.translate.openai_anthropic.stream import StreamTranslator
from ext_proc.translate.sse import SSEDecoder
from tests.fake_providers import REPLY_TEXT, TOOL_ARGUMENTS, anthropic_message, anthropic_stream

_OPENAI = WireAPI.OPENAI
_ANTHROPIC = WireAPI.ANTHROPIC
TRANSLATOR = translator_for(_OPENAI, _ANTHROPIC)
assert TRANSLATOR is not None


def translate_error(status: int, body: bytes) -> bytes:
    return TRANSLATOR.error(status, body)


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
PDF = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago="

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
        "strict": True,
    },
}


# --- request -------------------------------------------------------------------------


def test_a_whole_conversation_with_every_field() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these, and the weather there?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://example.com/paris.jpg", "detail": "high"},
                    },
                    {
                        "type": "file",
                        "file": {
                            "filename": "report.pdf",
                            "file_data": f"data:application/pdf;base64,{PDF}",
                        },
                    },
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "21°C"}],
            },
            {"role": "user", "content": "Thanks. Which is warmer?"},
        ],
        "max_tokens": 100,
        "max_completion_tokens": 300,
        "stop": "END",
        "temperature": 1.6,
        "top_p": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "user-7",
        "tools": [WEATHER],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
        # Hints with no Anthropic equivalent: dropped.
        "seed": 7,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.1,
        "logit_bias": {"50256": -100},
        "store": False,
        "reasoning_effort": "low",
        "service_tier": "auto",
    }
    assert to_anthropic(body) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "You are terse."},
            {"type": "text", "text": "Use metric units."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these, and the weather there?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/paris.jpg"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                        "title": "report.pdf",
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "type": "tool_use",
                        "id": "call_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "call_2",
                        "name": "get_weather",
                        "input": {"location": "Lyon"},
                    },
                ],
            },
            {
                # Consecutive tool results and the next user message: one user turn,
                # the results first.
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "18°C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "call_2",
                        "content": [{"type": "text", "text": "21°C"}],
                    },
                    {"type": "text", "text": "Thanks. Which is warmer?"},
                ],
            },
        ],
        "stop_sequences": ["END"],
        "temperature": 1.0,
        "top_p": 0.8,
        "stream": True,
        "metadata": {"user_id": "user-7"},
        "tools": [
            {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "input_schema": WEATHER["function"]["parameters"],
            }
        ],
        "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    }


def test_minimal_request_gets_the_default_max_tokens() -> None:
    out = to_anthropic({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert out == {
        "model": "m",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
    }


@pytest.mark.parametrize(
    ("temperature", "sent"), [(0, 0.0), (0.7, 0.7), (1, 1.0), (2, 1.0), (-1, 0.0)]
)
def test_temperature_is_clamped_to_anthropics_range(temperature: float, sent: float) -> None:
    out = to_anthropic({"model": "m", "messages": [], "temperature": temperature})
    assert out["temperature"] == sent


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", None, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "f"}}, None, {"type": "tool", "name": "f"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, True, None),
        (None, None, None),
    ],
)
def test_tool_choice(tool_choice: object, parallel: object, expected: object) -> None:
    body: dict[str, Any] = {"model": "m", "messages": [], "tools": [WEATHER]}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    assert to_anthropic(body).get("tool_choice") == expected


def test_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in to_anthropic({"model": "m", "messages": [], "tool_choice": "none"})


def test_stop_list_and_safety_identifier() -> None:
    out = to_anthropic(
        {"model": "m", "messages": [], "stop": ["a", "b"], "safety_identifier": "hash-1"}
    )
    assert out["stop_sequences"] == ["a", "b"]
    assert out["metadata"] == {"user_id": "hash-1"}


def test_json_schema_response_format_becomes_structured_output() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    out = to_anthropic(
        {
            "model": "m",
            "messages": [],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": schema, "strict": True},
            },
        }
    )
    assert out["output_config"] == {"format": {"type": "json_schema", "schema": schema}}


def test_assistant_text_and_refusal_parts() -> None:
    out = to_anthropic(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {"role": "assistant", "content": ""},
            ],
        }
    )
    assert out["messages"][1] == {
        "role": "assistant",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "No."}],
    }
    assert len(out["messages"]) == 2


@pytest.mark.parametrize(
    ("field", "value", "param"),
    [
        ("n", 2, "n"),
        ("logprobs", True, "logprobs"),
        ("top_logprobs", 3, "logprobs"),
        ("modalities", ["text", "audio"], "modalities"),
        ("audio", {"voice": "alloy", "format": "wav"}, "modalities"),
        ("functions", [{"name": "f"}], "functions"),
        ("response_format", {"type": "json_object"}, "response_format"),
        ("tools", [{"type": "custom", "custom": {"name": "x"}}], "tools"),
    ],
)
def test_fields_anthropic_cannot_honour_are_refused(field: str, value: object, param: str) -> None:
    with pytest.raises(GatewayError) as err:
        to_anthropic({"model": "m", "messages": [], field: value})
    assert err.value.status == 400
    assert err.value.code == "unsupported_parameter"
    assert err.value.param == param


def test_harmless_defaults_of_refused_fields_pass() -> None:
    out = to_anthropic(
        {
            "model": "m",
            "messages": [],
            "n": 1,
            "logprobs": False,
            "modalities": ["text"],
            "response_format": {"type": "text"},
        }
    )
    assert set(out) == {"model", "max_tokens", "messages"}


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]},
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-abc"}}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]},
        {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "narrator", "content": "hi"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{oops"}}],
        },
    ],
)
def test_untranslatable_messages_are_400s(message: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as err:
        to_anthropic({"model": "m", "messages": [message]})
    assert err.value.status == 400


def test_context_remembers_include_usage_for_streams_only() -> None:
    usage = {"stream_options": {"include_usage": True}}
    body = {"model": "m", "messages": [], **usage}
    _, ctx = TRANSLATOR.request(body, COMMON_DIALECT)
    assert ctx == TranslationContext(_OPENAI, _ANTHROPIC)
    assert ctx.header_value() == "openai-to-anthropic"
    _, ctx = TRANSLATOR.request({**body, "stream": True}, COMMON_DIALECT)
    assert ctx.state == INCLUDE_USAGE
    assert ctx.header_value() == "openai-to-anthropic;include-usage"
    assert context_from_header(ctx.header_value()) == (TRANSLATOR, ctx)


@pytest.mark.parametrize(
    "value", [None, "", "openai-to-gemini", "openai-to-openai", "include-usage"]
)
def test_only_a_translated_pair_names_a_context(value: str | None) -> None:
    assert context_from_header(value) is None


def test_a_state_the_translator_did_not_write_asks_for_nothing() -> None:
    found = context_from_header("openai-to-anthropic;include-usage;forged")
    assert found is not None
    translator, context = found
    out = translator.stream(context, created=1).feed(anthropic_stream("m"))
    assert b'"usage"' not in out


# --- response ------------------------------------------------------------------------


def test_text_message_becomes_a_chat_completion() -> None:
    completion = translate_response(anthropic_message("claude-sonnet-4-5"), created=1700000000)
    assert completion == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": REPLY_TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 13,
            "total_tokens": 38,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


def test_tool_use_message_becomes_tool_calls() -> None:
    message = anthropic_message("claude-sonnet-4-5", tool="get_weather")
    message["content"].insert(0, {"type": "thinking", "thinking": "hmm", "signature": "sig"})
    completion = translate_response(message, created=1)
    reply = completion["choices"][0]["message"]
    assert reply["content"] == "Let me check the weather."
    assert reply["tool_calls"] == [
        {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": json.dumps(TOOL_ARGUMENTS, separators=(",", ":")),
            },
        }
    ]
    assert completion["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_calls_alone_have_null_content() -> None:
    message = {
        "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
        "stop_reason": "tool_use",
    }
    reply = translate_response(message, created=1)["choices"][0]["message"]
    assert reply["content"] is None
    assert reply["tool_calls"][0]["function"]["arguments"] == "{}"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_finish_reasons(stop_reason: str | None, finish_reason: str) -> None:
    message = {"content": [], "stop_reason": stop_reason}
    assert translate_response(message, created=1)["choices"][0]["finish_reason"] == finish_reason


# --- stream --------------------------------------------------------------------------


def translate_stream(stream: bytes, *, include_usage: bool = True, cut: int = 0) -> bytes:
    state = INCLUDE_USAGE if include_usage else ""
    translator = TRANSLATOR.stream(
        TranslationContext(_OPENAI, _ANTHROPIC, state), created=1700000000
    )
    out = b""
    for piece in (stream[:cut], stream[cut:]) if cut else (stream,):
        out += translator.feed(piece)
    return out + translator.finish()


def chunks(output: bytes) -> list[Any]:
    decoder = SSEDecoder()
    events = decoder.feed(output) + decoder.flush()
    assert all(e.event is None for e in events)  # OpenAI never names its events
    assert events[-1].data == "[DONE]"
    return [json.loads(e.data) for e in events[:-1]]


def test_text_stream_becomes_chunks() -> None:
    out = chunks(translate_stream(anthropic_stream("claude-sonnet-4-5")))
    head = {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "claude-sonnet-4-5-20250929",
    }
    assert out[0] == {
        **head,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": ""},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in out if c["choices"])
    assert text == REPLY_TEXT
    assert out[-2]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert out[-1] == {
        **head,
        "choices": [],
        "usage": {
            "prompt_tokens": 25,
            "completion_tokens": 13,
            "total_tokens": 38,
            "prompt_tokens_details": {"cached_tokens": 4},
        },
    }


def test_no_usage_chunk_unless_asked() -> None:
    out = chunks(translate_stream(anthropic_stream("m"), include_usage=False))
    assert all(c["choices"] for c in out)


def test_tool_use_stream_becomes_tool_call_deltas() -> None:
    out = chunks(translate_stream(anthropic_stream("m", tool="get_weather")))
    calls = [
        c["choices"][0]["delta"]["tool_calls"]
        for c in out
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0] == [
        {
            "index": 0,
            "id": "toolu_01A09q90qw90lq917835lq9",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
    ]
    assert all(set(c[0]) == {"index", "function"} for c in calls[1:])
    arguments = "".join(c[0]["function"]["arguments"] for c in calls)
    assert json.loads(arguments) == TOOL_ARGUMENTS
    finishes = [c["choices"][0]["finish_reason"] for c in out if c["choices"]]
    assert [f for f in finishes if f] == ["tool_calls"]


def test_two_tool_calls_get_their_own_indexes() -> None:
    events = [
        {"type": "message_start", "message": {"id": "m", "model": "x", "usage": {}}},
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "a", "name": "f", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": "{}"},
        },
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "tool_use", "id": "b", "name": "g", "input": {}},
        },
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"k":1}'},
        },
        {"type": "message_stop"},
    ]
    stream = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)
    out = chunks(translate_stream(stream, include_usage=False))
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in out[1:]]
    assert [(c["index"], c["function"]["arguments"]) for c in calls] == [
        (0, ""),
        (0, "{}"),
        (1, ""),
        (1, '{"k":1}'),
    ]


def test_every_cut_gives_the_same_stream() -> None:
    stream = anthropic_stream("m", tool="get_weather")
    whole = translate_stream(stream)
    for cut in range(1, len(stream), 7):
        assert translate_stream(stream, cut=cut) == whole, cut


def test_thinking_and_ping_carry_nothing() -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "x"}}),
        ("ping", {"type": "ping"}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "thinking", "thinking": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "signature_delta", "signature": "s"},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_stop", {"type": "message_stop"}),
    ]
    stream = b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)
    out = chunks(translate_stream(stream, include_usage=False))
    assert len(out) == 1  # the role chunk


def test_mid_stream_error_becomes_an_openai_error_event() -> None:
    stream = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"m"}}\n\n'
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    )
    out = translate_stream(stream)
    *_, last = out.strip().split(b"\n\n")
    assert json.loads(last.removeprefix(b"data: ")) == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert b"[DONE]" not in out


def test_the_pair_has_its_translator() -> None:
    assert isinstance(TRANSLATOR, OpenAIToAnthropic)
    ctx = TranslationContext(_OPENAI, _ANTHROPIC, INCLUDE_USAGE)
    assert isinstance(TRANSLATOR.stream(ctx, created=1), StreamTranslator)


# --- errors --------------------------------------------------------------------------


def test_anthropic_error_becomes_openai_error() -> None:
    body = json.dumps(
        {
            "type": "error",
            "error": {"type": "not_found_error", "message": "model: claude-x"},
            "request_id": "req_1",
        }
    ).encode()
    assert json.loads(translate_error(404, body)) == {
        "error": {
            "message": "model: claude-x",
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found_error",
        }
    }


def test_an_error_already_in_openai_shape_is_kept() -> None:
    # Envoy's own replies (upstream unreachable) are rendered for the client already.
    body = (
        b'{"error":{"message":"down","type":"server_error","param":null,'
        b'"code":"upstream_unavailable"}}'
    )
    assert translate_error(503, body) is body


def test_a_non_json_error_is_wrapped() -> None:
    out = json.loads(translate_error(502, b"<html>Bad Gateway</html>"))
    assert out["error"]["type"] == "server_error"
    assert out["error"]["code"] == "upstream_error"
    assert "<html>Bad Gateway</html>" in out["error"]["message"]
