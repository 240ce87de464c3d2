"""Kubernetes manifests rendered from an Archway config (``archway render --kubernetes``).

Two setups share one Archway workload (``archway_manifests``: ConfigMap,
Deployment, headless Service, HorizontalPodAutoscaler, PodDisruptionBudget):

- **plain** (``envoy_manifests``): Envoy as a Deployment running the rendered
  bootstrap from a ConfigMap. Its ext_proc cluster resolves the headless
  Archway Service, so Envoy sees every ready Archway pod, spreads its gRPC
  streams over them and health-checks each one. A ClusterIP Service would hand
  Envoy one virtual IP, and its long-lived HTTP/2 connection would pin every
  request to whichever pod it reached first, whatever the autoscaler adds.
- **envoy-gateway** (``gateway_manifests`` and ``route_manifests``): Envoy
  Gateway runs Envoy. A Gateway carries the listeners, an EnvoyExtensionPolicy
  sends every request through Archway (and every response's headers, so that
  Archway can translate a response back), and one HTTPRoute per upstream matches
  the ``x-archway-cluster`` header that Archway sets, forwarding to a Backend
  (with a BackendTLSPolicy for https upstreams).

Every function is pure: config in, manifests (plain dicts) out. No key lands in
a manifest: the config goes into a ConfigMap as written, with its ``$VAR``
references, and Archway's pod reads every referenced variable from a Secret
(``secretKeyRef``) that the operator creates with kubectl (``secret_command``).
A config that spells a key out is refused.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from ext_proc.config import Config, Listener
from ext_proc.config.types import ExtProcTls
from ext_proc.deploy.bootstrap import (
    EXT_PROC_CLUSTER,
    EXT_PROC_HEALTH_CHECK,
    bootstrap_dict,
    buffer_limit_bytes,
    distinct_upstreams,
    is_ip_address,
    message_timeout_s,
)
from ext_proc.headers import (
    CLIENT_DECISION_HEADERS,
    CREDENTIAL_HEADERS,
    ROUTE_HEADER,
    TRANSLATE_HEADER,
)
from ext_proc.routing.catalog import Upstream
from ext_proc.server.health import DEFAULT_DRAIN_S, EXT_PROC_SERVICE

__all__ = [
    "ARCHWAY_NAME",
    "DEFAULT_IMAGE",
    "DEFAULT_NAMESPACE",
    "ENVOY_IMAGE",
    "ENVOY_NAME",
    "ENVOY_PROBE_PORT",
    "GATEWAY_NAME",
    "METRICS_PORT_NAME",
    "SECRET_NAME",
    "SOCKET_PATH",
    "KubernetesOptions",
    "Manifest",
    "archway_config_map",
    "archway_manifests",
    "dump_manifests",
    "env_references",
    "envoy_bootstrap",
    "envoy_manifests",
    "gateway_manifests",
    "kubernetes_files",
    "route_manifests",
    "secret_command",
]

Manifest = dict[str, Any]

DEFAULT_NAMESPACE = "archway"
DEFAULT_IMAGE = "archway:latest"
"""Built from the repository's Dockerfile; no registry publishes it."""
ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
"""The Envoy release the bootstrap is written for (docker-compose runs the same)."""

ARCHWAY_NAME = "archway"
ENVOY_NAME = "archway-envoy"
GATEWAY_NAME = "archway"
SECRET_NAME = "archway-provider-keys"
TLS_SECRET_NAME = "archway-ext-proc-tls"
"""Setup (b) with ``ext_proc_tls``: the certificate and key (a ``kubernetes.io/tls`` Secret)."""
CA_CONFIG_MAP = "archway-ext-proc-ca"
"""Setup (b) with ``ext_proc_tls``: the CA Envoy Gateway trusts for the hop (key ``ca.crt``)."""
ENVOY_GATEWAY_NAMESPACE = "envoy-gateway-system"
"""Where Envoy Gateway runs its Envoy pods unless told otherwise."""
_TLS_VOLUME = "ext-proc-tls"

ENVOY_PROBE_PORT = 9902
"""Envoy's readiness endpoint for the kubelet (``GET /ready``). The admin API
stays on the pod's loopback: anyone who reaches it can stop Envoy."""

METRICS_PORT_NAME = "metrics"
TMP_DIR = "/tmp"
_TMP_SIZE_LIMIT = "64Mi"

SOCKET_DIR = "/run/archway"
SOCKET_PATH = f"{SOCKET_DIR}/ext_proc.sock"
"""Where the sidecar Archway serves and Envoy connects (the image's CMD uses the same)."""
SOCKET_VOLUME = "ext-proc-socket"

CONFIG_DIR = "/etc/archway"
CONFIG_FILE = "config.yaml"
BOOTSTRAP_DIR = "/etc/envoy"
BOOTSTRAP_FILE = "envoy.yaml"

