"""Render a ``Config`` into an Envoy (1.40) bootstrap.

The bootstrap is static: every listener, route and cluster is known from the
config, so no xDS server is needed. Envoy runs the ext_proc filter before the
router; the Archway server picks the upstream by setting ``x-archway-cluster``
(``ROUTE_HEADER``) and asking Envoy to clear its route cache, and the routes
read the cluster from that header.

Response translation has a filter of its own (``TRANSLATION_FILTER``), a second
ext_proc filter after the routing one. It is off by default and switched on
only by the route that matches ``TRANSLATE_HEADER``, which the routing filter
sets on translated requests. Envoy only honours a processing-mode override in
answer to a headers message, so the routing filter cannot switch its own
response phases on from its body phase; a per-route filter can, and requests
that need no translation never open its gRPC stream.

Nothing secret goes into the bootstrap: credentials are injected per request
by the ext_proc server, so the rendered file can be written to disk, printed
and committed.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from ext_proc.access.gate import USAGE_HEADER
from ext_proc.apis import ErrorShape, path_prefixes
from ext_proc.config import (
    Config,
    ExtProcTls,
    GatewaySettings,
    Listener,
    Overrides,
    TracingSettings,
)
from ext_proc.deploy import one_message, unserved
from ext_proc.deploy.ext_proc_filter import ROUTING_FILTER, T_EXT_PROC_PER_ROUTE
from ext_proc.errors import GatewayError, error_payload
from ext_proc.headers import (
    ATTEMPT_HEADER,
    CLIENT_DECISION_HEADERS,
    CLIENT_PATH_HEADER,
    DECISION_FALLBACK,
    DECISION_MODEL,
    DECISION_ROUTE_SCORE,
    ROUTE_HEADER,
    TRANSLATE_HEADER,
    TRANSLATION_PHASE,
    UPSTREAM_PHASE,
    UPSTREAM_PHASE_KEY,
)
from ext_proc.routing.catalog import Upstream, failover_cluster_name, upstream_for
from ext_proc.routing.resolve import build_routing_table, failover_chains
from ext_proc.server import modes
from ext_proc.server.health import EXT_PROC_SERVICE
from ext_proc.server.messages import DECISION_NAMESPACE, METADATA_NAMESPACE

__all__ = [
    "ACCESS_LOG_FORMAT",
    "BUFFER_HEADROOM_BYTES",
    "CLIENT_PATH_HEADER",
    "EXT_PROC_CLUSTER",
    "EXT_PROC_HEALTH_CHECK",
    "MAX_DOWNSTREAM_CONNECTIONS",
    "OTEL_COLLECTOR_CLUSTER",
    "ROUTER_TIMEOUT_MARGIN_S",
    "TRANSLATION_FILTER",
    "TRANSLATION_STAT_PREFIX",
    "HealthCheckTiming",
    "bootstrap_dict",
    "buffer_limit_bytes",
    "distinct_upstreams",
    "is_ip_address",
    "message_timeout_s",
    "render_bootstrap",
]

EXT_PROC_CLUSTER = "archway_ext_proc"

OTEL_COLLECTOR_CLUSTER = "archway_otel_collector"
"""Where Envoy sends its spans when ``archway.tracing`` is set (OTLP over gRPC)."""
ENVOY_SERVICE_NAME = "archway-envoy"

TRANSLATION_FILTER = "archway.translate"
"""The response-translation ext_proc filter's name, which routes configure it by."""

TRANSLATION_STAT_PREFIX = "translate"
"""Its stats: ``http.<listener>.ext_proc.translate.streams_started`` and so on."""

BUFFER_HEADROOM_BYTES = 256 * 1024
"""Added to ``max_request_body_bytes`` for buffers that also hold headers, gRPC
framing or the protobuf envelope around a body."""

MAX_DOWNSTREAM_CONNECTIONS = 50_000

_EXT_PROC_CONNECT_TIMEOUT_S = 1.0

ROUTER_TIMEOUT_MARGIN_S = 1.0
"""Envoy's ext_proc message timeout is at least the router's timeout plus this:
room for reading, resolving and answering around the router's call on a busy
machine, so a timed-out router still ends in the default model, not a 504."""


@dataclass(frozen=True)
class HealthCheckTiming:
    """How Envoy health-checks the ext_proc servers (gRPC health, ``EXT_PROC_SERVICE``)."""

    interval_s: float
    timeout_s: float
    unhealthy_threshold: int
    healthy_threshold: int

    @property
    def notice_s(self) -> float:
        """The longest a server can say NOT_SERVING before Envoy stops picking it."""
        return self.interval_s * self.unhealthy_threshold + self.timeout_s


EXT_PROC_HEALTH_CHECK = HealthCheckTiming(
    interval_s=1.0, timeout_s=1.0, unhealthy_threshold=2, healthy_threshold=1
)
"""Frequent: a check is one tiny gRPC call, and a draining server must be noticed
well within its drain period (``health.DEFAULT_DRAIN_S``). One good answer is
enough to take a server back, so a restarted one serves at once."""
_MIN_STREAM_IDLE_TIMEOUT_S = 300.0
_REQUEST_RECEIVE_TIMEOUT_S = 300.0
"""How long a client may take to send a whole request (headers and body)."""

