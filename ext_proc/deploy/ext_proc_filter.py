"""The routing ext_proc filter's name and per-route type, shared by the
bootstrap and the route pieces (``one_message``, ``unserved``) it renders."""

from __future__ import annotations

__all__ = ["ROUTING_FILTER", "T_EXT_PROC_PER_ROUTE"]

ROUTING_FILTER = "envoy.filters.http.ext_proc"
T_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
)