_PART_OF = "archway"
_ENVOY_GATEWAY_CONTROLLER = "gateway.envoyproxy.io/gatewayclass-controller"
_GATEWAY_API = "gateway.networking.k8s.io"
_GATEWAY_API_VERSION = f"{_GATEWAY_API}/v1"
_ENVOY_GATEWAY_GROUP = "gateway.envoyproxy.io"
_ENVOY_GATEWAY_VERSION = f"{_ENVOY_GATEWAY_GROUP}/v1alpha1"
_CHECKSUM_ANNOTATION = "archway/{}-sha256"

# The image's own user (Dockerfile: useradd --uid 10001) and the Envoy image's.
_ARCHWAY_UID = 10001
_ENVOY_UID = 101
_ENVOY_CONCURRENCY = 2
_ENVOY_PRE_STOP_S = 10
"""Envoy exits on SIGTERM without draining; the pause lets Kubernetes take the
pod out of its Service before the signal comes, so new connections go elsewhere."""
_TERMINATION_GRACE_S = 30

_MIN_REPLICAS = 2
_MAX_REPLICAS = 10
_TARGET_CPU_PERCENT = 70

_T_HCM = (
    "type.googleapis.com/envoy.extensions.filters.network."
    "http_connection_manager.v3.HttpConnectionManager"
)
_T_HEALTH_CHECK = "type.googleapis.com/envoy.extensions.filters.http.health_check.v3.HealthCheck"
_T_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"

# The config loader's substitution syntax: `$$` is a literal `$`, `${VAR}` and `$VAR` refer.
_ENV_REFERENCE = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_NOT_IN_DNS_LABEL = re.compile(r"[^a-z0-9]+")
_MAX_DNS_LABEL = 63


@dataclass(frozen=True)
class KubernetesOptions:
    namespace: str = DEFAULT_NAMESPACE
    image: str = DEFAULT_IMAGE
    """Archway's container image."""
    envoy_gateway_namespace: str = ENVOY_GATEWAY_NAMESPACE
    """The namespace of Envoy Gateway's Envoy pods: the only pods setup (b)'s
    NetworkPolicy lets reach the ext_proc port."""

    def __post_init__(self) -> None:
        for what, value in (
            ("namespace", self.namespace),
            ("Envoy Gateway namespace", self.envoy_gateway_namespace),
        ):
            if len(value) > _MAX_DNS_LABEL or not _DNS_LABEL.fullmatch(value):
                raise ValueError(
                    f"{what} {value!r} is not a DNS label: lowercase letters, digits "
                    "and '-', at most 63 characters"
                )
        if not self.image or any(c.isspace() for c in self.image):
            raise ValueError(f"image {self.image!r} is not an image reference")

    @property
    def archway_host(self) -> str:
        """The Archway Service's DNS name, as Envoy resolves it from any namespace."""
        return f"{ARCHWAY_NAME}.{self.namespace}.svc.cluster.local"


# --- the config's environment ------------------------------------------------------


def env_references(config_text: str) -> tuple[str, ...]:
    """Every environment variable the config substitutes, in order of first use.

    Only values are substituted (never keys or comments), so only values count.
    """
    names: dict[str, None] = {}
    for value in _string_values(yaml.compose(config_text, Loader=yaml.SafeLoader)):
        for match in _ENV_REFERENCE.finditer(value):
            name = match.group(1) or match.group(2)
            if name:
                names.setdefault(name, None)
    return tuple(names)


def _string_values(node: yaml.Node | None) -> Iterator[str]:
    """String values in document order (depth first), each node once."""
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:  # an alias points back at a node already walked
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            stack.extend(reversed([value for _, value in current.value]))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(reversed(current.value))
        elif isinstance(current, yaml.ScalarNode) and current.tag == "tag:yaml.org,2002:str":
            yield current.value


def _refuse_spelled_out_keys(config: Config, config_text: str) -> None:
    """A ConfigMap is readable by anyone who may read the namespace's config:
    every credential must come from the environment, hence from the Secret."""
    problems: list[str] = []
    for provider in config.providers:
        if provider.access_key and not provider.access_key_ref:
            problems.append(f"{provider.model}: access_key is spelled out in the config")
        for name, value in provider.headers:
            if name.lower() in CREDENTIAL_HEADERS and value and value in config_text:
                problems.append(f"{provider.model}: header {name} is spelled out in the config")
    if problems:
        raise ValueError(
            "refusing to put a key into a Kubernetes manifest: "
            + "; ".join(problems)
            + "; write it as $VARIABLE and put the value in the Secret"
        )


def secret_command(config_text: str, options: KubernetesOptions) -> str | None:
    """The kubectl command that creates Archway's Secret from the operator's own
    environment (so no key is ever written to a file), or ``None`` when the
    config refers to no variable."""
    names = env_references(config_text)
    if not names:
        return None
    literals = " ".join(f'--from-literal={name}="${name}"' for name in names)
    return (
        f"kubectl -n {shlex.quote(options.namespace)} create secret generic {SECRET_NAME} "
        + literals
    )


# --- shared shapes -------------------------------------------------------------------