_T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
_T_EXT_PROC = "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"
_T_HEADER_MUTATION = (
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"
)
_T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_T_OTEL_TRACER = "type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig"
_OTEL_EXPORT_TIMEOUT_S = 0.25
_T_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_T_DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors."
    "downstream_connections.v3.DownstreamConnectionsConfig"
)
_T_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_T_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_T_PREVIOUS_PRIORITIES = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3."
    "PreviousPrioritiesConfig"
)
_T_UPSTREAM_CODEC = (
    "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
)
_T_EXTENSION_WITH_MATCHER = (
    "type.googleapis.com/envoy.extensions.common.matching.v3.ExtensionWithMatcher"
)
_T_HEADER_INPUT = "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput"
_T_SKIP_FILTER = "type.googleapis.com/envoy.extensions.filters.common.matcher.action.v3.SkipFilter"
_TLS_MATCH_KEY = "archway_upstream"
"""Endpoint metadata key that picks each failover endpoint's own TLS setup."""
_RAW_BUFFER: dict[str, Any] = {
    "name": "envoy.transport_sockets.raw_buffer",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
    },
}

ACCESS_LOG_FORMAT: dict[str, str] = {
    "start_time": "%START_TIME%",
    "method": "%REQ(:METHOD)%",
    "path": f"%REQ({CLIENT_PATH_HEADER}?:PATH)%",
    "upstream_path": "%REQ(:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration_ms": "%DURATION%",
    "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    **{
        name.removeprefix("x-archway-").replace("-", "_"): f"%REQ({name})%"
        for name in CLIENT_DECISION_HEADERS
    },
    "route_score": f"%REQ({DECISION_ROUTE_SCORE})%",
    "translation": f"%REQ({TRANSLATE_HEADER})%",
    "fallback": f"%RESP({DECISION_FALLBACK})%",
    "answered_model": f"%RESP({DECISION_MODEL})%",
    "trace_id": "%TRACE_ID%",
    **{
        name: f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{name})%"
        for name in (
            "client",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "reasoning_tokens",
            "time_to_first_token_ms",
        )
    },
}
"""One JSON object per request on Envoy's stdout.

- ``start_time``: when the first request byte arrived (RFC 3339, UTC).
- ``method``: the HTTP method.
- ``path``: the path the client asked for (before the ext_proc rewrite).
- ``upstream_path``: the path sent upstream (after the ext_proc rewrite).
- ``protocol``: the downstream HTTP protocol (``HTTP/1.1``, ``HTTP/2``).
- ``response_code``: the status sent to the client (0 if none was sent).
- ``response_flags``: Envoy's short failure codes, e.g. ``UF`` (upstream
  connect failure), ``UT`` (upstream timeout), ``NC`` (no cluster: the ext_proc
  server chose none); ``-`` when nothing went wrong.
- ``response_code_details``: why Envoy answered as it did, e.g. ``via_upstream``,
  ``request_payload_too_large`` or the details of an ext_proc immediate response.
- ``bytes_received`` / ``bytes_sent``: downstream body bytes in and out.
- ``duration_ms``: from the first request byte to the last response byte.
- ``upstream_service_time_ms``: the upstream's own time, as Envoy measured it.
- ``upstream_cluster`` / ``upstream_host``: the cluster picked through the route
  header and the address that served the request.
- ``request_id``: Envoy's ``x-request-id``, also seen by the ext_proc server.
- ``model``, ``provider``, ``resolution``, ``route``, ``affinity``: Archway's
  decision, the ``x-archway-*`` request headers that are also echoed to the client.
- ``route_score``: the preference router's confidence in ``route``, where its
  backend has one.
- ``translation``: ``openai-to-anthropic`` or ``anthropic-to-openai`` when the
  request and its response were translated; ``null`` otherwise.
- ``fallback``: how many models failed before the one that answered; ``null``
  when the first choice answered (or the request had no fallbacks).
- ``answered_model``: the model that answered (``x-archway-model`` on the
  response): a fallback's, when ``fallback`` is set.
- ``trace_id``: Envoy's trace id when tracing is on; ``null`` otherwise.
- ``client``: the ``archway.clients`` name whose key the request presented;
  ``null`` without clients.
- ``input_tokens``, ``output_tokens``, ``cached_tokens``, ``reasoning_tokens``:
  the provider's usage for answers Archway counts (translated ones, and every
  one under a limit or with ``archway.usage``); ``null`` otherwise.
- ``time_to_first_token_ms``: for a counted stream, from the request's arrival
  to its first output token.

The README's Operations section documents every field for operators.
"""


def buffer_limit_bytes(gateway: GatewaySettings) -> int:
    """Per-connection buffer limit that fits the largest accepted body.

    Envoy's 1 MiB default would answer 413 to any larger body that the ext_proc
    filter buffers, whatever ``max_request_body_bytes`` says.
    """
    return gateway.max_request_body_bytes + BUFFER_HEADROOM_BYTES


