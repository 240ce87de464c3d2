"""The client's request body: parsed once, checked, and its model spliced in.

``parse_request`` turns the bytes into a ``ParsedBody`` and checks the type of
every field Archway reads or rewrites, so that a malformed one is the client's
400, in its API's shape, instead of a crash further on or a request forwarded
that the gateway misread. ``with_model`` writes a new model id into the body
without re-serialising it, for the first attempt and every retry alike.

Coding agents send 100 KB to 1 MB per request, nearly all of it ``messages``,
which a plain routing decision never reads. So the body is validated and cut
into its top-level members by msgspec's C parser without building them
(``msgspec.Raw``), and a member is decoded only when something reads it: the
model always, ``messages`` only for the router or a translation
(``ParsedBody.data``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

import msgspec

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


class ParsedBody:
    """A request body parsed once, with what a cheap model rewrite needs.

    ``fields`` are the top-level members, each decoded when first read;
    ``data`` is the whole object, decoded (and deep-checked) on first use.
    """

    __slots__ = ("_data", "api", "body", "changed", "fields", "model_span", "text")

    def __init__(
        self,
        data: dict[str, Any] | None,
        text: str | None,
        model_span: tuple[int, int] | None,
        *,
        body: bytes = b"",
        fields: Mapping[str, Any] | None = None,
        api: WireAPI = WireAPI.OPENAI,
        changed: bool = False,
    ) -> None:
        self._data = data
        self.text = text
        """The body as text, when ``model_span`` indexes it (the json fallback)."""
        self.model_span = model_span
        """Where the value of the one top-level ``model`` key sits: in ``text`` when
        that is set, else in ``body`` (bytes)."""
        self.body = body
        self.fields: Mapping[str, Any] = data if fields is None else fields
        self.api = api
        self.changed = changed
        """``data`` no longer says what the client sent (a field was taken out): the
        body is re-encoded even when its model stays."""

    @property
    def data(self) -> dict[str, Any]:
        """The whole body decoded, for readers of the conversation (the router,
        translation); a 400 when a member they read has the wrong type."""
        data = self._data
        if data is None:
            data = self._data = _loads(self.body)
            check_fields(data, self.api)
        return data


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
    parsed = parse_json(body, api)
    check_fields(parsed.fields, api)
    return parsed


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a ``GatewayError`` saying what is wrong."""
    return parse_request(headers, body).data


def parse_json(body: bytes, api: WireAPI = WireAPI.OPENAI) -> ParsedBody:
    """``body`` as a JSON object, noting where its ``model`` is when it can."""
    members = _split_object(body)
    if members is not None:
        _refuse_long_numbers(members)
        return ParsedBody(
            None, None, _model_span(body, members), body=body, fields=_Members(members), api=api
        )
    fast = _scan_object(body)
    if fast is not None:
        fast.api = api
        return fast
    parsed = _loads(body)
    return ParsedBody(parsed, None, None, api=api)


def _loads(body: bytes) -> dict[str, Any]:
    """``json.loads``, its errors worded for the client."""
    # Anything the scans do not take (another encoding, a BOM, invalid JSON,
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
        raise _too_deep() from None
    if not isinstance(parsed, dict):
        raise GatewayError(
            400,
            f"The request body must be a JSON object, not {type(parsed).__name__}.",
            code="invalid_body",
        )
    return parsed


def _too_deep() -> GatewayError:
    return GatewayError(400, "The request body is nested too deeply.", code="invalid_json")


_split_members = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_KEY = re.compile(rb'[ \t\n\r]*"(?:[^"\\]|\\.)*"[ \t\n\r]*:[ \t\n\r]*', re.DOTALL)
_SEPARATOR = re.compile(rb"[ \t\n\r]*[,}]")


