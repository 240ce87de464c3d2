"""Usage, client keys and token limits through a real Envoy, with the openai and
anthropic SDKs as clients and fake providers that answer as the real ones do."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from ext_proc.state.process import reset_process_state
from ext_proc.telemetry import metrics
from tests.fake_providers import FakeProvider
from tests.gateway import LOOPBACK_LISTENER, Gateway, start_gateway, stop_gateway

KEYS = {"TEAM_A_KEY": "ak-team-a-SECRET", "LIMITED_KEY": "ak-limited-SECRET"}
LIMIT_TOKENS = 400

CONFIG = (
    LOOPBACK_LISTENER
    + """\
model_providers:
  - model: openai/gpt-5.2
    base_url: {openai}
    access_key: sk-openai-USAGESECRET
    default: true
  - model: anthropic/claude-sonnet-4-5
    base_url: {anthropic}
    access_key: sk-ant-USAGESECRET
model_aliases:
  claude: {{target: anthropic/claude-sonnet-4-5}}
archway:
  usage: true
  clients:
    - name: team-a
      key: $TEAM_A_KEY
    - name: gpt-only
      key_sha256: {gpt_only_digest}
      models: [openai/gpt-5.2]
    - name: limited
      key: $LIMITED_KEY
      limit: {{tokens: {limit}, unit: hour}}
