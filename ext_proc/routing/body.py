"""The client's request body: parsed once, checked, and its model spliced in.

``parse_request`` turns the bytes into a ``ParsedBody`` and checks the type of
every field Archway reads or rewrites, so that a malformed one is the client's
400, in its API's shape, instead of a crash further on or a request forwarded
that the gateway misread. ``with_model`` writes a new model id into the body
without re-serialising it, for the first attempt and every retry alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError
from ext_proc.translate.common import encode_json

__all__ = [
    "ParsedBody",
    "check_fields",
    "parse_body",
    "parse_json",
    "parse_request",
    "requested_model",
    "with_model",
]


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """A request body parsed once, with what a cheap model rewrite needs."""

    data: dict[str, Any]
    text: str | None
    """The body as text, when ``model_span`` is known."""
    model_span: tuple[int, int] | None
    """Where the value of the one top-level ``model`` key sits in ``text``."""
    changed: bool = False
    """``data`` no longer says what the client sent (a field was taken out): the
    body is re-encoded even when its model stays."""


def parse_request(
    headers: Mapping[str, str], body: bytes, api: WireAPI = WireAPI.OPENAI
) -> ParsedBody:
    """The body of a request to an endpoint of ``api``, parsed and checked, or a
    ``GatewayError`` saying what is wrong."""
    content_type = headers.get("content-type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise GatewayError(
            415,
            f"Content-Type must be application/json, not {media_type!r}. "
            "With curl, add -H 'Content-Type: application/json'.",
            code="unsupported_media_type",
        )
    if not body.strip():
        raise GatewayError(400, "The request body is empty; send a JSON object.", code="empty_body")
    parsed = parse_json(body)
    check_fields(parsed.data, api)
    return parsed


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a ``GatewayError`` saying what is wrong."""
    return parse_request(headers, body).data


def parse_json(body: bytes) -> ParsedBody:
    """``body`` as a JSON object, noting where its ``model`` is when it can."""
    fast = _scan_object(body)
    if fast is not None:
        return fast
    # Anything the scan does not take (another encoding, a BOM, invalid JSON,
    # a non-object) goes through json.loads, which also words the errors.
    try:
        parsed = json.loads(body)
    except UnicodeDecodeError:
        raise GatewayError(
            400, "The request body is not valid UTF-8.", code="invalid_json"
        ) from None
    except json.JSONDecodeError as exc:
        raise GatewayError(
            400,
            f"The request body is not valid JSON: {exc.msg} "
            f"at line {exc.lineno} column {exc.colno}.",
            code="invalid_json",
        ) from None
    except ValueError:
        # Python refuses to convert integers past its digit limit (4300 by
        # default): valid JSON that no provider would accept either.
        raise GatewayError(
            400, "The request body holds a number with too many digits.", code="invalid_json"
        ) from None
    except RecursionError:
        raise GatewayError(
            400, "The request body is nested too deeply.", code="invalid_json"
        ) from None
    if not isinstance(parsed, dict):
        raise GatewayError(
            400,
            f"The request body must be a JSON object, not {type(parsed).__name__}.",
            code="invalid_body",
        )
    return ParsedBody(parsed, None, None)


# json's C scanner: parses one JSON value at an index and says where it ends.
# Set on every JSONDecoder at run time; typeshed does not declare it.
_scan_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_WS = " \t\n\r"


