"""The gRPC health service: what it says, how Envoy's health check reads it, and
how a draining server keeps answering while load balancers move away."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2, external_processor_pb2_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import HttpHeaders, ProcessingRequest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_proc.config import load_config_text
from ext_proc.deploy.bootstrap import EXT_PROC_CLUSTER, EXT_PROC_HEALTH_CHECK, render_bootstrap
from ext_proc.deploy.echo import EchoUpstream
from ext_proc.server.health import DEFAULT_DRAIN_S, EXT_PROC_SERVICE, HEALTH_SERVICES
from tests.gateway import Gateway, ServerProcess, start_gateway, stop_gateway
from tests.processes import read_until

ARCHWAY = [sys.executable, "-m", "ext_proc.cli"]

CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-test
    default: true
archway:
  admin_port: 0
"""


def health_status(port: int, service: str) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def list_models(port: int) -> list[str]:
    """One ext_proc stream, as Envoy opens it for ``GET /v1/models``."""
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":method", raw_value=b"GET"),
            HeaderValue(key=":path", raw_value=b"/v1/models"),
        ]
    )
    request = ProcessingRequest(request_headers=HttpHeaders(headers=headers, end_of_stream=True))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_processor_pb2_grpc.ExternalProcessorStub(channel)
        (response,) = list(stub.Process(iter([request]), timeout=10))
    return [m["id"] for m in json.loads(response.immediate_response.body)["data"]]


def post(url: str) -> int:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=b'{"model": "gpt-5", "messages": []}',
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def ext_proc_health_flags(gw: Gateway) -> list[str]:
    """Envoy's view of each ext_proc server (admin ``/clusters``): ``healthy`` or failure flags."""
    text = gw.envoy._admin_get("/clusters")
    prefix = f"{EXT_PROC_CLUSTER}::"
    return [
        line.rsplit("::", 1)[1]
        for line in text.splitlines()
        if line.startswith(prefix) and "::health_flags::" in line
    ]


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    with EchoUpstream(name="openai") as upstream:
        # `archway serve` as users run it; a SIGTERM then drains it for 30 s.
        gw = start_gateway(
            CONFIG.format(upstream=upstream.base_url),
            tmp_path,
            {"openai": upstream},
            server_process=True,
            serve_args=("--drain-seconds", "30"),
        )
        try:
            yield gw
        finally:
            stop_gateway(gw)


def test_the_envoy_health_check_notices_a_drain_well_within_the_drain_period() -> None:
    assert EXT_PROC_HEALTH_CHECK.notice_s < DEFAULT_DRAIN_S


def test_the_health_service_name_is_the_ext_proc_service() -> None:
    descriptor = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"]
    assert descriptor.full_name == EXT_PROC_SERVICE


def test_bootstrap_health_checks_the_ext_proc_cluster_over_grpc() -> None:
    config = load_config_text(CONFIG.format(upstream="http://127.0.0.1:9"))
    data = yaml.safe_load(render_bootstrap(config, ext_proc_host="archway", ext_proc_port=9002))
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    (check,) = clusters[EXT_PROC_CLUSTER]["health_checks"]
    assert check["grpc_health_check"] == {"service_name": EXT_PROC_SERVICE}
    # Envoy's 60s default before a cluster sees traffic would hide a server that came up late.
    assert check["no_traffic_interval"] == check["interval"]
    assert clusters[EXT_PROC_CLUSTER]["ignore_health_on_host_removal"] is True
    # Upstream providers are not health-checked: a probe would spend their quota.
    assert all("health_checks" not in c for n, c in clusters.items() if n != EXT_PROC_CLUSTER)


def test_a_request_right_after_wait_ready_routes(gateway: Gateway) -> None:
    # Envoy reports ready only after its first round of checks, and that round passed.
    assert ext_proc_health_flags(gateway) == ["healthy"]
    assert post(gateway.url) == 200


def test_a_draining_server_is_noticed_by_envoy_and_still_answers(gateway: Gateway) -> None:
    server = gateway.server
    assert isinstance(server, ServerProcess) and server.proc is not None
    assert {s: health_status(server.port, s) for s in HEALTH_SERVICES} == dict.fromkeys(
        HEALTH_SERVICES, "SERVING"
    )
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10.0
    while health_status(server.port, EXT_PROC_SERVICE) != "NOT_SERVING":
        assert time.monotonic() < deadline, "SIGTERM did not start the drain"
        time.sleep(0.05)
    assert {s: health_status(server.port, s) for s in HEALTH_SERVICES} == dict.fromkeys(
        HEALTH_SERVICES, "NOT_SERVING"
    )
    # Generous: a loaded machine runs Envoy's checks late, not wrongly.
    deadline = time.monotonic() + EXT_PROC_HEALTH_CHECK.notice_s + 10.0
    while ext_proc_health_flags(gateway) == ["healthy"]:
        assert time.monotonic() < deadline, "Envoy did not notice NOT_SERVING"
        time.sleep(0.05)
    assert "failed_active_hc" in ext_proc_health_flags(gateway)[0]
    # Its only server failing its check, Envoy still uses it (panic mode): a drain
    # never turns away a request that the server can still answer.
    assert post(gateway.url) == 200


def test_serve_drains_on_sigterm_and_stops_at_once_on_a_second_signal(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG.format(upstream="http://127.0.0.1:9"))
    proc = subprocess.Popen(
        [
            *ARCHWAY,
            "serve",
            str(path),
            "--port",
            "0",
            "--drain-seconds",
            "30",
            "--metrics-port",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        line = read_until(proc, "listening on", 60)[-1]
        port = int(line.rsplit(":", 1)[1])
        assert health_status(port, EXT_PROC_SERVICE) == "SERVING"
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        while health_status(port, EXT_PROC_SERVICE) != "NOT_SERVING":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert health_status(port, "") == "NOT_SERVING"
        # Draining is not stopped: streams still get answers.
        assert list_models(port) == ["openai/gpt-5"]
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        # Well inside the 30 s drain: the second signal cut it short.
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