def bootstrap_dict(
    config: Config,
    *,
    ext_proc_host: str | None = None,
    ext_proc_port: int | None = None,
    admin_port: int | None = None,
    ext_proc_ports: Sequence[int] = (),
    ext_proc_uds: str | None = None,
) -> dict[str, Any]:
    """The bootstrap as plain data (the shape of Envoy's v3 ``Bootstrap`` in YAML/JSON).

    The keyword arguments override ``config.gateway``: ``archway up`` passes the
    port its ext_proc server actually bound, docker-compose the service name.
    ``ext_proc_ports``, when given, replaces the one ext_proc endpoint with one
    per port (``archway up``'s workers each have their own). ``ext_proc_uds``
    overrides ``archway.ext_proc_uds`` (``""``: TCP even if the config says a socket).
    Raises ``ValueError`` when two providers need one cluster to point at
    different endpoints, or when a provider has no usable base URL.
    """
    gateway = config.gateway
    host = gateway.ext_proc_address if ext_proc_host is None else ext_proc_host
    port = gateway.ext_proc_port if ext_proc_port is None else ext_proc_port
    admin = gateway.admin_port if admin_port is None else admin_port
    uds = gateway.ext_proc_uds if ext_proc_uds is None else ext_proc_uds or None
    clusters = [_ext_proc_cluster(host, list(ext_proc_ports) or [port], gateway, uds)]
    clusters += [
        _upstream_cluster(upstream, config.overrides, gateway)
        for upstream in distinct_upstreams(config)
    ]
    clusters += [
        _failover_cluster(name, chain, config.overrides, gateway)
        for name, chain in failover_chains(build_routing_table(config)).items()
    ]
    if gateway.tracing is not None:
        clusters.append(_otel_collector_cluster(gateway.tracing))
    return {
        "admin": {"address": _socket_address(gateway.admin_address, admin)},
        "overload_manager": _overload_manager(),
        "static_resources": {
            "listeners": [_listener(listener, config) for listener in config.listeners],
            "clusters": clusters,
        },
    }


def render_bootstrap(
    config: Config,
    *,
    ext_proc_host: str | None = None,
    ext_proc_port: int | None = None,
    admin_port: int | None = None,
    ext_proc_ports: Sequence[int] = (),
    ext_proc_uds: str | None = None,
) -> str:
    """The bootstrap as YAML text; the same config always renders the same text."""
    data = bootstrap_dict(
        config,
        ext_proc_host=ext_proc_host,
        ext_proc_port=ext_proc_port,
        admin_port=admin_port,
        ext_proc_ports=ext_proc_ports,
        ext_proc_uds=ext_proc_uds,
    )
    header = "# Generated by Archway from its config; edit the config, not this file.\n"
    # A wide line keeps long messages on one line, as a reader would write them.
    return header + yaml.safe_dump(data, sort_keys=False, width=4096)


# --- small helpers -----------------------------------------------------------


def _duration(seconds: float) -> str:
    """A protobuf Duration in its JSON form, in whole milliseconds (``2.500s``, ``30s``)."""
    millis = round(seconds * 1000)
    whole, frac = divmod(millis, 1000)
    return f"{whole}.{frac:03d}s" if frac else f"{whole}s"


def is_ip_address(host: str) -> bool:
    """Whether Envoy can reach ``host`` without DNS (a STATIC cluster)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _overload_manager() -> dict[str, Any]:
    # Envoy warns at startup when nothing caps downstream connections; the cap
    # is far above what one gateway serves, so it only stops runaway clients.
    return {
        "resource_monitors": [
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _T_DOWNSTREAM_CONNECTIONS,
                    "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
                },
            }
        ]
    }


# --- listeners -----------------------------------------------------------------


def _listener(listener: Listener, config: Config) -> dict[str, Any]:
    gateway = config.gateway
    return {
        "name": listener.name,
        "address": _socket_address(listener.address, listener.port),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(gateway),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": _http_connection_manager(listener, config),
                    }
                ]
            }
        ],
    }


def _http_connection_manager(listener: Listener, config: Config) -> dict[str, Any]:
    gateway = config.gateway
    # The idle timeout must not fire before the route timeout does: a reasoning
    # model can think for minutes before its first byte.
    idle_s = max(listener.timeout_s + 5.0, _MIN_STREAM_IDLE_TIMEOUT_S)
    return {
        "@type": _T_HCM,
        "stat_prefix": listener.name,
        "codec_type": "AUTO",
        "stream_idle_timeout": _duration(idle_s),
        "request_timeout": _duration(_REQUEST_RECEIVE_TIMEOUT_S),
        "access_log": [_access_log()],
        **({"tracing": _tracing(gateway.tracing)} if gateway.tracing is not None else {}),
        "route_config": _route_config(listener, config),
        "local_reply_config": _local_reply_config(gateway),
        "http_filters": [
            _client_path_filter(),
            _routing_filter(config),
            *([one_message.lua_filter()] if _one_message(gateway) else []),
            _translation_filter(gateway),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _T_ROUTER}},
        ],
    }


def _one_message(gateway: GatewaySettings) -> bool:
    return gateway.ext_proc_messages == "one"


def _routing_filter(config: Config) -> dict[str, Any]:
    gateway = config.gateway
    routing = _ext_proc_filter(gateway, message_timeout_s=message_timeout_s(config))
    if _one_message(gateway):
        # See ext_proc.deploy.one_message: the body alone, with the headers the
        # decision reads as attributes; the decision comes back as metadata.
        typed = routing["typed_config"]
        typed["processing_mode"] = modes.ROUTING_ONE_MESSAGE.envoy()
        typed["request_attributes"] = one_message.request_attributes(config)
        typed["metadata_options"] = {
            "receiving_namespaces": {"untyped": [METADATA_NAMESPACE, DECISION_NAMESPACE]}
        }
    return routing


def _tracing(settings: TracingSettings) -> dict[str, Any]:
    """Envoy's own spans, exported to the collector with OpenTelemetry.

    Envoy also puts its span's context on the ext_proc gRPC call, so Archway's
    request span joins the same trace as a child of Envoy's. The decision headers
    become span tags: Envoy reads them when the span ends, after Archway set them.
    """
    return {
        "random_sampling": {"value": settings.sample_percent},
        "provider": {
            "name": "envoy.tracers.opentelemetry",
            "typed_config": {
                "@type": _T_OTEL_TRACER,
                "grpc_service": {
                    "envoy_grpc": {"cluster_name": OTEL_COLLECTOR_CLUSTER},
                    "timeout": _duration(_OTEL_EXPORT_TIMEOUT_S),
                },
                "service_name": ENVOY_SERVICE_NAME,
            },
        },
        "custom_tags": [
            {
                "tag": "archway." + name.removeprefix("x-archway-").replace("-", "_"),
                "request_header": {"name": name},
            }
            for name in (*CLIENT_DECISION_HEADERS, TRANSLATE_HEADER)
        ],
    }


def _client_path_filter() -> dict[str, Any]:
    """Copies the client's ``:path`` before ext_proc rewrites it (see ``CLIENT_PATH_HEADER``)."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _T_HEADER_MUTATION,
            "mutations": {
                "request_mutations": [
                    {
                        "append": {
                            "header": {"key": CLIENT_PATH_HEADER, "value": "%REQ(:PATH)%"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    }
                ]
            },
        },
    }


