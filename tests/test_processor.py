"""The request state machine, driven with real ext_proc protobuf messages."""

from __future__ import annotations

import asyncio
import json

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)

from ext_proc.routing.resolve import build_routing_table
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.server.translation_stream import TranslationProcessor
from tests.factories import config, provider


class RequestProcessor:
    """Drives the routing stream's processor synchronously: each call runs one phase."""

    def __init__(self, table) -> None:
        self._inner = RoutingProcessor(table)

    def handle(self, request: ProcessingRequest) -> ProcessingResponse:
        return asyncio.run(self._inner.handle(request))


class ResponseProcessor:
    """Drives the translation stream's processor synchronously."""

    def __init__(self) -> None:
        self._inner = TranslationProcessor()

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
        # Valid JSON that json.loads refuses, where Archway reads it: past Python's
        # int digit limit.
        (b'{"model": ' + b"9" * 100_000 + b"}", None, 400, "invalid_json"),
        (b'{"model": "fast-model", "stream": ' + b"9" * 100_000 + b"}", None, 400, "invalid_json"),
        # ... and at the top level where it does not: checked by length, not decoded.
        (b'{"model": "fast-model", "n": ' + b"9" * 100_000 + b"}", None, 400, "invalid_json"),
        ({"model": "fast-model", "messages": "hello"}, None, 400, "invalid_request"),
    ],
)
def test_bad_bodies_get_openai_errors(body, extra, status, code) -> None:
    got_status, got = immediate(run("/v1/chat/completions", body, extra))
    assert got_status == status
    assert got["error"]["code"] == code
    assert got["error"]["type"] == "invalid_request_error"
    assert got["error"]["message"]


def test_members_the_decision_does_not_read_are_forwarded_undecoded() -> None:
    # Neither parsed into Python values nor re-serialised: a number past Python's
    # digit limit inside a member Archway does not read is the provider's to
    # judge, and reaches it byte for byte.
    huge = b"9" * 100_000
    body = (
        b'{"model": "fast-model", "metadata": {"n": ' + huge + b'}, "messages": [{"role": "user"}]}'
    )
    resp = run("/v1/chat/completions", body)
    assert resp.WhichOneof("response") == "request_body"
    new = resp.request_body.response.body_mutation.body
    assert new == body.replace(b'"fast-model"', b'"gpt-5.2"')


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("messages", "hello"),
        ("messages", ["hello"]),
        ("messages", None),
        ("stream", "true"),
        ("stream", 1),
        ("tools", {"type": "function"}),
        ("model", 7),
    ],
)
@pytest.mark.parametrize("model", ["fast-model", "anthropic/claude-sonnet-4-5"])
def test_fields_archway_reads_must_have_their_openai_types(field, value, model) -> None:
    # A plain route reads the model and checks the other members' JSON types
    # (their first byte); a translation reads every member, elements included.
    if value == ["hello"] and model == "fast-model":
        return  # see test_message_elements_are_checked_by_their_readers
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    status, got = immediate(run("/v1/chat/completions", {**body, field: value}))
    assert status == 400
    assert got["error"]["param"] == field
    assert got["error"]["type"] == "invalid_request_error"
    assert f"'{field}' must be" in got["error"]["message"]


def test_message_elements_are_checked_by_their_readers() -> None:
    # Decoding every message to check it would cost ~12 us per KB on every
    # request; only the router and translation read them, and they check.
    body = {"model": "fast-model", "messages": ["hello"]}
    resp = run("/v1/chat/completions", body)
    assert resp.WhichOneof("response") == "request_body"
    assert json.loads(resp.request_body.response.body_mutation.body)["messages"] == ["hello"]
    status, got = immediate(
        run("/v1/chat/completions", {**body, "model": "anthropic/claude-sonnet-4-5"})
    )
    assert status == 400 and got["error"]["param"] == "messages"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("system", 5),
        ("system", ["be brief"]),
        ("messages", {"role": "user"}),
        ("stream", "no"),
        ("tools", "search"),
    ],
)
def test_fields_archway_reads_must_have_their_anthropic_types(field, value) -> None:
    # Translated to OpenAI's API: every member is read.
    body = {"model": "openai/gpt-5.2", "max_tokens": 5, "messages": []}
    status, got = immediate(run("/v1/messages", {**body, field: value}))
    assert status == 400
    assert got == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": got["error"]["message"]},
    }
    assert f"'{field}' must be" in got["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"stream": None, "tools": [], "system": 5}),
        ("/v1/messages", {"stream": False, "system": "be brief", "max_tokens": 5}),
        ("/v1/messages", {"system": [{"type": "text", "text": "be brief"}], "max_tokens": 5}),
    ],
)
def test_well_typed_fields_are_routed(path, body) -> None:
    messages = [{"role": "user", "content": "hi"}]
    model = "anthropic/claude-sonnet-4-5" if path == "/v1/messages" else "gpt-5.2"
    resp = run(path, {"model": model, "messages": messages, **body})
    assert resp.WhichOneof("response") == "request_body"


