"""One ext_proc message per LLM request (``archway.ext_proc_messages: one``, the default).

Envoy's own counters on the rendered bootstrap say how many messages the routing
filter sent; the echo upstreams say what the Lua filter made of the decision.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest

from ext_proc.access.policy import ARCHWAY_KEY_HEADER
from ext_proc.config import ConfigError, load_config
from ext_proc.deploy import bootstrap, one_message
from ext_proc.deploy.bootstrap import bootstrap_dict
from ext_proc.headers import BODY_PHASE_HEADERS
from ext_proc.server import messages
from tests.gateway import Gateway, echo_gateway

ROUTING_STATS = "http.egress_traffic.ext_proc."

CONFIG = """
listeners:
  egress_traffic:
    address: 127.0.0.1
    port: 0
    timeout: 5s
llm_providers:
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai-secret
    default: true
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-secret
archway:
  admin_port: 0
  ext_proc_messages: {messages}
"""

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["one", "two"])
def gw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gateway]:
    with echo_gateway(CONFIG, tmp_path, messages=request.param) as gateway:
        yield gateway


def _routing_stats(gw: Gateway) -> dict[str, int]:
    stats = gw.stats(ROUTING_STATS)
    return {
        name: stats.get(ROUTING_STATS + name, 0) for name in ("streams_started", "stream_msgs_sent")
    }


def _send(
    gw: Gateway,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        gw.url + path,
        data=body,
        method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def test_routed_requests_cost_the_configured_number_of_messages(gw: Gateway) -> None:
    per_request = 1 if gw.config.gateway.ext_proc_messages == "one" else 2
    before = _routing_stats(gw)
    oai = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="client-key", max_retries=0, timeout=10)
    ant = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0, timeout=10)
    # Same API, with a body left as it is (the model is the provider's own id).
    raw = oai.chat.completions.with_raw_response.create(model="gpt-5", messages=USER)
    assert raw.headers["x-archway-model"] == "openai/gpt-5"
    assert raw.parse().choices[0].message.content
    # Same API, body rewritten.
    ant.messages.create(model="anthropic/claude-sonnet-4-5", max_tokens=8, messages=USER)
    # Translated: Anthropic's SDK to the OpenAI provider, its own headers dropped.
    answer = ant.messages.create(
        model="openai/gpt-5",
        max_tokens=8,
        messages=USER,
        extra_headers={"anthropic-beta": "tools-2024-04-04", "x-archway-route": "forged"},
    )
    assert answer.content[0].type == "text"
    after = _routing_stats(gw)
    assert after["streams_started"] - before["streams_started"] == 3
    assert after["stream_msgs_sent"] - before["stream_msgs_sent"] == 3 * per_request

    plain, native, translated = (
        gw.upstreams["openai"].requests[-2],
        None,
        gw.upstreams["openai"].requests[-1],
    )
    native = gw.upstreams["anthropic"].requests[-1]
    assert plain.json()["model"] == "gpt-5"
    assert plain.headers["authorization"] == "Bearer sk-openai-secret"
    assert int(plain.headers["content-length"]) == len(plain.body)
    assert native.path == "/v1/messages" and native.headers["x-api-key"] == "sk-ant-secret"
    assert native.json()["model"] == "claude-sonnet-4-5"
    assert translated.path == "/v1/chat/completions"
    assert translated.json()["model"] == "gpt-5" and "messages" in translated.json()
    assert not any(name.startswith("anthropic-") for name in translated.headers)
    assert "x-api-key" not in translated.headers
    assert "x-archway-route" not in translated.headers


def test_bodyless_and_unserved_requests_keep_their_answers(gw: Gateway) -> None:
    status, _, body = _send(gw, "/v1/models", None, method="GET")
    assert status == 200 and {m["id"] for m in json.loads(body)["data"]} >= {"openai/gpt-5"}
    status, _, body = _send(gw, "/v1/models", None, {"anthropic-version": "2023-06-01"}, "GET")
    assert status == 200 and json.loads(body)["data"][0]["type"] == "model"
    # Envoy's routes answer what Archway does not serve: no ext_proc stream, no
    # buffered body, and the client's error shape.
    before = _routing_stats(gw)
    status, headers, body = _send(gw, "/v1/chat/completions", None, method="GET")
    assert status == 405 and headers["allow"] == "POST"
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"
    status, headers, body = _send(gw, "/v1/models/", b"{}", method="POST")
    assert status == 405 and headers["allow"] == "GET"
    status, headers, body = _send(gw, "/v1/nowhere?x=1", b'{"model": "gpt-5"}')
    assert status == 404 and headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "unsupported_path"
    assert error["message"].startswith("Archway does not serve POST /v1/nowhere. It serves: ")
    status, _, body = _send(gw, "/v1/messages/batches", b"{}")
    assert status == 404 and json.loads(body)["type"] == "error"  # Anthropic's shape
    assert json.loads(body)["error"]["type"] == "not_found_error"
    status, _, body = _send(gw, "/v1/messages", None, method="DELETE")
    assert status == 405 and json.loads(body)["type"] == "error"
    assert _routing_stats(gw) == before
    # The decision's header only skips the cheap answer: Archway's is the same.
    status, _, body = _send(gw, "/v1/nowhere", b"{}", {"x-archway-cluster": "openai"})
    assert status == 404 and json.loads(body)["error"]["code"] == "unsupported_path"
    # A POST without a body opens no ext_proc stream in one-message mode: the
    # Lua filter answers, in the client's shape.
    status, _, body = _send(gw, "/v1/chat/completions", None)
    assert status == 400 and json.loads(body)["error"]["code"] == "empty_body"
    status, _, body = _send(gw, "/v1/messages", None)
    assert status == 400 and json.loads(body)["type"] == "error"
    assert "needs a JSON request body" in json.loads(body)["error"]["message"]


def test_the_decision_metadata_never_reaches_the_access_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(
        bootstrap.ACCESS_LOG_FORMAT,
        "decision",
        f"%DYNAMIC_METADATA({messages.DECISION_NAMESPACE})%",
    )
    with echo_gateway(CONFIG, tmp_path, messages="one") as gw:
        status, _, _ = _send(
            gw, "/v1/chat/completions", json.dumps({"model": "gpt-5", "messages": USER}).encode()
        )
        assert status == 200
        assert (
            gw.upstreams["openai"].requests[-1].headers["authorization"]
            == "Bearer sk-openai-secret"
        )
        gw.envoy.stop()
    lines = [
        json.loads(line)
        for line in (tmp_path / "envoy.log").read_text().splitlines()
        if line.startswith("{")
    ]
    (entry,) = [line for line in lines if line.get("path") == "/v1/chat/completions"]
    assert entry["decision"]["set"] == ""
    assert "sk-openai-secret" not in json.dumps(lines)


KEYS = CONFIG.replace(
    "  ext_proc_messages: {messages}\n",
    "  ext_proc_messages: {messages}\n  clients:\n    - name: team-a\n      key_sha256: "
    + hashlib.sha256(b"team-a-key").hexdigest()
    + "\n",
)


def test_client_keys_and_forged_headers(tmp_path: Path) -> None:
    """The client's key reaches the server as an attribute, then is stripped;
    a forged decision header is gone before the server answers, errors included."""
    body = json.dumps({"model": "gpt-5", "messages": USER}).encode()
    forged = {"x-archway-model": "forged/model", "x-archway-cluster": "forged"}
    with echo_gateway(KEYS, tmp_path, messages="one") as gw:
        status, _, answer = _send(gw, "/v1/chat/completions", body, forged)
        assert status == 401, answer
        status, _, models = _send(gw, "/v1/models", None, method="GET")
        assert status == 401, models
        headers = {**forged, "x-archway-api-key": "team-a-key"}
        status, answered, _ = _send(gw, "/v1/chat/completions", body, headers)
        assert status == 200 and answered["x-archway-model"] == "openai/gpt-5"
        upstream = gw.upstreams["openai"].requests[-1].headers
        assert "x-archway-api-key" not in upstream
        assert upstream["authorization"] == "Bearer sk-openai-secret"
        status, _, models = _send(
            gw, "/v1/models", None, {"x-archway-api-key": "team-a-key"}, "GET"
        )
        assert status == 200, models
        gw.envoy.stop()
    lines = [
        json.loads(line)
        for line in (tmp_path / "envoy.log").read_text().splitlines()
        if line.startswith("{")
    ]
    refused = [e for e in lines if e.get("response_code") == 401 and e["method"] == "POST"]
    assert refused and all(e["model"] is None for e in refused)
    assert [
        e["client"] for e in lines if e.get("response_code") == 200 and e["method"] == "POST"
    ] == ["team-a"]


# --- the pieces ---------------------------------------------------------------------------


def _config(tmp_path: Path, extra: str = "") -> object:
    path = tmp_path / "config.yaml"
    path.write_text(
        CONFIG.format(openai="http://127.0.0.1:1", anthropic="http://127.0.0.1:2", messages="one")
        + extra
    )
    return load_config(path)


def test_attributes_name_every_header_the_decision_reads(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        """
routing:
  session_cache: {type: memory, tenant_header: X-Tenant}