def _metadata(
    name: str, options: KubernetesOptions | None, component: str, app: str = ARCHWAY_NAME
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if options is not None:
        meta["namespace"] = options.namespace
    meta["labels"] = {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": _PART_OF,
    }
    return meta


def _selector(app: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": app}


def _checksum(kind: str, text: str) -> dict[str, str]:
    # A changed ConfigMap reaches running pods only through a restart: a changed
    # annotation makes `kubectl apply` roll them.
    return {_CHECKSUM_ANNOTATION.format(kind): hashlib.sha256(text.encode()).hexdigest()}


def _restricted_container() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _non_root_pod(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _seconds(value: float) -> str:
    return f"{value:g}"


# --- Archway -------------------------------------------------------------------------


def archway_manifests(
    config: Config, config_text: str, options: KubernetesOptions
) -> list[Manifest]:
    """The ext_proc server: its config, Deployment, headless Service, autoscaler
    and disruption budget. ``config_text`` is the config file as written."""
    _refuse_spelled_out_keys(config, config_text)
    port = config.gateway.ext_proc_port
    if port == 0:
        raise ValueError("archway.ext_proc_port is 0; Kubernetes needs a fixed port")
    return [
        archway_config_map(config, config_text, options),
        _archway_deployment(config, config_text, options),
        _archway_service(port, _metrics_port(config), options, tls=_hop_tls(config)),
        _ext_proc_network_policy(port, _metrics_port(config), options),
        _autoscaler(ARCHWAY_NAME, "ext-proc", options),
        _disruption_budget(ARCHWAY_NAME, "ext-proc", options),
    ]


def archway_config_map(config: Config, config_text: str, options: KubernetesOptions) -> Manifest:
    """Archway's config as written (its ``$VAR`` references, no keys)."""
    _refuse_spelled_out_keys(config, config_text)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(f"{ARCHWAY_NAME}-config", options, "ext-proc"),
        "data": {CONFIG_FILE: config_text},
    }


def _disruption_budget(name: str, component: str, options: KubernetesOptions) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(name, options, component, name),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector(name)}},
    }


def _archway_container(
    config: Config, config_text: str, options: KubernetesOptions, *, sidecar: bool
) -> dict[str, Any]:
    """Archway's container: its own pod's (setup (b), a port on the pod network)
    or Envoy's sidecar (setup (a), a socket in a volume the two share)."""
    port = config.gateway.ext_proc_port
    env = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": SECRET_NAME, "key": name}}}
        for name in env_references(config_text)
    ]
    metrics_port = _metrics_port(config)
    args = ["serve", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    if sidecar:
        # The TCP port stays on the pod's loopback; Envoy uses the socket.
        args += ["--uds", SOCKET_PATH]
    else:
        args += ["--address", "0.0.0.0", "--port", str(port)]
    args += ["--drain-seconds", _seconds(DEFAULT_DRAIN_S)]
    ports = [] if sidecar else [{"name": "grpc", "containerPort": port, "protocol": "TCP"}]
    if metrics_port is not None:
        # The config's metrics address is for a laptop (loopback); in a pod the
        # scraper comes from another pod, through the pod's own IP.
        args += ["--metrics-address", "0.0.0.0", "--metrics-port", str(metrics_port)]
        ports.append({"name": METRICS_PORT_NAME, "containerPort": metrics_port, "protocol": "TCP"})
    container: dict[str, Any] = {
        "name": ARCHWAY_NAME,
        "image": options.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "ports": ports,
    }
    if env:
        container["env"] = env
    if sidecar:
        # No probes of its own: the kubelet's gRPC probes need a port on the pod
        # network, the one thing the sidecar does without. Envoy's readiness
        # covers it (its /ready needs Archway healthy), and a crash restarts it.
        # It stops with Envoy: serving on until the pod has left the Service.
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": _ENVOY_PRE_STOP_S}}}
    else:
        if _hop_tls(config) is not None:
            # The kubelet's gRPC probes speak cleartext only: with TLS on the
            # port, the kubelet checks that it accepts connections, and Envoy
            # Gateway's gRPC health check (over TLS) sees a drain's NOT_SERVING.
            ready: dict[str, Any] = {"tcpSocket": {"port": port}}
            alive: dict[str, Any] = {"tcpSocket": {"port": port}}
        else:
            # Ready means routing: the ext_proc service's own health, which
            # says NOT_SERVING from the first moment of a drain. Alive means
            # the process answers at all.
            ready = {"grpc": {"port": port, "service": EXT_PROC_SERVICE}}
            alive = {"grpc": {"port": port}}
        container |= {
            "readinessProbe": {
                **ready,
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": 2,
            },
            # Slow enough that a drain (NOT_SERVING for DEFAULT_DRAIN_S) never
            # gets the container killed.
            "livenessProbe": {
                **alive,
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            },
        }
    mounts = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        # The root filesystem is read-only, and `serve` keeps its Prometheus
        # multi-process files in a fresh directory under TMPDIR (/tmp).
        {"name": "tmp", "mountPath": TMP_DIR},
    ]
    if sidecar:
        mounts.append({"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR})
    tls = _hop_tls(config)
    if tls is not None:
        # At the paths the config names, whatever directory they are in.
        mounts += [
            {"name": _TLS_VOLUME, "mountPath": tls.cert, "subPath": "tls.crt", "readOnly": True},
            {"name": _TLS_VOLUME, "mountPath": tls.key, "subPath": "tls.key", "readOnly": True},
        ]
    security = _restricted_container()
    if sidecar:
        # The pod runs as Envoy's user; this container as the image's own.
        security |= {"runAsUser": _ARCHWAY_UID, "runAsGroup": _ARCHWAY_UID}
    container |= {
        # One asyncio process uses one core at most; memory holds buffered
        # bodies (up to max_request_body_bytes each) of the requests in flight.
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "1", "memory": "1Gi"},
        },
        "securityContext": security,
        "volumeMounts": mounts,
    }
    return container


