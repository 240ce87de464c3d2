"""What metrics, tracing and affinity add to a routed request's ext_proc CPU time.

    python -m bench.instrumentation_cost [--number 20000] [--repeat 7]

Times ``RoutingProcessor`` handling the two messages of one routed request
(request headers, then a small chat body), in-process and without gRPC, so only
the processor's own work is measured. Each case runs in a fresh interpreter:

- ``bare``: the telemetry calls replaced by no-ops (the code before metrics);
- ``metrics``: as shipped, tracing off, metrics in this process's memory;
- ``metrics, multiprocess``: as ``archway serve`` runs it, every increment
  written to the ``PROMETHEUS_MULTIPROC_DIR`` files;
- ``open model``: the same request with no model (the default serves it);
- ``affinity``: that open-model request with an ``X-Model-Affinity`` key, pinned;
- ``tracing``: an SDK tracer whose spans go nowhere (the cost of making them).

Whole requests vary by several microseconds between runs on a shared machine,
more than metrics cost; so each case also times its telemetry calls alone
(``RequestTelemetry.started`` + ``routed`` on a ready plan): that is the
figure to read. Prints the best of ``repeat`` runs, per request, in microseconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

_CASE_ENV = "ARCHWAY_BENCH_CASE"


def _measure(case: str, number: int, repeat: int) -> tuple[float, float]:
    import asyncio
    import timeit

    from ext_proc.routing.resolve import build_routing_table
    from ext_proc.server.routing_stream import RoutingProcessor
    from ext_proc.telemetry import observe, tracing
    from tests.factories import config, provider
    from tests.metrics_worker import chat_messages

    if case == "bare":
        for name in ("started", "routed", "answered", "failed"):
            setattr(observe.RequestTelemetry, name, lambda *args, **kwargs: None)
    if case == "metrics, multiprocess":
        from ext_proc.telemetry.metrics import use_multiprocess_dir

        use_multiprocess_dir()
    if case == "tracing":
        from opentelemetry.sdk.trace import TracerProvider

        tracing.install_tracer_provider(TracerProvider())
    table = build_routing_table(
        config(provider("openai/gpt-5", default=True), provider("anthropic/claude-sonnet-4-5"))
    )
    messages = chat_messages(None if case in ("open model", "affinity") else "openai/gpt-5")
    if case == "affinity":
        header = messages[0].request_headers.headers.headers.add()
        header.key, header.raw_value = "x-model-affinity", b"conversation-1"
    loop = asyncio.new_event_loop()

    async def one_request() -> None:
        processor = RoutingProcessor(table)
        for message in messages:
            await processor.handle(message)

    def run() -> None:
        loop.run_until_complete(one_request())

    run()  # first use creates the recorder and its series
    whole = min(timeit.repeat(run, number=number, repeat=repeat)) / number * 1e6

    from ext_proc.apis import Endpoint
    from ext_proc.routing.body import parse_request
    from ext_proc.routing.decide import decide, look
    from ext_proc.routing.plan import plan_request
    from ext_proc.server.messages import header_map

    headers = header_map(messages[0].request_headers)
    parsed = parse_request(headers, messages[1].request_body.body)
    decision = decide(table, look(table, parsed.data, headers))
    plan = plan_request(decision, parsed, Endpoint.CHAT_COMPLETIONS, headers)

    def telemetry() -> None:
        reported = observe.RequestTelemetry()
        reported.started(headers, None, "/v1/chat/completions")
        reported.routed(table, plan, "pinned" if case == "affinity" else None)

    alone = min(timeit.repeat(telemetry, number=number, repeat=repeat)) / number * 1e6
    return whole, alone


CASES = ("bare", "metrics", "metrics, multiprocess", "open model", "affinity", "tracing")


def main() -> None:
    case = os.environ.get(_CASE_ENV)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    if case is not None:
        print(json.dumps(_measure(case, args.number, args.repeat)))
        return
    results: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for each in CASES:
            env = {**os.environ, _CASE_ENV: each}
            env.pop("PROMETHEUS_MULTIPROC_DIR", None)
            if each == "metrics, multiprocess":
                env["PROMETHEUS_MULTIPROC_DIR"] = scratch
            out = subprocess.run(
                [sys.executable, "-m", "bench.instrumentation_cost", *sys.argv[1:]],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            whole, alone = json.loads(out.stdout)
            results[each] = (whole, alone)
    print(f"{'case':24} {'whole request':>14} {'telemetry calls':>16}")
    for each, (whole, alone) in results.items():
        print(f"{each:24} {whole:11.1f} us {alone:13.2f} us")


if __name__ == "__main__":
    main()
