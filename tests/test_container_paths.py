"""The container paths users deploy, run without Docker or Kubernetes: the
wheel-installed ``archway`` (tests/installed.py), started the way the image,
docker-compose.yml and the rendered Deployment start it, behind Envoy on the
bootstrap they ship.

What is moved, and only that: every listen address and port goes to loopback
and a free port (the test machine's network is shared), file paths inside the
container map to the files their volumes hold, and the service names Envoy
resolves (``archway``, ``archway.archway.svc.cluster.local``) and the
providers' hosts become loopback addresses. The providers are recording fakes
(tests/fake_providers.py) on plain HTTP, reached with their real Host header.

The pod runs with a read-only root, as ``readOnlyRootFilesystem`` makes it,
when the machine allows user namespaces (``unshare``): only its /tmp volume is
writable. Where it does not, TMPDIR points at the volume instead, and the test
of the pod without that volume is skipped.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import yaml

from ext_proc.config import load_config
from ext_proc.deploy.bootstrap import EXT_PROC_CLUSTER
from ext_proc.deploy.envoy_process import EnvoyProcess
from ext_proc.deploy.kubernetes import KubernetesOptions, archway_manifests
from ext_proc.server.workers import READY_LINE
from tests.fake_providers import FakeProvider
from tests.installed import ROOT, Installation, Process, clean_env

DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
PIP_WHEEL = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
COMPOSE_FILE = ROOT / "docker-compose.yml"
IMAGE_GID = 10001
KEYS = {"OPENAI_API_KEY": "sk-openai-container-test", "ANTHROPIC_API_KEY": "sk-ant-container-test"}


# --- the Dockerfile, read as Docker would -----------------------------------------------


@dataclass(frozen=True)
class Instruction:
    name: str
    value: str

    def exec_form(self) -> list[str]:
        parsed = json.loads(self.value)
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), self
        return parsed


def dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    instructions: list[Instruction] = []
    logical = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        name, _, value = logical.partition(" ")
        instructions.append(Instruction(name.upper(), value.strip()))
        logical = ""
    assert not logical, "the Dockerfile ends inside a continued line"
    return instructions


def last(instructions: list[Instruction], name: str) -> Instruction:
    found = [i for i in instructions if i.name == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def image_command() -> list[str]:
    steps = dockerfile()
    return last(steps, "ENTRYPOINT").exec_form() + last(steps, "CMD").exec_form()


def test_the_image_runs_archway_unprivileged_as_the_pod_expects() -> None:
    steps = dockerfile()
    entrypoint = last(steps, "ENTRYPOINT").exec_form()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["archway"] and "archway" in scripts
    # Exec form: archway is PID 1 and gets SIGTERM itself (the drain depends on it).
    assert last(steps, "CMD").value.startswith("[")
    user = last(steps, "USER").value
    assert user not in ("root", "0")
    (useradd,) = [i for i in steps if i.name == "RUN" and "useradd" in i.value]
    words = shlex.split(useradd.value.split("useradd", 1)[1].split("&&")[0])
    assert words[-1] == user
    uid = int(words[words.index("--uid") + 1])
    # A fixed gid: Envoy joins it to reach the socket (compose's user, the pod's fsGroup).
    assert int(words[words.index("--gid") + 1]) == IMAGE_GID
    # The Deployment runs as that uid (runAsNonRoot checks a numeric one).
    config = load_config(EXAMPLE_CONFIG, environ=KEYS)
    manifests = archway_manifests(config, EXAMPLE_CONFIG.read_text(), KubernetesOptions())
    (deployment,) = [m for m in manifests if m["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid
    # The source is removed after the install; the server runs from elsewhere.
    assert last(steps, "WORKDIR").value != "/src"
    (install,) = [i for i in steps if i.name == "RUN" and "pip install" in i.value]
    assert "rm -rf /src" in install.value and "-e" not in shlex.split(install.value)


def test_what_the_dockerfile_copies_is_enough_to_build_the_wheel(
    installed_archway: Installation, tmp_path: Path
) -> None:
    """``COPY`` steps before ``pip install .``, replayed from the clean copy."""
    context = installed_archway.source
    src = tmp_path / "src"
    src.mkdir()
    for step in dockerfile():
        if step.name == "RUN" and "pip install" in step.value:
            break
        if step.name != "COPY":
            continue
        *sources, dest = shlex.split(step.value)
        for pattern in sources:
            for path in context.glob(pattern):
                target = src / dest / path.name if dest.endswith("/") else src / dest
                if path.is_dir():
                    shutil.copytree(path, target)
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target)
    # The test environment's pip and setuptools (the image's pip would fetch
    # setuptools for an isolated build; the backend is the same).
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "dist").glob("archway-*.whl"))


# --- shared: providers, Envoy, one request ---------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replace_value(argv: list[str], flag: str, value: str) -> list[str]:
    index = argv.index(flag)
    return [*argv[: index + 1], value, *argv[index + 2 :]]


@pytest.fixture
def providers() -> Iterator[dict[str, FakeProvider]]:
    with FakeProvider("openai") as openai_, FakeProvider("anthropic") as anthropic_:
        yield {"openai": openai_, "anthropic": anthropic_}


def on_loopback(
    bootstrap: dict[str, Any], ext_proc: int | Path, providers: dict[str, FakeProvider]
) -> dict[str, Any]:
    """The shipped bootstrap with its addresses moved to this machine's loopback;
    ``ext_proc`` is Archway's port, or where its socket's volume lies here."""
    bootstrap["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"] |= {"address": "127.0.0.1", "port_value": 0}
    for cluster in bootstrap["static_resources"]["clusters"]:
        (group,) = cluster["load_assignment"]["endpoints"]
        (lb_endpoint,) = group["lb_endpoints"]
        endpoint = lb_endpoint["endpoint"]
        if cluster["name"] == EXT_PROC_CLUSTER:
            if isinstance(ext_proc, Path):
                # A sidecar: the same socket, only its volume is elsewhere here.
                assert "socket_address" not in endpoint["address"], endpoint
                endpoint["address"]["pipe"]["path"] = str(ext_proc)
            else:
                endpoint["address"]["socket_address"] = {
                    "address": "127.0.0.1",
                    "port_value": ext_proc,
                }
            continue
        # A provider: its real Host (the endpoint's hostname) to a plain-HTTP fake.
        fake = providers[cluster["name"]]
        endpoint["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": fake.port}
        cluster["type"] = "STATIC"
        cluster.pop("dns_lookup_family", None)
        cluster.pop("transport_socket")
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3."
                "HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return bootstrap


def assert_routes_through(envoy: EnvoyProcess, providers: dict[str, FakeProvider]) -> None:
    """An OpenAI client and an Anthropic client, each through Envoy and Archway."""
    port = envoy.listener_addresses()["egress_traffic"][1]
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model="fast-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-archway-model"] == "openai/gpt-5.2"
    assert raw.headers["x-archway-provider"] == "openai"
    assert raw.headers["x-archway-resolution"] == "alias"
    assert raw.parse().choices[0].message.content
    (received,) = providers["openai"].requests
    assert received.path == "/v1/chat/completions"
    assert received.json()["model"] == "gpt-5.2"
    assert received.headers["authorization"] == f"Bearer {KEYS['OPENAI_API_KEY']}"
    assert received.headers["host"] == "api.openai.com"

    # An OpenAI client on an Anthropic model: translated there and back.
    raw = client.chat.completions.with_raw_response.create(
        model="creative-model", messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
    assert raw.parse().object == "chat.completion"
    (received,) = providers["anthropic"].requests
    assert received.path == "/v1/messages"
    assert received.headers["x-api-key"] == KEYS["ANTHROPIC_API_KEY"]

    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=20)
    message = claude.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
    )
    assert message.headers["x-archway-provider"] == "anthropic"
    assert message.parse().content


def start_envoy(
    bootstrap: dict[str, Any], tmp_path: Path, ext_proc: int | Path, providers: dict[str, Any]
) -> EnvoyProcess:
    envoy = EnvoyProcess(output=tmp_path / "envoy.log")
    envoy.start(yaml.safe_dump(on_loopback(bootstrap, ext_proc, providers), sort_keys=False))
    try:
        envoy.wait_ready(30.0)
    except Exception:
        envoy.stop()
        raise
    return envoy


def ready_port(process: Process) -> int:
    line = process.wait_for(lambda s: s.startswith(READY_LINE) and " unix:" not in s)
    return int(line.rsplit(":", 1)[1])


def ready_socket(process: Process) -> Path:
    line = process.wait_for(lambda s: s.startswith(f"{READY_LINE} unix:"))
    return Path(line.split(" unix:", 1)[1])


def _pipe_path(bootstrap: dict[str, Any]) -> str:
    (cluster,) = [
        c for c in bootstrap["static_resources"]["clusters"] if c["name"] == EXT_PROC_CLUSTER
    ]
    (group,) = cluster["load_assignment"]["endpoints"]
    (lb_endpoint,) = group["lb_endpoints"]
    return str(lb_endpoint["endpoint"]["address"]["pipe"]["path"])


# --- docker-compose ---------------------------------------------------------------------


def test_the_compose_setup_routes(
    installed_archway: Installation, providers: dict[str, FakeProvider], tmp_path: Path
) -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    archway = compose["services"]["archway"]
    envoy_service = compose["services"]["envoy"]
    assert archway["build"] == "."
    # No command of its own: the image's ENTRYPOINT and CMD run.
    assert "command" not in archway and "entrypoint" not in archway
    # A sidecar pair: Archway publishes and exposes nothing on the compose network;
    # the two meet in a named volume that holds the socket.
    assert not {"ports", "expose", "network_mode"} & set(archway)
    archway_volumes = dict(_volume(v) for v in archway["volumes"])
    envoy_volumes = dict(_volume(v) for v in envoy_service["volumes"])
    (shared,) = [v for v in archway_volumes if archway_volumes[v] in compose["volumes"]]
    assert envoy_volumes[shared] == archway_volumes[shared]
    # Envoy joins the group the image gives the socket (see the Dockerfile test).
    assert envoy_service["user"].split(":")[1] == str(IMAGE_GID)
    volume_dir = tmp_path / "archway-socket"
    volume_dir.mkdir()
    paths = {**archway_volumes, shared: str(volume_dir)}
    argv = [_in_volume(arg, paths) for arg in image_command()]
    assert str(ROOT / "examples" / "config.yaml") in argv
    assert "--address" not in argv, "Archway's TCP port stays on the container's loopback"
    argv[0] = str(installed_archway.archway)
    server = Process(
        # The TCP port is loopback-only but must not collide on a shared machine.
        [*argv, "--port", str(free_port()), "--metrics-port", "0"],
        cwd=tmp_path,
        env=clean_env(**KEYS),
        log=tmp_path / "archway.log",
    )
    try:
        socket_path = ready_socket(server)
        assert socket_path.parent == volume_dir
        assert socket_path.stat().st_mode & 0o777 == 0o660
        (bootstrap_volume,) = [v for v in envoy_service["volumes"] if "envoy.yaml" in v]
        mounted, host_path = _volume(bootstrap_volume)
        assert envoy_service["command"][envoy_service["command"].index("-c") + 1] == mounted
        assert "--disable-hot-restart" in envoy_service["command"]
        bootstrap = yaml.safe_load(Path(host_path).read_text(encoding="utf-8"))
        # Envoy's bootstrap names the socket where Envoy's mount of the volume puts it.
        assert _in_volume(_pipe_path(bootstrap), {shared: str(volume_dir)}) == str(socket_path)
        envoy = start_envoy(bootstrap, tmp_path, socket_path, providers)
        try:
            assert_routes_through(envoy, providers)
        finally:
            envoy.stop()
    finally:
        code = server.stop()
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr()


def _in_volume(arg: str, mounts: dict[str, str]) -> str:
    """A path inside a container as it lies here, through the mounts (container -> host)."""
    for inside, here in mounts.items():
        if arg == inside:
            return here
        if arg.startswith(inside.rstrip("/") + "/"):
            return here + arg[len(inside.rstrip("/")) :]
    return arg


def _volume(spec: str) -> tuple[str, str]:
    """A compose mount (``./host:/container[:ro]`` or ``volume:/container``):
    (container path, host path, or the named volume's name)."""
    host, container, *_ = spec.split(":")
    if not host.startswith((".", "/")):
        return container, host
    return container, str((COMPOSE_FILE.parent / host).resolve())


# --- plain Kubernetes -------------------------------------------------------------------


def _userns_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        timeout=10,
        check=False,
    )
    return probe.returncode == 0


