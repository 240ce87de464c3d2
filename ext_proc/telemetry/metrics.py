"""Prometheus metrics of the ext_proc server, correct across worker processes.

Every metric is a counter or a histogram: both add up across processes, so the
totals stay right when ``--workers`` runs several ext_proc processes, and when
one of them dies (its file keeps what it counted).

Multi-process mode: ``prometheus_client`` decides at import time whether values
live in process memory or in per-process files under ``PROMETHEUS_MULTIPROC_DIR``.
``archway serve`` and ``archway up`` call ``use_multiprocess_dir`` before any
metric exists, so the directory is set in the environment that worker processes
inherit. One process serves the endpoint (the single server, or the parent
that supervises the workers); it reads every process's files with
``MultiProcessCollector``. Without the variable (tests, a library user), the
metrics live in this process and the endpoint serves them directly.

The recorder is created on first use, so importing this module fixes nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ext_proc.routing.resolve import Resolution, RoutingDecision, RoutingTable, configured_entry

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

__all__ = [
    "MULTIPROC_DIR_ENV",
    "ROUTER_BUCKETS_S",
    "GatewayMetrics",
    "MetricsEndpoint",
    "recorder",
    "start_metrics_endpoint",
    "use_multiprocess_dir",
]

log = logging.getLogger("archway.metrics")

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

ROUTER_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""From a cached embedding lookup (milliseconds) to a generator at its timeout."""

TTFT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
"""From a cached short answer to a reasoning model thinking for a minute."""

TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
"""Seconds per output token: 1000 tokens/s down to 3."""

TOKEN_TYPES = ("input", "output", "cached", "reasoning", "cache_write")

ROUTED = "routed"
"""The ``outcome`` of a request sent upstream; any other outcome is an error code."""


def use_multiprocess_dir() -> Path:
    """Make this process, and every process it starts, write metrics to one directory.

    Keeps a ``PROMETHEUS_MULTIPROC_DIR`` already set (by the operator, or by the
    parent of a worker); otherwise creates an empty private directory, removed
    at exit. Must run before the first metric exists in this process.
    """
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        # prometheus_client picked in-memory values when it was imported; metrics
        # made now would never reach the directory the endpoint reads.
        raise RuntimeError(
            "prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; "
            "call use_multiprocess_dir() earlier"
        )
    existing = os.environ.get(MULTIPROC_DIR_ENV)
    if existing:
        path = Path(existing)
        path.mkdir(parents=True, exist_ok=True)
    else:
        path = Path(tempfile.mkdtemp(prefix="archway-metrics-"))
        os.environ[MULTIPROC_DIR_ENV] = str(path)
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR_ENV) or None


