"""The ``listeners`` section in both Plano forms, and the check that no two of
Archway's sockets share a port."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import yaml

from ext_proc.config.reader import IGNORED, Reader, describe, is_null, join, line_of
from ext_proc.config.types import DEFAULT_LISTENER, GatewaySettings, Listener

__all__ = ["check_ports", "read_listeners"]

_LEGACY_LISTENERS = ("egress_traffic",)
_LEGACY_LISTENERS_IGNORED = {
    "ingress_traffic": "ingress (prompt) listener not implemented by Archway; ignored"
}
_LEGACY_LISTENER_KEYS = ("address", "port", "message_format", "timeout")
_LISTENER_KEYS = ("type", "name", "address", "port", "timeout", "max_retries")
_LISTENER_IGNORED = dict.fromkeys(("router", "agents", "input_filters", "output_filters"), IGNORED)
_LISTENER_TYPES = ("model", "prompt", "agent")

Found = list[tuple[Listener, yaml.Node | None]]
"""Listeners, each with the node it came from (for the lines of later messages)."""


def read_listeners(r: Reader, node: yaml.Node | None) -> Found | None:
    """The model listeners; the default one when the config has none."""
    if is_null(node):
        return [(DEFAULT_LISTENER, node)]
    errors_before = r.error_count
    if isinstance(node, yaml.MappingNode):
        found = _legacy_listeners(r, node)
    elif isinstance(node, yaml.SequenceNode):
        found = _listener_list(r, node)
    else:
        r.error(
            node,
            "listeners",
            f"expected a list of listeners, got {describe(node)}",
            "write `listeners:` followed by `- type: model` entries",
        )
        return None
    if found is None or r.error_count > errors_before:
        # A broken model listener is not "no model listener": no fallback.
        return None
    if not found:
        r.warn(
            node,
            "listeners",
            "no model listener (type: model, or egress_traffic); using the default "
            f"{DEFAULT_LISTENER.name} on {DEFAULT_LISTENER.address}:{DEFAULT_LISTENER.port}",
        )
        return [(DEFAULT_LISTENER, node)]
    names: dict[str, int | None] = {}
    for listener, where in found:
        if listener.name in names:
            r.error(
                where,
                "listeners",
                f"duplicate listener name {listener.name!r} (also at line {names[listener.name]})",
                "give each listener its own name",
            )
        names.setdefault(listener.name, line_of(where))
    return found


def _legacy_listeners(r: Reader, node: yaml.MappingNode) -> Found | None:
    fields = r.mapping(node, "listeners", _LEGACY_LISTENERS, _LEGACY_LISTENERS_IGNORED)
    if fields is None:
        return None
    out: Found = []
    for name, entry in fields.items():
        path = join("listeners", name)
        listener = _listener(r, entry, r.mapping(entry, path, _LEGACY_LISTENER_KEYS), path, name)
        if listener is not None:
            out.append((listener, entry))
    return out


def _listener_list(r: Reader, node: yaml.SequenceNode) -> Found | None:
    out: Found = []
    for index, entry in enumerate(node.value):
        path = f"listeners[{index}]"
        if not isinstance(entry, yaml.MappingNode):
            r.error(
                entry,
                path,
                f"expected a listener mapping, got {describe(entry)}",
                "write it as `- type: model` followed by name, port, ...",
            )
            continue
        kind_entry = r.pairs(entry, path).get("type")
        if kind_entry is None:
            r.missing_key(entry, path, "type", "`type: model`")
            continue
        kind = r.choice(kind_entry[1], f"{path}.type", _LISTENER_TYPES, "listener type")
        if kind is None:
            continue
        if kind != "model":
            r.warn(entry, path, f"{kind} listener not implemented by Archway; skipped")
            continue
        fields = r.mapping(entry, path, _LISTENER_KEYS, _LISTENER_IGNORED)
        listener = _listener(r, entry, fields, path, None)
        if listener is not None:
            out.append((listener, entry))
    return out


def _listener(
    r: Reader,
    node: yaml.Node,
    fields: Mapping[str, yaml.Node] | None,
    path: str,
    name: str | None,
) -> Listener | None:
    """One listener; ``name`` is the legacy form's key, else the entry's ``name``."""
    if fields is None:
        return None
    errors_before = r.error_count
    if name is None:
        name = r.text(fields.get("name"), f"{path}.name")
        if name is None and "name" not in fields:
            r.missing_key(node, path, "name", "`name: model_listener`")
    values = r.settings(Listener, fields, node, path) or {}
    if values.get("address") == "":
        r.error(fields["address"], f"{path}.address", "empty address", "use 0.0.0.0")
    if name is None or r.error_count > errors_before:
        return None
    return dataclasses.replace(DEFAULT_LISTENER, name=name, **values)


def check_ports(
    r: Reader,
    top: Mapping[str, tuple[yaml.Node, yaml.Node]],
    listeners: Sequence[tuple[Listener, yaml.Node | None]],
    gateway: GatewaySettings,
) -> None:
    """Two sockets on one port fail only at startup; say so now, with lines."""
    archway = top.get("archway")
    settings = (
        r.pairs(archway[1], "archway")
        if archway is not None and isinstance(archway[1], yaml.MappingNode)
        else {}
    )

    def key_line(key: str) -> int | None:
        entry = settings.get(key) or archway
        return line_of(entry[1] if key in settings else entry[0]) if entry else None

    sockets: list[tuple[str, str, int, int | None]] = [
        (f"listener {listener.name!r}", listener.address, listener.port, line_of(where))
        for listener, where in listeners
    ]
    sockets.append(
        ("archway.admin_port", gateway.admin_address, gateway.admin_port, key_line("admin_port"))
    )
    sockets.append(
        (
            "archway.ext_proc_port",
            gateway.ext_proc_address,
            gateway.ext_proc_port,
            key_line("ext_proc_port"),
        )
    )
    if gateway.metrics_port is not None:
        sockets.append(
            (
                "archway.metrics_port",
                gateway.metrics_address,
                gateway.metrics_port,
                key_line("metrics_port"),
            )
        )
    wildcard = {"0.0.0.0", "::", "[::]"}
    for i, (what, address, port, line) in enumerate(sockets):
        for other, other_address, other_port, other_line in sockets[:i]:
            overlap = address == other_address or address in wildcard or other_address in wildcard
            # Port 0 asks the OS for a free port, so it never clashes.
            if port == other_port and port != 0 and overlap:
                where = f" (line {other_line})" if other_line is not None else ""
                r.error(
                    line,
                    "listeners" if what.startswith("listener") else what,
                    f"{what} and {other}{where} both use port {port}",
                    "give each its own port",
                )
