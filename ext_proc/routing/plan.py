"""From a decision and a parsed body to the mutations Envoy applies: pure, no protobuf.

``plan_request`` takes what ``routing.decide`` decided and the body
``routing.body`` parsed, and returns a ``RequestPlan``: the headers to set and
remove and the new body. When the client and the provider speak different
APIs, the body is translated to the provider's and the plan carries the
``TranslationContext`` the response needs. The routing stream turns the plan
into a ProcessingResponse; ``archway explain`` prints it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ext_proc.apis import Endpoint, WireAPI
from ext_proc.config import ProviderConfig
from ext_proc.errors import GatewayError
from ext_proc.headers import (
    CREDENTIAL_HEADERS,
    DECISION_AFFINITY,
    DECISION_MODEL,
    DECISION_PROVIDER,
    DECISION_RESOLUTION,
    DECISION_ROUTE,
    DECISION_ROUTE_SCORE,
    FALLBACK_CHAIN,
    ROUTE_HEADER,
    TRANSLATE_HEADER,
)
from ext_proc.routing.body import ParsedBody, with_model
from ext_proc.routing.catalog import (
    auth_headers,
    chain_api,
    provider_api,
    provider_dialect,
    request_path,
    spec_for,
)
from ext_proc.routing.decide import Decision
from ext_proc.routing.request_preferences import without_request_preferences
from ext_proc.routing.resolve import RoutingDecision
from ext_proc.translate import TranslationContext, translator_for
from ext_proc.translate.common import encode_json

__all__ = [
    "RequestPlan",
    "continued_response",
    "decision_headers",
    "plan_request",
    "upstream_headers",
]


@dataclass(frozen=True)
class RequestPlan:
    decision: RoutingDecision
    set_headers: tuple[tuple[str, str], ...]
    remove_headers: tuple[str, ...]
    body: bytes | None
    """The new body, or ``None`` when the client's body goes upstream unchanged."""
    translation: TranslationContext | None = None
    """Set when the body was translated to the provider's API."""
    remove_prefixes: tuple[str, ...] = ()
    """Prefixes of client headers to drop: ``remove_headers`` already names those
    among ``headers``, which in one-message mode are only the ones the decision reads."""


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
    decision: RoutingDecision, headers: Mapping[str, str], api: WireAPI | None = None
) -> tuple[list[tuple[str, str]], list[str]]:
    """``:path`` (in ``api``, the body's; default the provider's own) and
    credentials for sending a request to the decision's provider: headers to
    set, and the client's (or an earlier attempt's) credentials to drop."""
    provider = decision.provider
    spec = spec_for(provider)
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


def continued_response(
    endpoint: Endpoint, body: Mapping[str, Any], chain: Sequence[ProviderConfig]
) -> str | None:
    """The ``previous_response_id`` whose stored conversation Archway must
    prepend: a Responses request continuing an earlier one, going to providers
    (``chain``: the model, then its fallbacks) not all serving the Responses API
    (those that do keep their own state)."""
    if endpoint.api is not WireAPI.RESPONSES:
        return None
    if chain_api(chain, endpoint.api) is WireAPI.RESPONSES:
        return None
    previous = body.get("previous_response_id")
    return previous if isinstance(previous, str) and previous else None


