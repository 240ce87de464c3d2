"""Which configured models a model name can mean: the one index every lookup uses.

Request-time resolution, failover chains, metrics priming and ``archway
explain`` all ask the same question of a name (``openai/gpt-5.2``,
``gpt-5.2``, ``openai/some-new-id``); ``ModelIndex.serving`` is the one
answer, so that they can never disagree about which model serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ext_proc.config import ProviderConfig

__all__ = ["ModelIndex", "Serving"]

Serving = tuple[ProviderConfig, str]
"""A configured model and the id it is sent upstream as."""


@dataclass(frozen=True, slots=True)
class ModelIndex:
    by_model: Mapping[str, ProviderConfig]
    """Explicit (non-wildcard) models by ``provider/model``; the first one wins."""
    wildcards: Mapping[str, ProviderConfig]
    """Wildcard entries (``openai/*``) by provider name."""
    by_bare_id: Mapping[str, tuple[ProviderConfig, ...]]
    """Explicit models by the id alone (``gpt-5.2``), every one that has it."""

    @classmethod
    def of(cls, providers: Iterable[ProviderConfig]) -> ModelIndex:
        by_model: dict[str, ProviderConfig] = {}
        wildcards: dict[str, ProviderConfig] = {}
        bare: dict[str, list[ProviderConfig]] = {}
        for provider in providers:
            if provider.wildcard:
                wildcards.setdefault(provider.provider, provider)
                continue
            by_model.setdefault(provider.model, provider)
            bare.setdefault(provider.model_id, []).append(provider)
        return cls(by_model, wildcards, {k: tuple(v) for k, v in bare.items()})

    def serving(self, name: str) -> tuple[Serving, ...]:
        """Every configured model that could serve ``name``, with the id to send.

        In resolution order: the exact model; else the provider's wildcard for
        ``provider/id``; else the explicit models whose id is ``name``; else,
        for a bare id, every wildcard provider. More than one is ambiguous.
        """
        exact = self.by_model.get(name)
        if exact is not None:
            return ((exact, exact.model_id),)
        prefix, sep, model_id = name.partition("/")
        if sep and model_id:
            wildcard = self.wildcards.get(prefix)
            if wildcard is not None:
                return ((wildcard, model_id),)
        bare = self.by_bare_id.get(name, ())
        if bare or sep:
            return tuple((p, p.model_id) for p in bare)
        return tuple((w, name) for w in self.wildcards.values())

    def provider_of(self, name: str) -> ProviderConfig | None:
        """The one configured model serving ``name``; ``None`` when none or several do."""
        found = self.serving(name)
        return found[0][0] if len(found) == 1 else None