def test_errors_on_messages_use_anthropic_shape() -> None:
    status, body = immediate(run("/v1/messages", {"model": "openai/gpt-99"}))
    assert status == 400
    assert body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": body["error"]["message"]},
    }
    assert "openai/gpt-5.2" in body["error"]["message"]
    # A request that cannot be translated says which field is the problem.
    status, body = immediate(
        run("/v1/messages", {"model": "openai/gpt-5.2", "max_tokens": 5, "messages": "hi"})
    )
    assert status == 400 and body["type"] == "error"
    assert "'messages' must be a list" in body["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/chat/completions", 405),
        ("POST", "/v1/audio/speech", 404),
        ("GET", "/v1/embeddings", 405),
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
    import ext_proc.server.routing_stream as routing_stream

    def boom(*args, **kwargs):
        raise RuntimeError("bug")

    monkeypatch.setattr(routing_stream, "plan_request", boom)
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


# --- translation: request side -------------------------------------------------------


def test_openai_client_to_anthropic_is_translated_to_native_messages() -> None:
    resp = run(
        "/v1/chat/completions",
        {
            "model": "anthropic/claude-sonnet-4-5",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        {"authorization": "Bearer client", "accept-encoding": "gzip, br", "openai-project": "p"},
    )
    sets, removes = mutation(resp, "request_body")
    assert sets[":path"] == "/v1/messages"
    assert sets["x-archway-translate"] == "openai-to-anthropic;include-usage"
    assert sets["x-api-key"] == "sk-anthropic-secret"
    assert sets["anthropic-version"] == "2023-06-01"
    assert sorted(removes) == ["accept-encoding", "authorization", "openai-project"]
    body = resp.request_body.response.body_mutation.body
    assert sets["content-length"] == str(len(body))
    assert json.loads(body) == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


def test_anthropic_client_to_openai_is_translated_to_chat_completions() -> None:
    resp = run(
        "/v1/messages",
        {"model": "fast-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        {"x-api-key": "client", "anthropic-version": "2023-06-01", "anthropic-beta": "x"},
    )
    sets, removes = mutation(resp, "request_body")
    assert sets[":path"] == "/v1/chat/completions"
    assert sets["x-archway-translate"] == "anthropic-to-openai"
    assert sets["authorization"] == "Bearer sk-openai-secret"
    assert sorted(removes) == ["anthropic-beta", "anthropic-version", "x-api-key"]
    assert json.loads(resp.request_body.response.body_mutation.body) == {
        "model": "gpt-5.2",
        "messages": [{"role": "user", "content": "hi"}],
        "max_completion_tokens": 5,
    }


def test_passthrough_credentials_change_style_with_the_api() -> None:
    resp = run(
        "/v1/messages",
        {"model": "mistral/mistral-large", "max_tokens": 5, "messages": []},
        {"x-api-key": "client-own-key"},
    )
    sets, removes = mutation(resp, "request_body")
    assert sets["authorization"] == "Bearer client-own-key"
    assert removes == ["x-api-key"]
    # Mistral is OpenAI-compatible but not OpenAI: the widely known field.
    assert json.loads(resp.request_body.response.body_mutation.body)["max_tokens"] == 5


def test_same_api_requests_carry_no_translation_header() -> None:
    for path, body in (
        ("/v1/chat/completions", {"model": "fast-model", "messages": []}),
        ("/v1/messages", {"model": "anthropic/claude-sonnet-4-5", "max_tokens": 1}),
    ):
        sets, _ = mutation(run(path, body), "request_body")
        assert "x-archway-translate" not in sets


# --- translation: response side (the translation filter's own stream) ---------------


def response_headers_msg(headers: dict[str, str], *, eos: bool = False) -> ProcessingRequest:
    hv = [HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()]
    return ProcessingRequest(
        response_headers=HttpHeaders(headers=HeaderMap(headers=hv), end_of_stream=eos)
    )


def response_body_msg(body: bytes, *, eos: bool) -> ProcessingRequest:
    return ProcessingRequest(response_body=HttpBody(body=body, end_of_stream=eos))


def upstream_headers(content_type: str, status: int = 200, **extra: str) -> dict[str, str]:
    return {
        ":status": str(status),
        "content-type": content_type,
        "content-length": "123",
        "x-archway-translate": "openai-to-anthropic",
        **extra,
    }


def test_untranslated_response_is_left_alone() -> None:
    resp = ResponseProcessor().handle(
        response_headers_msg({":status": "200", "content-type": "application/json"})
    )
    assert resp.WhichOneof("response") == "response_headers"
    assert not resp.HasField("mode_override")
    assert not resp.response_headers.response.header_mutation.remove_headers


def test_sse_response_is_streamed_and_translated_chunk_by_chunk() -> None:
    p = ResponseProcessor()
    resp = p.handle(response_headers_msg(upstream_headers("text/event-stream")))
    assert resp.mode_override.response_body_mode == ProcessingMode.STREAMED
    _, removes = mutation(resp, "response_headers")
    assert sorted(removes) == ["content-length", "x-archway-translate"]

    start = (
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
        b'"model":"claude-x","usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
    )
    delta = (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"caf\xc3\xa9"}}\n\n'
    )
    stream = start + delta + b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    cut = len(start) + delta.index(b"\xa9")  # inside the event, inside the "é"
    first = p.handle(response_body_msg(stream[:cut], eos=False))
    out = first.response_body.response.body_mutation.body
    assert out.count(b"data: ") == 1 and b'"role":"assistant"' in out
    second = p.handle(response_body_msg(stream[cut:], eos=True))
    out = second.response_body.response.body_mutation.body
    assert '"content":"café"'.encode() in out
    assert out.endswith(b"data: [DONE]\n\n")


