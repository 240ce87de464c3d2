#!/usr/bin/env python3
"""Side by side: plain Envoy, Envoy + Archway, and (optionally) LiteLLM's proxy.

    python bench/gateway_bench.py [--duration 8] [--rounds 3] [--workers 1,2]
                                  [--hops tcp,uds] [--soak 100000] [--with-litellm]
                                  [--json out.json] [--features usage,keys,limits,redis]

Every setup serves the same 2 KB chat body from the same fast OpenAI-shaped
upstream (``bench/upstream.py``, its own process):

- ``envoy``: Envoy with one static route to the upstream, no ext_proc;
- ``archway``: ``archway up`` on an alias-routing config (the client asks for
  ``fast-model``, Archway rewrites it to ``gpt-5.2``), one setup per ``--workers``;
- ``archway-<feature>`` (``--features``): the ``archway`` setup with one more
  feature of docs/usage-and-limits.md configured, to read what each adds per
  request: ``usage`` (every answer's tokens counted: the response passes through
  Archway), ``keys`` (the client's key checked), ``limits`` (the key's client
  under a token limit never reached: estimate, admission, usage settled),
  ``redis`` (the same limit, its counter in a local ``redis-server``), and
  ``two-messages`` (``archway.ext_proc_messages: two``: headers, then body, as
  before the one-message default).
- ``hop-tcp``, ``hop-uds`` (``--hops``): ``archway serve`` in one process behind
  an Envoy with one worker thread, the ext_proc hop on TCP loopback or a Unix
  socket (the sidecar setups' default);
- ``litellm``: LiteLLM's proxy, one worker, installed into ``bench/.venv-litellm``.

``wrk`` drives each at 1 and 16 connections. Passes alternate between the
setups, round after round, so a neighbour's burst of CPU hits all of them
alike; the figures are medians over rounds and the ratios come from the same
run. CPU per request is read from ``/proc/<pid>/stat`` (utime + stime) before
and after each pass, so it is the least noisy figure on a shared machine.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))

from ext_proc.config import load_config  # noqa: E402
from ext_proc.deploy.bootstrap import bootstrap_dict, render_bootstrap  # noqa: E402
from ext_proc.deploy.envoy_process import EnvoyProcess, find_envoy_binary  # noqa: E402
from ext_proc.server.service import GRPC_SERVER_ENV  # noqa: E402

CLIENT_KEY = "sk-bench-" + secrets.token_hex(24)
"""The clients' bearer token; LiteLLM's proxy refuses to start without a master key."""
LITELLM_VENV = BENCH / ".venv-litellm"
# Pinned so runs compare: 1.108, as the issue measured (1.108.13 and 1.108.14
# ask for a litellm-proxy-extras version that PyPI did not serve when tried).
LITELLM_REQUIREMENT = "litellm[proxy]==1.108.0"
BODY_BYTES = 2048
ALIAS = "fast-model"
_CLK_TCK = os.sysconf("SC_CLK_TCK")

FEATURES = ("usage", "keys", "limits", "redis", "two-messages")
"""``--features``: what docs/usage-and-limits.md's configuration adds, one setup each."""

_T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

TARGETS = {
    # Issue 16's targets.
    "throughput_ratio_c16": 0.4,
    "added_p50_ms_c1": 0.5,
    "ext_proc_cpu_ms_c16": 0.15,
    "rss_mb_per_worker": 80.0,
    "litellm_throughput_x": 20.0,
}
ADDED_P50_MS_BY_BODY_KB = ((1024, 3.0), (100, 1.0))
"""Issue 16: the added p50 allowed for large bodies (at least this many KiB)."""


def added_p50_goal(body_kb: int) -> float:
    for kb, goal in ADDED_P50_MS_BY_BODY_KB:
        if body_kb >= kb:
            return goal
    return TARGETS["added_p50_ms_c1"]


