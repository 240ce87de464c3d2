"""Requests Archway cannot serve, answered by Envoy's routes without an ext_proc stream.

A path Archway serves with another method gets a ``direct_response`` 405 (with
``allow``), and any other path a 404, both in the client's API shape. The
routes turn the routing filter (and the Lua filter) off, so Envoy opens no
ext_proc stream and buffers no body for them. The 405 bodies are fixed per
endpoint; the 404's names the method and path, so the bootstrap's local reply
config words it (Envoy sends a direct response as a local reply).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ext_proc.apis import Endpoint, ErrorShape, served_paths
from ext_proc.deploy.ext_proc_filter import ROUTING_FILTER, T_EXT_PROC_PER_ROUTE
from ext_proc.errors import GatewayError, error_payload

__all__ = [
    "DIRECT_RESPONSE_DETAILS",
    "method_not_allowed_routes",
    "not_found_error",
    "not_found_route",
]

DIRECT_RESPONSE_DETAILS = "direct_response"
"""The response code details Envoy gives a route's ``direct_response``."""

_JSON = [
    {
        "header": {"key": "content-type", "value": "application/json"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }
]


def _paths_regex(paths: tuple[str, ...], *, query: bool = False) -> str:
    # A trailing slash is accepted, as Archway's own classification accepts it.
    # A route's regex sees the path without its query; a `:path` header matcher
    # sees the query too.
    tail = r"/?(?:\?.*)?$" if query else "/?$"
    return "^(?:" + "|".join(re.escape(p) for p in paths) + ")" + tail


def _undecided(route_header: str) -> dict[str, Any]:
    # Only a request Archway has not routed yet: once it has, the route is
    # matched again with the provider's path, which no client path needs to be.
    return {"name": route_header, "present_match": False}


def _off(filters_off: dict[str, Any]) -> dict[str, Any]:
    return {
        ROUTING_FILTER: {"@type": T_EXT_PROC_PER_ROUTE, "disabled": True},
        **filters_off,
    }


def _body(shape: ErrorShape, error: GatewayError) -> str:
    return json.dumps(error_payload(shape, error))


def method_not_allowed_routes(
    route_header: str, filters_off: dict[str, Any]
) -> list[dict[str, Any]]:
    """One route per endpoint: its paths, any other method, a 405.

    ``route_header``: the header Archway's decision sets (absent before it).
    ``filters_off``: more ``typed_per_filter_config`` entries that turn filters
    off on these routes (the Lua filter, where there is one)."""
    routes = []
    for endpoint in Endpoint:
        error = GatewayError(
            405,
            f"{' and '.join(endpoint.paths)} accept {endpoint.method} only.",
            code="method_not_allowed",
        )
        routes.append(
            {
                "match": {
                    **{"safe_regex": {"regex": _paths_regex(endpoint.paths)}},
                    "headers": [
                        {
                            "name": ":method",
                            "string_match": {"exact": endpoint.method},
                            "invert_match": True,
                        },
                        _undecided(route_header),
                    ],
                },
                "direct_response": {
                    "status": 405,
                    "body": {"inline_string": _body(endpoint.api.error_shape, error)},
                },
                "response_headers_to_add": [
                    *_JSON,
                    {
                        "header": {"key": "allow", "value": endpoint.method},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    },
                ],
                "typed_per_filter_config": _off(filters_off),
            }
        )
    return routes


def not_found_route(route_header: str, filters_off: dict[str, Any]) -> dict[str, Any]:
    """Every path Archway does not serve gets a 404, worded by a local reply
    mapper with ``not_found_error``."""
    # One matcher per endpoint (all must hold): RE2's default program size
    # limit refuses one regex for every path.
    not_served = [
        {
            "name": ":path",
            "string_match": {"safe_regex": {"regex": _paths_regex(e.paths, query=True)}},
            "invert_match": True,
        }
        for e in Endpoint
    ]
    return {
        "match": {"prefix": "/", "headers": [*not_served, _undecided(route_header)]},
        "direct_response": {"status": 404},
        "response_headers_to_add": _JSON,
        "typed_per_filter_config": _off(filters_off),
    }


def not_found_error() -> GatewayError:
    """The 404's error; its message is an Envoy format string (method and path)."""
    return GatewayError(
        404,
        "Archway does not serve %REQ(:METHOD)% %REQ_WITHOUT_QUERY(:PATH)%. "
        f"It serves: {', '.join(served_paths())}.",
        code="unsupported_path",
    )
