"""Sections of plain settings: Plano's ``overrides``, ``routing`` (session
affinity) and ``state_storage``, and Archway's own ``archway:`` section (ports,
limits, tracing)."""

from __future__ import annotations

import yaml

from ext_proc.config.access import ACCESS_GATEWAY_KEYS
from ext_proc.config.fields import setting_keys
from ext_proc.config.reader import BOOL_TAG, FLOAT_TAG, IGNORED, INT_TAG, Reader, is_null
from ext_proc.config.types import (
    DEFAULT_METRICS_PORT,
    AffinitySettings,
    ExtProcTls,
    GatewaySettings,
    Overrides,
    TracingSettings,
)
from ext_proc.state import StateStorageConfig, StateStorageError, parse_state_storage

__all__ = [
    "ROUTER_HINT",
    "read_affinity",
    "read_gateway",
    "read_overrides",
    "read_state_storage",
]

ROUTER_HINT = (
    "Archway runs the preference router itself and ignores this; "
    "set router.model_path to a converted Arch-Router directory (archway router convert)"
)
_OVERRIDE_KEYS = ("upstream_connect_timeout", "upstream_tls_ca_path")
_OVERRIDE_IGNORED = {
    **dict.fromkeys(
        (
            "prompt_target_intent_matching_threshold",
            "optimize_context_window",
            "use_agent_orchestrator",
            "disable_signals",
            "agent_orchestration_model",
            "orchestrator_model_context_length",
        ),
        IGNORED,
    ),
    "llm_routing_model": ROUTER_HINT,
}
_GATEWAY_KEYS = (
    "ext_proc_address",
    "ext_proc_port",
    "ext_proc_uds",
    "ext_proc_tls",
    "admin_address",
    "admin_port",
    "max_request_body_bytes",
    "message_timeout",
    "failure_mode_allow",
    "ext_proc_messages",
    "metrics_address",
    "metrics_port",
    "tracing",
    *ACCESS_GATEWAY_KEYS,
)
_TRACING_KEYS = ("collector", "sample_percent")
# session_cache is read with the access settings (ext_proc.config.access).
_AFFINITY_KEYS = ("session_ttl_seconds", "session_max_entries", "session_cache")


def read_overrides(r: Reader, node: yaml.Node | None) -> Overrides | None:
    fields = r.mapping(node, "overrides", _OVERRIDE_KEYS, _OVERRIDE_IGNORED)
    if fields is None:
        return None
    values = r.settings(Overrides, fields, node, "overrides") or {}
    if values.get("upstream_tls_ca_path") == "":
        del values["upstream_tls_ca_path"]
        r.error(
            fields["upstream_tls_ca_path"],
            "overrides.upstream_tls_ca_path",
            "empty path",
            f"remove it to use {Overrides().upstream_tls_ca_path}",
        )
    return Overrides(**values)


def read_gateway(r: Reader, node: yaml.Node | None) -> GatewaySettings | None:
    fields = r.mapping(node, "archway", _GATEWAY_KEYS)
    if fields is None:
        return None
    values = r.settings(GatewaySettings, fields, node, "archway") or {}
    if values.get("ext_proc_uds") == "":
        del values["ext_proc_uds"]
        r.error(
            fields["ext_proc_uds"],
            "archway.ext_proc_uds",
            "empty path",
            "give the socket's path (/run/archway/ext_proc.sock) or remove the key for TCP",
        )
    return GatewaySettings(
        **values,
        metrics_port=_metrics_port(r, fields.get("metrics_port")),
        ext_proc_tls=_ext_proc_tls(r, fields.get("ext_proc_tls")),
        tracing=_tracing(r, fields.get("tracing")),
    )


def _ext_proc_tls(r: Reader, node: yaml.Node | None) -> ExtProcTls | None:
    path = "archway.ext_proc_tls"
    if is_null(node):
        return None
    fields = r.mapping(node, path, setting_keys(ExtProcTls))
    if fields is None:
        return None
    values = r.settings(ExtProcTls, fields, node, path)
    if values is None:
        return None
    for key in ("cert", "key", "ca"):
        if values.get(key) == "":
            r.error(fields[key], f"{path}.{key}", "empty path", "give a PEM file's path")
            return None
    return ExtProcTls(**values)