def _ext_proc_grpc_service(gateway: GatewaySettings, *, phase: str | None) -> dict[str, Any]:
    service: dict[str, Any] = {
        "envoy_grpc": {
            "cluster_name": EXT_PROC_CLUSTER,
            # A body mutation carries the whole rewritten body in one
            # message; gRPC's 4 MiB default would fail larger ones.
            "max_receive_message_length": buffer_limit_bytes(gateway),
        },
    }
    if phase is not None:
        # One server, three roles: this stream metadata tells the server that the
        # stream is a retry attempt or a response to translate, not a new request.
        service["initial_metadata"] = [{"key": UPSTREAM_PHASE_KEY, "value": phase}]
    return service


def message_timeout_s(config: Config) -> float:
    """How long Envoy waits for the routing filter's answer to one message.

    The body's answer waits for the preference router, which may take up to its
    own timeout before the request falls back to the default model; Envoy must
    wait longer than that, or the client gets Envoy's 504 instead of the
    default model the spec promises.
    """
    configured = config.gateway.message_timeout_s
    if config.router is None or not config.routing_preferences:
        return configured
    return max(configured, config.router.timeout_s + ROUTER_TIMEOUT_MARGIN_S)


def _ext_proc_filter(
    gateway: GatewaySettings, *, upstream: bool = False, message_timeout_s: float | None = None
) -> dict[str, Any]:
    """The routing filter, or (``upstream``) its twin in a failover cluster's
    upstream filter chain, which sees each retry attempt (never the router)."""
    service = _ext_proc_service(gateway, UPSTREAM_PHASE if upstream else None)
    if message_timeout_s is not None:
        service["message_timeout"] = _duration(message_timeout_s)
    return {
        "name": ROUTING_FILTER,
        "typed_config": {
            **service,
            # Upstream, the server skips the body of a first attempt and asks for
            # the response headers only when a fallback answers, by mode overrides.
            "processing_mode": modes.ROUTING.envoy(),
            "allow_mode_override": True,
        },
    }


def _translation_filter(gateway: GatewaySettings) -> dict[str, Any]:
    """Response translation: sends nothing to the server unless a route turns it on."""
    return {
        "name": TRANSLATION_FILTER,
        "typed_config": {
            **_ext_proc_service(gateway, TRANSLATION_PHASE),
            "stat_prefix": TRANSLATION_STAT_PREFIX,
            "processing_mode": modes.TRANSLATION_OFF.envoy(),
            "allow_mode_override": True,
        },
    }


def _ext_proc_service(gateway: GatewaySettings, phase: str | None) -> dict[str, Any]:
    return {
        "@type": _T_EXT_PROC,
        "grpc_service": _ext_proc_grpc_service(gateway, phase=phase),
        "failure_mode_allow": gateway.failure_mode_allow,
        "message_timeout": _duration(gateway.message_timeout_s),
        # The client's name and the answer's usage, for the access log.
        "metadata_options": {"receiving_namespaces": {"untyped": [METADATA_NAMESPACE]}},
    }


