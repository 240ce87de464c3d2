"""Kubernetes manifests: ``deploy/kubernetes/`` stays what Archway renders for
``examples/config.yaml``, every manifest validates offline, and no key ever
lands in one.

Regenerate the committed manifests after changing the example config or the
renderers::

    python -c "from tests.test_kubernetes import regenerate; regenerate()"
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from ext_proc.cli import main
from ext_proc.config import Config, ConfigError, load_config, load_config_text
from ext_proc.deploy.bootstrap import (
    EXT_PROC_CLUSTER,
    EXT_PROC_HEALTH_CHECK,
    TRANSLATION_FILTER,
    buffer_limit_bytes,
)
from ext_proc.deploy.echo import EchoUpstream
from ext_proc.deploy.envoy_process import EnvoyProcess, validate_bootstrap
from ext_proc.deploy.kubernetes import (
    ARCHWAY_NAME,
    ENVOY_PROBE_PORT,
    SECRET_NAME,
    SOCKET_PATH,
    KubernetesOptions,
    Manifest,
    dump_manifests,
    env_references,
    envoy_bootstrap,
    kubernetes_files,
    secret_command,
)
from ext_proc.headers import ROUTE_HEADER, TRANSLATE_HEADER
from ext_proc.routing.catalog import upstream_for
from ext_proc.server.health import EXT_PROC_SERVICE
from tests.gateway import ServerThread
from tests.kubernetes_schemas import SCHEMAS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
DEPLOY_DIR = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"
"""The oldest Kubernetes the manifests promise to fit (native grpc probes and
the preStop sleep action are older); kubernetes-validate ships its schemas."""

KEYS = {
    "OPENAI_API_KEY": "sk-live-openai-NEVER-IN-A-MANIFEST",
    "ANTHROPIC_API_KEY": "sk-ant-live-NEVER-IN-A-MANIFEST",
}


def expected_files() -> dict[str, str]:
    # No environment: the manifests never hold keys, so they must not depend on them.
    config = load_config(EXAMPLE_CONFIG, environ={}, allow_missing_env=True)
    files = kubernetes_files(
        config, EXAMPLE_CONFIG.read_text(encoding="utf-8"), KubernetesOptions()
    )
    return {name: dump_manifests(manifests) for name, manifests in files.items()}


def regenerate() -> None:
    for name, text in expected_files().items():
        path = DEPLOY_DIR / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def committed_manifests() -> list[tuple[str, Manifest]]:
    return [
        (str(path.relative_to(DEPLOY_DIR)), doc)
        for path in sorted(DEPLOY_DIR.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    ]


def by_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in by_kind(manifests, kind) if name is None or m["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, [m["metadata"]["name"] for m in found])
    return found[0]


def render(config_text: str, environ: dict[str, str] | None = None, **options: Any) -> dict:
    config = load_config_text(config_text, environ=environ or {}, allow_missing_env=True)
    return kubernetes_files(config, config_text, KubernetesOptions(**options))


@pytest.fixture(scope="module")
def example() -> dict[str, list[Manifest]]:
    config = load_config(EXAMPLE_CONFIG, environ=KEYS)
    return kubernetes_files(config, EXAMPLE_CONFIG.read_text(encoding="utf-8"), KubernetesOptions())


def all_manifests(files: dict[str, list[Manifest]]) -> list[Manifest]:
    return [m for manifests in files.values() for m in manifests]


# --- the committed manifests ----------------------------------------------------------


def test_deploy_dir_is_up_to_date() -> None:
    expected = expected_files()
    committed = {
        str(p.relative_to(DEPLOY_DIR)): p.read_text(encoding="utf-8")
        for p in DEPLOY_DIR.rglob("*.yaml")
    }
    assert sorted(committed) == sorted(expected), "deploy/kubernetes has other files than rendered"
    for name, text in expected.items():
        assert committed[name] == text, f"deploy/kubernetes/{name} is stale; see this docstring"


def test_core_kinds_are_valid_kubernetes() -> None:
    checked = set()
    for _, manifest in committed_manifests():
        if (manifest["apiVersion"], manifest["kind"]) in SCHEMAS:
            continue
        # strict: an unknown field is an error, as `kubectl apply --validate=strict` makes it.
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
        checked.add(manifest["kind"])
    assert checked == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }


def test_the_core_validator_rejects_a_misspelt_field() -> None:
    (_, deployment), *_ = [(n, m) for n, m in committed_manifests() if m["kind"] == "Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_gateway_kinds_match_their_published_shape() -> None:
    checked = set()
    for _, manifest in committed_manifests():
        schema = SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
        if schema is not None:
            jsonschema.validate(manifest, schema)
            checked.add(manifest["kind"])
    assert checked == {kind for _, kind in SCHEMAS}


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        (
            "EnvoyExtensionPolicy",
            ("spec", "extProc", 0, "processingMode", "request", "body"),
            "All",
        ),
        ("EnvoyExtensionPolicy", ("spec", "extProc", 0, "messageTimeout"), "2.5s"),
        ("HTTPRoute", ("spec", "rules", 0, "backendRef"), []),
        ("Gateway", ("spec", "listeners", 0, "name"), "egress_traffic"),
    ],
)
def test_the_gateway_schemas_reject_what_the_api_server_would(
    kind: str, path: tuple[str | int, ...], bad: object
) -> None:
    manifest = next(m for _, m in committed_manifests() if m["kind"] == kind)
    target: Any = manifest
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = bad
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, SCHEMAS[(manifest["apiVersion"], kind)])


def test_the_plain_bootstrap_is_valid_for_envoy() -> None:
    (config_map,) = [
        m for n, m in committed_manifests() if n == "plain/envoy.yaml" and m["kind"] == "ConfigMap"
    ]
    validate_bootstrap(config_map["data"]["envoy.yaml"])


# --- secrets --------------------------------------------------------------------------


def test_no_key_appears_in_any_manifest(example: dict[str, list[Manifest]]) -> None:
    text = "".join(dump_manifests(manifests) for manifests in example.values())
    for key in KEYS.values():
        assert key not in text
    assert all(m["kind"] != "Secret" for m in all_manifests(example))


def test_archway_reads_every_config_variable_from_the_secret() -> None:
    text = """
