"""The ``archway`` command line: check, render, explain, route, serve, up and
router convert.

Nothing else in the package imports this module; it is the outermost edge,
where files are read, processes started and text printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ext_proc.config import Config, ConfigError, ProviderConfig, load_config
from ext_proc.errors import GatewayError
from ext_proc.headers import CREDENTIAL_HEADERS
from ext_proc.router.factory import RouterUnavailableError, build_router, routes_of
from ext_proc.router.tokenizer import ModelFilesError
from ext_proc.routing.body import parse_body, parse_request
from ext_proc.routing.catalog import Upstream
from ext_proc.routing.decide import Look, decide, look, resolve_model
from ext_proc.routing.endpoints import classify
from ext_proc.routing.plan import plan_request
from ext_proc.routing.resolve import build_routing_table, chain_providers
from ext_proc.state import StateStorageError

if TYPE_CHECKING:
    pass

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
        if len(exc.problems) == 1:
            print(f"archway: {exc.problems[0]}", file=sys.stderr)
            return 1
        print(f"archway: {len(exc.problems)} problems in the config:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except (RouterUnavailableError, ModelFilesError) as exc:
        print(f"archway: the preference router cannot start: {exc}", file=sys.stderr)
        return 1
    except StateStorageError as exc:
        print(f"archway: the state_storage cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _report(exc)


def _report(exc: Exception) -> int:
    """One line for a failure the command did not turn into its own message."""
    from ext_proc.deploy.envoy_process import EnvoyError
    from ext_proc.run import StartError
    from ext_proc.server.workers import WorkerError

    if isinstance(exc, StartError | EnvoyError | WorkerError):
        message = str(exc)
    elif isinstance(exc, OSError) and exc.filename is not None:
        # A file named on the command line (--body, -o, a model directory).
        message = f"{exc.filename}: {exc.strerror or exc}; check the path"
    else:
        # A bug, not bad input: the details go to the debug log (-v), not the user.
        logging.getLogger("archway").debug("unexpected failure", exc_info=exc)
        message = f"unexpected {type(exc).__name__}: {exc} (please report it; -v logs the details)"
    print(f"archway: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archway", description="Route LLM traffic through Envoy with an ext_proc server."
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    check = sub.add_parser("check", help="validate a config and summarise it (no secrets shown)")
    check.add_argument("config", type=Path)
    check.set_defaults(func=_cmd_check)

    render = sub.add_parser(
        "render", help="print the Envoy bootstrap for a config, or write Kubernetes manifests"
    )
    render.add_argument("config", type=Path)
    render.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write to this file instead of stdout (with --kubernetes: into this directory)",
    )
    render.add_argument(
        "--ext-proc-address",
        metavar="HOST:PORT",
        help="where Envoy reaches the ext_proc server (default: the config's archway section)",
    )
    render.add_argument(
        "--ext-proc-uds",
        metavar="PATH",
        help="Envoy reaches the ext_proc server on this Unix socket "
        "(default: the config's archway.ext_proc_uds)",
    )
    render.add_argument("--admin-port", type=_port, help="Envoy admin port (default: the config's)")
    render.add_argument(
        "--kubernetes",
        action="store_true",
        help="write Kubernetes manifests for both setups (plain Envoy, Envoy Gateway) to -o DIR",
    )
    render.add_argument("--namespace", help="with --kubernetes: the namespace (default: archway)")
    render.add_argument(
        "--image", help="with --kubernetes: Archway's container image (default: archway:latest)"
    )
    render.add_argument(
        "--envoy-gateway-namespace",
        help="with --kubernetes: where Envoy Gateway runs its Envoy pods, the only pods let "
        "reach the ext_proc port (default: envoy-gateway-system)",
    )
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

    route = sub.add_parser(
        "route", help="run the preference router on a conversation, offline, and print its choice"
    )
    route.add_argument("config", type=Path)
    said = route.add_mutually_exclusive_group(required=True)
    said.add_argument("text", nargs="?", help="a user message")
    said.add_argument("--body", type=Path, help="a JSON request body file")
    route.add_argument(
        "--path",
        default="/v1/chat/completions",
        help="the client's path: /v1/chat/completions (OpenAI) or /v1/messages (Anthropic)",
    )
    route.add_argument("--json", action="store_true", help="print JSON")
    route.add_argument("-v", "--verbose", action="store_true")
    route.set_defaults(func=_cmd_route)

    router = sub.add_parser("router", help="preference-router model tools")
    router_sub = router.add_subparsers(required=True, metavar="TOOL")
    convert = router_sub.add_parser(
        "convert",
        help="convert a local Hugging Face model (Arch-Router-1.5B, or a BERT sentence "
        "encoder with --encoder) for CTranslate2",
    )
    convert.add_argument(
        "--encoder",
        action="store_true",
        help="SOURCE is a BERT sentence encoder (e.g. all-MiniLM-L6-v2) for the embedding "
        "router; converted from its safetensors with numpy, no torch needed",
    )
    convert.add_argument("source", type=Path, help="the Hugging Face model directory")
    convert.add_argument("output", type=Path, help="the directory to write (router.model_path)")
    convert.add_argument(
        "--quantization",
        default="int8",
        help="weight type: int8 (default, fastest on CPU), float16 or int8_float16 for a GPU, "
        "float32, or none to keep the checkpoint's",
    )
    convert.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
    convert.set_defaults(func=_cmd_router_convert)

    serve = sub.add_parser("serve", help="run the ext_proc gRPC server alone")
    serve.add_argument("config", type=Path)
    serve.add_argument("--address", help="listen address (default: the config's, 127.0.0.1)")
    serve.add_argument("--port", type=_port, help="listen port (default: the config's, 9002)")
    serve.add_argument(
        "--drain-seconds",
        type=float,
        default=None,
        metavar="S",
        help="on SIGTERM, say NOT_SERVING to health checks for S seconds before stopping "
        "(default: 5)",
    )
    _add_metrics_arguments(serve)
    _add_workers_argument(serve)
    serve.add_argument(
        "--reuse-port",
        action="store_true",
        help="share the port with other processes (SO_REUSEPORT); each worker does",
    )
    # A worker's second, private port (see ext_proc.server.workers); set by its parent.
    serve.add_argument("--own-port", type=_port, help=argparse.SUPPRESS)
    serve.add_argument(
        "--uds",
        metavar="PATH",
        help="also serve on a Unix domain socket at this path, from one process "
        "(default: the config's archway.ext_proc_uds)",
    )
    serve.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve TLS (ALPN h2) with this certificate chain (default: archway.ext_proc_tls)",
    )
    serve.add_argument("--tls-key", metavar="PEM", help="the private key for --tls-cert")
    _add_ready_timeout_argument(serve, "each ext_proc worker (with --workers above 1)")
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
        "--ext-proc-port", type=_port, default=0, help="ext_proc port (default: a free one)"
    )
    _add_metrics_arguments(up)
    _add_workers_argument(up)
    _add_ready_timeout_argument(up, "each ext_proc worker, Envoy and the health service")
    up.add_argument("-v", "--verbose", action="store_true")
    up.set_defaults(func=_cmd_up)
    return parser


# --- arguments shared by serve and up (see ext_proc/run.py) ---------------------------


def _add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-address", help="Prometheus endpoint address (default: the config's, 127.0.0.1)"
    )
    parser.add_argument(
        "--metrics-port",
        type=_metrics_port,
        metavar="PORT|off",
        help="Prometheus endpoint port, 0 for a free one, off for none (default: the config's, "
        "9003)",
    )


def _metrics_port(value: str) -> int | str:
    if value.lower() in ("off", "false", "no"):
        return "off"
    return _port(value)


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError("a port is 0 to 65535")
    return port


def _add_ready_timeout_argument(parser: argparse.ArgumentParser, what: str) -> None:
    from ext_proc.run import DEFAULT_READY_TIMEOUT_S

    parser.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=DEFAULT_READY_TIMEOUT_S,
        metavar="S",
        help=f"how long to wait for {what} to be ready (default: {DEFAULT_READY_TIMEOUT_S:g})",
    )


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError("must be above 0")
    return number


def _add_workers_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="ext_proc processes sharing the port (default: one per core for serve, "
        "half the cores for up, which runs Envoy beside them); "
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
        retries = f", max_retries {lst.max_retries}" if lst.max_retries else ""
        print(f"  {lst.name}: {lst.address}:{lst.port}, timeout {lst.timeout_s:g}s{retries}")
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
            chain = f" (then {', '.join(pref.fallbacks)})" if pref.fallbacks else ""
            print(f"  {pref.name} -> {pref.models[0]}{chain}: {pref.description}")
        print(f"preference router: {_router_summary(config)}")
    print(f"state storage: {_state_summary(config)}")
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _state_summary(config: Config) -> str:
    state = config.state_storage
    if state is None:
        return "off (no state_storage): previous_response_id works only with native providers"
    if state.kind == "memory":
        return "memory (per ext_proc process)"
    # Only where it is: the connection string may hold a password.
    where = urlsplit(state.connection_string or "")
    return f"postgres at {where.hostname or 'a local socket'}:{where.port or 5432}{where.path}"


def _router_summary(config: Config) -> str:
    router = config.router
    if router is None:
        return "off (no router section): requests with no model go to the default model"
    where = router.model_path or getattr(router.options, "endpoint", "")
    return f"{router.backend} ({where}), timeout {router.timeout_s:g}s"


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
    from ext_proc.deploy.bootstrap import render_bootstrap

    if args.kubernetes:
        return _render_kubernetes(args)
    if args.namespace or args.image or args.envoy_gateway_namespace:
        raise SystemExit(
            "archway: --namespace, --image and --envoy-gateway-namespace go with --kubernetes"
        )
    # The bootstrap carries no secrets, so rendering needs none of the keys.
    config = load_config(args.config, allow_missing_env=True)
    host, port = (None, None)
    if args.ext_proc_address:
        if args.ext_proc_uds:
            raise SystemExit("archway: give --ext-proc-address or --ext-proc-uds, not both")
        host, port = _split_address(args.ext_proc_address)
    # An address on the command line means TCP, whatever the config's socket.
    uds = args.ext_proc_uds if args.ext_proc_uds else ("" if args.ext_proc_address else None)
    text = render_bootstrap(
        config,
        ext_proc_host=host,
        ext_proc_port=port,
        admin_port=args.admin_port,
        ext_proc_uds=uds,
    )
    if args.output:
        args.output.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _render_kubernetes(args: argparse.Namespace) -> int:
    from ext_proc.deploy.kubernetes import (
        CA_CONFIG_MAP,
        DEFAULT_IMAGE,
        DEFAULT_NAMESPACE,
        ENVOY_GATEWAY_NAMESPACE,
        TLS_SECRET_NAME,
        KubernetesOptions,
        dump_manifests,
        kubernetes_files,
        secret_command,
    )

    if args.output is None:
        raise SystemExit("archway: --kubernetes writes several files; name a directory: -o DIR")
    if args.ext_proc_address or args.ext_proc_uds or args.admin_port is not None:
        raise SystemExit(
            "archway: --ext-proc-address, --ext-proc-uds and --admin-port do not go with "
            "--kubernetes"
        )
    # Manifests carry no keys (the pods read them from a Secret), so none are needed here.
    config = load_config(args.config, allow_missing_env=True)
    text = args.config.read_text(encoding="utf-8")
    try:
        options = KubernetesOptions(
            namespace=args.namespace or DEFAULT_NAMESPACE,
            image=args.image or DEFAULT_IMAGE,
            envoy_gateway_namespace=args.envoy_gateway_namespace or ENVOY_GATEWAY_NAMESPACE,
        )
        files = kubernetes_files(config, text, options)
    except ValueError as exc:
        print(f"archway: {exc}", file=sys.stderr)
        return 1
    for relative, manifests in files.items():
        path = args.output / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dump_manifests(manifests), encoding="utf-8")
        print(f"wrote {path}")
    command = secret_command(text, options)
    if command:
        print(
            "Archway reads the config's variables from a Secret; create it from your environment:"
        )
        print(f"  {command}")
    if config.gateway.ext_proc_tls is not None:
        print(
            "The Envoy Gateway setup serves the ext_proc hop over TLS; create its key pair and CA:"
        )
        print(
            f"  kubectl -n {options.namespace} create secret tls {TLS_SECRET_NAME} "
            "--cert=SERVER.crt --key=SERVER.key"
        )
        print(
            f"  kubectl -n {options.namespace} create configmap {CA_CONFIG_MAP} "
            "--from-file=ca.crt=CA.crt"
        )
    return 0


# --- explain -----------------------------------------------------------------


def _mask(name: str, value: str, secret_names: frozenset[str]) -> str:
    if name not in secret_names:
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
    # The routing stream's own pure steps, minus the router call: explain never
    # runs a model, and a request without a session key touches no pins.
    headers = {"content-type": "application/json"}
    try:
        endpoint = classify("POST", args.path)
        parsed = parse_request(headers, body, endpoint.api)
        seen = look(table, parsed.fields, headers)
        decision = decide(table, seen)
        chain = chain_providers(table, decision.target)
        # Stored history is not read: explain shows the shape, not a conversation.
        plan = plan_request(decision, parsed, endpoint, headers, chain=chain)
    except GatewayError as exc:
        if args.json:
            print(json.dumps({"status": exc.status, "code": exc.code, "message": exc.message}))
        else:
            print(f"rejected: HTTP {exc.status} ({exc.code}): {exc.message}")
        return 2
    d = plan.decision
    router_note = _router_note(config, seen)
    # Configured extra headers may carry account ids or keys: shown masked too.
    secret_names = frozenset(CREDENTIAL_HEADERS) | {k.lower() for k, _ in d.provider.headers}
    headers = [(k, _mask(k, v, secret_names)) for k, v in plan.set_headers]
    if args.json:
        out = {
            "router_called": router_note.startswith("asked"),
            "router": router_note,
            "model": d.model,
            "provider": d.provider.provider,
            "upstream_model": d.upstream_model,
            "resolution": d.resolution.value,
            "alias": d.alias,
            "route": d.route,
            "cluster": d.cluster,
            "fallbacks": list(d.fallbacks),
            "set_headers": dict(headers),
            "remove_headers": list(plan.remove_headers),
            "body_rewritten": plan.body is not None,
            "translation": plan.translation.header_value() if plan.translation else None,
        }
        print(json.dumps(out, indent=2))
        return 0
    print(f"requested:   {d.requested!r}")
    print(f"resolution:  {d.resolution.value}" + (f" (alias {d.alias})" if d.alias else ""))
    print(f"model:       {d.model} (sent upstream as {d.upstream_model!r})")
    print(f"upstream:    {_origin(d.upstream)} [cluster {d.cluster}]")
    if d.fallbacks:
        print(f"fallbacks:   {', '.join(d.fallbacks)} (on connect failure, 429 or 5xx)")
    print("headers set:")
    for k, v in headers:
        print(f"  {k}: {v}")
    if plan.remove_headers:
        print("headers removed: " + ", ".join(plan.remove_headers))
    if plan.translation is not None:
        client, provider = plan.translation.client.value, plan.translation.provider.value
        print(f"body:        translated from the {client} API to the {provider} API")
    else:
        print("body:        " + ("model rewritten" if plan.body is not None else "unchanged"))
    print(f"router:      {router_note}")
    return 0


def _router_note(config: Config, seen: Look) -> str:
    """Whether the preference router would be asked for this request, and why."""
    if not seen.asks_router:
        return "not asked: the request names its model"
    if config.router is None:
        return "not asked: no router section; the default model serves"
    if not routes_of(config):
        return "not asked: no routing_preferences"
    return (
        f"asked ({config.router.backend}); explain does not run it, so the decision above "
        "is the fallback: `archway route` runs it"
    )


# --- route -------------------------------------------------------------------


def _cmd_route(args: argparse.Namespace) -> int:
    config = load_config(args.config, allow_missing_env=True)
    if args.body is not None:
        body = args.body.read_bytes()
    else:
        body = json.dumps({"messages": [{"role": "user", "content": args.text}]}).encode()
    endpoint = classify("POST", args.path)
    try:
        parsed = parse_body({"content-type": "application/json"}, body)
    except GatewayError as exc:
        print(f"rejected: HTTP {exc.status} ({exc.code}): {exc.message}", file=sys.stderr)
        return 2
    if config.router is None or not routes_of(config):
        print(
            "archway: nothing to route with: the config needs routing_preferences and a "
            "router section",
            file=sys.stderr,
        )
        return 1
    started = time.perf_counter()
    router = build_router(config)
    assert router is not None
    loaded = time.perf_counter()
    result = asyncio.run(_route_once(router, parsed, endpoint.api))
    decided = time.perf_counter()
    table = build_routing_table(config)
    try:
        decision = resolve_model(table, None, route=result["route"])
        model = decision.model
        resolution = decision.resolution.value
    except GatewayError as exc:
        model, resolution = f"(none: {exc.message})", "rejected"
    out = {
        "route": result["route"],
        "model": model,
        "resolution": resolution,
        "prompt_tokens": result["prompt_tokens"],
        "load_s": round(loaded - started, 3),
        "latency_s": round(decided - loaded, 3),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"route:        {out['route']}")
    print(f"model:        {model} (resolution {resolution})")
    if out["prompt_tokens"] is not None:
        print(f"prompt:       {out['prompt_tokens']} tokens")
    print(f"latency:      {out['latency_s']:.3f}s (model load {out['load_s']:.3f}s)")
    return 0


async def _route_once(router: Any, body: dict[str, Any], api: Any) -> dict[str, Any]:
    from ext_proc.router.arch_router import ArchRouter
    from ext_proc.router.conversation import select_conversation

    try:
        choice = await router.decide(body, api)
        tokens = None
        if isinstance(router.backend, ArchRouter):
            conversation = select_conversation(
                body,
                api,
                count_tokens=router.count_tokens,
                max_messages=router.max_messages,
                token_budget=router.token_budget,
            )
            tokens = router.backend.prompt.encode(conversation).length
        return {"route": choice.route, "prompt_tokens": tokens}
    finally:
        await router.close()


# --- router convert ----------------------------------------------------------


def _cmd_router_convert(args: argparse.Namespace) -> int:
    from ext_proc.router.convert import convert_encoder, convert_model

    quantization = None if args.quantization.lower() == "none" else args.quantization
    convert = convert_encoder if args.encoder else convert_model
    kind = "sentence encoder" if args.encoder else "router model"
    started = time.perf_counter()
    print(f"[1/2] converting the {kind} {args.source} ({quantization or 'its own'} weights)...")
    sys.stdout.flush()
    try:
        out = convert(args.source, args.output, quantization=quantization, force=args.force)
    except ModelFilesError as exc:
        print(f"archway: cannot convert {args.source}: {exc}", file=sys.stderr)
        return 1
    print(f"[2/2] wrote {out}")
    print(f"converted {args.source} -> {out} in {time.perf_counter() - started:.1f}s")
    print(f"set router.model_path: {out.resolve()}")
    return 0


# --- serve and up: see ext_proc/run.py ---------------------------------------


def _cmd_serve(args: argparse.Namespace) -> int:
    from ext_proc.run import cmd_serve

    return cmd_serve(args)


def _cmd_up(args: argparse.Namespace) -> int:
    from ext_proc.run import cmd_up

    return cmd_up(args)


if __name__ == "__main__":
    sys.exit(main())