def _route_config(listener: Listener, config: Config) -> dict[str, Any]:
    # ADD_IF_ABSENT: when a fallback answered, the upstream processor already put
    # the model that did on the response, and it must not be overwritten.
    echo = [_echo_request_header(name, "ADD_IF_ABSENT") for name in CLIENT_DECISION_HEADERS]
    chains = failover_chains(build_routing_table(config))
    default_action: dict[str, Any] = {
        "cluster_header": ROUTE_HEADER,
        "timeout": _duration(listener.timeout_s),
        "auto_host_rewrite": True,
    }
    _add_listener_retries(default_action, listener, listener.timeout_s)
    # Special clusters first (failover retries, per-provider timeouts), matched
    # on the cluster Archway chose; then every other cluster by the header.
    actions: list[tuple[list[dict[str, Any]], dict[str, Any]]] = [
        *(
            (_cluster_match(name), _failover_action(chain, listener, config))
            for name, chain in chains.items()
        ),
        *(
            (_cluster_match(cluster), _timeout_action(cluster, timeout_s, listener))
            for cluster, timeout_s in _provider_timeouts(config).items()
        ),
        ([], default_action),
    ]
    # Requests Archway cannot serve are answered by Envoy, with no ext_proc stream.
    lua_off = one_message.lua_off() if _one_message(config.gateway) else {}
    routes: list[dict[str, Any]] = [
        *unserved.method_not_allowed_routes(ROUTE_HEADER, lua_off),
        unserved.not_found_route(ROUTE_HEADER, lua_off),
    ]
    if _one_message(config.gateway):
        # First, so that no client header picks another route before ext_proc
        # reads this one's override (the route is matched before any filter runs).
        routes.append(
            {
                "match": {
                    "prefix": "/",
                    "headers": [
                        {"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}
                    ],
                },
                "route": default_action,
                "typed_per_filter_config": one_message.two_message_overrides(),
            }
        )
    metered = config.access.meters
    echoed = (TRANSLATE_HEADER, USAGE_HEADER) if metered else (TRANSLATE_HEADER,)
    for headers, action in actions:
        routes.append(_translated_route(headers, action, TRANSLATE_HEADER, echoed))
        if metered:
            routes.append(_translated_route(headers, action, USAGE_HEADER, echoed))
        match: dict[str, Any] = {"prefix": "/", "headers": headers} if headers else {"prefix": "/"}
        routes.append({"match": match, "route": action})
    virtual_host: dict[str, Any] = {"name": "llm", "domains": ["*"], "routes": routes}
    if chains:
        # The upstream processor tells each retry's model by its attempt number.
        virtual_host["include_request_attempt_count"] = True
    return {
        "name": f"{listener.name}_routes",
        "virtual_hosts": [virtual_host],
        "response_headers_to_add": echo,
    }


def _translated_route(
    headers: list[dict[str, Any]],
    action: dict[str, Any],
    marker: str,
    echoed: tuple[str, ...],
) -> dict[str, Any]:
    """The same route for requests whose response Archway translates or counts
    (``marker``: ``TRANSLATE_HEADER`` or ``USAGE_HEADER``): chosen again after
    the routing filter's body phase (it clears the route cache), so it sees the
    header that phase set, and turns the translation filter on."""
    return {
        "match": {
            "prefix": "/",
            "headers": [*headers, {"name": marker, "present_match": True}],
        },
        "route": dict(action),
        # The translation filter reads the direction and the usage ticket from
        # the response (an absent header is not echoed).
        "response_headers_to_add": [
            _echo_request_header(name, "OVERWRITE_IF_EXISTS_OR_ADD") for name in echoed
        ],
        "typed_per_filter_config": {
            TRANSLATION_FILTER: {
                "@type": T_EXT_PROC_PER_ROUTE,
                "overrides": {"processing_mode": modes.TRANSLATION_ON.envoy()},
            }
        },
    }


def _echo_request_header(name: str, append_action: str) -> dict[str, Any]:
    return {
        "header": {"key": name, "value": f"%REQ({name})%"},
        "append_action": append_action,
        "keep_empty_value": False,
    }


def _cluster_match(cluster: str) -> list[dict[str, Any]]:
    # Matched after the ext_proc server set the header and cleared the route
    # cache; a client's own copy was stripped before that.
    return [{"name": ROUTE_HEADER, "string_match": {"exact": cluster}}]


def _provider_timeouts(config: Config) -> dict[str, float]:
    """Per upstream cluster, the longest per-provider timeout set on it."""
    out: dict[str, float] = {}
    for provider in config.providers:
        if provider.timeout_s is not None:
            cluster = upstream_for(provider).cluster
            out[cluster] = max(out.get(cluster, 0.0), provider.timeout_s)
    return out


def _timeout_action(cluster: str, timeout_s: float, listener: Listener) -> dict[str, Any]:
    action = {"cluster": cluster, "timeout": _duration(timeout_s), "auto_host_rewrite": True}
    _add_listener_retries(action, listener, timeout_s)
    return action


_RETRY_ON = "connect-failure,refused-stream,reset,5xx,retriable-status-codes"
"""Connect failures, resets, 5xx and 429: what another attempt can fix."""


def _add_listener_retries(action: dict[str, Any], listener: Listener, per_try_s: float) -> None:
    """Plano's listener ``max_retries``: the same upstream tried again, each
    attempt with its full time."""
    if not listener.max_retries:
        return
    action["timeout"] = _duration(per_try_s * (listener.max_retries + 1))
    action["retry_policy"] = {
        "retry_on": _RETRY_ON,
        "retriable_status_codes": [429],
        "num_retries": listener.max_retries,
        "per_try_timeout": _duration(per_try_s),
        # Plano's back-off: a provider that throttles needs a moment.
        "retry_back_off": {"base_interval": "0.5s", "max_interval": "5s"},
    }


def _failover_action(
    chain: tuple[Upstream, ...], listener: Listener, config: Config
) -> dict[str, Any]:
    """Retries that walk the failover cluster's priority levels, one per attempt."""
    timeouts = _provider_timeouts(config)
    retry: dict[str, Any] = {
        "retry_on": _RETRY_ON,
        "retriable_status_codes": [429],
        # A listener's max_retries may ask for more attempts than the chain has
        # levels; the last model takes those.
        "num_retries": max(len(chain) - 1, listener.max_retries or 0),
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": _T_PREVIOUS_PRIORITIES, "update_frequency": 1},
        },
        "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
    }
    if any(u.cluster in timeouts for u in chain):
        per_try = max(timeouts.get(u.cluster, listener.timeout_s) for u in chain)
        retry["per_try_timeout"] = _duration(per_try)
    return {
        "cluster": failover_cluster_name(tuple(u.cluster for u in chain)),
        # Every attempt may take its full time.
        "timeout": _duration(listener.timeout_s * (retry["num_retries"] + 1)),
        "auto_host_rewrite": True,
        "retry_policy": retry,
    }