def _archway_volumes(*, tls: bool = False) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": f"{ARCHWAY_NAME}-config"}},
        # A few MiB per process; a killed process leaves its directory
        # behind until the pod goes, hence the headroom.
        {"name": "tmp", "emptyDir": {"sizeLimit": _TMP_SIZE_LIMIT}},
    ]
    if tls:
        volumes.append(
            {
                "name": _TLS_VOLUME,
                "secret": {"secretName": TLS_SECRET_NAME, "defaultMode": 0o440},
            }
        )
    return volumes


def _hop_tls(config: Config) -> ExtProcTls | None:
    return config.gateway.ext_proc_tls


def _archway_deployment(config: Config, config_text: str, options: KubernetesOptions) -> Manifest:
    container = _archway_container(config, config_text, options, sidecar=False)
    # No `replicas`: the autoscaler owns the count, and re-applying this file
    # must not reset it.
    return _deployment(
        _metadata(ARCHWAY_NAME, options, "ext-proc"),
        replicas=None,
        annotations=_checksum("config", config_text) | _scrape_annotations(_metrics_port(config)),
        uid=_ARCHWAY_UID,
        containers=[container],
        volumes=_archway_volumes(tls=_hop_tls(config) is not None),
    )


def _deployment(
    metadata: dict[str, Any],
    *,
    replicas: int | None,
    annotations: dict[str, str],
    uid: int,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    fs_group: int | None = None,
) -> Manifest:
    """A Deployment that rolls without ever dropping below its count, in a
    non-root pod that never talks to the Kubernetes API."""
    app = metadata["labels"]["app.kubernetes.io/name"]
    spec: dict[str, Any] = {} if replicas is None else {"replicas": replicas}
    spec["selector"] = {"matchLabels": _selector(app)}
    spec["strategy"] = {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod_security = _non_root_pod(uid)
    if fs_group is not None:
        pod_security["fsGroup"] = fs_group
    spec["template"] = {
        "metadata": {"labels": dict(metadata["labels"]), "annotations": annotations},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": _TERMINATION_GRACE_S,
            "securityContext": pod_security,
            "containers": containers,
            "volumes": volumes,
        },
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def _metrics_port(config: Config) -> int | None:
    port = config.gateway.metrics_port
    if port == 0:
        raise ValueError(
            "archway.metrics_port is 0; Kubernetes needs a fixed port to scrape "
            "(or metrics_port: off)"
        )
    return port


def _scrape_annotations(metrics_port: int | None) -> dict[str, str]:
    """The ``prometheus.io/*`` convention that Prometheus' stock Kubernetes pod
    discovery job (``kubernetes-pods``) follows."""
    if metrics_port is None:
        return {}
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(metrics_port),
        "prometheus.io/path": "/metrics",
    }


def _archway_service(
    port: int, metrics_port: int | None, options: KubernetesOptions, *, tls: ExtProcTls | None
) -> Manifest:
    grpc: dict[str, Any] = {"name": "grpc", "port": port, "targetPort": "grpc", "protocol": "TCP"}
    if tls is None:
        # Cleartext HTTP/2; with TLS, the BackendTLSPolicy says how to connect.
        grpc["appProtocol"] = "kubernetes.io/h2c"
    ports: list[dict[str, Any]] = [grpc]
    if metrics_port is not None:
        # Named, so that a ServiceMonitor (Prometheus Operator) can select it.
        ports.append(
            {
                "name": METRICS_PORT_NAME,
                "port": metrics_port,
                "targetPort": METRICS_PORT_NAME,
                "protocol": "TCP",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ARCHWAY_NAME, options, "ext-proc"),
        "spec": {
            # Headless: DNS answers with every ready pod, so Envoy balances and
            # health-checks pods rather than one virtual IP (see the module doc).
            "clusterIP": "None",
            "selector": _selector(ARCHWAY_NAME),
            "ports": ports,
        },
    }


