"""Arch-Router in-process: prompt -> tokens -> CTranslate2 -> ``{"route": ...}``.

Everything the config fixes is done once at start-up: the chat template is
rendered around a placeholder for the conversation, and the tokens before it
become CTranslate2's static prompt. A request only tokenizes its conversation and
the short tail after it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ext_proc.config import ArchRouterOptions
from ext_proc.router import Route, RouteChoice, Turn
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

__all__ = ["ArchRouter", "ArchRouterPrompt", "EncodedPrompt", "GenerateFn"]

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
_OUTPUT_MARGIN = 4
"""Tokens beyond ``{"route": "<longest name>"}``: the end token and a stray space."""


@dataclass(frozen=True)
class EncodedPrompt:
    static: tuple[str, ...]
    """The config-only prefix (cached by CTranslate2); empty when not split."""
    tokens: tuple[str, ...]
    """The rest: the conversation and the template's tail (or everything)."""

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
            return EncodedPrompt(self.static_tokens, tuple(self.tokenizer.tokens(ids)))
        ids = self.tokenizer.encode(self.render(conversation))
        return EncodedPrompt((), tuple(self.tokenizer.tokens(ids)))

    def count_tokens(self, text: str) -> int:
        """A message's cost in the prompt: it goes in JSON-escaped (``\\u00e9`` for
        ``é``), and escaping can triple the tokens of non-English text."""
        return self.tokenizer.count(json.dumps(text))

    def max_new_tokens(self) -> int:
        longest = max(
            (self.tokenizer.count(json.dumps({"route": r.name})) for r in self.routes),
            default=8,
        )
        return longest + _OUTPUT_MARGIN

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
        self._generate = generate
        self._route_names = frozenset(r.name for r in prompt.routes)
        self.max_new_tokens = options.max_new_tokens or prompt.max_new_tokens()
        self._end_ids = prompt.end_ids()
        batch_size = options.max_batch_size or (_GPU_BATCH if device == "cuda" else 1)
        self.batcher: MicroBatcher[EncodedPrompt, str] = MicroBatcher(
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

    async def choose(self, conversation: tuple[Turn, ...]) -> RouteChoice:
        text = await self.batcher.submit(self.prompt.encode(conversation))
        choice = parse_route(text, self._route_names)
        log.debug("Arch-Router said %r -> %s", text, choice.route)
        return choice

    async def close(self) -> None:
        await self.batcher.close()

    def _run_batch(self, prompts: list[EncodedPrompt]) -> list[str]:
        # One router has one static prefix, so a batch always shares it.
        static = prompts[0].static
        outputs = self._generate(
            [p.tokens for p in prompts],
            static_prompt=static or None,
            max_new_tokens=self.max_new_tokens,
            end_ids=self._end_ids,
        )
        return [self.prompt.tokenizer.decode(ids) for ids in outputs]
