#!/usr/bin/env python3
"""Python's CPU per ext_proc phase, in process, without sockets.

    PYTHONPATH=. python bench/phase_cost.py [--iterations 2000] [--repeat 5]
        [--sizes 2,100,1024] [--transport-streams 20000] [--no-transport]

Builds the ``ProcessingRequest`` bytes Envoy sends for one routed chat request
(gateway_bench's alias-routing config and body) and times each step the
server takes on them: protobuf parse (``FromString``), the stream processor's
``handle`` (the same ``ExternalProcessor`` and ``RoutingTable`` the service
builds from the config), and the answer's ``SerializeToString``. Then the
steps inside the body's ``handle`` (parse the JSON, look, decide, plan, build
the answer), the one-message variant's request (a ``request_body`` carrying
``attributes`` for path, method and a few headers, as Envoy sends with
``request_attributes``), the translation stream (response headers and a
buffered body, both directions) and a failover retry's attempt stream.
Bodies of 2 KB, 100 KB and 1 MB (``--sizes``, in KiB).

Figures are CPU time (``time.process_time_ns``) per call, over
``--iterations`` calls, best of ``--repeat`` runs: on a shared machine the
least disturbed run is the closest to the code's own cost. The transport's
own per-stream cost (two messages each way, as a routed request makes) comes
from ``bench/transport_bench.py``'s server in a child process over TCP
loopback, kernel included; it is the only figure here with a socket.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue  # noqa: E402
from envoy.service.ext_proc.v3.external_processor_pb2 import (  # noqa: E402
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
    ProcessingResponse,
)
from google.protobuf.struct_pb2 import Struct  # noqa: E402

from bench.gateway_bench import ALIAS, chat_body, free_port  # noqa: E402
from ext_proc.config import load_config  # noqa: E402
from ext_proc.headers import CLIENT_PATH_HEADER, FALLBACK_CHAIN  # noqa: E402
from ext_proc.routing.body import parse_request  # noqa: E402
from ext_proc.routing.decide import decide, look  # noqa: E402
from ext_proc.routing.endpoints import classify  # noqa: E402
from ext_proc.routing.plan import plan_request  # noqa: E402
from ext_proc.routing.resolve import build_routing_table  # noqa: E402
from ext_proc.server import messages, routing_stream  # noqa: E402
from ext_proc.server.allocator import keep_large_buffers  # noqa: E402
from ext_proc.server.attempt import ATTEMPT_HEADER  # noqa: E402
from ext_proc.server.processor import StreamRole  # noqa: E402
from ext_proc.server.service import ExternalProcessor, _message_limit  # noqa: E402
from ext_proc.telemetry.observe import RequestTelemetry  # noqa: E402
from tests.fake_providers import anthropic_message, openai_completion  # noqa: E402

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
"""The key Envoy files a filter's ``request_attributes`` under in ``attributes``."""

CONFIG = """
version: v0.4.0
listeners:
  - type: model
    name: egress_traffic
    address: 127.0.0.1
    port: {listener}
    timeout: 30s
model_providers:
  - model: openai/gpt-5.2
    base_url: http://127.0.0.1:{upstream}/v1
    access_key: sk-bench-provider
    default: true
  - model: anthropic/claude-sonnet-4-5
    base_url: http://127.0.0.1:{upstream}
    access_key: sk-bench-anthropic
  - model: mistral/mistral-large
    base_url: http://127.0.0.1:{upstream}/v1
    access_key: sk-bench-mistral
    fallbacks: [openai/gpt-5.2]
model_aliases:
  {alias}:
    target: gpt-5.2
archway:
  admin_port: {admin}
  ext_proc_port: {ext_proc}
"""


# --- the messages Envoy sends ---------------------------------------------------------


def _header_map(pairs: list[tuple[str, str]]) -> HeaderMap:
    return HeaderMap(headers=[HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])