def test_json_response_is_buffered_and_rewritten_with_its_length() -> None:
    p = ResponseProcessor()
    resp = p.handle(response_headers_msg(upstream_headers("application/json")))
    assert resp.mode_override.response_body_mode == ProcessingMode.BUFFERED
    message = {
        "id": "msg_1",
        "type": "message",
        "model": "claude-x",
        "content": [{"type": "text", "text": "hi"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    resp = p.handle(response_body_msg(json.dumps(message).encode(), eos=True))
    body = resp.response_body.response.body_mutation.body
    sets, _ = mutation(resp, "response_body")
    assert sets["content-length"] == str(len(body))
    completion = json.loads(body)
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["choices"][0]["message"]["content"] == "hi"


def test_upstream_error_keeps_its_status_in_the_clients_shape() -> None:
    p = ResponseProcessor()
    resp = p.handle(response_headers_msg(upstream_headers("application/json", 529)))
    assert resp.mode_override.response_body_mode == ProcessingMode.BUFFERED
    sets, _ = mutation(resp, "response_headers")
    assert sets["content-type"] == "application/json"
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    resp = p.handle(response_body_msg(json.dumps(error).encode(), eos=True))
    body = json.loads(resp.response_body.response.body_mutation.body)
    assert body == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        }
    }


def test_compressed_upstream_body_is_a_502_in_the_clients_shape() -> None:
    resp = ResponseProcessor().handle(
        response_headers_msg(upstream_headers("application/json", **{"content-encoding": "gzip"}))
    )
    status, body = immediate(resp)
    assert status == 502 and body["error"]["code"] == "upstream_encoding"


def test_bodyless_translated_response_needs_no_body_phase() -> None:
    resp = ResponseProcessor().handle(
        response_headers_msg(upstream_headers("application/json", 204), eos=True)
    )
    assert not resp.HasField("mode_override")
    _, removes = mutation(resp, "response_headers")
    assert removes == ["x-archway-translate"]
