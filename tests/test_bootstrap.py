"""The rendered Envoy bootstrap: its shape, Envoy's own verdict (``--mode validate``)
and a real Envoy running it against a fake ext_proc server and a fake upstream."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc
from envoy.type.v3.http_status_pb2 import HttpStatus

from ext_proc.config import Config, GatewaySettings, Listener, Overrides, ProviderConfig
from ext_proc.deploy.bootstrap import (
    BUFFER_HEADROOM_BYTES,
    CLIENT_PATH_HEADER,
    EXT_PROC_CLUSTER,
    TRANSLATION_FILTER,
    TRANSLATION_STAT_PREFIX,
    bootstrap_dict,
    render_bootstrap,
)
from ext_proc.deploy.envoy_process import (
    ENVOY_BINARY_ENV,
    EnvoyError,
    EnvoyNotFoundError,
    EnvoyProcess,
    find_envoy_binary,
    validate_bootstrap,
)
from ext_proc.deploy.one_message import LUA_FILTER
from ext_proc.headers import (
    CLIENT_DECISION_HEADERS,
    ROUTE_HEADER,
    TRANSLATE_HEADER,
    TRANSLATION_PHASE,
    UPSTREAM_PHASE_KEY,
)
from ext_proc.routing.catalog import upstream_for
from ext_proc.server.messages import DECISION_NAMESPACE, METADATA_NAMESPACE

SECRET = "sk-archway-test-secret-do-not-render"


def _provider(model: str, **kwargs: Any) -> ProviderConfig:
    prefix, _, model_id = model.partition("/")
    kwargs.setdefault("access_key", f"{SECRET}-{prefix}")
    return ProviderConfig(model=model, provider=prefix, model_id=model_id, name=model, **kwargs)


def _config(*providers: ProviderConfig, **kwargs: Any) -> Config:
    kwargs.setdefault("listeners", (Listener("egress_traffic", "127.0.0.1", 12000, 300.0),))
    return Config(providers=providers, **kwargs)


CONFIGS: dict[str, Config] = {
    "catalog": _config(
        _provider("openai/gpt-4o"),
        _provider("openai/gpt-4o-mini"),
        _provider("anthropic/claude-sonnet-4-5"),
        _provider("gemini/gemini-2.5-pro"),
        _provider("groq/*"),
    ),
    "local_and_custom": _config(
        _provider("ollama/llama3.2", base_url="http://localhost:11434", access_key=None),
        _provider("custom/qwen", base_url="http://10.0.0.7:8000/v1"),
        _provider(
            "mycorp/llama",
            base_url="https://llm.example.com:8443/v1",
            provider_interface="openai",
            http_host="api.example.com",
        ),
        _provider("azure_openai/gpt-4o", base_url="https://corp.openai.azure.com"),
    ),
    "two_listeners_custom_gateway": _config(
        _provider("openai/gpt-4o"),
        listeners=(
            Listener("egress_traffic", "0.0.0.0", 12000, 600.0),
            Listener("anthropic_clients", "127.0.0.1", 12001, 30.0, "anthropic"),
        ),
        overrides=Overrides(
            upstream_connect_timeout_s=2.5,
            upstream_tls_ca_path="/etc/ssl/certs/ca-certificates.crt",
        ),
        gateway=GatewaySettings(
            ext_proc_address="archway",
            ext_proc_port=9100,
            admin_port=9999,
            max_request_body_bytes=32 * 1024 * 1024,
            message_timeout_s=2.5,
            failure_mode_allow=True,
        ),
    ),
}


def _clusters(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in data["static_resources"]["clusters"]}


def _hcm(data: dict[str, Any], index: int = 0) -> dict[str, Any]:
    listener = data["static_resources"]["listeners"][index]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _filter(hcm: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f["typed_config"] for f in hcm["http_filters"] if f["name"] == name)


# --- structure ------------------------------------------------------------------------


def test_one_cluster_per_distinct_upstream() -> None:
    config = CONFIGS["catalog"]
    clusters = _clusters(bootstrap_dict(config))
    expected = {upstream_for(p).cluster for p in config.providers}
    assert set(clusters) == expected | {EXT_PROC_CLUSTER}
    assert len(expected) == 4  # both OpenAI models share one cluster


def test_tls_upstream_has_sni_san_and_alpn() -> None:
    openai = _clusters(bootstrap_dict(CONFIGS["catalog"]))["openai"]
    assert openai["type"] == "LOGICAL_DNS"
    assert openai["dns_lookup_family"] == "V4_PREFERRED"
    endpoint = openai["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {"address": "api.openai.com", "port_value": 443}
    assert endpoint["hostname"] == "api.openai.com"
    tls = openai["transport_socket"]["typed_config"]
    assert tls["sni"] == "api.openai.com"
    validation = tls["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": Overrides().upstream_tls_ca_path}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "api.openai.com"}}
    ]
    options = openai["typed_extension_protocol_options"]
    assert "auto_config" in next(iter(options.values()))


def test_plain_upstream_is_http1_without_tls() -> None:
    config = CONFIGS["local_and_custom"]
    clusters = _clusters(bootstrap_dict(config))
    ollama = clusters[upstream_for(config.providers[0]).cluster]
    assert "transport_socket" not in ollama
    assert ollama["type"] == "LOGICAL_DNS"
    options = next(iter(ollama["typed_extension_protocol_options"].values()))
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    qwen = clusters[upstream_for(config.providers[1]).cluster]
    assert qwen["type"] == "STATIC"  # an IP literal needs no DNS
    assert "dns_lookup_family" not in qwen


def test_http_host_and_port_go_to_endpoint_hostname() -> None:
    config = CONFIGS["local_and_custom"]
    clusters = _clusters(bootstrap_dict(config))
    mycorp = clusters[upstream_for(config.providers[2]).cluster]
    endpoint = mycorp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["hostname"] == "api.example.com"  # http_host wins for Host
    assert mycorp["transport_socket"]["typed_config"]["sni"] == "llm.example.com"
    ollama = clusters[upstream_for(config.providers[0]).cluster]
    endpoint = ollama["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["hostname"] == "localhost:11434"


def test_upstream_connect_timeout_and_buffers() -> None:
    config = CONFIGS["two_listeners_custom_gateway"]
    data = bootstrap_dict(config)
    limit = config.gateway.max_request_body_bytes + BUFFER_HEADROOM_BYTES
    for cluster in _clusters(data).values():
        assert cluster["per_connection_buffer_limit_bytes"] == limit
    assert _clusters(data)["openai"]["connect_timeout"] == "2.500s"
    for listener in data["static_resources"]["listeners"]:
        assert listener["per_connection_buffer_limit_bytes"] == limit


def test_route_reads_cluster_header_and_echoes_decisions() -> None:
    hcm = _hcm(bootstrap_dict(CONFIGS["two_listeners_custom_gateway"]), index=1)
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    bodyless, translated, untranslated = [r for r in routes if "route" in r]
    action = {"cluster_header": ROUTE_HEADER, "timeout": "30s", "auto_host_rewrite": True}
    # One-message mode: requests other than POST send their headers (the model
    # listing, 404/405), with the Lua filter off.
    assert bodyless["match"]["headers"] == [
        {"name": ":method", "string_match": {"exact": "POST"}, "invert_match": True}
    ]
    assert bodyless["route"] == action
    overrides = bodyless["typed_per_filter_config"]
    assert overrides[LUA_FILTER] == {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
        "disabled": True,
    }
    mode = overrides["envoy.filters.http.ext_proc"]["overrides"]["processing_mode"]
    assert (mode["request_header_mode"], mode["request_body_mode"]) == ("SEND", "BUFFERED")
    assert untranslated == {"match": {"prefix": "/"}, "route": action}
    assert translated["route"] == action
    assert translated["match"] == {
        "prefix": "/",
        "headers": [{"name": TRANSLATE_HEADER, "present_match": True}],
    }
    echoed = hcm["route_config"]["response_headers_to_add"]
    assert [h["header"] for h in echoed] == [
        {"key": name, "value": f"%REQ({name})%"} for name in CLIENT_DECISION_HEADERS
    ]
    # A fallback's answer carries its own decision headers (set upstream): kept.
    assert all(h["append_action"] == "ADD_IF_ABSENT" for h in echoed)
    assert all(h["keep_empty_value"] is False for h in echoed)


def test_listeners_and_admin() -> None:
    data = bootstrap_dict(CONFIGS["two_listeners_custom_gateway"])
    listeners = data["static_resources"]["listeners"]
    assert [(x["name"], x["address"]["socket_address"]) for x in listeners] == [
        ("egress_traffic", {"address": "0.0.0.0", "port_value": 12000}),
        ("anthropic_clients", {"address": "127.0.0.1", "port_value": 12001}),
    ]
    assert data["admin"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9999,
    }
    monitors = data["overload_manager"]["resource_monitors"]
    assert monitors[0]["typed_config"]["max_active_downstream_connections"] > 1000
    assert _hcm(data)["stat_prefix"] == "egress_traffic"
    assert _hcm(data)["codec_type"] == "AUTO"
    # Idle timeout must outlast the longest route timeout (600 s here).
    assert _hcm(data)["stream_idle_timeout"] == "605s"


def test_ext_proc_filter_modes_and_limits() -> None:
    config = CONFIGS["two_listeners_custom_gateway"]
    hcm = _hcm(bootstrap_dict(config))
    ext_proc = _filter(hcm, "envoy.filters.http.ext_proc")
    # One message: the body, with the headers the decision reads as attributes.
    assert ext_proc["processing_mode"] == {
        "request_header_mode": "SKIP",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }
    assert ext_proc["grpc_service"]["envoy_grpc"] == {
        "cluster_name": EXT_PROC_CLUSTER,
        "max_receive_message_length": 32 * 1024 * 1024 + BUFFER_HEADROOM_BYTES,
    }
    assert ext_proc["message_timeout"] == "2.500s"
    assert ext_proc["failure_mode_allow"] is True
    assert ext_proc["allow_mode_override"] is True
    assert ext_proc["request_attributes"][:2] == ["request.path", "request.method"]
    assert "request.headers['x-model-affinity']" in ext_proc["request_attributes"]
    assert ext_proc["metadata_options"]["receiving_namespaces"]["untyped"] == [
        METADATA_NAMESPACE,
        DECISION_NAMESPACE,
    ]


def test_two_message_mode_sends_headers_and_renders_no_lua() -> None:
    config = CONFIGS["two_listeners_custom_gateway"]
    config = dataclasses.replace(
        config, gateway=dataclasses.replace(config.gateway, ext_proc_messages="two")
    )
    hcm = _hcm(bootstrap_dict(config))
    assert LUA_FILTER not in [f["name"] for f in hcm["http_filters"]]
    ext_proc = _filter(hcm, "envoy.filters.http.ext_proc")
    assert ext_proc["processing_mode"]["request_header_mode"] == "SEND"
    assert "request_attributes" not in ext_proc
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    # No route for bodyless requests: their headers go to the server anyway.
    assert all(":method" not in json.dumps(r["match"]) for r in routes if "route" in r)
    # Nor Lua settings on the routes that answer unserved requests.
    assert LUA_FILTER not in json.dumps(routes)


def test_translation_filter_is_off_unless_the_translated_route_turns_it_on() -> None:
    hcm = _hcm(bootstrap_dict(CONFIGS["two_listeners_custom_gateway"]))
    names = [f["name"] for f in hcm["http_filters"]]
    # After routing, so its per-route config is read on the route routing picked.
    assert names[-4:] == [
        "envoy.filters.http.ext_proc",
        LUA_FILTER,
        TRANSLATION_FILTER,
        "envoy.filters.http.router",
    ]
    translation = _filter(hcm, TRANSLATION_FILTER)
    assert translation["stat_prefix"] == TRANSLATION_STAT_PREFIX
    assert set(translation["processing_mode"].values()) == {"SKIP", "NONE"}
    assert translation["allow_mode_override"] is True
    # The same server, told by stream metadata that these streams are responses.
    routing_service = _filter(hcm, "envoy.filters.http.ext_proc")["grpc_service"]
    assert "initial_metadata" not in routing_service
    assert translation["grpc_service"] == {
        **routing_service,
        "initial_metadata": [{"key": UPSTREAM_PHASE_KEY, "value": TRANSLATION_PHASE}],
    }

    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    _, translated, untranslated = [r for r in routes if "route" in r]
    assert "typed_per_filter_config" not in untranslated
    per_route = translated["typed_per_filter_config"][TRANSLATION_FILTER]
    assert per_route["@type"].endswith("ExtProcPerRoute")
    mode = per_route["overrides"]["processing_mode"]
    assert mode["response_header_mode"] == "SEND"
    assert {v for k, v in mode.items() if k != "response_header_mode"} == {"SKIP", "NONE"}
    assert translated["response_headers_to_add"] == [
        {
            "header": {"key": TRANSLATE_HEADER, "value": f"%REQ({TRANSLATE_HEADER})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
    ]


def test_ext_proc_cluster_is_http2_and_follows_overrides() -> None:
    config = CONFIGS["two_listeners_custom_gateway"]
    cluster = _clusters(bootstrap_dict(config))[EXT_PROC_CLUSTER]
    assert cluster["type"] == "STRICT_DNS"  # "archway": a docker-compose service name
    assert cluster["connect_timeout"] == "1s"
    options = next(iter(cluster["typed_extension_protocol_options"].values()))
    assert options["explicit_http_config"] == {"http2_protocol_options": {}}
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "archway", "port_value": 9100}

    data = bootstrap_dict(config, ext_proc_host="127.0.0.1", ext_proc_port=7000, admin_port=0)
    cluster = _clusters(data)[EXT_PROC_CLUSTER]
    assert cluster["type"] == "STATIC"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 7000}
    assert data["admin"]["address"]["socket_address"]["port_value"] == 0


def test_ext_proc_cluster_can_list_one_endpoint_per_worker() -> None:
    config = CONFIGS["catalog"]
    data = bootstrap_dict(config, ext_proc_host="127.0.0.1", ext_proc_ports=[7001, 7002])
    endpoints = _clusters(data)[EXT_PROC_CLUSTER]["load_assignment"]["endpoints"]
    ports = [
        e["endpoint"]["address"]["socket_address"]["port_value"]
        for e in endpoints[0]["lb_endpoints"]
    ]
    assert ports == [7001, 7002]
    validate_bootstrap(
        render_bootstrap(config, ext_proc_host="127.0.0.1", ext_proc_ports=[7001, 7002])
    )


def test_local_replies_never_catch_all() -> None:
    mappers = _hcm(bootstrap_dict(CONFIGS["catalog"]))["local_reply_config"]["mappers"]
    assert len(mappers) == 12
    for mapper in mappers:
        text = json.dumps(mapper["filter"])
        assert (
            "response_flag_filter" in text
            or "request_payload_too_large" in text
            or "startsWith('ext_proc_error')" in text
            or "code_details == 'direct_response'" in text
        )
        assert mapper["body_format_override"]["content_type"] == "application/json"
    anthropic, openai = mappers[0], mappers[1]
    assert anthropic["body_format_override"]["json_format"]["type"] == "error"
    assert CLIENT_PATH_HEADER in json.dumps(anthropic["filter"])
    assert set(openai["body_format_override"]["json_format"]["error"]) == {
        "message",
        "type",
        "param",
        "code",
    }


def test_access_log_is_json_with_decisions() -> None:
    hcm = _hcm(bootstrap_dict(CONFIGS["catalog"]))
    log = hcm["access_log"][0]["typed_config"]
    fields = log["log_format"]["json_format"]
    for name in ("response_flags", "upstream_cluster", "request_id", "model", "route"):
        assert name in fields
    assert fields["model"] == "%REQ(x-archway-model)%"
    assert fields["translation"] == f"%REQ({TRANSLATE_HEADER})%"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_no_access_key_in_output(name: str) -> None:
    text = render_bootstrap(CONFIGS[name])
    assert SECRET not in text
    assert "Bearer" not in text


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_render_is_deterministic_yaml(name: str) -> None:
    text = render_bootstrap(CONFIGS[name])
    assert text == render_bootstrap(CONFIGS[name])
    assert yaml.safe_load(text) == bootstrap_dict(CONFIGS[name])


def test_conflicting_endpoints_for_one_cluster_are_refused() -> None:
    config = _config(
        _provider("custom/a", base_url="http://10.0.0.7:8000/v1", http_host="a.internal"),
        _provider("custom/b", base_url="http://10.0.0.7:8000/v1", http_host="b.internal"),
    )
    with pytest.raises(ValueError, match="already used"):
        bootstrap_dict(config)


# --- Envoy's verdict -------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_envoy_validates_rendered_bootstrap(name: str) -> None:
    validate_bootstrap(render_bootstrap(CONFIGS[name]))


def test_validate_reports_envoys_message() -> None:
    text = render_bootstrap(CONFIGS["catalog"]).replace("LOGICAL_DNS", "NOT_A_TYPE")
    with pytest.raises(EnvoyError, match="NOT_A_TYPE"):
        validate_bootstrap(text)


def test_find_envoy_binary_prefers_env(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_envoy_binary()
    assert Path(real).is_file()
    monkeypatch.setenv(ENVOY_BINARY_ENV, real)
    assert find_envoy_binary() == real
    monkeypatch.setenv(ENVOY_BINARY_ENV, "/nonexistent/envoy")
    with pytest.raises(EnvoyNotFoundError, match=ENVOY_BINARY_ENV):
        find_envoy_binary()


# --- a running Envoy ---------------------------------------------------------------------


@pytest.fixture
def envoy_log(tmp_path: Path) -> Path:
    return tmp_path / "envoy.log"


def _idle_bootstrap() -> str:
    config = _config(
        _provider("openai/gpt-4o"),
        listeners=(Listener("egress_traffic", "127.0.0.1", 0, 30.0),),
    )
    # Nothing serves ext_proc here: readiness does not depend on it.
    return render_bootstrap(config, ext_proc_host="127.0.0.1", ext_proc_port=9, admin_port=0)


@pytest.fixture
def idle_envoy(envoy_log: Path) -> Iterator[EnvoyProcess]:
    with EnvoyProcess(output=envoy_log) as envoy:
        envoy.start(_idle_bootstrap())
        envoy.wait_ready(timeout_s=20)
        yield envoy


def test_envoy_process_binds_port_zero_and_stops(idle_envoy: EnvoyProcess) -> None:
    assert idle_envoy.admin_url.startswith("http://127.0.0.1:")
    addresses = idle_envoy.listener_addresses()
    assert set(addresses) == {"egress_traffic"}
    host, port = addresses["egress_traffic"]
    assert host == "127.0.0.1"
    assert port > 0
    with socket.create_connection((host, port), timeout=5):
        pass
    assert idle_envoy.returncode is None
    assert idle_envoy.stop() is not None
    assert not idle_envoy.running
    assert idle_envoy.returncode is not None
    assert idle_envoy.stop() is not None  # twice is fine


def test_wait_ready_fails_fast_with_envoys_output(envoy_log: Path) -> None:
    with EnvoyProcess(output=envoy_log) as envoy:
        envoy.start("static_resources: {clusters: [{name: x, type: NOT_A_TYPE}]}\n")
        # Envoy's exit ends the wait, not the timeout (whose message differs).
        with pytest.raises(
            EnvoyError, match=r"(?s)exited with status \d+ while starting.*NOT_A_TYPE"
        ):
            envoy.wait_ready(timeout_s=60)
        assert envoy.returncode not in (None, 0)


_ORPHANING_PARENT = """
import os, sys
sys.path.insert(0, sys.argv[1])
from ext_proc.deploy.envoy_process import EnvoyProcess
envoy = EnvoyProcess(output=sys.argv[2])
envoy.start(sys.stdin.read())
envoy.wait_ready(timeout_s=20)
print(envoy.pid, flush=True)
os._exit(0)  # no cleanup: only the kernel's parent-death signal can stop Envoy
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has already exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_envoy_dies_with_its_parent(envoy_log: Path, tmp_path: Path) -> None:
    repo = str(Path(__file__).resolve().parents[1])
    result = subprocess.run(
        [sys.executable, "-c", _ORPHANING_PARENT, repo, str(envoy_log)],
        input=_idle_bootstrap(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        # The parent exits without cleaning up: its Envoy work dir goes in here.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    pid = int(result.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail("Envoy outlived its parent")


# --- end to end: fake ext_proc server and fake upstream -------------------------------


_RELEASE_SLOW = threading.Event()
"""Set when the test module's gateway stops: until then ``/slow`` never answers."""


class _Upstream(http.server.BaseHTTPRequestHandler):
    """Echoes what it received; ``/slow`` answers only after the route timed out."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/slow":
            _RELEASE_SLOW.wait(60)
        payload = json.dumps(
            {"path": self.path, "host": self.headers.get("host"), "body": body.decode()}
        ).encode()
        # Envoy has hung up on /slow by now (the route timed out).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _set(name: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(
        header=HeaderValue(key=name, raw_value=value.encode()),
        append_action=HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


# A path Archway serves (the routes answer others themselves), other than the default.
OVERRIDE_IN_HEADERS_PATH = "/chat/completions"
_ASK_FOR_RESPONSE_HEADERS = ProcessingMode(
    request_header_mode=ProcessingMode.SEND,
    request_body_mode=ProcessingMode.BUFFERED,
    response_header_mode=ProcessingMode.SEND,
)


@dataclass
class _FakeProcessor(pb_grpc.ExternalProcessorServicer):
    """Routes on the body's ``model``: the name of a cluster in ``clusters``,
    ``immediate`` (answers 413 itself) or ``unrouted`` (sets no route header).

    It asks Envoy for the response headers with a ``mode_override``, from the
    body phase for the model ``override-in-body``, from the headers phase for
    the path ``OVERRIDE_IN_HEADERS_PATH``, and records the phases of each stream.
    """

    clusters: dict[str, str] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    streams: list[list[str]] = field(default_factory=list)

    def Process(self, requests: Iterator[pb.ProcessingRequest], context: Any) -> Iterator[Any]:
        phases: list[str] = []
        self.streams.append(phases)
        for request in requests:
            phase = request.WhichOneof("request") or ""
            phases.append(phase)
            if phase == "request_headers":
                response = pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                headers = {h.key: h.raw_value for h in request.request_headers.headers.headers}
                if headers.get(":path") == OVERRIDE_IN_HEADERS_PATH.encode():
                    response.mode_override.CopyFrom(_ASK_FOR_RESPONSE_HEADERS)
                yield response
            elif phase == "request_body":
                model = json.loads(request.request_body.body)["model"]
                response = self._decide(model)
                if model == "override-in-body":
                    response.mode_override.CopyFrom(_ASK_FOR_RESPONSE_HEADERS)
                yield response
            elif phase == "response_headers":
                yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())

    def _decide(self, model: str) -> pb.ProcessingResponse:
        if model == "immediate":
            return pb.ProcessingResponse(
                immediate_response=pb.ImmediateResponse(
                    status=HttpStatus(code=413),
                    body=b'{"from": "archway"}',
                    headers=pb.HeaderMutation(
                        set_headers=[_set("content-type", "application/json")]
                    ),
                    details="archway_test",
                )
            )
        set_headers = [_set(":path", self.paths.get(model, "/v1/chat/completions"))]
        set_headers += [_set("x-archway-model", model), _set("x-archway-provider", "fake")]
        if model in self.clusters:
            set_headers.append(_set(ROUTE_HEADER, self.clusters[model]))
        common = pb.CommonResponse(
            header_mutation=pb.HeaderMutation(set_headers=set_headers), clear_route_cache=True
        )
        return pb.ProcessingResponse(request_body=pb.BodyResponse(response=common))


@dataclass
class _Gateway:
    envoy: EnvoyProcess
    address: tuple[str, int]
    log: Path
    processor: _FakeProcessor

    def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(*self.address, timeout=15)
        try:
            conn.request("POST", path, body, {"content-type": "application/json"})
            response = conn.getresponse()
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, response.read()
        finally:
            conn.close()

    def chat(
        self, model: str, path: str = "/v1/chat/completions"
    ) -> tuple[int, dict[str, str], Any]:
        status, headers, body = self.post(path, json.dumps({"model": model}).encode())
        return status, headers, json.loads(body)

    def access_log_entry(
        self, matches: Callable[[dict[str, Any]], bool], timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """The first JSON line of Envoy's output that ``matches``: waited for, as
        access logs are flushed in the background, and other tests' lines skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = [x for x in self.log.read_text().splitlines() if x.startswith("{")]
            found = [entry for entry in map(json.loads, lines) if matches(entry)]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching access log line in {timeout_s:g}s: {lines}")
            time.sleep(0.1)


def _reserved_closed_port() -> socket.socket:
    """A bound socket that never listens: connecting to it is refused at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


BODY_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Gateway]:
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    dead = _reserved_closed_port()
    providers = (
        _provider(
            "custom/ok",
            base_url=f"http://127.0.0.1:{upstream.server_port}/v1",
            http_host="mock.test",
        ),
        _provider("custom/dead", base_url=f"http://127.0.0.1:{dead.getsockname()[1]}/v1"),
    )
    config = _config(
        *providers,
        # Long enough for a loaded machine's answers; /slow never answers in time.
        listeners=(Listener("egress_traffic", "127.0.0.1", 0, 3.0),),
        # The fake processor speaks the two-message protocol (headers, then body).
        gateway=GatewaySettings(max_request_body_bytes=BODY_LIMIT, ext_proc_messages="two"),
    )
    clusters = {p.model_id: upstream_for(p).cluster for p in providers}
    clusters["slow"] = clusters["override-in-body"] = clusters["ok"]
    processor = _FakeProcessor(clusters=clusters, paths={"slow": "/slow"})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ExternalProcessorServicer_to_server(processor, server)
    ext_proc_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    log = tmp_path_factory.mktemp("envoy") / "envoy.log"
    text = render_bootstrap(
        config, ext_proc_host="127.0.0.1", ext_proc_port=ext_proc_port, admin_port=0
    )
    try:
        with EnvoyProcess(output=log) as envoy:
            envoy.start(text)
            envoy.wait_ready(timeout_s=20)
            address = envoy.listener_addresses()["egress_traffic"]
            yield _Gateway(envoy, address, log, processor)
    finally:
        _RELEASE_SLOW.set()
        server.stop(grace=None)
        upstream.shutdown()
        dead.close()


def test_routes_on_header_and_echoes_decision(gateway: _Gateway) -> None:
    status, headers, body = gateway.chat("ok", path="/v1/messages")
    assert status == 200, body
    assert body["path"] == "/v1/chat/completions"  # ext_proc's rewrite reached upstream
    assert body["host"] == "mock.test"  # auto_host_rewrite took the endpoint hostname
    assert headers["x-archway-model"] == "ok"
    assert headers["x-archway-provider"] == "fake"
    assert "x-archway-route" not in headers  # unset decisions are not echoed empty
    # This test's request: no other test sends model ok to /v1/messages and gets a 200.
    entry = gateway.access_log_entry(
        lambda e: (e.get("model"), e["path"], e["response_code"]) == ("ok", "/v1/messages", 200)
    )
    assert entry["upstream_path"] == "/v1/chat/completions"


def test_upstream_failure_is_openai_shaped(gateway: _Gateway) -> None:
    status, headers, body = gateway.chat("dead")
    assert status == 503
    assert headers["content-type"] == "application/json"
    assert body["error"]["code"] == "upstream_unavailable"
    assert body["error"]["param"] is None
    assert headers["x-archway-model"] == "dead"


def test_upstream_failure_is_anthropic_shaped_on_messages_path(gateway: _Gateway) -> None:
    # The fake processor rewrote :path to /v1/chat/completions; the shape still
    # follows the path the client asked for.
    status, _, body = gateway.chat("dead", path="/v1/messages")
    assert status == 503
    assert body["type"] == "error"
    assert body["error"]["type"] == "api_error"


def test_upstream_timeout_and_no_cluster(gateway: _Gateway) -> None:
    status, _, body = gateway.chat("slow")
    assert (status, body["error"]["code"]) == (504, "upstream_timeout")
    status, _, body = gateway.chat("unrouted")
    assert body["error"]["code"] == "no_upstream", status


def test_body_over_limit_is_json_413(gateway: _Gateway) -> None:
    big = json.dumps({"model": "ok", "pad": "x" * (BODY_LIMIT + 2 * BUFFER_HEADROOM_BYTES)})
    status, headers, raw = gateway.post("/v1/messages", big.encode())
    assert status == 413
    assert headers["content-type"] == "application/json"
    body = json.loads(raw)
    assert body["error"]["type"] == "request_too_large"
    assert body["type"] == "error"


def test_ext_proc_immediate_response_is_untouched(gateway: _Gateway) -> None:
    status, headers, body = gateway.chat("immediate")
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert body == {"from": "archway"}


# Why response translation has a filter of its own (see ext_proc.deploy.bootstrap): Envoy
# switches response processing on only when asked in answer to a headers message.


def test_envoy_ignores_a_mode_override_sent_with_the_body_response(gateway: _Gateway) -> None:
    status, _, body = gateway.chat("override-in-body")
    assert status == 200, body
    assert gateway.processor.streams[-1] == ["request_headers", "request_body"]


def test_envoy_honours_a_mode_override_sent_with_the_headers_response(gateway: _Gateway) -> None:
    status, _, body = gateway.chat("ok", path=OVERRIDE_IN_HEADERS_PATH)
    assert status == 200, body
    assert gateway.processor.streams[-1] == ["request_headers", "request_body", "response_headers"]