def _ext_proc_network_policy(
    port: int, metrics_port: int | None, options: KubernetesOptions
) -> Manifest:
    """Only this Gateway's Envoy pods reach the ext_proc port: the hop carries
    the provider keys in its answers, and anything that reaches it can ask
    Archway to route. The metrics port stays open to scrapers."""
    envoy_pods = {
        "namespaceSelector": {
            "matchLabels": {"kubernetes.io/metadata.name": options.envoy_gateway_namespace}
        },
        "podSelector": {
            "matchLabels": {
                # Envoy Gateway labels each Envoy pod with the Gateway it serves.
                "gateway.envoyproxy.io/owning-gateway-name": GATEWAY_NAME,
                "gateway.envoyproxy.io/owning-gateway-namespace": options.namespace,
            }
        },
    }
    ingress: list[dict[str, Any]] = [
        {"from": [envoy_pods], "ports": [{"protocol": "TCP", "port": port}]}
    ]
    if metrics_port is not None:
        ingress.append({"ports": [{"protocol": "TCP", "port": metrics_port}]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(ARCHWAY_NAME, options, "ext-proc"),
        "spec": {
            "podSelector": {"matchLabels": _selector(ARCHWAY_NAME)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _autoscaler(name: str, component: str, options: KubernetesOptions) -> Manifest:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(name, options, component, name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": _MIN_REPLICAS,
            "maxReplicas": _MAX_REPLICAS,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": _TARGET_CPU_PERCENT,
                        },
                    },
                }
            ],
        },
    }


# --- setup (a): Envoy as a Deployment -----------------------------------------------


def envoy_bootstrap(config: Config, options: KubernetesOptions) -> dict[str, Any]:
    """The bootstrap Envoy runs in its pod: the usual one, pointed at the Archway
    sidecar's socket, with listeners on every interface and a probe listener added."""
    # Archway is the pod's other container, behind the socket in their shared emptyDir.
    data = bootstrap_dict(config, ext_proc_uds=SOCKET_PATH)
    resources = data["static_resources"]
    for listener, configured in zip(resources["listeners"], config.listeners, strict=True):
        if configured.port == 0:
            raise ValueError(
                f"listener {configured.name} has port 0; Kubernetes needs a fixed port"
            )
        # A loopback address in the config would be unreachable through the Service.
        listener["address"]["socket_address"]["address"] = "0.0.0.0"
    resources["listeners"].append(_probe_listener())
    return data


def _probe_listener() -> dict[str, Any]:
    # Answers 200 on /ready while Envoy serves and 503 once it drains
    # (admin /healthcheck/fail), without touching Archway or any provider.
    routes = [{"match": {"prefix": "/"}, "direct_response": {"status": 404}}]
    return {
        "name": "kubernetes_probes",
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": ENVOY_PROBE_PORT}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _T_HCM,
                            "stat_prefix": "kubernetes_probes",
                            "route_config": {
                                "name": "kubernetes_probes",
                                "virtual_hosts": [
                                    {"name": "probes", "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.health_check",
                                    "typed_config": {
                                        "@type": _T_HEALTH_CHECK,
                                        "pass_through_mode": False,
                                        # Ready only while Archway passes Envoy's
                                        # checks: it has no probe of its own.
                                        "cluster_min_healthy_percentages": {
                                            EXT_PROC_CLUSTER: {"value": 100.0}
                                        },
                                        "headers": [
                                            {"name": ":path", "string_match": {"exact": "/ready"}}
                                        ],
                                    },
                                },
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _T_ROUTER},
                                },
                            ],
                        },
                    }
                ]
            }
        ],
    }


def _listener_port_name(listener: Listener) -> str:
    # Port names are at most 15 characters and need a letter.
    return f"http-{listener.port}"


