"""From a request body to the mutations Envoy applies: pure functions, no protobuf.

``plan_request`` parses the body, resolves the model and returns a
``RequestPlan``: the headers to set and remove and the new body. The processor
turns the plan into a ProcessingResponse; ``archway explain`` prints it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.endpoints import Endpoint
from ext_proc.errors import GatewayError
from ext_proc.headers import (
    DECISION_MODEL,
    DECISION_PROVIDER,
    DECISION_RESOLUTION,
    DECISION_ROUTE,
    ROUTE_HEADER,
)
from ext_proc.providers import CATALOG, WireAPI, auth_headers, request_path, spec_for
from ext_proc.resolve import RoutingDecision, RoutingTable, resolve_model

__all__ = [
    "CREDENTIAL_HEADERS",
    "RequestPlan",
    "decision_headers",
    "parse_body",
    "plan_request",
    "requested_model",
]

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
"""Client credentials: replaced by the provider's unless ``passthrough_auth``."""


@dataclass(frozen=True)
class RequestPlan:
    decision: RoutingDecision
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    body: bytes | None
    """The new body, or ``None`` when the client's body goes upstream unchanged."""


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a ``GatewayError`` saying what is wrong."""
    return _parse(headers, body).data


@dataclass(frozen=True, slots=True)
class _Parsed:
    data: dict[str, Any]
    text: str | None
    """The body as text, when ``model_span`` is known."""
    model_span: tuple[int, int] | None
    """Where the value of the one top-level ``model`` key sits in ``text``."""


def _parse(headers: Mapping[str, str], body: bytes) -> _Parsed:
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
    return _Parsed(parsed, None, None)


# json's C scanner: parses one JSON value at an index and says where it ends.
# Set on every JSONDecoder at run time; typeshed does not declare it.
_scan_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_WS = " \t\n\r"


def _scan_object(body: bytes) -> _Parsed | None:
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
    return _Parsed(data, text, span if models == 1 else None)


def requested_model(body: Mapping[str, Any]) -> str | None:
    """The body's ``model``: a string, or ``None`` when absent or null."""
    model = body.get("model")
    if model is None or isinstance(model, str):
        return model
    raise GatewayError(
        400,
        f"'model' must be a string, not {type(model).__name__}.",
        code="invalid_model",
        param="model",
    )


def decision_headers(decision: RoutingDecision) -> tuple[tuple[str, str], ...]:
    """The headers that tell Envoy where to route and the client what was decided."""
    out = [
        (ROUTE_HEADER, decision.upstream.cluster),
        (DECISION_MODEL, decision.model),
        (DECISION_PROVIDER, decision.provider.provider),
        (DECISION_RESOLUTION, decision.resolution.value),
    ]
    if decision.route is not None:
        out.append((DECISION_ROUTE, decision.route))
    return tuple(out)


def plan_request(
    table: RoutingTable,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    body: bytes,
    *,
    route: str | None = None,
) -> RequestPlan:
    """Everything to change about one LLM request, or a ``GatewayError``."""
    body_info = _parse(headers, body)
    parsed = body_info.data
    routed = _route(table, endpoint, headers, requested_model(parsed), route)
    decision = routed.decision
    set_headers = routed.set_headers
    new_body: bytes | None = None
    if parsed.get("model") != decision.upstream_model:
        parsed["model"] = decision.upstream_model
        span, text = body_info.model_span, body_info.text
        if span is not None and text is not None:
            model = json.dumps(decision.upstream_model, ensure_ascii=False)
            new_body = (text[: span[0]] + model + text[span[1] :]).encode()
        else:
            new_body = json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode()
        set_headers = (*set_headers, ("content-length", str(len(new_body))))
    return RequestPlan(decision, set_headers, routed.remove_headers, new_body)


@dataclass(frozen=True, slots=True)
class _Routed:
    table: RoutingTable
    decision: RoutingDecision
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]


# What a request's headers must say, given its table, endpoint, requested model,
# route and which of the client's headers that matter it sent, is the same for
# every such request: it is worked out once and kept (bounded: a wildcard
# provider accepts any model id, so the keys are not bounded by the config).
_ROUTED: dict[tuple[object, ...], _Routed] = {}
_ROUTED_MAX = 1024
_HEADERS_THAT_MATTER = CREDENTIAL_HEADERS + tuple(
    sorted({name for spec in CATALOG.values() for name, _ in spec.static_headers})
)
"""The client headers whose presence changes the plan: credentials are removed,
a client's pinned header (anthropic-version) wins over the catalog's."""


def _route(
    table: RoutingTable,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    requested: str | None,
    route: str | None,
) -> _Routed:
    present = tuple(name in headers for name in _HEADERS_THAT_MATTER)
    key = (id(table), endpoint, requested, route, present)
    routed = _ROUTED.get(key)
    # The identity check keeps a new table that reuses a freed one's id from
    # reading the old table's entries.
    if routed is not None and routed.table is table:
        return routed
    routed = _build_route(table, endpoint, headers, requested, route)
    if len(_ROUTED) >= _ROUTED_MAX:
        _ROUTED.clear()
    _ROUTED[key] = routed
    return routed


def _build_route(
    table: RoutingTable,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    requested: str | None,
    route: str | None,
) -> _Routed:
    decision = resolve_model(table, requested, route=route)
    provider = decision.provider
    spec = spec_for(provider)
    provider_api = spec.api if spec else WireAPI.OPENAI
    client_api = endpoint.api
    if client_api is WireAPI.ANTHROPIC and provider_api is not WireAPI.ANTHROPIC:
        raise GatewayError(
            400,
            f"{decision.model} speaks the OpenAI API; /v1/messages requests can only go to "
            "Anthropic-API providers. Send this request to /v1/chat/completions instead.",
            code="api_mismatch",
            param="model",
        )

    set_headers = list(decision_headers(decision))
    set_headers.append((":path", request_path(provider, decision.upstream, client_api)))
    remove: list[str] = []
    if not provider.passthrough_auth:
        remove.extend(h for h in CREDENTIAL_HEADERS if h in headers)
    pinned = {name for name, _ in spec.static_headers} if spec else set()
    for name, value in auth_headers(provider):
        # A client's own anthropic-version wins over the catalog's pin, so SDKs
        # that need a newer version get it; credentials never yield.
        if name in pinned and name in headers:
            continue
        set_headers.append((name, value))
    remove = [h for h in remove if h not in {name for name, _ in set_headers}]
    return _Routed(table, decision, tuple(set_headers), tuple(remove))
