"""The embedding router: conversion without torch, parity with transformers, the
decision rule, batching, the config and the factory."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from ext_proc.config import ConfigError, EmbeddingRouterOptions, load_config_text
from ext_proc.router import ROUTE_OTHER, Route, RouteChoice, Turn
from ext_proc.router.convert import ENCODER_META, EncoderMeta, read_safetensors
from ext_proc.router.embedding import (
    DecisionRule,
    EmbeddingRouter,
    RouteIndex,
    SentenceEncoder,
    conversation_weights,
    fit_classifier,
    route_texts,
)
from ext_proc.router.tokenizer import ModelFilesError
from tests.conftest import TinyEncoder

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["write python code", "Hello there!", "explain what this function does", "a"]


# --- conversion and the encoder ------------------------------------------------


def test_ct2_encoder_matches_transformers(tiny_encoder: TinyEncoder) -> None:
    from tests.tiny_bert import reference_embeddings

    encoder = SentenceEncoder.load(tiny_encoder.ct2_dir, compute_type="float32")
    ours = encoder.embed(TEXTS)
    theirs = np.array(reference_embeddings(tiny_encoder.hf_dir, TEXTS))
    assert ours.shape == theirs.shape
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).min() >= 0.99


def test_batches_pool_each_text_over_its_own_tokens(tiny_encoder: TinyEncoder) -> None:
    encoder = SentenceEncoder.load(tiny_encoder.ct2_dir, compute_type="float32")
    together = encoder.embed(TEXTS)
    alone = np.concatenate([encoder.embed([t]) for t in TEXTS])
    # Padding to the longest text must not leak into a shorter text's mean.
    assert np.allclose(together, alone, atol=1e-5)


def test_conversion_runs_without_torch(tiny_encoder: TinyEncoder, tmp_path: Path) -> None:
    out = tmp_path / "converted"
    script = textwrap.dedent(
        f"""
        import sys
        # Importing either now fails, as on a machine that never installed them.
        sys.modules["torch"] = None
        sys.modules["transformers"] = None
        from ext_proc.cli import main
        code = main(["router", "convert", "--encoder", "--quantization", "float32",
                     {str(tiny_encoder.hf_dir)!r}, {str(out)!r}])
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        sys.exit(code)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "set router.model_path" in result.stdout
    for name in ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", ENCODER_META):
        assert (out / name).is_file(), name
    converted = SentenceEncoder.load(out, compute_type="float32").embed(TEXTS)
    reference = SentenceEncoder.load(tiny_encoder.ct2_dir, compute_type="float32").embed(TEXTS)
    assert np.allclose(converted, reference, atol=1e-5)


def test_converted_directory_records_pooling(tiny_encoder: TinyEncoder) -> None:
    meta = EncoderMeta.read(tiny_encoder.ct2_dir)
    assert meta == EncoderMeta(max_length=64, pooling="mean", normalize=True, hidden_size=32)


def test_tokenizer_is_built_from_vocab_txt_when_missing(
    tiny_encoder: TinyEncoder, tmp_path: Path
) -> None:
    from ext_proc.router.convert import convert_encoder

    source = tmp_path / "src"
    source.mkdir()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"):
        (source / name).write_bytes((tiny_encoder.hf_dir / name).read_bytes())
    out = convert_encoder(source, tmp_path / "out", quantization="float32")
    ours = SentenceEncoder.load(out, compute_type="float32").embed(TEXTS)
    reference = SentenceEncoder.load(tiny_encoder.ct2_dir, compute_type="float32").embed(TEXTS)
    assert np.allclose(ours, reference, atol=1e-5)


def test_conversion_refuses_what_it_cannot_read(tiny_encoder: TinyEncoder, tmp_path: Path) -> None:
    from ext_proc.router.convert import convert_encoder

    with pytest.raises(ModelFilesError, match=r"no config\.json"):
        convert_encoder(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ModelFilesError, match="only safetensors"):
        convert_encoder(tmp_path, tmp_path / "out")
    with pytest.raises(ModelFilesError, match="exists and is not empty"):
        convert_encoder(tiny_encoder.hf_dir, tiny_encoder.ct2_dir)


