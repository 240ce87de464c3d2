"""An Anthropic client served by an OpenAI-compatible provider: request, response,
stream and errors, with bodies shaped like the ones the real APIs send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.apis import Dialect, WireAPI
from ext_proc.errors import GatewayError
from ext_proc.translate import TranslationContext, context_from_header, translator_for
from ext_proc.translate.anthropic_openai import AnthropicToOpenAI
from ext_proc.translate.anthropic_openai.request import translate_request as to_openai
from ext_proc.translate.anthropic_openai.response import translate_response
from ext_proc.translate.anthropic_openai.stream import StreamTranslator
from ext_proc.translate.sse import SSEDecoder
from tests.fake_providers import REPLY_TEXT, TOOL_ARGUMENTS, openai_completion, openai_stream

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
PDF = "JVBERi0xLjQKJcfsj6IKNSAwIG9iago="
SCHEMA = {"type": "object", "properties": {"location": {"type": "string"}}}
TRANSLATOR = translator_for(WireAPI.ANTHROPIC, WireAPI.OPENAI)
assert TRANSLATOR is not None


def translate_error(status: int, body: bytes) -> bytes:
    return TRANSLATOR.error(status, body)


# --- request -------------------------------------------------------------------------


def test_a_whole_conversation_with_every_field() -> None:
    body = {
        "model": "gpt-5.2",
        "max_tokens": 1024,
        "system": [
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use metric units."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    {
                        "type": "document",
                        "title": "report.pdf",
                        "source": {"type": "base64", "media_type": "application/pdf", "data": PDF},
                    },
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Two cities.", "signature": "EqQB"},
                    {"type": "text", "text": "Checking both."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "get_weather",
                        "input": {"location": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_2",
                        "name": "get_weather",
                        "input": {"location": "Lyon"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "is_error": False,
                        "content": [
                            {"type": "text", "text": "21°C"},
                            {"type": "text", "text": "sunny"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": PNG,
                                },
                            },
                        ],
                    },
                    {
                        "type": "text",
                        "text": "Which is warmer?",
                        "cache_control": {"type": "ephemeral"},
                    },
                ],
            },
        ],
        "stop_sequences": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stream": True,
        "metadata": {"user_id": "user-7"},
        "tools": [
            {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "input_schema": SCHEMA,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "thinking": {"type": "enabled", "budget_tokens": 2000},
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"},
        "service_tier": "auto",
    }
    image = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}
    assert to_openai(body, Dialect(max_tokens_field="max_completion_tokens")) == {
        "model": "gpt-5.2",
        "messages": [
            {"role": "system", "content": "You are terse.\n\nUse metric units."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these?"},
                    image,
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
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
                "content": "Checking both.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location":"Lyon"}'},
                    },
                ],
            },
            # Tool results first, right after the calls, as OpenAI requires.
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18°C"},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "21°C\nsunny"},
            # The tool's image, which a tool message cannot hold, comes as user input.
            {
                "role": "user",
                "content": [image, {"type": "text", "text": "Which is warmer?"}],
            },
        ],
        "max_completion_tokens": 1024,
        "stop": ["END", "STOP"],
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "user-7",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "response", "schema": SCHEMA},
        },
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "The current weather in a city.",
                    "parameters": SCHEMA,
                },
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }


def test_minimal_request_uses_max_tokens_by_default() -> None:
    body = {"model": "llama", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    assert to_openai(body) == {
        "model": "llama",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 64,
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice(choice: dict[str, Any], expected: object) -> None:
    body = {
        "model": "m",
        "messages": [],
        "tools": [{"name": "f", "input_schema": SCHEMA}],
        "tool_choice": choice,
    }
    out = to_openai(body)
    assert out["tool_choice"] == expected
    assert "parallel_tool_calls" not in out


def test_tool_without_schema_gets_an_empty_object_schema() -> None:
    out = to_openai({"model": "m", "messages": [], "tools": [{"name": "ping"}]})
    assert out["tools"][0]["function"] == {
        "name": "ping",
        "parameters": {"type": "object", "properties": {}},
    }


def test_assistant_turn_of_thinking_only_keeps_a_content() -> None:
    thinking = {"type": "thinking", "thinking": "...", "signature": "sig"}
    out = to_openai({"model": "m", "messages": [{"role": "assistant", "content": [thinking]}]})
    assert out["messages"] == [{"role": "assistant", "content": ""}]


def test_plain_text_document_becomes_text() -> None:
    block = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "The grass is green."},
    }
    out = to_openai({"model": "m", "messages": [{"role": "user", "content": [block]}]})
    assert out["messages"][0]["content"] == [{"type": "text", "text": "The grass is green."}]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("mcp_servers", [{"type": "url", "url": "https://mcp.test", "name": "x"}]),
        ("container", "container_1"),
        ("tools", [{"type": "web_search_20250305", "name": "web_search"}]),
        ("tools", [{"type": "bash_20250124", "name": "bash"}]),
    ],
)
def test_server_side_features_are_refused(field: str, value: object) -> None:
    with pytest.raises(GatewayError) as err:
        to_openai({"model": "m", "messages": [], field: value})
    assert err.value.status == 400
    assert err.value.code == "unsupported_parameter"


@pytest.mark.parametrize(
    "message",
    [
        {"role": "system", "content": "hi"},
        {"role": "user", "content": [{"type": "search_result", "source": "x"}]},
        {
            "role": "user",
            "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}],
        },
        {"role": "user", "content": [{"type": "document", "source": {"type": "url", "url": "u"}}]},
    ],
)
def test_untranslatable_messages_are_400s(message: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as err:
        to_openai({"model": "m", "messages": [message]})
    assert err.value.status == 400


def test_context_via_the_translator() -> None:
    assert isinstance(TRANSLATOR, AnthropicToOpenAI)
    request = {"model": "m", "messages": [], "max_tokens": 3, "stream": True}
    body, ctx = TRANSLATOR.request(request, Dialect())
    assert ctx == TranslationContext(WireAPI.ANTHROPIC, WireAPI.OPENAI)
    assert ctx.header_value() == "anthropic-to-openai"
    assert context_from_header(ctx.header_value()) == (TRANSLATOR, ctx)
    assert body["max_tokens"] == 3
    assert isinstance(TRANSLATOR.stream(ctx, created=1), StreamTranslator)
    # The provider's dialect names the limit.
    body, _ = TRANSLATOR.request(request, Dialect(max_tokens_field="max_completion_tokens"))
    assert body["max_completion_tokens"] == 3 and "max_tokens" not in body


# --- response ------------------------------------------------------------------------


def test_chat_completion_becomes_a_message() -> None:
    assert translate_response(openai_completion("gpt-5.2")) == {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "gpt-5.2",
        "content": [{"type": "text", "text": REPLY_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 21, "output_tokens": 13, "cache_read_input_tokens": 4},
    }


def test_tool_calls_become_tool_use_blocks() -> None:
    message = translate_response(openai_completion("gpt-5.2", tool="get_weather"))
    assert message["content"] == [
        {
            "type": "tool_use",
            "id": "call_Dn2RJJSxzDm49vlVTehseJ0k",
            "name": "get_weather",
            "input": TOOL_ARGUMENTS,
        }
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("arguments", "tool_input"),
    [
        ("", {}),
        ("not json", {"_raw_arguments": "not json"}),
        ("[1, 2]", {"value": [1, 2]}),
    ],
)
def test_odd_tool_arguments_are_kept(arguments: str, tool_input: dict[str, Any]) -> None:
    completion = openai_completion("m", tool="f")
    completion["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] = arguments
    assert translate_response(completion)["content"][0]["input"] == tool_input


def test_refusal_and_empty_content() -> None:
    completion = openai_completion("m")
    completion["choices"][0]["message"].update(content=None, refusal="I can't help with that.")
    completion["choices"][0]["finish_reason"] = "content_filter"
    message = translate_response(completion)
    assert message["content"] == [{"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    completion["choices"][0]["message"].update(content="", refusal=None)
    assert translate_response(completion)["content"] == [{"type": "text", "text": ""}]


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_stop_reasons(finish_reason: str | None, stop_reason: str) -> None:
    completion = openai_completion("m")
    completion["choices"][0]["finish_reason"] = finish_reason
    assert translate_response(completion)["stop_reason"] == stop_reason


# --- stream --------------------------------------------------------------------------


def translate_stream(stream: bytes, *, cut: int = 0) -> bytes:
    context = TranslationContext(WireAPI.ANTHROPIC, WireAPI.OPENAI)
    translator = TRANSLATOR.stream(context, created=1)
    out = b""
    for piece in (stream[:cut], stream[cut:]) if cut else (stream,):
        out += translator.feed(piece)
    return out + translator.finish()


def events(output: bytes) -> list[tuple[str, dict[str, Any]]]:
    decoder = SSEDecoder()
    parsed = decoder.feed(output) + decoder.flush()
    for event in parsed:
        assert event.event == json.loads(event.data)["type"]  # named, as Anthropic does
    return [(e.event or "", json.loads(e.data)) for e in parsed]


def test_text_stream_becomes_anthropic_events() -> None:
    out = events(translate_stream(openai_stream("gpt-5.2", include_usage=True)))
    names = [name for name, _ in out]
    words = len(REPLY_TEXT.split(" "))
    assert names == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * words,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert out[0][1]["message"] == {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "type": "message",
        "role": "assistant",
        "model": "gpt-5.2",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }
    assert out[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    text = "".join(d["delta"]["text"] for n, d in out if n == "content_block_delta")
    assert text == REPLY_TEXT
    assert out[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 21, "output_tokens": 13, "cache_read_input_tokens": 4},
    }


def test_tool_call_stream_becomes_a_tool_use_block() -> None:
    out = events(translate_stream(openai_stream("m", tool="get_weather", include_usage=True)))
    starts = [d for n, d in out if n == "content_block_start"]
    assert starts == [
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {
                "type": "tool_use",
                "id": "call_Dn2RJJSxzDm49vlVTehseJ0k",
                "name": "get_weather",
                "input": {},
            },
        }
    ]
    deltas = [d["delta"] for n, d in out if n == "content_block_delta"]
    assert {d["type"] for d in deltas} == {"input_json_delta"}
    assert json.loads("".join(d["partial_json"] for d in deltas)) == TOOL_ARGUMENTS
    assert out[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_text_then_two_parallel_tool_calls_are_three_blocks() -> None:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {
            "id": "c",
            "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(body)}\n\n".encode()

    def call(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    stream = b"".join(
        [
            chunk({"role": "assistant", "content": "Checking."}),
            chunk(call(0, id="a", type="function", function={"name": "f", "arguments": ""})),
            chunk(call(0, function={"arguments": "{}"})),
            chunk(call(1, id="b", type="function", function={"name": "g", "arguments": '{"k"'})),
            chunk(call(1, function={"arguments": ":1}"})),
            chunk({}, "tool_calls"),
            b"data: [DONE]\n\n",
        ]
    )
    out = events(translate_stream(stream))
    assert [(n, d.get("index")) for n, d in out] == [
        ("message_start", None),
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_stop", 1),
        ("content_block_start", 2),
        ("content_block_delta", 2),
        ("content_block_delta", 2),
        ("content_block_stop", 2),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert out[-2][1]["usage"] == {"input_tokens": 0, "output_tokens": 0}


def test_every_cut_gives_the_same_stream() -> None:
    stream = openai_stream("m", tool="get_weather", include_usage=True)
    whole = translate_stream(stream)
    for cut in range(1, len(stream), 5):
        assert translate_stream(stream, cut=cut) == whole, cut


def test_stream_without_done_still_ends_when_it_finished() -> None:
    stream = openai_stream("m", include_usage=True).removesuffix(b"data: [DONE]\n\n")
    out = events(translate_stream(stream))
    assert [n for n, _ in out][-2:] == ["message_delta", "message_stop"]


def test_a_cut_off_stream_ends_in_an_error_event() -> None:
    stream = openai_stream("m")[:400]
    stream = stream[: stream.rindex(b"\n\n") + 2]
    name, payload = events(translate_stream(stream))[-1]
    assert name == "error"
    assert payload["error"]["type"] == "api_error"


def test_mid_stream_openai_error_becomes_an_error_event() -> None:
    stream = (
        b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}\n\n'
        b'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n'
    )
    name, payload = events(translate_stream(stream))[-1]
    assert (name, payload) == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "The server had an error"}},
    )


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "anthropic_type"),
    [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
def test_openai_error_becomes_anthropic_error(status: int, anthropic_type: str) -> None:
    body = json.dumps(
        {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": "x"}}
    ).encode()
    assert json.loads(translate_error(status, body)) == {
        "type": "error",
        "error": {"type": anthropic_type, "message": "nope"},
    }


def test_string_errors_of_compatible_servers() -> None:
    out = json.loads(translate_error(404, b'{"error": "model \\"llama9\\" not found"}'))
    assert out["error"]["message"] == 'model "llama9" not found'


def test_an_error_already_in_anthropic_shape_is_kept() -> None:
    body = b'{"type":"error","error":{"type":"api_error","message":"down"}}'
    assert translate_error(503, body) is body