def plan_request(
    decision: Decision,
    parsed: ParsedBody,
    endpoint: Endpoint,
    headers: Mapping[str, str],
    configured: Sequence[ProviderConfig] = (),
    *,
    history: Sequence[Mapping[str, Any]] = (),
    chain: Sequence[ProviderConfig] = (),
) -> RequestPlan:
    """Everything to change about one LLM request, or a ``GatewayError`` (a body
    the provider's API cannot express). ``configured``: the config's models, to
    name those that can serve an endpoint the chosen one cannot. ``history``: the
    stored conversation a Responses request continues, for a provider that keeps
    none itself; ``chain``: the model's provider and its fallbacks' (default: the
    model's alone)."""
    # No provider knows a request's own routing preferences.
    parsed = without_request_preferences(parsed)
    if endpoint.native_path is not None:
        return _plan_native(decision, parsed, endpoint, endpoint.native_path, headers, configured)
    target = decision.target
    provider = target.provider
    body_api = chain_api(chain or (provider,), endpoint.api)
    translator = translator_for(endpoint.api, body_api)

    set_headers = list(decision_headers(target))
    if decision.score is not None:
        set_headers.append((DECISION_ROUTE_SCORE, f"{decision.score:.4f}"))
    if decision.affinity is not None:
        set_headers.append((DECISION_AFFINITY, decision.affinity))
    upstream_set, remove = upstream_headers(target, headers, body_api)
    set_headers.extend(upstream_set)

    translation: TranslationContext | None = None
    remove_prefixes: tuple[str, ...] = ()
    new_body: bytes | None
    if translator is not None:
        data = {**parsed.data, "model": target.upstream_model}
        translated, translation = translator.request(data, provider_dialect(provider), history)
        set_headers.append((TRANSLATE_HEADER, translation.header_value()))
        if translation.path is not None:
            set_headers = [(n, v) for n, v in set_headers if n != ":path"]
            set_headers.append((":path", target.upstream.path_prefix + translation.path))
        # The client SDK's own headers mean nothing to a provider of another API.
        foreign = translation.client.sdk_header_prefix
        if foreign != translation.provider.sdk_header_prefix:
            remove.extend(h for h in headers if h.startswith(foreign))
            remove_prefixes = (foreign,)
        # The response body must reach Archway readable: a compressed one could
        # not be translated.
        if "accept-encoding" in headers:
            remove.append("accept-encoding")
        if provider.passthrough_auth:
            _passthrough_credentials(headers, translation.provider, set_headers, remove)
        new_body = encode_json(translated)
    else:
        new_body = with_model(parsed, target.upstream_model)
    if new_body is not None:
        set_headers.append(("content-length", str(len(new_body))))
    set_names = {name for name, _ in set_headers}
    remove = [h for h in remove if h not in set_names]
    return RequestPlan(
        target, tuple(set_headers), tuple(remove), new_body, translation, remove_prefixes
    )


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


def _plan_native(
    decision: Decision,
    parsed: ParsedBody,
    endpoint: Endpoint,
    native_path: str,
    headers: Mapping[str, str],
    configured: Sequence[ProviderConfig],
) -> RequestPlan:
    """An endpoint served only by providers of its own API (token counting,
    embeddings): passed through with the path, credentials and model rewritten,
    or refused with the models that could serve it."""
    target = decision.target
    api = provider_api(target.provider)
    if api is not endpoint.api:
        able = [p.model for p in configured if provider_api(p) is endpoint.api]
        raise GatewayError(
            400,
            f"{target.model} cannot serve {endpoint.method} {endpoint.paths[0]}: it speaks "
            f"the {api.value} API, and this endpoint is {endpoint.api.value}'s. "
            + (f"Models that can: {', '.join(able)}." if able else "No configured model can."),
            code="endpoint_not_supported",
            param="model",
        )
    # Failover clusters rewrite each retry as a chat request: these go to the
    # model's own cluster, once.
    target = dataclasses.replace(target, fallbacks=(), cluster=target.upstream.cluster)
    set_headers = list(decision_headers(target))
    if decision.affinity is not None:
        set_headers.append((DECISION_AFFINITY, decision.affinity))
    upstream_set, remove = upstream_headers(target, headers)
    path = request_path(target.provider, target.upstream, suffix=native_path)
    set_headers.extend((name, path if name == ":path" else value) for name, value in upstream_set)
    new_body = with_model(parsed, target.upstream_model)
    if new_body is not None:
        set_headers.append(("content-length", str(len(new_body))))
    set_names = {name for name, _ in set_headers}
    remove = [h for h in remove if h not in set_names]
    return RequestPlan(target, tuple(set_headers), tuple(remove), new_body, None)