def test_bfloat16_tensors_are_widened(tmp_path: Path) -> None:
    values = np.array([[1.0, -2.5], [0.15625, 3.0]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"w": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, len(bf16)]}})
    raw = header.encode() + b" " * (-len(header) % 8)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bf16)
    assert np.array_equal(read_safetensors(tmp_path)["w"], values)


def test_loading_an_unconverted_directory_says_how_to_convert(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesError, match="router convert --encoder"):
        SentenceEncoder.load(tmp_path)


# --- the decision --------------------------------------------------------------


def unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


ROUTES = (Route("code", "writing code"), Route("poems", "writing poems"))


def index(rule: DecisionRule | None = None, background: Sequence[np.ndarray] = ()) -> RouteIndex:
    blocks = [np.stack([unit(1, 0, 0, 0)]), np.stack([unit(0, 1, 0, 0), unit(0, 0.8, 0.6, 0)])]
    bg = np.stack(background) if background else np.zeros((0, 4), dtype=np.float32)
    return RouteIndex(ROUTES, blocks, bg, rule or DecisionRule(threshold=0.1, margin=0.1))


def test_the_closest_route_wins_and_its_cosine_is_the_score() -> None:
    choice = index().decide(np.stack([unit(0.2, 1, 0, 0)]), [1.0])
    assert choice.route == "poems"
    assert choice.score == pytest.approx(float(unit(0.2, 1, 0, 0) @ unit(0, 1, 0, 0)))


def test_below_the_threshold_is_other_with_the_best_score() -> None:
    choice = index().decide(np.stack([unit(0.05, 0, 0, 1)]), [1.0])
    assert choice.route == ROUTE_OTHER
    assert choice.score is not None and choice.score < 0.1


def test_a_latest_turn_nearer_the_background_is_other() -> None:
    background = [unit(0, 0, 0, 1)]
    assert index(background=background).decide(np.stack([unit(0.3, 0, 0, 1)]), [1.0]).route == (
        ROUTE_OTHER
    )
    # The same turn routes when the background is no closer than the route.
    assert index(background=background).decide(np.stack([unit(1, 0, 0, 0.3)]), [1.0]).route == (
        "code"
    )


def test_background_entries_close_to_a_route_are_dropped() -> None:
    assert index(background=[unit(1, 0.1, 0, 0), unit(0, 0, 0, 1)]).background_size == 1


def test_history_weighs_less_than_the_latest_turn() -> None:
    rule = DecisionRule(threshold=0.0, margin=0.1, history_weight=0.3)
    turns = np.stack([unit(0, 1, 0, 0), unit(1, 0, 0, 0)])  # a poem, then code
    assert index(rule).decide(turns, [0.3, 1.0]).route == "code"
    # A vague follow-up takes the topic of the turn before it.
    turns = np.stack([unit(0, 1, 0, 0), unit(0.3, 0.3, 0, 1)])
    assert index(rule).decide(turns, [0.3, 1.0]).route == "poems"


def test_only_a_close_call_reads_history() -> None:
    rule = DecisionRule(threshold=0.0, margin=0.1, context_margin=0.2)
    assert index(rule).decide_alone(unit(1, 0, 0, 0)) == RouteChoice("code", 1.0)
    assert index(rule).decide_alone(unit(1, 1, 0, 0)) is None
    # A latest turn that is plainly off-topic stays other, whatever came before.
    background = [unit(0, 0, 0, 1)]
    other = index(rule, background).decide_alone(unit(0.1, 0.1, 0, 1))
    assert other is not None and other.route == ROUTE_OTHER


def test_the_classifier_fits_separable_routes_the_same_way_every_time() -> None:
    rng = np.random.default_rng(7)
    centres = np.eye(3, 8, dtype=np.float32) * 3
    inputs = np.concatenate([c + rng.normal(0, 0.5, (10, 8)) for c in centres]).astype(np.float32)
    labels = np.repeat(np.arange(3), 10)
    weights, bias = fit_classifier(inputs, labels, 3)
    assert ((inputs @ weights + bias).argmax(axis=1) == labels).all()
    again = fit_classifier(inputs, labels, 3)
    assert np.array_equal(weights, again[0]) and np.array_equal(bias, again[1])