listeners:
  egress_traffic: {address: 0.0.0.0, port: 12000, timeout: 30s}
llm_providers:
  - model: openai/gpt-5
    access_key: $OPENAI_API_KEY
    default: true
  - model: mycorp/llama
    base_url: ${MYCORP_URL}
    provider_interface: openai
    access_key: ${MYCORP_KEY}
    headers:
      Authorization: Bearer $MYCORP_TOKEN
      X-Note: costs $$5 per call
"""
    environ = {
        "OPENAI_API_KEY": "sk-a-secret",
        "MYCORP_URL": "https://llm.mycorp.example/v1",
        "MYCORP_KEY": "mycorp-secret",
        "MYCORP_TOKEN": "token-secret",
    }
    files = render(text, environ)
    deployment = only(files["envoy-gateway/archway.yaml"], "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {name: {"name": SECRET_NAME, "key": name} for name in environ}
    dumped = "".join(dump_manifests(m) for m in files.values())
    assert not any(value in dumped for value in environ.values())
    # The loader itself asks for exactly these variables.
    with pytest.raises(ConfigError) as caught:
        load_config_text(text, environ={})
    missing = set(re.findall(r"environment variable (\w+) is not set", str(caught.value)))
    assert missing == set(environ) == set(env_references(text))
    command = secret_command(text, KubernetesOptions())
    assert command is not None
    for name in environ:
        assert f'--from-literal={name}="${name}"' in command


def test_env_references_follow_the_loaders_syntax() -> None:
    text = (
        "# $IN_A_COMMENT\n"
        "a: {deep: [{deeper: $FIRST}]}\n"
        "b: ['x-${SECOND}-y', $$NOT_A_VAR, '$FIRST']\n"
        "$KEY_NOT_VALUE: 1\n"
        "c: &shared {d: $THIRD_1}\n"
        "e: *shared\n"
    )
    assert env_references(text) == ("FIRST", "SECOND", "THIRD_1")


@pytest.mark.parametrize(
    "provider",
    [
        "  - model: openai/gpt-5\n    access_key: sk-spelled-out-key\n    default: true\n",
        "  - model: openai/gpt-5\n    default: true\n    passthrough_auth: true\n"
        "    headers:\n      Authorization: Bearer sk-spelled-out-key\n",
    ],
)
def test_a_spelled_out_key_is_refused_without_being_shown(provider: str) -> None:
    text = "llm_providers:\n" + provider
    with pytest.raises(ValueError, match="spelled out") as caught:
        render(text)
    assert "sk-spelled-out-key" not in str(caught.value)


# --- setup (a): plain Envoy ------------------------------------------------------------


def test_archway_runs_probed_scaled_and_unprivileged(example: dict[str, list[Manifest]]) -> None:
    manifests = example["envoy-gateway/archway.yaml"]
    # Setup (a) shares only the config; its Archway runs in Envoy's pods.
    assert example["plain/archway.yaml"] == [only(manifests, "ConfigMap")]
    pod = only(manifests, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": 9002, "service": EXT_PROC_SERVICE}
    assert container["livenessProbe"]["grpc"] == {"port": 9002}
    assert {"requests", "limits"} <= container["resources"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # The pod keeps answering through its drain, and is killed only after it.
    drain = float(container["args"][container["args"].index("--drain-seconds") + 1])
    assert EXT_PROC_HEALTH_CHECK.notice_s < drain < pod["terminationGracePeriodSeconds"]
    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == ARCHWAY_NAME
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    service = only(manifests, "Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["port"] == 9002


def test_metrics_are_scrapable_from_other_pods(example: dict[str, list[Manifest]]) -> None:
    manifests = example["envoy-gateway/archway.yaml"]
    template = only(manifests, "Deployment")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--metrics-address") + 1] == "0.0.0.0"
    port = int(args[args.index("--metrics-port") + 1])
    assert port == load_config(EXAMPLE_CONFIG, environ=KEYS).gateway.metrics_port
    assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in container["ports"]
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    service_ports = {p["name"]: p for p in only(manifests, "Service")["spec"]["ports"]}
    assert service_ports["metrics"]["port"] == port
    assert service_ports["metrics"]["targetPort"] == "metrics"


def test_a_pod_without_metrics_exposes_none_and_a_free_port_is_refused() -> None:
    text = EXAMPLE_CONFIG.read_text() + "\narchway:\n  metrics_port: {}\n"
    files = render(text.format("off"))
    pod = only(files["envoy-gateway/archway.yaml"], "Deployment")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert "--metrics-port" not in container["args"]
    assert [p["name"] for p in container["ports"]] == ["grpc"]
    assert not any(a.startswith("prometheus.io/") for a in pod["metadata"]["annotations"])
    with pytest.raises(ValueError, match="metrics_port is 0"):
        render(text.format(0))


def test_archway_writes_only_to_its_tmp_volume(example: dict[str, list[Manifest]]) -> None:
    pod = only(example["envoy-gateway/archway.yaml"], "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    # serve's Prometheus multi-process directory goes under /tmp (TMPDIR unset).
    assert not mounts["/tmp"].get("readOnly", False)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")
    assert "env" not in container or not any(
        e["name"] in ("TMPDIR", "PROMETHEUS_MULTIPROC_DIR") for e in container["env"]
    )


def _sidecar_pod(files: dict[str, list[Manifest]]) -> dict[str, Any]:
    return only(files["plain/envoy.yaml"], "Deployment")["spec"]["template"]["spec"]


def test_envoy_reaches_archway_in_its_own_pod_through_a_socket(
    example: dict[str, list[Manifest]],
) -> None:
    bootstrap = yaml.safe_load(only(example["plain/envoy.yaml"], "ConfigMap")["data"]["envoy.yaml"])
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    ext_proc = clusters[EXT_PROC_CLUSTER]
    address = ext_proc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"pipe": {"path": SOCKET_PATH}}
    assert ext_proc["type"] == "STATIC"
    assert ext_proc["health_checks"][0]["grpc_health_check"]["service_name"] == EXT_PROC_SERVICE
    listeners = {lst["name"]: lst for lst in bootstrap["static_resources"]["listeners"]}
    assert listeners["egress_traffic"]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"

    pod = _sidecar_pod(example)
    envoy, archway = pod["containers"]
    assert (envoy["name"], archway["name"]) == ("envoy", ARCHWAY_NAME)
    # Both mount the socket's emptyDir where the bootstrap and the args name it.
    volumes = {v["name"]: v for v in pod["volumes"]}
    socket_dir = SOCKET_PATH.rsplit("/", 1)[0]
    for container in (envoy, archway):
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == socket_dir]
        assert "emptyDir" in volumes[mount["name"]]
    args = archway["args"]
    assert args[args.index("--uds") + 1] == SOCKET_PATH
    # The ext_proc server is on no pod port and behind no Service: only the
    # listeners, Envoy's probes and Archway's metrics are.
    assert "--address" not in args
    assert {p["name"] for p in archway["ports"]} == {"metrics"}
    assert {p["containerPort"] for p in envoy["ports"]} == {12000, ENVOY_PROBE_PORT}
    assert not any(
        m["kind"] == "Service" and m["metadata"]["name"] == ARCHWAY_NAME
        for manifests in (example["plain/archway.yaml"], example["plain/envoy.yaml"])
        for m in manifests
    )
    # The socket is 0660 in Archway's group: the pod's fsGroup puts Envoy in it.
    assert pod["securityContext"]["fsGroup"] == archway["securityContext"]["runAsGroup"]
    assert archway["securityContext"]["readOnlyRootFilesystem"] is True
    # Archway has no probe (the kubelet's gRPC probe needs a pod port); Envoy's
    # readiness needs Archway healthy instead, and its liveness does not.
    assert "readinessProbe" not in archway and "livenessProbe" not in archway
    probe_filter = yaml.safe_dump(listeners["kubernetes_probes"])
    assert "cluster_min_healthy_percentages" in probe_filter and EXT_PROC_CLUSTER in probe_filter
    assert "httpGet" not in envoy["livenessProbe"]
    # The pair scales together, and Archway stops with Envoy, not before it.
    hpa = only(example["plain/envoy.yaml"], "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "archway-envoy"
    assert archway["lifecycle"] == envoy["lifecycle"]


def test_namespace_and_image_options_reach_every_manifest() -> None:
    files = render(EXAMPLE_CONFIG.read_text(), namespace="llm", image="registry.example/archway:1")
    for manifest in all_manifests(files):
        if manifest["kind"] != "GatewayClass":
            assert manifest["metadata"]["namespace"] == "llm"
    pod = only(files["envoy-gateway/archway.yaml"], "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example/archway:1"
    assert _sidecar_pod(files)["containers"][1]["image"] == "registry.example/archway:1"
    with pytest.raises(ValueError, match="DNS label"):
        KubernetesOptions(namespace="Not_A_Namespace")


LOCAL_CONFIG = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 12000, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {upstream}
    access_key: $OPENAI_API_KEY
    default: true
"""


