"""Responses API requests: checked, and translated for chat-completions and
Anthropic providers; what cannot be honoured is a 400 naming the field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.errors import GatewayError
from ext_proc.translate.responses.request import ResponseContext, new_response_id, parse_request
from ext_proc.translate.responses.request_to_anthropic import translate_request as to_anthropic
from ext_proc.translate.responses.request_to_chat import translate_request as to_chat

PNG_URL = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
PDF_URL = "data:application/pdf;base64,JVBERi0xLjQKJcfsj6IKNSAwIG9iago="

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
    "strict": True,
}

AGENT_TURN: list[dict[str, Any]] = [
    {"role": "developer", "content": "Answer in French."},
    {
        "type": "message",
        "role": "user",
        "content": [
            {"type": "input_text", "text": "What is in this image, and the weather?"},
            {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
        ],
    },
    {
        "type": "message",
        "role": "assistant",
        "id": "msg_1",
        "status": "completed",
        "content": [{"type": "output_text", "text": "Checking.", "annotations": []}],
    },
    {
        "type": "function_call",
        "id": "fc_1",
        "call_id": "call_a",
        "name": "get_weather",
        "arguments": '{"location":"Paris"}',
    },
    {
        "type": "function_call",
        "call_id": "call_b",
        "name": "get_weather",
        "arguments": '{"location":"Lyon"}',
    },
    {"type": "function_call_output", "call_id": "call_a", "output": "18C"},
    {
        "type": "function_call_output",
        "call_id": "call_b",
        "output": [
            {"type": "input_text", "text": "21C"},
            {"type": "input_image", "image_url": "https://example.com/lyon.png"},
        ],
    },
    {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAA"},
]


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "input": "Hello", **fields}


def refusal(request: dict[str, Any], translate: Any = None) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parsed = parse_request(request)
        if translate is not None:
            translate(parsed)
    error = caught.value
    assert error.status == 400
    assert error.message
    return error


# --- parsing ------------------------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    request = parse_request(body(input="Bonjour ☕"))
    assert request.items == (
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Bonjour ☕"}],
        },
    )
    assert request.store is True and request.stream is False
    assert request.tool_choice == "auto"


def test_reasoning_items_are_not_sent_on_and_the_rest_is_normalised() -> None:
    request = parse_request(body(input=AGENT_TURN))
    assert [item["type"] for item in request.items] == [
        "message",
        "message",
        "message",
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
    ]
    assert request.items[0]["content"] == [{"type": "input_text", "text": "Answer in French."}]
    # Output-only fields (id, status, annotations) are not part of the normal form.
    assert request.items[2] == {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "Checking."}],
    }


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools"),
        ({"tools": [{"type": "mcp", "server_label": "x"}]}, "tools"),
        ({"background": True}, "background"),
        ({"conversation": "conv_1"}, "conversation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        ({"include": ["file_search_call.results"]}, "include"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_tool_calls": 2}, "max_tool_calls"),
        ({"truncation": "auto"}, "truncation"),
        ({"service_tier": "priority"}, "service_tier"),
        ({"reasoning": {"effort": "high", "summary": "detailed"}}, "reasoning.summary"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input"),
        ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
            "input",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input",
        ),
        ({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input"),
    ],
)
def test_what_no_provider_behind_archway_can_honour_is_refused(
    fields: dict[str, Any], param: str
) -> None:
    error = refusal(body(**fields))
    assert error.param == param
    assert error.code == "unsupported_parameter"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": None}, "model"),
        ({"input": 3}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
            "input",
        ),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "absent"}}, "tool_choice"),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
def test_malformed_requests_are_400s_naming_the_field(fields: dict[str, Any], param: str) -> None:
    assert refusal(body(**fields)).param == param


def test_hints_and_vacuous_options_are_accepted() -> None:
    # Codex sends these with every request.
    request = parse_request(
        body(
            include=["reasoning.encrypted_content"],
            prompt_cache_key="thread-1",
            stream_options={"include_obfuscation": False},
            reasoning={"effort": "medium", "summary": "auto"},
            background=False,
            truncation="disabled",
            service_tier="auto",
        )
    )
    assert request.reasoning_effort == "medium"


def test_previous_response_id_allows_an_empty_input() -> None:
    request = parse_request({"model": "m", "previous_response_id": "resp_1"})
    assert request.items == ()


def test_context_round_trips_through_json() -> None:
    request = parse_request(body(metadata={"k": "v"}, tools=[WEATHER_TOOL], temperature=0.5))
    response_id = new_response_id()
    assert response_id.startswith("resp_") and len(response_id) > 40
    ctx = request.context(response_id, 1700000000)
    again = ResponseContext.from_json(ctx.to_json())
    assert again == ctx
    assert ctx.echo["metadata"] == {"k": "v"}
    assert ctx.echo["tools"][0]["name"] == "get_weather"


# --- to chat completions ------------------------------------------------------------


def test_chat_request_carries_every_honoured_field() -> None:
    request = parse_request(
        body(
            input=AGENT_TURN,
            instructions="Be brief.",
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "name": "get_weather"},
            parallel_tool_calls=False,
            max_output_tokens=300,
            temperature=0.2,
            top_p=0.9,
            metadata={"trace": "abc"},
            user="user-7",
            stream=True,
            reasoning={"effort": "low"},
            text={
                "format": {
                    "type": "json_schema",
                    "name": "weather",
                    "schema": {"type": "object"},
                    "strict": True,
                },
                "verbosity": "low",
            },
        )
    )
    chat = to_chat(request, max_tokens_field="max_completion_tokens")
    assert chat["model"] == "m"
    assert chat["max_completion_tokens"] == 300
    assert (chat["temperature"], chat["top_p"], chat["user"]) == (0.2, 0.9, "user-7")
    assert chat["reasoning_effort"] == "low" and chat["verbosity"] == "low"
    assert chat["stream"] is True and chat["stream_options"] == {"include_usage": True}
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "weather", "schema": {"type": "object"}, "strict": True},
    }
    assert chat["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "parameters": WEATHER_TOOL["parameters"],
                "strict": True,
            },
        }
    ]
    assert chat["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert chat["parallel_tool_calls"] is False
    # metadata belongs to the stored Response, not to the provider's request.
    assert "metadata" not in chat
    assert chat["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Answer in French."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and the weather?"},
                {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
            ],
        },
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Paris"}'},
                },
                {
                    "id": "call_b",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location":"Lyon"}'},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "tool", "tool_call_id": "call_b", "content": "21C"},
        # A tool's image follows the run of tool messages, as user input.
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/lyon.png"}}
            ],
        },
    ]


def test_chat_history_comes_before_this_turn() -> None:
    answer = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "A"}],
    }
    history = (*parse_request(body(input="first")).items, answer)
    chat = to_chat(parse_request(body(input="second")), history)
    assert chat["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "A"},
        {"role": "user", "content": "second"},
    ]
    assert "stream" not in chat and "max_tokens" not in chat


def test_chat_json_object_and_files() -> None:
    request = parse_request(
        body(
            text={"format": {"type": "json_object"}},
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_file", "file_data": PDF_URL, "filename": "a.pdf"},
                        {"type": "input_text", "text": "Summarise as JSON."},
                    ],
                }
            ],
        )
    )
    chat = to_chat(request)
    assert chat["response_format"] == {"type": "json_object"}
    assert chat["messages"][0]["content"][0] == {
        "type": "file",
        "file": {"file_data": PDF_URL, "filename": "a.pdf"},
    }


def test_tool_choice_without_tools_is_refused() -> None:
    error = refusal(body(tool_choice="required"), to_chat)
    assert error.param == "tool_choice"


# --- to Anthropic -------------------------------------------------------------------


def test_anthropic_request_carries_every_honoured_field() -> None:
    request = parse_request(
        body(
            input=AGENT_TURN,
            instructions="Be brief.",
            tools=[WEATHER_TOOL],
            tool_choice="required",
            parallel_tool_calls=False,
            max_output_tokens=300,
            temperature=0.2,
            top_p=0.9,
            user="user-7",
            stream=True,
            text={"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}}},
        )
    )
    anthropic = to_anthropic(request)
    assert anthropic["model"] == "m"
    assert anthropic["max_tokens"] == 300
    assert anthropic["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French."},
    ]
    assert (anthropic["temperature"], anthropic["top_p"]) == (0.2, 0.9)
    assert anthropic["metadata"] == {"user_id": "user-7"}
    assert anthropic["stream"] is True
    assert anthropic["output_config"] == {
        "format": {"type": "json_schema", "schema": {"type": "object"}}
    }
    assert anthropic["tools"] == [
        {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "input_schema": WEATHER_TOOL["parameters"],
        }
    ]
    assert anthropic["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    user, assistant, results = anthropic["messages"]
    assert user["role"] == "user"
    assert user["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": PNG_URL.split(",", 1)[1],
    }
    assert assistant == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking."},
            {
                "type": "tool_use",
                "id": "call_a",
                "name": "get_weather",
                "input": {"location": "Paris"},
            },
            {
                "type": "tool_use",
                "id": "call_b",
                "name": "get_weather",
                "input": {"location": "Lyon"},
            },
        ],
    }
    assert results["role"] == "user"
    assert [block["type"] for block in results["content"]] == [
        "tool_result",
        "tool_result",
        "image",
    ]
    assert results["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "call_a",
        "content": "18C",
    }


def test_anthropic_gets_a_default_max_tokens() -> None:
    anthropic = to_anthropic(parse_request(body()))
    assert anthropic["max_tokens"] == 4096
    assert anthropic["messages"] == [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"text": {"format": {"type": "json_object"}}}, "text.format"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"text": {"verbosity": "low"}}, "text.verbosity"),
        (
            {
                "input": [
                    {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"},
                    {"type": "function_call_output", "call_id": "c", "output": "x"},
                ]
            },
            "input",
        ),
    ],
)
def test_what_anthropic_cannot_honour_is_refused_in_the_clients_terms(
    fields: dict[str, Any], param: str
) -> None:
    assert refusal(body(**fields), to_anthropic).param == param


def test_anthropic_history_replays_a_stored_tool_turn() -> None:
    stored = [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather?"}],
        },
        {
            "id": "fc_x_0",
            "type": "function_call",
            "status": "completed",
            "call_id": "toolu_1",
            "name": "get_weather",
            "arguments": json.dumps({"location": "Paris"}),
        },
    ]
    history = parse_request({"model": "m", "input": stored}).items
    turn = parse_request(
        body(
            previous_response_id="resp_1",
            input=[{"type": "function_call_output", "call_id": "toolu_1", "output": "18C"}],
            tools=[WEATHER_TOOL],
        )
    )
    anthropic = to_anthropic(turn, history)
    assert [m["role"] for m in anthropic["messages"]] == ["user", "assistant", "user"]
    assert anthropic["messages"][2]["content"][0]["tool_use_id"] == "toolu_1"