# --- Envoy's own error replies ------------------------------------------------

# (name, filter, OpenAI type, code, Anthropic type, message). Each filter is
# narrow on purpose: the ext_proc server's immediate responses are local replies
# too, and carry their own JSON bodies that must reach the client untouched.
_UPSTREAM_UNAVAILABLE_FLAGS = ["UF", "UH", "URX", "UO", "UC", "UR"]


def _local_reply_kinds(gateway: GatewaySettings) -> list[tuple[dict[str, Any], GatewayError]]:
    """Envoy's own error replies: what each matches, and the error it words,
    with the status that picks the error's type in each API."""
    limit = gateway.max_request_body_bytes
    return [
        (
            _too_large_filter(),
            GatewayError(
                413,
                f"Request body exceeds the gateway limit of {limit} bytes.",
                code="request_too_large",
            ),
        ),
        (
            _details_filter("response.code_details.startsWith('ext_proc_error')"),
            GatewayError(
                500,
                "Archway's routing service is unavailable; retry shortly.",
                code="router_unavailable",
            ),
        ),
        (
            {
                "and_filter": {
                    "filters": [
                        _status_filter(404),
                        _details_filter(
                            f"response.code_details == '{unserved.DIRECT_RESPONSE_DETAILS}'"
                        ),
                    ]
                }
            },
            unserved.not_found_error(),
        ),
        (
            {"response_flag_filter": {"flags": ["UT"]}},
            GatewayError(
                504, "The model provider did not answer in time.", code="upstream_timeout"
            ),
        ),
        (
            {"response_flag_filter": {"flags": ["NC"]}},
            GatewayError(
                503, "The gateway selected no upstream for this request.", code="no_upstream"
            ),
        ),
        (
            {"response_flag_filter": {"flags": _UPSTREAM_UNAVAILABLE_FLAGS}},
            GatewayError(
                503,
                "The model provider could not be reached: %LOCAL_REPLY_BODY%",
                code="upstream_unavailable",
            ),
        ),
    ]


def _too_large_filter() -> dict[str, Any]:
    """413s that Envoy itself sends (a body over the buffer limit).

    Status alone would also catch a 413 from the ext_proc server; the response
    code details tell Envoy's own (``request_payload_too_large``) apart.
    """
    return {
        "and_filter": {
            "filters": [
                _status_filter(413),
                _details_filter("response.code_details == 'request_payload_too_large'"),
            ]
        }
    }


def _status_filter(status: int) -> dict[str, Any]:
    return {"status_code_filter": {"comparison": {"op": "EQ", "value": _runtime(status)}}}


def _details_filter(expression: str) -> dict[str, Any]:
    """A CEL filter on the reply; Envoy's own failures are told apart from the
    ext_proc server's immediate responses by their response code details."""
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers."
                "filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _runtime(value: int) -> dict[str, Any]:
    # Comparison values are runtime-overridable; the key is never set, so the default wins.
    return {"default_value": value, "runtime_key": "archway.local_reply.unused"}


def _anthropic_request() -> dict[str, Any]:
    """Matches requests whose client speaks an API with Anthropic's error shape."""
    filters = [
        {"header_filter": {"header": {"name": CLIENT_PATH_HEADER, "string_match": {"prefix": p}}}}
        for p in path_prefixes(ErrorShape.ANTHROPIC)
    ]
    return filters[0] if len(filters) == 1 else {"or_filter": {"filters": filters}}


def _local_reply_config(gateway: GatewaySettings) -> dict[str, Any]:
    mappers: list[dict[str, Any]] = []
    for match, error in _local_reply_kinds(gateway):
        # First match wins, so each Anthropic-shaped mapper precedes its OpenAI twin.
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [match, _anthropic_request()]}},
                "body_format_override": _json_body(error_payload(ErrorShape.ANTHROPIC, error)),
            }
        )
        mappers.append(
            {
                "filter": match,
                "body_format_override": _json_body(error_payload(ErrorShape.OPENAI, error)),
            }
        )
    return {"mappers": mappers}


def _json_body(shape: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"json_format": shape, "content_type": "application/json"}
    if "%REQ_WITHOUT_QUERY(" in json.dumps(shape):
        # A formatter extension, not built into the substitution format.
        body["formatters"] = [
            {
                "name": "envoy.formatter.req_without_query",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.formatter."
                    "req_without_query.v3.ReqWithoutQuery"
                },
            }
        ]
    return body


def _access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": _T_STDOUT_LOG,
            "log_format": {"json_format": dict(ACCESS_LOG_FORMAT)},
        },
    }


# --- clusters ------------------------------------------------------------------


