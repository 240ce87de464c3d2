"""Arch-Router in-process: prompt -> tokens -> CTranslate2 -> ``{"route": ...}``.

Everything the config fixes is done once at start-up: the chat template is
rendered around a placeholder for the conversation, and the tokens before it
become CTranslate2's static prompt. A request only tokenizes its conversation and
the short tail after it.

The answer is short-cut too. Every possible answer, ``{"route": "<name>"}`` for
each route and ``other``, starts with the same tokens (``{"route": "``): they
are appended to the prompt instead of being generated one decoding step each,
and generation stops as soon as the tokens so far can only be one answer (two
tokens for the spec's routes: "code" is followed by " understanding" or
" generation"). A decision then costs the prompt's forward pass and a step or
two, instead of eight or more steps. When the model says something that is
none of the answers, its text is parsed as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ext_proc.config import ArchRouterOptions
from ext_proc.router import ROUTE_OTHER, Route, RouteChoice, Turn
from ext_proc.router.batching import MicroBatcher
from ext_proc.router.decision import parse_route
from ext_proc.router.prompt import (
    CONVERSATION_SLOT,
    PromptParts,
    prompt_with_slot,
    route_prompt,
    split_prompt,
)
from ext_proc.router.tokenizer import ModelTokenizer

__all__ = ["ArchRouter", "ArchRouterPrompt", "EncodedPrompt", "GenerateFn", "decisive_length"]

log = logging.getLogger("archway.router")

GenerateFn = Callable[..., list[list[int]]]
"""``CT2Engine.generate``'s shape: (prompts, *, static_prompt, max_new_tokens, end_ids)."""

# A conversation that exercises escaping and several turns, used to check at
# start-up that the cached prefix tokenizes like the whole prompt does.
_PROBE = (
    Turn("user", 'Explain "this" café\nplease'),
    Turn("assistant", "Sure."),
    Turn("user", "Now write code"),
)
_GPU_BATCH = 8
_REQUEST_PROMPTS = 16
"""Prompts for requests' own routes kept ready."""


def decisive_length(answers: Sequence[Sequence[int]]) -> int:
    """The fewest leading tokens that tell ``answers`` apart (each answer shorter
    than that counts whole)."""
    longest = max((len(a) for a in answers), default=1)
    for length in range(1, longest + 1):
        if len({tuple(a[:length]) for a in answers}) == len(answers):
            return length
    return longest


@dataclass(frozen=True)
class EncodedPrompt:
    static: tuple[str, ...]
    """The config-only prefix (cached by CTranslate2); empty when not split."""
    tokens: tuple[str, ...]
    """The rest: the conversation and the template's tail (or everything)."""
    max_new_tokens: int = 0
    """What to generate for it; 0: the router's own setting."""

    @property
    def length(self) -> int:
        return len(self.static) + len(self.tokens)


