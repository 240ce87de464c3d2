"""Which client API endpoint a request is for, decided from method and path alone.

This runs on the request headers, before any body arrives, so that requests
Archway cannot serve are answered at once and bodies are only read when needed.
"""

from __future__ import annotations

import json
from enum import StrEnum

from ext_proc.errors import GatewayError
from ext_proc.routing.catalog import WireAPI
from ext_proc.routing.resolve import RoutingTable

__all__ = ["Endpoint", "classify", "client_api", "models_listing"]


class Endpoint(StrEnum):
    CHAT_COMPLETIONS = "chat_completions"
    """OpenAI ``POST /v1/chat/completions``."""
    MESSAGES = "messages"
    """Anthropic ``POST /v1/messages``."""
    MODELS = "models"
    """``GET /v1/models``, answered from the config."""
    COUNT_TOKENS = "count_tokens"
    """Anthropic ``POST /v1/messages/count_tokens``: passed through natively."""
    EMBEDDINGS = "embeddings"
    """OpenAI ``POST /v1/embeddings``: passed through natively."""

    @property
    def api(self) -> WireAPI:
        if self is Endpoint.MESSAGES or self is Endpoint.COUNT_TOKENS:
            return WireAPI.ANTHROPIC
        return WireAPI.OPENAI

    @property
    def native_path(self) -> str | None:
        """For an endpoint only its own API's providers serve (never translated):
        the path under a provider's base URL. ``None`` for the chat endpoints."""
        return _NATIVE_PATHS.get(self)

    @property
    def is_chat(self) -> bool:
        """A conversation: the preference router may read it."""
        return self is Endpoint.CHAT_COMPLETIONS or self is Endpoint.MESSAGES

    @property
    def needs_body(self) -> bool:
        return self is not Endpoint.MODELS


_NATIVE_PATHS = {
    Endpoint.COUNT_TOKENS: "/messages/count_tokens",
    Endpoint.EMBEDDINGS: "/embeddings",
}

_ROUTES: dict[str, tuple[Endpoint, str]] = {
    "/v1/chat/completions": (Endpoint.CHAT_COMPLETIONS, "POST"),
    "/chat/completions": (Endpoint.CHAT_COMPLETIONS, "POST"),
    "/v1/messages": (Endpoint.MESSAGES, "POST"),
    "/v1/messages/count_tokens": (Endpoint.COUNT_TOKENS, "POST"),
    "/v1/embeddings": (Endpoint.EMBEDDINGS, "POST"),
    "/embeddings": (Endpoint.EMBEDDINGS, "POST"),
    "/v1/models": (Endpoint.MODELS, "GET"),
    "/models": (Endpoint.MODELS, "GET"),
}


def _strip_query(path: str) -> str:
    return path.split("?", 1)[0].rstrip("/") or "/"


def client_api(path: str) -> WireAPI:
    """The API a client speaks, judged from its path: it picks the error shape
    even for paths Archway does not serve."""
    return WireAPI.ANTHROPIC if _strip_query(path).startswith("/v1/messages") else WireAPI.OPENAI


def classify(method: str, path: str) -> Endpoint:
    """The endpoint for ``method`` and ``path``, or a ``GatewayError`` (404/405)."""
    found = _ROUTES.get(_strip_query(path))
    if found is None:
        served = ", ".join(sorted({f"{m} {p}" for p, (_, m) in _ROUTES.items() if "/v1/" in p}))
        raise GatewayError(
            404,
            f"Archway does not serve {method} {_strip_query(path)}. It serves: {served}.",
            code="unsupported_path",
        )
    endpoint, allowed = found
    if method != allowed:
        raise GatewayError(
            405,
            f"{_strip_query(path)} accepts {allowed}, not {method}.",
            code="method_not_allowed",
            headers=(("allow", allowed),),
        )
    return endpoint


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
