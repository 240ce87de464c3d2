"""From a request body to the mutations Envoy applies: pure functions, no protobuf.

``plan_request`` parses the body, resolves the model and returns a
``RequestPlan``: the headers to set and remove and the new body. When the
client and the provider speak different APIs, the body is translated to the
provider's and the plan carries the ``TranslationContext`` the response needs.
The processor turns the plan into a ProcessingResponse; ``archway explain``
prints it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.errors import GatewayError
from ext_proc.headers import (
    DECISION_MODEL,
    DECISION_PROVIDER,
    DECISION_RESOLUTION,
    DECISION_ROUTE,
    DECISION_ROUTE_SCORE,
    FALLBACK_CHAIN,
    ROUTE_HEADER,
    TRANSLATE_HEADER,
)
from ext_proc.routing.catalog import ProviderSpec, WireAPI, auth_headers, request_path, spec_for
from ext_proc.routing.endpoints import Endpoint
from ext_proc.routing.resolve import RoutingDecision, RoutingTable, resolve_model
from ext_proc.translate import TranslationContext, translate_request

__all__ = [
    "CREDENTIAL_HEADERS",
    "ParsedBody",
    "RequestPlan",
    "decision_headers",
    "parse_body",
    "parse_request",
    "plan_request",
    "requested_model",
    "rewrite_model",
    "upstream_headers",
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
    translation: TranslationContext | None = None
    """Set when the body was translated to the provider's API."""


_FOREIGN_HEADER_PREFIXES: dict[WireAPI, str] = {
    WireAPI.OPENAI: "anthropic-",
    WireAPI.ANTHROPIC: "openai-",
}
"""Client SDK headers that mean nothing to a provider of the other API."""

_MAX_COMPLETION_TOKENS_PROVIDERS = frozenset({"openai", "azure_openai"})
"""Providers whose reasoning models refuse ``max_tokens`` and want ``max_completion_tokens``."""


