"""Archway's configuration: a Plano config file as typed, validated, frozen data.

Both Plano formats load: the spec's (``listeners.egress_traffic``, ``llm_providers``
with inline ``routing_preferences``) and the current one (``version``, a list of
``listeners``, ``model_providers``, top-level ``routing_preferences``).
"""

from ext_proc.config.loader import load_config, load_config_text, parse_duration
from ext_proc.config.models import ModelIndex
from ext_proc.config.problems import ConfigError
from ext_proc.config.types import (
    DEFAULT_LISTENER,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DEFAULT_METRICS_PORT,
    ROUTER_BACKENDS,
    AffinitySettings,
    ArchRouterOptions,
    Config,
    EmbeddingRouterOptions,
    GatewaySettings,
    Listener,
    Overrides,
    ProviderConfig,
    RemoteRouterOptions,
    RouterOptions,
    RouterSettings,
    RoutingPreference,
    TracingSettings,
)

__all__ = [
    "DEFAULT_LISTENER",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "DEFAULT_METRICS_PORT",
    "ROUTER_BACKENDS",
    "AffinitySettings",
    "ArchRouterOptions",
    "Config",
    "ConfigError",
    "EmbeddingRouterOptions",
    "GatewaySettings",
    "Listener",
    "ModelIndex",
    "Overrides",
    "ProviderConfig",
    "RemoteRouterOptions",
    "RouterOptions",
    "RouterSettings",
    "RoutingPreference",
    "TracingSettings",
    "load_config",
    "load_config_text",
    "parse_duration",
]
