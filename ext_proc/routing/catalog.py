"""The provider catalog: where each LLM provider lives and how it is spoken to.

Pure data and pure functions: no I/O. ``upstream_for`` turns a configured provider
into the endpoint Envoy connects to (one cluster per distinct endpoint), and
``request_path`` / ``auth_headers`` say what the forwarded request looks like.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from urllib.parse import quote, urlsplit

from ext_proc.apis import COMMON_DIALECT, Dialect, WireAPI
from ext_proc.config.types import ProviderConfig

__all__ = [
    "CATALOG",
    "AuthStyle",
    "ProviderSpec",
    "Upstream",
    "auth_headers",
    "failover_cluster_name",
    "provider_api",
    "provider_dialect",
    "request_path",
    "spec_for",
    "upstream_for",
]


class AuthStyle(Enum):
    """How a provider takes its key: the header, and its value around the key."""

    BEARER = ("authorization", "Bearer {key}")
    X_API_KEY = ("x-api-key", "{key}")
    """Anthropic; it also wants ``anthropic-version`` (a static header)."""
    API_KEY = ("api-key", "{key}")
    """Azure OpenAI."""

    def header(self, key: str) -> tuple[str, str]:
        name, template = self.value
        return name, template.format(key=key)


ANTHROPIC_VERSION = "2023-06-01"
AZURE_API_VERSION = "2024-10-21"

_OPENAI_REASONING = Dialect(max_tokens_field="max_completion_tokens")
"""OpenAI's own servers: reasoning models refuse ``max_tokens``."""


@dataclass(frozen=True)
class ProviderSpec:
    """Everything about one provider that differs from its API's common form."""

    name: str
    api: WireAPI
    auth: AuthStyle
    base_url: str | None
    """Default base URL; ``None`` where every deployment has its own (``base_url`` required)."""
    default_prefix: str = "/v1"
    """Path prefix used when a configured ``base_url`` has no path of its own."""
    static_headers: tuple[tuple[str, str], ...] = ()
    bare_path: str | None = None
    """The request path, ``{model_id}`` filled in, for a base URL with no path of
    its own; ``None``: the prefix and the API's path."""
    dialect: Dialect = COMMON_DIALECT


def _openai_compatible(name: str, base_url: str | None, prefix: str = "/v1") -> ProviderSpec:
    return ProviderSpec(name, WireAPI.OPENAI, AuthStyle.BEARER, base_url, prefix)


CATALOG: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec(
            "openai",
            WireAPI.OPENAI,
            AuthStyle.BEARER,
            "https://api.openai.com/v1",
            dialect=_OPENAI_REASONING,
        ),
        ProviderSpec(
            "anthropic",
            WireAPI.ANTHROPIC,
            AuthStyle.X_API_KEY,
            "https://api.anthropic.com/v1",
            static_headers=(("anthropic-version", ANTHROPIC_VERSION),),
        ),
        # Gemini through its OpenAI-compatible endpoint.
        _openai_compatible(
            "gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "/v1beta/openai"
        ),
        _openai_compatible("groq", "https://api.groq.com/openai/v1", "/openai/v1"),
        _openai_compatible("mistral", "https://api.mistral.ai/v1"),
        _openai_compatible("deepseek", "https://api.deepseek.com/v1"),
        _openai_compatible("xai", "https://api.x.ai/v1"),
        _openai_compatible("together_ai", "https://api.together.xyz/v1"),
        _openai_compatible("openrouter", "https://openrouter.ai/api/v1", "/api/v1"),
        _openai_compatible("moonshotai", "https://api.moonshot.ai/v1"),
        _openai_compatible("ollama", None),
        # A bare resource URL is Azure's per-deployment API; a base_url with a
        # path (``.../openai/v1``) is its OpenAI-style one.
        ProviderSpec(
            "azure_openai",
            WireAPI.OPENAI,
            AuthStyle.API_KEY,
            None,
            default_prefix="",
            bare_path=(
                f"/openai/deployments/{{model_id}}{WireAPI.OPENAI.upstream_path}"
                f"?api-version={AZURE_API_VERSION}"
            ),
            dialect=_OPENAI_REASONING,
        ),
        # Plano's `provider_interface: openai` on a custom base_url lands here too.
        _openai_compatible("custom", None),
        # The rest of Plano's provider list, so its configs load unchanged. Each
        # deployment of Bedrock is regional, so Plano (and Archway) require base_url:
        # https://bedrock-runtime.<region>.amazonaws.com; its API keys go as Bearer.
        ProviderSpec("amazon_bedrock", WireAPI.BEDROCK, AuthStyle.BEARER, None, default_prefix=""),
        # Plano's own router and orchestrator models, served OpenAI-style (vLLM,
        # Ollama) at the base_url the config gives.
        _openai_compatible("plano", None),
        _openai_compatible("qwen", None, "/compatible-mode/v1"),
        _openai_compatible("xiaomi", "https://api.xiaomimimo.com/v1"),
        _openai_compatible("zhipu", "https://open.bigmodel.cn/api/paas/v4", "/api/paas/v4"),
        _openai_compatible("digitalocean", "https://inference.do-ai.run/v1"),
        _openai_compatible("vercel", "https://ai-gateway.vercel.sh/v1"),
        _openai_compatible("edenai", "https://api.edenai.run/v3", "/v3"),
        # ChatGPT subscriptions through Codex's backend: the client's own OAuth
        # token is forwarded (see config.providers), with the headers Codex sends.
        ProviderSpec(
            "chatgpt",
            WireAPI.OPENAI,
            AuthStyle.BEARER,
            "https://chatgpt.com/backend-api/codex",
            "/backend-api/codex",
            static_headers=(
                ("originator", "codex_cli_rs"),
                ("user-agent", "codex_cli_rs/0.0.0 (Unknown 0; unknown) unknown"),
            ),
        ),
    )
}

