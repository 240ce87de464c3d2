"""Property-based: whatever a client sends, the processor answers with a
well-formed ProcessingResponse, never an exception and never a 500."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ext_proc.routing.resolve import build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from tests.factories import config, provider

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True),
        provider("anthropic/claude-sonnet-4-5"),
        provider("groq/*"),
        aliases={"fast-model": "gpt-5.2"},
    )
)

PATHS = st.sampled_from(
    ["/v1/chat/completions", "/v1/messages", "/v1/models", "/chat/completions", "/", "/v1/x"]
) | st.text(max_size=40).map(lambda s: "/" + s)
METHODS = st.sampled_from(["POST", "GET", "PUT", "DELETE", "OPTIONS", ""])
CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/plain", "", "multipart/form-data"]
)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)
MODELS = (
    st.sampled_from(["gpt-5.2", "fast-model", "auto", "", "groq/llama", "anthropic/x", "nope"])
    | JSON_VALUES
)


def _object_body() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda model, messages, extra: json.dumps(
            {"model": model, "messages": messages, **extra}, allow_nan=True
        ).encode(),
        MODELS,
        JSON_VALUES,
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4),
    )


BODIES = (
    st.binary(max_size=300)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
    | _object_body()
    | st.sampled_from(
        [
            b"[" * 50_000 + b"]" * 50_000,
            b'{"model": "gpt-5.2", "messages": ['
            + b'{"a":' * 20_000
            + b"1"
            + b"}" * 20_000
            + b"]}",
            json.dumps({"model": "x" * 1_000_000}).encode(),
            json.dumps(
                {"model": "fast-model", "messages": [{"role": "user", "content": "hi"}] * 10_000}
            ).encode(),
            b'{"model": "\\ud800"}',
            b"\xef\xbb\xbf{}",
            b"\x00" * 1000,
        ]
    )
)
HEADER_NAMES = st.sampled_from(
    ["x-archway-cluster", "authorization", "x-api-key", "content-length", "x-archway-model", "host"]
) | st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=20)


def _headers_request(method: str, path: str, ctype: str, extra: dict[str, bytes], eos: bool):
    values: dict[str, bytes] = {
        ":method": method.encode(),
        ":path": path.encode("utf-8", "replace"),
    }
    if ctype:
        values["content-type"] = ctype.encode()
    values.update(extra)
    hv = [HeaderValue(key=k, raw_value=v) for k, v in values.items()]
    return ProcessingRequest(
        request_headers=HttpHeaders(headers=HeaderMap(headers=hv), end_of_stream=eos)
    )


def _check(resp: Any) -> None:
    assert isinstance(resp, ProcessingResponse)
    kind = resp.WhichOneof("response")
    assert kind in {"request_headers", "request_body", "immediate_response"}
    resp.SerializeToString()  # well-formed: it encodes
    if kind == "immediate_response":
        status = resp.immediate_response.status.code
        assert 200 <= status < 500, status
        body = json.loads(resp.immediate_response.body)
        assert isinstance(body, dict)
        assert "error" in body or status == 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=METHODS,
    path=PATHS,
    ctype=CONTENT_TYPES,
    extra=st.dictionaries(HEADER_NAMES, st.binary(max_size=40), max_size=4),
    body=BODIES,
    eos=st.booleans(),
)
def test_any_request_gets_a_well_formed_answer(method, path, ctype, extra, body, eos) -> None:
    async def run() -> None:
        processor = RoutingProcessor(TABLE)
        first = await processor.handle(_headers_request(method, path, ctype, extra, eos))
        _check(first)
        if first.WhichOneof("response") == "request_headers":
            second = await processor.handle(
                ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True))
            )
            _check(second)

    asyncio.run(run())


@settings(max_examples=50, deadline=None)
@given(body=BODIES)
def test_body_without_headers_is_answered(body: bytes) -> None:
    resp = asyncio.run(
        RoutingProcessor(TABLE).handle(
            ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True))
        )
    )
    _check(resp)
    assert resp.immediate_response.status.code == 400