def envoy_manifests(config: Config, config_text: str, options: KubernetesOptions) -> list[Manifest]:
    """Setup (a): Envoy's bootstrap ConfigMap; a Deployment of pods that run
    Envoy with Archway beside it (a Unix socket in an emptyDir between them);
    Envoy's Service, the autoscaler and the disruption budget. No Service and no
    pod port reach Archway's ext_proc server."""
    bootstrap = _dump_yaml(envoy_bootstrap(config, options))
    archway = _archway_container(config, config_text, options, sidecar=True)
    ports = [
        {"name": _listener_port_name(lst), "containerPort": lst.port, "protocol": "TCP"}
        for lst in config.listeners
    ]
    ports.append({"name": "probes", "containerPort": ENVOY_PROBE_PORT, "protocol": "TCP"})
    ready = {"httpGet": {"path": "/ready", "port": "probes"}, "timeoutSeconds": 2}
    # Alive means Envoy accepts connections: /ready also fails while Archway
    # does, which must not restart Envoy.
    alive = {"tcpSocket": {"port": "probes"}, "timeoutSeconds": 2}
    container = {
        "name": "envoy",
        "image": ENVOY_IMAGE,
        # The binary itself: the image's entrypoint script would try to switch users.
        "command": ["envoy"],
        "args": [
            "-c",
            f"{BOOTSTRAP_DIR}/{BOOTSTRAP_FILE}",
            # Hot restart needs shared memory and is of no use in a pod.
            "--disable-hot-restart",
            "--log-level",
            "warning",
            # Without it Envoy starts a worker per CPU of the node, not of the pod.
            "--concurrency",
            str(_ENVOY_CONCURRENCY),
        ],
        "ports": ports,
        "readinessProbe": ready | {"periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": alive | {"periodSeconds": 10, "failureThreshold": 3},
        "lifecycle": {"preStop": {"sleep": {"seconds": _ENVOY_PRE_STOP_S}}},
        # Each request body is buffered whole (up to max_request_body_bytes) while
        # Archway decides, so memory scales with concurrent requests.
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": str(_ENVOY_CONCURRENCY), "memory": "1Gi"},
        },
        "securityContext": _restricted_container(),
        "volumeMounts": [
            {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
            {"name": "envoy-tmp", "mountPath": "/tmp"},
            {"name": SOCKET_VOLUME, "mountPath": SOCKET_DIR},
        ],
    }
    service_ports = [
        {
            "name": _listener_port_name(lst),
            "port": lst.port,
            "targetPort": _listener_port_name(lst),
            "protocol": "TCP",
        }
        for lst in config.listeners
    ]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(f"{ENVOY_NAME}-bootstrap", options, "proxy", ENVOY_NAME),
            "data": {BOOTSTRAP_FILE: bootstrap},
        },
        # No `replicas`: the autoscaler owns the count.
        _deployment(
            _metadata(ENVOY_NAME, options, "proxy", ENVOY_NAME),
            replicas=None,
            annotations=_checksum("bootstrap", bootstrap)
            | _checksum("config", config_text)
            | _scrape_annotations(_metrics_port(config)),
            uid=_ENVOY_UID,
            containers=[container, archway],
            volumes=[
                {"name": "bootstrap", "configMap": {"name": f"{ENVOY_NAME}-bootstrap"}},
                {"name": "envoy-tmp", "emptyDir": {}},
                # Memory-backed: it holds one socket file.
                {"name": SOCKET_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
                *_archway_volumes(tls=_hop_tls(config) is not None),
            ],
            # The socket volume is Archway's group's (setgid), which this puts
            # both containers in; the socket is 0660.
            fs_group=_ARCHWAY_UID,
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(ENVOY_NAME, options, "proxy", ENVOY_NAME),
            "spec": {
                "type": "ClusterIP",
                "selector": _selector(ENVOY_NAME),
                "ports": service_ports,
            },
        },
        _autoscaler(ENVOY_NAME, "proxy", options),
        _disruption_budget(ENVOY_NAME, "proxy", options),
    ]


# --- setup (b): Envoy Gateway --------------------------------------------------------


def _gateway_duration(seconds: float) -> str:
    """A Gateway API duration (``1h30m``, ``2s500ms``): no fractions, at most 5 digits a unit."""
    millis = round(seconds * 1000)
    if millis <= 0:
        return "0s"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, ms = divmod(rest, 1000)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s"), (ms, "ms")]
    return "".join(f"{value}{unit}" for value, unit in parts if value)


def _dns_label(text: str) -> str:
    """``text`` as a DNS label (``egress_traffic`` -> ``egress-traffic``); a long
    one keeps a hash of the original so that two names stay apart."""
    label = _NOT_IN_DNS_LABEL.sub("-", text.lower()).strip("-") or "x"
    if len(label) > _MAX_DNS_LABEL:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        label = label[: _MAX_DNS_LABEL - 9].rstrip("-") + "-" + digest
    return label