"""
)
GPT_ONLY_KEY = "ak-gpt-only-SECRET"


class Setup:
    def __init__(self, gateway: Gateway, log: Path) -> None:
        self.gateway = gateway
        self.log = log

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0, timeout=20
        )

    def anthropic(self, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(
            base_url=self.gateway.url, api_key=key, max_retries=0, timeout=20
        )

    def log_lines(self, count: int) -> list[dict[str, Any]]:
        """The first ``count`` access log lines (Envoy flushes its log every 10 s)."""
        deadline = time.monotonic() + 20
        while True:
            lines = [json.loads(x) for x in self.log.read_text().splitlines() if x[:1] == "{"]
            if len(lines) >= count:
                return lines
            assert time.monotonic() < deadline, f"{len(lines)} access log lines, not {count}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    mp = pytest.MonkeyPatch()
    for name, value in KEYS.items():
        mp.setenv(name, value)
    reset_process_state()
    providers = {n: FakeProvider(n).start() for n in ("openai", "anthropic")}
    tmp = tmp_path_factory.mktemp("usage")
    try:
        text = CONFIG.format(
            gpt_only_digest=hashlib.sha256(GPT_ONLY_KEY.encode()).hexdigest(),
            limit=LIMIT_TOKENS,
            **{n: p.base_url for n, p in providers.items()},
        )
        gateway = start_gateway(text, tmp, providers, envoy_log=tmp / "envoy.log")
        try:
            yield Setup(gateway, tmp / "envoy.log")
        finally:
            stop_gateway(gateway)
    finally:
        for p in providers.values():
            p.stop()
        mp.undo()
        reset_process_state()


def _tokens(provider: str, model: str, kind: str) -> float:
    value = metrics.recorder().registry.get_sample_value(
        "archway_tokens_total", {"provider": provider, "model": model, "type": kind}
    )
    return value or 0.0


MESSAGES = [{"role": "user", "content": "Hello!"}]


def test_token_counts_match_the_providers_usage(setup: Setup) -> None:
    """Native and translated, JSON and streamed: the access log and the metrics
    count what the provider's usage says, and the client sees it unchanged."""
    before = {
        p: _tokens(p, m, "input")
        for p, m in (("openai", "openai/gpt-5.2"), ("anthropic", "anthropic/claude-sonnet-4-5"))
    }
    key = KEYS["TEAM_A_KEY"]
    gpt = setup.openai(key)
    claude = setup.anthropic(key)
    seen: list[tuple[int, int, int]] = []

    # 1. native OpenAI JSON
    answer = gpt.chat.completions.create(model="openai/gpt-5.2", messages=MESSAGES)
    assert answer.usage is not None
    cached = answer.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    seen.append((answer.usage.prompt_tokens, answer.usage.completion_tokens, cached))
    # 2. native OpenAI stream, usage asked for
    chunks = list(
        gpt.chat.completions.create(
            model="openai/gpt-5.2",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    seen.append((usage.prompt_tokens, usage.completion_tokens, 4))
    # 3. native Anthropic JSON
    message = claude.messages.create(
        model="anthropic/claude-sonnet-4-5", max_tokens=32, messages=MESSAGES
    )
    u = message.usage
    seen.append((u.input_tokens + (u.cache_read_input_tokens or 0), u.output_tokens, 4))
    # 4. native Anthropic stream
    with claude.messages.stream(
        model="anthropic/claude-sonnet-4-5", max_tokens=32, messages=MESSAGES
    ) as stream:
        final = stream.get_final_message()
    u = final.usage
    seen.append((u.input_tokens + (u.cache_read_input_tokens or 0), u.output_tokens, 4))
    # 5. translated: an OpenAI client answered by Anthropic, JSON
    answer = gpt.chat.completions.create(model="claude", messages=MESSAGES)
    assert answer.usage is not None
    seen.append((answer.usage.prompt_tokens, answer.usage.completion_tokens, 4))
    # 6. translated stream
    chunks = list(
        gpt.chat.completions.create(
            model="claude",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None
    seen.append((usage.prompt_tokens, usage.completion_tokens, 4))

    # 7. native OpenAI stream without usage asked for: recorded as absent.
    chunks = list(
        gpt.chat.completions.create(model="openai/gpt-5.2", messages=MESSAGES, stream=True)
    )
    assert all(c.usage is None for c in chunks)

    lines = setup.log_lines(len(seen) + 1)[-len(seen) - 1 :]
    without = lines.pop()
    assert without["input_tokens"] is None and without["output_tokens"] is None
    assert without["time_to_first_token_ms"] > 0
    for entry, (prompt, output, cached_tokens) in zip(lines, seen, strict=True):
        assert entry["client"] == "team-a"
        assert (entry["input_tokens"], entry["output_tokens"], entry["cached_tokens"]) == (
            prompt,
            output,
            cached_tokens,
        ), entry
    streamed = [lines[i] for i in (1, 3, 5)]
    assert all(e["time_to_first_token_ms"] > 0 for e in streamed)
    assert all(e["time_to_first_token_ms"] <= e["duration_ms"] for e in streamed)
    assert lines[5]["translation"].startswith("openai-to-anthropic")
    # The fake providers' usage: 25 prompt tokens (4 cached) and 13 output, each time.
    assert {s[:2] for s in seen} == {(25, 13)}
    assert _tokens("openai", "openai/gpt-5.2", "input") - before["openai"] == 2 * 25
    anthropic_in = _tokens("anthropic", "anthropic/claude-sonnet-4-5", "input")
    assert anthropic_in - before["anthropic"] == 4 * 25
    # Keys are nowhere in the log.
    text = setup.log.read_text()
    assert not any(secret in text for secret in (*KEYS.values(), "USAGESECRET"))


def test_missing_and_unknown_keys_get_401_in_each_apis_shape(setup: Setup) -> None:
    with pytest.raises(openai.AuthenticationError) as oai:
        setup.openai("wrong-key").chat.completions.create(model="openai/gpt-5.2", messages=MESSAGES)
    assert oai.value.status_code == 401
    assert oai.value.code == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as ant:
        setup.anthropic("wrong-key").messages.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=8, messages=MESSAGES
        )
    body = ant.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "authentication_error"
    # No key at all: the same 401, and the model list stays closed too.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(f"{setup.gateway.url}/v1/models", timeout=10)
    assert raw.value.code == 401
    assert json.load(raw.value)["error"]["code"] == "invalid_api_key"


def test_a_forbidden_model_gets_403_in_each_apis_shape(setup: Setup) -> None:
    gpt = setup.openai(GPT_ONLY_KEY)
    assert gpt.chat.completions.create(model="openai/gpt-5.2", messages=MESSAGES).usage
    with pytest.raises(openai.PermissionDeniedError) as oai:
        gpt.chat.completions.create(model="claude", messages=MESSAGES)
    assert oai.value.code == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError) as ant:
        setup.anthropic(GPT_ONLY_KEY).messages.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=8, messages=MESSAGES
        )
    body = ant.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "permission_error"


def test_a_client_over_its_limit_gets_429_with_retry_after(setup: Setup) -> None:
    gpt = setup.openai(KEYS["LIMITED_KEY"])
    # Each answer costs 38 tokens (25 + 13) once settled; the limit is 400 an hour.
    answered = 0
    with pytest.raises(openai.RateLimitError) as refused:
        for _ in range(LIMIT_TOKENS // 38 + 2):
            gpt.chat.completions.create(model="openai/gpt-5.2", messages=MESSAGES)
            answered += 1
    # Admitted while the hour's count plus this prompt's estimate fits; the last
    # one admitted may then go over by its output tokens, as Plano's count does.
    assert LIMIT_TOKENS - 38 < answered * 38 <= LIMIT_TOKENS + 38
    response = refused.value.response
    assert response.status_code == 429
    assert 0 < int(response.headers["retry-after"]) <= 3600
    assert refused.value.code == "rate_limit_exceeded"
    with pytest.raises(anthropic.RateLimitError) as ant:
        setup.anthropic(KEYS["LIMITED_KEY"]).messages.create(
            model="anthropic/claude-sonnet-4-5", max_tokens=8, messages=MESSAGES
        )
    body = ant.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
    assert "retry-after" in ant.value.response.headers
