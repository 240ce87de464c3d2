"""Header names that cross the wire between the client, Envoy, Archway and upstreams."""

from __future__ import annotations

__all__ = [
    "CLIENT_DECISION_HEADERS",
    "DECISION_MODEL",
    "DECISION_PROVIDER",
    "DECISION_RESOLUTION",
    "DECISION_ROUTE",
    "DECISION_ROUTE_SCORE",
    "INTERNAL_PREFIX",
    "ROUTE_HEADER",
]

INTERNAL_PREFIX = "x-archway-"
"""Every header with this prefix is Archway's: a client's copy is stripped on arrival."""

ROUTE_HEADER = "x-archway-cluster"
"""Set by the ext_proc server; the Envoy route's ``cluster_header`` reads it."""

DECISION_MODEL = "x-archway-model"
DECISION_PROVIDER = "x-archway-provider"
DECISION_RESOLUTION = "x-archway-resolution"
DECISION_ROUTE = "x-archway-route"
DECISION_ROUTE_SCORE = "x-archway-route-score"
"""The preference router's confidence in ``x-archway-route``, where the backend has
one (the embedding router's cosine similarity)."""

CLIENT_DECISION_HEADERS = (
    DECISION_MODEL,
    DECISION_PROVIDER,
    DECISION_RESOLUTION,
    DECISION_ROUTE,
    DECISION_ROUTE_SCORE,
)
"""Set on the request by the ext_proc server; Envoy's route copies them onto the
response (``%REQ(...)%``) so the client sees the decision without a second
ext_proc round trip."""