def client_headers(body: bytes, path: str = "/v1/chat/completions") -> list[tuple[str, str]]:
    """What Envoy's HCM hands the routing filter for wrk's request (bench/chat.lua)."""
    return [
        (":authority", "127.0.0.1:10000"),
        (":path", path),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-type", "application/json"),
        ("authorization", "Bearer sk-bench-" + "0" * 48),
        ("content-length", str(len(body))),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6d8b5d0e-8f3c-4b7e-9a51-0c6f1f1d2b3a"),
    ]


def request_headers_message(headers: list[tuple[str, str]]) -> bytes:
    return ProcessingRequest(
        request_headers=HttpHeaders(headers=_header_map(headers), end_of_stream=False)
    ).SerializeToString()


def request_body_message(body: bytes) -> bytes:
    return ProcessingRequest(
        request_body=HttpBody(body=body, end_of_stream=True)
    ).SerializeToString()


def one_message(body: bytes, headers: list[tuple[str, str]]) -> bytes:
    """The one-message design's request: headers SKIPped, the body BUFFERED, and
    what routing needs of the headers as ``request_attributes``."""
    attributes = Struct()
    wanted = {"content-type", "authorization", "anthropic-version", "x-api-key"}
    fields: dict[str, Any] = {
        "request.path": dict(headers)[":path"],
        "request.method": dict(headers)[":method"],
    }
    for name, value in headers:
        if name in wanted:
            fields[f"request.headers['{name}']"] = value
    attributes.update(fields)
    request = ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True))
    request.attributes[EXT_PROC_FILTER].CopyFrom(attributes)
    return request.SerializeToString()


def response_headers_message(pairs: list[tuple[str, str]]) -> bytes:
    return ProcessingRequest(
        response_headers=HttpHeaders(headers=_header_map(pairs), end_of_stream=False)
    ).SerializeToString()


def response_body_message(body: bytes) -> bytes:
    return ProcessingRequest(
        response_body=HttpBody(body=body, end_of_stream=True)
    ).SerializeToString()


# --- timing -------------------------------------------------------------------------


def run_now(coroutine: Coroutine[Any, Any, ProcessingResponse]) -> ProcessingResponse:
    """Run a handler that never suspends, as the transport's eager tasks do."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        result: ProcessingResponse = done.value
        return result
    coroutine.close()
    raise RuntimeError("the handler suspended: this config must not await anything")


def best_us(step: Callable[[int], object], iterations: int, repeat: int) -> float:
    """CPU microseconds per call of ``step(i)``, best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time_ns()
        for i in range(iterations):
            step(i)
        best = min(best, (time.process_time_ns() - start) / iterations / 1000)
    return best


