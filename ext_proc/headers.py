"""Header names that cross the wire between the client, Envoy, Archway and upstreams."""

from __future__ import annotations

__all__ = [
    "AFFINITY_NEW",
    "AFFINITY_PINNED",
    "ATTEMPT_HEADER",
    "BODY_PHASE_HEADERS",
    "CLIENT_AFFINITY_HEADER",
    "CLIENT_DECISION_HEADERS",
    "CLIENT_PATH_HEADER",
    "CREDENTIAL_HEADERS",
    "DECISION_AFFINITY",
    "DECISION_FALLBACK",
    "DECISION_MODEL",
    "DECISION_PROVIDER",
    "DECISION_RESOLUTION",
    "DECISION_ROUTE",
    "DECISION_ROUTE_SCORE",
    "FALLBACK_CHAIN",
    "INTERNAL_PREFIX",
    "ROUTE_HEADER",
    "TRANSLATE_HEADER",
    "TRANSLATION_PHASE",
    "UPSTREAM_PHASE",
    "UPSTREAM_PHASE_KEY",
]

INTERNAL_PREFIX = "x-archway-"
"""Every header with this prefix is Archway's: a client's copy is stripped on arrival."""

ROUTE_HEADER = "x-archway-cluster"
"""Set by the ext_proc server; the Envoy route's ``cluster_header`` reads it."""

TRANSLATE_HEADER = "x-archway-translate"
"""Set by the ext_proc server on requests it translates (``openai-to-anthropic``, ...).
The Envoy route that matches it enables the response-translation filter and
echoes it onto the response, where that filter reads it and strips it."""

DECISION_MODEL = "x-archway-model"
DECISION_PROVIDER = "x-archway-provider"
DECISION_RESOLUTION = "x-archway-resolution"
DECISION_ROUTE = "x-archway-route"
DECISION_FALLBACK = "x-archway-fallback"
"""On the response, when a fallback answered: how many models failed before it."""
DECISION_ROUTE_SCORE = "x-archway-route-score"
"""The preference router's confidence in ``x-archway-route``, where its backend has
one (the embedding router's cosine similarity)."""
DECISION_AFFINITY = "x-archway-affinity"
"""On open-model requests that carry a session key: ``pinned`` when the session's
earlier decision was reused, ``new`` when this decision was pinned for it."""
AFFINITY_PINNED = "pinned"
AFFINITY_NEW = "new"

CLIENT_AFFINITY_HEADER = "x-model-affinity"
"""The client's session key (Plano's name): open-model requests that share it stay
on the model first chosen for it."""

FALLBACK_CHAIN = "x-archway-fallbacks"
"""Set by the ext_proc server on requests whose model has fallbacks: the model of
each attempt, space-separated, primary first. Read by the upstream processor."""

CLIENT_DECISION_HEADERS = (
    DECISION_MODEL,
    DECISION_PROVIDER,
    DECISION_RESOLUTION,
    DECISION_ROUTE,
    DECISION_ROUTE_SCORE,
    DECISION_AFFINITY,
)
"""Set on the request by the ext_proc server; Envoy's route copies them onto the
response (``%REQ(...)%``) so the client sees the decision without a second
ext_proc round trip."""

CLIENT_PATH_HEADER = "x-envoy-archway-client-path"
"""The path the client asked for, copied by Envoy before ext_proc runs.

The ext_proc server rewrites ``:path`` to the upstream's path (an OpenAI client
routed to Anthropic ends up on ``/v1/messages``), so Envoy's error replies and
the upstream processor pick the client's API from this copy instead. It is set
with overwrite (a client cannot forge it), and the ``x-envoy-`` prefix keeps it
out of the ext_proc server's reach: Envoy refuses ext_proc mutations of
``x-envoy-*`` headers by default, and the server strips only ``x-archway-*``."""

ATTEMPT_HEADER = "x-envoy-attempt-count"
"""Set by Envoy on each upstream attempt (``include_request_attempt_count``)."""

UPSTREAM_PHASE_KEY = "x-archway-phase"
"""gRPC stream metadata naming the role of the filter that opened a stream;
untagged streams are the routing filter's."""
UPSTREAM_PHASE = "upstream"
"""Sent by the ext_proc filter in a failover cluster's upstream filter chain: its
streams are retry attempts, handled by the attempt processor."""
TRANSLATION_PHASE = "translation"
"""Sent by the response-translation filter: its streams are translated responses."""

CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key")
"""Client credentials: replaced by the provider's unless ``passthrough_auth``."""

BODY_PHASE_HEADERS = (
    "content-type",
    "accept-encoding",
    "anthropic-version",
    "traceparent",
    "tracestate",
    CLIENT_AFFINITY_HEADER,
    *CREDENTIAL_HEADERS,
    "x-archway-api-key",
)
"""The client headers the routing decision reads, besides ``:path`` and ``:method``.

In one-message mode Envoy sends no headers message, only the body with these as
``request_attributes`` (``ext_proc.deploy.one_message``, which adds the config's
own: the session tenant header, the rate-limit selector headers, the catalog's
pinned ones). A header the body phase starts to read must be added here."""
