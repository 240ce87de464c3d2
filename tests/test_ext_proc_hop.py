"""The Envoy -> Archway hop's transport from the config: ``archway.ext_proc_uds``
(a Unix socket, the sidecar setups) and ``archway.ext_proc_tls`` (TLS where the
hop crosses a network), as ``archway render`` writes them and ``archway serve``
serves them, through a real Envoy."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

from ext_proc.config import ConfigError, load_config_text
from ext_proc.deploy.bootstrap import EXT_PROC_CLUSTER, bootstrap_dict
from ext_proc.deploy.echo import EchoUpstream
from ext_proc.server.workers import READY_LINE
from tests.gateway import start_gateway, stop_gateway

CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 10s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-hop-test
    default: true
archway:
{archway}
"""


def _config(archway: str, upstream: str = "http://127.0.0.1:9/v1") -> str:
    return CONFIG.format(upstream=upstream, archway=archway)


def _ext_proc_cluster(archway: str, **overrides: Any) -> dict[str, Any]:
    config = load_config_text(_config(archway), environ={})
    clusters = bootstrap_dict(config, **overrides)["static_resources"]["clusters"]
    (cluster,) = [c for c in clusters if c["name"] == EXT_PROC_CLUSTER]
    return cluster


# --- the config and the rendered cluster ----------------------------------------------


def test_a_socket_in_the_config_renders_a_pipe_endpoint() -> None:
    cluster = _ext_proc_cluster("  ext_proc_uds: /run/archway/ext_proc.sock")
    (group,) = cluster["load_assignment"]["endpoints"]
    assert group["lb_endpoints"] == [
        {"endpoint": {"address": {"pipe": {"path": "/run/archway/ext_proc.sock"}}}}
    ]
    assert cluster["type"] == "STATIC" and "dns_lookup_family" not in cluster
    # Health-checked over the socket like any endpoint.
    assert cluster["health_checks"]
    # An address given at render time means TCP, whatever the config says.
    tcp = _ext_proc_cluster(
        "  ext_proc_uds: /run/archway/ext_proc.sock",
        ext_proc_host="archway",
        ext_proc_port=9002,
        ext_proc_uds="",
    )
    address = tcp["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "archway", "port_value": 9002}}


def test_tls_in_the_config_renders_an_upstream_tls_context_that_checks_the_name() -> None:
    cluster = _ext_proc_cluster(
        "  ext_proc_address: archway.llm.svc.cluster.local\n"
        "  ext_proc_tls: {cert: /tls/tls.crt, key: /tls/tls.key, ca: /tls/ca.crt}"
    )
    socket = cluster["transport_socket"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    context = socket["typed_config"]
    assert context["sni"] == "archway.llm.svc.cluster.local"
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"filename": "/tls/ca.crt"}
    assert common["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "archway.llm.svc.cluster.local"}}
    ]
    # Without a CA, Envoy trusts the (self-signed) certificate itself; an IP
    # address is checked as one, and gets no SNI.
    bare = _ext_proc_cluster("  ext_proc_tls: {cert: /tls/tls.crt, key: /tls/tls.key}")
    context = bare["transport_socket"]["typed_config"]
    assert "sni" not in context
    validation = context["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": "/tls/tls.crt"}
    assert validation["match_typed_subject_alt_names"][0]["san_type"] == "IP_ADDRESS"


@pytest.mark.parametrize(
    ("archway", "expected"),
    [
        ("  ext_proc_tls: {cert: /tls/tls.crt}", "key"),
        ("  ext_proc_tls: {cert: /a, key: /b, verify: false}", "verify"),
        ("  ext_proc_tls: /tls", "mapping"),
        ("  ext_proc_uds: ''", "empty path"),
        ("  ext_proc_tls: {cert: '', key: /b}", "empty path"),
    ],
)
def test_a_bad_hop_setting_is_a_clear_config_error(archway: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text(_config(archway), environ={})
    assert expected in str(caught.value)


# --- serve ------------------------------------------------------------------------------


def _serve(tmp_path: Path, archway: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "config.yaml"
    path.write_text(_config(archway))
    return subprocess.run(
        [sys.executable, "-m", "ext_proc.cli", "serve", str(path), "--metrics-port", "off", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("archway", "args", "expected"),
    [
        ("  ext_proc_uds: {sock}", ("--workers", "2"), "served by one process"),
        ("  ext_proc_uds: {missing}/x.sock", ("--port", "0"), "cannot listen on the Unix socket"),
        ("  ext_proc_tls: {{cert: {missing}/c, key: {missing}/k}}", (), "TLS certificate"),
        ("  metrics_port: off", ("--tls-cert", "/nowhere"), "go together"),
    ],
)
def test_serve_refuses_a_hop_it_cannot_serve_in_one_line(
    tmp_path: Path, archway: str, args: tuple[str, ...], expected: str
) -> None:
    text = archway.format(sock=tmp_path / "s.sock", missing=tmp_path / "missing")
    result = _serve(tmp_path, text, *args)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("archway:")]
    assert expected in line, line


def test_archway_up_keeps_its_own_loopback_hop_whatever_the_config_says(tmp_path: Path) -> None:
    # archway up's workers are `serve --reuse-port` children behind up's Envoy,
    # which reaches them on TCP: a socket or TLS in the config is not theirs.
    sock = tmp_path / "s.sock"
    path = tmp_path / "config.yaml"
    path.write_text(_config(f"  ext_proc_uds: {sock}\n  ext_proc_tls: {{cert: /no, key: /no}}"))
    command = [sys.executable, "-m", "ext_proc.cli", "serve", str(path), "--workers", "1"]
    command += ["--reuse-port", "--port", "0", "--metrics-port", "off"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_LINE) and " unix:" not in line, proc.stderr
        assert not sock.exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


# --- TLS through a real Envoy -----------------------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def _ca(tmp: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp / f"{name}.crt", tmp / f"{name}.key"
    _openssl(
        *("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}"),
        *("-keyout", str(key), "-out", str(cert)),
    )
    return cert, key


def _server_cert(tmp: Path, ca: tuple[Path, Path], name: str) -> tuple[Path, Path]:
    cert, key, csr = tmp / "archway.crt", tmp / "archway.key", tmp / "archway.csr"
    ext = tmp / "san.ext"
    ext.write_text(f"subjectAltName=DNS:{name}\n")
    _openssl(
        *("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}"),
        *("-keyout", str(key), "-out", str(csr)),
    )
    _openssl(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1])),
        *("-CAcreateserial", "-days", "1", "-extfile", str(ext), "-out", str(cert)),
    )
    return cert, key