# --- /proc -------------------------------------------------------------------------


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, kernel) CPU seconds of a whole process (all its threads); zeros
    once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0, 0.0
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) / _CLK_TCK, int(fields[12]) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of a whole process (all its threads), in seconds."""
    return sum(cpu_split(pid))


def rss_mb(pid: int) -> float:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{parent}/task").iterdir():
                kids = [int(k) for k in (task / "children").read_text().split()]
                out.extend(kids)
                todo.extend(kids)
    return out


# --- small helpers -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def chat_body(size: int = BODY_BYTES) -> bytes:
    """An OpenAI chat body of exactly ``size`` bytes asking for the alias: a
    coding agent's conversation (turns of code and prose), padded in the last
    user turn. 2 KB by default."""
    payload: dict[str, Any] = {
        "model": ALIAS,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a travel agency."},
            {"role": "user", "content": "Plan three days in Lisbon in late spring."},
            {"role": "assistant", "content": "Day 1: Alfama and the castle. Day 2: Belém."},
            {"role": "user", "content": ""},
        ],
        "temperature": 0.2,
        "max_tokens": 256,
        "stream": False,
    }
    turn = (
        "Here is the failing function:\n```python\ndef total(xs: list[float]) -> float:\n"
        '    """Sum, skipping None."""\n    return sum(x for x in xs if x is not None)\n```\n'
        "The test says `TypeError: unsupported operand` on line 3. Why? "
    )
    while size > BODY_BYTES and len(json.dumps(payload).encode()) + 2 * len(turn) + 200 < size:
        payload["messages"][-1:-1] = [
            {"role": "user", "content": turn},
            {"role": "assistant", "content": turn[::-1]},
        ]
    empty = len(json.dumps(payload).encode())
    filler = "Add restaurants near each stop, with prices and opening hours. "
    payload["messages"][-1]["content"] = (filler * 40)[: size - empty]
    body = json.dumps(payload).encode()
    assert len(body) == size, len(body)
    return body


def wait_for(what: str, check: Callable[[], bool], timeout_s: float, proc: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.1)
    raise RuntimeError(f"{what} was not ready after {timeout_s:.0f}s")


def post(url: str, body: bytes, timeout_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {CLIENT_KEY}"}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)


# --- the setups ----------------------------------------------------------------------


@dataclass
class Setup:
    name: str
    url: str
    envoy_pids: Callable[[], list[int]]
    proxy_pids: Callable[[], list[int]]
    """The Python side: Archway's ext_proc processes, or LiteLLM's."""
    workers: int = 0
    admin_url: str | None = None
    reload: Callable[[int], None] | None = None
    """Reloads the config (``archway up`` on SIGHUP); the argument makes the
    n-th reload's config differ from the last one's."""
    log: Path | None = None


@dataclass
class Bench:
    """Owns every process the run starts and stops them all, whatever happens."""

    tmp: Path
    cleanups: list[Callable[[], object]] = field(default_factory=list)

    def close(self) -> None:
        for cleanup in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                cleanup()

    def start_upstream(self) -> int:
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, str(BENCH / "upstream.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
        )
        self.cleanups.append(lambda: stop_process(proc))
        wait_for("upstream", lambda: _connects(port), 10, proc)
        return port

    def write_config(self, upstream_port: int, name: str, feature: str | None = None) -> Path:
        """An alias-routing Archway config for the upstream, on free ports, with
        ``feature`` (see ``FEATURES``) configured."""
        text = f"""
version: v0.4.0
listeners:
  - type: model
    name: egress_traffic
    address: 127.0.0.1
    port: {free_port()}
    timeout: 30s
model_providers:
  - model: openai/gpt-5.2
    base_url: http://127.0.0.1:{upstream_port}/v1
    access_key: sk-bench-provider
    default: true
model_aliases:
  {ALIAS}:
    target: gpt-5.2
archway:
  admin_port: {free_port()}
  ext_proc_port: {free_port()}
