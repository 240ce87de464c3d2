"""An OpenAI chat-completions client served by an Anthropic Messages provider.

- ``translate_request``: OpenAI ``/v1/chat/completions`` body -> Anthropic ``/v1/messages`` body;
- ``translate_response``: Anthropic ``message`` -> OpenAI ``chat.completion``;
- ``StreamTranslator``: Anthropic SSE events -> ``chat.completion.chunk`` events and ``[DONE]``;
- ``translate_error``: Anthropic error body -> OpenAI error body.

Pure functions over dicts and bytes. Fields the Messages API cannot honour
(``n > 1``, logprobs, audio, ``json_object``) are refused with a 400 naming them,
rather than dropped so that the client silently gets something else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.routing.catalog import WireAPI
from ext_proc.translate.common import (
    as_dict,
    as_list,
    dumps,
    error_in_client_shape,
    split_data_url,
    text_and_tool_calls,
    unsupported,
)
from ext_proc.translate.sse import SSEDecoder, SSEEvent, encode_event

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "FINISH_REASONS",
    "StreamTranslator",
    "translate_error",
    "translate_request",
    "translate_response",
]

DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; OpenAI clients often send none."""

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
"""Anthropic ``stop_reason`` -> OpenAI ``finish_reason``; anything else is ``stop``."""

_EMPTY_SCHEMA: dict[str, Any] = {"type": "object", "properties": {}}

DONE = b"data: [DONE]\n\n"


# --- request -----------------------------------------------------------------------


def translate_request(body: Mapping[str, Any]) -> dict[str, Any]:
    """The Anthropic request for an OpenAI chat request (``model`` already rewritten)."""
    _refuse_unsupported(body)
    system, messages = _messages(body.get("messages"))
    out: dict[str, Any] = {"model": body.get("model"), "max_tokens": _max_tokens(body)}
    if system:
        out["system"] = system[0]["text"] if len(system) == 1 else system
    out["messages"] = messages
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str)]
    temperature = body.get("temperature")
    if _is_number(temperature):
        # OpenAI allows 0..2, Anthropic 0..1. Clamping keeps the common 0..1
        # values exact; scaling would turn every 0.7 into 0.35.
        out["temperature"] = min(max(float(temperature), 0.0), 1.0)
    top_p = body.get("top_p")
    if _is_number(top_p):
        out["top_p"] = top_p
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user") or body.get("safety_identifier")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    output_format = _output_format(body.get("response_format"))
    if output_format is not None:
        out["output_config"] = {"format": output_format}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    return out


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise unsupported("n", "Anthropic models return one choice; 'n' must be 1 or absent.")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise unsupported("logprobs", "Anthropic models do not return log probabilities.")
    if body.get("audio") or "audio" in as_list(body.get("modalities")):
        raise unsupported("modalities", "Anthropic models do not produce audio.")
    if body.get("functions") or body.get("function_call"):
        raise unsupported(
            "functions", "The legacy 'functions' API is not translated; send 'tools' instead."
        )
    response_format = as_dict(body.get("response_format")).get("type")
    if response_format not in (None, "text", "json_schema"):
        raise unsupported(
            "response_format",
            f"response_format {response_format!r} has no Anthropic equivalent; "
            "send a json_schema response_format instead.",
        )


def _output_format(response_format: object) -> dict[str, Any] | None:
    """OpenAI's structured outputs as Anthropic's: the same JSON schema."""
    response_format = as_dict(response_format)
    if response_format.get("type") != "json_schema":
        return None
    schema = as_dict(response_format.get("json_schema")).get("schema")
    if not isinstance(schema, dict):
        raise unsupported("response_format", "response_format.json_schema.schema is missing.")
    return {"type": "json_schema", "schema": schema}


def _max_tokens(body: Mapping[str, Any]) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return DEFAULT_MAX_TOKENS


