"""A ``POST /v1/responses`` body, checked and normalised into frozen data.

Both provider directions start here, so a field is accepted or refused the
same way whichever provider serves it. What no provider behind Archway can
honour (OpenAI's hosted tools, background runs, stored prompts, item
references) is a 400 naming the field, never a silent drop.

Input items come out in one normal form (a message's content is always a list
of parts), which is also the form conversation state stores and replays.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.translate.common import split_data_url, unsupported

__all__ = [
    "ResponseContext",
    "ResponsesRequest",
    "invalid",
    "new_response_id",
    "parse_request",
]

Item = dict[str, Any]

_HONOURED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "temperature",
        "top_p",
        "metadata",
        "text",
        "stream",
        "parallel_tool_calls",
        "user",
        "safety_identifier",
        "previous_response_id",
        "store",
        "reasoning",
    }
)
_HINTS = frozenset({"prompt_cache_key", "prompt_cache_retention", "stream_options"})
"""Accepted and not forwarded: they tune OpenAI's own caching and stream padding,
and change nothing in the answer."""

_REFUSED_WHEN_SET: dict[str, str] = {
    "background": "Background responses are not supported by Archway; send background: false.",
    "conversation": (
        "The Conversations API is not supported by Archway; "
        "chain turns with previous_response_id instead."
    ),
    "prompt": "Stored prompt templates live on OpenAI's servers; send the prompt as input.",
    "max_tool_calls": "max_tool_calls applies to hosted tools, which Archway does not run.",
    "top_logprobs": "Log probabilities are not returned through Archway's Responses API.",
    "context_management": "Server-side context management is not supported by Archway.",
}
_OTHER_CHECKED = frozenset({"include", "service_tier", "truncation"})
_INCLUDE_VACUOUS = frozenset({"reasoning.encrypted_content"})
"""``include`` values that hold trivially: Archway returns no reasoning items,
so there is no reasoning content to encrypt."""

_MESSAGE_ROLES = ("user", "assistant", "system", "developer")
_TOOL_CHOICE_MODES = ("auto", "none", "required")


def invalid(param: str, message: str) -> GatewayError:
    """A malformed request: a 400 naming the field."""
    return GatewayError(400, message, code="invalid_request", param=param)


def new_response_id() -> str:
    """A fresh ``resp_`` id, as unguessable as OpenAI's: it is the key to stored state."""
    return "resp_" + secrets.token_hex(24)


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """What a Responses request asks for, in one checked form."""

    model: str
    items: tuple[Item, ...]
    """This turn's input items, normalised; history from ``previous_response_id`` not included."""
    instructions: str | None = None
    tools: tuple[Item, ...] = ()
    """Function tools as ``{"type": "function", "name", "description", "parameters", "strict"}``."""
    tool_choice: str | Item = "auto"
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    metadata: Mapping[str, str] | None = None
    text_format: Item = field(default_factory=lambda: {"type": "text"})
    verbosity: str | None = None
    reasoning_effort: str | None = None
    stream: bool = False
    user: str | None = None
    previous_response_id: str | None = None
    store: bool = True

    def context(self, response_id: str, created_at: int) -> ResponseContext:
        """What the response side needs to build Response objects for this request."""
        text: Item = {"format": self.text_format}
        if self.verbosity is not None:
            text["verbosity"] = self.verbosity
        echo: Item = {
            "model": self.model,
            "instructions": self.instructions,
            "tools": list(self.tools),
            "tool_choice": self.tool_choice,
            "parallel_tool_calls": self.parallel_tool_calls is not False,
            "max_output_tokens": self.max_output_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "metadata": dict(self.metadata) if self.metadata is not None else {},
            "text": text,
            "user": self.user,
            "previous_response_id": self.previous_response_id,
            "store": self.store,
        }
        if self.reasoning_effort is not None:
            echo["reasoning"] = {"effort": self.reasoning_effort, "summary": None}
        return ResponseContext(response_id, created_at, echo)


@dataclass(frozen=True, slots=True)
class ResponseContext:
    """The response side's inputs: the id Archway gave the response, when it began,
    and the request fields a Response object repeats. JSON round-trips, so it can
    cross from the request's ext_proc stream to the response's."""

    response_id: str
    created_at: int
    echo: Mapping[str, Any]

    def to_json(self) -> str:
        return json.dumps(
            {"id": self.response_id, "created_at": self.created_at, "echo": self.echo},
            separators=(",", ":"),
        )

    @staticmethod
    def from_json(value: str) -> ResponseContext:
        parsed = json.loads(value)
        return ResponseContext(parsed["id"], parsed["created_at"], parsed["echo"])


# --- the request -------------------------------------------------------------------