def test_the_classifier_weighs_into_the_route_score() -> None:
    # Without it the decision is nearest-vector; with it, the fitted boundary
    # moves scores but keeps routes that are far apart where they were.
    for weight in (0.0, 0.3, 3.0):
        rule = DecisionRule(threshold=0.0, margin=0.1, classifier_weight=weight)
        assert index(rule).decide(np.stack([unit(1, 0.1, 0, 0)]), [1.0]).route == "code"
        assert index(rule).decide(np.stack([unit(0.1, 1, 0.2, 0)]), [1.0]).route == "poems"
    plain = index(DecisionRule(classifier_weight=0.0))._scores(unit(0.5, 0.5, 0, 0))[1]
    fitted = index(DecisionRule(classifier_weight=0.3))._scores(unit(0.5, 0.5, 0, 0))[1]
    assert not np.allclose(plain, fitted)


def test_conversation_weights() -> None:
    conversation = (
        Turn("user", "a"),
        Turn("user", "b"),
        Turn("assistant", "c"),
        Turn("user", "d"),
        Turn("assistant", "e"),
        Turn("user", "f"),
    )
    assert conversation_weights(conversation, 0.5) == [0.0, 0.25, 0.0, 0.5, 0.0, 1.0]
    assert conversation_weights((Turn("assistant", "x"),), 0.5) == [0.0]


def test_route_texts_include_examples() -> None:
    texts = route_texts(Route("code", "writing code", ("write a parser",)))
    assert texts[-1] == "write a parser" and "code" in texts[0] and "writing code" in texts[1]


# --- the router: batching, caching, other ---------------------------------------


class FakeEncoder:
    """One axis per known word; counts its calls (for batching)."""

    WORDS = ("code", "poem", "hello", "math")

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        rows = []
        for text in texts:
            v = np.array([text.lower().count(w) for w in self.WORDS], dtype=np.float32) + 0.01
            rows.append(v / np.linalg.norm(v))
        return np.stack(rows)

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def fake_router(encoder: FakeEncoder) -> EmbeddingRouter:
    routes = (
        Route("coding", "code", ("code code",)),
        Route("poetry", "poem", ("poem poem",)),
    )
    return EmbeddingRouter(
        encoder,
        routes,
        # Word-count vectors: these tests are about which turns are read and
        # batched, so the decision is nearest-vector alone.
        rule=DecisionRule(threshold=0.2, margin=0.1, classifier_weight=0.0),
        other_examples=("hello hello",),
    )


def test_concurrent_requests_share_encoder_calls() -> None:
    encoder = FakeEncoder()
    router = fake_router(encoder)
    setup_calls = len(encoder.calls)

    async def run() -> list[RouteChoice]:
        conversations = [
            (Turn("user", f"code number {i}" if i % 2 else f"poem number {i}"),) for i in range(16)
        ]
        try:
            return await asyncio.gather(*(router.choose(c) for c in conversations))
        finally:
            await router.close()

    choices = asyncio.run(run())
    assert [c.route for c in choices] == ["poetry", "coding"] * 8
    calls = encoder.calls[setup_calls:]
    # The first request runs alone; the 15 that queued meanwhile share one call.
    assert len(calls) < 16
    assert sum(len(c) for c in calls) == 16
    assert router.batcher.batch_sizes[-1] > 1


def test_turns_already_seen_are_not_encoded_again() -> None:
    encoder = FakeEncoder()
    router = fake_router(encoder)

    async def run() -> None:
        first = (Turn("user", "a poem please"),)
        await router.choose(first)
        before = len(encoder.calls)
        follow_up = (*first, Turn("assistant", "Roses."), Turn("user", "more code"))
        assert (await router.choose(follow_up)).route == "coding"
        assert encoder.calls[before:] == [["more code"]]
        await router.close()

    asyncio.run(run())


