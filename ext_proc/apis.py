"""The wire APIs Archway speaks, and the client endpoints that serve them.

A leaf: everything else in ``ext_proc`` may import it, and it imports nothing
from ``ext_proc``. What an API is (its upstream path, its error shape, its SDK's
headers) is written here once; which endpoint a client's method and path are for
is one row of ``Endpoint``. Adding a client API comes down to a ``WireAPI``
member with its facts, one ``Endpoint`` row, and its translators in
``ext_proc.translate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum

__all__ = [
    "COMMON_DIALECT",
    "Dialect",
    "Endpoint",
    "ErrorShape",
    "WireAPI",
    "client_api",
    "endpoint_for",
    "path_prefixes",
    "served_paths",
    "strip_query",
]


class ErrorShape(StrEnum):
    """How an API words an error body."""

    OPENAI = "openai"
    """``{"error": {"message", "type", "param", "code"}}``."""
    ANTHROPIC = "anthropic"
    """``{"type": "error", "error": {"type", "message"}}``."""


class WireAPI(StrEnum):
    """The HTTP API a provider (or a client) speaks."""

    OPENAI = "openai"
    """OpenAI chat completions, which most providers also serve."""
    ANTHROPIC = "anthropic"
    """Anthropic Messages."""
    BEDROCK = "bedrock converse"
    """Amazon Bedrock's Converse API (``/model/{id}/converse``, ``/converse-stream``):
    a provider's API only, never a client's."""

    @property
    def upstream_path(self) -> str:
        """The request path under a provider's base URL (``.../v1`` + this)."""
        return _FACTS[self].upstream_path

    @property
    def error_shape(self) -> ErrorShape:
        return _FACTS[self].error_shape

    @property
    def sdk_header_prefix(self) -> str:
        """The prefix of headers this API's SDKs send (``anthropic-version``):
        they mean nothing to a provider of another API."""
        return _FACTS[self].sdk_header_prefix


@dataclass(frozen=True, slots=True)
class _APIFacts:
    upstream_path: str
    error_shape: ErrorShape
    sdk_header_prefix: str


_FACTS: dict[WireAPI, _APIFacts] = {
    WireAPI.OPENAI: _APIFacts("/chat/completions", ErrorShape.OPENAI, "openai-"),
    WireAPI.ANTHROPIC: _APIFacts("/messages", ErrorShape.ANTHROPIC, "anthropic-"),
    # The model id is part of the path (``routing.catalog.request_path``); no
    # client speaks Converse, so its error shape is never a client's.
    WireAPI.BEDROCK: _APIFacts("/model/{model_id}/converse", ErrorShape.OPENAI, "x-amz-"),
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """Where one provider's server departs from its API's common form; a
    request translator writes the provider's dialect."""

    max_tokens_field: str = "max_tokens"
    """The OpenAI request field for the output-token limit: OpenAI's own reasoning
    models refuse ``max_tokens`` and want ``max_completion_tokens``; most
    compatible servers know only ``max_tokens``."""


COMMON_DIALECT = Dialect()
"""The API as documented: what a provider with no quirks speaks."""


@dataclass(frozen=True, slots=True)
class _Route:
    method: str
    paths: tuple[str, ...]
    """Every path it is served on; the first is the one documented."""
    api: WireAPI
    """The API its clients speak: it picks the error shape and the translator."""
    native_path: str | None = None
    """For an endpoint served only by providers of its own API, never translated:
    the path under a provider's base URL. ``None`` for the chat endpoints."""


class Endpoint(Enum):
    """A client endpoint Archway serves: one row per method and set of paths."""

    CHAT_COMPLETIONS = _Route("POST", ("/v1/chat/completions", "/chat/completions"), WireAPI.OPENAI)
    MESSAGES = _Route("POST", ("/v1/messages",), WireAPI.ANTHROPIC)
    COUNT_TOKENS = _Route(
        "POST", ("/v1/messages/count_tokens",), WireAPI.ANTHROPIC, "/messages/count_tokens"
    )
    EMBEDDINGS = _Route("POST", ("/v1/embeddings", "/embeddings"), WireAPI.OPENAI, "/embeddings")
    MODELS = _Route("GET", ("/v1/models", "/models"), WireAPI.OPENAI)
    """Answered from the config (``ext_proc.routing.endpoints``), in the shape of
    the caller's SDK."""

    @property
    def method(self) -> str:
        return self.value.method

    @property
    def paths(self) -> tuple[str, ...]:
        return self.value.paths

    @property
    def api(self) -> WireAPI:
        return self.value.api

    @property
    def native_path(self) -> str | None:
        return self.value.native_path

    @property
    def is_chat(self) -> bool:
        """A conversation, which the preference router may read."""
        return self.method == "POST" and self.native_path is None


_BY_PATH: dict[str, Endpoint] = {path: e for e in Endpoint for path in e.paths}


def strip_query(path: str) -> str:
    """``path`` without its query and trailing slash."""
    return path.split("?", 1)[0].rstrip("/") or "/"


def endpoint_for(path: str) -> Endpoint | None:
    """The endpoint served on ``path`` (query and trailing slash ignored), if any."""
    return _BY_PATH.get(strip_query(path))


def served_paths() -> tuple[str, ...]:
    """``METHOD /v1/...`` for every endpoint, for telling a client what exists."""
    return tuple(sorted({f"{e.method} {p}" for e in Endpoint for p in e.paths if "/v1/" in p}))


def path_prefixes(shape: ErrorShape) -> tuple[str, ...]:
    """The client paths whose errors take ``shape``, as prefixes: Envoy's own
    error replies pick their shape by them."""
    paths = [p for e in Endpoint if e.api.error_shape is shape for p in e.paths]
    # A path under another in the list (``/v1/messages/count_tokens``) is covered by it.
    return tuple(p for p in paths if not any(p != q and p.startswith(q) for q in paths))


def client_api(path: str) -> WireAPI:
    """The API a client speaks, judged from its path alone: it picks the error
    shape even for paths Archway does not serve (``/v1/messages/batches``)."""
    path = strip_query(path)
    for endpoint in Endpoint:
        if endpoint.api is not WireAPI.OPENAI and path.startswith(endpoint.paths):
            return endpoint.api
    return WireAPI.OPENAI