USERNS = _userns_available()


@dataclass(frozen=True)
class Pod:
    """The rendered pod's Archway container (Envoy's sidecar), as files on this machine."""

    argv: list[str]
    env: dict[str, str]
    config_dir: Path
    """What the ConfigMap volume holds."""
    socket_dir: Path
    """What the socket's emptyDir is here: Archway writes its socket, Envoy connects."""
    metrics_port: int
    envoy_bootstrap: dict[str, Any]
    deployment: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        (archway,) = [
            c
            for c in self.deployment["spec"]["template"]["spec"]["containers"]
            if c["name"] == "archway"
        ]
        return archway

    @property
    def tmp_size(self) -> str | None:
        """The sizeLimit of the emptyDir on /tmp as a tmpfs size (``64Mi`` -> ``64m``);
        ``None`` when the Deployment mounts none there."""
        spec = self.deployment["spec"]["template"]["spec"]
        mounts = {m["name"]: m["mountPath"] for m in self.container["volumeMounts"]}
        volumes = [v for v in spec["volumes"] if mounts.get(v["name"]) == "/tmp"]
        if not volumes or "emptyDir" not in volumes[0]:
            return None
        limit = volumes[0]["emptyDir"]["sizeLimit"]
        assert limit.endswith("Mi"), limit
        return limit.removesuffix("Mi") + "m"