def _split_object(body: bytes) -> dict[str, msgspec.Raw] | None:
    """The top-level members of a JSON object, each still undecoded bytes, or
    ``None`` when ``body`` is anything else. msgspec validates the whole
    document in C at a tenth of ``json.loads``'s cost, building no values."""
    try:
        return _split_members(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    except RecursionError:
        # msgspec validates every level, and stops at about a thousand.
        raise _too_deep() from None


def _model_span(body: bytes, members: dict[str, msgspec.Raw]) -> tuple[int, int] | None:
    """Where the top-level ``model`` value sits in ``body``, found by stepping over
    each member (its key, then its value's known length), or ``None`` when
    there is no single ``model`` (a duplicated key, which the dict folded)."""
    if "model" not in members:
        return None
    pos = body.index(b"{") + 1
    span: tuple[int, int] | None = None
    count = 0
    for key, raw in members.items():
        match = _KEY.match(body, pos)
        if match is None:
            return None
        start = match.end()
        end = start + len(raw)
        if key == "model":
            span = (start, end)
        count += 1
        separator = _SEPARATOR.match(body, end)
        if separator is None:
            return None
        pos = separator.end()
    # A duplicate key shifts every later member; the dict holds fewer members
    # than the body then, and the walk above ends before the closing brace.
    if count != len(members) or body[pos - 1 : pos] != b"}" or span is None:
        return None
    if body[span[0] : span[1]] != bytes(members["model"]):
        return None
    return span


class _Members(Mapping[str, Any]):
    """A JSON object's top-level members, each decoded by ``json`` when first read."""

    __slots__ = ("_raw", "_values")

    def __init__(self, raw: dict[str, msgspec.Raw]) -> None:
        self._raw = raw
        self._values: dict[str, Any] = {}

    def __getitem__(self, key: str) -> Any:
        values = self._values
        if key in values:
            return values[key]
        value = values[key] = _loads_value(self._raw[key])
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def first_byte(self, key: str) -> int | None:
        """The first byte of a member's JSON text (its type), without decoding it."""
        raw = self._raw.get(key)
        if raw is None:
            return None
        return memoryview(raw)[0]


# Python's default int digit limit: past it, json.loads refuses the number.
_MAX_DIGITS = 4300
_NUMBER_START = frozenset(b"-0123456789")


def _refuse_long_numbers(members: dict[str, msgspec.Raw]) -> None:
    """A top-level number no provider (nor Python) would convert is the client's
    error, even in a member Archway does not read: checked by length, unread."""
    for raw in members.values():
        if len(raw) > _MAX_DIGITS and memoryview(raw)[0] in _NUMBER_START:
            raise GatewayError(
                400, "The request body holds a number with too many digits.", code="invalid_json"
            )


def _loads_value(raw: msgspec.Raw) -> Any:
    try:
        return json.loads(bytes(raw))
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        # Valid JSON that Python will not convert: an integer past its digit limit.
        raise GatewayError(
            400, "The request body holds a number with too many digits.", code="invalid_json"
        ) from None


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

    Members not yet decoded are checked by their first byte only; their
    elements are checked when ``ParsedBody.data`` decodes them for a reader.
    """
    requested_model(data)
    if isinstance(data, _Members):
        _check_kinds(data, api)
        return
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

_KINDS = {ord("["): list, ord("{"): dict, ord('"'): str, ord("t"): bool, ord("f"): bool}


def _check_kinds(members: _Members, api: WireAPI) -> None:
    """``check_fields`` for members not decoded: the JSON type from the first byte."""
    messages = members.first_byte("messages")
    if messages is not None and _KINDS.get(messages) is not list:
        raise _wrong_type("messages", "a list of message objects", members["messages"])
    stream = members.get("stream")
    if stream is not None and type(stream) is not bool:
        raise _wrong_type("stream", "true or false", stream)
    tools = members.first_byte("tools")
    if tools is not None and _KINDS.get(tools) is not list:
        raise _wrong_type("tools", "a list of tools", members["tools"])
    if api is WireAPI.ANTHROPIC:
        system = members.first_byte("system")
        if system is not None and _KINDS.get(system) not in (str, list):
            raise _wrong_type("system", "a string or a list of content blocks", members["system"])


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
    if parsed.fields.get("model") == model and not parsed.changed:
        return None
    span, text = parsed.model_span, parsed.text
    if span is not None:
        spliced = json.dumps(model, ensure_ascii=False)
        if text is not None:
            return (text[: span[0]] + spliced + text[span[1] :]).encode()
        with memoryview(parsed.body) as body:
            return b"".join((body[: span[0]], spliced.encode(), body[span[1] :]))
    return encode_json({**parsed.data, "model": model})