def parse_body(headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a ``GatewayError`` saying what is wrong."""
    return parse_request(headers, body).data


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """A request body parsed once, with what a cheap model rewrite needs."""

    data: dict[str, Any]
    text: str | None
    """The body as text, when ``model_span`` is known."""
    model_span: tuple[int, int] | None
    """Where the value of the one top-level ``model`` key sits in ``text``."""


def parse_request(headers: Mapping[str, str], body: bytes) -> ParsedBody:
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
    raise GatewayError(
        400,
        f"'model' must be a string, not {type(model).__name__}.",
        code="invalid_model",
        param="model",
    )


def decision_headers(decision: RoutingDecision) -> tuple[tuple[str, str], ...]:
    """The headers that tell Envoy where to route and the client what was decided."""
    out = [
        (ROUTE_HEADER, decision.cluster),
        (DECISION_MODEL, decision.model),
        (DECISION_PROVIDER, decision.provider.provider),
        (DECISION_RESOLUTION, decision.resolution.value),
    ]
    if decision.route is not None:
        out.append((DECISION_ROUTE, decision.route))
    if decision.fallbacks:
        # Read by the upstream processor on a retry: which model each attempt is for.
        out.append((FALLBACK_CHAIN, " ".join((decision.model, *decision.fallbacks))))
    return tuple(out)


def upstream_headers(
    decision: RoutingDecision, headers: Mapping[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """``:path`` (the provider's native API) and credentials for sending a request
    to the decision's provider: headers to set, and the client's (or an earlier
    attempt's) credentials to drop."""
    provider = decision.provider
    spec = spec_for(provider)
    api = spec.api if spec else WireAPI.OPENAI
    set_headers = [(":path", request_path(provider, decision.upstream, api))]
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
    replaced = {name for name, _ in set_headers}
    return set_headers, [h for h in remove if h not in replaced]


def plan_request(
    table: RoutingTable,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    body: bytes,
    *,
    route: str | None = None,
    route_score: float | None = None,
    parsed: ParsedBody | None = None,
    decision: RoutingDecision | None = None,
    body_changed: bool = False,
) -> RequestPlan:
    """Everything to change about one LLM request, or a ``GatewayError``.

    ``route`` and ``route_score`` are the preference router's answer for an open
    model; the score is reported only alongside a route. ``parsed`` is the body
    already parsed by the caller, and ``decision`` one it already made (a
    session's pinned decision); each is otherwise made here. ``body_changed``:
    the caller took something out of ``parsed.data`` (a request's own routing
    preferences), so the body is sent as ``data`` says.
    """
    if parsed is None:
        parsed = parse_request(headers, body)
    data = parsed.data
    if decision is None:
        decision = resolve_model(table, requested_model(data), route=route)
    provider = decision.provider
    spec = spec_for(provider)
    provider_api = spec.api if spec else WireAPI.OPENAI
    client_api = endpoint.api
    if provider_api is WireAPI.BEDROCK:
        # The Converse translators (ext_proc.translate.bedrock) are not yet on the
        # request path; say so rather than send Bedrock a body it cannot read.
        raise GatewayError(
            501,
            f"{decision.model} is an Amazon Bedrock model; this gateway does not yet "
            "translate requests to Bedrock's Converse API. Ask for a model of another "
            "provider.",
            code="provider_api_not_served",
            param="model",
        )

    set_headers = list(decision_headers(decision))
    if decision.route is not None and route_score is not None:
        set_headers.append((DECISION_ROUTE_SCORE, f"{route_score:.4f}"))
    upstream_set, remove = upstream_headers(decision, headers)
    set_headers.extend(upstream_set)

    translation: TranslationContext | None = None
    new_body: bytes | None = None
    if client_api is not provider_api:
        data["model"] = decision.upstream_model
        translated, translation = translate_request(
            client_api, provider_api, data, max_tokens_field=_max_tokens_field(spec)
        )
        set_headers.append((TRANSLATE_HEADER, translation.header_value()))
        foreign = _FOREIGN_HEADER_PREFIXES[provider_api]
        remove.extend(h for h in headers if h.startswith(foreign))
        # The response body must reach Archway readable: a compressed one could
        # not be translated.
        if "accept-encoding" in headers:
            remove.append("accept-encoding")
        if provider.passthrough_auth:
            _passthrough_credentials(headers, provider_api, set_headers, remove)
        new_body = _encode(translated)
    elif body_changed:
        data["model"] = decision.upstream_model
        new_body = _encode(data)
    elif data.get("model") != decision.upstream_model:
        span, text = parsed.model_span, parsed.text
        if span is not None and text is not None:
            # Splice the new id in: no re-serialisation, and the client's own
            # numbers, escapes and spacing reach the provider untouched.
            model = json.dumps(decision.upstream_model, ensure_ascii=False)
            new_body = (text[: span[0]] + model + text[span[1] :]).encode()
        else:
            new_body = rewrite_model(data, decision.upstream_model)
    if new_body is not None:
        set_headers.append(("content-length", str(len(new_body))))
    set_names = {name for name, _ in set_headers}
    remove = [h for h in remove if h not in set_names]
    return RequestPlan(decision, tuple(set_headers), tuple(remove), new_body, translation)


def rewrite_model(body: dict[str, Any], model: str) -> bytes | None:
    """The body with ``model`` set, or ``None`` when it already says ``model``."""
    if body.get("model") == model:
        return None
    body["model"] = model
    return _encode(body)


def _encode(body: Mapping[str, Any]) -> bytes:
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    except UnicodeEncodeError:
        # A lone surrogate escape ("\ud800") is valid JSON but not encodable as
        # UTF-8; re-escaping everything sends exactly what the client wrote.
        return json.dumps(body, separators=(",", ":")).encode()


def _max_tokens_field(spec: ProviderSpec | None) -> str:
    if spec is not None and spec.name in _MAX_COMPLETION_TOKENS_PROVIDERS:
        return "max_completion_tokens"
    return "max_tokens"


def _passthrough_credentials(
    headers: Mapping[str, str],
    provider_api: WireAPI,
    set_headers: list[tuple[str, str]],
    remove: list[str],
) -> None:
    """Forward the client's own key in the provider's style: an Anthropic SDK
    sends ``x-api-key``, an OpenAI-compatible server wants ``Authorization: Bearer``."""
    if provider_api is WireAPI.OPENAI:
        key = headers.get("x-api-key")
        if key and "authorization" not in headers:
            set_headers.append(("authorization", f"Bearer {key}"))
            remove.append("x-api-key")
        return
    scheme, _, key = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and key and "x-api-key" not in headers:
        set_headers.append(("x-api-key", key))
        remove.append("authorization")