def parse_request(body: Mapping[str, Any]) -> ResponsesRequest:
    """Check a Responses request body; raises ``GatewayError`` (400) on what it cannot serve."""
    _refuse(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", "'model' is required and must be a string.")
    previous = _optional(body, "previous_response_id", str)
    items = _input(body.get("input"), allow_empty=previous is not None)
    reasoning = _reasoning(body.get("reasoning"))
    text_format, verbosity = _text(body.get("text"))
    tools = _tools(body.get("tools"))
    return ResponsesRequest(
        model=model,
        items=items,
        instructions=_optional(body, "instructions", str),
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        parallel_tool_calls=_optional(body, "parallel_tool_calls", bool),
        max_output_tokens=_max_output_tokens(body.get("max_output_tokens")),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        metadata=_metadata(body.get("metadata")),
        text_format=text_format,
        verbosity=verbosity,
        reasoning_effort=reasoning,
        stream=_optional(body, "stream", bool) or False,
        user=_optional(body, "user", str) or _optional(body, "safety_identifier", str),
        previous_response_id=previous,
        store=_optional(body, "store", bool) is not False,
    )


def _refuse(body: Mapping[str, Any]) -> None:
    for name, message in _REFUSED_WHEN_SET.items():
        value = body.get(name)
        if value is not None and value is not False and value != 0:
            raise unsupported(name, message)
    include = body.get("include")
    if include is not None:
        if not isinstance(include, list):
            raise invalid("include", "'include' must be a list.")
        for value in include:
            if value not in _INCLUDE_VACUOUS:
                raise unsupported("include", f"include {value!r} is not supported by Archway.")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise unsupported("service_tier", "service_tier other than 'auto' is OpenAI's own.")
    if body.get("truncation") not in (None, "disabled"):
        raise unsupported(
            "truncation", "Archway does not truncate conversations; send truncation: 'disabled'."
        )
    unknown = sorted(set(body) - _HONOURED - _HINTS - set(_REFUSED_WHEN_SET) - _OTHER_CHECKED)
    if unknown:
        raise GatewayError(
            400,
            f"Unknown parameter: {unknown[0]!r}.",
            code="unknown_parameter",
            param=unknown[0],
        )


def _optional(body: Mapping[str, Any], name: str, kind: type) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise invalid(name, f"'{name}' must be a {kind.__name__}.")
    return value


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise invalid(name, f"'{name}' must be a number.")
    return value


def _max_output_tokens(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid("max_output_tokens", "'max_output_tokens' must be a positive integer.")
    return value


def _metadata(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise invalid("metadata", "'metadata' must be an object of string values.")
    return dict(value)


def _reasoning(value: object) -> str | None:
    """The reasoning effort asked for; summaries Archway cannot produce are refused."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid("reasoning", "'reasoning' must be an object.")
    for name in ("summary", "generate_summary"):
        # "auto" lets the model decide whether to summarise; none is a valid outcome.
        if value.get(name) not in (None, "auto"):
            raise unsupported(
                f"reasoning.{name}", "Reasoning summaries are not returned through Archway."
            )
    effort = value.get("effort")
    if effort is not None and not isinstance(effort, str):
        raise invalid("reasoning.effort", "'reasoning.effort' must be a string.")
    return effort


def _text(value: object) -> tuple[Item, str | None]:
    if value is None:
        return {"type": "text"}, None
    if not isinstance(value, dict):
        raise invalid("text", "'text' must be an object.")
    verbosity = value.get("verbosity")
    if verbosity is not None and not isinstance(verbosity, str):
        raise invalid("text.verbosity", "'text.verbosity' must be a string.")
    fmt = value.get("format")
    if fmt is None:
        return {"type": "text"}, verbosity
    if not isinstance(fmt, dict):
        raise invalid("text.format", "'text.format' must be an object.")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}, verbosity
    if kind != "json_schema":
        raise invalid(
            "text.format.type",
            f"text.format type {kind!r} is not one of text, json_schema, json_object.",
        )
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise invalid("text.format.name", "text.format.name is required for json_schema.")
    if not isinstance(schema, dict):
        raise invalid("text.format.schema", "text.format.schema must be a JSON schema object.")
    out: Item = {"type": "json_schema", "name": name, "schema": schema}
    for key in ("description", "strict"):
        if fmt.get(key) is not None:
            out[key] = fmt[key]
    return out, verbosity


def _tools(value: object) -> tuple[Item, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid("tools", "'tools' must be a list.")
    tools = []
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise invalid("tools", f"tools[{i}] must be an object.")
        kind = tool.get("type")
        if kind != "function":
            raise unsupported(
                "tools",
                f"tools[{i}] is the hosted tool {kind!r}, which only OpenAI runs; "
                "Archway translates function tools only.",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise invalid("tools", f"tools[{i}].name is required.")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise invalid("tools", f"tools[{i}].parameters must be a JSON schema object.")
        strict = tool.get("strict")
        tools.append(
            {
                "type": "function",
                "name": name,
                "description": tool.get("description"),
                "parameters": parameters,
                "strict": strict if isinstance(strict, bool) else None,
            }
        )
    return tuple(tools)


def _tool_choice(value: object, tools: tuple[Item, ...]) -> str | Item:
    if value is None:
        return "auto"
    if isinstance(value, str):
        if value not in _TOOL_CHOICE_MODES:
            message = f"tool_choice {value!r} is not one of auto, none, required."
            raise invalid("tool_choice", message)
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        name = value.get("name")
        if not any(tool["name"] == name for tool in tools):
            raise invalid("tool_choice", f"tool_choice names {name!r}, which is not in 'tools'.")
        return {"type": "function", "name": name}
    kind = value.get("type") if isinstance(value, dict) else value
    raise unsupported(
        "tool_choice",
        f"tool_choice {kind!r} is not translated; only function tools and auto/none/required are.",
    )


# --- input items -------------------------------------------------------------------


def _input(value: object, *, allow_empty: bool) -> tuple[Item, ...]:
    if isinstance(value, str):
        return ({"type": "message", "role": "user", "content": [_text_part(value)]},)
    if value is None and allow_empty:
        return ()
    if not isinstance(value, list):
        raise invalid("input", "'input' must be a string or a list of items.")
    items: list[Item] = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise invalid("input", f"input[{i}] must be an object.")
        normal = normalise_item(item, f"input[{i}]")
        if normal is not None:
            items.append(normal)
    if not items and not allow_empty:
        raise invalid("input", "'input' is empty.")
    return tuple(items)


def normalise_item(item: Mapping[str, Any], where: str) -> Item | None:
    """One input (or replayed output) item in normal form; ``None`` for a reasoning item.

    Reasoning items are another model's private thoughts, encrypted for it alone;
    like the chat translators' handling of thinking blocks, they are not sent on.
    """
    kind = item.get("type", "message")
    if kind == "message":
        return _message(item, where)
    if kind == "function_call":
        call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
        if not all(isinstance(v, str) and v for v in (call_id, name)):
            raise invalid("input", f"{where}: a function_call needs call_id and name.")
        if not isinstance(arguments, str):
            raise invalid("input", f"{where}.arguments must be a JSON string.")
        return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments}
    if kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str) or not call_id:
            raise invalid("input", f"{where}: a function_call_output needs call_id.")
        output = item.get("output")
        if isinstance(output, list):
            output = [_part(part, "user", f"{where}.output[{j}]") for j, part in enumerate(output)]
        elif not isinstance(output, str):
            raise invalid("input", f"{where}.output must be a string or a list of parts.")
        return {"type": "function_call_output", "call_id": call_id, "output": output}
    if kind == "reasoning":
        return None
    if kind == "item_reference":
        raise unsupported(
            "input", f"{where}: item references are not resolved; send the item itself."
        )
    raise unsupported("input", f"{where}: input item type {kind!r} is not translated.")


def _message(item: Mapping[str, Any], where: str) -> Item:
    role = item.get("role")
    if role not in _MESSAGE_ROLES:
        raise invalid("input", f"{where}.role {role!r} is not one of {', '.join(_MESSAGE_ROLES)}.")
    content = item.get("content")
    if isinstance(content, str):
        parts = [_text_part(content, "output_text" if role == "assistant" else "input_text")]
    elif isinstance(content, list):
        parts = [_part(p, role, f"{where}.content[{j}]") for j, p in enumerate(content)]
    else:
        raise invalid("input", f"{where}.content must be a string or a list of parts.")
    return {"type": "message", "role": role, "content": parts}


def _text_part(text: str, kind: str = "input_text") -> Item:
    return {"type": kind, "text": text}


def _part(part: object, role: str, where: str) -> Item:
    if not isinstance(part, dict):
        raise invalid("input", f"{where} must be an object.")
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise invalid("input", f"{where}.text must be a string.")
        return _text_part(text, kind)
    if kind == "refusal" and role == "assistant":
        refusal = part.get("refusal")
        if not isinstance(refusal, str):
            raise invalid("input", f"{where}.refusal must be a string.")
        return {"type": "refusal", "refusal": refusal}
    if role != "user":
        raise unsupported("input", f"{where}: a {kind!r} part is not allowed in a {role} message.")
    if kind == "input_image":
        return _image(part, where)
    if kind == "input_file":
        return _file(part, where)
    raise unsupported("input", f"{where}: content part type {kind!r} is not translated.")


def _image(part: Mapping[str, Any], where: str) -> Item:
    url = part.get("image_url")
    if part.get("file_id") and not url:
        message = f"{where}: file_id refers to OpenAI's Files API; send image_url."
        raise unsupported("input", message)
    if not isinstance(url, str) or not (
        url.startswith(("http://", "https://")) or split_data_url(url) is not None
    ):
        raise invalid("input", f"{where}.image_url must be an http(s) URL or a base64 data URL.")
    out: Item = {"type": "input_image", "image_url": url}
    detail = part.get("detail")
    if detail in ("low", "high", "auto"):
        out["detail"] = detail
    return out


def _file(part: Mapping[str, Any], where: str) -> Item:
    data = part.get("file_data")
    if not isinstance(data, str) or split_data_url(data) is None:
        raise unsupported(
            "input",
            f"{where}: only inline files (file_data as a base64 data URL) are translated; "
            "file_id and file_url are not.",
        )
    out: Item = {"type": "input_file", "file_data": data}
    filename = part.get("filename")
    if isinstance(filename, str) and filename:
        out["filename"] = filename
    return out
