"""Config objects built in code, for tests that must not depend on the YAML loader."""

from __future__ import annotations

from ext_proc.config import Config, Listener, ProviderConfig, RoutingPreference


def provider(model: str, **kwargs: object) -> ProviderConfig:
    prefix, _, model_id = model.partition("/")
    fields: dict[str, object] = {"name": model, "access_key": f"sk-{prefix}-secret"}
    fields.update(kwargs)
    return ProviderConfig(model=model, provider=prefix, model_id=model_id, **fields)  # type: ignore[arg-type]


def config(
    *providers: ProviderConfig,
    aliases: dict[str, str] | None = None,
    preferences: tuple[RoutingPreference, ...] = (),
) -> Config:
    return Config(
        listeners=(Listener("egress_traffic", "127.0.0.1", 0, 30.0),),
        providers=tuple(providers),
        aliases=aliases or {},
        routing_preferences=preferences,
    )