class ArchRouterPrompt:
    """Arch-Router's prompt for one set of routes, through the model's chat template."""

    def __init__(
        self, tokenizer: ModelTokenizer, routes: Sequence[Route], *, split: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.routes = tuple(routes)
        chat = tokenizer.render_chat([{"role": "user", "content": prompt_with_slot(routes)}])
        self.parts: PromptParts | None = None
        if chat.count(CONVERSATION_SLOT) == 1:
            parts = split_prompt(chat)
            if parts.fill(_PROBE) == self.render(_PROBE):
                self.parts = parts
        # The template must pass the user's text through unchanged for the split to
        # hold; one that rewrites it is rendered whole for every request instead.
        self.static_ids: tuple[int, ...] = ()
        if split and self.parts is not None:
            static = tuple(tokenizer.encode(self.parts.head))
            probe = self.render(_PROBE)
            if tuple(tokenizer.encode(probe)) == static + tuple(
                tokenizer.encode(probe[len(self.parts.head) :])
            ):
                self.static_ids = static
            else:
                log.warning("the prompt prefix does not tokenize on its own; not caching it")
        self.static_tokens = tuple(tokenizer.tokens(self.static_ids))
        names = (*(r.name for r in self.routes), ROUTE_OTHER)
        answers = [tuple(tokenizer.encode(json.dumps({"route": n}))) for n in names]
        shared = 0
        shortest = min(len(a) for a in answers)
        while shared < shortest - 1 and len({a[shared] for a in answers}) == 1:
            shared += 1
        self.answer_prefix_ids = answers[0][:shared]
        """What every answer starts with: appended to the prompt, not generated."""
        self.answer_prefix_tokens = tuple(tokenizer.tokens(self.answer_prefix_ids))
        self.answers = {name: answer[shared:] for name, answer in zip(names, answers, strict=True)}
        """Each route's (and ``other``'s) answer tokens after the shared prefix."""
        self.decisive_tokens = decisive_length(list(self.answers.values()))
        """Tokens to generate: enough to tell the answers apart, since the rest is
        known once they differ."""

    def render(self, conversation: Sequence[Turn]) -> str:
        """The whole prompt text, as ``apply_chat_template`` would give it."""
        if self.parts is not None:
            return self.parts.fill(conversation)
        content = route_prompt(self.routes, conversation)
        return self.tokenizer.render_chat([{"role": "user", "content": content}])

    def encode(self, conversation: Sequence[Turn]) -> EncodedPrompt:
        if self.static_ids and self.parts is not None:
            rest = self.parts.fill(conversation)[len(self.parts.head) :]
            ids = self.tokenizer.encode(rest)
            tokens = (*self.tokenizer.tokens(ids), *self.answer_prefix_tokens)
            return EncodedPrompt(self.static_tokens, tokens)
        ids = self.tokenizer.encode(self.render(conversation))
        return EncodedPrompt((), (*self.tokenizer.tokens(ids), *self.answer_prefix_tokens))

    def answer_of(self, generated: Sequence[int]) -> str | None:
        """The route (or ``other``) whose answer ``generated`` begins, or agrees
        with as far as it goes; ``None`` when that is not exactly one."""
        found = [
            name
            for name, answer in self.answers.items()
            if generated and tuple(generated[: len(answer)]) == answer[: len(generated)]
        ]
        return found[0] if len(found) == 1 else None

    def count_tokens(self, text: str) -> int:
        """A message's cost in the prompt: it goes in JSON-escaped (``\\u00e9`` for
        ``é``), and escaping can triple the tokens of non-English text."""
        return self.tokenizer.count(json.dumps(text))

    def end_ids(self) -> tuple[int, ...]:
        """Stop on the end of turn, or on any token that closes the JSON object:
        nothing after ``}`` changes the decision."""
        closing = [i for token, i in self.tokenizer.vocabulary().items() if "}" in token]
        return tuple(dict.fromkeys([*self.tokenizer.eos_ids, *sorted(closing)]))


class ArchRouter:
    """``PreferenceRouter`` on an in-process model (CTranslate2)."""

    def __init__(
        self,
        prompt: ArchRouterPrompt,
        generate: GenerateFn,
        options: ArchRouterOptions,
        *,
        device: str = "cpu",
    ) -> None:
        self.prompt = prompt
        self._options = options
        self._request_prompts: dict[tuple[Route, ...], ArchRouterPrompt] = {}
        self._generate = generate
        self._route_names = frozenset(r.name for r in prompt.routes)
        self.max_new_tokens = options.max_new_tokens or prompt.decisive_tokens
        self._end_ids = prompt.end_ids()
        batch_size = options.max_batch_size or (_GPU_BATCH if device == "cuda" else 1)
        self.batcher: MicroBatcher[EncodedPrompt, list[int]] = MicroBatcher(
            self._run_batch,
            max_batch_size=batch_size,
            max_wait_s=options.batch_wait_s,
        )

    @classmethod
    def load(
        cls, model_path: Path, routes: Sequence[Route], options: ArchRouterOptions
    ) -> ArchRouter:
        from ext_proc.router.ct2_engine import CT2Engine

        engine = CT2Engine.load(
            model_path,
            device=options.device,
            compute_type=options.compute_type,
            intra_threads=options.intra_threads,
        )
        tokenizer = ModelTokenizer.from_dir(model_path)
        prompt = ArchRouterPrompt(tokenizer, routes, split=options.static_prompt)
        log.info(
            "Arch-Router loaded from %s on %s (%s); %d prompt tokens cached",
            model_path,
            engine.device,
            engine.compute_type,
            len(prompt.static_ids),
        )
        return cls(prompt, engine.generate, options, device=engine.device)

    def count_tokens(self, text: str) -> int:
        return self.prompt.count_tokens(text)

    async def choose(
        self, conversation: tuple[Turn, ...], routes: tuple[Route, ...] | None = None
    ) -> RouteChoice:
        prompt, names = self.prompt, self._route_names
        if routes is None or routes == prompt.routes:
            encoded = prompt.encode(conversation)
        else:
            prompt = self._request_prompt(routes)
            names = frozenset(r.name for r in routes)
            # Its own prompt, uncached, and its own answer length.
            encoded = dataclasses.replace(
                prompt.encode(conversation),
                max_new_tokens=self._options.max_new_tokens or prompt.decisive_tokens,
            )
        generated = await self.batcher.submit(encoded)
        name = prompt.answer_of(generated)
        if name is not None:
            choice = RouteChoice(name)
        else:
            # Not one of the answers (the model wandered, or max_new_tokens was
            # set): read the text as it stands.
            prefix = prompt.answer_prefix_ids
            text = prompt.tokenizer.decode([*prefix, *generated])
            choice = parse_route(text, names)
        log.debug("Arch-Router said %r -> %s", generated, choice.route)
        return choice

    async def close(self) -> None:
        await self.batcher.close()

    def _request_prompt(self, routes: tuple[Route, ...]) -> ArchRouterPrompt:
        """The prompt for a request's own routes; the last few are kept, since a
        client that sends routes usually sends the same ones each time."""
        prompt = self._request_prompts.pop(routes, None)
        if prompt is None:
            prompt = ArchRouterPrompt(self.prompt.tokenizer, routes, split=False)
            while len(self._request_prompts) >= _REQUEST_PROMPTS:
                self._request_prompts.pop(next(iter(self._request_prompts)))
        self._request_prompts[routes] = prompt
        return prompt

    def _run_batch(self, prompts: list[EncodedPrompt]) -> list[list[int]]:
        # The config's prompts share one static prefix and answer length; a
        # request's own routes make a group of their own.
        groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
        for index, prompt in enumerate(prompts):
            groups.setdefault((prompt.static, prompt.max_new_tokens), []).append(index)
        out: list[list[int]] = [[] for _ in prompts]
        for (static, max_new), members in groups.items():
            generated = self._generate(
                [prompts[i].tokens for i in members],
                static_prompt=static or None,
                max_new_tokens=max_new or self.max_new_tokens,
                end_ids=self._end_ids,
            )
            for index, tokens in zip(members, generated, strict=True):
                out[index] = tokens
        return out
