"""The request state machine, driven with real ext_proc protobuf messages."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.processor import RequestProcessor as _AsyncProcessor
from ext_proc.resolve import build_routing_table
from tests.factories import config, provider


class RequestProcessor:
    """Drives the async processor synchronously: each call runs one phase."""

    def __init__(self, table) -> None:
        self._inner = _AsyncProcessor(table)

    def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        return asyncio.run(self._inner.handle(request))


TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True),
        provider("anthropic/claude-sonnet-4-5"),
        provider("mistral/*", passthrough_auth=True),
        aliases={"fast-model": "gpt-5.2"},
    )
)


def headers_msg(
    method: str, path: str, extra: dict[str, str] | None = None, *, eos: bool = False
) -> ProcessingRequest:
    values = {":method": method, ":path": path, "content-type": "application/json", **(extra or {})}
    hv = [HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
    return ProcessingRequest(
        request_headers=HttpHeaders(headers=HeaderMap(headers=hv), end_of_stream=eos)
    )


def body_msg(body: bytes | dict) -> ProcessingRequest:
    raw = json.dumps(body).encode() if isinstance(body, dict) else body
    return ProcessingRequest(request_body=HttpBody(body=raw, end_of_stream=True))


def mutation(resp: ProcessingResponse, phase: str) -> tuple[dict[str, str], list[str]]:
    common = getattr(resp, phase).response
    sets = {h.header.key: h.header.raw_value.decode() for h in common.header_mutation.set_headers}
    return sets, list(common.header_mutation.remove_headers)


def run(path: str, body: bytes | dict, extra: dict[str, str] | None = None) -> ProcessingResponse:
    p = RequestProcessor(TABLE)
    first = p.handle(headers_msg("POST", path, extra))
    assert first.WhichOneof("response") == "request_headers"
    return p.handle(body_msg(body))


def immediate(resp: ProcessingResponse) -> tuple[int, dict]:
    assert resp.WhichOneof("response") == "immediate_response", resp
    ir = resp.immediate_response
    ctype = {h.header.key: h.header.raw_value for h in ir.headers.set_headers}["content-type"]
    assert ctype == b"application/json"
    return ir.status.code, json.loads(ir.body)


def test_alias_request_is_rewritten_and_rerouted() -> None:
    resp = run(
        "/v1/chat/completions",
        {"model": "fast-model", "messages": [{"role": "user", "content": "hi"}]},
        {"authorization": "Bearer client-key"},
    )
    common = resp.request_body.response
    assert common.clear_route_cache
    sets, removes = mutation(resp, "request_body")
    assert sets["x-archway-cluster"] == "openai"
    assert sets["x-archway-model"] == "openai/gpt-5.2"
    assert sets["x-archway-provider"] == "openai"
    assert sets["x-archway-resolution"] == "alias"
    assert "x-archway-route" not in sets
    assert sets[":path"] == "/v1/chat/completions"
    assert sets["authorization"] == "Bearer sk-openai-secret"
    new_body = common.body_mutation.body
    assert json.loads(new_body)["model"] == "gpt-5.2"
    assert sets["content-length"] == str(len(new_body))
    assert removes == []


def test_anthropic_native_request_swaps_credentials() -> None:
    resp = run(
        "/v1/messages",
        {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 5, "messages": []},
        {"x-api-key": "client", "authorization": "Bearer other", "anthropic-version": "2099-01-01"},
    )
    sets, removes = mutation(resp, "request_body")
    assert sets["x-api-key"] == "sk-anthropic-secret"
    assert "anthropic-version" not in sets  # the client's own version is kept
    assert removes == ["authorization"]
    assert sets[":path"] == "/v1/messages"


def test_unchanged_model_keeps_body_untouched() -> None:
    body = {"model": "gpt-5.2", "messages": []}
    resp = run("/v1/chat/completions", body)
    common = resp.request_body.response
    assert not common.HasField("body_mutation")
    sets, _ = mutation(resp, "request_body")
    assert "content-length" not in sets
    assert sets["x-archway-resolution"] == "direct"


def test_passthrough_keeps_client_credentials() -> None:
    resp = run(
        "/v1/chat/completions", {"model": "mistral/mistral-large"}, {"authorization": "Bearer mine"}
    )
    sets, removes = mutation(resp, "request_body")
    assert "authorization" not in sets and removes == []
    assert json.loads(resp.request_body.response.body_mutation.body)["model"] == "mistral-large"


def test_client_internal_headers_are_stripped_on_arrival() -> None:
    p = RequestProcessor(TABLE)
    resp = p.handle(
        headers_msg(
            "POST",
            "/v1/chat/completions",
            {"x-archway-cluster": "anthropic", "X-Archway-Model": "x"},
        )
    )
    _, removes = mutation(resp, "request_headers")
    assert sorted(removes) == ["x-archway-cluster", "x-archway-model"]


def test_models_listing_in_both_shapes() -> None:
    status, body = immediate(
        RequestProcessor(TABLE).handle(headers_msg("GET", "/v1/models", eos=True))
    )
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [
        "openai/gpt-5.2",
        "anthropic/claude-sonnet-4-5",
        "mistral/*",
        "fast-model",
    ]
    status, body = immediate(
        RequestProcessor(TABLE).handle(
            headers_msg("GET", "/v1/models", {"anthropic-version": "2023-06-01"}, eos=True)
        )
    )
    assert body["data"][0]["type"] == "model" and body["has_more"] is False


@pytest.mark.parametrize(
    ("body", "extra", "status", "code"),
    [
        (b"{not json", None, 400, "invalid_json"),
        (b"\xff\xfe", None, 400, "invalid_json"),
        (b"[1, 2]", None, 400, "invalid_body"),
        (b"   ", None, 400, "empty_body"),
        ({"model": 42}, None, 400, "invalid_model"),
        ({"model": ["a"]}, None, 400, "invalid_model"),
        ({"model": "nope/nothing"}, None, 400, "model_not_found"),
        ({"model": "x"}, {"content-type": "text/plain"}, 415, "unsupported_media_type"),
        (b"[" * 100_000, None, 400, "invalid_json"),
    ],
)
def test_bad_bodies_get_openai_errors(body, extra, status, code) -> None:
    got_status, got = immediate(run("/v1/chat/completions", body, extra))
    assert got_status == status
    assert got["error"]["code"] == code
    assert got["error"]["type"] == "invalid_request_error"
    assert got["error"]["message"]


def test_errors_on_messages_use_anthropic_shape() -> None:
    status, body = immediate(run("/v1/messages", {"model": "openai/gpt-5.2"}))
    assert status == 400
    assert body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": body["error"]["message"]},
    }
    assert "/v1/chat/completions" in body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/embeddings", 404),
        ("DELETE", "/v1/models", 405),
    ],
)
def test_unsupported_paths_and_methods(method, path, status) -> None:
    got_status, body = immediate(RequestProcessor(TABLE).handle(headers_msg(method, path)))
    assert got_status == status and body["error"]["message"]


def test_bodyless_llm_request_is_answered_from_headers() -> None:
    status, body = immediate(
        RequestProcessor(TABLE).handle(headers_msg("POST", "/v1/chat/completions", eos=True))
    )
    assert status == 400 and body["error"]["code"] == "empty_body"


def test_unexpected_failure_is_a_500_json_not_a_raise(monkeypatch) -> None:
    import ext_proc.processor as processor

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(processor, "plan_request", boom)
    status, body = immediate(run("/v1/chat/completions", {"model": "gpt-5.2"}))
    assert status == 500 and body["error"]["type"] == "server_error"
    assert "bug" not in body["error"]["message"]


def test_lone_surrogate_escapes_survive_a_model_rewrite() -> None:
    body = (
        b'{"model": "fast-model", "messages": [{"role": "user", "content": "a\\ud800b \xc3\xa9"}]}'
    )
    resp = run("/v1/chat/completions", body)
    new_body = resp.request_body.response.body_mutation.body
    assert b"\\ud800" in new_body
    assert json.loads(new_body)["messages"][0]["content"] == "a\ud800b \u00e9"
    assert json.loads(new_body)["model"] == "gpt-5.2"