ratelimits:
  - model: openai/gpt-5
    selector: {key: x-user-id}
    limit: {tokens: 1000, unit: minute}
""",
    )
    names = one_message.attribute_header_names(config)  # type: ignore[arg-type]
    assert ARCHWAY_KEY_HEADER in BODY_PHASE_HEADERS
    assert {"x-tenant", "x-user-id", "anthropic-version", "user-agent"} <= set(names)
    attributes = one_message.request_attributes(config)  # type: ignore[arg-type]
    assert attributes[:2] == ["request.path", "request.method"]
    assert "request.headers['x-tenant']" in attributes


def test_attribute_headers_read_back_from_a_body_message() -> None:
    request = ProcessingRequest()
    request.request_body.body = b"{}"
    assert messages.attribute_headers(request) is None
    request.attributes["envoy.filters.http.ext_proc"].update(
        {
            "request.path": "/v1/messages?beta=true",
            "request.method": "POST",
            "request.headers['anthropic-version']": "2023-06-01",
            "request.headers['x-model-affinity']": "s1",
        }
    )
    assert messages.attribute_headers(request) == {
        ":path": "/v1/messages?beta=true",
        ":method": "POST",
        "anthropic-version": "2023-06-01",
        "x-model-affinity": "s1",
    }


def test_two_messages_render_no_lua_and_a_bad_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.yaml"
    path.write_text(
        CONFIG.format(openai="http://127.0.0.1:1", anthropic="http://127.0.0.1:2", messages="two")
    )
    rendered = json.dumps(bootstrap_dict(load_config(path)))
    assert one_message.LUA_FILTER not in rendered and "request_attributes" not in rendered
    one = json.dumps(bootstrap_dict(_config(tmp_path)))  # type: ignore[arg-type]
    assert one_message.LUA_FILTER in one and "request_attributes" in one
    path.write_text(
        CONFIG.format(openai="http://127.0.0.1:1", anthropic="http://127.0.0.1:2", messages="three")
    )
    with pytest.raises(ConfigError, match="ext_proc_messages"):
        load_config(path)


def test_decision_metadata_holds_no_value_without_a_kind() -> None:
    """Envoy's Lua filter aborts the whole process on a metadata Value of no kind."""
    response = messages.decision_metadata_response((), (), (), None)
    assert response.dynamic_metadata.fields[messages.DECISION_NAMESPACE].struct_value.fields == {}
    response = messages.decision_metadata_response(
        ((":path", "/v1/messages"),), ("authorization",), (), b"{}"
    )
    decision = response.dynamic_metadata.fields[messages.DECISION_NAMESPACE].struct_value
    assert set(decision.fields) == {"set", "remove"}
    assert all(v.WhichOneof("kind") for v in decision.fields.values())
    assert decision.fields["set"].struct_value.fields[":path"].string_value == "/v1/messages"
