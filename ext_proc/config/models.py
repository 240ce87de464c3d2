"""Which configured model serves a name: the lookups every layer shares.

Built once per config from its providers, so config validation, request-time
resolution and metrics agree on what ``openai/gpt-5.2``, ``openai/anything``
(a wildcard) or a bare ``gpt-5.2`` means.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Annotations only: types.py builds this index, so it cannot be imported back here.
    from ext_proc.config.types import ProviderConfig

__all__ = ["ModelIndex"]


@dataclass(frozen=True)
class ModelIndex:
    """The configured models, indexed three ways."""

    by_model: Mapping[str, ProviderConfig]
    """``provider/id`` -> its entry, for every model that is not a wildcard."""
    wildcards: Mapping[str, ProviderConfig]
    """Provider -> its ``provider/*`` entry."""
    by_bare_id: Mapping[str, tuple[ProviderConfig, ...]]
    """Model id without its provider (``gpt-5.2``) -> the entries with that id,
    in config order; more than one makes the bare id ambiguous."""

    @classmethod
    def build(cls, providers: Iterable[ProviderConfig]) -> ModelIndex:
        by_model: dict[str, ProviderConfig] = {}
        wildcards: dict[str, ProviderConfig] = {}
        bare: dict[str, list[ProviderConfig]] = {}
        for provider in providers:
            # The first entry wins, as at request time; the loader rejects repeats.
            if provider.wildcard:
                wildcards.setdefault(provider.provider, provider)
                continue
            by_model.setdefault(provider.model, provider)
            bare.setdefault(provider.model_id, []).append(provider)
        return cls(
            by_model=by_model,
            wildcards=wildcards,
            by_bare_id={model_id: tuple(entries) for model_id, entries in bare.items()},
        )

    def provider_for(self, model: str) -> ProviderConfig | None:
        """The entry that serves the full name ``provider/id``: the exact model,
        else the provider's wildcard."""
        exact = self.by_model.get(model)
        if exact is not None:
            return exact
        prefix, sep, model_id = model.partition("/")
        return self.wildcards.get(prefix) if sep and model_id else None

    def serving(self, ref: str) -> list[str]:
        """The configured models that would serve ``ref``, as ``provider/model``.

        Mirrors request-time resolution: exact model, then the provider's wildcard,
        then a bare model id (explicit models first, then wildcard providers).
        More than one answer means ``ref`` is ambiguous; none, that nothing serves it.
        """
        if self.provider_for(ref) is not None:
            return [ref]
        bare = [p.model for p in self.by_bare_id.get(ref, ())]
        if bare or "/" in ref:
            return bare
        return [f"{provider}/{ref}" for provider in self.wildcards]