class Phases:
    """The routing table and servicer the service builds, and the steps to time."""

    def __init__(self, config_path: Path, iterations: int, repeat: int) -> None:
        config = load_config(config_path)
        # As serve_forever does: big bodies' buffers stay in the heap, not mmap'd afresh.
        keep_large_buffers(2 * _message_limit(config))
        self.table = build_routing_table(config)
        self.servicer = ExternalProcessor(self.table)
        self.iterations = iterations
        self.repeat = repeat
        self.rows: list[tuple[str, str, float]] = []

    def time(self, group: str, label: str, step: Callable[[int], object], n: int = 0) -> float:
        us = best_us(step, n or self.iterations, self.repeat)
        self.rows.append((group, label, us))
        return us

    def processor(self, role: StreamRole = StreamRole.ROUTING, metadata: tuple[()] = ()) -> Any:
        return self.servicer.processor(role, metadata)

    def prepared(self, role: StreamRole, first: bytes | None, n: int) -> list[Any]:
        """``n`` fresh processors, each already past ``first`` (untimed)."""
        out = []
        for _ in range(n):
            p = self.processor(role)
            if first is not None:
                run_now(p.handle(ProcessingRequest.FromString(first)))
            out.append(p)
        return out

    def routing(self, size_kb: int) -> None:
        group = f"routing, {size_kb} KB body"
        n = self.iterations if size_kb <= 2 else max(50, self.iterations * 2 // size_kb)
        body = chat_body(size_kb * 1024)
        headers = client_headers(body)
        head_bytes, body_bytes = request_headers_message(headers), request_body_message(body)
        head_msg = ProcessingRequest.FromString(head_bytes)
        body_msg = ProcessingRequest.FromString(body_bytes)
        answer = run_now(self.prepared(StreamRole.ROUTING, head_bytes, 1)[0].handle(body_msg))
        if answer.WhichOneof("response") != "request_body":
            raise RuntimeError(f"the request was not routed: {answer}")
        head_answer = run_now(self.processor().handle(head_msg))
        if size_kb <= 2:
            self.time(
                group, "stream start (processor for a new stream)", lambda i: self.processor()
            )
            self.time(
                group,
                "headers: FromString",
                lambda i: ProcessingRequest.FromString(head_bytes),
            )
            ps = self.prepared(StreamRole.ROUTING, None, n)
            self.time(group, "headers: handle", lambda i: run_now(ps[i].handle(head_msg)), n)
            self.time(
                group, "headers: SerializeToString", lambda i: head_answer.SerializeToString()
            )
        self.time(group, "body: FromString", lambda i: ProcessingRequest.FromString(body_bytes), n)
        ps = self.prepared(StreamRole.ROUTING, head_bytes, n)
        self.time(group, "body: handle", lambda i: run_now(ps[i].handle(body_msg)), n)
        self.time(group, "body: SerializeToString", lambda i: answer.SerializeToString(), n)

        def whole(i: int) -> None:
            stream = self.servicer.new_stream(())
            run_now(stream.handle(head_bytes))
            run_now(stream.handle(body_bytes))

        self.time(group, "= both messages, bytes in to bytes out", whole, n)
        one = one_message(body, headers)
        self.time(
            group, "one-message request: FromString", lambda i: ProcessingRequest.FromString(one), n
        )
        self.rows.append(
            (group, "  (its size vs the body message, bytes)", len(one) - len(body_bytes))
        )
        one_msg = ProcessingRequest.FromString(one)
        routed = run_now(self.processor().handle(one_msg))
        if routed.WhichOneof("response") != "request_body" or not routed.HasField(
            "dynamic_metadata"
        ):
            raise RuntimeError(f"the one-message request was not routed: {routed}")
        ps = self.prepared(StreamRole.ROUTING, None, n)
        self.time(group, "one-message request: handle", lambda i: run_now(ps[i].handle(one_msg)), n)
        self.time(
            group,
            "one-message answer: SerializeToString",
            lambda i: routed.SerializeToString(),
            n,
        )

        def single(i: int) -> None:
            run_now(self.servicer.new_stream(()).handle(one))

        self.time(group, "= one message, bytes in to bytes out", single, n)
        self._body_steps(group, body, headers, n)

    def _body_steps(self, group: str, body: bytes, pairs: list[tuple[str, str]], n: int) -> None:
        """The body's ``handle``, step by step (the pure functions it calls)."""
        headers = dict(pairs)
        table = self.table
        endpoint = classify("POST", headers[":path"])
        parsed = parse_request(headers, body, endpoint.api)
        seen = look(table, parsed.fields, headers)
        decision = decide(table, seen, None)
        plan = plan_request(decision, parsed, endpoint, headers, table.config.providers)
        label = "  body: handle, step "
        self.time(
            group,
            label + "parse_request (JSON)",
            lambda i: parse_request(headers, body, endpoint.api),
            n,
        )
        self.time(group, label + "look", lambda i: look(table, parsed.fields, headers), n)
        self.time(group, label + "decide", lambda i: decide(table, seen, None), n)
        self.time(
            group,
            label + "plan_request",
            lambda i: plan_request(decision, parsed, endpoint, headers, table.config.providers),
            n,
        )
        self.time(
            group,
            label + "messages.body_response",
            lambda i: messages.body_response(plan.set_headers, plan.remove_headers, plan.body),
            n,
        )
        msg = ProcessingRequest.FromString(request_headers_message(pairs)).request_headers
        self.time(
            group, "  headers: handle, step header_map", lambda i: messages.header_map(msg), n
        )
        # Alone, a step runs with warm caches; inside handle it does not. So each
        # step is also read in context: handle, minus handle with that step
        # answering its precomputed result at once.
        answer = messages.body_response(plan.set_headers, plan.remove_headers, plan.body)
        replaced: dict[str, tuple[Any, str, object]] = {
            "parse_request": (routing_stream, "parse_request", parsed),
            "look": (routing_stream, "look", seen),
            "decide": (routing_stream, "decide", decision),
            "plan_request": (routing_stream, "plan_request", plan),
            "messages.body_response": (messages, "body_response", answer),
            "telemetry.routed": (RequestTelemetry, "routed", None),
        }
        head = request_headers_message(pairs)
        body_msg = ProcessingRequest.FromString(request_body_message(body))
        for name, (owner, attr, result) in replaced.items():
            # Measured back to back with the whole handle, so a burst of load
            # elsewhere on the machine shifts both alike.
            whole = self._handle_in_context(head, body_msg, n)
            with mock.patch.object(owner, attr, lambda *a, _r=result, **k: _r):
                without = self._handle_in_context(head, body_msg, n)
            self.rows.append((group, f"  body: handle, in context: {name}", whole - without))

    def _handle_in_context(self, head: bytes, body: ProcessingRequest, n: int) -> float:
        """The body's handle per call, each processor dropped once done (as a
        finished stream is), best of ``repeat``."""
        best = float("inf")
        for _ in range(self.repeat):
            ps: list[Any] = self.prepared(StreamRole.ROUTING, head, n)
            gc.collect()
            gc.freeze()
            start = time.process_time_ns()
            for i in range(n):
                p, ps[i] = ps[i], None
                run_now(p.handle(body))
            best = min(best, (time.process_time_ns() - start) / n / 1000)
            gc.unfreeze()
        return best

    def translation(self) -> None:
        for model, path, upstream in (
            ("anthropic/claude-sonnet-4-5", "/v1/chat/completions", anthropic_message),
            ("openai/gpt-5.2", "/v1/messages", openai_completion),
        ):
            self._translation(model, path, upstream)

    def _translation(self, model: str, path: str, upstream: Callable[[str], Any]) -> None:
        request: dict[str, Any] = {
            "model": model,
            "max_tokens": 256,
            "messages": [{"role": "user", "content": "Plan three days in Lisbon."}],
        }
        body = json.dumps(request).encode()
        head = request_headers_message(client_headers(body, path))
        routed = run_now(
            self.prepared(StreamRole.ROUTING, head, 1)[0].handle(
                ProcessingRequest.FromString(request_body_message(body))
            )
        )
        sets = {
            o.header.key: o.header.raw_value.decode()
            for o in routed.request_body.response.header_mutation.set_headers
        }
        translate = sets.get("x-archway-translate")
        if translate is None:
            raise RuntimeError(f"{path} -> {model} was not translated: {sets}")
        group = f"translation stream, {translate.split(';')[0]}"
        answer = json.dumps(upstream(model.split("/", 1)[1])).encode()
        rh = response_headers_message(
            [
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", str(len(answer))),
                ("x-archway-translate", translate),
            ]
        )
        rb = response_body_message(answer)
        rh_msg, rb_msg = ProcessingRequest.FromString(rh), ProcessingRequest.FromString(rb)
        n = self.iterations
        ps = self.prepared(StreamRole.TRANSLATION, None, n)
        self.time(group, "response headers: handle", lambda i: run_now(ps[i].handle(rh_msg)))
        ps = self.prepared(StreamRole.TRANSLATION, rh, n)
        self.time(group, "response body: FromString", lambda i: ProcessingRequest.FromString(rb))
        self.time(group, "response body: handle", lambda i: run_now(ps[i].handle(rb_msg)))

        def whole(i: int) -> None:
            stream = self.servicer.new_stream(((b"x-archway-phase", b"translation"),))
            run_now(stream.handle(rh))
            run_now(stream.handle(rb))

        self.time(group, "= both messages, bytes in to bytes out", whole)

    def attempt(self) -> None:
        group = "failover attempt stream (retry 2 of mistral -> gpt-5.2)"
        body = chat_body(2048).replace(f'"{ALIAS}"'.encode(), b'"mistral/mistral-large"', 1)
        pairs = [
            *client_headers(body),
            (FALLBACK_CHAIN, "mistral/mistral-large openai/gpt-5.2"),
            (ATTEMPT_HEADER, "2"),
            (CLIENT_PATH_HEADER, "/v1/chat/completions"),
        ]
        first = [*pairs[:-2], (ATTEMPT_HEADER, "1"), pairs[-1]]
        head, first_head = request_headers_message(pairs), request_headers_message(first)
        rb = request_body_message(body)
        rh = response_headers_message([(":status", "200"), ("content-type", "application/json")])
        msgs = [ProcessingRequest.FromString(m) for m in (first_head, head, rb, rh)]
        n = self.iterations
        ps = self.prepared(StreamRole.ATTEMPT, None, n)
        self.time(group, "first attempt headers: handle", lambda i: run_now(ps[i].handle(msgs[0])))
        ps = self.prepared(StreamRole.ATTEMPT, None, n)
        self.time(group, "retry headers: handle", lambda i: run_now(ps[i].handle(msgs[1])))
        ps = self.prepared(StreamRole.ATTEMPT, head, n)
        self.time(group, "retry body: handle", lambda i: run_now(ps[i].handle(msgs[2])))
        ps = self.prepared(StreamRole.ATTEMPT, head, n)
        self.time(group, "retry response headers: handle", lambda i: run_now(ps[i].handle(msgs[3])))


def transport_rows(streams: int, repeat: int) -> list[tuple[str, str, float]]:
    """The transport's CPU per stream (two small messages each way), server side."""
    from bench import transport_bench

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for inflight in (1, 16):
            runs = [transport_bench._run("tcp", streams, inflight, workdir) for _ in range(repeat)]
            rows.append(
                (
                    "transport (h2 + gRPC framing, TCP loopback, kernel included)",
                    f"per stream, {inflight} in flight on one connection",
                    min(r[0] for r in runs),
                )
            )
    return rows


def write_config(directory: Path) -> Path:
    path = directory / "phase-cost.yaml"
    path.write_text(
        CONFIG.format(
            listener=free_port(),
            upstream=free_port(),
            alias=ALIAS,
            admin=free_port(),
            ext_proc=free_port(),
        )
    )
    return path


def print_rows(rows: list[tuple[str, str, float]]) -> None:
    group = None
    for g, label, us in rows:
        if g != group:
            print(f"\n{g}")
            group = g
        value = f"{us:>9.0f} B " if "bytes)" in label else f"{us:>9.1f} us"
        print(f"  {label:<58}{value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sizes", default="2,100,1024", help="body sizes in KiB (2,100,1024)")
    parser.add_argument("--transport-streams", type=int, default=20_000)
    parser.add_argument("--no-transport", action="store_true", help="skip the socket figure")
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(
        f"python {platform.python_version()}, load average {' '.join(load)}; CPU per call, "
        f"best of {args.repeat} runs of {args.iterations} calls (fewer for big bodies)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        phases = Phases(write_config(Path(tmp)), args.iterations, args.repeat)
        for size in (int(s) for s in args.sizes.split(",")):
            phases.routing(size)
        phases.translation()
        phases.attempt()
    rows = phases.rows
    if not args.no_transport:
        rows += transport_rows(args.transport_streams, args.repeat)
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps({"loadavg": load, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
