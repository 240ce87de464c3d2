"""The pieces of a Converse request both client APIs build: inline media,
tool specs and choices, structured output, inference settings, and turns."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.translate.common import split_data_url, unsupported

__all__ = [
    "NO_TOOL_CHOICE",
    "append_turn",
    "document_block",
    "image_block",
    "image_from_url",
    "inference_config",
    "output_config",
    "tool_config",
    "tool_result_part",
    "tool_spec",
]

_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "text/html": "html",
    "text/plain": "txt",
    "text/markdown": "md",
}


# --- media -------------------------------------------------------------------------


def image_block(media_type: str, data: str, where: str) -> dict[str, Any]:
    """An inline image; Converse takes the bytes (base64 in JSON) and a format name."""
    image_format = _IMAGE_FORMATS.get(media_type.lower())
    if image_format is None:
        raise unsupported(
            where, f"{where}: image type {media_type!r} is not one of png, jpeg, gif, webp."
        )
    return {"image": {"format": image_format, "source": {"bytes": _checked_base64(data, where)}}}


def image_from_url(url: object, where: str) -> dict[str, Any]:
    """An OpenAI ``image_url``: only a base64 data URL can be sent; Converse fetches nothing."""
    inline = split_data_url(url) if isinstance(url, str) else None
    if inline is None:
        raise unsupported(
            where,
            f"{where}: Bedrock takes images inline only; send a base64 data URL, not a link.",
        )
    return image_block(inline[0], inline[1], where)


def document_block(media_type: str, data: str, name: object, where: str) -> dict[str, Any]:
    document_format = _DOCUMENT_FORMATS.get(media_type.lower())
    if document_format is None:
        raise unsupported(
            where,
            f"{where}: document type {media_type!r} is not one Bedrock reads "
            f"({', '.join(sorted(set(_DOCUMENT_FORMATS.values())))}).",
        )
    return {
        "document": {
            "format": document_format,
            "name": _document_name(name),
            "source": {"bytes": _checked_base64(data, where)},
        }
    }


def _document_name(name: object) -> str:
    """Converse allows letters, digits, single spaces, hyphens, parentheses and
    square brackets in a document name; anything else becomes a space."""
    if not isinstance(name, str):
        return "document"
    stem = name.rsplit(".", 1)[0] if "." in name else name
    kept = "".join(c if c.isalnum() or c in "-()[]" else " " for c in stem)
    cleaned = " ".join(kept.split())[:200]
    return cleaned or "document"


def _checked_base64(data: str, where: str) -> str:
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(
            400, f"{where}: the inline data is not valid base64.", code="invalid_request"
        ) from None
    return data


# --- tools, output, settings, turns -------------------------------------------------

NO_TOOL_CHOICE = "none"


def tool_config(
    tools: list[dict[str, Any]], choice: dict[str, Any] | str | None, messages: list[Any]
) -> dict[str, Any] | None:
    """``toolConfig`` for translated tool specs and a Converse ``toolChoice``.

    Converse has no "none" choice. Leaving the tools out honours it, unless the
    conversation already holds tool calls: Bedrock then requires ``toolConfig``,
    and keeping it would let the model call a tool it was told not to.
    """
    if choice == NO_TOOL_CHOICE:
        if _has_tool_blocks(messages):
            raise unsupported(
                "tool_choice",
                "Bedrock has no tool_choice 'none', and this conversation holds tool calls, "
                "so its tools cannot be left out; send 'auto' or drop the tools.",
            )
        return None
    if not tools:
        return None
    config: dict[str, Any] = {"tools": tools}
    if isinstance(choice, dict):
        config["toolChoice"] = choice
    return config


def _has_tool_blocks(messages: list[Any]) -> bool:
    return any(
        "toolUse" in block or "toolResult" in block
        for message in messages
        for block in message.get("content", ())
    )


def tool_spec(name: object, description: object, schema: object, strict: bool) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise GatewayError(400, "Every tool needs a name.", code="invalid_request", param="tools")
    spec: dict[str, Any] = {"name": name}
    if isinstance(description, str) and description:
        spec["description"] = description
    spec["inputSchema"] = {
        "json": schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
    }
    if strict:
        spec["strict"] = True
    return {"toolSpec": spec}


def output_config(schema: object, name: object, where: str) -> dict[str, Any]:
    """Structured output: Converse takes the JSON schema as a string."""
    if not isinstance(schema, dict):
        raise unsupported(where, f"{where}: the JSON schema is missing.")
    definition: dict[str, Any] = {"schema": json.dumps(schema, separators=(",", ":"))}
    definition["name"] = name if isinstance(name, str) and name else "response"
    return {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": definition}}}


def tool_result_part(text: str) -> dict[str, Any]:
    """A tool's text output; a JSON object goes as Converse's ``json`` member,
    which models that distinguish the two read as structured data."""
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return {"json": parsed}
    return {"text": text}


def append_turn(turns: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Converse wants user and assistant to alternate: same-role turns merge."""
    if not blocks:
        return
    if turns and turns[-1]["role"] == role:
        turns[-1]["content"].extend(blocks)
    else:
        turns.append({"role": role, "content": list(blocks)})


def inference_config(
    max_tokens: object, temperature: object, top_p: object, stop: list[str]
) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if _is_int(max_tokens):
        config["maxTokens"] = max_tokens
    if _is_number(temperature):
        config["temperature"] = temperature
    if _is_number(top_p):
        config["topP"] = top_p
    if stop:
        config["stopSequences"] = stop
    return config


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
