"""The real path on a tiny Qwen2 model built here: model files -> chat template ->
tokens (with the cached prefix) -> CTranslate2 -> answer -> route."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from ext_proc.config import ArchRouterOptions
from ext_proc.router import Turn
from ext_proc.router.arch_router import ArchRouter, ArchRouterPrompt, decisive_length
from ext_proc.router.ct2_engine import CT2Engine
from ext_proc.router.prompt import route_prompt
from ext_proc.router.tokenizer import ModelFilesError, ModelTokenizer
from tests.conftest import TinyModel
from tests.tiny_qwen import ANSWER, EXAMPLE_CONVERSATION, ROUTES, transformers_greedy

OPTIONS = ArchRouterOptions(
    device="cpu", compute_type="float32", intra_threads=1, max_batch_size=8, batch_wait_s=0.05
)
CONVERSATIONS = (
    EXAMPLE_CONVERSATION,
    (Turn("user", 'Explain quantum physics\n\tin detail, naïvely: "why" ∑ 😀'),),
    (Turn("user", "hi"), Turn("assistant", "Hello!"), Turn("user", "write a function")),
)


def hf_tokenizer(model: TinyModel):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model.hf_dir))


def test_chat_template_renders_like_transformers(tiny_model: TinyModel) -> None:
    ours = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    theirs = hf_tokenizer(tiny_model)
    for conversation in CONVERSATIONS:
        messages = [{"role": "user", "content": route_prompt(ROUTES, conversation)}]
        expected = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert ours.render_chat(messages) == expected
        assert ours.encode(expected) == theirs.encode(expected, add_special_tokens=False)


def test_chat_template_jinja_file_is_read_too(tiny_model: TinyModel, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model.ct2_dir / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text("{{ messages[0]['content'] }}|END")
    tokenizer = ModelTokenizer.from_dir(tmp_path)
    assert tokenizer.render_chat([{"role": "user", "content": "x"}]) == "x|END"
    assert tokenizer.eos_ids == (tokenizer.encode("<|im_end|>")[0],)


def test_cached_prefix_plus_suffix_tokens_equal_the_whole_prompt(tiny_model: TinyModel) -> None:
    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    assert prompt.static_ids, "the routes prefix should be cacheable"
    theirs = hf_tokenizer(tiny_model)
    for conversation in CONVERSATIONS:
        messages = [{"role": "user", "content": route_prompt(ROUTES, conversation)}]
        whole = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = prompt.encode(conversation)
        # The answers' shared start comes last: the model reads it, it does not write it.
        assert list(encoded.static) + list(encoded.tokens) == tokenizer.tokens(
            tokenizer.encode(whole)
        ) + list(prompt.answer_prefix_tokens)
    # The cached part holds the instructions and every route, not the conversation.
    head = tokenizer.render_chat([{"role": "user", "content": route_prompt(ROUTES, ())}])
    assert head.startswith(tiny_model_text(tokenizer, prompt.static_ids))


def tiny_model_text(tokenizer: ModelTokenizer, ids: tuple[int, ...]) -> str:
    return "".join(tokenizer._tokenizer.decode([i], skip_special_tokens=False) for i in ids)


def test_ctranslate2_greedy_output_matches_transformers(tiny_model: TinyModel) -> None:
    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    engine = CT2Engine.load(
        tiny_model.ct2_dir, device="cpu", compute_type="float32", intra_threads=1
    )
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    for conversation in CONVERSATIONS[:2]:
        whole = prompt.render(conversation)
        expected = transformers_greedy(tiny_model.hf_dir, whole, 12)
        tokens = tokenizer.tokens(tokenizer.encode(whole))
        (plain,) = engine.generate([tokens], static_prompt=None, max_new_tokens=12, end_ids=[])
        encoded = prompt.encode(conversation)
        (cached,) = engine.generate(
            [encoded.tokens], static_prompt=encoded.static, max_new_tokens=12, end_ids=[]
        )
        # transformers stops at EOS; CTranslate2 with no end token runs on.
        assert plain[: len(expected)] == expected
        # Given the answer's start, the model goes on exactly as it would have.
        prefix = list(prompt.answer_prefix_ids)
        assert prefix and expected[: len(prefix)] == prefix
        assert cached[: len(expected) - len(prefix)] == expected[len(prefix) :]
    assert tokenizer.decode(expected) == ANSWER


def test_arch_router_chooses_a_route_on_the_real_model(tiny_model: TinyModel) -> None:
    router = ArchRouter.load(tiny_model.ct2_dir, ROUTES, OPTIONS)

    async def main():
        try:
            return await asyncio.gather(*(router.choose(c) for c in CONVERSATIONS))
        finally:
            await router.close()

    choices = asyncio.run(main())
    assert [c.route for c in choices] == ["creative writing"] * len(CONVERSATIONS)
    # Three concurrent decisions were one generate_batch call.
    assert router.batcher.batch_sizes == [3]
    # The answers' shared start is given; a token or two tells the routes apart.
    assert router.max_new_tokens == router.prompt.decisive_tokens <= 3


def test_stops_at_the_closing_brace(tiny_model: TinyModel) -> None:
    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    engine = CT2Engine.load(
        tiny_model.ct2_dir, device="cpu", compute_type="float32", intra_threads=1
    )
    encoded = prompt.encode(EXAMPLE_CONVERSATION)
    (ids,) = engine.generate(
        [encoded.tokens], static_prompt=encoded.static, max_new_tokens=30, end_ids=prompt.end_ids()
    )
    assert tokenizer.decode([*prompt.answer_prefix_ids, *ids]) == ANSWER
    assert prompt.answer_of(ids) == "creative writing"


def test_decisive_length() -> None:
    assert decisive_length([(1, 2, 3), (1, 4), (5,)]) == 2
    assert decisive_length([(7,), (8, 9)]) == 1
    # One answer a prefix of another: the longer one's next token decides.
    assert decisive_length([(1,), (1, 2)]) == 2


def test_each_answer_is_told_apart_by_its_first_tokens(tiny_model: TinyModel) -> None:
    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    assert set(prompt.answers) == {r.name for r in ROUTES} | {"other"}
    for name, answer in prompt.answers.items():
        ids = [*prompt.answer_prefix_ids, *answer]
        assert tokenizer.decode(ids) == json.dumps({"route": name})
        assert prompt.answer_of(answer[: prompt.decisive_tokens]) == name
        assert prompt.answer_of([*answer, *tokenizer.eos_ids]) == name  # run on past the end
    assert prompt.answer_of([]) is None
    assert prompt.answer_of(tokenizer.encode("```json")) is None


def test_an_answer_that_is_none_of_them_is_parsed_as_text(tiny_model: TinyModel) -> None:
    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    said: list[list[int]] = []

    def generate(prompts, **_: object) -> list[list[int]]:
        return [said[0] for _ in prompts]

    router = ArchRouter(prompt, generate, OPTIONS)

    async def decide(text: str) -> str:
        said[:] = [tokenizer.encode(text)]
        return (await router.choose(EXAMPLE_CONVERSATION)).route

    async def main() -> list[str]:
        try:
            return [await decide('Creative  Writing"}'), await decide('poetry"}')]
        finally:
            await router.close()

    # Case and spacing are forgiven as before; an unknown name is other.
    assert asyncio.run(main()) == ["creative writing", "other"]


def test_int8_conversion_loads_and_routes(tiny_model: TinyModel, tmp_path: Path) -> None:
    from ext_proc.router.convert import convert_model

    out = convert_model(tiny_model.hf_dir, tmp_path / "int8", quantization="int8")
    router = ArchRouter.load(out, ROUTES, ArchRouterOptions(device="cpu", intra_threads=1))
    assert router.batcher._max_batch_size == 1, "no batching on a CPU unless configured"

    async def main():
        try:
            return await router.choose(EXAMPLE_CONVERSATION)
        finally:
            await router.close()

    assert asyncio.run(main()).route in {r.name for r in ROUTES} | {"other", "error"}


def test_incomplete_model_directory_is_a_clear_error(tiny_model: TinyModel, tmp_path: Path) -> None:
    shutil.copy(tiny_model.ct2_dir / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(ModelFilesError) as info:
        ArchRouter.load(tmp_path, ROUTES, OPTIONS)
    message = str(info.value)
    assert "model.bin" in message and "config.json" in message
    assert "archway router convert" in message


def test_a_requests_own_routes_get_their_own_prompt_and_batch_group(
    tiny_model: TinyModel,
) -> None:
    from ext_proc.router import Route

    tokenizer = ModelTokenizer.from_dir(tiny_model.ct2_dir)
    prompt = ArchRouterPrompt(tokenizer, ROUTES)
    own = (Route("poetry", "writing poems"), Route("tax law", "questions about taxes"))
    calls: list[tuple[list[tuple[str, ...]], object, int]] = []
    answers = {"poetry": tokenizer.encode('poetry"}'), "config": tokenizer.encode('other"}')}

    def generate(prompts, *, static_prompt, max_new_tokens, end_ids) -> list[list[int]]:
        calls.append((list(prompts), static_prompt, max_new_tokens))
        key = "config" if static_prompt else "poetry"
        return [answers[key] for _ in prompts]

    router = ArchRouter(prompt, generate, OPTIONS)

    async def main():
        try:
            return await asyncio.gather(
                router.choose(EXAMPLE_CONVERSATION),
                router.choose(EXAMPLE_CONVERSATION, own),
                router.choose(EXAMPLE_CONVERSATION, own),
            )
        finally:
            await router.close()

    config_choice, *own_choices = asyncio.run(main())
    assert [c.route for c in own_choices] == ["poetry", "poetry"]
    assert config_choice.route == "other"
    # One batch, generated as two groups: the config's prompt with its cached
    # prefix, and the request's routes whole.
    assert router.batcher.batch_sizes == [3]
    assert sorted(len(prompts) for prompts, _, _ in calls) == [1, 2]
    own_call = next(c for c in calls if c[1] is None)
    vocabulary = tokenizer.vocabulary()
    text = tokenizer.decode([vocabulary[token] for token in own_call[0][0]])
    assert "writing poems" in text and "tax law" in text
    # The request's prompt is built once and kept.
    assert list(router._request_prompts) == [own]
