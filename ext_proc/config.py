"""Archway's configuration: a Plano config file as typed, validated, frozen data.

Both Plano formats load: the spec's (``listeners.egress_traffic``, ``llm_providers``
with inline ``routing_preferences``) and the current one (``version``, a list of
``listeners``, ``model_providers``, top-level ``routing_preferences``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "Config",
    "ConfigError",
    "GatewaySettings",
    "Listener",
    "Overrides",
    "ProviderConfig",
    "RoutingPreference",
]

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` holds one line per problem,
    each naming the file, line and key path and saying how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Listener:
    """An Envoy listener that accepts LLM client traffic."""

    name: str
    address: str
    port: int
    timeout_s: float
    message_format: str = "openai"


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
    default: bool = False
    base_url: str | None = None
    provider_interface: str | None = None
    passthrough_auth: bool = False
    http_host: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
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
    (in order of preference; the first is used)."""

    name: str
    description: str
    models: tuple[str, ...]


@dataclass(frozen=True)
class Overrides:
    """The parts of Plano's ``overrides`` section that Archway uses."""

    upstream_connect_timeout_s: float = 5.0
    upstream_tls_ca_path: str = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class GatewaySettings:
    """Archway's own settings (the optional top-level ``archway:`` section, an
    Archway extension that Plano does not have)."""

    ext_proc_address: str = "127.0.0.1"
    ext_proc_port: int = 9002
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    message_timeout_s: float = 5.0
    failure_mode_allow: bool = False


@dataclass(frozen=True)
class Config:
    """A loaded, validated config. Every cross-reference has been checked."""

    listeners: tuple[Listener, ...]
    providers: tuple[ProviderConfig, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    routing_preferences: tuple[RoutingPreference, ...] = ()
    overrides: Overrides = field(default_factory=Overrides)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    version: str | None = None
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def default_provider(self) -> ProviderConfig | None:
        return next((p for p in self.providers if p.default), None)