@pytest.fixture
def local_envoy(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Setup (a)'s bootstrap run by a real Envoy, its addresses moved to loopback:
    (client URL, probe URL)."""
    with EchoUpstream(name="openai") as upstream:
        text = LOCAL_CONFIG.format(upstream=upstream.base_url)
        config = load_config_text(text, environ={"OPENAI_API_KEY": "sk-test"})
        server = ServerThread(config)
        envoy = EnvoyProcess(output=tmp_path / "envoy.log")
        try:
            port = server.start()
            envoy.start(yaml.safe_dump(_on_loopback(config, port), sort_keys=False))
            envoy.wait_ready(30.0)
            addresses = envoy.listener_addresses()
            client = addresses["egress_traffic"][1]
            probes = addresses["kubernetes_probes"][1]
            yield f"http://127.0.0.1:{client}", f"http://127.0.0.1:{probes}"
        finally:
            envoy.stop()
            server.stop()


def _on_loopback(config: Config, ext_proc_port: int) -> dict[str, Any]:
    data = envoy_bootstrap(config, KubernetesOptions())
    data["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in data["static_resources"]["listeners"]:
        listener["address"]["socket_address"] |= {"address": "127.0.0.1", "port_value": 0}
    for cluster in data["static_resources"]["clusters"]:
        if cluster["name"] == EXT_PROC_CLUSTER:
            endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            endpoint["address"] = {
                "socket_address": {"address": "127.0.0.1", "port_value": ext_proc_port}
            }
    return data


def test_the_plain_bootstrap_serves_probes_and_routes(local_envoy: tuple[str, str]) -> None:
    client, probes = local_envoy
    with urllib.request.urlopen(probes + "/ready", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(probes + "/v1/chat/completions", timeout=5)
    assert caught.value.code == 404
    request = urllib.request.Request(
        client + "/v1/chat/completions",
        data=b'{"model": "gpt-5", "messages": []}',
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["x-archway-model"] == "openai/gpt-5"


# --- setup (b): Envoy Gateway ----------------------------------------------------------


def test_the_extension_policy_sends_headers_and_buffered_bodies_to_archway(
    example: dict[str, list[Manifest]],
) -> None:
    gateway = example["envoy-gateway/gateway.yaml"]
    policy = only(gateway, "EnvoyExtensionPolicy")
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "archway"}
    ]
    (ext_proc,) = policy["spec"]["extProc"]
    service = only(example["envoy-gateway/archway.yaml"], "Service")
    assert ext_proc["backendRefs"] == [
        {
            "group": "",
            "kind": "Service",
            "name": service["metadata"]["name"],
            "port": service["spec"]["ports"][0]["port"],
        }
    ]
    # Request headers and the whole body; response headers, so that Archway can
    # switch a translated response's body on (see the test with a real Envoy below).
    assert ext_proc["processingMode"] == {
        "request": {"body": "Buffered"},
        "response": {},
        "allowModeOverride": True,
    }
    assert ext_proc["failOpen"] is False
    active = ext_proc["backendSettings"]["healthCheck"]["active"]
    assert active["type"] == "GRPC" and active["grpc"] == {"service": EXT_PROC_SERVICE}
    limit = str(buffer_limit_bytes(load_config(EXAMPLE_CONFIG, environ=KEYS).gateway))
    assert only(gateway, "ClientTrafficPolicy")["spec"]["connection"]["bufferLimit"] == limit


_PROVIDERS = """
listeners:
  egress_traffic: {address: 0.0.0.0, port: 12000, timeout: 60s}
llm_providers:
  - model: openai/gpt-5
    access_key: $OPENAI_API_KEY
    default: true
"""
_PREFERENCE_ROUTING = """
  - model: openai/gpt-5-mini
    access_key: $OPENAI_API_KEY
    routing_preferences:
      - {{name: quick, description: short questions}}
router:
  model_path: {model_path}
  timeout: 8s
"""


@pytest.mark.parametrize(
    ("message_timeout", "router", "expected"),
    [
        # The router may take 8 s before the default model answers: Envoy waits 9 s.
        ("2s", True, "9s"),
        # A longer setting stands.
        ("12s", True, "12s"),
        # No preference routing: nothing waits on a router.
        ("2500ms", False, "2s500ms"),
    ],
)
def test_the_extension_policy_waits_longer_than_the_router(
    tmp_path: Path, message_timeout: str, router: bool, expected: str
) -> None:
    text = _PROVIDERS.lstrip("\n")
    if router:
        text += _PREFERENCE_ROUTING.format(model_path=tmp_path).lstrip("\n")
    text += f"archway:\n  message_timeout: {message_timeout}\n"
    files = render(text)
    (ext_proc,) = only(files["envoy-gateway/gateway.yaml"], "EnvoyExtensionPolicy")["spec"][
        "extProc"
    ]
    assert ext_proc["messageTimeout"] == expected
    # The plain setup's Envoy waits exactly as long.
    config_map = only(files["plain/envoy.yaml"], "ConfigMap")
    bootstrap = yaml.safe_load(config_map["data"]["envoy.yaml"])
    (routing,) = [
        f["typed_config"]
        for listener in bootstrap["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for hcm in chain["filters"]
        for f in hcm["typed_config"].get("http_filters", [])
        if f["name"] == "envoy.filters.http.ext_proc"
    ]
    assert _seconds(routing["message_timeout"]) == _seconds(expected)


def _seconds(duration: str) -> float:
    """Envoy's ``9.000s`` or the Gateway API's ``2s500ms``, in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([0-9.]+)(ms|h|m|s)", duration)
    assert "".join(f"{n}{u}" for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_every_upstream_cluster_has_a_route_on_archways_header(
    example: dict[str, list[Manifest]],
) -> None:
    routes = example["envoy-gateway/routes.yaml"]
    config = load_config(EXAMPLE_CONFIG, environ=KEYS)
    upstreams = {u.cluster: u for u in map(upstream_for, config.providers)}
    backends = {b["metadata"]["name"]: b for b in by_kind(routes, "Backend")}
    tls_targets = {
        p["spec"]["targetRefs"][0]["name"]: p["spec"]["validation"]["hostname"]
        for p in by_kind(routes, "BackendTLSPolicy")
    }
    routed: dict[str, str] = {}
    catch_all = []
    for route in by_kind(routes, "HTTPRoute"):
        (rule,) = route["spec"]["rules"]
        (match,) = rule["matches"]
        if "headers" not in match:
            catch_all.append(route)
            assert "backendRefs" not in rule
            continue
        (header,) = match["headers"]
        assert header["name"] == ROUTE_HEADER and header["type"] == "Exact"
        (backend_ref,) = rule["backendRefs"]
        routed[header["value"]] = backend_ref["name"]
        upstream = upstreams[header["value"]]
        endpoint = backends[backend_ref["name"]]["spec"]["endpoints"][0]["fqdn"]
        assert endpoint == {"hostname": upstream.host, "port": upstream.port}
        assert tls_targets[backend_ref["name"]] == upstream.host
        assert {"type": "URLRewrite", "urlRewrite": {"hostname": upstream.host}} in rule["filters"]
        assert rule["timeouts"] == {"request": "30s"}
    assert sorted(routed) == sorted(upstreams)
    # The catch-all route makes every request match, so ext_proc runs before routing.
    assert [r["spec"]["parentRefs"][0]["sectionName"] for r in catch_all] == ["egress-traffic"]


def test_plain_http_upstreams_get_no_tls_policy_and_names_stay_apart() -> None:
    text = """
listeners:
  egress_traffic: {address: 0.0.0.0, port: 12000, timeout: 90s}
llm_providers:
  - model: ollama/llama3
    base_url: http://ollama.models.svc:11434
    default: true
  - model: mycorp/model
    base_url: https://llm.mycorp.example/v1
    provider_interface: openai
    access_key: $MYCORP_KEY
"""
    routes = render(text)["envoy-gateway/routes.yaml"]
    tls = [p["spec"]["targetRefs"][0]["name"] for p in by_kind(routes, "BackendTLSPolicy")]
    backends = {
        b["metadata"]["name"]: b["spec"]["endpoints"][0] for b in by_kind(routes, "Backend")
    }
    assert len(backends) == 2 and len(tls) == 1
    (ollama,) = [name for name, ep in backends.items() if ep["fqdn"]["port"] == 11434]
    assert ollama not in tls
    names = [(m["kind"], m["metadata"]["name"]) for m in routes]
    assert len(names) == len(set(names))
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) for _, n in names)
    timeouts = {
        r["spec"]["rules"][0].get("timeouts", {}).get("request")
        for r in routes
        if r["kind"] == "HTTPRoute"
    }
    assert timeouts == {"1m30s", None}
    for manifest in routes:
        jsonschema.validate(manifest, SCHEMAS[(manifest["apiVersion"], manifest["kind"])])


