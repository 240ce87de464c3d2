"""Model resolution: which configured model serves a requested ``model``.

Pure functions over a ``RoutingTable`` that is built once per config, so a
request costs a few dictionary look-ups.

Order, for a requested name (``routing.decide`` tells open names from named ones):
1. no model, ``""`` or ``auto``: the preference router's pick when a route is
   given, else the default model (``resolve_open``);
2. an alias: its target, then as below (``resolve_named``);
3. ``provider/model``: that configured model, else the provider's wildcard
   (``openai/*`` serves any ``openai/<id>``);
4. a bare model id served by exactly one configured model (explicit models
   first, then a single wildcard provider), as the config's ``ModelIndex`` says;
5. anything else: a 400 that lists what is available.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from ext_proc.config import Config, ModelIndex, ProviderConfig
from ext_proc.errors import GatewayError
from ext_proc.routing.catalog import Upstream, failover_cluster_name, upstream_for

__all__ = [
    "Resolution",
    "RoutingDecision",
    "RoutingTable",
    "build_routing_table",
    "configured_entry",
    "failover_chains",
    "resolve_named",
    "resolve_open",
    "resolve_pinned",
]

_MAX_LISTED = 20


class Resolution(StrEnum):
    DIRECT = "direct"
    ALIAS = "alias"
    ROUTER = "router"
    DEFAULT = "default"


@dataclass(frozen=True)
class RoutingDecision:
    """Where a request goes, and why. Plain data: the processor turns it into
    header and body mutations."""

    provider: ProviderConfig
    upstream: Upstream
    model: str
    """``provider/model_id`` as reported to the client (``openai/gpt-5.2``)."""
    upstream_model: str
    """The id the provider expects in the body's ``model`` (``gpt-5.2``)."""
    resolution: Resolution
    requested: str | None = None
    alias: str | None = None
    route: str | None = None
    """The preference route chosen or the reason it was not (``other``, ``error``)."""
    fallbacks: tuple[str, ...] = ()
    """Models (``provider/model``) Envoy tries, in order, if this one fails."""
    cluster: str = ""
    """The cluster Envoy routes to: the upstream's, or the failover cluster whose
    priority levels are this model's upstream and then each fallback's."""


