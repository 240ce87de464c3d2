"""The loaded config as frozen data: what every other layer reads.

A leaf: nothing here reads YAML or knows the loader. The lookup index over the
providers lives in ``models.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ext_proc.access.policy import AccessSettings
from ext_proc.config.fields import Kind, setting
from ext_proc.config.models import ModelIndex

if TYPE_CHECKING:
    # ext_proc.state reaches the catalog, which reads these types.
    from ext_proc.state import StateStorageConfig

__all__ = [
    "CT2_COMPUTE_TYPES",
    "CT2_DEVICES",
    "DEFAULT_LISTENER",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "DEFAULT_METRICS_PORT",
    "AffinitySettings",
    "ArchRouterOptions",
    "Config",
    "EmbeddingRouterOptions",
    "ExtProcTls",
    "GatewaySettings",
    "Listener",
    "Overrides",
    "ProviderConfig",
    "RemoteRouterOptions",
    "RouterOptions",
    "RouterSettings",
    "RoutingPreference",
    "TracingSettings",
]

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_METRICS_PORT = 9003
"""Next to the ext_proc server's 9002, so Archway's two ports are easy to remember."""


MESSAGE_FORMATS = ("openai",)


@dataclass(frozen=True)
class Listener:
    """An Envoy listener that accepts LLM client traffic."""

    name: str
    address: str = setting(Kind.TEXT)
    port: int = setting(Kind.INTEGER, low=0, high=65535)
    timeout_s: float = setting(Kind.DURATION, key="timeout")
    message_format: str = setting(Kind.CHOICE, "openai", choices=MESSAGE_FORMATS, what="format")
    max_retries: int | None = setting(Kind.INTEGER, None, low=0, high=10)
    """Plano's: how often Envoy retries a request on a connect error, reset, 429 or
    5xx; ``None``: only failover chains retry."""


@dataclass(frozen=True)
class ProviderConfig:
    """One configured model (an entry of ``llm_providers``/``model_providers``)."""

    model: str
    """As written: ``openai/gpt-5.2``, or ``openai/*`` for a wildcard."""
    provider: str
    """The part before the first ``/``: ``openai``."""
    model_id: str
    """The part after the first ``/``: ``gpt-5.2`` (may itself contain ``/``), or ``*``."""
    name: str
    """``name`` from the config, else ``model``."""
    access_key: str | None = field(default=None, repr=False)
    """The secret itself. Never printed: ``repr`` hides it."""
    access_key_ref: str | None = None
    """How the key was written when it came from the environment (``$OPENAI_API_KEY``),
    so tools can say where it came from without showing it."""
    default: bool = setting(Kind.BOOLEAN, False)
    base_url: str | None = setting(Kind.URL, None)
    provider_interface: str | None = setting(Kind.TEXT, None)
    passthrough_auth: bool = setting(Kind.BOOLEAN, False)
    http_host: str | None = setting(Kind.TEXT, None)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Extra upstream headers. Hidden from ``repr``: values often carry credentials."""
    fallbacks: tuple[str, ...] = ()
    """Models (``provider/model``) to try in order when this one fails with a
    connect error, 429 or 5xx (an Archway extension)."""
    timeout_s: float | None = setting(Kind.DURATION, None, key="timeout", positive=True)
    """Per-attempt timeout for this provider; ``None``: the listener's timeout."""
    line: int | None = None
    """Line of the entry in the config file, for messages."""

    @property
    def wildcard(self) -> bool:
        return self.model_id == "*"

    @property
    def interface(self) -> str:
        """The catalog entry that describes this provider's wire protocol."""
        return self.provider_interface or self.provider


@dataclass(frozen=True)
class RoutingPreference:
    """A route the preference router can choose, and the models that serve it
    (in order of preference; the first is used, the rest back it up)."""

    name: str
    description: str
    models: tuple[str, ...]
    examples: tuple[str, ...] = ()
    """Example user requests for this route (an Archway extension, ``examples:``);
    the embedding router compares conversations with them."""
    fallbacks: tuple[str, ...] = ()
    """The models after the first that Envoy tries, in order, when the first fails
    with a connect error, 429 or 5xx: those of ``models`` that speak its API."""


CT2_DEVICES = ("auto", "cpu", "cuda")
CT2_COMPUTE_TYPES = (
    "auto",
    "default",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


@dataclass(frozen=True)
class RouterOptions:
    """A router backend's own settings: a subclass of ``setting`` fields, which the
    loader reads. It is registered with the backend's builder in
    ``ext_proc/router/factory.py``, the one list of backends."""


@dataclass(frozen=True)
class ArchRouterOptions(RouterOptions):
    """Settings only the in-process CTranslate2 backend has."""

    device: str = setting(Kind.CHOICE, "auto", choices=CT2_DEVICES, what="device")
    compute_type: str = setting(Kind.CHOICE, "auto", choices=CT2_COMPUTE_TYPES, what="compute type")
    """CTranslate2's: ``auto`` takes the fastest the device supports (int8 on a CPU)."""
    intra_threads: int = setting(Kind.INTEGER, 0, low=0)
    """Threads per generation; 0 lets CTranslate2 use one per core. On the 1.5B
    shape two threads beat one on a 2-core machine (bench/router_bench.py); one is
    better for tiny models, or when other processes need the cores."""
    max_batch_size: int | None = setting(Kind.INTEGER, None, low=1, high=256)
    """``None``: 8 on a GPU, 1 on a CPU. A CPU's prefill is compute-bound, and
    CTranslate2 decodes the part of longer prompts past the shortest one token by
    token, so a batch of four different conversations took twice as long as four
    one after another (bench/router_bench.py)."""
    batch_wait_s: float = setting(Kind.DURATION, 0.002, key="batch_wait")
    """How long the first request of a batch waits for others to join it."""
    max_new_tokens: int | None = setting(Kind.INTEGER, None, low=1, high=4096)
    """``None``: just enough to tell the answers apart once their shared start
    (``{"route": "``, put in the prompt) is given: usually one or two tokens."""
    static_prompt: bool = setting(Kind.BOOLEAN, True)
    """Cache the model state for the part of the prompt that only the config fixes."""


@dataclass(frozen=True)
class RemoteRouterOptions(RouterOptions):
    """Settings only the remote backend has: an OpenAI-compatible endpoint
    (vLLM, Ollama, llama.cpp's server) that serves Arch-Router."""

    endpoint: str = setting(Kind.URL, required="`endpoint: http://HOST:PORT/v1`")
    """Base URL, e.g. ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended."""
    model: str = setting(Kind.TEXT, required="`model: NAME`, as the endpoint names Arch-Router")
    access_key: str | None = setting(Kind.SECRET, None, repr=False)
    max_new_tokens: int | None = setting(Kind.INTEGER, None, low=1, high=4096)


@dataclass(frozen=True)
class EmbeddingRouterOptions(RouterOptions):
    """Settings only the embedding backend has. The decision defaults were tuned
    on the dev split of tests/data/routing_set.yaml (see bench/)."""

    device: str = setting(Kind.CHOICE, "cpu", choices=CT2_DEVICES, what="device")
    compute_type: str = setting(Kind.CHOICE, "auto", choices=CT2_COMPUTE_TYPES, what="compute type")
    """``auto``: int8 on a CPU, within 0.996 cosine of float32 and twice as fast."""
    intra_threads: int = setting(Kind.INTEGER, 0, low=0)
    """0 lets CTranslate2 pick (one per core, up to four)."""
    max_batch_size: int = setting(Kind.INTEGER, 32, low=1, high=1024)
    """Requests whose turns share one encoder call."""
    # Cosines live in [-1, 1]: a threshold or margin outside that is a typo.
    threshold: float = setting(Kind.NUMBER, 0.05, low=-1.0, high=1.0)
    """Below this cosine to its best route, a conversation is ``other``."""
    margin: float = setting(Kind.NUMBER, 0.1, low=-2.0, high=2.0)
    """``other`` when the background of everyday requests beats every route on the
    latest user turn by more than this."""
    history_weight: float = setting(Kind.NUMBER, 0.3, low=0.0, high=1.0)
    """Each older user turn's weight relative to the next newer one."""
    context_margin: float = setting(Kind.NUMBER, 0.2, low=0.0, high=2.0)
    """Older user turns are read only when the latest turn's best route leads the
    runner-up by less than this (a follow-up that cannot stand alone)."""
    classifier_weight: float = setting(Kind.NUMBER, 0.3, low=0.0, high=10.0)
    """Of the route classifier's logit in a route's score; 0: nearest vector alone."""
    other_examples: tuple[str, ...] | None = setting(Kind.EXAMPLES, None)
    """Replaces the built-in background of off-topic requests; ``None``: built-in."""


@dataclass(frozen=True)
class RouterSettings:
    """The top-level ``router:`` section (an Archway extension): which preference
    router runs, and the settings every backend shares."""

    backend: str
    model_path: Path | None
    """A local model directory, made absolute (relative paths are from the config file)."""
    timeout_s: float = setting(Kind.DURATION, 5.0, key="timeout", positive=True)
    """Past this, the request goes to the default model with ``x-archway-route: timeout``."""
    token_budget: int = setting(Kind.INTEGER, 2048, low=16)
    """Tokens of conversation the router reads, counted with the model's tokenizer."""
    max_messages: int = setting(Kind.INTEGER, 16, low=1)
    options: RouterOptions = field(default_factory=ArchRouterOptions)
    line: int | None = None


@dataclass(frozen=True)
class Overrides:
    """The parts of Plano's ``overrides`` section that Archway uses."""

    upstream_connect_timeout_s: float = setting(
        Kind.DURATION, 5.0, key="upstream_connect_timeout", positive=True
    )
    upstream_tls_ca_path: str = setting(Kind.TEXT, "/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry tracing (``archway.tracing``): where spans go and how many."""

    collector_host: str
    collector_port: int
    """An OTLP/gRPC collector. Envoy always exports there; Archway does too unless
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces variant) says otherwise."""
    sample_percent: float = 100.0
    """Envoy's random sampling of requests that arrive without a sampling decision."""


@dataclass(frozen=True)
class AffinitySettings:
    """Session affinity (Plano's ``routing.session_ttl_seconds`` and
    ``routing.session_max_entries``): how long and how many pins each ext_proc
    worker process keeps."""

    ttl_s: float = setting(Kind.SECONDS, 600.0, key="session_ttl_seconds", low=1)
    max_entries: int = setting(
        Kind.INTEGER, 10_000, key="session_max_entries", low=1, high=1_000_000
    )


@dataclass(frozen=True)
class ExtProcTls:
    """TLS on the Envoy -> Archway hop (``archway.ext_proc_tls``), for setups
    where that hop crosses a network. Paths are as each side sees them: Archway
    serves ``cert``/``key``; Envoy trusts ``ca``, or ``cert`` itself when no
    ``ca`` is given (a self-signed certificate)."""

    cert: str = setting(Kind.TEXT, required="cert: /etc/archway/tls/tls.crt")
    key: str = setting(Kind.TEXT, required="key: /etc/archway/tls/tls.key")
    ca: str | None = setting(Kind.TEXT, None)
    server_name: str | None = setting(Kind.TEXT, None)
    """The name Envoy sends as SNI and checks in the certificate; default: the
    ext_proc address when it is a host name."""

    @property
    def trusted_ca(self) -> str:
        return self.ca or self.cert


EXT_PROC_MESSAGES = ("one", "two")
"""How many ext_proc messages the routing filter sends per LLM request."""


@dataclass(frozen=True)
class GatewaySettings:
    """Archway's own settings (the optional top-level ``archway:`` section, an
    Archway extension that Plano does not have)."""

    ext_proc_address: str = setting(Kind.TEXT, "127.0.0.1")
    ext_proc_port: int = setting(Kind.INTEGER, 9002, low=0, high=65535)
    ext_proc_uds: str | None = setting(Kind.TEXT, None)
    """A Unix socket path: Envoy reaches the ext_proc server there, not over TCP
    (the sidecar topologies); ``serve`` listens on it with one process."""
    admin_address: str = setting(Kind.TEXT, "127.0.0.1")
    admin_port: int = setting(Kind.INTEGER, 9901, low=0, high=65535)
    max_request_body_bytes: int = setting(Kind.INTEGER, DEFAULT_MAX_REQUEST_BODY_BYTES, low=1)
    message_timeout_s: float = setting(Kind.DURATION, 5.0, key="message_timeout", positive=True)
    failure_mode_allow: bool = setting(Kind.BOOLEAN, False)
    ext_proc_messages: str = setting(
        Kind.CHOICE, "one", choices=EXT_PROC_MESSAGES, what="message count"
    )
    """``one``: Envoy sends the routing filter only the body, and a Lua filter applies
    the decision (``ext_proc.deploy.one_message``); ``two``: headers, then body."""
    metrics_address: str = setting(Kind.TEXT, "127.0.0.1")
    metrics_port: int | None = DEFAULT_METRICS_PORT
    """The Prometheus endpoint's port: 0 picks a free one, ``None`` turns it off."""
    ext_proc_tls: ExtProcTls | None = None
    """``None``: the hop is cleartext HTTP/2 (loopback or a Unix socket)."""
    tracing: TracingSettings | None = None
    """``None``: no tracing in Envoy; Archway traces only if the OTEL_* variables ask."""


@dataclass(frozen=True)
class Config:
    """A loaded, validated config. Every cross-reference has been checked."""

    listeners: tuple[Listener, ...]
    providers: tuple[ProviderConfig, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    alias_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per alias, the models (``provider/model``) to try when its target fails."""
    routing_preferences: tuple[RoutingPreference, ...] = ()
    overrides: Overrides = field(default_factory=Overrides)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    router: RouterSettings | None = None
    """``None`` when the config has no ``router:`` section: open models go to the default."""
    affinity: AffinitySettings = field(default_factory=AffinitySettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    """Client keys, token limits (Plano's ``ratelimits``) and where counters live."""
    state_storage: StateStorageConfig | None = None
    """Plano's ``state_storage``; ``None``: Responses conversation state is off."""
    version: str | None = None
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def default_provider(self) -> ProviderConfig | None:
        return next((p for p in self.providers if p.default), None)

    @cached_property
    def models(self) -> ModelIndex:
        """The providers indexed by full name, wildcard and bare id (built once)."""
        return ModelIndex.build(self.providers)


DEFAULT_LISTENER = Listener(name="egress_traffic", address="0.0.0.0", port=12000, timeout_s=300.0)
