"""Keys stay secret and clients cannot steer routing."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from ext_proc.cli import main
from ext_proc.config import load_config
from ext_proc.deploy.bootstrap import render_bootstrap
from ext_proc.deploy.echo import EchoUpstream
from tests.gateway import start_gateway, stop_gateway

OPENAI_KEY = "sk-proj-SECRET-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-SECRET-anthropic-9876543210"
HEADER_SECRET = "org-SECRET-header-value"

CONFIG = f"""
listeners:
  egress_traffic: {{{{address: 127.0.0.1, port: 0, timeout: 5s}}}}
llm_providers:
  - model: openai/gpt-5
    base_url: {{openai}}
    access_key: $OPENAI_TEST_KEY
    default: true
    headers:
      OpenAI-Organization: {HEADER_SECRET}
  - model: anthropic/claude-sonnet-4-5
    base_url: {{anthropic}}
    access_key: {ANTHROPIC_KEY}
model_aliases:
  fast: {{{{target: gpt-5}}}}
archway:
  admin_port: 0
"""
SECRETS = (OPENAI_KEY, ANTHROPIC_KEY, HEADER_SECRET)


def _request(url: str, body: bytes, path: str = "/v1/chat/completions", **headers: str):
    req = urllib.request.Request(
        url + path, data=body, headers={"content-type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def test_keys_never_leak_to_clients_logs_or_envoy(tmp_path, monkeypatch, caplog) -> None:
    monkeypatch.setenv("OPENAI_TEST_KEY", OPENAI_KEY)
    caplog.set_level(logging.DEBUG)
    envoy_log = tmp_path / "envoy.log"
    with EchoUpstream(name="openai") as oai, EchoUpstream(name="anthropic") as ant:
        text = CONFIG.format(openai=oai.base_url, anthropic=ant.base_url)
        gw = start_gateway(text, tmp_path, {"openai": oai, "anthropic": ant}, envoy_log=envoy_log)
        try:
            seen: list[bytes] = []
            for model in ("fast", "anthropic/claude-sonnet-4-5", "nope", "gpt-5"):
                body = json.dumps({"model": model, "messages": []}).encode()
                _, headers, raw = _request(gw.url, body, authorization="Bearer client")
                seen.append(json.dumps(headers).encode() + raw)
            for bad in (b"{", b"[]", b'{"model": 1}'):
                seen.append(_request(gw.url, bad)[2])
            seen.append(_request(gw.url, b"{}", "/v1/messages")[2])
            # The upstreams did get the keys: that is the point of injecting them.
            assert oai.requests[0].headers["authorization"] == f"Bearer {OPENAI_KEY}"
            assert oai.requests[0].headers["openai-organization"] == HEADER_SECRET
            assert ant.requests[0].headers["x-api-key"] == ANTHROPIC_KEY
        finally:
            stop_gateway(gw)
    everything = b"".join(seen) + envoy_log.read_bytes() + caplog.text.encode()
    assert b"x-archway-model" in everything  # the capture did capture
    for secret in SECRETS:
        assert secret.encode() not in everything, secret


def test_keys_never_in_tool_output(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("OPENAI_TEST_KEY", OPENAI_KEY)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(openai="http://127.0.0.1:9", anthropic="http://127.0.0.1:9"))
    assert main(["check", str(path)]) == 0
    for model in ("fast", "anthropic/claude-sonnet-4-5", "nope"):
        main(["explain", str(path), "--model", model])
        main(["explain", str(path), "--model", model, "--json"])
    main(["render", str(path)])
    out, err = capsys.readouterr()
    config = load_config(path)
    rendered = render_bootstrap(config)
    dumped = repr(config) + str(config) + rendered + out + err
    assert "x-api-key: ***" in out
    for secret in SECRETS:
        assert secret not in dumped, secret


def test_config_errors_never_echo_keys(tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "llm_providers": [
                    {"model": "openai/gpt-5", "access_key": OPENAI_KEY, "default": "maybe"},
                    {"model": "nope", "access_key": ANTHROPIC_KEY, "headers": {"X": HEADER_SECRET}},
                ]
            }
        )
    )
    assert main(["check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "default" in err
    for secret in SECRETS:
        assert secret not in out + err


# Headers that only Archway may set and that nothing later overwrites on a request
# like this one (no translation, no preference router): a client's copy would
# reach the upstream, steer the translation filter or show up as a decision
# unless the headers phase strips it. (x-archway-cluster and -provider would be
# overwritten by the body phase anyway, so forging them proves nothing.)
@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("x-archway-translate", "openai-to-anthropic"),
        ("X-Archway-Translate", "anthropic-to-openai"),
        ("x-archway-route", "code generation"),
    ],
)
def test_client_routing_headers_are_stripped(tmp_path, header: str, value: str) -> None:
    with EchoUpstream(name="openai") as oai, EchoUpstream(name="anthropic") as ant:
        text = CONFIG.format(openai=oai.base_url, anthropic=ant.base_url).replace(
            "$OPENAI_TEST_KEY", "k"
        )
        gw = start_gateway(text, tmp_path, {"openai": oai, "anthropic": ant}, server_process=True)
        try:
            body = json.dumps({"model": "gpt-5", "messages": []}).encode()
            status, headers, answer = _request(gw.url, body, **{header: value})
            assert status == 200 and headers["x-archway-provider"] == "openai"
            assert ant.requests == [] and len(oai.requests) == 1
            assert header.lower() not in oai.requests[0].headers
            lowered = {k.lower(): v for k, v in headers.items()}
            assert header.lower() not in lowered
            # Untranslated: the OpenAI answer as the OpenAI echo gave it.
            content = json.loads(answer)["choices"][0]["message"]["content"]
            assert content.startswith("echo from openai: POST /v1/chat/completions")
        finally:
            stop_gateway(gw)
