"""Every ProcessingResponse protobuf Archway sends is built here.

The rest of the package speaks in plain tuples and bytes; this module is the
only place that knows the ext_proc v3 message layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HeaderMutation,
    HttpHeaders,
    ImmediateResponse,
    ProcessingResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus

__all__ = [
    "body_response",
    "header_map",
    "headers_response",
    "immediate_response",
]

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

# Every routed request sets the same few headers for its decision (cluster,
# model, provider, path, credentials). Building a HeaderValueOption from Python
# costs more than upb copying a finished one, so finished ones are kept, keyed
# by (name, value). Never mutate a cached option: it is copied into responses.
_OPTIONS: dict[tuple[str, str], HeaderValueOption] = {}
_OPTIONS_MAX = 4096
"""Bounds the cache when values vary (content-length); cleared when full."""


def _option(name: str, value: str) -> HeaderValueOption:
    option = _OPTIONS.get((name, value))
    if option is None:
        if len(_OPTIONS) >= _OPTIONS_MAX:
            _OPTIONS.clear()
        option = HeaderValueOption(
            header=HeaderValue(key=name, raw_value=value.encode()), append_action=_OVERWRITE
        )
        _OPTIONS[(name, value)] = option
    return option


def header_map(headers: HttpHeaders) -> dict[str, str]:
    """Request headers as a dict with lower-case names.

    Envoy sends values in ``raw_value`` (bytes); ``value`` only for old configs.
    Repeated headers are joined with commas, as HTTP allows.
    """
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]},{value}" if key in out else value
    return out


def _mutation(
    set_headers: Iterable[tuple[str, str]], remove_headers: Iterable[str]
) -> HeaderMutation:
    return HeaderMutation(
        set_headers=[
            HeaderValueOption(
                header=HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE
            )
            for k, v in set_headers
        ],
        remove_headers=list(remove_headers),
    )


def _fill(
    mutation: HeaderMutation,
    set_headers: Iterable[tuple[str, str]],
    remove_headers: Iterable[str],
) -> None:
    # Filled in place: passing finished sub-messages to constructors copies
    # them once per nesting level.
    options = [_option(k, v) for k, v in set_headers]
    if options:
        mutation.set_headers.extend(options)
    removes = list(remove_headers)
    if removes:
        mutation.remove_headers.extend(removes)


def headers_response(
    set_headers: Iterable[tuple[str, str]] = (), remove_headers: Iterable[str] = ()
) -> ProcessingResponse:
    """Continue after the request headers, optionally changing some."""
    response = ProcessingResponse()
    common = response.request_headers.response
    common.SetInParent()
    _fill(common.header_mutation, set_headers, remove_headers)
    return response


def body_response(
    set_headers: Iterable[tuple[str, str]],
    remove_headers: Iterable[str],
    body: bytes | None,
    *,
    clear_route_cache: bool = True,
) -> ProcessingResponse:
    """Continue after the buffered request body.

    Envoy only re-evaluates the route on a header set here when the same
    response carries ``clear_route_cache``.
    """
    response = ProcessingResponse()
    common = response.request_body.response
    common.SetInParent()
    _fill(common.header_mutation, set_headers, remove_headers)
    common.clear_route_cache = clear_route_cache
    if body is not None:
        common.body_mutation.body = body
    return response


def immediate_response(
    status: int,
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    *,
    details: str = "",
) -> ProcessingResponse:
    """Answer the client now; Envoy sends nothing upstream."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    all_headers = [("content-type", "application/json"), *pairs]
    return ProcessingResponse(
        immediate_response=ImmediateResponse(
            status=HttpStatus(code=status),
            headers=_mutation(all_headers, ()),
            body=body,
            details=details,
        )
    )
