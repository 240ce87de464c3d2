"""Loading a config: the top level of the file, each section handed to its reader.

Every problem in the file is gathered before ``ConfigError`` lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import yaml

from ext_proc.config.access import read_access
from ext_proc.config.listeners import check_ports, read_listeners
from ext_proc.config.preferences import read_preferences
from ext_proc.config.problems import ConfigError
from ext_proc.config.providers import read_aliases, read_providers
from ext_proc.config.reader import FLOAT_TAG, INT_TAG, Reader, describe, listing
from ext_proc.config.router_settings import read_router
from ext_proc.config.settings import (
    read_affinity,
    read_gateway,
    read_overrides,
    read_state_storage,
)
from ext_proc.config.types import Config

__all__ = ["load_config", "load_config_text"]

_TOP_KEYS = (
    "version",
    "listeners",
    "llm_providers",
    "model_providers",
    "model_aliases",
    "routing_preferences",
    "overrides",
    "archway",
    "router",
    "routing",
    "ratelimits",
    "state_storage",
)
_PLANO_ONLY_SECTIONS = (
    "agents",
    "filters",
    "endpoints",
    "prompt_targets",
    "tracing",
    "mode",
    "prompt_guards",
    "model_metrics_sources",
    "prompt_caching",
    "system_prompt",
)
_PLANO_VERSIONS = ("v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.3.0", "v0.4.0")


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    allow_missing_env: bool = False,
) -> Config:
    """Load and validate the config file at ``path``.

    ``$VAR``/``${VAR}`` are taken from ``environ`` (default ``os.environ``), else
    from a ``.env`` file beside the config. Raises ``ConfigError`` listing every
    problem found. ``allow_missing_env`` lets ``access_key`` variables be unset
    (they become ``None``), for tools that never send a request.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            [f"{source}: cannot read the config file: {reason}; check the path"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: the config file is not UTF-8 text ({exc.reason}); save it as UTF-8"]
        ) from None
    return load_config_text(
        text, source=source, environ=environ, allow_missing_env=allow_missing_env
    )


def load_config_text(
    text: str,
    *,
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
    allow_missing_env: bool = False,
) -> Config:
    """Load and validate config ``text``; ``source`` names it in messages and
    locates the ``.env`` file. See ``load_config``."""
    r = Reader(
        source=Path(source) if source is not None else None,
        environ=os.environ if environ is None else environ,
        allow_missing_env=allow_missing_env,
    )
    root = r.compose(text)
    config = _build(r, root) if root is not None else None
    problems = r.errors.lines()
    if problems or config is None:
        raise ConfigError(problems)
    return config


def _build(r: Reader, root: yaml.MappingNode) -> Config | None:
    top = r.pairs(root, "")
    for key, (key_node, _) in top.items():
        if key in _PLANO_ONLY_SECTIONS:
            r.warn(key_node, key, "Plano section not implemented by Archway; ignored")
        elif key not in _TOP_KEYS:
            r.unknown_key(key_node, "", key, (*_TOP_KEYS, *_PLANO_ONLY_SECTIONS))

    def value(key: str) -> yaml.Node | None:
        entry = top.get(key)
        return entry[1] if entry is not None else None

    version = _version(r, value("version"))
    listeners = read_listeners(r, value("listeners"))
    models = read_providers(r, top)
    aliases, alias_fallbacks = read_aliases(r, value("model_aliases"), models)
    preferences = read_preferences(r, value("routing_preferences"), models)
    overrides = read_overrides(r, value("overrides"))
    gateway = read_gateway(r, value("archway"))
    affinity = read_affinity(r, value("routing"))
    router = read_router(r, top.get("router"))
    state_storage = read_state_storage(r, value("state_storage"))
    if router is not None and not preferences:
        r.warn(
            top["router"][0],
            "router",
            "a router is configured but there are no routing_preferences, so it is never asked",
        )
    if listeners is not None and gateway is not None:
        check_ports(r, top, listeners, gateway)
    access = read_access(
        r,
        value("ratelimits"),
        _entry(r, value("routing"), "routing", "session_cache"),
        _entries(r, value("archway"), "archway"),
        [p.model for p in models.providers],
        aliases,
    )
    if (
        listeners is None
        or overrides is None
        or gateway is None
        or affinity is None
        or access is None
    ):
        return None
    return Config(
        listeners=tuple(listener for listener, _ in listeners),
        providers=models.providers,
        aliases=aliases,
        alias_fallbacks=alias_fallbacks,
        routing_preferences=preferences,
        overrides=overrides,
        gateway=gateway,
        router=router,
        affinity=affinity,
        access=access,
        state_storage=state_storage,
        version=version,
        source=r.source.resolve() if r.source is not None else None,
        warnings=tuple(r.warnings.lines()),
    )


def _entries(r: Reader, node: yaml.Node | None, path: str) -> dict[str, yaml.Node]:
    """A section's keys for a second reader (the first reported any problem)."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key: value for key, (_, value) in r.pairs(node, path).items()}


def _entry(r: Reader, node: yaml.Node | None, path: str, key: str) -> yaml.Node | None:
    return _entries(r, node, path).get(key)


def _version(r: Reader, node: yaml.Node | None) -> str | None:
    if isinstance(node, yaml.ScalarNode) and node.tag in (INT_TAG, FLOAT_TAG):
        r.error(
            node,
            "version",
            f"expected a string, got {describe(node)}",
            f'put it in quotes: version: "{node.value}"',
        )
        return None
    version = r.text(node, "version")
    if version is not None and version not in _PLANO_VERSIONS:
        r.warn(
            node,
            "version",
            f"{version!r} is not a Plano config version ({listing(_PLANO_VERSIONS)})",
        )
    return version