"""
        if feature is not None:
            text += self.feature_config(feature)
        path = self.tmp / f"{name}.yaml"
        path.write_text(text)
        return path

    def feature_config(self, feature: str) -> str:
        """The ``archway:`` keys that turn ``feature`` on."""
        digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
        client = f"  clients:\n    - name: bench\n      key_sha256: {digest}\n"
        never_reached = "      limit: {tokens: 1000000000000, unit: hour}\n"
        if feature == "usage":
            return "  usage: true\n"
        if feature == "two-messages":
            return "  ext_proc_messages: two\n"
        if feature == "keys":
            return client
        if feature == "limits":
            return client + never_reached
        if feature == "redis":
            return client + never_reached + f"  redis: {self.start_redis()}\n"
        raise ValueError(f"unknown feature {feature!r}; known: {', '.join(FEATURES)}")

    def start_redis(self) -> str:
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
        )
        self.cleanups.append(lambda: stop_process(proc))
        wait_for("redis-server", lambda: _connects(port), 10, proc)
        return f"redis://127.0.0.1:{port}/0"

    def start_plain_envoy(self, config_path: Path, concurrency: int) -> Setup:
        """Envoy with a static route to the upstream: no ext_proc, no access log."""
        config = load_config(config_path)
        listener = config.listeners[0]
        data = bootstrap_dict(config, admin_port=0)
        clusters = data["static_resources"]["clusters"]
        (upstream,) = [c for c in clusters if c["name"] != "archway_ext_proc"]
        hcm = {
            "@type": (
                "type.googleapis.com/envoy.extensions.filters.network."
                "http_connection_manager.v3.HttpConnectionManager"
            ),
            "stat_prefix": "plain",
            "codec_type": "AUTO",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "llm",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "route": {"cluster": upstream["name"], "auto_host_rewrite": True},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _T_ROUTER},
                }
            ],
        }
        port = free_port()
        bootstrap = {
            "admin": data["admin"],
            "static_resources": {
                "listeners": [
                    {
                        "name": "plain",
                        "address": {
                            "socket_address": {"address": listener.address, "port_value": port}
                        },
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
                "clusters": [upstream],
            },
        }
        envoy = EnvoyProcess(output=str(self.tmp / "plain-envoy.log"))
        self.cleanups.append(envoy.stop)
        envoy.start(json.dumps(bootstrap), concurrency=concurrency)
        envoy.wait_ready(30)
        pid = envoy.pid
        assert pid is not None
        return Setup(
            name="envoy",
            url=f"http://127.0.0.1:{port}/v1/chat/completions",
            envoy_pids=lambda: [pid],
            proxy_pids=lambda: [],
            admin_url=envoy.admin_url,
        )

    def start_archway(
        self,
        config_path: Path,
        workers: int | None,
        *,
        transport: str = "h2",
        feature: str | None = None,
    ) -> Setup:
        """``archway up`` as a user runs it, its output (Envoy's access log) in a file."""
        config = load_config(config_path)
        log_path = self.tmp / f"{config_path.stem}.log"
        # Metrics on, as users run it, on a free port: setups run side by side.
        command = [
            sys.executable,
            "-m",
            "ext_proc.cli",
            "up",
            str(config_path),
            "--metrics-port",
            "0",
        ]
        if workers is not None:
            command += ["--workers", str(workers)]
        env = {**os.environ, GRPC_SERVER_ENV: transport}
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=env,
                start_new_session=True,
            )
        self.cleanups.append(lambda: stop_process(proc, 20))
        wait_for(
            f"archway up ({config_path.stem})",
            lambda: "Ctrl-C" in log_path.read_text(errors="replace"),
            120,
            proc,
        )
        root = proc.pid

        def envoy_pids() -> list[int]:
            return [p for p in descendants(root) if comm(p) == "envoy"]

        def proxy_pids() -> list[int]:
            return [root] + [p for p in descendants(root) if comm(p) != "envoy"]

        listener = config.listeners[0]
        name = "archway" if workers is None else f"archway-w{workers}"
        if transport != "h2":
            name += f"-{transport}"
        if feature is not None:
            name += f"-{feature}"
        original = config_path.read_text()

        def reload(n: int) -> None:
            # Every other reload adds an alias, so the routing table really changes.
            extra = f"  bench-reload-{n}:\n    target: gpt-5.2\n" if n % 2 else ""
            config_path.write_text(original.replace("model_aliases:\n", "model_aliases:\n" + extra))
            os.kill(proc.pid, signal.SIGHUP)

        return Setup(
            name=name,
            url=f"http://127.0.0.1:{listener.port}/v1/chat/completions",
            envoy_pids=envoy_pids,
            proxy_pids=proxy_pids,
            workers=workers or 0,
            admin_url=f"http://127.0.0.1:{config.gateway.admin_port}",
            reload=reload,
            log=log_path,
        )

    def start_hop(self, config_path: Path, hop: str) -> Setup:
        """``archway serve`` (one process) behind its own Envoy (one worker thread),
        as the sidecar setups run them: the hop on TCP loopback or a Unix socket."""
        if hop == "uds":
            socket_path = self.tmp / f"{config_path.stem}.sock"
            with config_path.open("a") as f:
                f.write(f"  ext_proc_uds: {socket_path}\n")
        config = load_config(config_path)
        log_path = self.tmp / f"{config_path.stem}.log"
        command = [sys.executable, "-m", "ext_proc.cli", "serve", str(config_path)]
        command += ["--workers", "1", "--metrics-port", "0"]
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
            )
        self.cleanups.append(lambda: stop_process(proc, 20))
        wait_for(
            f"archway serve ({hop})",
            lambda: "server listening on 127" in log_path.read_text(errors="replace"),
            120,
            proc,
        )
        envoy = EnvoyProcess(output=str(self.tmp / f"{config_path.stem}-envoy.log"))
        self.cleanups.append(envoy.stop)
        envoy.start(render_bootstrap(config), concurrency=1)
        envoy.wait_ready(30)
        envoy_pid, serve_pid = envoy.pid, proc.pid
        assert envoy_pid is not None
        return Setup(
            name=f"hop-{hop}",
            url=f"http://127.0.0.1:{config.listeners[0].port}/v1/chat/completions",
            envoy_pids=lambda: [envoy_pid],
            proxy_pids=lambda: [serve_pid],
            workers=1,
            admin_url=envoy.admin_url,
        )

    def start_litellm(self, upstream_port: int) -> Setup:
        litellm = ensure_litellm()
        config = self.tmp / "litellm.yaml"
        config.write_text(
            f"""
model_list:
  - model_name: {ALIAS}
    litellm_params:
      model: openai/gpt-5.2
      api_base: http://127.0.0.1:{upstream_port}/v1
      api_key: sk-bench-provider
litellm_settings:
  telemetry: false
general_settings:
  master_key: {CLIENT_KEY}
"""
        )
        port = free_port()
        env = {
            **os.environ,
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        }
        log = (self.tmp / "litellm.log").open("wb")
        proc = subprocess.Popen(
            [
                str(litellm),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        self.cleanups.append(lambda: stop_process(proc, 20))
        self.cleanups.append(log.close)
        url = f"http://127.0.0.1:{port}"
        wait_for(
            "litellm",
            lambda: urllib.request.urlopen(url + "/health/liveliness", timeout=2).status == 200,
            180,
            proc,
        )
        root = proc.pid
        return Setup(
            name="litellm",
            url=url + "/v1/chat/completions",
            envoy_pids=lambda: [],
            proxy_pids=lambda: [root, *descendants(root)],
        )


def _connects(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    print(f"installing {LITELLM_REQUIREMENT} into {LITELLM_VENV} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [str(LITELLM_VENV / "bin" / "pip"), "install", "-q", LITELLM_REQUIREMENT], check=True
    )
    return binary


# --- measuring -----------------------------------------------------------------------


@dataclass
class Pass:
    setup: str
    connections: int
    round: int
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    envoy_cpu_ms: float
    """Envoy's CPU per request."""
    proxy_cpu_ms: float
    """The Python side's CPU per request (ext_proc workers, or LiteLLM)."""
    proxy_split: list[float] = field(default_factory=list)
    """The same per process: shows how SO_REUSEPORT spread the work."""


def wrk_command(url: str, connections: int, duration_s: float, body_file: Path) -> list[str]:
    # One wrk thread: wrk's own CPU competes with the setups on a small machine.
    return [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "chat.lua"),
        url,
        "--",
        str(body_file),
        CLIENT_KEY,
    ]


def run_wrk(url: str, connections: int, duration_s: float, body_file: Path) -> dict[str, Any]:
    command = wrk_command(url, connections, duration_s, body_file)
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    result: dict[str, Any] = json.loads(line)
    return result


def measure(
    setup: Setup, connections: int, duration_s: float, body_file: Path, round_: int
) -> Pass:
    envoy, proxy = setup.envoy_pids(), setup.proxy_pids()
    before_e = sum(cpu_seconds(p) for p in envoy)
    before_p = [cpu_seconds(p) for p in proxy]
    result = run_wrk(setup.url, connections, duration_s, body_file)
    envoy_s = sum(cpu_seconds(p) for p in envoy) - before_e
    split = [cpu_seconds(p) - b for p, b in zip(proxy, before_p, strict=True)]
    proxy_s = sum(split)
    requests = int(result["requests"])
    errors = sum(int(v) for v in result["errors"].values())
    per = 1000.0 / max(requests, 1)
    return Pass(
        setup=setup.name,
        connections=connections,
        round=round_,
        requests=requests,
        errors=errors,
        rps=requests / (result["duration_us"] / 1e6),
        p50_ms=result["latency_us"]["p50"] / 1000,
        p99_ms=result["latency_us"]["p99"] / 1000,
        envoy_cpu_ms=envoy_s * per,
        proxy_cpu_ms=proxy_s * per,
        proxy_split=[x * per for x in split],
    )


def reference_setup(setups: Sequence[Setup]) -> Setup:
    """The Archway setup the targets are judged on: archway up's default, one
    worker per core, when it is among them."""
    archways = [
        s
        for s in setups
        if s.name.startswith("archway")
        and "grpcio" not in s.name
        and not s.name.endswith(tuple(f"-{f}" for f in FEATURES))
    ]
    cores = len(os.sched_getaffinity(0))
    return next((s for s in archways if s.workers in (0, cores)), archways[-1])


def check_setup(setup: Setup, body: bytes) -> None:
    """One request through each setup before timing it: a broken setup would
    otherwise show up only as an error count."""
    status, headers, reply = post(setup.url, body)
    if status != 200:
        raise RuntimeError(f"{setup.name}: HTTP {status}: {reply[:300]!r}")
    if setup.name.startswith("archway") and headers.get("x-archway-resolution") != "alias":
        raise RuntimeError(f"{setup.name}: not routed by alias: {headers}")


def rotations(setups: Sequence[Setup], rounds: int) -> Iterator[tuple[int, list[Setup]]]:
    for r in range(rounds):
        k = r % len(setups)
        yield r, [*setups[k:], *setups[:k]]


# --- reporting -----------------------------------------------------------------------


@dataclass
class Summary:
    setup: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    envoy_cpu_ms: float
    proxy_cpu_ms: float
    errors: int


def summarise(passes: list[Pass]) -> list[Summary]:
    keys: dict[tuple[str, int], list[Pass]] = {}
    for p in passes:
        keys.setdefault((p.setup, p.connections), []).append(p)
    out = []
    for (name, conns), group in keys.items():
        out.append(
            Summary(
                setup=name,
                connections=conns,
                rps=statistics.median(p.rps for p in group),
                p50_ms=statistics.median(p.p50_ms for p in group),
                p99_ms=statistics.median(p.p99_ms for p in group),
                envoy_cpu_ms=statistics.median(p.envoy_cpu_ms for p in group),
                proxy_cpu_ms=statistics.median(p.proxy_cpu_ms for p in group),
                errors=sum(p.errors for p in group),
            )
        )
    return out


def print_pass(p: Pass) -> None:
    split = ""
    if len(p.proxy_split) > 1:
        split = " (" + "/".join(f"{x:.3f}" for x in p.proxy_split) + ")"
    print(
        f"  c{p.connections:<3} round {p.round + 1} {p.setup:<12} {p.rps:8.0f} req/s  "
        f"p50 {p.p50_ms:6.2f}  p99 {p.p99_ms:7.2f} ms  "
        f"envoy {p.envoy_cpu_ms:.3f}  python {p.proxy_cpu_ms:.3f}{split} ms/req",
        flush=True,
    )


def print_table(summaries: list[Summary], rss: dict[str, list[float]]) -> None:
    header = (
        f"{'setup':<13} {'conns':>5} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'envoy ms/req':>12} {'python ms/req':>13} {'python RSS MB':>14} {'errors':>6}"
    )
    print(header)
    print("-" * len(header))
    for s in sorted(summaries, key=lambda s: (s.connections, s.setup)):
        mem = "/".join(f"{m:.0f}" for m in rss.get(s.setup, [])) or "-"
        python = f"{s.proxy_cpu_ms:.3f}" if s.setup != "envoy" else "-"
        envoy = f"{s.envoy_cpu_ms:.3f}" if s.setup != "litellm" else "-"
        print(
            f"{s.setup:<13} {s.connections:>5} {s.rps:>8.0f} {s.p50_ms:>7.2f} {s.p99_ms:>7.2f} "
            f"{envoy:>12} {python:>13} {mem:>14} {s.errors:>6}"
        )


def verdicts(
    summaries: list[Summary], rss: dict[str, list[float]], archway: str, body_kb: int = 2
) -> list[tuple[str, str, bool]]:
    by = {(s.setup, s.connections): s for s in summaries}
    out: list[tuple[str, str, bool]] = []

    def get(name: str, conns: int) -> Summary | None:
        return by.get((name, conns))

    a16, e16 = get(archway, 16), get("envoy", 16)
    if a16 and e16:
        ratio = a16.rps / e16.rps
        goal = TARGETS["throughput_ratio_c16"]
        label = f"throughput at c16 vs plain Envoy (>= {goal}x)"
        out.append((label, f"{ratio:.2f}x", ratio >= goal))
        goal = TARGETS["ext_proc_cpu_ms_c16"]
        out.append(
            (
                f"ext_proc CPU per request at c16 (<= {goal} ms)",
                f"{a16.proxy_cpu_ms:.3f} ms",
                a16.proxy_cpu_ms <= goal,
            )
        )
    a1, e1 = get(archway, 1), get("envoy", 1)
    if a1 and e1:
        added = a1.p50_ms - e1.p50_ms
        goal = added_p50_goal(body_kb)
        label = f"added p50 at c1, {body_kb} KiB bodies (<= {goal} ms)"
        out.append((label, f"{added:+.2f} ms", added <= goal))
    if rss.get(archway):
        # With more than one worker the first process is the supervisor.
        workers = rss[archway][1:] if len(rss[archway]) > 1 else rss[archway]
        worst = max(workers)
        goal = TARGETS["rss_mb_per_worker"]
        out.append((f"ext_proc RSS per worker (< {goal:.0f} MB)", f"{worst:.0f} MB", worst < goal))
    for conns in (1, 16):
        a, lite = get(archway, conns), get("litellm", conns)
        if a and lite and lite.rps > 0:
            x = a.rps / lite.rps
            goal = TARGETS["litellm_throughput_x"]
            ok = x >= goal and a.p99_ms < lite.p99_ms
            out.append(
                (
                    f"vs LiteLLM at c{conns} (>= {goal:.0f}x req/s, lower p99)",
                    f"{x:.1f}x, p99 {a.p99_ms:.1f} vs {lite.p99_ms:.1f} ms",
                    ok,
                )
            )
    return out


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    envoy = subprocess.run(
        [find_envoy_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    import grpc

    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "envoy": envoy.rsplit(" ", 1)[-1] if envoy else "",
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
    }


# --- soak: memory over many requests -------------------------------------------------


def envoy_requests(admin_url: str) -> int:
    with urllib.request.urlopen(admin_url + "/stats?format=json&filter=downstream_rq_total") as r:
        stats = json.loads(r.read())["stats"]
    return sum(int(s["value"]) for s in stats if s["name"].startswith("http.egress_traffic."))


@dataclass
class Soak:
    samples: list[tuple[int, list[float]]]
    """(requests so far, RSS MB of each Python process)."""
    reloads: int
    errors: dict[str, int]
    """wrk's counts: connect, read, write, status (non-2xx), timeout."""


def soak(setup: Setup, total: int, body_file: Path, reload_every_s: float = 0.0) -> Soak:
    """Drive ``setup`` at 16 connections for ``total`` requests; RSS of each
    Python process every few seconds, and, with ``reload_every_s``, a config
    reload that often; wrk's errors over the whole run."""
    assert setup.admin_url is not None
    samples: list[tuple[int, list[float]]] = []
    start = envoy_requests(setup.admin_url)
    samples.append((0, [rss_mb(p) for p in setup.proxy_pids()]))
    wrk = subprocess.Popen(
        wrk_command(setup.url, 16, 3600, body_file), stdout=subprocess.PIPE, text=True
    )
    reloads = 0
    tick = min(3.0, reload_every_s) if reload_every_s > 0 else 3.0
    next_sample = next_reload = time.monotonic()
    next_sample += 3.0
    next_reload += reload_every_s
    try:
        done = 0
        while done < total:
            time.sleep(tick)
            if wrk.poll() is not None:
                raise RuntimeError("wrk stopped during the soak")
            now = time.monotonic()
            if reload_every_s > 0 and setup.reload is not None and now >= next_reload:
                reloads += 1
                setup.reload(reloads)
                next_reload = now + reload_every_s
            if now >= next_sample:
                next_sample = now + 3.0
                done = envoy_requests(setup.admin_url) - start
                samples.append((done, [rss_mb(p) for p in setup.proxy_pids()]))
                print(f"  soak: {done:>7} requests, RSS MB {_mb(samples[-1][1])}", flush=True)
        # wrk prints its summary (the script's JSON line) when interrupted.
        wrk.send_signal(signal.SIGINT)
        out, _ = wrk.communicate(timeout=30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    line = next(x for x in reversed(out.splitlines()) if x.startswith("{"))
    errors = {k: int(v) for k, v in json.loads(line)["errors"].items()}
    return Soak(samples, reloads, errors)


def _mb(values: list[float]) -> str:
    return "/".join(f"{v:.1f}" for v in values)


# --- main ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Benchmark plain Envoy, Envoy + Archway and LiteLLM side by side."
    )
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per pass (8)")
    parser.add_argument("--rounds", type=int, default=3, help="passes per setup (3)")
    parser.add_argument(
        "--connections", default="1,16", help="comma-separated wrk connection counts (1,16)"
    )
    parser.add_argument(
        "--workers",
        default=None,
        help="comma-separated ext_proc worker counts, one Archway setup each "
        "(default: archway up's own default, one per core)",
    )
    parser.add_argument(
        "--envoy-concurrency",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="plain Envoy's worker threads (default: one per core, as archway up's Envoy)",
    )
    parser.add_argument("--with-litellm", action="store_true", help="add LiteLLM's proxy")
    parser.add_argument(
        "--with-grpcio",
        action="store_true",
        help="add Archway on its grpc.aio fallback transport (the prototype's server)",
    )
    parser.add_argument(
        "--hops",
        default="",
        help="comma-separated ext_proc hops (tcp, uds): archway serve with one process "
        "behind an Envoy with one thread each, as the sidecar setups run",
    )
    parser.add_argument(
        "--soak", type=int, default=0, metavar="N", help="after the passes, RSS over N requests"
    )
    parser.add_argument(
        "--reload-every",
        type=float,
        default=0.0,
        metavar="S",
        help="during the soak, reload Archway's config (SIGHUP) every S seconds",
    )
    parser.add_argument(
        "--body-kb",
        type=int,
        default=BODY_BYTES // 1024,
        help="request body size in KiB (2); coding agents send 100-1024",
    )
    parser.add_argument("--json", type=Path, help="write every pass and the summary here")
    parser.add_argument(
        "--features",
        default="",
        help=f"comma-separated, one more Archway setup each: {', '.join(FEATURES)}",
    )
    args = parser.parse_args(argv)
    features = [f for f in args.features.split(",") if f]
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        parser.error(f"unknown feature {unknown[0]!r}; choose from {', '.join(FEATURES)}")
    if "redis" in features and shutil.which("redis-server") is None:
        parser.error("--features redis needs redis-server (apt-get install -y redis-server)")

    if shutil.which("wrk") is None:
        print(
            "wrk is not installed. On Debian/Ubuntu: sudo apt-get install -y wrk "
            "(other systems: https://github.com/wg/wrk, build with make).",
            file=sys.stderr,
        )
        return 2
    connections = [int(c) for c in args.connections.split(",")]
    worker_counts: list[int | None] = (
        [int(w) for w in args.workers.split(",")] if args.workers else [None]
    )

    info = machine()
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, load {' '.join(info['loadavg_at_start'])}"
    )
    print(f"envoy {info['envoy']}, python {info['python']}, grpcio {info['grpcio']}")
    print(
        "python RSS lists one figure per process; for an Archway setup with more than one\n"
        "worker the first is the supervisor (archway up itself), the others its workers."
    )

    with tempfile.TemporaryDirectory(prefix="archway-bench-") as tmp:
        bench = Bench(Path(tmp))
        try:
            body = chat_body(args.body_kb * 1024)
            body_file = Path(tmp) / "body.json"
            body_file.write_bytes(body)
            upstream_port = bench.start_upstream()
            setups = [
                bench.start_plain_envoy(
                    bench.write_config(upstream_port, "plain"), args.envoy_concurrency
                )
            ]
            for w in worker_counts:
                name = "archway" if w is None else f"archway-w{w}"
                setups.append(bench.start_archway(bench.write_config(upstream_port, name), w))
            for feature in features:
                path = bench.write_config(upstream_port, f"archway-{feature}", feature)
                setups.append(bench.start_archway(path, worker_counts[0], feature=feature))
            for hop in filter(None, args.hops.split(",")):
                if hop not in ("tcp", "uds"):
                    parser.error(f"--hops: {hop!r} is not tcp or uds")
                setups.append(bench.start_hop(bench.write_config(upstream_port, f"hop-{hop}"), hop))
            if args.with_grpcio:
                path = bench.write_config(upstream_port, "grpcio")
                setups.append(bench.start_archway(path, None, transport="grpcio"))
            if args.with_litellm:
                setups.append(bench.start_litellm(upstream_port))
            for setup in setups:
                check_setup(setup, body)
                run_wrk(setup.url, 16, 2, body_file)  # warm-up, not measured
            print(
                f"setups: {', '.join(s.name for s in setups)}; {args.rounds} rounds of "
                f"{args.duration:g}s passes at {args.connections} connections, alternating"
            )

            passes: list[Pass] = []
            for conns in connections:
                for r, order in rotations(setups, args.rounds):
                    for setup in order:
                        p = measure(setup, conns, args.duration, body_file, r)
                        passes.append(p)
                        print_pass(p)
            rss = {s.name: [rss_mb(p) for p in s.proxy_pids()] for s in setups}
            summaries = summarise(passes)
            print()
            print_table(summaries, rss)

            soak_samples: list[tuple[int, list[float]]] = []
            soak_verdict: tuple[str, str, bool] | None = None
            soak_errors: tuple[str, str, bool] | None = None
            archway = reference_setup(setups)
            if args.soak:
                print(f"\nsoak: {archway.name} at 16 connections for {args.soak} requests")
                soaked = soak(archway, args.soak, body_file, args.reload_every)
                soak_samples = soaked.samples
                first, last = soak_samples[1][1], soak_samples[-1][1]
                failed = sum(soaked.errors.values())
                print(f"  {soaked.reloads} config reloads; wrk errors {soaked.errors}")
                if archway.log is not None and soaked.reloads:
                    said = archway.log.read_text(errors="replace").splitlines()
                    lines = [x for x in said if "reload" in x.lower()]
                    print(f"  the log says of reloads ({len(lines)} lines), last: {lines[-1:]}")
                print(f"  RSS MB after warm-up {_mb(first)} -> after {args.soak}: {_mb(last)}")
                rss[archway.name] = [max(a, b) for a, b in zip(first, last, strict=False)]
                growth = max(b - a for a, b in zip(first, last, strict=False))
                soak_verdict = (
                    f"ext_proc RSS flat over {soak_samples[-1][0]} requests (growth < 2 MB)",
                    f"{growth:+.1f} MB",
                    growth < 2.0,
                )
                soak_errors = (
                    f"no error under load over {soak_samples[-1][0]} requests"
                    f" and {soaked.reloads} reloads",
                    f"{failed} errors",
                    failed == 0,
                )

            print("\nratios and targets (same run):")
            results = verdicts(summaries, rss, archway.name, args.body_kb)
            if soak_verdict is not None:
                results.append(soak_verdict)
            if soak_errors is not None:
                results.append(soak_errors)
            for label, value, ok in results:
                print(f"  [{'met' if ok else 'MISSED'}] {label}: {value}")
            by = {(x.setup, x.connections): x for x in summaries}
            for conns in connections:
                old = by.get(("archway-grpcio", conns))
                if old is not None:
                    new = by[(archway.name, conns)]
                    print(
                        f"  {archway.name} vs archway-grpcio at c{conns}: "
                        f"{new.rps / old.rps:.2f}x req/s, ext_proc "
                        f"{new.proxy_cpu_ms:.3f} vs {old.proxy_cpu_ms:.3f} ms/req"
                    )
            scaled = sorted((s for s in setups if s.workers), key=lambda s: s.workers)
            if len(scaled) > 1:
                for conns in connections:
                    base_rps = by[(scaled[0].name, conns)].rps
                    steps = ", ".join(
                        f"{s.workers}: {by[(s.name, conns)].rps:.0f} req/s "
                        f"({by[(s.name, conns)].rps / base_rps:.2f}x)"
                        for s in scaled
                    )
                    print(f"  throughput by ext_proc workers at c{conns}: {steps}")
            if args.json:
                args.json.write_text(
                    json.dumps(
                        {
                            "machine": info,
                            "args": {k: str(v) for k, v in vars(args).items()},
                            "passes": [asdict(p) for p in passes],
                            "summary": [asdict(s) for s in summaries],
                            "rss_mb": rss,
                            "soak": soak_samples,
                        },
                        indent=1,
                    )
                )
        finally:
            bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
