"""Prometheus metrics: what each event counts, reloads, and totals across processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_proc.config import load_config
from ext_proc.routing.resolve import build_routing_table
from ext_proc.server.reload import ConfigReloader
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.telemetry import metrics
from ext_proc.telemetry.metrics import start_metrics_endpoint
from tests.factories import config, provider
from tests.metrics_scrape import delta, requests_key, sample_key, scrape
from tests.metrics_worker import chat_messages
from tests.processes import read_until

ROOT = Path(__file__).resolve().parents[1]

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True),
        provider("anthropic/claude-sonnet-4-5"),
        provider("mistral/*"),
        aliases={"fast-model": "gpt-5.2"},
    )
)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[metrics.MetricsEndpoint]:
    served = start_metrics_endpoint("127.0.0.1", 0)
    try:
        yield served
    finally:
        served.stop()


def _route(model: str | None, path: str = "/v1/chat/completions") -> None:
    async def drive() -> None:
        processor = RoutingProcessor(TABLE)
        messages = chat_messages(model)
        if path != "/v1/chat/completions":
            header = messages[0].request_headers.headers.headers[1]
            header.raw_value = path.encode()
        for message in messages:
            response = await processor.handle(message)
            if response.WhichOneof("response") == "immediate_response":
                return

    asyncio.run(drive())


def test_requests_count_by_resolution_provider_model_and_outcome(
    endpoint: metrics.MetricsEndpoint,
) -> None:
    before = scrape(endpoint.url)
    _route("openai/gpt-5.2")
    _route("fast-model")
    _route(None)
    _route("")
    _route("anthropic/claude-sonnet-4-5")
    _route("openai/no-such-model")
    _route("openai/gpt-5.2", path="/v1/audio/speech")
    after = scrape(endpoint.url)
    assert delta(before, after, requests_key("direct", "openai", "openai/gpt-5.2")) == 1
    assert delta(before, after, requests_key("alias", "openai", "openai/gpt-5.2")) == 1
    assert delta(before, after, requests_key("default", "openai", "openai/gpt-5.2")) == 2
    assert delta(before, after, requests_key("direct", "anthropic", "anthropic/claude-sonnet-4-5"))
    # Failed requests have no decision: empty resolution, provider and model.
    assert delta(before, after, requests_key("", "", "", "model_not_found")) == 1
    assert delta(before, after, requests_key("", "", "", "unsupported_path")) == 1
    assert delta(before, after, sample_key("archway_errors_total", code="model_not_found")) == 1
    assert delta(before, after, sample_key("archway_errors_total", code="unsupported_path")) == 1
    assert (
        delta(before, after, sample_key("archway_translations_total", pair="openai-to-anthropic"))
        == 1
    )


def test_models_under_a_wildcard_share_one_label(endpoint: metrics.MetricsEndpoint) -> None:
    before = scrape(endpoint.url)
    for model_id in ("a", "b", "c"):
        _route(f"mistral/{model_id}")
    after = scrape(endpoint.url)
    # A client picks any id under a wildcard; one series per id would grow without bound.
    assert delta(before, after, requests_key("direct", "mistral", "mistral/*")) == 3
    assert not any("mistral/a" in key for key in after)


def test_every_configured_model_has_its_series_before_its_first_request(
    endpoint: metrics.MetricsEndpoint,
) -> None:
    _route("openai/gpt-5.2")
    samples = scrape(endpoint.url)
    assert requests_key("direct", "anthropic", "anthropic/claude-sonnet-4-5") in samples
    assert requests_key("alias", "openai", "openai/gpt-5.2") in samples
    assert requests_key("default", "openai", "openai/gpt-5.2") in samples


def test_router_calls_are_timed_and_counted(endpoint: metrics.MetricsEndpoint) -> None:
    from ext_proc.router import RouteChoice
    from ext_proc.telemetry.observe import RequestTelemetry

    # A fake clock the router call advances: the histogram gets exactly its 20 ms,
    # however loaded the machine is.
    now = [100.0]

    async def choose() -> RouteChoice:
        now[0] += 0.02
        return RouteChoice("code", 0.9)

    before = scrape(endpoint.url)
    choice = asyncio.run(RequestTelemetry(clock=lambda: now[0]).router_call(choose()))
    after = scrape(endpoint.url)
    assert choice.route == "code"
    assert delta(before, after, sample_key("archway_router_decisions_total", route="code")) == 1
    assert delta(before, after, "archway_router_duration_seconds_count{}") == 1
    assert delta(before, after, "archway_router_duration_seconds_sum{}") == pytest.approx(0.02)
    # 20 ms lands above the 10 ms bucket and within the 25 ms one.
    assert delta(before, after, 'archway_router_duration_seconds_bucket{le="0.01"}') == 0
    assert delta(before, after, 'archway_router_duration_seconds_bucket{le="0.025"}') == 1


RELOAD_TEMPLATE = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 0, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: sk-metrics-secret
    default: true
model_aliases:
  fast: {{target: gpt-5}}
"""