def _metrics_port(r: Reader, node: yaml.Node | None) -> int | None:
    """A port, or ``false``/``off`` for no metrics endpoint."""
    if is_null(node):
        return DEFAULT_METRICS_PORT
    assert node is not None
    if isinstance(node, yaml.ScalarNode) and node.tag == BOOL_TAG:
        if r.boolean(node, "archway.metrics_port") is False:
            return None
        r.error(
            node,
            "archway.metrics_port",
            "true is not a port",
            f"give a port (default {DEFAULT_METRICS_PORT}), or false for no metrics endpoint",
        )
        return None
    return r.integer(node, "archway.metrics_port", low=0, high=65535)


def _tracing(r: Reader, node: yaml.Node | None) -> TracingSettings | None:
    path = "archway.tracing"
    if is_null(node):
        return None
    fields = r.mapping(node, path, _TRACING_KEYS)
    if fields is None:
        return None
    assert node is not None
    collector = r.text(fields.get("collector"), f"{path}.collector")
    if "collector" not in fields:
        r.missing_key(node, path, "collector", "collector: 127.0.0.1:4317 (OTLP over gRPC)")
        return None
    if collector is None:
        return None
    host, sep, port = collector.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        r.error(
            fields["collector"],
            f"{path}.collector",
            f"expected HOST:PORT, got {collector!r}",
            "write the OTLP/gRPC collector's address, e.g. otel-collector:4317",
        )
        return None
    sample = r.typed(
        fields.get("sample_percent"),
        f"{path}.sample_percent",
        (INT_TAG, FLOAT_TAG),
        "a percentage",
        "write a number from 0 to 100",
        float,
    )
    if sample is not None and not 0 <= float(sample) <= 100:
        r.error(
            fields["sample_percent"],
            f"{path}.sample_percent",
            f"{sample} is out of range",
            "use a number from 0 to 100",
        )
        return None
    return TracingSettings(
        collector_host=host,
        collector_port=int(port),
        sample_percent=100.0 if sample is None else float(sample),
    )


def read_affinity(r: Reader, node: yaml.Node | None) -> AffinitySettings | None:
    """Plano's ``routing`` section: only the session pin's size and lifetime
    are Archway's business; every other key is warned about and ignored."""
    fields = r.mapping(node, "routing", None)
    if fields is None:
        return None
    if isinstance(node, yaml.MappingNode):
        for key, (key_node, _) in r.pairs(node, "routing").items():
            if key in ("llm_provider", "model"):
                r.warn(key_node, f"routing.{key}", ROUTER_HINT)
            elif key not in _AFFINITY_KEYS:
                r.warn(key_node, f"routing.{key}", IGNORED)
    return AffinitySettings(**(r.settings(AffinitySettings, fields, node, "routing") or {}))


def read_state_storage(r: Reader, node: yaml.Node | None) -> StateStorageConfig | None:
    """Plano's ``state_storage``: where Responses conversations are kept. ``None``
    when the section is absent or unusable (reported)."""
    if node is None:
        return None
    fields = r.mapping(node, "state_storage", ("type", "connection_string"))
    if fields is None:
        return None
    if "type" not in fields:
        r.missing_key(node, "state_storage", "type", "`type: memory` or `type: postgres`")
        return None
    section: dict[str, str | None] = {"type": r.text(fields["type"], "state_storage.type")}
    if "connection_string" in fields:
        # It usually holds a password: read like a key, never echoed.
        dsn, _ = r.secret(fields["connection_string"], "state_storage.connection_string")
        if dsn is None:
            return None
        section["connection_string"] = dsn
    try:
        return parse_state_storage(section)
    except StateStorageError as exc:
        r.error(
            node,
            "state_storage",
            str(exc).removeprefix("state_storage: ").removeprefix("state_storage."),
            _STATE_FIX,
        )
        return None


_STATE_FIX = (
    "write `state_storage: {type: memory}` or "
    "`state_storage: {type: postgres, connection_string: $DATABASE_URL}`"
)
