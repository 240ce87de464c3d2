"""The archway command line, run as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import grpc
import openai
import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
)

from ext_proc.cli import main
from ext_proc.config import load_config
from ext_proc.deploy.bootstrap import render_bootstrap
from tests.metrics_scrape import sample_key, scrape
from tests.processes import children, is_zombie, read_until

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-live-DO-NOT-PRINT-1234"
ARCHWAY = [sys.executable, "-m", "ext_proc.cli"]


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET + "-ant")


def test_check_summarises_without_secrets(keys, capsys) -> None:
    assert main(["check", str(ROOT / "examples/config.yaml")]) == 0
    out, err = capsys.readouterr()
    assert SECRET not in out + err
    assert "fast-model -> openai/gpt-5.2" in out
    assert "key set from $OPENAI_API_KEY" in out
    assert "creative_tasks -> anthropic/claude-sonnet-4-5" in out


def test_check_reports_problems_with_file_and_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm_provders:\n  - model: openai/gpt-5\n")
    assert main(["check", str(bad)]) == 1
    _, err = capsys.readouterr()
    assert f"{bad}:1" in err and "llm_providers" in err


def test_check_warns_for_unimplemented_plano_sections(tmp_path: Path, capsys) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "version: v0.4.0\nlisteners: []\nmodel_providers:\n  - model: openai/gpt-5\n"
        "    access_key: k\ntracing:\n  random_sampling: 100\n"
    )
    assert main(["check", str(path)]) == 0
    _, err = capsys.readouterr()
    assert "tracing" in err and "warning" in err


def test_render_matches_the_library_and_needs_no_keys(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    out = tmp_path / "envoy.yaml"
    config_path = ROOT / "examples/config.yaml"
    assert (
        main(["render", str(config_path), "-o", str(out), "--ext-proc-address", "archway:9002"])
        == 0
    )
    expected = render_bootstrap(
        load_config(config_path, allow_missing_env=True),
        ext_proc_host="archway",
        ext_proc_port=9002,
    )
    assert out.read_text() == expected


def test_explain_prints_the_decision_and_masks_credentials(keys, capsys) -> None:
    assert main(["explain", str(ROOT / "examples/config.yaml"), "--model", "creative-model"]) == 0
    out, _ = capsys.readouterr()
    assert "resolution:  alias (alias creative-model)" in out
    assert "x-archway-model: anthropic/claude-sonnet-4-5" in out
    assert "x-api-key: ***" in out
    assert SECRET not in out
    # The explained request is an OpenAI one; Anthropic gets it translated.
    assert "x-archway-translate: openai-to-anthropic" in out
    assert "body:        translated from the openai API to the anthropic API" in out


def test_explain_json_and_body_file(keys, tmp_path: Path, capsys) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}))
    assert main(["explain", str(ROOT / "examples/config.yaml"), "--body", str(body), "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["resolution"] == "default"
    assert decision["model"] == "openai/gpt-5.2"
    assert decision["set_headers"]["authorization"] == "Bearer ***"
    assert decision["translation"] is None


def test_explain_rejection_exits_2(keys, capsys) -> None:
    assert main(["explain", str(ROOT / "examples/config.yaml"), "--model", "gpt-0"]) == 2
    assert "model_not_found" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _demo_config(tmp_path: Path) -> Path:
    """The README's demo config on free ports, so tests run beside anything."""
    config = (ROOT / "examples/demo.yaml").read_text()
    config = config.replace("port: 12000", "port: 0")
    config = config.replace("18081", str(_free_port())).replace("18082", str(_free_port()))
    config += "archway:\n  admin_port: 0\n"
    path = tmp_path / "demo.yaml"
    path.write_text(config)
    return path


