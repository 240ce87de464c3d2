"""Every ProcessingResponse protobuf Archway sends is built here.

The rest of the package speaks in plain tuples and bytes; this module is the
only place that knows the ext_proc v3 message layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    BodyMutation,
    BodyResponse,
    CommonResponse,
    HeaderMutation,
    HeadersResponse,
    HttpHeaders,
    ImmediateResponse,
    ProcessingRequest,
    ProcessingResponse,
    TrailersResponse,
)
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf import json_format

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError, error_body
from ext_proc.server import modes
from ext_proc.server.modes import BodyMode, Mode

__all__ = [
    "DECISION_NAMESPACE",
    "METADATA_NAMESPACE",
    "REQUEST_LINE_ATTRIBUTES",
    "attempt_headers_response",
    "attribute_headers",
    "body_response",
    "body_unchanged_response",
    "decision_metadata_response",
    "error_response",
    "header_attribute",
    "header_map",
    "headers_response",
    "immediate_response",
    "pass_through",
    "response_body_response",
    "response_headers_response",
    "set_metadata",
]

_OVERWRITE = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

METADATA_NAMESPACE = "archway"
"""The dynamic metadata namespace Envoy accepts from Archway (the filters'
``metadata_options``); the access log reads ``%DYNAMIC_METADATA(archway:...)%``."""

DECISION_NAMESPACE = "archway.request"
"""In one-message mode, the decision's header changes travel to Envoy's Lua filter
as dynamic metadata here (Envoy drops header mutations answering a body whose
headers it did not send): ``set`` (name to value), ``remove`` (names) and
``remove_prefixes``."""

_PATH_ATTRIBUTE = "request.path"
_METHOD_ATTRIBUTE = "request.method"
_HEADER_ATTRIBUTE = "request.headers['"

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


def _processing_mode(mode: Mode) -> ProcessingMode:
    # From the JSON form the bootstrap writes, so the two can never disagree.
    return json_format.ParseDict(mode.envoy(), ProcessingMode())


_MODE_OVERRIDES = {
    body: _processing_mode(modes.translation_body(body))
    for body in (BodyMode.STREAMED, BodyMode.BUFFERED)
}


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


def header_attribute(name: str) -> str:
    """The CEL attribute that carries request header ``name`` (lower case) to the server."""
    return f"{_HEADER_ATTRIBUTE}{name}']"


REQUEST_LINE_ATTRIBUTES = (_PATH_ATTRIBUTE, _METHOD_ATTRIBUTE)


def attribute_headers(request: ProcessingRequest) -> dict[str, str] | None:
    """The request headers a one-message stream carries as attributes (``:path``,
    ``:method`` and those the bootstrap names), or ``None`` when it carries none.

    Envoy leaves absent headers out; attribute names are Envoy's CEL expressions.
    """
    if not request.attributes:
        return None
    out: dict[str, str] = {}
    for attributes in request.attributes.values():
        for key, value in attributes.fields.items():
            text = value.string_value
            if key == _PATH_ATTRIBUTE:
                out[":path"] = text
            elif key == _METHOD_ATTRIBUTE:
                out[":method"] = text
            elif key.startswith(_HEADER_ATTRIBUTE) and key.endswith("']"):
                out[key[len(_HEADER_ATTRIBUTE) : -2]] = text
    return out if ":path" in out else None


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


_ATTEMPT_FIRST = _processing_mode(modes.ATTEMPT_FIRST)
_ATTEMPT_RETRY = _processing_mode(modes.ATTEMPT_RETRY)


def attempt_headers_response(
    set_headers: Iterable[tuple[str, str]],
    remove_headers: Iterable[str],
    *,
    retry: bool,
) -> ProcessingResponse:
    """Continue after an upstream attempt's request headers (failover clusters)."""
    response = headers_response(set_headers, remove_headers)
    response.mode_override.CopyFrom(_ATTEMPT_RETRY if retry else _ATTEMPT_FIRST)
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


