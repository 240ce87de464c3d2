"""From a config to a running preference router: the one place that knows every
backend. A backend registers, under its ``router.backend`` name, its builder and
its options class (``setting`` fields, which the config loader reads)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from ext_proc.config.types import (
    ArchRouterOptions,
    Config,
    EmbeddingRouterOptions,
    RemoteRouterOptions,
    RouterOptions,
    RouterSettings,
)
from ext_proc.router import PreferenceRouter, Route
from ext_proc.router.service import ConfiguredRouter

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendKind",
    "RouterUnavailableError",
    "build_router",
    "routes_of",
]


class RouterUnavailableError(Exception):
    """The configured router cannot start: a missing extra, model file or setting."""


@dataclass(frozen=True)
class Backend:
    router: PreferenceRouter
    count_tokens: Callable[[str], int]


def routes_of(config: Config) -> tuple[Route, ...]:
    """The routes the router chooses from, in config order."""
    return tuple(
        Route(p.name, p.description, p.examples) for p in config.routing_preferences if p.models
    )


def _require(backend: str, *modules: str) -> None:
    """Imports a backend's extras now, to fail early with the fix rather than mid-load."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise RouterUnavailableError(
                f"router backend {backend} needs {exc.name}: pip install 'archway[router]'"
            ) from None


def _arch_router(settings: RouterSettings, routes: tuple[Route, ...]) -> Backend:
    options = settings.options
    assert isinstance(options, ArchRouterOptions) and settings.model_path is not None
    _require("arch_router", "ctranslate2", "jinja2", "tokenizers", "ext_proc.router.arch_router")
    from ext_proc.router.arch_router import ArchRouter
    from ext_proc.router.tokenizer import ModelFilesError

    try:
        router = ArchRouter.load(settings.model_path, routes, options)
    except ModelFilesError as exc:
        raise RouterUnavailableError(str(exc)) from None
    return Backend(router, router.count_tokens)


def _remote(settings: RouterSettings, routes: tuple[Route, ...]) -> Backend:
    from ext_proc.router.remote import RemoteArchRouter, estimate_tokens

    options = settings.options
    assert isinstance(options, RemoteRouterOptions)
    count = estimate_tokens
    if settings.model_path is not None:
        # With the model's tokenizer at hand, the budget is exact.
        from ext_proc.router.arch_router import ArchRouterPrompt
        from ext_proc.router.tokenizer import ModelFilesError, ModelTokenizer

        try:
            count = ArchRouterPrompt(
                ModelTokenizer.from_dir(settings.model_path), routes
            ).count_tokens
        except (ImportError, ModelFilesError) as exc:
            raise RouterUnavailableError(f"router.model_path: {exc}") from None
    router = RemoteArchRouter(routes, options, timeout_s=settings.timeout_s, count_tokens=count)
    return Backend(router, count)


def _embedding(settings: RouterSettings, routes: tuple[Route, ...]) -> Backend:
    options = settings.options
    assert isinstance(options, EmbeddingRouterOptions) and settings.model_path is not None
    _require("embedding", "ctranslate2", "numpy", "tokenizers", "ext_proc.router.embedding")
    from ext_proc.router.embedding import DecisionRule, EmbeddingRouter
    from ext_proc.router.tokenizer import ModelFilesError

    rule = DecisionRule(
        threshold=options.threshold,
        margin=options.margin,
        history_weight=options.history_weight,
        context_margin=options.context_margin,
        classifier_weight=options.classifier_weight,
    )
    try:
        router = EmbeddingRouter.load(
            settings.model_path,
            routes,
            rule=rule,
            other_examples=options.other_examples,
            device=options.device,
            compute_type=options.compute_type,
            intra_threads=options.intra_threads,
            max_batch_size=options.max_batch_size,
        )
    except ModelFilesError as exc:
        raise RouterUnavailableError(str(exc)) from None
    return Backend(router, router.count_tokens)


@dataclass(frozen=True)
class BackendKind:
    """One ``router.backend``: how to build it and what its config holds."""

    options: type[RouterOptions]
    build: Callable[[RouterSettings, tuple[Route, ...]], Backend]
    model_dir: str | None = None
    """What ``router.model_path`` must hold, for messages; ``None``: it is optional
    (a tokenizer that makes the token budget exact)."""
    convert: str = "archway router convert"
    """The command that makes that directory."""


BACKENDS: dict[str, BackendKind] = {
    # Arch-Router in-process on CTranslate2.
    "arch_router": BackendKind(
        ArchRouterOptions, _arch_router, model_dir="a converted Arch-Router directory"
    ),
    # Arch-Router served elsewhere behind an OpenAI-compatible endpoint.
    "remote": BackendKind(RemoteRouterOptions, _remote),
    # A sentence encoder on CTranslate2 that compares the conversation with the
    # routes (milliseconds on a CPU).
    "embedding": BackendKind(
        EmbeddingRouterOptions,
        _embedding,
        model_dir="a converted sentence encoder (archway router convert --encoder)",
        convert="archway router convert --encoder",
    ),
}


def build_router(config: Config) -> ConfiguredRouter | None:
    """The config's router, loaded (seconds for a model: call it off the event
    loop); ``None`` when the config has no router or no routes to choose from."""
    settings = config.router
    routes = routes_of(config)
    if settings is None or not routes:
        return None
    kind = BACKENDS.get(settings.backend)
    if kind is None:
        raise RouterUnavailableError(f"unknown router backend {settings.backend!r}")
    backend = kind.build(settings, routes)
    return ConfiguredRouter(
        backend=backend.router,
        route_names=frozenset(r.name for r in routes),
        count_tokens=backend.count_tokens,
        timeout_s=settings.timeout_s,
        max_messages=settings.max_messages,
        token_budget=settings.token_budget,
    )