def test_a_conversation_already_seen_never_leaves_the_event_loop() -> None:
    encoder = FakeEncoder()
    router = fake_router(encoder)

    async def run() -> None:
        conversation = (Turn("user", "a poem please"),)
        await router.choose(conversation)
        batches = list(router.batcher.batch_sizes)
        assert (await router.choose(conversation)).route == "poetry"
        assert router.batcher.batch_sizes == batches
        await router.close()

    asyncio.run(run())


def test_history_is_encoded_only_for_a_follow_up_that_cannot_stand_alone() -> None:
    encoder = FakeEncoder()
    router = fake_router(encoder)
    history = (Turn("user", "a poem please"), Turn("assistant", "Roses."))

    async def run() -> None:
        before = len(encoder.calls)
        # Clear on its own: the earlier turn is never encoded.
        assert (await router.choose((*history, Turn("user", "code it")))).route == "coding"
        assert encoder.calls[before:] == [["code it"]]
        before = len(encoder.calls)
        # Half code, half poem: the earlier poem request tips it.
        follow_up = (*history, Turn("user", "code or poem"))
        assert (await router.choose(follow_up)).route == "poetry"
        assert encoder.calls[before:] == [["code or poem"], ["a poem please"]]
        await router.close()

    asyncio.run(run())


def test_small_talk_is_other_and_nothing_to_read_is_other() -> None:
    router = fake_router(FakeEncoder())

    async def run() -> None:
        assert (await router.choose((Turn("user", "hello!"),))).route == ROUTE_OTHER
        assert (await router.choose((Turn("assistant", "code"),))).route == ROUTE_OTHER
        await router.close()

    asyncio.run(run())


# --- config and factory ----------------------------------------------------------

CONFIG = """
version: v0.4.0
model_providers:
  - model: openai/gpt-5.2
    access_key: sk-test
    default: true
  - model: anthropic/claude-sonnet-4-5
    access_key: sk-test
routing_preferences:
  - name: code generation
    description: generating new code
    models: [anthropic/claude-sonnet-4-5]
    examples:
      - write python code
      - write a function
{router}
"""


def test_examples_load_in_both_formats() -> None:
    config = load_config_text(CONFIG.format(router=""))
    assert config.routing_preferences[0].examples == ("write python code", "write a function")
    inline = load_config_text(
        """
llm_providers:
  - model: openai/gpt-5.2
    access_key: sk-test
    default: true
    routing_preferences:
      - name: creative writing
        description: stories
        examples: [write a story about a dragon]
"""
    )
    assert inline.routing_preferences[0].examples == ("write a story about a dragon",)


def test_plano_examples_still_load() -> None:
    for name in ("preference_routing.yaml", "plano_current.yaml", "config.yaml"):
        config = load_config_text(
            (ROOT / "examples" / name).read_text(), environ={}, allow_missing_env=True
        )
        assert all(p.examples == () for p in config.routing_preferences)


def test_bad_examples_are_reported() -> None:
    bad = CONFIG.format(router="").replace("      - write a function", "      - ''")
    with pytest.raises(ConfigError, match=r"examples\[1\]: empty example"):
        load_config_text(bad)
    with pytest.raises(ConfigError, match="expected a list"):
        load_config_text(
            CONFIG.format(router="").replace(
                "    examples:\n      - write python code\n      - write a function",
                "    examples: write python code",
            )
        )