def _ext_proc_cluster(
    host: str, ports: list[int], gateway: GatewaySettings, uds: str | None = None
) -> dict[str, Any]:
    if uds is not None:
        # A sidecar: the hop never touches a network, and nothing needs resolving.
        load_assignment: dict[str, Any] = {
            "cluster_name": EXT_PROC_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": uds}}}}]}],
        }
        kind = "STATIC"
    else:
        load_assignment = _load_assignment(EXT_PROC_CLUSTER, host, ports[0], hostname=None)
        # Several ports are several worker processes: Envoy round-robins streams
        # over them from every one of its threads, which spreads the work evenly
        # where the kernel's SO_REUSEPORT hashing of a few connections would not.
        load_assignment["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": _socket_address(host, port)}} for port in ports
        ]
        kind = "STATIC" if is_ip_address(host) else "STRICT_DNS"
    cluster: dict[str, Any] = {
        "name": EXT_PROC_CLUSTER,
        "type": kind,
        "connect_timeout": _duration(_EXT_PROC_CONNECT_TIMEOUT_S),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(gateway),
        # gRPC needs HTTP/2; in cleartext unless the config asks for TLS.
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _T_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": load_assignment,
        "health_checks": [_ext_proc_health_check(EXT_PROC_HEALTH_CHECK)],
        # A server that DNS no longer returns (a Kubernetes pod that went away)
        # leaves at once, rather than after failing its checks.
        "ignore_health_on_host_removal": True,
    }
    if gateway.ext_proc_tls is not None:
        cluster["transport_socket"] = _ext_proc_tls_socket(gateway.ext_proc_tls, host)
    if kind == "STRICT_DNS":
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _ext_proc_tls_socket(tls: ExtProcTls, host: str) -> dict[str, Any]:
    """Envoy verifies Archway's certificate: the chain against ``ca`` (or the
    certificate itself) and the name it was reached by, so a peer on the
    network cannot stand in for Archway and read the requests and keys."""
    name = tls.server_name or host
    san_type = "IP_ADDRESS" if is_ip_address(name) else "DNS"
    context: dict[str, Any] = {
        "@type": _T_TLS,
        "common_tls_context": {
            # The h2 transport refuses a TLS client that does not offer h2.
            "alpn_protocols": ["h2"],
            "validation_context": {
                "trusted_ca": {"filename": tls.trusted_ca},
                "match_typed_subject_alt_names": [
                    {"san_type": san_type, "matcher": {"exact": name}}
                ],
            },
        },
    }
    if san_type == "DNS":
        context["sni"] = name
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _otel_collector_cluster(settings: TracingSettings) -> dict[str, Any]:
    host = settings.collector_host
    cluster: dict[str, Any] = {
        "name": OTEL_COLLECTOR_CLUSTER,
        "type": "STATIC" if is_ip_address(host) else "STRICT_DNS",
        "connect_timeout": _duration(_EXT_PROC_CONNECT_TIMEOUT_S),
        # OTLP/gRPC: HTTP/2 in cleartext, as collectors listen on 4317 by default.
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _T_HTTP_OPTIONS,
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": _load_assignment(
            OTEL_COLLECTOR_CLUSTER, host, settings.collector_port, hostname=None
        ),
    }
    if not is_ip_address(host):
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _ext_proc_health_check(timing: HealthCheckTiming) -> dict[str, Any]:
    # Envoy finishes the first round of checks before it reports ready, so the
    # first requests already know which servers answer. When every server fails
    # its check, Envoy's panic threshold (50% by default) sends to all of them
    # anyway: health checking only ever steers traffic between servers and never
    # turns a request away that would have been served without it.
    return {
        "timeout": _duration(timing.timeout_s),
        "interval": _duration(timing.interval_s),
        # Until a cluster has seen traffic Envoy checks every 60s by default, and a
        # server that came up in the meantime would wait that long to be picked.
        "no_traffic_interval": _duration(timing.interval_s),
        "unhealthy_threshold": timing.unhealthy_threshold,
        "healthy_threshold": timing.healthy_threshold,
        "grpc_health_check": {"service_name": EXT_PROC_SERVICE},
    }


def distinct_upstreams(config: Config) -> list[Upstream]:
    """One upstream per cluster name, in config order.

    Providers sharing a cluster must agree on the endpoint: Envoy has one Host
    header (the endpoint's ``hostname``) and one TLS setup per cluster.
    """
    seen: dict[str, Upstream] = {}
    for provider in config.providers:
        upstream = upstream_for(provider)
        earlier = seen.setdefault(upstream.cluster, upstream)
        if _endpoint(earlier) != _endpoint(upstream):
            raise ValueError(
                f"{provider.model}: cluster {upstream.cluster!r} is already used for "
                f"{_describe(earlier)}, not {_describe(upstream)}; "
                "give these providers the same base_url and http_host"
            )
    return list(seen.values())


def _endpoint(upstream: Upstream) -> tuple[str, int, bool, str]:
    return (upstream.host, upstream.port, upstream.tls, upstream.host_header)


def _describe(upstream: Upstream) -> str:
    scheme = "https" if upstream.tls else "http"
    return f"{scheme}://{upstream.host}:{upstream.port} (Host {upstream.host_header})"