def test_config_reloads_count_by_result(tmp_path: Path, endpoint: metrics.MetricsEndpoint) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(RELOAD_TEMPLATE.format(upstream="http://127.0.0.1:9"))
    reloader = ConfigReloader(path, load_config(path), lambda _: None)
    before = scrape(endpoint.url)
    reloader.reload()
    path.write_text("llm_providers: [\n")
    reloader.reload()
    path.write_text(RELOAD_TEMPLATE.format(upstream="http://127.0.0.1:10"))
    reloader.reload()
    path.unlink()
    reloader.reload()
    after = scrape(endpoint.url)
    # A file that is gone is an invalid config, as the loader reports it.
    expected = {"applied": 1, "invalid": 2, "needs_restart": 1}
    for result, count in expected.items():
        key = sample_key("archway_config_reloads_total", result=result)
        assert delta(before, after, key) == count, result
    assert "sk-metrics-secret" not in str(after)


def test_totals_add_up_across_worker_processes(tmp_path: Path) -> None:
    """Two worker processes count into one directory; one endpoint serves the sum."""
    path = tmp_path / "config.yaml"
    path.write_text(
        "llm_providers:\n  - model: openai/gpt-5\n    access_key: k\n    default: true\n"
    )
    directory = tmp_path / "metrics"
    env = {**os.environ, metrics.MULTIPROC_DIR_ENV: str(directory), "PYTHONUNBUFFERED": "1"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.metrics_worker", str(path), str(count)],
            cwd=ROOT,
            env=env,
        )
        for count in (3, 4)
    ]
    assert [worker.wait(timeout=60) for worker in workers] == [0, 0]
    serve = subprocess.Popen(
        [
            *(sys.executable, "-m", "ext_proc.cli", "serve", str(path), "--port", "0"),
            *("--metrics-port", "0", "--drain-seconds", "0"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = read_until(serve, "archway metrics on", 60)[-1]
        samples = scrape(line.split(" on ")[1].strip())
        assert samples[requests_key("default", "openai", "openai/gpt-5")] == 7
        assert samples[requests_key("", "", "", "model_not_found")] == 2
        assert samples[sample_key("archway_errors_total", code="model_not_found")] == 2
    finally:
        serve.terminate()
        serve.wait(timeout=10)
    # The operator's directory is theirs: serve neither empties nor removes it.
    assert any(directory.glob("counter_*.db"))


def test_multiprocess_mode_must_come_before_the_first_metric(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics.recorder()  # prometheus_client is now imported in single-process mode
    monkeypatch.delenv(metrics.MULTIPROC_DIR_ENV, raising=False)
    with pytest.raises(RuntimeError, match="before PROMETHEUS_MULTIPROC_DIR"):
        metrics.use_multiprocess_dir()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("", 9003),
        ("metrics_port: 0", 0),
        ("metrics_port: 9100", 9100),
        ("metrics_port: false", None),
        ("metrics_port: off", None),
    ],
)
def test_the_metrics_port_setting(setting: str, expected: int | None) -> None:
    from ext_proc.config import load_config_text

    text = "llm_providers: [{model: openai/gpt-5, access_key: k}]\n"
    if setting:
        text += f"archway:\n  {setting}\n"
    assert load_config_text(text).gateway.metrics_port == expected


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("metrics_port: true", "true is not a port"),
        ("metrics_port: 70000", "out of range"),
        ("ext_proc_port: 9003", "both use port 9003"),
    ],
)
def test_bad_metrics_ports_are_refused(setting: str, problem: str) -> None:
    from ext_proc.config import ConfigError, load_config_text

    with pytest.raises(ConfigError) as caught:
        load_config_text(
            f"llm_providers: [{{model: openai/gpt-5, access_key: k}}]\narchway:\n  {setting}\n"
        )
    assert problem in str(caught.value)
