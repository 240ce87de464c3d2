"""The model list (``llm_providers`` or ``model_providers``), ``model_aliases``,
and the fallback chains both may declare, checked against the provider catalog."""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass

import yaml

from ext_proc.apis import WireAPI
from ext_proc.config.models import ModelIndex
from ext_proc.config.reader import Reader, is_null, join, line_of, listing
from ext_proc.config.types import ProviderConfig
from ext_proc.routing.catalog import CATALOG, PROVIDERS_REQUIRING_BASE_URL, spec_for

__all__ = [
    "MAX_FALLBACKS",
    "InlinePreferences",
    "Models",
    "api_of",
    "model_ref",
    "read_aliases",
    "read_providers",
]

_PROVIDER_KEYS = (
    "name",
    "access_key",
    "model",
    "default",
    "base_url",
    "passthrough_auth",
    "http_host",
    "provider_interface",
    "headers",
    "routing_preferences",
    "fallbacks",
    "timeout",
)
MAX_FALLBACKS = 4
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BASE_URL_EXAMPLES = {
    "ollama": "http://localhost:11434",
    "azure_openai": "https://YOUR-RESOURCE.openai.azure.com",
    "amazon_bedrock": "https://bedrock-runtime.us-west-2.amazonaws.com",
    "plano": "http://localhost:8000 (the server hosting the model)",
    "qwen": "https://dashscope-intl.aliyuncs.com",
}


@dataclass(frozen=True)
class InlinePreferences:
    """A model entry's own ``routing_preferences`` (the spec's form), read with
    the top-level ones so that names are checked across both."""

    node: yaml.Node
    path: str
    model: str | None
    """The entry's model; ``None`` when it is unusable."""


@dataclass(frozen=True)
class Models:
    """The model list as read: what aliases, fallbacks and preferences refer to."""

    providers: tuple[ProviderConfig, ...]
    index: ModelIndex
    section: str
    """The key the list was given under, for messages."""
    inline: tuple[InlinePreferences, ...] = ()


def read_providers(r: Reader, top: dict[str, tuple[yaml.Node, yaml.Node]]) -> Models:
    legacy = top.get("llm_providers")
    current = top.get("model_providers")
    if legacy is not None and current is not None:
        r.error(
            current[0],
            "model_providers",
            f"llm_providers (line {line_of(legacy[0])}) and model_providers are both set",
            "keep one list: model_providers is Plano's current name for llm_providers",
        )
    section = "model_providers" if current is not None else "llm_providers"
    chosen = current or legacy
    entries = r.sequence(chosen[1], section) if chosen is not None else []
    if entries is None:
        return Models((), ModelIndex.build(()), section)
    providers: list[ProviderConfig] = []
    inline: list[InlinePreferences] = []
    by_model: dict[str, ProviderConfig] = {}
    by_name: dict[str, ProviderConfig] = {}
    default: ProviderConfig | None = None
    with_fallbacks: list[tuple[int, yaml.Node, str]] = []
    for index, entry in enumerate(entries):
        path = f"{section}[{index}]"
        provider = _provider(r, entry, path, inline)
        if provider is None:
            continue
        if provider.model in by_model:
            r.error(
                entry,
                f"{path}.model",
                f"duplicate model {provider.model!r} "
                f"(also at line {by_model[provider.model].line})",
                "remove one of the two entries",
            )
            continue
        if provider.name in by_name:
            r.error(
                entry,
                f"{path}.name",
                f"duplicate name {provider.name!r} (also at line {by_name[provider.name].line})",
                "give each model its own name",
            )
            continue
        if provider.default and default is not None:
            r.error(
                entry,
                f"{path}.default",
                f"more than one default model: {provider.model!r} and "
                f"{default.model!r} (line {default.line})",
                "keep `default: true` on one model only",
            )
        elif provider.default:
            default = provider
        by_model[provider.model] = provider
        by_name[provider.name] = provider
        providers.append(provider)
        if "fallbacks" in r.pairs(entry, path):
            with_fallbacks.append((len(providers) - 1, entry, path))
    if not entries:
        r.error(
            chosen[0] if chosen is not None else 1,
            section,
            "no models are configured",
            f"add at least one entry to {section}, e.g. `- model: openai/gpt-5.2`",
        )
    models = Models(tuple(providers), ModelIndex.build(providers), section, tuple(inline))
    # Fallbacks may name models listed further down, so they resolve last.
    for position, entry, path in with_fallbacks:
        node = r.pairs(entry, path)["fallbacks"][1]
        primary = providers[position]
        chain = _fallbacks(r, node, f"{path}.fallbacks", primary.model, models)
        providers[position] = dataclasses.replace(primary, fallbacks=chain)
    return dataclasses.replace(models, providers=tuple(providers))