def _unique_labels(names: Sequence[str], what: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for name in names:
        label = _dns_label(name)
        clash = next((other for other, lbl in labels.items() if lbl == label), None)
        if clash is not None and clash != name:
            raise ValueError(f"{what} {clash!r} and {name!r} both become {label!r} in Kubernetes")
        labels[name] = label
    return labels


def _listener_sections(config: Config) -> dict[str, str]:
    for listener in config.listeners:
        if listener.port == 0:
            raise ValueError(f"listener {listener.name} has port 0; Kubernetes needs a fixed port")
    return _unique_labels([lst.name for lst in config.listeners], "listeners")


def _gateway_ref() -> dict[str, str]:
    return {"group": _GATEWAY_API, "kind": "Gateway", "name": GATEWAY_NAME}


def gateway_manifests(config: Config, options: KubernetesOptions) -> list[Manifest]:
    """Setup (b): the GatewayClass, the Gateway with the config's listeners, and
    the policies that make Envoy Gateway's Envoy behave as Archway's does."""
    gateway = config.gateway
    sections = _listener_sections(config)
    timing = EXT_PROC_HEALTH_CHECK
    ext_proc = {
        "backendRefs": [
            {"group": "", "kind": "Service", "name": ARCHWAY_NAME, "port": gateway.ext_proc_port}
        ],
        "backendSettings": {
            # The same gRPC health check as setup (a)'s bootstrap.
            "healthCheck": {
                "active": {
                    "type": "GRPC",
                    "grpc": {"service": EXT_PROC_SERVICE},
                    "interval": _gateway_duration(timing.interval_s),
                    "timeout": _gateway_duration(timing.timeout_s),
                    "unhealthyThreshold": timing.unhealthy_threshold,
                    "healthyThreshold": timing.healthy_threshold,
                }
            },
            # A rewritten body travels to Archway and back in one gRPC message.
            "connection": {"bufferLimit": str(buffer_limit_bytes(gateway))},
        },
        # As setup (a)'s routing filter: long enough for the router's own timeout.
        "messageTimeout": _gateway_duration(message_timeout_s(config)),
        "failOpen": gateway.failure_mode_allow,
        # Headers and the whole body (the model is in the body), and the response
        # headers: Envoy Gateway has one ext_proc filter and no per-route
        # override, so a translated request's response can only be switched on
        # from this stream, and Envoy honours a body-mode override only in answer
        # to a headers message. Untranslated responses cost one short round trip
        # and pass untouched; translated ones get their body translated back.
        "processingMode": {
            "request": {"body": "Buffered"},
            "response": {},
            "allowModeOverride": True,
        },
    }
    return [
        {
            "apiVersion": _GATEWAY_API_VERSION,
            "kind": "GatewayClass",
            "metadata": _metadata(GATEWAY_NAME, None, "gateway"),
            "spec": {"controllerName": _ENVOY_GATEWAY_CONTROLLER},
        },
        {
            "apiVersion": _GATEWAY_API_VERSION,
            "kind": "Gateway",
            "metadata": _metadata(GATEWAY_NAME, options, "gateway"),
            "spec": {
                "gatewayClassName": GATEWAY_NAME,
                "listeners": [
                    {
                        "name": sections[lst.name],
                        "protocol": "HTTP",
                        "port": lst.port,
                        "allowedRoutes": {"namespaces": {"from": "Same"}},
                    }
                    for lst in config.listeners
                ],
            },
        },
        {
            "apiVersion": _ENVOY_GATEWAY_VERSION,
            "kind": "ClientTrafficPolicy",
            "metadata": _metadata(GATEWAY_NAME, options, "gateway"),
            "spec": {
                "targetRefs": [_gateway_ref()],
                # Envoy Gateway buffers 32 KiB per connection by default: any larger
                # chat request would be a 413 once ext_proc buffers its body.
                "connection": {"bufferLimit": str(buffer_limit_bytes(gateway))},
            },
        },
        {
            "apiVersion": _ENVOY_GATEWAY_VERSION,
            "kind": "EnvoyExtensionPolicy",
            "metadata": _metadata(GATEWAY_NAME, options, "gateway"),
            "spec": {"targetRefs": [_gateway_ref()], "extProc": [ext_proc]},
        },
        *_hop_tls_policy(config, options),
    ]


def _hop_tls_policy(config: Config, options: KubernetesOptions) -> list[Manifest]:
    """With ``ext_proc_tls``: Envoy Gateway's Envoy speaks TLS to the Archway
    Service, trusting the CA in ``CA_CONFIG_MAP`` and checking the name."""
    tls = _hop_tls(config)
    if tls is None:
        return []
    hostname = (tls.server_name or options.archway_host).lower()
    if is_ip_address(hostname):
        raise ValueError(
            f"ext_proc_tls.server_name {hostname}: a BackendTLSPolicy verifies a DNS name, "
            "not an IP address"
        )
    return [
        {
            "apiVersion": _GATEWAY_API_VERSION,
            "kind": "BackendTLSPolicy",
            "metadata": _metadata(f"{ARCHWAY_NAME}-ext-proc", options, "gateway"),
            "spec": {
                "targetRefs": [
                    {"group": "", "kind": "Service", "name": ARCHWAY_NAME, "sectionName": "grpc"}
                ],
                "validation": {
                    "hostname": hostname,
                    "caCertificateRefs": [
                        {"group": "", "kind": "ConfigMap", "name": CA_CONFIG_MAP}
                    ],
                },
            },
        }
    ]


def route_manifests(config: Config, options: KubernetesOptions) -> list[Manifest]:
    """Setup (b)'s routing: per upstream a Backend (+ BackendTLSPolicy for https)
    and, per listener, an HTTPRoute matching the header Archway sets; and per
    listener one route without the header, so that every request matches a route
    and passes through Archway first."""
    sections = _listener_sections(config)
    upstreams = distinct_upstreams(config)
    cluster_labels = _unique_labels([u.cluster for u in upstreams], "clusters")
    manifests: list[Manifest] = []
    for upstream in upstreams:
        backend = f"{ARCHWAY_NAME}-{cluster_labels[upstream.cluster]}"
        manifests.append(_backend(backend, upstream, options))
        if upstream.tls:
            manifests.append(_backend_tls_policy(backend, upstream, options))
        for listener in config.listeners:
            manifests.append(
                _upstream_route(backend, upstream, listener, sections[listener.name], options)
            )
    for listener in config.listeners:
        manifests.append(_unrouted_route(sections[listener.name], options))
    return manifests


def _backend(name: str, upstream: Upstream, options: KubernetesOptions) -> Manifest:
    if is_ip_address(upstream.host):
        endpoint = {"ip": {"address": upstream.host, "port": upstream.port}}
    else:
        endpoint = {"fqdn": {"hostname": upstream.host.lower(), "port": upstream.port}}
    return {
        "apiVersion": _ENVOY_GATEWAY_VERSION,
        "kind": "Backend",
        "metadata": _metadata(name, options, "upstream"),
        "spec": {"endpoints": [endpoint]},
    }


def _backend_tls_policy(name: str, upstream: Upstream, options: KubernetesOptions) -> Manifest:
    if is_ip_address(upstream.host):
        raise ValueError(
            f"upstream {upstream.host}: a BackendTLSPolicy verifies a DNS name, not an IP address"
        )
    return {
        "apiVersion": _GATEWAY_API_VERSION,
        "kind": "BackendTLSPolicy",
        "metadata": _metadata(name, options, "upstream"),
        "spec": {
            "targetRefs": [{"group": _ENVOY_GATEWAY_GROUP, "kind": "Backend", "name": name}],
            # SNI and the certificate check both use the provider's host name.
            "validation": {
                "hostname": upstream.host.lower(),
                "wellKnownCACertificates": "System",
            },
        },
    }


def _decision_headers_filter() -> dict[str, Any]:
    # Envoy Gateway passes Envoy's %REQ(...)% formatters through, so the client
    # sees the decision that Archway set on the request, as in setup (a). The
    # translation header goes the same way, to the ext_proc filter only: the
    # route adds it before the filters see the response, Archway reads the
    # direction from it and removes it (an absent one stays absent).
    echoed = (*CLIENT_DECISION_HEADERS, TRANSLATE_HEADER)
    return {
        "type": "ResponseHeaderModifier",
        "responseHeaderModifier": {
            "set": [{"name": name, "value": f"%REQ({name})%"} for name in echoed]
        },
    }


def _upstream_route(
    backend: str,
    upstream: Upstream,
    listener: Listener,
    section: str,
    options: KubernetesOptions,
) -> Manifest:
    # Gateway API hostnames carry no port.
    hostname = urlsplit(f"//{upstream.host_header}").hostname or upstream.host
    return _http_route(
        f"{backend}-{section}",
        section,
        options,
        [
            {
                # More header matches win over fewer, so once Archway has set the
                # header and cleared the route cache, this rule beats the
                # listener's catch-all route.
                "matches": [
                    {
                        "path": {"type": "PathPrefix", "value": "/"},
                        "headers": [
                            {"type": "Exact", "name": ROUTE_HEADER, "value": upstream.cluster}
                        ],
                    }
                ],
                "filters": [
                    {"type": "URLRewrite", "urlRewrite": {"hostname": hostname}},
                    _decision_headers_filter(),
                ],
                "backendRefs": [
                    {
                        "group": _ENVOY_GATEWAY_GROUP,
                        "kind": "Backend",
                        "name": backend,
                        "port": upstream.port,
                    }
                ],
                "timeouts": {"request": _gateway_duration(listener.timeout_s)},
            }
        ],
    )


def _unrouted_route(section: str, options: KubernetesOptions) -> Manifest:
    # Envoy Gateway runs a policy's filters only for requests that match a route,
    # and a client's request carries no (trustworthy) x-archway-cluster yet. This
    # route has no backend: Archway either sets the header (and the request moves
    # to an upstream's route) or answers itself, so nothing is ever forwarded here.
    return _http_route(
        f"{GATEWAY_NAME}-{section}",
        section,
        options,
        [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}],
    )


