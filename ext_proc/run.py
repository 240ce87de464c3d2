"""``archway serve`` and ``archway up``: the commands that run until stopped.

``serve`` runs the ext_proc server, in one process or as a pool of workers;
``up`` runs the pool beside an Envoy it starts (and, with ``--echo-upstream``,
local echo providers). Both say what they wait for while they start, turn
every start-up failure into one ``StartError`` line that names the fix, and
then wait for signals: SIGINT and SIGTERM stop, SIGHUP reloads the config in
every ext_proc process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ext_proc.config import Config, load_config
from ext_proc.routing.catalog import upstream_for
from ext_proc.server.signals import STOP_SIGNALS, SignalQueue

if TYPE_CHECKING:
    from ext_proc.deploy.envoy_process import EnvoyProcess
    from ext_proc.server.service import TlsFiles
    from ext_proc.server.workers import WorkerPool
    from ext_proc.telemetry.observe import ProcessObservability

__all__ = ["DEFAULT_READY_TIMEOUT_S", "StartError", "cmd_serve", "cmd_up"]

log = logging.getLogger("archway")

DEFAULT_READY_TIMEOUT_S = 60.0
"""How long ``serve`` and ``up`` wait for a worker, Envoy or the health service
(``--ready-timeout``): a worker loading a router model on a slow disk needs a while."""

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_ENVOY_POLL_S = 0.5
_CANNOT_BIND = re.compile(r"cannot bind '\[?([^']*?)\]?:(\d+)'")


class StartError(Exception):
    """A command could not start; the message is one line that says how to fix it."""


def progress(message: str) -> None:
    """A start-up step that may take a while, on stderr (stdout is for results)."""
    print(f"archway: {message}", file=sys.stderr, flush=True)


def _router_note(config: Config) -> str:
    router = config.router
    if router is None or not config.routing_preferences:
        return ""
    where = router.model_path or getattr(router.options, "endpoint", "")
    return f"the {router.backend} router model from {where}"


# --- metrics and tracing (transport-independent; see ext_proc/telemetry/observe.py) -----


def start_observability(config: Config, args: argparse.Namespace) -> ProcessObservability:
    """Before any metric exists: one metrics directory for this process and the
    workers it may start; then the endpoint and tracing."""
    from ext_proc.telemetry.metrics import MULTIPROC_DIR_ENV, use_multiprocess_dir
    from ext_proc.telemetry.observe import ProcessObservability

    try:
        use_multiprocess_dir()
    except OSError as exc:
        # A read-only root with no writable /tmp (a Kubernetes pod without its volume).
        raise StartError(
            f"cannot create the metrics directory ({exc.strerror or exc}); "
            f"point TMPDIR or {MULTIPROC_DIR_ENV} at a writable directory"
        ) from None
    port = config.gateway.metrics_port if args.metrics_port is None else args.metrics_port
    address = args.metrics_address or config.gateway.metrics_address
    try:
        return ProcessObservability.start(
            config, metrics_address=address, metrics_port=None if port == "off" else int(port)
        )
    except OSError as exc:
        raise StartError(
            f"cannot serve metrics on {address}:{port} ({exc.strerror or exc}); "
            "pick another with --metrics-port or archway.metrics_port, or turn it off "
            "(--metrics-port off)"
        ) from None


# --- serve -------------------------------------------------------------------


def _tls_files(args: argparse.Namespace, config: Config | None) -> TlsFiles | None:
    """The hop's TLS: the flags, else ``archway.ext_proc_tls``; a missing file
    is a start error that names it."""
    from ext_proc.server.service import TlsFiles

    if bool(args.tls_cert) != bool(args.tls_key):
        raise StartError("--tls-cert and --tls-key go together: give both")
    if args.tls_cert:
        files = TlsFiles(args.tls_cert, args.tls_key)
    elif config is not None and config.gateway.ext_proc_tls is not None:
        tls = config.gateway.ext_proc_tls
        files = TlsFiles(tls.cert, tls.key)
    else:
        return None
    from ext_proc.transport import tls_context

    try:
        tls_context(files.cert, files.key)
    except OSError as exc:  # ssl.SSLError included: not a PEM, or a key of another cert
        raise StartError(
            f"cannot load the TLS certificate {files.cert} and key {files.key} "
            f"({exc.strerror or exc}); check --tls-cert/--tls-key or archway.ext_proc_tls"
        ) from None
    return files


def cmd_serve(args: argparse.Namespace) -> int:
    from ext_proc.server.health import DEFAULT_DRAIN_S
    from ext_proc.server.service import UnixSocketError, serve_forever
    from ext_proc.server.workers import default_workers

    config = load_config(args.config)
    # A pool's worker (--reuse-port) serves the pool's TCP port, whatever the
    # config says the hop is: archway up runs its workers behind its own Envoy.
    pooled = bool(args.reuse_port)
    uds = args.uds or (None if pooled else config.gateway.ext_proc_uds)
    tls = _tls_files(args, None if pooled else config)
    # A socket is one path, so one process serves it; a pod or container scales
    # by replicas instead (its CPU limit is one core anyway).
    workers = (1 if uds else default_workers()) if args.workers is None else args.workers
    host = args.address or config.gateway.ext_proc_address
    port = config.gateway.ext_proc_port if args.port is None else args.port
    drain_s = DEFAULT_DRAIN_S if args.drain_seconds is None else max(0.0, args.drain_seconds)
    if workers > 1 and uds:
        where = "--uds" if args.uds else "archway.ext_proc_uds"
        raise StartError(
            f"a Unix socket ({where}) is served by one process: drop --workers or give "
            "--workers 1, and run more replicas for more cores"
        )
    if workers > 1 and tls is not None:
        raise StartError("TLS is served by one process: drop --workers or give --workers 1")
    if not args.reuse_port:  # a pool's worker: its parent already warned
        for warning in config.warnings:
            log.warning("%s", warning)
    # A pool's parent serves the metrics its workers write (multiprocess mode).
    observability = start_observability(config, args)
    if observability.endpoint is not None:
        print(f"archway metrics on {observability.endpoint.url}", flush=True)
    try:
        if workers > 1:
            return asyncio.run(_serve_workers(args, config, host, port, workers, drain_s))
        note = _router_note(config)
        if note and not args.reuse_port:
            progress(f"loading {note}...")
        try:
            asyncio.run(
                serve_forever(
                    config,
                    host,
                    port,
                    drain_s=drain_s,
                    reuse_port=args.reuse_port,
                    own_port=args.own_port,
                    uds=uds,
                    tls=tls,
                )
            )
        except UnixSocketError as exc:
            raise StartError(str(exc)) from None
        except OSError as exc:
            raise StartError(
                f"{exc}; pick another port with --port or archway.ext_proc_port"
            ) from None
    finally:
        observability.close()
    return 0


async def _serve_workers(
    args: argparse.Namespace, config: Config, host: str, port: int, workers: int, drain_s: float
) -> int:
    from ext_proc.server.workers import READY_LINE, PortInUseError, WorkerPool

    pool = WorkerPool(
        args.config,
        host,
        port,
        workers,
        verbose=args.verbose,
        drain_s=drain_s,
        ready_timeout_s=args.ready_timeout,
    )
    note = _router_note(config)
    progress(f"starting {workers} ext_proc workers" + (f" (loading {note})" if note else "..."))
    try:
        bound = await pool.start()
    except PortInUseError as exc:
        raise StartError(
            f"the ext_proc port is taken: {exc.strerror}; pick another with --port or "
            "archway.ext_proc_port"
        ) from None
    pids = ", ".join(str(p) for p in pool.pids)
    print(f"archway: {workers} ext_proc workers (pids {pids})", file=sys.stderr, flush=True)
    with SignalQueue(*STOP_SIGNALS, signal.SIGHUP) as received:
        print(f"{READY_LINE} {host}:{bound}", flush=True)
        first = await _forward_reloads(received, pool, args.config)
        # SIGTERM: every worker drains (health NOT_SERVING, still answering) as a
        # single server would; a second signal cuts that short. Ctrl-C stops at once.
        stopping = asyncio.create_task(pool.stop(grace_s=drain_s + 5.0, sig=first))
        while not stopping.done():
            second = asyncio.create_task(_forward_reloads(received, pool, args.config))
            done, _ = await asyncio.wait({stopping, second}, return_when=asyncio.FIRST_COMPLETED)
            if second in done:
                pool.signal_all(signal.SIGTERM)
            else:
                second.cancel()
        await stopping
    return 0


async def _forward_reloads(received: SignalQueue, pool: WorkerPool, path: Path) -> signal.Signals:
    """Pass each SIGHUP on to the workers (each reloads ``path``) until a stop signal."""
    while True:
        sig = await received.get()
        if sig is not signal.SIGHUP:
            return sig
        progress(f"SIGHUP: {len(pool.pids)} ext_proc worker(s) reload {path}")
        pool.signal_all(signal.SIGHUP)


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


def cmd_up(args: argparse.Namespace) -> int:
    from ext_proc.server.workers import default_workers

    config = load_config(args.config)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    workers = default_workers(beside_envoy=True) if args.workers is None else args.workers
    observability = start_observability(config, args)
    try:
        return asyncio.run(_up(config, args, workers, observability))
    finally:
        observability.close()


async def _up(
    config: Config, args: argparse.Namespace, workers: int, observability: ProcessObservability
) -> int:
    from ext_proc.deploy.bootstrap import render_bootstrap
    from ext_proc.deploy.echo import EchoUpstream
    from ext_proc.deploy.envoy_process import EnvoyError, EnvoyProcess
    from ext_proc.server.health import wait_until_serving
    from ext_proc.server.workers import PortInUseError, WorkerPool

    ready_timeout_s: float = args.ready_timeout
    stack = contextlib.ExitStack()
    echoes: list[EchoUpstream] = []
    pool: WorkerPool | None = None
    try:
        if args.echo_upstream:
            for port, name in _echo_targets(config).items():
                try:
                    echoes.append(stack.enter_context(EchoUpstream("127.0.0.1", port, name=name)))
                except OSError as exc:
                    raise StartError(
                        f"cannot start the echo provider for {name} on 127.0.0.1:{port} "
                        f"({exc.strerror or exc}); free the port or change that base_url"
                    ) from None
        ext_host = "127.0.0.1"
        # Workers run as supervised children, even one: a crashed or hung worker
        # is replaced while Envoy keeps serving (and the health check marks it).
        pool = WorkerPool(
            args.config,
            ext_host,
            args.ext_proc_port,
            workers,
            verbose=args.verbose,
            ready_timeout_s=ready_timeout_s,
        )
        note = _router_note(config)
        progress(f"starting {workers} ext_proc worker(s)" + (f", loading {note}" if note else ""))
        try:
            ext_port = await pool.start()
        except PortInUseError as exc:
            raise StartError(
                f"the ext_proc port is taken: {exc.strerror}; pick another with "
                "--ext-proc-port, or leave it out for a free one"
            ) from None
        envoy = EnvoyProcess()
        stack.callback(envoy.stop)
        # up's hop is always its own workers on loopback ports: a socket or TLS
        # in the config are for serve behind a separate Envoy.
        local = dataclasses.replace(
            config,
            gateway=dataclasses.replace(config.gateway, ext_proc_uds=None, ext_proc_tls=None),
        )
        bootstrap = render_bootstrap(
            local,
            ext_proc_host=ext_host,
            ext_proc_port=ext_port,
            ext_proc_ports=pool.worker_ports,
        )
        envoy.start(bootstrap, concurrency=workers)
        progress(f"waiting for Envoy /ready (up to {ready_timeout_s:g}s)...")
        try:
            await asyncio.to_thread(envoy.wait_ready, ready_timeout_s)
        except EnvoyError as exc:
            raise _envoy_start_error(exc, config) from None
        # Ready means both answer: Envoy's admin /ready and the ext_proc health service.
        try:
            await wait_until_serving(f"{ext_host}:{ext_port}", timeout_s=ready_timeout_s)
        except TimeoutError as exc:
            raise StartError(f"{exc}; give it longer with --ready-timeout") from None
        addresses = await asyncio.to_thread(envoy.listener_addresses)
        # Handlers first: a signal sent as soon as the ready message shows is ours.
        with SignalQueue(*STOP_SIGNALS, signal.SIGHUP) as received:
            _print_ready(
                config, addresses, echoes, ext_port, workers, envoy.admin_url, observability
            )
            code = await _run_until_stopped(received, envoy, pool, args.config)
        print("archway: stopping", file=sys.stderr, flush=True)
        envoy.stop()
        return code
    finally:
        stack.close()
        if pool is not None:
            # Envoy is gone: nothing routes to the workers, so no drain (SIGINT).
            await pool.stop(5.0, signal.SIGINT)


async def _run_until_stopped(
    received: SignalQueue, envoy: EnvoyProcess, pool: WorkerPool, path: Path
) -> int:
    """Serve until SIGINT or SIGTERM (0) or Envoy exits (1); SIGHUP reloads."""
    while True:
        sig = await received.get_within(_ENVOY_POLL_S)
        if sig is signal.SIGHUP:
            # Envoy's bootstrap stays; a config that needs another is refused by
            # each worker, which logs why.
            progress(f"SIGHUP: {len(pool.pids)} ext_proc worker(s) reload {path}")
            pool.signal_all(signal.SIGHUP)
        elif sig is not None:
            return 0
        if envoy.returncode is not None:
            print(f"archway: envoy exited with code {envoy.returncode}", file=sys.stderr)
            return 1


def _envoy_start_error(exc: Exception, config: Config) -> StartError:
    """Envoy's refusal as one line; a port it cannot bind names the key that sets it."""
    text = str(exc)
    match = _CANNOT_BIND.search(text)
    if match is None:
        return StartError(text.replace("\n", " "))
    host, port = match[1], int(match[2])
    keys = [f"listener {lst.name}'s port" for lst in config.listeners if lst.port == port]
    if config.gateway.admin_port == port:
        keys.append("archway.admin_port (Envoy's admin port)")
    where = " or ".join(keys) or "the config's ports"
    return StartError(
        f"port {port} is in use: Envoy cannot bind {host}:{port} (another archway up "
        f"may be running); stop what holds it, or change {where}"
    )


def _print_ready(
    config: Config,
    addresses: dict[str, tuple[str, int]],
    echoes: Sequence[object],
    ext_proc_port: int,
    workers: int,
    admin_url: str,
    observability: ProcessObservability,
) -> None:
    print("archway is up.", flush=True)
    for name, (host, port) in addresses.items():
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        print(f"  listener {name}: clients use base_url http://{shown}:{port}/v1")
    processes = "1 process" if workers == 1 else f"{workers} worker processes"
    print(
        f"  ext_proc server: 127.0.0.1:{ext_proc_port} ({processes}, gRPC health: SERVING); "
        f"envoy admin: {admin_url} (/ready: LIVE)"
    )
    if observability.endpoint is not None:
        print(f"  metrics: {observability.endpoint.url}")
    if observability.tracing_to is not None:
        print(f"  tracing: spans to {observability.tracing_to}")
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
    print("Ctrl-C stops everything; SIGHUP reloads the config.", flush=True)