def _provider(
    r: Reader, node: yaml.Node, path: str, inline: list[InlinePreferences]
) -> ProviderConfig | None:
    fields = r.mapping(node, path, _PROVIDER_KEYS)
    if fields is None:
        return None
    errors_before = r.error_count
    model = r.text(fields.get("model"), f"{path}.model")
    provider = model_id = ""
    if model is None:
        if "model" not in fields:
            r.missing_key(node, path, "model", "`model: provider/model`, e.g. openai/gpt-5.2")
    else:
        provider, sep, model_id = model.partition("/")
        if not sep or not provider or not model_id or any(c.isspace() for c in model):
            example = f"openai/{model_id or provider or 'gpt-5.2'}"
            r.error(
                fields["model"],
                f"{path}.model",
                f"{model!r} is not in provider/model form",
                f"write the provider first, e.g. {example!r}",
            )
            model = None
        elif "*" in provider or ("*" in model_id and model_id != "*"):
            r.error(
                fields["model"],
                f"{path}.model",
                f"{model!r}: only a whole model id can be a wildcard",
                f"write {provider.replace('*', '') or 'openai'}/* to serve every model",
            )
            model = None

    name = r.text(fields.get("name"), f"{path}.name")
    access_key, access_key_ref = r.secret(fields.get("access_key"), f"{path}.access_key")
    values = r.settings(ProviderConfig, fields, node, path) or {}
    headers = _headers(r, fields.get("headers"), f"{path}.headers")
    _check_catalog(r, node, fields, path, model, values)
    if "routing_preferences" in fields:
        inline.append(InlinePreferences(fields["routing_preferences"], path, model))
    if model is None:
        return None
    if provider == "chatgpt" and access_key is None and "passthrough_auth" not in fields:
        # Plano's meaning: a ChatGPT subscription is the client's own OAuth token.
        values["passthrough_auth"] = True
    if r.error_count > errors_before:
        # Keep the model known despite its other faults (an unset key, a bad
        # URL), so aliases that name it do not report a second, false error.
        # The load still fails on the errors already recorded.
        return ProviderConfig(model=model, provider=provider, model_id=model_id, name=name or model)
    return ProviderConfig(
        model=model,
        provider=provider,
        model_id=model_id,
        name=name or model,
        access_key=access_key,
        access_key_ref=access_key_ref,
        headers=headers or (),
        line=line_of(node),
        **values,
    )