def _http_route(
    name: str, section: str, options: KubernetesOptions, rules: list[dict[str, Any]]
) -> Manifest:
    """An HTTPRoute on one listener (``section``) of Archway's Gateway."""
    return {
        "apiVersion": _GATEWAY_API_VERSION,
        "kind": "HTTPRoute",
        "metadata": _metadata(name, options, "route"),
        "spec": {"parentRefs": [_parent_ref(section)], "rules": rules},
    }


def _parent_ref(section: str) -> dict[str, str]:
    return _gateway_ref() | {"sectionName": section}


# --- files ---------------------------------------------------------------------------


def kubernetes_files(
    config: Config, config_text: str, options: KubernetesOptions
) -> dict[str, list[Manifest]]:
    """Every manifest by the file it goes in, relative to the output directory.
    Each setup's directory is complete: ``kubectl apply -f DIR/plain/``."""
    return {
        "plain/archway.yaml": [archway_config_map(config, config_text, options)],
        "plain/envoy.yaml": envoy_manifests(config, config_text, options),
        "envoy-gateway/archway.yaml": archway_manifests(config, config_text, options),
        "envoy-gateway/gateway.yaml": gateway_manifests(config, options),
        "envoy-gateway/routes.yaml": route_manifests(config, options),
    }


class _ManifestDumper(yaml.SafeDumper):
    """Block style for multi-line strings, so a ConfigMap's file reads as a file."""

    def ignore_aliases(self, data: Any) -> bool:
        # Shared dicts (one probe for readiness and liveness) are written out in
        # full: anchors and aliases confuse readers and some tools.
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ManifestDumper.add_representer(str, _represent_str)


def _dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_ManifestDumper, sort_keys=False, width=4096)


def dump_manifests(manifests: Sequence[Manifest]) -> str:
    """Manifests as one multi-document YAML text; the same input, the same text."""
    header = "# Generated by `archway render --kubernetes`; edit the config, not this file.\n"
    return header + "".join("---\n" + _dump_yaml(m) for m in manifests)