class GatewayMetrics:
    """Every metric Archway exports, and one method per event the processors report.

    Labelled children are cached per label tuple: ``labels()`` validates and locks
    on each call, a dictionary look-up does not.
    """

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        # Never the global registry: a library user's own metrics stay theirs,
        # and a second recorder (tests) does not clash with the first.
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            "archway_requests",
            "LLM requests the routing filter saw, by how the model was resolved, the "
            "provider and model that serve it, and the outcome: routed, or the error code.",
            ["resolution", "provider", "model", "outcome"],
            registry=registry,
        )
        self.router_decisions = Counter(
            "archway_router_decisions",
            "Preference router answers, by route (a configured route, or other, error, timeout).",
            ["route"],
            registry=registry,
        )
        self.router_duration = Histogram(
            "archway_router_duration_seconds",
            "Time the preference router took to answer, timeouts included.",
            buckets=ROUTER_BUCKETS_S,
            registry=registry,
        )
        self.fallbacks = Counter(
            "archway_fallbacks",
            "Retry attempts sent to a fallback model, by the model that failed before "
            "it and the fallback.",
            ["failed_model", "model"],
            registry=registry,
        )
        self.translations = Counter(
            "archway_translations",
            "Requests translated to the provider's API, by client and provider API.",
            ["pair"],
            registry=registry,
        )
        self.errors = Counter(
            "archway_errors",
            "Errors Archway answered itself (immediate responses), by error code.",
            ["code"],
            registry=registry,
        )
        self.reloads = Counter(
            "archway_config_reloads",
            "Config reloads in each worker process, by result: applied, invalid, "
            "unreadable, needs_restart.",
            ["result"],
            registry=registry,
        )
        self.affinity = Counter(
            "archway_affinity",
            "Open-model requests with a session key, by whether a pinned decision was "
            "reused (pinned) or a new one pinned (new).",
            ["result"],
            registry=registry,
        )
        self.tokens = Counter(
            "archway_tokens",
            "Tokens the providers reported (usage), by provider, model and type: input "
            "(all prompt tokens, cached included), output (reasoning included), cached, "
            "reasoning, cache_write.",
            ["provider", "model", "type"],
            registry=registry,
        )
        self.client_tokens = Counter(
            "archway_client_tokens",
            "Tokens spent by each configured client (archway.clients), by type.",
            ["client", "type"],
            registry=registry,
        )
        self.client_requests = Counter(
            "archway_client_requests",
            "Requests of each configured client, by outcome: routed, or the error code.",
            ["client", "outcome"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "archway_time_to_first_token_seconds",
            "From the request's arrival to the first output token of a streamed answer.",
            ["provider", "model"],
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.time_per_output_token = Histogram(
            "archway_time_per_output_token_seconds",
            "After the first output token, the time per further output token of a streamed answer.",
            ["provider", "model"],
            buckets=TPOT_BUCKETS_S,
            registry=registry,
        )
        self.shared_state_errors = Counter(
            "archway_shared_state_errors",
            "Operations on the shared state (pins, token counters) that failed, by store "
            "and operation; limits are not enforced while it fails (fail open).",
            ["store", "operation"],
            registry=registry,
        )
        self._tokens: dict[tuple[str, ...], Any] = {}
        self._client_tokens: dict[tuple[str, ...], Any] = {}
        self._client_requests: dict[tuple[str, ...], Any] = {}
        self._routed: dict[tuple[str, str], Any] = {}
        self._failed: dict[str, Any] = {}
        self._errors: dict[str, Any] = {}
        self._translations: dict[str, Any] = {}
        self._routes: dict[str, Any] = {}
        self._affinity: dict[str, Any] = {}
        self._primed: RoutingTable | None = None

    # -- events --------------------------------------------------------------------

    def request_routed(self, decision: RoutingDecision) -> None:
        child = self._routed.get((decision.resolution, decision.provider.model))
        if child is None:
            child = self._routed_child(
                decision.resolution, decision.provider.provider, decision.provider.model
            )
        child.inc()

    def request_failed(self, code: str) -> None:
        """A request answered with an error before it was routed (the error itself
        is counted by ``error_answered``)."""
        child = self._failed.get(code)
        if child is None:
            child = self._failed[code] = self.requests.labels("", "", "", code)
        child.inc()

    def error_answered(self, code: str) -> None:
        child = self._errors.get(code)
        if child is None:
            child = self._errors[code] = self.errors.labels(code)
        child.inc()

    def translated(self, pair: str) -> None:
        child = self._translations.get(pair)
        if child is None:
            child = self._translations[pair] = self.translations.labels(pair)
        child.inc()

    def router_answered(self, route: str, seconds: float) -> None:
        child = self._routes.get(route)
        if child is None:
            child = self._routes[route] = self.router_decisions.labels(route)
        child.inc()
        self.router_duration.observe(seconds)

    def fallback_attempted(self, failed_model: str, model: str) -> None:
        self.fallbacks.labels(failed_model, model).inc()

    def config_reloaded(self, result: str) -> None:
        self.reloads.labels(result).inc()

    def affinity_used(self, result: str) -> None:
        child = self._affinity.get(result)
        if child is None:
            child = self._affinity[result] = self.affinity.labels(result)
        child.inc()

    def tokens_used(self, provider: str, model: str, client: str | None, counts: Any) -> None:
        """``counts``: a ``telemetry.usage.Usage``."""
        for kind in TOKEN_TYPES:
            value = getattr(counts, f"{kind}_tokens")
            if value:
                key = (provider, model, kind)
                child = self._tokens.get(key)
                if child is None:
                    child = self._tokens[key] = self.tokens.labels(*key)
                child.inc(value)
                if client is not None:
                    self._child(self._client_tokens, self.client_tokens, (client, kind)).inc(value)

    def stream_timing(
        self, provider: str, model: str, first_token_s: float, per_token_s: float | None
    ) -> None:
        self.time_to_first_token.labels(provider, model).observe(first_token_s)
        if per_token_s is not None:
            self.time_per_output_token.labels(provider, model).observe(per_token_s)

    def client_request(self, client: str, outcome: str) -> None:
        self._child(self._client_requests, self.client_requests, (client, outcome)).inc()

    @staticmethod
    def _child(cache: dict[tuple[str, ...], Any], metric: Any, key: tuple[str, ...]) -> Any:
        child = cache.get(key)
        if child is None:
            child = cache[key] = metric.labels(*key)
        return child

    def shared_state_failed(self, store: str, operation: str) -> None:
        self.shared_state_errors.labels(store, operation).inc()

    # -- set-up --------------------------------------------------------------------

    def prime(self, table: RoutingTable) -> None:
        """Create the routed series every model of ``table`` can have, at zero, so
        they exist before their first request (``rate()`` needs two samples)."""
        if table is self._primed:
            return
        self._primed = table
        for provider in table.config.providers:
            self._routed_child(Resolution.DIRECT, provider.provider, provider.model)
        for target in table.aliases.values():
            self._prime_model(table, target, Resolution.ALIAS)
        for model in table.routes.values():
            self._prime_model(table, model, Resolution.ROUTER)
        default = table.default
        if default is not None:
            self._routed_child(Resolution.DEFAULT, default.provider, default.model)

    def _prime_model(self, table: RoutingTable, name: str, resolution: Resolution) -> None:
        provider = configured_entry(table.models, name)
        if provider is not None:
            self._routed_child(resolution, provider.provider, provider.model)

    def _routed_child(self, resolution: Resolution, provider: str, model: str) -> Any:
        key = (resolution, model)
        child = self._routed.get(key)
        if child is None:
            child = self._routed[key] = self.requests.labels(
                resolution.value, provider, model, ROUTED
            )
        return child


_recorder: GatewayMetrics | None = None
_recorder_lock = threading.Lock()


def recorder() -> GatewayMetrics:
    """This process's metrics, created on first use."""
    current = _recorder
    if current is not None:
        return current
    return _create_recorder()


def _create_recorder() -> GatewayMetrics:
    global _recorder
    with _recorder_lock:
        if _recorder is None:
            _recorder = GatewayMetrics()
        return _recorder


@dataclass
class MetricsEndpoint:
    """The HTTP server that answers Prometheus' scrapes (any path)."""

    host: str
    port: int
    multiprocess: bool
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_metrics_endpoint(host: str, port: int) -> MetricsEndpoint:
    """Serve the metrics on ``host:port`` (0 picks a free port) from a daemon thread.

    In multi-process mode it serves what every process under the directory
    counted; otherwise this process's own metrics.
    """
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = _multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=directory)
    else:
        registry = recorder().registry
    # The recorder exists before the first scrape, so every metric is listed
    # from the start, even in a parent that never processes a request itself.
    recorder()
    server, thread = start_http_server(port, addr=host, registry=registry)
    bound = int(server.server_address[1])
    log.info("metrics endpoint on %s:%d", host, bound)
    return MetricsEndpoint(host, bound, directory is not None, server, thread)