def _upstream_cluster(
    upstream: Upstream, overrides: Overrides, gateway: GatewaySettings
) -> dict[str, Any]:
    ip = is_ip_address(upstream.host)
    cluster: dict[str, Any] = {
        "name": upstream.cluster,
        # LOGICAL_DNS: one connection pool per provider whose hosts rotate
        # behind DNS, without churning pools on every answer.
        "type": "STATIC" if ip else "LOGICAL_DNS",
        "connect_timeout": _duration(overrides.upstream_connect_timeout_s),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(gateway),
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: _upstream_http_options(upstream.tls)
        },
        "load_assignment": _load_assignment(
            upstream.cluster, upstream.host, upstream.port, hostname=upstream.host_header
        ),
    }
    if not ip:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    if upstream.tls:
        cluster["transport_socket"] = _upstream_tls(upstream, overrides)
    return cluster


def _failover_cluster(
    name: str, chain: tuple[Upstream, ...], overrides: Overrides, gateway: GatewaySettings
) -> dict[str, Any]:
    """A cluster whose priority levels are a model and its fallbacks, in order.

    Envoy's retry moves one priority down per attempt; the ext_proc filter in the
    cluster's upstream filter chain rewrites model, path and credentials for the
    endpoint each attempt goes to. Each endpoint picks its own TLS setup (SNI,
    SAN) by metadata, since one chain may span providers.
    """
    priorities = []
    for priority, upstream in enumerate(chain):
        endpoint = {
            "address": _socket_address(upstream.host, upstream.port),
            "hostname": upstream.host_header,
        }
        priorities.append(
            {
                "priority": priority,
                "lb_endpoints": [
                    {
                        "endpoint": endpoint,
                        "metadata": {
                            "filter_metadata": {
                                "envoy.transport_socket_match": {_TLS_MATCH_KEY: upstream.cluster}
                            }
                        },
                    }
                ],
            }
        )
    sockets: dict[str, dict[str, Any]] = {}
    for upstream in chain:
        sockets.setdefault(
            upstream.cluster,
            {
                "name": upstream.cluster,
                "match": {_TLS_MATCH_KEY: upstream.cluster},
                "transport_socket": _upstream_tls(upstream, overrides)
                if upstream.tls
                else _RAW_BUFFER,
            },
        )
    any_dns = any(not is_ip_address(u.host) for u in chain)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS" if any_dns else "STATIC",
        "connect_timeout": _duration(overrides.upstream_connect_timeout_s),
        "per_connection_buffer_limit_bytes": buffer_limit_bytes(gateway),
        "load_assignment": {"cluster_name": name, "endpoints": priorities},
        "transport_socket_matches": list(sockets.values()),
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS_KEY: {
                "@type": _T_HTTP_OPTIONS,
                # HTTP/1.1: one protocol every endpoint of a mixed chain speaks.
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [
                    _attempt_filter(gateway),
                    {
                        "name": "envoy.filters.http.upstream_codec",
                        "typed_config": {"@type": _T_UPSTREAM_CODEC},
                    },
                ],
            }
        },
    }
    if any_dns:
        cluster["dns_lookup_family"] = "V4_PREFERRED"
    return cluster


def _attempt_filter(gateway: GatewaySettings) -> dict[str, Any]:
    """The upstream ext_proc filter, skipped on the first attempt: that one goes
    where the routing filter sent it, so a stream would carry no decision."""
    attempt = _ext_proc_filter(gateway, upstream=True)
    return {
        "name": attempt["name"],
        "typed_config": {
            "@type": _T_EXTENSION_WITH_MATCHER,
            "extension_config": attempt,
            "xds_matcher": {
                "matcher_list": {
                    "matchers": [
                        {
                            "predicate": {
                                "single_predicate": {
                                    "input": {
                                        "name": "attempt_count",
                                        "typed_config": {
                                            "@type": _T_HEADER_INPUT,
                                            "header_name": ATTEMPT_HEADER,
                                        },
                                    },
                                    "value_match": {"exact": "1"},
                                }
                            },
                            "on_match": {
                                "action": {
                                    "name": "skip_first_attempt",
                                    "typed_config": {"@type": _T_SKIP_FILTER},
                                }
                            },
                        }
                    ]
                }
            },
        },
    }


def _upstream_http_options(tls: bool) -> dict[str, Any]:
    if tls:
        # Let ALPN pick: providers differ in HTTP/2 support.
        return {
            "@type": _T_HTTP_OPTIONS,
            "auto_config": {"http_protocol_options": {}, "http2_protocol_options": {}},
        }
    # Plain http (a local Ollama, a mock): HTTP/1.1 works everywhere, h2c does not.
    return {"@type": _T_HTTP_OPTIONS, "explicit_http_config": {"http_protocol_options": {}}}


def _upstream_tls(upstream: Upstream, overrides: Overrides) -> dict[str, Any]:
    ip = is_ip_address(upstream.host)
    tls: dict[str, Any] = {
        "@type": _T_TLS,
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "validation_context": {
                "trusted_ca": {"filename": overrides.upstream_tls_ca_path},
                "match_typed_subject_alt_names": [
                    {
                        "san_type": "IP_ADDRESS" if ip else "DNS",
                        "matcher": {"exact": upstream.host},
                    }
                ],
            },
        },
    }
    if not ip:
        # SNI may not carry an IP literal (RFC 6066).
        tls["sni"] = upstream.host
    return {"name": "envoy.transport_sockets.tls", "typed_config": tls}


def _load_assignment(cluster: str, host: str, port: int, *, hostname: str | None) -> dict[str, Any]:
    endpoint: dict[str, Any] = {"address": _socket_address(host, port)}
    if hostname is not None:
        # auto_host_rewrite sends this as Host / :authority.
        endpoint["hostname"] = hostname
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
    }
