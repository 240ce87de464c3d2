"""``envoy/envoy.yaml`` (docker-compose's Envoy bootstrap) must stay what Archway
renders for ``examples/config.yaml``.

Regenerate it after changing the example config or the bootstrap renderer::

    python -c "from tests.test_envoy_dir import regenerate; regenerate()"
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ext_proc.config import load_config
from ext_proc.deploy.bootstrap import EXT_PROC_CLUSTER, render_bootstrap
from ext_proc.deploy.envoy_process import validate_bootstrap

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = ROOT / "examples" / "config.yaml"
COMPOSE_BOOTSTRAP = ROOT / "envoy" / "envoy.yaml"
# Where the socket volume both services mount in docker-compose.yml holds
# Archway's socket (the image's CMD serves it).
EXT_PROC_SOCKET = "/run/archway/ext_proc.sock"


def expected_bootstrap() -> str:
    # No environment: the bootstrap never holds keys, so it must not depend on them.
    config = load_config(EXAMPLE_CONFIG, environ={}, allow_missing_env=True)
    return render_bootstrap(config, ext_proc_uds=EXT_PROC_SOCKET)


def regenerate() -> None:
    COMPOSE_BOOTSTRAP.write_text(expected_bootstrap(), encoding="utf-8")


def test_compose_bootstrap_is_up_to_date() -> None:
    assert COMPOSE_BOOTSTRAP.read_text(encoding="utf-8") == expected_bootstrap(), (
        "envoy/envoy.yaml is stale; regenerate it (see this module's docstring)"
    )


def test_compose_bootstrap_is_valid_for_envoy() -> None:
    validate_bootstrap(COMPOSE_BOOTSTRAP.read_text(encoding="utf-8"))


def test_compose_bootstrap_serves_other_containers_only_where_meant() -> None:
    data = yaml.safe_load(COMPOSE_BOOTSTRAP.read_text(encoding="utf-8"))
    (listener,) = data["static_resources"]["listeners"]
    # Published by compose, so it must accept connections from outside the container.
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 12000}
    # The admin API can stop Envoy: it stays on the container's loopback.
    assert data["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    clusters = {c["name"]: c for c in data["static_resources"]["clusters"]}
    endpoint = clusters[EXT_PROC_CLUSTER]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    # The ext_proc hop never touches the compose network: a shared Unix socket.
    assert endpoint["endpoint"]["address"] == {"pipe": {"path": EXT_PROC_SOCKET}}
    assert clusters[EXT_PROC_CLUSTER]["type"] == "STATIC"