@dataclass(frozen=True)
class RoutingTable:
    """Everything resolution needs, precomputed from a ``Config``."""

    config: Config
    models: ModelIndex
    upstreams: dict[str, Upstream]
    """Keyed by ``ProviderConfig.model``."""
    aliases: dict[str, str] = field(default_factory=dict)
    alias_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    routes: dict[str, str] = field(default_factory=dict)
    """Preference route name -> the model that serves it."""
    route_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Preference route name -> the models after its first (Plano's ``models``
    list), tried in order when the first fails."""

    @property
    def default(self) -> ProviderConfig | None:
        return self.config.default_provider

    def available(self) -> list[str]:
        """Names a client may ask for, for error messages and ``/v1/models``."""
        return [p.model for p in self.config.providers] + list(self.aliases)


def build_routing_table(config: Config) -> RoutingTable:
    routes = {pref.name: pref.models[0] for pref in config.routing_preferences if pref.models}
    route_fallbacks = {
        pref.name: pref.fallbacks for pref in config.routing_preferences if pref.fallbacks
    }
    return RoutingTable(
        config=config,
        models=config.models,
        upstreams={p.model: upstream_for(p) for p in config.providers},
        aliases=dict(config.aliases),
        alias_fallbacks=dict(config.alias_fallbacks),
        routes=routes,
        route_fallbacks=route_fallbacks,
    )


def resolve_named(table: RoutingTable, requested: str) -> RoutingDecision:
    """The model a client named (not an open one): an alias's target, or the
    configured model ``requested`` names. Raises ``GatewayError`` (400) when
    nothing, or more than one model, serves it."""
    target = table.aliases.get(requested)
    if target is not None:
        provider, model_id = _lookup(table, target)
        return _decision(table, provider, model_id, Resolution.ALIAS, requested, alias=requested)
    provider, model_id = _lookup(table, requested)
    return _decision(table, provider, model_id, Resolution.DIRECT, requested)


def resolve_pinned(
    table: RoutingTable,
    requested: str | None,
    model: str,
    resolution: Resolution,
    route: str | None,
) -> RoutingDecision:
    """An open-model request sent to ``model``, the one its session was pinned
    to, with the resolution and route of the decision that pinned it.

    Raises ``GatewayError`` when ``table`` no longer serves ``model`` (a reload
    removed it): the caller drops the pin and decides afresh.
    """
    provider, model_id = _lookup(table, model)
    fallbacks = None
    if route is not None and table.routes.get(route) == model:
        fallbacks = table.route_fallbacks.get(route)
    return _decision(
        table, provider, model_id, resolution, requested, route=route, fallbacks=fallbacks
    )


def resolve_open(table: RoutingTable, requested: str | None, route: str | None) -> RoutingDecision:
    """An open-model request: the preference route's model when ``route`` is one
    of the config's, else the default model. ``route`` may be a reason the router
    gave none (``other``, ``error``, ``timeout``); it is reported either way."""
    if route is not None and route in table.routes:
        provider, model_id = _lookup(table, table.routes[route])
        return _decision(
            table,
            provider,
            model_id,
            Resolution.ROUTER,
            requested,
            route=route,
            fallbacks=table.route_fallbacks.get(route),
        )
    default = table.default
    if default is None:
        raise GatewayError(
            400,
            "No model was given and no default model is configured. Send one of: "
            + _listing(table),
            code="model_required",
            param="model",
        )
    if default.wildcard:
        # A wildcard default has no model id of its own to send.
        raise GatewayError(
            400,
            f"No model was given and the default {default.model} is a wildcard; "
            f"send a model such as {default.provider}/<model-id>.",
            code="model_required",
            param="model",
        )
    return _decision(table, default, default.model_id, Resolution.DEFAULT, requested, route=route)


def configured_entry(models: ModelIndex, name: str) -> ProviderConfig | None:
    """The one configured entry serving ``name`` (``openai/*`` for a wildcard's
    model); ``None`` when none does or the name is ambiguous. For reporting."""
    provider = models.provider_for(name)
    if provider is None:
        names = models.serving(name)
        provider = models.provider_for(names[0]) if len(names) == 1 else None
    return provider


def _lookup(table: RoutingTable, name: str) -> tuple[ProviderConfig, str]:
    """The configured model serving ``name`` and the id to send upstream."""
    models = table.models
    # A full name (the common case, and every alias target and fallback) is
    # one or two dictionary look-ups; only a bare id needs ``serving``.
    provider = models.provider_for(name)
    if provider is None:
        names = models.serving(name)
        if len(names) > 1:
            raise _ambiguous(models, name, names)
        if not names:
            raise GatewayError(
                400,
                f"Model {name!r} is not configured on this gateway. Available: {_listing(table)}",
                code="model_not_found",
                param="model",
            )
        name = names[0]
        provider = models.provider_for(name)
        assert provider is not None
    if provider.wildcard:
        return provider, _wildcard_id(name.partition("/")[2])
    return provider, provider.model_id


def _ambiguous(models: ModelIndex, name: str, names: list[str]) -> GatewayError:
    if name in models.by_bare_id:
        message = f"it is served by {', '.join(names)}. Ask for one of them as provider/model."
    else:
        wildcards = ", ".join(p.model for p in models.wildcards.values())
        message = f"it could be served by {wildcards}. Ask for it as provider/model."
    return GatewayError(
        400, f"Model {name!r} is ambiguous: {message}", code="model_ambiguous", param="model"
    )


_MAX_MODEL_ID = 256


def _wildcard_id(model_id: str) -> str:
    """A client-chosen model id for a wildcard provider, checked before it goes
    into headers and the upstream body: visible ASCII only, as provider ids are."""
    if len(model_id) > _MAX_MODEL_ID or not all("!" <= c <= "~" for c in model_id):
        raise GatewayError(
            400,
            f"Model id must be 1-{_MAX_MODEL_ID} visible ASCII characters "
            "(no spaces or control characters).",
            code="invalid_model",
            param="model",
        )
    return model_id


def _chain(
    table: RoutingTable, first: Upstream, fallbacks: tuple[str, ...]
) -> tuple[Upstream, ...]:
    return (first, *(table.upstreams[_lookup(table, name)[0].model] for name in fallbacks))


def failover_chains(table: RoutingTable) -> dict[str, tuple[Upstream, ...]]:
    """Every failover cluster the config needs: its name, and the upstream of each
    priority level (the model's own first, then each fallback's), in order."""
    heads: list[tuple[ProviderConfig, tuple[str, ...]]] = [
        (p, p.fallbacks) for p in table.config.providers if p.fallbacks
    ]
    for alias, fallbacks in table.alias_fallbacks.items():
        heads.append((_lookup(table, table.aliases[alias])[0], fallbacks))
    for route, fallbacks in table.route_fallbacks.items():
        heads.append((_lookup(table, table.routes[route])[0], fallbacks))
    chains: dict[str, tuple[Upstream, ...]] = {}
    for provider, fallbacks in heads:
        chain = _chain(table, table.upstreams[provider.model], fallbacks)
        chains.setdefault(failover_cluster_name(tuple(u.cluster for u in chain)), chain)
    return chains


def _listing(table: RoutingTable) -> str:
    names = table.available()
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... ({len(names) - _MAX_LISTED} more; GET /v1/models lists all)"
    return shown or "(none)"


def _decision(
    table: RoutingTable,
    provider: ProviderConfig,
    model_id: str,
    resolution: Resolution,
    requested: str | None,
    *,
    alias: str | None = None,
    route: str | None = None,
    fallbacks: tuple[str, ...] | None = None,
) -> RoutingDecision:
    """``fallbacks``: the chain a route declares, which wins over the model's own."""
    upstream = table.upstreams[provider.model]
    if fallbacks is None:
        fallbacks = (
            table.alias_fallbacks.get(alias, provider.fallbacks) if alias else provider.fallbacks
        )
    cluster = upstream.cluster
    if fallbacks:
        cluster = failover_cluster_name(
            tuple(u.cluster for u in _chain(table, upstream, fallbacks))
        )
    return RoutingDecision(
        provider=provider,
        upstream=upstream,
        model=f"{provider.provider}/{model_id}",
        upstream_model=model_id,
        resolution=resolution,
        requested=requested,
        alias=alias,
        route=route,
        fallbacks=fallbacks,
        cluster=cluster,
    )
