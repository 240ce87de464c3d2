"""Routing preferences: the routes the preference router chooses from, written
top-level (Plano's current form) or inline under a model (the spec's)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import yaml

from ext_proc.config.providers import MAX_FALLBACKS, Models, api_of, model_ref
from ext_proc.config.reader import IGNORED, Reader, is_null, line_of
from ext_proc.config.types import RoutingPreference
from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER, ROUTE_TIMEOUT

__all__ = ["RESERVED_ROUTES", "read_preferences"]

RESERVED_ROUTES = (ROUTE_OTHER, ROUTE_ERROR, ROUTE_TIMEOUT)
"""What the router answers when no route fits or it fails: never a route's name."""

# `examples` is an Archway extension (utterances for the embedding router);
# Plano's own keys load unchanged.
_INLINE_KEYS = ("name", "description", "examples")
_KEYS = ("name", "description", "models", "examples")
_IGNORED_KEYS = {"selection_policy": IGNORED}


@dataclass(frozen=True)
class _Entry:
    preference: RoutingPreference
    line: int | None
    path: str
    valid: bool
    """False when a model it names is unusable: kept only so duplicate names are found."""
    model_lines: tuple[int | None, ...] = ()
    """Where each of its models is named, for messages about one of them."""


def read_preferences(
    r: Reader, node: yaml.Node | None, models: Models
) -> tuple[RoutingPreference, ...]:
    """Every routing preference, inline ones first, each name once.

    As in Plano, inline preferences of one name under several models become one
    route served by those models in the order they are listed, and a top-level
    preference of the same name replaces them. A route's first model serves it;
    the others are its failover chain."""
    inline_entries: dict[str, _Entry] = {}
    for inline in models.inline:
        items = r.sequence(inline.node, f"{inline.path}.routing_preferences")
        for index, item in enumerate(items or []):
            path = f"{inline.path}.routing_preferences[{index}]"
            found = _fields(r, item, path, inline=True)
            if found is None:
                continue
            served = (inline.model,) if inline.model is not None else ()
            entry = _entry(found, served, item, path, inline.model is not None)
            entry = dataclasses.replace(entry, model_lines=(line_of(item),))
            first = inline_entries.get(entry.preference.name)
            if first is None:
                inline_entries[entry.preference.name] = entry
            else:
                inline_entries[entry.preference.name] = _merge(r, first, entry)
    top_entries: list[_Entry] = []
    for index, item in enumerate(r.sequence(node, "routing_preferences") or []):
        path = f"routing_preferences[{index}]"
        found = _fields(r, item, path, inline=False)
        if not isinstance(item, yaml.MappingNode):
            continue
        served = _models(r, item, path, models)
        if found is not None:
            entry = _entry(found, tuple(served or ()), item, path, bool(served))
            items = r.pairs(item, path)["models"][1] if served else None
            if isinstance(items, yaml.SequenceNode):
                lines = tuple(line_of(node) for node in items.value)
                entry = dataclasses.replace(entry, model_lines=lines)
            top_entries.append(entry)
    seen: dict[str, _Entry] = {}
    for entry in top_entries:
        name = entry.preference.name
        first = seen.get(name)
        if first is not None:
            r.error(
                entry.line,
                entry.path,
                f"duplicate routing preference {name!r} (also at line {first.line})",
                "give each routing preference its own name; a preference served by "
                "several models lists them all in its models",
            )
            continue
        seen[name] = entry
    for name, entry in inline_entries.items():
        top = seen.get(name)
        if top is not None:
            r.warn(
                entry.line,
                entry.path,
                f"routing preference {name!r} is also defined top-level (line {top.line}), "
                "which wins, as in Plano; this one is ignored",
            )
    ordered = [
        *(e for n, e in inline_entries.items() if n not in seen),
        *seen.values(),
    ]
    out: list[RoutingPreference] = []
    for entry in ordered:
        if entry.preference.name in RESERVED_ROUTES:
            r.error(
                entry.line,
                entry.path,
                f"{entry.preference.name!r} is reserved: the router answers it when no "
                "route fits or it fails",
                "rename the routing preference",
            )
        elif entry.valid:
            out.append(_chain(r, entry, models))
    return tuple(out)