def test_up_serves_the_demo_and_stops_cleanly(tmp_path: Path) -> None:
    path = _demo_config(tmp_path)
    proc = subprocess.Popen(
        [*ARCHWAY, "up", str(path), "--echo-upstream", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    try:
        lines = read_until(proc, "Ctrl-C", 60)
        # Ready is printed only once both Envoy and the ext_proc health service answer.
        assert any("gRPC health: SERVING" in line and "/ready: LIVE" in line for line in lines)
        base = next(line.split("base_url ")[1].strip() for line in lines if "base_url" in line)
        started = children(proc.pid)
        assert started, "envoy should run as a child of archway up"
        req = urllib.request.Request(
            base + "/chat/completions",
            data=json.dumps({"model": "creative-model", "messages": []}).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = json.loads(resp.read())
            assert resp.headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
            assert resp.headers["x-archway-resolution"] == "alias"
        content = body["choices"][0]["message"]["content"]
        assert content.startswith("echo from anthropic")
        assert "model=claude-sonnet-4-5" in content and "x-api-key: ***" in content
        _stream_both_ways(base)
        metrics_url = next(
            line.split("metrics: ")[1].strip() for line in lines if "metrics:" in line
        )
        samples = scrape(metrics_url)
        routed = {
            "provider": "anthropic",
            "model": "anthropic/claude-sonnet-4-5",
            "outcome": "routed",
        }
        # The plain request and the OpenAI SDK's streamed one, both by alias.
        assert samples[sample_key("archway_requests_total", resolution="alias", **routed)] == 2
        assert samples[sample_key("archway_translations_total", pair="openai-to-anthropic")] == 2
        assert samples[sample_key("archway_translations_total", pair="anthropic-to-openai")] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        for child in started:
            assert not Path(f"/proc/{child}").exists() or is_zombie(child), "orphan left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _stream_both_ways(base_url: str) -> None:
    """Each SDK streams from a provider of the other API, translated."""
    messages = [{"role": "user", "content": "hi"}]
    gpt = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0, timeout=10)
    chunks = gpt.chat.completions.create(model="creative-model", messages=messages, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("echo from anthropic: POST /v1/messages")
    claude = anthropic.Anthropic(
        base_url=base_url.removesuffix("/v1"), api_key="k", max_retries=0, timeout=10
    )
    with claude.messages.stream(model="fast-model", max_tokens=64, messages=messages) as stream:
        text = "".join(stream.text_stream)
        assert stream.get_final_message().stop_reason == "end_turn"
    assert text.startswith("echo from openai: POST /v1/chat/completions")


def _chat_stream() -> list[ProcessingRequest]:
    """An open-model chat request as Envoy's routing filter sends it."""
    headers = HeaderMap(
        headers=[
            HeaderValue(key=":method", raw_value=b"POST"),
            HeaderValue(key=":path", raw_value=b"/v1/chat/completions"),
            HeaderValue(key="content-type", raw_value=b"application/json"),
        ]
    )
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    return [
        ProcessingRequest(request_headers=HttpHeaders(headers=headers)),
        ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True)),
    ]


@pytest.mark.parametrize("transport", ["h2", "grpcio"])
def test_serve_answers_ext_proc_streams(tmp_path: Path, transport: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"
    )
    proc = subprocess.Popen(
        [
            *ARCHWAY,
            "serve",
            str(path),
            "--port",
            "0",
            "--drain-seconds",
            "0",
            "--metrics-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "ARCHWAY_GRPC_SERVER": transport},
    )
    try:
        lines = read_until(proc, "listening on", 30)
        port = int(lines[-1].rsplit(":", 1)[1])
        metrics_url = next(line.split(" on ")[1].strip() for line in lines if "metrics on" in line)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ext_proc_grpc.ExternalProcessorStub(channel)
            headers = HeaderMap(
                headers=[
                    HeaderValue(key=":method", raw_value=b"GET"),
                    HeaderValue(key=":path", raw_value=b"/v1/models"),
                ]
            )
            request = ProcessingRequest(
                request_headers=HttpHeaders(headers=headers, end_of_stream=True)
            )
            (response,) = list(stub.Process(iter([request]), timeout=10))
            routed = list(stub.Process(iter(_chat_stream()), timeout=10))
        listing = json.loads(response.immediate_response.body)
        assert [m["id"] for m in listing["data"]] == ["openai/gpt-5"]
        assert routed[-1].WhichOneof("response") == "request_body"
        # The endpoint reads the metrics directory that `serve` set up for its workers.
        samples = scrape(metrics_url)
        key = sample_key(
            "archway_requests_total",
            resolution="default",
            provider="openai",
            model="openai/gpt-5",
            outcome="routed",
        )
        assert samples[key] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def test_up_restarts_a_crashed_ext_proc_worker(tmp_path: Path) -> None:
    path = _demo_config(tmp_path)
    proc = subprocess.Popen(
        [*ARCHWAY, "up", str(path), "--echo-upstream", "--workers", "1", "--metrics-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )

    def chat(base: str) -> int:
        req = urllib.request.Request(
            base + "/chat/completions",
            data=json.dumps({"model": "fast-model", "messages": []}).encode(),
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as err:
            return err.code

    try:
        lines = read_until(proc, "Ctrl-C", 60)
        base = next(line.split("base_url ")[1].strip() for line in lines if "base_url" in line)
        assert chat(base) == 200
        (worker,) = [p for p in children(proc.pid) if " serve " in _cmdline(p)]
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:  # the supervisor starts a new worker; Envoy finds it
            replacements = [
                p for p in children(proc.pid) if " serve " in _cmdline(p) and p != worker
            ]
            if replacements and chat(base) == 200:
                break
            assert time.monotonic() < deadline, "the worker was not replaced"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


# --- signals, failures and progress of the long-running commands ---------------------


def _chat_model(base: str, model: str, timeout_s: float = 10) -> tuple[int, str]:
    """The status and the model that answered a chat request for ``model``."""
    req = urllib.request.Request(
        base + "/chat/completions",
        data=json.dumps({"model": model, "messages": []}).encode(),
        headers={"content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.headers["x-archway-model"]
    except urllib.error.HTTPError as err:
        return err.code, ""
    except (urllib.error.URLError, OSError):
        return 0, ""


_ALIASES_BEFORE = "fast-model:\n    target: gpt-5.2\n  reasoning-model:\n    target: gpt-5\n"
_ALIASES_AFTER = "fast-model:\n    target: gpt-5\n  reasoning-model:\n    target: gpt-5.2\n"


def _start_up(path: Path, *extra: str, stderr: Path | None = None) -> subprocess.Popen[str]:
    with (stderr or Path(os.devnull)).open("ab") as err:
        return subprocess.Popen(
            [*ARCHWAY, "up", str(path), "--echo-upstream", "--metrics-port", "off", *extra],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_up_reloads_on_sighup_and_stops_on_sigint_or_sigterm(
    tmp_path: Path, stop: signal.Signals
) -> None:
    path = _demo_config(tmp_path)
    assert _ALIASES_BEFORE in path.read_text()
    proc = _start_up(path, "--workers", "2")
    try:
        lines = read_until(proc, "Ctrl-C", 60)
        base = next(line.split("base_url ")[1].strip() for line in lines if "base_url" in line)
        assert _chat_model(base, "fast-model") == (200, "openai/gpt-5.2")
        started = children(proc.pid)

        # The same size and modification time: only SIGHUP can tell the workers
        # (their file poll sees nothing new).
        before = path.stat()
        path.write_text(path.read_text().replace(_ALIASES_BEFORE, _ALIASES_AFTER))
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        # Every worker reloads: several requests in a row, spread over both.
        while [_chat_model(base, "fast-model") for _ in range(4)] != [(200, "openai/gpt-5")] * 4:
            assert proc.poll() is None, "SIGHUP stopped archway up"
            assert time.monotonic() < deadline, "SIGHUP did not reload the config"
            time.sleep(0.2)
        assert set(children(proc.pid)) == set(started), "SIGHUP restarted something"

        proc.send_signal(stop)
        assert proc.wait(timeout=20) == 0
        for child in started:
            assert not Path(f"/proc/{child}").exists() or is_zombie(child), "orphan left running"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_up_replaces_a_hung_ext_proc_worker(tmp_path: Path) -> None:
    path = _demo_config(tmp_path)
    proc = _start_up(path, "--workers", "1")
    try:
        lines = read_until(proc, "Ctrl-C", 60)
        base = next(line.split("base_url ")[1].strip() for line in lines if "base_url" in line)
        assert _chat_model(base, "fast-model")[0] == 200
        (worker,) = [p for p in children(proc.pid) if " serve " in _cmdline(p)]
        # Stopped, the worker never exits; only the health check can tell.
        os.kill(worker, signal.SIGSTOP)
        deadline = time.monotonic() + 45
        while True:
            replacements = [
                p for p in children(proc.pid) if " serve " in _cmdline(p) and p != worker
            ]
            if replacements and _chat_model(base, "fast-model", timeout_s=5)[0] == 200:
                break
            assert time.monotonic() < deadline, "the hung worker was not replaced"
            time.sleep(0.2)
        assert not Path(f"/proc/{worker}").exists() or is_zombie(worker)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_up_says_what_it_waits_for(tmp_path: Path) -> None:
    path = _demo_config(tmp_path)
    log = tmp_path / "stderr.log"
    proc = _start_up(path, "--workers", "1", "--ready-timeout", "45", stderr=log)
    try:
        read_until(proc, "Ctrl-C", 60)
        said = log.read_text()
        assert "archway: starting 1 ext_proc worker(s)" in said
        assert "archway: waiting for Envoy /ready (up to 45s)..." in said
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port something else listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


_ROUTER_WITHOUT_MODEL = """\
llm_providers:
  - model: openai/gpt-5
    access_key: k
    default: true
routing_preferences:
  - name: code generation
    description: writing code
    models: [openai/gpt-5]
router:
  model_path: {model_dir}
archway:
  admin_port: 0
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 5s}}
"""

_REFUSED_BY_ENVOY = """\
llm_providers:
  - model: openai/gpt-5
    access_key: k
    default: true
overrides:
  upstream_tls_ca_path: /nonexistent/ca.pem
archway:
  admin_port: 0
listeners:
  egress_traffic: {address: 127.0.0.1, port: 0, timeout: 5s}
"""


def _bad_inputs(tmp_path: Path, busy: int) -> dict[str, tuple[list[str], list[str]]]:
    """Command line -> what its one line of error must say."""
    demo = _demo_config(tmp_path)
    text = demo.read_text()
    admin_busy = _write(
        tmp_path, "admin.yaml", text.replace("admin_port: 0", f"admin_port: {busy}")
    )
    listener_busy = _write(tmp_path, "listener.yaml", text.replace("port: 0", f"port: {busy}", 1))
    no_model = _write(
        tmp_path, "router.yaml", _ROUTER_WITHOUT_MODEL.format(model_dir=tmp_path / "empty")
    )
    (tmp_path / "empty").mkdir()
    refused = _write(tmp_path, "refused.yaml", _REFUSED_BY_ENVOY)
    missing = str(tmp_path / "missing.yaml")
    d = str(demo)
    return {
        "check-missing": (["check", missing], ["cannot read the config file"]),
        "check-directory": (["check", str(tmp_path)], ["cannot read the config file"]),
        "render-unwritable": (["render", d, "-o", "/nonexistent/dir/x"], ["check the path"]),
        "explain-no-body": (["explain", d, "--body", missing], ["missing.yaml", "check the path"]),
        "route-no-body": (["route", d, "--body", missing], ["missing.yaml"]),
        "convert-no-model": (["router", "convert", missing, str(tmp_path / "o")], ["convert"]),
        "serve-bad-port": (["serve", d, "--port", "99999"], ["0 to 65535"]),
        "serve-busy": (
            ["serve", d, "--port", str(busy), "--workers", "1", "--metrics-port", "off"],
            [str(busy), "--port", "archway.ext_proc_port"],
        ),
        "serve-workers-busy": (
            ["serve", d, "--port", str(busy), "--workers", "2", "--metrics-port", "off"],
            [str(busy), "--port", "archway.ext_proc_port"],
        ),
        "serve-metrics-busy": (
            ["serve", d, "--port", "0", "--metrics-port", str(busy)],
            [str(busy), "--metrics-port", "archway.metrics_port"],
        ),
        "up-missing": (["up", missing], ["cannot read the config file"]),
        "up-admin-busy": (
            ["up", str(admin_busy), "--metrics-port", "off"],
            [f"port {busy} is in use", "archway.admin_port"],
        ),
        "up-listener-busy": (
            ["up", str(listener_busy), "--metrics-port", "off"],
            [f"port {busy} is in use", "listener egress_traffic"],
        ),
        "up-metrics-busy": (
            ["up", d, "--metrics-port", str(busy)],
            [str(busy), "--metrics-port", "archway.metrics_port"],
        ),
        "up-ext-proc-busy": (
            ["up", d, "--metrics-port", "off", "--ext-proc-port", str(busy)],
            [str(busy), "--ext-proc-port"],
        ),
        "up-no-router-model": (
            ["up", str(no_model), "--metrics-port", "off"],
            ["router", "model.bin", "archway router convert"],
        ),
        "up-refused-by-envoy": (
            ["up", str(refused), "--metrics-port", "off"],
            ["Envoy", "/nonexistent/ca.pem"],
        ),
        "up-ready-timeout": (
            ["up", d, "--metrics-port", "off", "--ready-timeout", "0.001"],
            ["not ready after 0.001s", "--ready-timeout"],
        ),
    }


_CASES = [
    "check-missing",
    "check-directory",
    "render-unwritable",
    "explain-no-body",
    "route-no-body",
    "convert-no-model",
    "serve-bad-port",
    "serve-busy",
    "serve-workers-busy",
    "serve-metrics-busy",
    "up-missing",
    "up-admin-busy",
    "up-listener-busy",
    "up-metrics-busy",
    "up-ext-proc-busy",
    "up-no-router-model",
    "up-refused-by-envoy",
    "up-ready-timeout",
]


@pytest.mark.parametrize("case", _CASES)
def test_bad_input_is_one_line_never_a_traceback(tmp_path: Path, busy_port: int, case: str) -> None:
    argv, expected = _bad_inputs(tmp_path, busy_port)[case]
    # Exits at once: the communicate() timeout is far below a drain or a ready wait.
    result = subprocess.run(
        [*ARCHWAY, *argv],
        capture_output=True,
        text=True,
        timeout=45,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    for words in expected:
        assert words in last, f"{words!r} not in the last line: {last!r}\n{result.stderr}"