def _messages(raw: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system blocks, messages)``: system and developer messages are lifted out
    wherever they appear, and consecutive turns of one role are merged because
    the Messages API wants user and assistant to alternate."""
    if not isinstance(raw, list):
        raise GatewayError(
            400, "'messages' must be a list.", code="invalid_request", param="messages"
        )
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise GatewayError(
                400, f"messages[{i}] must be an object.", code="invalid_request", param="messages"
            )
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.extend(_text_blocks(content, f"messages[{i}].content"))
        elif role == "user":
            _append_turn(turns, "user", _user_content(content, i))
        elif role == "assistant":
            blocks = _assistant_blocks(message, i)
            if blocks:
                _append_turn(turns, "assistant", blocks)
        elif role == "tool":
            _append_turn(turns, "user", [_tool_result(message, i)])
        else:
            raise GatewayError(
                400,
                f"messages[{i}].role {role!r} is not one of system, developer, user, "
                "assistant, tool.",
                code="invalid_request",
                param="messages",
            )
    return system, turns


def _append_turn(turns: list[dict[str, Any]], role: str, content: str | list[Any]) -> None:
    if turns and turns[-1]["role"] == role:
        previous = turns[-1]["content"]
        merged = _as_blocks(previous) + _as_blocks(content)
        turns[-1]["content"] = merged
    else:
        turns.append({"role": role, "content": content})


def _as_blocks(content: str | list[Any]) -> list[Any]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _text_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(kind)
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
        else:
            raise unsupported(where, f"{where}: a {kind!r} part is not allowed here, only text.")
    return blocks


def _user_content(content: object, i: int) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    where = f"messages[{i}].content"
    blocks: list[dict[str, Any]] = []
    for part in as_list(content):
        part = as_dict(part)
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append(_image_block(as_dict(part.get("image_url")).get("url"), where))
        elif kind == "file":
            blocks.append(_document_block(as_dict(part.get("file")), where))
        elif kind == "input_audio":
            raise unsupported(where, "Anthropic models do not accept audio input.")
        else:
            raise unsupported(where, f"{where}: content part type {kind!r} is not translated.")
    return blocks


def _image_block(url: object, where: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise GatewayError(
            400, f"{where}: image_url.url is missing.", code="invalid_request", param=where
        )
    inline = split_data_url(url)
    if inline is not None:
        media_type, data = inline
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise unsupported(where, f"{where}: an image URL must be http(s) or a base64 data URL.")


def _document_block(file: dict[str, Any], where: str) -> dict[str, Any]:
    inline = split_data_url(file.get("file_data") or "")
    if inline is None:
        raise unsupported(
            where, f"{where}: only inline files (file_data as a base64 data URL) are translated."
        )
    media_type, data = inline
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": media_type, "data": data},
    }
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _assistant_blocks(message: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    blocks = _text_blocks(message.get("content"), f"messages[{i}].content")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        blocks.append({"type": "text", "text": refusal})
    for j, call in enumerate(as_list(message.get("tool_calls"))):
        call = as_dict(call)
        function = as_dict(call.get("function"))
        arguments = function.get("arguments") or "{}"
        try:
            tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            raise GatewayError(
                400,
                f"messages[{i}].tool_calls[{j}].function.arguments is not valid JSON; "
                "Anthropic needs the tool input as an object.",
                code="invalid_request",
                param="messages",
            ) from None
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": tool_input if isinstance(tool_input, dict) else {"value": tool_input},
            }
        )
    return blocks


def _tool_result(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    content = message.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, str):
        block["content"] = content
    else:
        block["content"] = _text_blocks(content, f"messages[{i}].content")
    return block


def _tools(raw: object) -> list[dict[str, Any]]:
    tools = []
    for i, tool in enumerate(as_list(raw)):
        tool = as_dict(tool)
        if tool.get("type") != "function":
            raise unsupported(
                "tools", f"tools[{i}] has type {tool.get('type')!r}; only function tools translate."
            )
        function = as_dict(tool.get("function"))
        out: dict[str, Any] = {"name": function.get("name")}
        if function.get("description"):
            out["description"] = function["description"]
        out["input_schema"] = function.get("parameters") or _EMPTY_SCHEMA
        tools.append(out)
    return tools


def _tool_choice(choice: object, parallel: object) -> dict[str, Any] | None:
    if choice == "none":
        return {"type": "none"}
    out: dict[str, Any]
    if choice is None or choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        out = {"type": "tool", "name": as_dict(choice.get("function")).get("name")}
    else:
        raise unsupported("tool_choice", f"tool_choice {choice!r} is not translated.")
    if parallel is False:
        out["disable_parallel_tool_use"] = True
    elif choice is None:
        return None  # the client left it to the default, which is auto on both sides
    return out


# --- response ----------------------------------------------------------------------


def translate_response(message: Mapping[str, Any], *, created: int) -> dict[str, Any]:
    """The ``chat.completion`` for an Anthropic ``message``."""
    texts, tool_calls = text_and_tool_calls(message.get("content"))
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    return {
        "id": message.get("id"),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model"),
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": _finish_reason(message.get("stop_reason")),
            }
        ],
        "usage": openai_usage(as_dict(message.get("usage"))),
    }


def _finish_reason(stop_reason: object) -> str:
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def _count(usage: Mapping[str, Any], name: str) -> int:
    value = usage.get(name)
    return value if isinstance(value, int) else 0


def openai_usage(usage: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI counts cached prompt tokens inside ``prompt_tokens``; Anthropic apart."""
    cached = _count(usage, "cache_read_input_tokens")
    prompt = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + cached
    completion = _count(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def translate_error(status: int, body: bytes) -> bytes:
    """An OpenAI error body for an upstream error; Envoy's own replies are already one."""
    return error_in_client_shape(WireAPI.OPENAI, status, body)


# --- stream ------------------------------------------------------------------------


class StreamTranslator:
    """Anthropic SSE in, OpenAI ``chat.completion.chunk`` SSE out, event by event.

    ``feed`` takes body chunks as they arrive and returns what the client can
    be sent now; ``finish`` flushes at end of stream.
    """

    __slots__ = (
        "_created",
        "_decoder",
        "_done",
        "_head",
        "_id",
        "_include_usage",
        "_model",
        "_tool_calls",
        "_usage",
    )

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._head = self._chunk_head()
        self._tool_calls: dict[int, int] = {}
        """Anthropic content block index -> OpenAI ``tool_calls[].index``."""
        self._usage: dict[str, Any] = {}
        self._done = False

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._decoder.feed(chunk))

    def finish(self) -> bytes:
        return self._translate(self._decoder.flush())

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for event in events:
            if self._done:
                break
            try:
                payload = json.loads(event.data)
            except ValueError:
                continue
            if isinstance(payload, dict):
                self._event(payload, out)
        return bytes(out)

    def _chunk_head(self) -> str:
        # Everything before the delta is the same in every chunk of a stream:
        # built once, it keeps per-event work to one small dumps.
        return (
            f'{{"id":{dumps(self._id)},"object":"chat.completion.chunk",'
            f'"created":{self._created},"model":{dumps(self._model)},'
            '"choices":[{"index":0,"delta":'
        )

    def _emit(self, out: bytearray, delta: dict[str, Any], finish: str | None = None) -> None:
        tail = ',"logprobs":null,"finish_reason":' + (dumps(finish) if finish else "null") + "}]}"
        out += encode_event(self._head + dumps(delta) + tail)

    def _event(self, payload: dict[str, Any], out: bytearray) -> None:
        kind = payload.get("type")
        if kind == "content_block_delta":
            delta = as_dict(payload.get("delta"))
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                self._emit(out, {"content": delta.get("text", "")})
            elif delta_type == "input_json_delta":
                index = self._tool_calls.get(payload.get("index", -1))
                if index is not None:
                    arguments = delta.get("partial_json", "")
                    call = {"index": index, "function": {"arguments": arguments}}
                    self._emit(out, {"tool_calls": [call]})
        elif kind == "content_block_start":
            self._block_start(payload, out)
        elif kind == "message_start":
            message = as_dict(payload.get("message"))
            self._id = str(message.get("id", ""))
            self._model = str(message.get("model", ""))
            self._head = self._chunk_head()
            self._usage.update(as_dict(message.get("usage")))
            self._emit(out, {"role": "assistant", "content": ""})
        elif kind == "message_delta":
            self._usage.update(
                {k: v for k, v in as_dict(payload.get("usage")).items() if v is not None}
            )
            stop_reason = as_dict(payload.get("delta")).get("stop_reason")
            self._emit(out, {}, _finish_reason(stop_reason))
        elif kind == "message_stop":
            if self._include_usage:
                # As OpenAI does: one last chunk with no choices, carrying the usage.
                final = {
                    "id": self._id,
                    "object": "chat.completion.chunk",
                    "created": self._created,
                    "model": self._model,
                    "choices": [],
                    "usage": openai_usage(self._usage),
                }
                out += encode_event(dumps(final))
            out += DONE
            self._done = True
        elif kind == "error":
            error = as_dict(payload.get("error"))
            message = error.get("message") or "The model provider reported an error mid-stream."
            body = {
                "error": {
                    "message": message,
                    "type": "server_error",
                    "param": None,
                    "code": error.get("type"),
                }
            }
            out += encode_event(dumps(body))
            self._done = True
        # ping, content_block_stop and unknown events carry nothing for OpenAI.

    def _block_start(self, payload: dict[str, Any], out: bytearray) -> None:
        block = as_dict(payload.get("content_block"))
        kind = block.get("type")
        if kind == "tool_use":
            index = len(self._tool_calls)
            self._tool_calls[payload.get("index", index)] = index
            tool_input = block.get("input")
            call = {
                "index": index,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": dumps(tool_input) if tool_input else "",
                },
            }
            self._emit(out, {"tool_calls": [call]})
        elif kind == "text" and block.get("text"):
            self._emit(out, {"content": block["text"]})