def _check_catalog(
    r: Reader,
    node: yaml.Node,
    fields: dict[str, yaml.Node],
    path: str,
    model: str | None,
    values: dict[str, object],
) -> None:
    """Archway must know how to speak to the provider and where it lives."""
    interface = values.get("provider_interface")
    provider = (model or "").partition("/")[0]
    if isinstance(interface, str) and interface not in CATALOG:
        r.error(
            fields["provider_interface"],
            f"{path}.provider_interface",
            f"provider_interface {interface!r} is not supported by Archway",
            f"use one of: {listing(CATALOG)}",
        )
    elif model is None:
        return
    elif provider not in CATALOG and interface is None:
        close = difflib.get_close_matches(provider.lower(), CATALOG, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        r.error(
            node,
            path,
            f"unknown provider {provider!r} in {model!r}",
            f"{hint}a provider outside Archway's catalog needs both base_url and "
            "provider_interface (e.g. provider_interface: openai); "
            f"known providers: {listing(CATALOG)}",
        )
    elif "base_url" not in fields:
        if provider not in CATALOG:
            r.error(
                node,
                path,
                f"provider {provider!r} is not in Archway's catalog, so it needs base_url",
                "add base_url: https://<host>/v1 (the server's OpenAI-compatible endpoint)",
            )
        # `ollama/x` with provider_interface: openai is still a local server,
        # not api.openai.com.
        elif needs := [p for p in (provider, interface) if p in PROVIDERS_REQUIRING_BASE_URL]:
            example = _BASE_URL_EXAMPLES.get(str(needs[0]), "https://llm.example.com/v1")
            r.error(
                node,
                path,
                f"provider {needs[0]!r} has no standard address, so it needs base_url",
                f"add base_url: {example}",
            )


def _headers(r: Reader, node: yaml.Node | None, path: str) -> tuple[tuple[str, str], ...] | None:
    fields = r.mapping(node, path, None)
    if fields is None:
        return None
    out: list[tuple[str, str]] = []
    for name, value_node in fields.items():
        header_path = join(path, name)
        if not _HEADER_NAME.fullmatch(name):
            r.error(
                value_node,
                header_path,
                f"{name!r} is not a valid HTTP header name",
                "use letters, digits and '-' only",
            )
            continue
        # Header values are treated as secrets: they often carry tokens.
        value = r.text(value_node, header_path, secret=True)
        if value is None:
            if is_null(value_node):
                r.error(value_node, header_path, "the header has no value", "add a value")
            continue
        if "\r" in value or "\n" in value:
            r.error(value_node, header_path, "the header value has a line break", "remove it")
            continue
        out.append((name, value))
    return tuple(out)


def model_ref(
    r: Reader, node: yaml.Node, path: str, ref: str, models: Models, what: str
) -> str | None:
    """The one configured model ``ref`` names, as ``provider/model``, or ``None``
    (reported)."""
    if "*" in ref:
        r.error(
            node,
            path,
            f"{what} {ref!r} is a wildcard",
            f"name one model, e.g. {ref.replace('*', 'gpt-5.2')!r}",
        )
        return None
    matches = models.index.serving(ref)
    if not matches:
        available = listing(p.model for p in models.providers)
        r.error(
            node,
            path,
            f"{what} {ref!r} matches no configured model; available models: {available}",
            f"use one of those, or add {ref!r} to {models.section}",
        )
        return None
    if len(matches) > 1:
        r.error(
            node,
            path,
            f"{what} {ref!r} is ambiguous: it is served by {listing(matches)}",
            "write the full provider/model",
        )
        return None
    return matches[0]


def read_aliases(
    r: Reader, node: yaml.Node | None, models: Models
) -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """``model_aliases``: each alias's target as written, and the fallback chains
    of those that declare one."""
    fields = r.mapping(node, "model_aliases", None)
    targets: dict[str, str] = {}
    chains: dict[str, tuple[str, ...]] = {}
    for alias, entry in (fields or {}).items():
        path = join("model_aliases", alias)
        spec = r.mapping(entry, path, ("target", "fallbacks"))
        if spec is None:
            continue
        if "target" not in spec:
            r.missing_key(entry, path, "target", "`target: provider/model`")
            continue
        target = r.text(spec["target"], f"{path}.target")
        if target is None:
            continue
        resolved = model_ref(r, spec["target"], f"{path}.target", target, models, "alias target")
        if resolved is None:
            continue
        targets[alias] = target
        if "fallbacks" in spec:
            chain = _fallbacks(r, spec["fallbacks"], f"{path}.fallbacks", resolved, models)
            if chain:
                chains[alias] = chain
    return targets, chains


def _fallbacks(
    r: Reader, node: yaml.Node, path: str, primary: str, models: Models
) -> tuple[str, ...]:
    """The fallback models of ``primary``, each as ``provider/model``."""
    items = r.sequence(node, path)
    if items is None:
        return ()
    if len(items) > MAX_FALLBACKS:
        r.error(
            node,
            path,
            f"{len(items)} fallbacks; at most {MAX_FALLBACKS} are tried",
            f"keep the best {MAX_FALLBACKS}",
        )
        return ()

    chain: list[str] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        ref = r.text(item, item_path)
        model = None if ref is None else model_ref(r, item, item_path, ref, models, "fallback")
        if model is None:
            continue
        if model == primary or model in chain:
            r.error(item, item_path, f"{model!r} is already in this chain", "list it once")
            continue
        if api_of(models, model) is not api_of(models, primary):
            # The request body was shaped for the primary's API before the
            # first attempt; a retry cannot change the API it speaks.
            r.error(
                item,
                item_path,
                f"fallback {model!r} speaks the {api_of(models, model).value} API but "
                f"{primary!r} speaks {api_of(models, primary).value}",
                "choose fallbacks that speak the same API as the model they back up",
            )
            continue
        chain.append(model)
    return tuple(chain)


def api_of(models: Models, model: str) -> WireAPI:
    """The API the configured model ``model`` (``provider/model``) speaks."""
    served = models.index.provider_for(model)
    spec = spec_for(served) if served is not None else None
    return spec.api if spec is not None else WireAPI.OPENAI
