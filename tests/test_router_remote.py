"""The remote backend: Arch-Router's prompt to an OpenAI-compatible endpoint, and
the factory that picks backends from the config."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ext_proc.apis import WireAPI
from ext_proc.config import ConfigError, load_config, load_config_text
from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER, ROUTE_TIMEOUT
from ext_proc.router.factory import build_router
from ext_proc.router.remote import RemoteArchRouter
from tests.tiny_qwen import EXAMPLE


class FakeArchRouterServer(ThreadingHTTPServer):
    answer = '```json\n{"route": "creative writing"}\n```'
    status = 200
    received: list[tuple[str, dict, dict]]


class Handler(BaseHTTPRequestHandler):
    server: FakeArchRouterServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.server.received.append((self.path, headers, body))
        payload = json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": self.server.answer}}]}
        ).encode()
        self.send_response(self.server.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FakeArchRouterServer]:
    srv = FakeArchRouterServer(("127.0.0.1", 0), Handler)
    srv.received = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def write_config(tmp_path: Path, endpoint: str, timeout: str = "2s") -> Path:
    routes = "\n".join(
        f"      - name: {r['name']}\n        description: {r['description']}"
        for r in EXAMPLE["routes"]
    )
    path = tmp_path / "config.yaml"
    path.write_text(
        "llm_providers:\n"
        "  - model: openai/gpt-5.2\n    access_key: k\n    default: true\n"
        "  - model: anthropic/claude-sonnet-4-5\n    access_key: k\n"
        f"    routing_preferences:\n{routes}\n"
        f"router:\n  endpoint: {endpoint}\n  model: arch-router\n  access_key: rk\n"
        f"  timeout: {timeout}\n"
    )
    return path


def decide(tmp_path: Path, endpoint: str, timeout: str = "2s") -> str:
    router = build_router(load_config(write_config(tmp_path, endpoint, timeout)))
    assert router is not None and isinstance(router.backend, RemoteArchRouter)
    body = {"messages": EXAMPLE["conversation"]}

    async def main() -> str:
        try:
            return (await router.decide(body, WireAPI.OPENAI)).route
        finally:
            await router.close()

    return asyncio.run(main())


def test_remote_router_posts_the_documented_prompt(tmp_path: Path, server) -> None:
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    assert decide(tmp_path, endpoint) == "creative writing"
    ((path, headers, body),) = server.received
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer rk"
    assert body["model"] == "arch-router" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": EXAMPLE["prompt"]}]


def test_remote_router_trouble_falls_back(tmp_path: Path, server) -> None:
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.answer = '{"route": "other"}'
    assert decide(tmp_path, endpoint) == ROUTE_OTHER
    server.status = 500
    assert decide(tmp_path, endpoint) == ROUTE_ERROR


def test_unreachable_or_slow_endpoint_is_error_or_timeout(tmp_path: Path) -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as silent:
        # Accepts connections (the backlog) but never answers.
        endpoint = f"http://127.0.0.1:{silent.server_address[1]}/v1"
        assert decide(tmp_path, endpoint, timeout="200ms") == ROUTE_TIMEOUT
    assert decide(tmp_path, endpoint) == ROUTE_ERROR


def test_no_router_without_a_router_section_or_routes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("llm_providers:\n  - model: openai/gpt-5.2\n    access_key: k\n")
    assert build_router(load_config(path)) is None
    path.write_text(path.read_text() + f"router:\n  model_path: {tmp_path}\n")
    assert build_router(load_config(path)) is None


@pytest.mark.parametrize("reason", [ROUTE_OTHER, ROUTE_ERROR, ROUTE_TIMEOUT])
def test_config_reserves_the_routers_reason_names(reason: str) -> None:
    text = (
        "llm_providers:\n  - model: openai/gpt-5.2\n    access_key: k\n"
        f"routing_preferences:\n  - name: {reason}\n    description: d\n"
        "    models: [openai/gpt-5.2]\n"
    )
    with pytest.raises(ConfigError, match=f"'{reason}' is reserved"):
        load_config_text(text)


def test_a_requests_own_routes_go_in_the_prompt(tmp_path: Path, server) -> None:
    from ext_proc.router import Route, Turn
    from ext_proc.router.prompt import route_prompt
    from ext_proc.router.service import ConfiguredRouter

    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1"
    router = build_router(load_config(write_config(tmp_path, endpoint)))
    assert isinstance(router, ConfiguredRouter)
    own = (Route("poetry", "writing poems"),)
    server.answer = '{"route": "poetry"}'

    async def main() -> list[str]:
        try:
            body = {"messages": [{"role": "user", "content": "a sonnet please"}]}
            mine = await router.decide(body, WireAPI.OPENAI, own)
            # The configured routes know no "poetry": it is other there.
            configured = await router.decide(body, WireAPI.OPENAI)
            return [mine.route, configured.route]
        finally:
            await router.close()

    assert asyncio.run(main()) == ["poetry", ROUTE_OTHER]
    sent = server.received[0][2]["messages"][0]["content"]
    assert "writing poems" in sent
    assert sent == route_prompt(own, (Turn("user", "a sonnet please"),))
