"""Which client endpoint a request is for, and the one Archway answers itself.

``classify`` runs on the request headers, before any body arrives, so that
requests Archway cannot serve are answered at once and bodies are only read when
needed. The endpoints themselves are rows of ``ext_proc.apis.Endpoint``;
``GET /v1/models`` is answered here because it needs the routing table.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from ext_proc.apis import Endpoint, WireAPI, endpoint_for, served_paths, strip_query
from ext_proc.errors import GatewayError
from ext_proc.routing.resolve import RoutingTable

__all__ = ["classify", "empty_body", "listing_api", "models_listing"]


def empty_body() -> GatewayError:
    """A POST without a body: answered by the routing processor (two messages) or, when
    Envoy opens no ext_proc stream for it (one message), by the Lua filter."""
    return GatewayError(
        400, "This endpoint needs a JSON request body; none was sent.", code="empty_body"
    )


def classify(method: str, path: str) -> Endpoint:
    """The endpoint for ``method`` and ``path``, or a ``GatewayError`` (404/405)."""
    endpoint = endpoint_for(path)
    if endpoint is None:
        raise GatewayError(
            404,
            f"Archway does not serve {method} {strip_query(path)}. "
            f"It serves: {', '.join(served_paths())}.",
            code="unsupported_path",
        )
    if method != endpoint.method:
        raise GatewayError(
            405,
            f"{strip_query(path)} accepts {endpoint.method}, not {method}.",
            code="method_not_allowed",
            headers=(("allow", endpoint.method),),
        )
    return endpoint


def listing_api(headers: Mapping[str, str]) -> WireAPI:
    """The shape a ``GET /v1/models`` caller wants: both SDKs use that path, but
    only Anthropic's sends its version header."""
    return WireAPI.ANTHROPIC if "anthropic-version" in headers else WireAPI.OPENAI


def models_listing(table: RoutingTable, api: WireAPI) -> bytes:
    """``GET /v1/models``: configured models and aliases, in the client's API shape.

    Wildcard entries cannot be enumerated, so they are listed as ``provider/*``.
    """
    names = table.available()
    if api is WireAPI.ANTHROPIC:
        data = [
            {"type": "model", "id": n, "display_name": n, "created_at": "1970-01-01T00:00:00Z"}
            for n in names
        ]
        payload: dict[str, object] = {
            "data": data,
            "has_more": False,
            "first_id": names[0] if names else None,
            "last_id": names[-1] if names else None,
        }
    else:
        owners = {p.model: p.provider for p in table.config.providers}
        data = [
            {"id": n, "object": "model", "created": 0, "owned_by": owners.get(n, "archway")}
            for n in names
        ]
        payload = {"object": "list", "data": data}
    return json.dumps(payload).encode()