@pytest.mark.skipif(
    subprocess.run(["which", "openssl"], capture_output=True, check=False).returncode != 0,
    reason="needs the openssl command to make a throwaway CA",
)
def test_envoy_reaches_archway_over_tls_and_refuses_a_server_it_does_not_trust(
    tmp_path: Path,
) -> None:
    ca = _ca(tmp_path, "archway-test-ca")
    other_ca = _ca(tmp_path, "someone-else")
    cert, key = _server_cert(tmp_path, ca, "archway.test")
    with EchoUpstream(name="openai") as upstream:
        for trusted, answers in ((ca[0], True), (other_ca[0], False)):
            archway = (
                f"  ext_proc_tls: {{cert: {cert}, key: {key}, ca: {trusted}, "
                "server_name: archway.test}"
            )
            text = _config(archway, upstream=upstream.base_url)
            gw = start_gateway(text, tmp_path, {"openai": upstream}, server_process=True)
            try:
                client = openai.OpenAI(
                    base_url=f"{gw.url}/v1", api_key="client", max_retries=0, timeout=20
                )
                call = client.chat.completions.with_raw_response.create
                if answers:
                    raw = call(model="openai/gpt-5", messages=[{"role": "user", "content": "hi"}])
                    assert raw.headers["x-archway-model"] == "openai/gpt-5"
                    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-hop-test"
                    handshakes = gw.stats(f"cluster.{EXT_PROC_CLUSTER}.ssl.handshake")
                    assert handshakes[f"cluster.{EXT_PROC_CLUSTER}.ssl.handshake"] > 0
                else:
                    # A certificate from another CA: Envoy never sends it a request,
                    # and the client gets the gateway's JSON error.
                    with pytest.raises(openai.APIStatusError) as caught:
                        call(model="openai/gpt-5", messages=[{"role": "user", "content": "hi"}])
                    assert caught.value.status_code >= 500
                    body = caught.value.response.json()
                    assert body["error"]["code"] == "router_unavailable"
            finally:
                stop_gateway(gw)
