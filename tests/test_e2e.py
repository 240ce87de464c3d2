"""End to end: the real openai and anthropic SDKs -> a real Envoy -> Archway's
ext_proc server -> fake upstreams that record what they received."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from ext_proc.deploy.echo import EchoUpstream
from tests.gateway import (
    LOOPBACK_LISTENER,
    OPENAI_AND_ANTHROPIC,
    Gateway,
    echo_gateway,
    start_gateway,
    stop_gateway,
)

UPSTREAM_NAMES = ("openai", "anthropic", "groq", "litellm", "mycorp")

CONFIG = (
    LOOPBACK_LISTENER
    + OPENAI_AND_ANTHROPIC
    + """\
  - model: groq/*
    base_url: {groq}/openai/v1
    access_key: gsk-test
  - model: litellm/team-model
    base_url: {litellm}
    provider_interface: openai
    passthrough_auth: true
  - model: mycorp/llama
    base_url: {mycorp}/api/v2
    provider_interface: openai
    http_host: llm.internal
    access_key: mycorp-key
    headers:
      X-Team: search
model_aliases:
  fast-model:
    target: gpt-5.2
  creative-model:
    target: claude-sonnet-4-5
archway:
  admin_port: 0
  max_request_body_bytes: 4194304
"""
)

MESSAGES = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with echo_gateway(
        CONFIG, tmp_path_factory.mktemp("gw"), UPSTREAM_NAMES, server_process=True
    ) as gw:
        yield gw


@pytest.fixture
def gw(gateway: Gateway) -> Gateway:
    gateway.clear()
    return gateway


def oai(gw: Gateway, key: str = "client-key") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=10)


def chat(gw: Gateway, model: str, key: str = "client-key", **kwargs: object):
    raw = oai(gw, key).chat.completions.with_raw_response.create(
        model=model, messages=MESSAGES, **kwargs
    )
    return raw.headers, raw.parse()


def only_request(gw: Gateway, name: str):
    for other, upstream in gw.upstreams.items():
        if other != name:
            assert upstream.requests == [], f"{other} should have received nothing"
    (req,) = gw.upstreams[name].requests
    return req


def raw_post(
    gw: Gateway, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST"
):
    req = urllib.request.Request(
        gw.url + path,
        data=body if method == "POST" else None,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_provider_model_routes_to_openai(gw: Gateway) -> None:
    headers, completion = chat(gw, "openai/gpt-5.2")
    req = only_request(gw, "openai")
    assert req.path == "/v1/chat/completions"
    assert req.json()["model"] == "gpt-5.2"
    assert req.json()["messages"] == MESSAGES
    assert req.headers["authorization"] == "Bearer sk-openai-test"
    assert req.headers["host"] == f"127.0.0.1:{gw.upstreams['openai'].port}"
    assert headers["x-archway-model"] == "openai/gpt-5.2"
    assert headers["x-archway-provider"] == "openai"
    assert headers["x-archway-resolution"] == "direct"
    assert "x-archway-route" not in headers
    assert completion.choices[0].message.content.startswith("echo from openai")
    assert completion.model == "gpt-5.2"


def test_provider_model_routes_to_anthropic(gw: Gateway) -> None:
    headers, completion = chat(gw, "anthropic/claude-sonnet-4-5")
    req = only_request(gw, "anthropic")
    # Translated to Anthropic's native API (see test_e2e_translation.py).
    assert req.path == "/v1/messages"
    assert req.json()["model"] == "claude-sonnet-4-5"
    assert req.headers["x-api-key"] == "sk-ant-test"
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in req.headers
    assert headers["x-archway-provider"] == "anthropic"
    assert completion.choices[0].message.content.startswith(
        "echo from anthropic: POST /v1/messages"
    )


def test_alias_routes_to_its_target(gw: Gateway) -> None:
    headers, _ = chat(gw, "creative-model")
    req = only_request(gw, "anthropic")
    assert req.json()["model"] == "claude-sonnet-4-5"
    assert headers["x-archway-resolution"] == "alias"
    assert headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"


def test_open_model_goes_to_default(gw: Gateway) -> None:
    headers, _ = chat(gw, "auto")
    assert only_request(gw, "openai").json()["model"] == "gpt-5.2"
    assert headers["x-archway-resolution"] == "default"
    # A body with no model at all goes there too.
    status, resp_headers, _ = raw_post(
        gw, "/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode()
    )
    assert status == 200 and resp_headers["x-archway-resolution"] == "default"


def test_wildcard_provider_takes_any_model_id(gw: Gateway) -> None:
    headers, _ = chat(gw, "groq/llama-3.3-70b-versatile")
    req = only_request(gw, "groq")
    assert req.path == "/openai/v1/chat/completions"
    assert req.json()["model"] == "llama-3.3-70b-versatile"
    assert req.headers["authorization"] == "Bearer gsk-test"
    assert headers["x-archway-model"] == "groq/llama-3.3-70b-versatile"


def test_passthrough_auth_forwards_the_clients_key(gw: Gateway) -> None:
    chat(gw, "litellm/team-model", key="sk-virtual-team-key")
    req = only_request(gw, "litellm")
    assert req.headers["authorization"] == "Bearer sk-virtual-team-key"
    assert req.json()["model"] == "team-model"


def test_custom_provider_path_host_and_headers(gw: Gateway) -> None:
    chat(gw, "mycorp/llama")
    req = only_request(gw, "mycorp")
    assert req.path == "/api/v2/chat/completions"
    assert req.headers["host"] == "llm.internal"
    assert req.headers["x-team"] == "search"
    assert req.headers["authorization"] == "Bearer mycorp-key"


def test_streaming_passes_through(gw: Gateway) -> None:
    stream = oai(gw).chat.completions.create(model="fast-model", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("echo from openai")
    assert only_request(gw, "openai").json()["stream"] is True


def test_anthropic_sdk_reaches_anthropic_natively(gw: Gateway) -> None:
    client = anthropic.Anthropic(
        base_url=gw.url, api_key="client-ant-key", max_retries=0, timeout=10
    )
    raw = client.messages.with_raw_response.create(
        model="creative-model", max_tokens=32, messages=MESSAGES
    )
    message = raw.parse()
    assert message.content[0].text.startswith("echo from anthropic")
    req = only_request(gw, "anthropic")
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == "sk-ant-test"
    assert req.json()["model"] == "claude-sonnet-4-5"
    assert raw.headers["x-archway-resolution"] == "alias"


def test_models_are_listed_from_the_config(gw: Gateway) -> None:
    ids = [m.id for m in oai(gw).models.list()]
    assert ids[:3] == ["openai/gpt-5.2", "openai/gpt-5", "anthropic/claude-sonnet-4-5"]
    assert "fast-model" in ids
    assert all(u.requests == [] for u in gw.upstreams.values())


def test_client_cannot_pick_the_cluster_or_fake_a_decision(gw: Gateway) -> None:
    anthropic_cluster = gw.config.providers[2]
    status, headers, _ = raw_post(
        gw,
        "/v1/chat/completions",
        json.dumps({"model": "openai/gpt-5.2", "messages": MESSAGES}).encode(),
        {
            "x-archway-cluster": f"anthropic_127.0.0.1_{gw.upstreams['anthropic'].port}",
            "x-archway-model": "forged",
            "x-archway-route": "forged",
        },
    )
    assert anthropic_cluster.model == "anthropic/claude-sonnet-4-5"
    assert status == 200
    assert headers["x-archway-model"] == "openai/gpt-5.2"
    assert "x-archway-route" not in headers
    req = only_request(gw, "openai")
    assert req.headers["x-archway-cluster"].startswith("openai_")


def test_large_body_within_the_limit_is_routed(gw: Gateway) -> None:
    big = "x" * (3 * 1024 * 1024)
    status, headers, _ = raw_post(
        gw,
        "/v1/chat/completions",
        json.dumps(
            {"model": "fast-model", "messages": [{"role": "user", "content": big}]}
        ).encode(),
    )
    assert status == 200
    assert headers["x-archway-resolution"] == "alias"
    req = only_request(gw, "openai")
    assert req.json()["messages"][0]["content"] == big


def test_body_over_the_limit_is_413_json(gw: Gateway) -> None:
    big = "x" * (5 * 1024 * 1024)
    status, headers, body = raw_post(
        gw,
        "/v1/chat/completions",
        json.dumps(
            {"model": "fast-model", "messages": [{"role": "user", "content": big}]}
        ).encode(),
    )
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body)["error"]["message"]
    assert gw.upstreams["openai"].requests == []


# --- errors, in each client's API shape ---------------------------------------


def test_unknown_model_is_a_400_listing_models(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(gw, "openai/gpt-99")
    assert err.value.status_code == 400
    body = err.value.body
    assert body["code"] == "model_not_found"
    assert "fast-model" in body["message"] and "openai/gpt-5.2" in body["message"]


def test_ambiguous_or_wrong_type_model(gw: Gateway) -> None:
    status, _, body = raw_post(gw, "/v1/chat/completions", b'{"model": 7, "messages": []}')
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_model"


@pytest.mark.parametrize(
    ("path", "body", "headers", "method", "status", "code"),
    [
        ("/v1/chat/completions", b"{oops", None, "POST", 400, "invalid_json"),
        ("/v1/chat/completions", b'["a list"]', None, "POST", 400, "invalid_body"),
        ("/v1/chat/completions", b"", None, "POST", 400, "empty_body"),
        (
            "/v1/chat/completions",
            b'{"model": "x"}',
            {"content-type": "text/plain"},
            "POST",
            415,
            "unsupported_media_type",
        ),
        ("/v1/chat/completions", b"", None, "GET", 405, "method_not_allowed"),
        ("/v1/audio/speech", b'{"input": "x"}', None, "POST", 404, "unsupported_path"),
        ("/admin", b"", None, "GET", 404, "unsupported_path"),
        ("/v1/chat/completions", b"\xff\xfe\x00garbage", None, "POST", 400, "invalid_json"),
        ("/v1/chat/completions", b"[" * 100_000, None, "POST", 400, "invalid_json"),
        ("/v1/chat/completions", b'{"model": null, "x": [1]}', None, "POST", 200, None),
        ("/v1/chat/completions", b'{"model": ["gpt-5"]}', None, "POST", 400, "invalid_model"),
        ("/v1/chat/completions", b'"just a string"', None, "POST", 400, "invalid_body"),
        (
            "/v1/chat/completions",
            b'{"model": "fast-model", "messages": "hello"}',
            None,
            "POST",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "fast-model", "messages": [], "stream": "yes"}',
            None,
            "POST",
            400,
            "invalid_request",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "fast-model", "messages": [], "stream": ' + b"1" * 100_000 + b"}",
            None,
            "POST",
            400,
            "invalid_json",
        ),
        (
            "/v1/chat/completions",
            b'{"model": "groq/a\\r\\nx: 1"}',
            None,
            "POST",
            400,
            "invalid_model",
        ),
        (
            "/v1/chat/completions",
            ('{"model": "%s"}' % ("m" * 500_000)).encode(),
            None,
            "POST",
            400,
            "invalid_model",
        ),
    ],
)
def test_bad_requests_get_openai_errors(gw, path, body, headers, method, status, code) -> None:
    got, resp_headers, raw = raw_post(gw, path, body, headers, method)
    assert got == status
    assert resp_headers["content-type"] == "application/json"
    if code is None:  # routed: a null model goes to the default
        assert resp_headers["x-archway-resolution"] == "default"
        return
    error = json.loads(raw)["error"]
    assert error["code"] == code and error["message"]
    assert all(u.requests == [] for u in gw.upstreams.values())


def test_anthropic_client_errors_use_anthropic_shape(gw: Gateway) -> None:
    client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0, timeout=10)
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(model="anthropic/claude-opus-0", max_tokens=8, messages=MESSAGES)
    assert err.value.status_code == 400
    assert err.value.body["type"] == "error"
    assert err.value.body["error"]["type"] == "invalid_request_error"
    assert "creative-model" in err.value.body["error"]["message"]
    # A field the OpenAI API cannot honour is refused by name, not dropped.
    with pytest.raises(anthropic.BadRequestError) as err:
        client.messages.create(
            model="openai/gpt-5.2",
            max_tokens=8,
            messages=MESSAGES,
            tools=[{"type": "web_search_20250305", "name": "web_search"}],
        )
    assert "web_search_20250305" in err.value.body["error"]["message"]
    assert all(u.requests == [] for u in gw.upstreams.values())


def test_anthropic_fields_of_the_wrong_type_are_400s_in_anthropic_shape(gw: Gateway) -> None:
    body = {"model": "creative-model", "max_tokens": 8, "messages": MESSAGES, "system": 5}
    status, headers, raw = raw_post(
        gw, "/v1/messages", json.dumps(body).encode(), {"anthropic-version": "2023-06-01"}
    )
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(raw)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "'system' must be a string or a list of content blocks" in error["error"]["message"]
    assert all(u.requests == [] for u in gw.upstreams.values())


def test_gateway_keeps_serving_after_errors(gw: Gateway) -> None:
    for _ in range(3):
        raw_post(gw, "/v1/chat/completions", b"\xff\xfe garbage")
    headers, _ = chat(gw, "fast-model")
    assert headers["x-archway-resolution"] == "alias"


NO_DEFAULT = """
listeners:
  egress_traffic:
    address: 127.0.0.1
    port: 0
    timeout: 5s
llm_providers:
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-test
archway:
  admin_port: 0
"""


def test_no_model_and_no_default_is_a_400(tmp_path: Path) -> None:
    with EchoUpstream(name="openai") as upstream:
        gw = start_gateway(
            NO_DEFAULT.format(openai=upstream.base_url), tmp_path, {"openai": upstream}
        )
        try:
            status, _, body = raw_post(
                gw, "/v1/chat/completions", json.dumps({"messages": MESSAGES}).encode()
            )
            assert status == 400
            assert json.loads(body)["error"]["code"] == "model_required"
            # The spec's legacy format works end to end too.
            status, headers, _ = raw_post(
                gw,
                "/v1/chat/completions",
                json.dumps({"model": "gpt-5", "messages": MESSAGES}).encode(),
            )
            assert status == 200 and headers["x-archway-model"] == "openai/gpt-5"
            assert upstream.requests[-1].json()["model"] == "gpt-5"
        finally:
            stop_gateway(gw)
