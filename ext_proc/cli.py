"""The ``archway`` command line: check, render, explain, serve and up.

Nothing else in the package imports this module; it is the outermost edge,
where files are read, processes started and text printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from ext_proc.config import Config, ConfigError, ProviderConfig, load_config
from ext_proc.endpoints import classify
from ext_proc.errors import GatewayError
from ext_proc.mutate import CREDENTIAL_HEADERS, plan_request
from ext_proc.providers import Upstream, upstream_for
from ext_proc.resolve import build_routing_table, resolve_model

__all__ = ["main"]

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def main(argv: Sequence[str] | None = None) -> int:
    # `up` forks Envoy while gRPC threads run; gRPC's fork handlers have nothing
    # to protect there and only print a warning.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    # Only the grpcio fallback transport (ARCHWAY_GRPC_SERVER=grpcio) reads this:
    # without the EventEngine experiments grpc.aio costs about a quarter less CPU.
    os.environ.setdefault(
        "GRPC_EXPERIMENTS", "-event_engine_listener,-event_engine_for_all_other_endpoints"
    )
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"archway: {len(exc.problems)} problem(s) in the config:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archway", description="Route LLM traffic through Envoy with an ext_proc server."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a config and summarise it (no secrets shown)")
    check.add_argument("config", type=Path)
    check.set_defaults(func=_cmd_check)

    render = sub.add_parser("render", help="print the Envoy bootstrap for a config")
    render.add_argument("config", type=Path)
    render.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    render.add_argument(
        "--ext-proc-address",
        metavar="HOST:PORT",
        help="where Envoy reaches the ext_proc server (default: the config's archway section)",
    )
    render.add_argument("--admin-port", type=int, help="Envoy admin port (default: the config's)")
    render.set_defaults(func=_cmd_render)

    explain = sub.add_parser("explain", help="print the routing decision for a request, offline")
    explain.add_argument("config", type=Path)
    what = explain.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="the model a client asks for ('' or auto: open model)")
    what.add_argument("--body", type=Path, help="a JSON request body file")
    explain.add_argument(
        "--path",
        default="/v1/chat/completions",
        help="the client's path: /v1/chat/completions (OpenAI) or /v1/messages (Anthropic)",
    )
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(func=_cmd_explain)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server alone")
    serve.add_argument("config", type=Path)
    serve.add_argument("--address", help="listen address (default: the config's, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (default: the config's, 9002)")
    _add_workers_argument(serve)
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT); each worker does",
    )
    # A worker's second, private port (see ext_proc.workers); set by its parent.
    serve.add_argument("--own-port", type=int, help=argparse.SUPPRESS)
    serve.add_argument("-v", "--verbose", action="store_true")
    serve.set_defaults(func=_cmd_serve)

    up = sub.add_parser("up", help="run the ext_proc server and Envoy together")
    up.add_argument("config", type=Path)
    up.add_argument(
        "--echo-upstream",
        action="store_true",
        help="also start a local echo provider on each loopback base_url in the config",
    )
    up.add_argument(
        "--ext-proc-port", type=int, default=0, help="ext_proc port (default: a free one)"
    )
    _add_workers_argument(up)
    up.add_argument("-v", "--verbose", action="store_true")
    up.set_defaults(func=_cmd_up)
    return parser


def _add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="ext_proc processes sharing the port (default: one per core); "
        "archway up also runs Envoy with N worker threads",
    )


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


# --- check -------------------------------------------------------------------


def _key_status(p: ProviderConfig) -> str:
    if p.passthrough_auth:
        return "client's own key (passthrough_auth)"
    source = f" from {p.access_key_ref}" if p.access_key_ref else ""
    return f"key set{source}" if p.access_key else "no key"


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    table = build_routing_table(config)
    print(f"{args.config}: OK")
    print("listeners:")
    for lst in config.listeners:
        print(f"  {lst.name}: {lst.address}:{lst.port}, timeout {lst.timeout_s:g}s")
    print("models:")
    for p in config.providers:
        up = table.upstreams[p.model]
        default = " (default)" if p.default else ""
        print(f"  {p.model}{default} -> {_origin(up)}{up.path_prefix} [cluster {up.cluster}]")
        print(f"      {_key_status(p)}")
    if table.aliases:
        print("aliases:")
        for alias in table.aliases:
            print(f"  {alias} -> {resolve_model(table, alias).model}")
    if config.routing_preferences:
        print("routing preferences:")
        for pref in config.routing_preferences:
            print(f"  {pref.name} -> {', '.join(pref.models)}: {pref.description}")
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _origin(up: Upstream) -> str:
    scheme = "https" if up.tls else "http"
    standard = up.port == (443 if up.tls else 80)
    return f"{scheme}://{up.host}" + ("" if standard else f":{up.port}")


# --- render ------------------------------------------------------------------


def _split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"archway: expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def _cmd_render(args: argparse.Namespace) -> int:
    from ext_proc.bootstrap import render_bootstrap

    # The bootstrap carries no secrets, so rendering needs none of the keys.
    config = load_config(args.config, allow_missing_env=True)
    host, port = (None, None)
    if args.ext_proc_address:
        host, port = _split_address(args.ext_proc_address)
    text = render_bootstrap(
        config, ext_proc_host=host, ext_proc_port=port, admin_port=args.admin_port
    )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


# --- explain -----------------------------------------------------------------


def _mask(name: str, value: str) -> str:
    if name not in CREDENTIAL_HEADERS:
        return value
    scheme, sep, _ = value.partition(" ")
    return f"{scheme} ***" if sep else "***"


def _cmd_explain(args: argparse.Namespace) -> int:
    config = load_config(args.config, allow_missing_env=True)
    table = build_routing_table(config)
    if args.body is not None:
        body = args.body.read_bytes()
    else:
        payload: dict[str, object] = {"messages": [{"role": "user", "content": "hello"}]}
        if args.model is not None:
            payload["model"] = args.model
        body = json.dumps(payload).encode()
    try:
        endpoint = classify("POST", args.path)
        plan = plan_request(table, endpoint, {"content-type": "application/json"}, body)
    except GatewayError as exc:
        if args.json:
            print(json.dumps({"status": exc.status, "code": exc.code, "message": exc.message}))
        else:
            print(f"rejected: HTTP {exc.status} ({exc.code}): {exc.message}")
        return 2
    d = plan.decision
    headers = [(k, _mask(k, v)) for k, v in plan.set_headers]
    if args.json:
        out = {
            "model": d.model,
            "provider": d.provider.provider,
            "upstream_model": d.upstream_model,
            "resolution": d.resolution.value,
            "alias": d.alias,
            "route": d.route,
            "cluster": d.upstream.cluster,
            "set_headers": dict(headers),
            "remove_headers": list(plan.remove_headers),
            "body_rewritten": plan.body is not None,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"requested:   {d.requested!r}")
    print(f"resolution:  {d.resolution.value}" + (f" (alias {d.alias})" if d.alias else ""))
    print(f"model:       {d.model} (sent upstream as {d.upstream_model!r})")
    print(f"upstream:    {_origin(d.upstream)} [cluster {d.upstream.cluster}]")
    print("headers set:")
    for k, v in headers:
        print(f"  {k}: {v}")
    if plan.remove_headers:
        print("headers removed: " + ", ".join(plan.remove_headers))
    print("body:        " + ("model rewritten" if plan.body is not None else "unchanged"))
    return 0


# --- serve -------------------------------------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ext_proc.server import serve_forever
    from ext_proc.workers import default_workers

    config = load_config(args.config)
    workers = default_workers() if args.workers is None else args.workers
    host = args.address or config.gateway.ext_proc_address
    port = config.gateway.ext_proc_port if args.port is None else args.port
    if workers > 1:
        for warning in config.warnings:
            logging.getLogger("archway").warning("%s", warning)
        return asyncio.run(_serve_workers(args.config, host, port, workers, args.verbose))
    if not args.reuse_port:  # a pool's worker: its parent already warned
        for warning in config.warnings:
            logging.getLogger("archway").warning("%s", warning)
    asyncio.run(
        serve_forever(config, host, port, reuse_port=args.reuse_port, own_port=args.own_port)
    )
    return 0


async def _serve_workers(path: Path, host: str, port: int, workers: int, verbose: bool) -> int:
    from ext_proc.workers import READY_LINE, WorkerPool

    pool = WorkerPool(path, host, port, workers, verbose=verbose)
    bound = await pool.start()
    pids = ", ".join(str(p) for p in pool.pids)
    print(f"archway: {workers} ext_proc workers (pids {pids})", file=sys.stderr, flush=True)
    print(f"{READY_LINE} {host}:{bound}", flush=True)
    await _wait_for_stop_signal()
    await pool.stop()
    return 0


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# --- up ----------------------------------------------------------------------


def _echo_targets(config: Config) -> dict[int, str]:
    """Loopback ports named by the config's ``base_url``s, with a provider name each."""
    ports: dict[int, str] = {}
    for p in config.providers:
        if not p.base_url:
            continue
        parts = urlsplit(p.base_url)
        if parts.scheme == "http" and parts.hostname in _LOOPBACK:
            ports.setdefault(upstream_for(p).port, p.provider)
    return ports