def test_embedding_router_section(tmp_path: Path) -> None:
    section = f"""
router:
  backend: embedding
  model_path: {tmp_path}
  threshold: 0.2
  margin: 0.05
  history_weight: 0.5
  context_margin: 0.3
  classifier_weight: 0.5
  intra_threads: 2
  other_examples: [hi, thanks]
"""
    config = load_config_text(CONFIG.format(router=section))
    assert config.router is not None and config.router.backend == "embedding"
    assert config.router.options == EmbeddingRouterOptions(
        threshold=0.2,
        margin=0.05,
        history_weight=0.5,
        context_margin=0.3,
        classifier_weight=0.5,
        intra_threads=2,
        other_examples=("hi", "thanks"),
    )
    defaults = load_config_text(
        CONFIG.format(router=f"router: {{backend: embedding, model_path: {tmp_path}}}")
    )
    assert defaults.router is not None and defaults.router.options == EmbeddingRouterOptions()


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ("threshold: 2", "router.threshold: 2 is out of range"),
        ("threshold: high", "router.threshold: expected a number"),
        ("history_weight: -1", "router.history_weight"),
        ("context_margin: -0.1", "router.context_margin"),
        ("classifier_weight: 11", "router.classifier_weight: 11 is out of range"),
        ("static_prompt: true", "static_prompt is a setting of backend 'arch_router'"),
    ],
)
def test_embedding_router_section_errors(tmp_path: Path, lines: str, problem: str) -> None:
    section = f"router:\n  backend: embedding\n  model_path: {tmp_path}\n  {lines}\n"
    with pytest.raises(ConfigError, match=problem):
        load_config_text(CONFIG.format(router=section))


def test_embedding_router_needs_a_model_path() -> None:
    with pytest.raises(ConfigError, match="archway router convert --encoder"):
        load_config_text(CONFIG.format(router="router: {backend: embedding}"))


def test_factory_names_the_missing_extra(
    tiny_encoder: TinyEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ext_proc.router.factory import RouterUnavailableError, build_router

    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if it were not installed
    section = f"router: {{backend: embedding, model_path: {tiny_encoder.ct2_dir}}}"
    with pytest.raises(RouterUnavailableError) as caught:
        build_router(load_config_text(CONFIG.format(router=section)))
    assert str(caught.value) == (
        "router backend embedding needs tokenizers: pip install 'archway[router]'"
    )


def test_factory_builds_the_embedding_router(tiny_encoder: TinyEncoder) -> None:
    from ext_proc.router.factory import build_router

    section = f"router: {{backend: embedding, model_path: {tiny_encoder.ct2_dir}}}"
    configured = build_router(load_config_text(CONFIG.format(router=section)))
    assert configured is not None and isinstance(configured.backend, EmbeddingRouter)
    body = {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "write python code"},
        ]
    }

    async def run() -> RouteChoice:
        try:
            from ext_proc.apis import WireAPI

            return await configured.decide(body, WireAPI.OPENAI)
        finally:
            await configured.close()

    choice = asyncio.run(run())
    assert choice.route == "code generation"
    assert choice.score == pytest.approx(1.0, abs=1e-4)
    tuned = (
        f"router: {{backend: embedding, model_path: {tiny_encoder.ct2_dir}, "
        "classifier_weight: 0, context_margin: 0.5}"
    )
    configured = build_router(load_config_text(CONFIG.format(router=tuned)))
    assert configured is not None and isinstance(configured.backend, EmbeddingRouter)
    assert configured.backend.rule.classifier_weight == 0.0
    assert configured.backend.rule.context_margin == 0.5
    asyncio.run(configured.close())


def test_a_requests_own_routes_are_embedded_once_and_decided_among() -> None:
    encoder = FakeEncoder()
    router = fake_router(encoder)
    own = (Route("sums", "math", ("math math",)), Route("greeting", "hello"))

    async def run() -> list[str]:
        try:
            turn = (Turn("user", "math homework"),)
            first = await router.choose(turn, own)
            again = await router.choose(turn, own)
            configured = await router.choose(turn)
            return [first.route, again.route, configured.route]
        finally:
            await router.close()

    calls_before = len(encoder.calls)
    first, again, configured = asyncio.run(run())
    assert [first, again] == ["sums", "sums"]
    # Without them, the configured routes are all there is.
    assert configured in {"coding", "poetry", "other"}
    encoded = [text for call in encoder.calls[calls_before:] for text in call]
    # The routes' texts once, the turn once (then from the cache).
    assert sum("math math" in t for t in encoded) == 1
    assert list(router._request_indexes) == [own]
