"""Pins and token limits stay one across worker processes and across gateways:
``archway up`` run as users run it, with two workers, or twice beside one real
Redis, in front of a fake provider."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_providers import FakeProvider
from tests.processes import read_until
from tests.redis_server import running_redis

ROOT = Path(__file__).resolve().parent.parent
ARCHWAY = [sys.executable, "-m", "ext_proc.cli"]
LIMIT = 400
"""Tokens an hour for the limited client; each answer costs 38 (25 prompt + 13 output)."""
KEY = "ak-limited-SHARED"
FREE_KEY = "ak-free-SHARED"

CONFIG = """\
version: v0.4.0
listeners:
  - {{type: model, name: egress_traffic, address: 127.0.0.1, port: 0, timeout: 10s}}
model_providers:
  - model: openai/gpt-5.2
    base_url: {openai}
    access_key: sk-openai-test
    default: true
  - model: openai/gpt-5
    base_url: {openai}
    access_key: sk-openai-test
archway:
  admin_port: 0
  clients:
    - name: free
      key: $FREE_KEY
    - name: limited
      key: $LIMITED_KEY
      limit: {{tokens: {limit}, unit: hour}}
{redis}"""


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeProvider]:
    fake = FakeProvider("openai").start()
    try:
        yield fake
    finally:
        fake.stop()


def _config(tmp_path: Path, provider: FakeProvider, redis_url: str | None = None) -> Path:
    path = tmp_path / "config.yaml"
    redis = f"  redis: {redis_url}\n" if redis_url else ""
    path.write_text(CONFIG.format(openai=provider.base_url, limit=LIMIT, redis=redis))
    return path


@contextlib.contextmanager
def archway_up(config: Path, workers: int, name: str = "up") -> Iterator[str]:
    """``archway up CONFIG --workers N``; yields the gateway's base URL (``.../v1``).
    Its stderr goes to ``NAME.log`` beside the config."""
    log = (config.parent / f"{name}.log").open("w")
    proc = subprocess.Popen(
        [*ARCHWAY, "up", str(config), "--workers", str(workers), "--metrics-port", "off"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=ROOT,
        env={**os.environ, "LIMITED_KEY": KEY, "FREE_KEY": FREE_KEY},
    )
    try:
        lines = read_until(proc, "Ctrl-C", 90)
        bases = [line.split("base_url ")[1].strip() for line in lines if "base_url" in line]
        assert bases, "archway up printed no base_url"
        yield bases[-1]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _chat(base: str, *, key: str = KEY, session: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    if session is not None:
        headers["x-model-affinity"] = session
    body = {"messages": [{"role": "user", "content": "Hello!"}]}
    request = urllib.request.Request(
        base + "/chat/completions", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            response.read()
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        err.read()
        return err.code, {k.lower(): v for k, v in err.headers.items()}


def _spend_until_refused(bases: list[str]) -> int:
    """Requests answered before the first 429, spread over ``bases`` in turn."""
    for answered in range(LIMIT // 38 + 3):
        status, headers = _chat(bases[answered % len(bases)])
        if status == 429:
            assert 0 < int(headers["retry-after"]) <= 3600
            return answered
        assert status == 200
    raise AssertionError("the limit never refused a request")


def _pins(bases: list[str], session: str, count: int) -> list[str]:
    answers = []
    for i in range(count):
        status, headers = _chat(bases[i % len(bases)], key=FREE_KEY, session=session)
        assert status == 200
        answers.append(headers["x-archway-affinity"])
    return answers


def _assert_limit_held(answered: int) -> None:
    # Admitted while the count plus the prompt's estimate fits; the last one may
    # go over by its output. Each worker or gateway alone would admit ~10 more.
    assert LIMIT - 38 < answered * 38 <= LIMIT + 38, answered


def test_two_workers_share_pins_and_limits(tmp_path: Path, provider: FakeProvider) -> None:
    with archway_up(_config(tmp_path, provider), workers=2) as base:
        # Envoy spreads requests over both workers; the session is pinned once.
        answers = _pins([base], "conv-workers", 8)
        assert answers.count("new") == 1 and answers[0] == "new", answers
        _assert_limit_held(_spend_until_refused([base]))


def test_two_gateways_share_one_redis(tmp_path: Path, provider: FakeProvider) -> None:
    with running_redis() as url:
        config = _config(tmp_path, provider, url)
        with archway_up(config, 1, "first") as first, archway_up(config, 1, "second") as second:
            answers = _pins([first, second], "conv-replicas", 6)
            assert answers == ["new"] + ["pinned"] * 5, answers
            _assert_limit_held(_spend_until_refused([first, second]))


def test_requests_flow_when_redis_is_down(tmp_path: Path, provider: FakeProvider) -> None:
    with running_redis() as url:
        pass  # stopped: nothing answers there any more
    with archway_up(_config(tmp_path, provider, url), workers=1) as base:
        for _ in range(3):
            status, headers = _chat(base, key=FREE_KEY, session="conv-down")
            assert status == 200
        # Pins fall back to the worker's memory: still one decision per session.
        assert headers["x-archway-affinity"] == "pinned"
