"""OpenAI and Anthropic requests as Converse requests, and what is refused."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ext_proc.errors import GatewayError
from ext_proc.translate.bedrock import request_from_anthropic, request_from_openai
from ext_proc.translate.bedrock.converse import converse_path

MODEL = "us.amazon.nova-pro-v1:0"
PNG = "iVBORw0KGgo="
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"location": {"type": "string"}},
    "required": ["location"],
}


def from_openai(**body: Any) -> dict[str, Any]:
    return request_from_openai.translate_request(body, model_id=MODEL).body


def from_anthropic(**body: Any) -> dict[str, Any]:
    return request_from_anthropic.translate_request(body, model_id=MODEL).body


def refused(translate: Any, body: dict[str, Any]) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        translate(body, model_id=MODEL)
    assert caught.value.status == 400
    return caught.value


# --- paths ---------------------------------------------------------------------------


def test_paths_encode_the_model_id() -> None:
    assert converse_path(MODEL, stream=False) == "/model/us.amazon.nova-pro-v1%3A0/converse"
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude"
    assert converse_path(arn, stream=True) == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile"
        "%2Fus.anthropic.claude/converse-stream"
    )
    with pytest.raises(GatewayError, match="model id is empty"):
        converse_path("", stream=False)


def test_openai_request_carries_stream_and_usage_wishes() -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    plain = request_from_openai.translate_request(body, model_id=MODEL)
    assert plain.stream and not plain.include_usage
    assert plain.path.endswith("/converse-stream")
    asked = request_from_openai.translate_request(
        {**body, "stream_options": {"include_usage": True}}, model_id=MODEL
    )
    assert asked.include_usage
    assert "model" not in asked.body and "stream" not in asked.body


# --- OpenAI --------------------------------------------------------------------------


def test_openai_conversation_with_tools() -> None:
    body = from_openai(
        model=MODEL,
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use metric."}]},
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"location": "Paris"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"location": "Lyon"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
            {
                "role": "tool",
                "tool_call_id": "call_2",
                "content": [{"type": "text", "text": "20C"}],
            },
            {"role": "user", "content": "And tomorrow?"},
        ],
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "weather",
                    "description": "Current weather",
                    "parameters": WEATHER_SCHEMA,
                    "strict": True,
                },
            }
        ],
        tool_choice="required",
        max_completion_tokens=300,
        temperature=0.2,
        top_p=0.9,
        stop="END",
        user="u-1",
    )
    assert body == {
        "system": [{"text": "Be brief."}, {"text": "Use metric."}],
        "messages": [
            {"role": "user", "content": [{"text": "Weather in Paris?"}]},
            {
                "role": "assistant",
                "content": [
                    {
                        "toolUse": {
                            "toolUseId": "call_1",
                            "name": "weather",
                            "input": {"location": "Paris"},
                        }
                    },
                    {
                        "toolUse": {
                            "toolUseId": "call_2",
                            "name": "weather",
                            "input": {"location": "Lyon"},
                        }
                    },
                ],
            },
            {
                # Both results, and the next question, in one user turn.
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": "call_1",
                            "content": [{"text": "18C"}],
                            "status": "success",
                        }
                    },
                    {
                        "toolResult": {
                            "toolUseId": "call_2",
                            "content": [{"text": "20C"}],
                            "status": "success",
                        }
                    },
                    {"text": "And tomorrow?"},
                ],
            },
        ],
        "inferenceConfig": {
            "maxTokens": 300,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
        },
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "weather",
                        "description": "Current weather",
                        "inputSchema": {"json": WEATHER_SCHEMA},
                        "strict": True,
                    }
                }
            ],
            "toolChoice": {"any": {}},
        },
    }


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        ({"type": "function", "function": {"name": "weather"}}, {"tool": {"name": "weather"}}),
    ],
)
def test_openai_tool_choice(choice: object, expected: dict[str, Any]) -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    body = from_openai(messages=[{"role": "user", "content": "x"}], tools=tools, tool_choice=choice)
    assert body["toolConfig"]["toolChoice"] == expected
    # A tool with no parameters still gets a schema: Converse requires one.
    spec = body["toolConfig"]["tools"][0]["toolSpec"]
    assert spec["inputSchema"] == {"json": {"type": "object", "properties": {}}}


def test_openai_tool_choice_none_leaves_the_tools_out() -> None:
    tools = [{"type": "function", "function": {"name": "weather"}}]
    body = from_openai(messages=[{"role": "user", "content": "x"}], tools=tools, tool_choice="none")
    assert "toolConfig" not in body


def test_openai_tool_choice_none_with_tool_history_is_refused() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    error = refused(
        request_from_openai.translate_request,
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "assistant", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c", "content": "ok"},
            ],
            "tools": [{"type": "function", "function": {"name": "weather"}}],
            "tool_choice": "none",
        },
    )
    assert error.param == "tool_choice"
    assert "no tool_choice 'none'" in error.message


def test_openai_images_files_and_structured_output() -> None:
    body = from_openai(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Compare."},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    {
                        "type": "file",
                        "file": {
                            "filename": "Q3 report (final).v2.pdf",
                            "file_data": "data:application/pdf;base64,JVBERi0=",
                        },
                    },
                ],
            }
        ],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": WEATHER_SCHEMA, "strict": True},
        },
    )
    assert body["messages"][0]["content"] == [
        {"text": "Compare."},
        {"image": {"format": "png", "source": {"bytes": PNG}}},
        {
            "document": {
                "format": "pdf",
                "name": "Q3 report (final) v2",
                "source": {"bytes": "JVBERi0="},
            }
        },
    ]
    structure = body["outputConfig"]["textFormat"]
    assert structure["type"] == "json_schema"
    assert structure["structure"]["jsonSchema"]["name"] == "person"
    # Converse takes the schema as a JSON string.
    assert json.loads(structure["structure"]["jsonSchema"]["schema"]) == WEATHER_SCHEMA


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools"),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "parallel_tool_calls": False,
            },
            "parallel_tool_calls",
        ),
        ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": 3}, None),
    ],
)
def test_openai_fields_converse_cannot_honour_are_refused(
    extra: dict[str, Any], param: str | None
) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], **extra}
    error = refused(request_from_openai.translate_request, body)
    assert error.param == (param or "tool_choice")
    assert error.code == "unsupported_parameter"


def test_openai_hints_without_equivalent_are_dropped() -> None:
    body = from_openai(
        messages=[{"role": "user", "content": "hi"}],
        presence_penalty=0.5,
        frequency_penalty=-1,
        seed=7,
        logit_bias={"50256": -100},
        reasoning_effort="high",
        user="u",
        metadata={"k": "v"},
        store=False,
        n=1,
    )
    assert body == {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            "images inline only",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}},
            "not one of png, jpeg, gif, webp",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}},
            "not valid base64",
        ),
        ({"type": "file", "file": {"file_id": "file-abc"}}, "only inline files"),
        (
            {"type": "file", "file": {"file_data": "data:application/zip;base64,UEs="}},
            "not one Bedrock reads",
        ),
        ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "audio"),
    ],
)
def test_openai_content_converse_cannot_take(part: dict[str, Any], message: str) -> None:
    body = {"messages": [{"role": "user", "content": [part]}]}
    error = refused(request_from_openai.translate_request, body)
    assert message in error.message
    assert "messages[0].content" in error.message


def test_openai_bad_messages_are_clear_errors() -> None:
    assert "must be a list" in refused(request_from_openai.translate_request, {}).message
    error = refused(request_from_openai.translate_request, {"messages": [{"role": "robot"}]})
    assert "'robot'" in error.message
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{nope"}}
    error = refused(
        request_from_openai.translate_request,
        {"messages": [{"role": "assistant", "tool_calls": [call]}]},
    )
    assert "not valid JSON" in error.message


# --- Anthropic -----------------------------------------------------------------------


def test_anthropic_conversation_with_tools_thinking_and_cache_points() -> None:
    body = from_anthropic(
        model=MODEL,
        max_tokens=1024,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/jpeg", "data": PNG},
                    },
                    {"type": "text", "text": "Weather?", "cache_control": {"type": "ephemeral"}},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Need a tool.", "signature": "sig=="},
                    {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="},
                    {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"l": "P"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "is_error": True,
                        "content": [{"type": "text", "text": "service down"}],
                    }
                ],
            },
        ],
        tools=[
            {
                "name": "weather",
                "description": "Current weather",
                "input_schema": WEATHER_SCHEMA,
                "cache_control": {"type": "ephemeral"},
            }
        ],
        tool_choice={"type": "tool", "name": "weather"},
        thinking={"type": "enabled", "budget_tokens": 512},
        stop_sequences=["END"],
        temperature=1,
        metadata={"user_id": "u-1"},
    )
    cache_point = {"cachePoint": {"type": "default"}}
    assert body == {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"image": {"format": "jpeg", "source": {"bytes": PNG}}},
                    {"text": "Weather?"},
                    cache_point,
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {
                        "reasoningContent": {
                            "reasoningText": {"text": "Need a tool.", "signature": "sig=="}
                        }
                    },
                    {"reasoningContent": {"redactedContent": "cmVkYWN0ZWQ="}},
                    {"toolUse": {"toolUseId": "toolu_1", "name": "weather", "input": {"l": "P"}}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {
                        "toolResult": {
                            "toolUseId": "toolu_1",
                            "content": [{"text": "service down"}],
                            "status": "error",
                        }
                    }
                ],
            },
        ],
        "system": [{"text": "Be brief."}, cache_point],
        "inferenceConfig": {"maxTokens": 1024, "temperature": 1, "stopSequences": ["END"]},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "weather",
                        "description": "Current weather",
                        "inputSchema": {"json": WEATHER_SCHEMA},
                    }
                },
                cache_point,
            ],
            "toolChoice": {"tool": {"name": "weather"}},
        },
        "additionalModelRequestFields": {"thinking": {"type": "enabled", "budget_tokens": 512}},
    }


def test_anthropic_documents_and_structured_output() -> None:
    body = from_anthropic(
        max_tokens=10,
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "title": "notes.md",
                        "source": {"type": "text", "media_type": "text/plain", "data": "héllo"},
                    },
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0=",
                        },
                    },
                ],
            }
        ],
        output_config={"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
    )
    assert body["messages"][0]["content"] == [
        {"document": {"format": "txt", "name": "notes", "source": {"bytes": "aMOpbGxv"}}},
        {"document": {"format": "pdf", "name": "document", "source": {"bytes": "JVBERi0="}}},
    ]
    definition = body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert json.loads(definition["schema"]) == WEATHER_SCHEMA


def test_anthropic_string_content_and_merged_turns() -> None:
    body = from_anthropic(
        system="Be brief.",
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
        ],
    )
    assert body == {
        "messages": [
            {"role": "user", "content": [{"text": "one"}, {"text": "two"}]},
            {"role": "assistant", "content": [{"text": "three"}]},
        ],
        "system": [{"text": "Be brief."}],
    }


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"mcp_servers": [{"url": "https://x"}]}, "Anthropic's servers only"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
        (
            {
                "tools": [{"name": "f", "input_schema": {}}],
                "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
            },
            "parallel tool use",
        ),
        ({"system": [{"type": "image"}]}, "only text blocks"),
    ],
)
def test_anthropic_fields_converse_cannot_honour_are_refused(
    extra: dict[str, Any], message: str
) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **extra}
    assert message in refused(request_from_anthropic.translate_request, body).message


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}}, "inline only"),
        ({"type": "document", "source": {"type": "file", "file_id": "f"}}, "only inline"),
        ({"type": "server_tool_use", "id": "s", "name": "web_search"}, "not translated"),
        (
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "search_result"}]},
            "tool result is not translated",
        ),
    ],
)
def test_anthropic_blocks_converse_cannot_take(block: dict[str, Any], message: str) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": [block]}]}
    error = refused(request_from_anthropic.translate_request, body)
    assert message in error.message
    assert "messages[0].content[0]" in error.message


def test_json_tool_output_goes_as_json() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = from_openai(
        messages=[
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c", "content": '{"temp": 18}'},
            {"role": "tool", "tool_call_id": "c", "content": "[1, 2]"},
            {"role": "tool", "tool_call_id": "c", "content": "{not json"},
        ]
    )
    results = [b["toolResult"]["content"] for b in body["messages"][2]["content"]]
    assert results == [[{"json": {"temp": 18}}], [{"text": "[1, 2]"}], [{"text": "{not json"}]]
    body = from_anthropic(
        messages=[
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t", "content": '{"a": 1}'}],
            }
        ]
    )
    assert body["messages"][0]["content"][0]["toolResult"]["content"] == [{"json": {"a": 1}}]


def test_anthropic_hints_without_equivalent_are_dropped() -> None:
    body = from_anthropic(
        system=[{"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        messages=[{"role": "user", "content": "hi"}],
        top_k=5,
        output_config={"effort": "low"},
        service_tier="auto",
        metadata={"user_id": "u"},
    )
    assert body == {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}],
        "system": [{"text": "x"}, {"cachePoint": {"type": "default"}}],
    }