def decision_metadata_response(
    set_headers: Iterable[tuple[str, str]],
    remove_headers: Iterable[str],
    remove_prefixes: Iterable[str],
    body: bytes | None,
) -> ProcessingResponse:
    """Continue after the body of a one-message stream: the body mutation, and the
    header changes as ``DECISION_NAMESPACE`` metadata for the Lua filter, which
    applies them and clears the route cache."""
    response = ProcessingResponse()
    common = response.request_body.response
    common.SetInParent()
    if body is not None:
        common.body_mutation.body = body
    # Filled field by field: Struct.update from a dict costs twice as much. A
    # Value is created only with its kind set: Envoy's Lua filter aborts the
    # process on a Value of no kind.
    namespace = response.dynamic_metadata.fields[DECISION_NAMESPACE].struct_value
    namespace.SetInParent()
    decision = namespace.fields
    set_headers = tuple(set_headers)
    if set_headers:
        to_set = decision["set"].struct_value.fields
        for name, value in set_headers:
            to_set[name].string_value = value
    for key, names in (("remove", remove_headers), ("remove_prefixes", remove_prefixes)):
        names = tuple(names)
        if names:
            values = decision[key].list_value.values
            for name in names:
                values.add().string_value = name
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


def response_headers_response(
    set_headers: Iterable[tuple[str, str]] = (),
    remove_headers: Iterable[str] = (),
    *,
    body_mode: BodyMode = BodyMode.NONE,
) -> ProcessingResponse:
    """Continue after the response headers, asking for the body as ``body_mode`` says."""
    common = CommonResponse(header_mutation=_mutation(set_headers, remove_headers))
    response = ProcessingResponse(response_headers=HeadersResponse(response=common))
    override = _MODE_OVERRIDES.get(body_mode)
    if override is not None:
        response.mode_override.CopyFrom(override)
    return response


def response_body_response(
    body: bytes, set_headers: Iterable[tuple[str, str]] = ()
) -> ProcessingResponse:
    """Replace a response body chunk (streamed) or the whole body (buffered) with ``body``.

    Headers can still change only in buffered mode, where Envoy holds them back.
    """
    common = CommonResponse(body_mutation=BodyMutation(body=body))
    if set_headers:
        common.header_mutation.CopyFrom(_mutation(set_headers, ()))
    return ProcessingResponse(response_body=BodyResponse(response=common))


def error_response(api: WireAPI, error: GatewayError) -> ProcessingResponse:
    """Answer the client now with ``error``, in the shape of the API it speaks."""
    return immediate_response(
        error.status, error_body(api, error), error.headers, details=error.code
    )


_UNCHANGED = {
    "request_headers": lambda: ProcessingResponse(request_headers=HeadersResponse()),
    "request_body": lambda: ProcessingResponse(request_body=BodyResponse()),
    "request_trailers": lambda: ProcessingResponse(request_trailers=TrailersResponse()),
    "response_headers": lambda: ProcessingResponse(response_headers=HeadersResponse()),
    "response_body": lambda: ProcessingResponse(response_body=BodyResponse()),
    "response_trailers": lambda: ProcessingResponse(response_trailers=TrailersResponse()),
}


def pass_through(phase: str | None) -> ProcessingResponse:
    """Continue after a message of ``phase`` without changing anything.

    Raises ``GatewayError`` for a message that holds no phase at all.
    """
    build = _UNCHANGED.get(phase or "")
    if build is None:
        raise GatewayError(400, "Empty processing request.", code="bad_request")
    return build()


def body_unchanged_response() -> ProcessingResponse:
    """Let a response body chunk (or the buffered body) through as it is."""
    return ProcessingResponse(response_body=BodyResponse())


def set_metadata(
    response: ProcessingResponse, fields: Mapping[str, str | int | float]
) -> ProcessingResponse:
    """Add ``fields`` to the request's dynamic metadata (``METADATA_NAMESPACE``)."""
    if fields:
        # Merged, not replaced: a one-message answer already holds the decision's namespace.
        response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.update(dict(fields))
    return response
