"""What response translation costs, measured through a real Envoy on loopback.

    python -m bench.translation_cost [--requests 200]

Starts echo providers, the ext_proc server and two Envoys that differ only in
the response-translation filter and its route: ``with`` is what Archway renders,
``without`` has both removed (the bootstrap before translation existed). It
then times sequential requests on one keep-alive connection, interleaving the
cases so that background load hits them alike, and prints the median and the
90th percentile per case, plus the per-call cost of the translation functions
themselves. Numbers depend on the machine; compare cases, not absolutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import tempfile
import time
import timeit
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from ext_proc.apis import COMMON_DIALECT, WireAPI
from ext_proc.config import load_config
from ext_proc.deploy import echo
from ext_proc.deploy.bootstrap import TRANSLATION_FILTER, bootstrap_dict
from ext_proc.deploy.echo import EchoUpstream
from ext_proc.deploy.envoy_process import EnvoyProcess
from ext_proc.translate import translator_for
from tests.fake_providers import (
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)
from tests.gateway import LOOPBACK_LISTENER, OPENAI_AND_ANTHROPIC, ServerThread

CONFIG = LOOPBACK_LISTENER + OPENAI_AND_ANTHROPIC + "archway:\n  admin_port: 0\n"

OPENAI_BODY = {"model": "openai/gpt-5.2", "messages": [{"role": "user", "content": "hi"}]}
TO_ANTHROPIC_BODY = {**OPENAI_BODY, "model": "anthropic/claude-sonnet-4-5"}
ANTHROPIC_BODY = {
    "model": "anthropic/claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "hi"}],
}
TO_OPENAI_BODY = {**ANTHROPIC_BODY, "model": "openai/gpt-5.2"}


def without_translation(bootstrap: dict[str, Any]) -> dict[str, Any]:
    for listener in bootstrap["static_resources"]["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != TRANSLATION_FILTER]
        for host in hcm["route_config"]["virtual_hosts"]:
            host["routes"] = [r for r in host["routes"] if "headers" not in r["match"]]
    return bootstrap


class Client:
    def __init__(self, port: int) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def post(self, path: str, body: dict[str, Any]) -> float:
        payload = json.dumps(body).encode()
        start = time.perf_counter()
        self._conn.request("POST", path, payload, {"content-type": "application/json"})
        response = self._conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - start
        assert response.status == 200, response.status
        return elapsed


def summary(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[int(len(ms) * 0.9)]
    return f"median {statistics.median(ms):6.2f} ms   p90 {p90:6.2f} ms"


def per_call_us(fn: Callable[[], object], number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()

    # The echo provider writes headers and body apart; with Nagle on, each
    # answer would wait ~40 ms for a delayed ACK and drown every difference.
    echo._Handler.disable_nagle_algorithm = True
    upstreams = {n: EchoUpstream(name=n).start() for n in ("openai", "anthropic")}
    tmp = Path(tempfile.mkdtemp(prefix="archway-bench-"))
    (tmp / "config.yaml").write_text(CONFIG.format(**{n: u.base_url for n, u in upstreams.items()}))
    config = load_config(tmp / "config.yaml")
    server = ServerThread(config)
    envoys: dict[str, EnvoyProcess] = {}
    try:
        port = server.start()
        for name in ("with", "without"):
            data = bootstrap_dict(config, ext_proc_host="127.0.0.1", ext_proc_port=port)
            if name == "without":
                data = without_translation(data)
            envoy = envoys[name] = EnvoyProcess(output=tmp / f"envoy-{name}.log")
            envoy.start(yaml.safe_dump(data, sort_keys=False))
            envoy.wait_ready(30)
        clients = {
            n: Client(e.listener_addresses()["egress_traffic"][1]) for n, e in envoys.items()
        }
        chat, messages, stream = "/v1/chat/completions", "/v1/messages", {"stream": True}
        cases: dict[str, tuple[str, str, dict[str, Any]]] = {
            "same API, OpenAI JSON, without the filter": ("without", chat, OPENAI_BODY),
            "same API, OpenAI JSON, with the filter": ("with", chat, OPENAI_BODY),
            "same API, OpenAI SSE, without the filter": ("without", chat, OPENAI_BODY | stream),
            "same API, OpenAI SSE, with the filter": ("with", chat, OPENAI_BODY | stream),
            "same API, Anthropic JSON, with the filter": ("with", messages, ANTHROPIC_BODY),
            "OpenAI client -> Anthropic, JSON": ("with", chat, TO_ANTHROPIC_BODY),
            "OpenAI client -> Anthropic, SSE": ("with", chat, TO_ANTHROPIC_BODY | stream),
            "Anthropic client -> OpenAI, JSON": ("with", messages, TO_OPENAI_BODY),
            "Anthropic client -> OpenAI, SSE": ("with", messages, TO_OPENAI_BODY | stream),
        }
        samples: dict[str, list[float]] = {case: [] for case in cases}
        for envoy, path, body in cases.values():  # warm-up
            for _ in range(10):
                clients[envoy].post(path, body)
        rounds = 10
        for _ in range(rounds):
            for case, (envoy, path, body) in cases.items():
                for _ in range(args.requests // rounds):
                    samples[case].append(clients[envoy].post(path, body))
        print(f"{args.requests} sequential requests per case, one keep-alive connection:")
        for case, values in samples.items():
            print(f"  {case:45s} {summary(values)}")
        url = f"{envoys['with'].admin_url}/stats?filter=ext_proc.translate.streams_started"
        with urllib.request.urlopen(url, timeout=5) as response:
            print("\ntranslation filter, " + response.read().decode().strip())
    finally:
        for envoy in envoys.values():
            envoy.stop()
        server.stop()
        for upstream in upstreams.values():
            upstream.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    print("\nPython cost per call (best of 3):")
    chat_request = {
        "model": "m",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Order me a coffee."},
        ],
    }
    message = anthropic_message("claude")
    completion = openai_completion("gpt")
    events = anthropic_stream("claude")
    chunks = openai_stream("gpt", include_usage=True)

    to_anthropic = translator_for(WireAPI.OPENAI, WireAPI.ANTHROPIC)
    to_openai = translator_for(WireAPI.ANTHROPIC, WireAPI.OPENAI)
    assert to_anthropic is not None and to_openai is not None
    _, usage_context = to_anthropic.request(
        {**chat_request, "stream": True, "stream_options": {"include_usage": True}}, COMMON_DIALECT
    )
    _, openai_context = to_openai.request(ANTHROPIC_BODY, COMMON_DIALECT)

    def anthropic_events() -> None:
        translator = to_anthropic.stream(usage_context, created=0)
        translator.feed(events)
        translator.finish()

    def openai_chunks() -> None:
        translator = to_openai.stream(openai_context, created=0)
        translator.feed(chunks)
        translator.finish()

    costs = {
        "OpenAI request -> Anthropic request": per_call_us(
            lambda: to_anthropic.request(chat_request, COMMON_DIALECT)
        ),
        "Anthropic message -> chat.completion": per_call_us(
            lambda: to_anthropic.response(message, usage_context, created=0)
        ),
        "chat.completion -> Anthropic message": per_call_us(
            lambda: to_openai.response(completion, openai_context, created=0)
        ),
        "Anthropic SSE -> chunks, per event": per_call_us(anthropic_events, 500)
        / events.count(b"\n\n"),
        "OpenAI chunks -> Anthropic SSE, per chunk": per_call_us(openai_chunks, 500)
        / chunks.count(b"\n\n"),
    }
    for name, us in costs.items():
        print(f"  {name:45s} {us:6.1f} us")


if __name__ == "__main__":
    main()