def _cmd_up(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    from ext_proc.workers import default_workers

    workers = default_workers() if args.workers is None else args.workers
    return asyncio.run(
        _up(config, args.config, args.echo_upstream, args.ext_proc_port, workers, args.verbose)
    )


async def _up(
    config: Config, path: Path, echo: bool, ext_proc_port: int, workers: int, verbose: bool
) -> int:
    from ext_proc.bootstrap import render_bootstrap
    from ext_proc.echo import EchoUpstream
    from ext_proc.envoy_process import EnvoyProcess
    from ext_proc.server import start_server
    from ext_proc.workers import WorkerPool

    stack = contextlib.ExitStack()
    echoes: list[EchoUpstream] = []
    pool: WorkerPool | None = None
    try:
        if echo:
            for port, name in _echo_targets(config).items():
                echoes.append(stack.enter_context(EchoUpstream("127.0.0.1", port, name=name)))
        ext_host = "127.0.0.1"
        # One worker serves in this process; more run as supervised children.
        worker_ports: list[int] = []
        if workers > 1:
            pool = WorkerPool(
                path, ext_host, ext_proc_port, workers, verbose=verbose, own_ports=True
            )
            ext_port = await pool.start()
            worker_ports = pool.worker_ports
            stop_ext_proc = pool.stop
        else:
            running = await start_server(config, ext_host, ext_proc_port)
            ext_port, stop_ext_proc = running.port, running.stop
        envoy = EnvoyProcess()
        stack.callback(envoy.stop)
        bootstrap = render_bootstrap(
            config, ext_proc_host=ext_host, ext_proc_port=ext_port, ext_proc_ports=worker_ports
        )
        envoy.start(bootstrap, concurrency=workers)
        await asyncio.to_thread(envoy.wait_ready, 30.0)
        addresses = await asyncio.to_thread(envoy.listener_addresses)
        _print_ready(config, addresses, echoes, ext_port, workers, envoy.admin_url)

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        code = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            if envoy.returncode is not None:
                print(f"archway: envoy exited with code {envoy.returncode}", file=sys.stderr)
                code = 1
                break
        print("archway: stopping", file=sys.stderr)
        envoy.stop()
        await stop_ext_proc(1.0)
        return code
    finally:
        stack.close()
        if pool is not None:
            await pool.stop(1.0)  # a no-op after a clean stop


def _print_ready(
    config: Config,
    addresses: dict[str, tuple[str, int]],
    echoes: Sequence[object],
    ext_proc_port: int,
    workers: int,
    admin_url: str,
) -> None:
    print("archway is up.", flush=True)
    for name, (host, port) in addresses.items():
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"  listener {name}: clients use base_url http://{shown}:{port}/v1")
    processes = "1 process" if workers == 1 else f"{workers} worker processes"
    print(f"  ext_proc server: 127.0.0.1:{ext_proc_port} ({processes}); envoy admin: {admin_url}")
    if echoes:
        print(f"  echo upstreams: {len(echoes)} (answers say what they received)")
    if addresses:
        host, port = next(iter(addresses.values()))
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        model = next((a for a in config.aliases), config.providers[0].model)
        print("try:")
        print(
            f"  curl -si http://{shown}:{port}/v1/chat/completions "
            "-H 'content-type: application/json' "
            f"""-d '{{"model": "{model}", "messages": [{{"role": "user", "content": "hi"}}]}}'"""
        )
    print("Ctrl-C stops everything.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