@pytest.fixture
def pod(installed_archway: Installation, tmp_path: Path) -> Pod:
    out = tmp_path / "k8s"
    rendered = subprocess.run(
        [
            str(installed_archway.archway),
            "render",
            str(ROOT / "examples" / "config.yaml"),
            "--kubernetes",
            "-o",
            str(out),
        ],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    archway = list(yaml.safe_load_all((out / "plain" / "archway.yaml").read_text()))
    envoy = list(yaml.safe_load_all((out / "plain" / "envoy.yaml").read_text()))
    deployment = _one(envoy, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == "archway"]
    (envoy_container,) = [c for c in spec["containers"] if c["name"] == "envoy"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # The ConfigMap volume, as the kubelet lays it out.
    config_dir = tmp_path / "configmap"
    config_dir.mkdir()
    (config_mount,) = [p for p, m in mounts.items() if "configMap" in volumes[m["name"]]]
    config_map = _one(archway, "ConfigMap")
    assert (
        volumes[mounts[config_mount]["name"]]["configMap"]["name"]
        == (config_map["metadata"]["name"])
    )
    for name, text in config_map["data"].items():
        (config_dir / name).write_text(text, encoding="utf-8")
    # The socket's emptyDir: mounted by both containers at the same path.
    bootstrap = yaml.safe_load(_one(envoy, "ConfigMap")["data"]["envoy.yaml"])
    socket_mount = str(Path(_pipe_path(bootstrap)).parent)
    assert "emptyDir" in volumes[mounts[socket_mount]["name"]]
    assert any(m["mountPath"] == socket_mount for m in envoy_container["volumeMounts"])
    socket_dir = tmp_path / "socket-emptydir"
    socket_dir.mkdir()
    # No `command`: the image's ENTRYPOINT with the Deployment's args.
    assert "command" not in container
    argv = [*last(dockerfile(), "ENTRYPOINT").exec_form(), *container["args"]]
    argv = [
        _in_volume(arg, {config_mount: str(config_dir), socket_mount: str(socket_dir)})
        for arg in argv
    ]
    argv[0] = str(installed_archway.archway)
    assert "--address" not in argv and "--port" not in argv, "ext_proc stays off the pod network"
    # The TCP port is on the pod's loopback, but must not collide on a shared machine.
    argv += ["--port", str(free_port())]
    metrics_port = free_port()
    argv = replace_value(argv, "--metrics-address", "127.0.0.1")
    argv = replace_value(argv, "--metrics-port", str(metrics_port))
    env = {e["name"]: KEYS[e["valueFrom"]["secretKeyRef"]["key"]] for e in container["env"]}
    return Pod(argv, env, config_dir, socket_dir, metrics_port, bootstrap, deployment)


def _one(manifests: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind]
    return found


def _sandboxed(pod: Pod, installation: Installation, *, tmp_volume: bool = True) -> list[str]:
    """The pod's command under a read-only root (a user and mount namespace):
    writable only a fresh tmpfs on /tmp, where the Deployment mounts its emptyDir
    (and ``tmp_volume`` leaves it)."""
    size = pod.tmp_size if tmp_volume else None
    if not USERNS:
        return pod.argv
    # The venv and the ConfigMap copy may sit under /tmp, which the emptyDir
    # hides: they are bound back in, read-only, through a holding mount.
    keep = [installation.venv, pod.config_dir]
    writable = [pod.socket_dir]
    hold = next(p for p in ("/mnt", "/srv", "/media", "/opt", "/home") if Path(p).is_dir())
    script = ["set -e"]
    if size is not None:
        script += [
            f"mount --rbind /tmp {hold}",
            f"mount -t tmpfs -o size={size},mode=1777 emptydir /tmp",
        ]
        for path in [*keep, *writable]:
            if path.is_relative_to("/tmp"):
                inside = path.relative_to("/tmp")
                script += [
                    f"mkdir -p {shlex.quote(str(path))}",
                    f"mount --bind {shlex.quote(f'{hold}/{inside}')} {shlex.quote(str(path))}",
                ]
                if path not in writable:
                    script.append(f"mount -o remount,bind,ro {shlex.quote(str(path))}")
        script.append(f"mount -o remount,bind,ro {hold}")
    # The socket's emptyDir stays writable, as the volume is in the pod.
    for path in writable:
        if not path.is_relative_to("/tmp") or size is None:
            script.append(f"mount --bind {shlex.quote(str(path))} {shlex.quote(str(path))}")
    script += ["mount -o remount,bind,ro /", 'exec "$@"']
    return [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--",
        "sh",
        "-c",
        "\n".join(script),
        "pod",
        *pod.argv,
    ]


def _ready_within(url: str, timeout_s: float) -> bool:
    """Whether ``url`` answers 200 within the time (Envoy's first health check of
    Archway lands a moment after Envoy itself is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as ready:
                if ready.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _pod_env(pod: Pod, tmp_path: Path) -> dict[str, str]:
    env = clean_env(**pod.env)
    env.pop("TMPDIR", None)
    if not USERNS:
        volume = tmp_path / "emptydir"
        volume.mkdir()
        env["TMPDIR"] = str(volume)
    return env


def test_the_plain_kubernetes_setup_routes_from_a_read_only_root(
    installed_archway: Installation,
    pod: Pod,
    providers: dict[str, FakeProvider],
    tmp_path: Path,
) -> None:
    container = pod.container
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    server = Process(
        _sandboxed(pod, installed_archway),
        cwd=Path("/"),
        env=_pod_env(pod, tmp_path),
        log=tmp_path / "archway.log",
    )
    try:
        socket_path = ready_socket(server)
        assert socket_path.parent == pod.socket_dir
        envoy = start_envoy(pod.envoy_bootstrap, tmp_path, socket_path, providers)
        try:
            # The kubelet's readiness question, which now includes Archway's
            # health as Envoy sees it through the socket.
            probes = envoy.listener_addresses()["kubernetes_probes"][1]
            assert _ready_within(f"http://127.0.0.1:{probes}/ready", 20.0)
            assert_routes_through(envoy, providers)
        finally:
            envoy.stop()
        # Scraped as Prometheus would, by the annotation's path: the workers'
        # counts, kept in the /tmp volume's multi-process directory.
        annotations = pod.deployment["spec"]["template"]["metadata"]["annotations"]
        url = f"http://127.0.0.1:{pod.metrics_port}{annotations['prometheus.io/path']}"
        with urllib.request.urlopen(url, timeout=5) as response:
            scraped = response.read().decode()
        assert "archway_requests_total{" in scraped
        assert 'provider="openai"' in scraped and 'outcome="routed"' in scraped
    finally:
        code = server.stop()
    assert code == 0, server.stderr()
    assert "Traceback" not in server.stderr()


@pytest.mark.skipif(not USERNS, reason="needs user namespaces (unshare) for a read-only root")
def test_without_its_tmp_volume_the_pod_says_what_it_needs(
    installed_archway: Installation, pod: Pod, tmp_path: Path
) -> None:
    result = subprocess.run(
        _sandboxed(pod, installed_archway, tmp_volume=False),
        cwd="/",
        env=_pod_env(pod, tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("archway:")]
    assert "cannot create the metrics directory" in line and "TMPDIR" in line
    assert not any(value in result.stderr + result.stdout for value in KEYS.values())