PROVIDERS_REQUIRING_BASE_URL = frozenset(n for n, s in CATALOG.items() if s.base_url is None)


def spec_for(provider: ProviderConfig) -> ProviderSpec | None:
    """The catalog entry for a configured provider, or ``None`` when it is unknown.

    ``provider_interface`` wins over the model's prefix, so ``mycorp/llama`` with
    ``provider_interface: openai`` speaks OpenAI's API at its own ``base_url``.
    """
    return CATALOG.get(provider.interface)


@dataclass(frozen=True)
class Upstream:
    """An endpoint Envoy connects to: one cluster each."""

    cluster: str
    host: str
    port: int
    tls: bool
    path_prefix: str
    host_header: str
    """The ``Host``/``:authority`` the upstream expects (``http_host`` wins)."""

    @property
    def sni(self) -> str | None:
        return self.host if self.tls else None


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def upstream_for(provider: ProviderConfig) -> Upstream:
    """The endpoint a configured provider's requests go to.

    Raises ``ValueError`` when the provider has no usable base URL; config
    validation reports that earlier, with a line number.
    """
    spec = spec_for(provider)
    base_url = provider.base_url or (spec.base_url if spec else None)
    if not base_url:
        raise ValueError(f"{provider.model}: no base_url and no catalog default")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{provider.model}: base_url {base_url!r} is not an http(s) URL")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = parts.path.rstrip("/")
    if not path:
        path = spec.default_prefix if spec else "/v1"
    host = parts.hostname
    standard_port = port == (443 if tls else 80)
    host_header = provider.http_host or (host if standard_port else f"{host}:{port}")
    if provider.base_url is None:
        # Catalog endpoints are shared by every model of that provider.
        cluster = provider.provider if spec is None else spec.name
    else:
        cluster = _UNSAFE.sub("_", f"{provider.provider}_{host}_{port}")
    return Upstream(cluster, host, port, tls, path, host_header)


def provider_api(provider: ProviderConfig) -> WireAPI:
    """The API a configured provider speaks: its catalog entry's, else OpenAI's
    (what every unknown ``provider_interface`` is served as)."""
    spec = spec_for(provider)
    return spec.api if spec is not None else WireAPI.OPENAI


def provider_dialect(provider: ProviderConfig) -> Dialect:
    spec = spec_for(provider)
    return spec.dialect if spec is not None else COMMON_DIALECT


def request_path(
    provider: ProviderConfig,
    upstream: Upstream,
    *,
    stream: bool = False,
    suffix: str | None = None,
) -> str:
    """The upstream path for a chat request: in the provider's own API, since
    requests from clients of another API are translated to it. ``suffix``:
    another endpoint of that API (``/embeddings``) in place of chat's."""
    spec = spec_for(provider)
    api = provider_api(provider)
    if spec is not None and spec.bare_path is not None and not upstream.path_prefix:
        path = spec.bare_path.format(model_id=provider.model_id)
        if suffix is not None:
            path = path.replace(api.upstream_path, suffix, 1)
        return path
    if suffix is not None:
        return upstream.path_prefix + suffix
    if api is WireAPI.BEDROCK:
        # The model id is one path segment: ':' and the '/' of inference-profile
        # ARNs are escaped.
        path = api.upstream_path.format(model_id=quote(provider.model_id, safe=""))
        return upstream.path_prefix + path + ("-stream" if stream else "")
    return upstream.path_prefix + api.upstream_path


def auth_headers(provider: ProviderConfig) -> tuple[tuple[str, str], ...]:
    """Headers that carry the provider's credentials and required versions,
    followed by the provider's configured extra ``headers``."""
    spec = spec_for(provider)
    style = spec.auth if spec else AuthStyle.BEARER
    out: list[tuple[str, str]] = []
    if provider.access_key and not provider.passthrough_auth:
        out.append(style.header(provider.access_key))
    if spec is not None:
        out.extend(spec.static_headers)
    out.extend((k.lower(), v) for k, v in provider.headers)
    return tuple(out)


def failover_cluster_name(clusters: tuple[str, ...]) -> str:
    """The cluster whose priority levels are ``clusters``, in order: one per
    distinct chain of upstream endpoints, named so the access log reads well."""
    return "failover_" + "__".join(clusters)