def _scan_object(body: bytes) -> ParsedBody | None:
    """Parse a UTF-8 JSON object as ``json.loads`` would, noting where the
    top-level ``model`` value is, so that a new model can be spliced in without
    re-serialising the body (which cost three times the parse, and rewrote
    the client's numbers and spacing). Each top-level value is parsed by json's
    own C scanner. ``None`` when the body is anything else."""
    try:
        text = body.decode()
        i = 0
        while text[i] in _WS:
            i += 1
        if text[i] != "{":
            return None
        i += 1
        while text[i] in _WS:
            i += 1
        data: dict[str, Any] = {}
        span: tuple[int, int] | None = None
        models = 0
        if text[i] == "}":
            i += 1
        else:
            while True:
                if text[i] != '"':
                    return None
                key, i = _scan_value(text, i)
                while text[i] in _WS:
                    i += 1
                if text[i] != ":":
                    return None
                i += 1
                while text[i] in _WS:
                    i += 1
                value, value_end = _scan_value(text, i)
                if key == "model":
                    span, models = (i, value_end), models + 1
                data[key] = value
                i = value_end
                while text[i] in _WS:
                    i += 1
                if text[i] == ",":
                    i += 1
                    while text[i] in _WS:
                        i += 1
                elif text[i] == "}":
                    i += 1
                    break
                else:
                    return None
        if text[i:].strip(_WS):
            return None
    except (ValueError, IndexError, StopIteration, RecursionError):
        return None
    # With a duplicated key the client's other copies would survive a splice,
    # and an upstream that keeps the first copy would see the client's model.
    return ParsedBody(data, text, span if models == 1 else None)


def requested_model(body: Mapping[str, Any]) -> str | None:
    """The body's ``model``: a string, or ``None`` when absent or null."""
    model = body.get("model")
    if model is None or isinstance(model, str):
        return model
    raise _wrong_type("model", "a string", model, code="invalid_model")


def check_fields(data: Mapping[str, Any], api: WireAPI) -> None:
    """Raise a 400 when a field Archway reads or rewrites has a type its API forbids.

    Absent fields are the provider's to require: Archway only refuses what it
    would misread (the router reads ``messages`` and ``system``, translation
    reads all of these) or forward as if it were well-formed. The body came
    from ``json``, so exact ``type`` checks are enough, and cheaper.
    """
    requested_model(data)
    messages = data.get("messages", _ABSENT)
    if messages is not _ABSENT:
        if type(messages) is not list:
            raise _wrong_type("messages", "a list of message objects", messages)
        for message in messages:
            if type(message) is not dict:
                raise _wrong_type("messages", "a list of message objects", messages)
    stream = data.get("stream")
    # OpenAI's schema allows null (not streamed); Anthropic's SDK never sends it.
    if stream is not None and type(stream) is not bool:
        raise _wrong_type("stream", "true or false", stream)
    tools = data.get("tools", _ABSENT)
    if tools is not _ABSENT and type(tools) is not list:
        raise _wrong_type("tools", "a list of tools", tools)
    if api is WireAPI.ANTHROPIC:
        system = data.get("system", _ABSENT)
        well_typed = type(system) is str or (
            type(system) is list and all(type(block) is dict for block in system)
        )
        if system is not _ABSENT and not well_typed:
            raise _wrong_type("system", "a string or a list of content blocks", system)


_ABSENT: Any = object()


def _wrong_type(
    field: str, wanted: str, value: Any, *, code: str = "invalid_request"
) -> GatewayError:
    got = "null" if value is None else type(value).__name__
    if isinstance(value, list):
        got = "a list holding something else"
    return GatewayError(400, f"'{field}' must be {wanted}, not {got}.", code=code, param=field)


def with_model(parsed: ParsedBody, model: str) -> bytes | None:
    """The body with its ``model`` set to ``model``, or ``None`` when it already is.

    The new id is spliced into the client's text where the scan found the old
    one: no re-serialisation, and the client's own numbers, escapes and spacing
    reach the provider untouched. Bodies the scan could not take are
    re-encoded.
    """
    if parsed.data.get("model") == model and not parsed.changed:
        return None
    span, text = parsed.model_span, parsed.text
    if span is not None and text is not None:
        spliced = json.dumps(model, ensure_ascii=False)
        return (text[: span[0]] + spliced + text[span[1] :]).encode()
    return encode_json({**parsed.data, "model": model})
