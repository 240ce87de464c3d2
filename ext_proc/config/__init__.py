"""Archway's configuration: a Plano config file as typed, validated, frozen data.

Both Plano formats load: the spec's (``listeners.egress_traffic``, ``llm_providers``
with inline ``routing_preferences``) and the current one (``version``, a list of
``listeners``, ``model_providers``, top-level ``routing_preferences``).

``types`` is the data, ``models`` the index of which model serves a name,
``loader`` the entry point that hands each section to its reader (``listeners``,
``providers``, ``preferences``, ``router_settings``, ``settings``), all built on
``reader`` (YAML nodes, lines, ``$VAR``) and ``fields`` (declared settings).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ext_proc.config.models import ModelIndex
from ext_proc.config.problems import ConfigError
from ext_proc.config.types import (
    DEFAULT_LISTENER,
    DEFAULT_MAX_REQUEST_BODY_BYTES,
    DEFAULT_METRICS_PORT,
    AffinitySettings,
    ArchRouterOptions,
    Config,
    EmbeddingRouterOptions,
    ExtProcTls,
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
from ext_proc.config.values import parse_duration

if TYPE_CHECKING:
    from ext_proc.config.loader import load_config, load_config_text

__all__ = [
    "DEFAULT_LISTENER",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "DEFAULT_METRICS_PORT",
    "AffinitySettings",
    "ArchRouterOptions",
    "Config",
    "ConfigError",
    "EmbeddingRouterOptions",
    "ExtProcTls",
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


def __getattr__(name: str) -> Any:
    # The loader checks providers against routing/catalog.py and router options
    # against router/factory.py, and both import config.types, which runs this
    # file. Loading the loader on first use keeps `import ext_proc.config.types`
    # free of them, so the modules import each other in one direction only.
    if name in ("load_config", "load_config_text"):
        from ext_proc.config import loader

        return getattr(loader, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