# --- the ext_proc hop of setup (b) -------------------------------------------------------


def test_only_envoy_gateways_envoy_pods_reach_the_ext_proc_port(
    example: dict[str, list[Manifest]],
) -> None:
    archway = example["envoy-gateway/archway.yaml"]
    policy = only(archway, "NetworkPolicy")
    deployment = only(archway, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    ext_proc, metrics = policy["spec"]["ingress"]
    (peer,) = ext_proc["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "envoy-gateway-system"
    }
    gateway = only(example["envoy-gateway/gateway.yaml"], "Gateway")
    assert peer["podSelector"]["matchLabels"] == {
        "gateway.envoyproxy.io/owning-gateway-name": gateway["metadata"]["name"],
        "gateway.envoyproxy.io/owning-gateway-namespace": gateway["metadata"]["namespace"],
    }
    service = only(archway, "Service")
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert ext_proc["ports"] == [{"protocol": "TCP", "port": grpc["port"]}]
    # Scrapers come from anywhere; they reach only the metrics port.
    scraped = next(p for p in service["spec"]["ports"] if p["name"] == "metrics")
    assert metrics == {"ports": [{"protocol": "TCP", "port": scraped["port"]}]}
    custom = render(
        "llm_providers:\n  - model: openai/gpt-5\n    access_key: $K\n    default: true\n",
        envoy_gateway_namespace="gateways",
    )
    peer = only(custom["envoy-gateway/archway.yaml"], "NetworkPolicy")["spec"]["ingress"][0]
    assert peer["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "gateways"
    }


_TLS_HOP = """
llm_providers:
  - model: openai/gpt-5
    access_key: $OPENAI_API_KEY
    default: true
archway:
  ext_proc_tls:
    cert: /etc/archway/hop/server.pem
    key: /etc/archway/hop/server.key
"""


def test_tls_on_the_hop_renders_the_backend_tls_policy_and_mounts_the_key() -> None:
    files = render(_TLS_HOP)
    archway, gateway = files["envoy-gateway/archway.yaml"], files["envoy-gateway/gateway.yaml"]
    policy = only(gateway, "BackendTLSPolicy")
    service = only(archway, "Service")
    assert policy["spec"]["targetRefs"] == [
        {"group": "", "kind": "Service", "name": service["metadata"]["name"], "sectionName": "grpc"}
    ]
    assert policy["spec"]["validation"] == {
        "hostname": "archway.archway.svc.cluster.local",
        "caCertificateRefs": [{"group": "", "kind": "ConfigMap", "name": "archway-ext-proc-ca"}],
    }
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert "appProtocol" not in grpc  # h2c would tell Envoy Gateway to skip TLS
    pod = only(archway, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/archway/hop/server.pem"]["subPath"] == "tls.crt"
    assert mounts["/etc/archway/hop/server.key"]["subPath"] == "tls.key"
    volume = next(
        v for v in pod["volumes"] if v["name"] == mounts["/etc/archway/hop/server.pem"]["name"]
    )
    assert volume["secret"]["secretName"] == "archway-ext-proc-tls"
    # The kubelet's gRPC probe has no TLS.
    assert "tcpSocket" in container["readinessProbe"] and "grpc" not in container["readinessProbe"]
    for manifest in [*archway, *gateway]:
        schema = SCHEMAS.get((manifest["apiVersion"], manifest["kind"]))
        if schema is not None:
            jsonschema.validate(manifest, schema)
        else:
            kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    # Without TLS: cleartext h2c and no policy for the hop.
    plain = render(_TLS_HOP.split("archway:")[0])
    assert not by_kind(plain["envoy-gateway/gateway.yaml"], "BackendTLSPolicy")


# --- the command line ------------------------------------------------------------------


def test_render_kubernetes_writes_both_setups(tmp_path: Path, capsys, monkeypatch) -> None:
    for name in KEYS:
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "k8s"
    assert main(["render", str(EXAMPLE_CONFIG), "--kubernetes", "-o", str(out)]) == 0
    written = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*.yaml")}
    assert written == expected_files()
    printed = capsys.readouterr().out
    assert "create secret generic archway-provider-keys" in printed
    assert '--from-literal=OPENAI_API_KEY="$OPENAI_API_KEY"' in printed


def test_render_kubernetes_needs_a_directory_and_refuses_spelled_out_keys(
    tmp_path: Path, capsys
) -> None:
    with pytest.raises(SystemExit, match="-o DIR"):
        main(["render", str(EXAMPLE_CONFIG), "--kubernetes"])
    with pytest.raises(SystemExit, match="--kubernetes"):
        main(["render", str(EXAMPLE_CONFIG), "--namespace", "x"])
    demo = ROOT / "examples" / "demo.yaml"
    assert main(["render", str(demo), "--kubernetes", "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "spelled out" in err and "demo-openai-key" not in err
    assert not list(tmp_path.iterdir())


# --- setup (b)'s routing model, run by a real Envoy ---------------------------------------

TWO_UPSTREAMS = """
listeners:
  egress_traffic: {{address: 127.0.0.1, port: 12000, timeout: 5s}}
llm_providers:
  - model: openai/gpt-5
    base_url: {openai}
    access_key: $OPENAI_API_KEY
    default: true
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: $ANTHROPIC_API_KEY
archway:
  admin_port: 0
"""
TWO_KEYS = {"OPENAI_API_KEY": "sk-openai-test", "ANTHROPIC_API_KEY": "sk-ant-test"}


def _envoy_routes_from_http_routes(routes: list[Manifest]) -> list[dict[str, Any]]:
    """The rendered HTTPRoutes as plain Envoy routes, the way a Gateway API
    implementation orders them: rules with more header matches first."""
    translated = []
    for route in by_kind(routes, "HTTPRoute"):
        (rule,) = route["spec"]["rules"]
        (match,) = rule["matches"]
        if "backendRefs" not in rule:
            translated.append({"match": {"prefix": "/"}, "direct_response": {"status": 500}})
            continue
        (header,) = match["headers"]
        filters = {f["type"]: f for f in rule["filters"]}
        echo = filters["ResponseHeaderModifier"]["responseHeaderModifier"]["set"]
        translated.append(
            {
                "match": {
                    "prefix": match["path"]["value"],
                    "headers": [
                        {"name": header["name"], "string_match": {"exact": header["value"]}}
                    ],
                },
                "route": {
                    # Archway's header names the bootstrap's cluster for that upstream.
                    "cluster": header["value"],
                    "timeout": rule["timeouts"]["request"],
                    "host_rewrite_literal": filters["URLRewrite"]["urlRewrite"]["hostname"],
                },
                "response_headers_to_add": [
                    {
                        "header": {"key": h["name"], "value": h["value"]},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                    for h in echo
                ],
            }
        )
    return sorted(translated, key=lambda r: -len(r["match"].get("headers", [])))


def _ext_proc_filter_from_policy(policy: Manifest, http_filters: list[dict[str, Any]]) -> None:
    """Envoy Gateway's one ext_proc filter in place of the bootstrap's two: the
    routing filter with the EnvoyExtensionPolicy's processing mode, and no
    translation filter (Envoy Gateway has no per-route one)."""
    (ext_proc,) = policy["spec"]["extProc"]
    mode = ext_proc["processingMode"]
    body_modes = {"Buffered": "BUFFERED", "Streamed": "STREAMED", None: "NONE"}
    processing_mode = {
        "request_header_mode": "SEND" if "request" in mode else "SKIP",
        "request_body_mode": body_modes[mode.get("request", {}).get("body")],
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND" if "response" in mode else "SKIP",
        "response_body_mode": body_modes[mode.get("response", {}).get("body")],
        "response_trailer_mode": "SKIP",
    }
    http_filters[:] = [f for f in http_filters if f["name"] != TRANSLATION_FILTER]
    (routing,) = [f for f in http_filters if f["name"] == "envoy.filters.http.ext_proc"]
    routing["typed_config"]["processing_mode"] = processing_mode
    routing["typed_config"]["allow_mode_override"] = mode["allowModeOverride"]


def test_the_header_routes_route_after_archway_decides(tmp_path: Path) -> None:
    from ext_proc.deploy.bootstrap import bootstrap_dict

    with EchoUpstream(name="openai") as openai, EchoUpstream(name="anthropic") as anthropic:
        text = TWO_UPSTREAMS.format(openai=openai.base_url, anthropic=anthropic.base_url)
        config = load_config_text(text, environ=TWO_KEYS)
        files = kubernetes_files(config, text, KubernetesOptions())
        routes = files["envoy-gateway/routes.yaml"]
        policy = only(files["envoy-gateway/gateway.yaml"], "EnvoyExtensionPolicy")
        server = ServerThread(config)
        envoy = EnvoyProcess(output=tmp_path / "envoy.log")
        try:
            port = server.start()
            # Envoy Gateway's filter sends headers, then body: no Lua filter there.
            two = dataclasses.replace(
                config, gateway=dataclasses.replace(config.gateway, ext_proc_messages="two")
            )
            data = bootstrap_dict(two, ext_proc_host="127.0.0.1", ext_proc_port=port)
            (listener,) = data["static_resources"]["listeners"]
            listener["address"]["socket_address"]["port_value"] = 0
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            _ext_proc_filter_from_policy(policy, hcm["http_filters"])
            hcm["route_config"] = {
                "name": "gateway_api",
                "virtual_hosts": [
                    {
                        "name": "gateway_api",
                        "domains": ["*"],
                        "routes": _envoy_routes_from_http_routes(routes),
                    }
                ],
            }
            envoy.start(yaml.safe_dump(data, sort_keys=False))
            envoy.wait_ready(30.0)
            ((_, client_port),) = envoy.listener_addresses().values()
            url = f"http://127.0.0.1:{client_port}"

            # A client's own x-archway-cluster is stripped before Archway sets the real one.
            status, headers, body = _post(
                url,
                b'{"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}',
                {ROUTE_HEADER: "openai"},
            )
            assert status == 200
            assert headers["x-archway-model"] == "anthropic/claude-sonnet-4-5"
            assert "x-archway-route" not in headers
            # Translated to Anthropic's own API (issue 4)...
            assert [r.path for r in anthropic.requests] == ["/v1/messages"]
            assert anthropic.requests[0].headers["x-api-key"] == "sk-ant-test"
            assert anthropic.requests[0].headers["host"] == "127.0.0.1"
            assert openai.requests == []
            # ...and the answer translated back: the OpenAI client gets a chat completion.
            completion = json.loads(body)
            assert completion["object"] == "chat.completion", completion
            (choice,) = completion["choices"]
            assert choice["message"]["role"] == "assistant"
            assert "echo from anthropic: POST /v1/messages" in choice["message"]["content"]
            assert headers["content-type"].startswith("application/json")
            assert int(headers["content-length"]) == len(body)
            assert TRANSLATE_HEADER not in headers

            status, headers, body = _post(
                url, b'{"model": "gpt-5", "stream": true, "messages": []}'
            )
            # An untranslated stream passes as the provider sent it.
            assert status == 200 and headers["x-archway-provider"] == "openai"
            assert TRANSLATE_HEADER not in headers
            assert body.startswith(b"data: ") and body.rstrip().endswith(b"data: [DONE]")
            openai.clear()

            status, headers, _ = _post(url, b'{"model": "gpt-5"}')
            assert status == 200 and headers["x-archway-provider"] == "openai"
            # Answered by Archway itself while on the catch-all route.
            status, _, body = _post(url, b'{"model": "nope"}')
            assert status == 400 and b"model_not_found" in body
            assert len(openai.requests) == len(anthropic.requests) == 1
        finally:
            envoy.stop()
            server.stop()


def _post(
    url: str, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(
        url + "/v1/chat/completions",
        data=body,
        headers={"content-type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