def _merge(r: Reader, first: _Entry, more: _Entry) -> _Entry:
    """An inline preference named again under another model: one more model for it."""
    if more.preference.description != first.preference.description:
        r.warn(
            more.line,
            more.path,
            f"routing preference {first.preference.name!r} was described differently at "
            f"line {first.line}; the first description is kept, as in Plano",
        )
    served = first.preference.models + tuple(
        m for m in more.preference.models if m not in first.preference.models
    )
    examples = first.preference.examples + more.preference.examples
    preference = dataclasses.replace(first.preference, models=served, examples=examples)
    lines = first.model_lines + tuple(
        more.line for m in more.preference.models if m not in first.preference.models
    )
    return dataclasses.replace(
        first, preference=preference, valid=first.valid and more.valid, model_lines=lines
    )


def _chain(r: Reader, entry: _Entry, models: Models) -> RoutingPreference:
    """The preference with the models it can really fail over to: Envoy retries
    the request as it was shaped for the first model, so a model of another API
    cannot back it up (it is warned about, and stays in ``models``)."""
    primary, *rest = entry.preference.models
    kept: list[str] = []
    for position, model in enumerate(rest, start=1):
        where = f"{entry.path.removesuffix('.name')}.models[{position}]"
        line = entry.model_lines[position] if position < len(entry.model_lines) else entry.line
        if api_of(models, model) is not api_of(models, primary):
            r.warn(
                line,
                where,
                f"{model!r} speaks the {api_of(models, model).value} API but {primary!r} "
                f"speaks {api_of(models, primary).value}; a failover retry cannot change "
                "API, so it is not in this route's failover chain",
            )
        elif len(kept) >= MAX_FALLBACKS:
            r.warn(
                line,
                where,
                f"at most {MAX_FALLBACKS} fallbacks are tried; {model!r} is left out",
            )
        else:
            kept.append(model)
    return dataclasses.replace(entry.preference, fallbacks=tuple(kept))


def _entry(
    found: tuple[str, str, tuple[str, ...]],
    models: tuple[str, ...],
    node: yaml.Node,
    path: str,
    valid: bool,
) -> _Entry:
    name, description, examples = found
    preference = RoutingPreference(name, description, models, examples)
    return _Entry(preference, line_of(node), f"{path}.name", valid)


def _fields(
    r: Reader, node: yaml.Node, path: str, *, inline: bool
) -> tuple[str, str, tuple[str, ...]] | None:
    """Name, description and examples; ``None`` when name or description is
    unusable (reported)."""
    fields = r.mapping(
        node, path, _INLINE_KEYS if inline else _KEYS, None if inline else _IGNORED_KEYS
    )
    if fields is None:
        return None
    found: list[str] = []
    for key in ("name", "description"):
        value = r.text(fields.get(key), f"{path}.{key}")
        if value is None and is_null(fields.get(key)):
            r.missing_key(node, path, key, f"`{key}: ...`")
        elif value is not None and not value.strip():
            r.error(fields[key], f"{path}.{key}", f"empty {key}", f"write a {key}")
            value = None
        if value is not None:
            found.append(value)
    examples = r.examples(fields.get("examples"), f"{path}.examples")
    return (found[0], found[1], examples) if len(found) == 2 else None


def _models(r: Reader, entry: yaml.MappingNode, path: str, models: Models) -> list[str] | None:
    """The models a top-level preference names, resolved to ``provider/model``;
    ``None`` when any is unusable (reported)."""
    found = r.pairs(entry, path).get("models")
    if found is None or is_null(found[1]):
        r.missing_key(entry, path, "models", "`models: [provider/model, ...]`")
        return None
    items = r.sequence(found[1], f"{path}.models")
    if items is None:
        return None
    if not items:
        r.error(
            found[1],
            f"{path}.models",
            "the list is empty",
            "name at least one model, e.g. [openai/gpt-5.2]",
        )
        return None
    resolved: list[str] = []
    for number, item in enumerate(items):
        item_path = f"{path}.models[{number}]"
        ref = r.text(item, item_path)
        model = None if ref is None else model_ref(r, item, item_path, ref, models, "model")
        if model is not None:
            resolved.append(model)
    return resolved if len(resolved) == len(items) else None
