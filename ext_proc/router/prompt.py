"""Arch-Router's prompt, byte for byte as the model card documents it. Pure.

The model was fine-tuned on exactly this text, so any drift (a space, key order,
``ensure_ascii``) costs accuracy: it is reproduced, not paraphrased. The whole
prompt goes to the model as one user message through its own chat template.

The part that only depends on the config (instructions and routes) comes before
the conversation, which is what lets a backend cache the model state for it
(``split_prompt``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ext_proc.router import Route, Turn

__all__ = [
    "CONVERSATION_SLOT",
    "FORMAT_PROMPT",
    "TASK_INSTRUCTION",
    "PromptParts",
    "conversation_json",
    "prompt_with_slot",
    "route_prompt",
    "routes_json",
    "split_prompt",
]

TASK_INSTRUCTION = """
You are a helpful assistant designed to find the best suited route.
You are provided with route description within <routes></routes> XML tags:
<routes>

{routes}

</routes>

<conversation>

{conversation}

</conversation>
"""

FORMAT_PROMPT = """
Your task is to decide which route is best suit with user intent on the conversation in <conversation></conversation> XML tags.  Follow the instruction:
1. If the latest intent from user is irrelevant or user intent is full filled, response with other route {"route": "other"}.
2. You must analyze the route descriptions and find the best match route for user latest intent. 
3. You only response the name of the route that best matches the user's request, use the exact name in the <routes></routes>.

Based on your analysis, provide your response in the following JSON formats if you decide to match any route:
{"route": "route_name"} 
"""  # noqa: E501, W291 -- the model's own text, trailing spaces included

CONVERSATION_SLOT = "\ue000archway-conversation\ue000"
"""Stands for the conversation while the config-only part of the prompt is built.
Private-use characters: no chat template or client text produces them."""


def routes_json(routes: Sequence[Route]) -> str:
    """The routes as the model saw them in training: ``name`` and ``description``
    only, in config order, with ``json.dumps``'s defaults (ASCII-escaped)."""
    return json.dumps([{"name": r.name, "description": r.description} for r in routes])


def conversation_json(conversation: Sequence[Turn]) -> str:
    return json.dumps([{"role": t.role, "content": t.content} for t in conversation])


def route_prompt(routes: Sequence[Route], conversation: Sequence[Turn]) -> str:
    """The user message Arch-Router reads."""
    return (
        TASK_INSTRUCTION.format(
            routes=routes_json(routes), conversation=conversation_json(conversation)
        )
        + FORMAT_PROMPT
    )


@dataclass(frozen=True)
class PromptParts:
    """A prompt around its conversation: ``head + conversation_json(...) + tail``."""

    head: str
    tail: str

    def fill(self, conversation: Sequence[Turn]) -> str:
        return self.head + conversation_json(conversation) + self.tail


def split_prompt(text_with_slot: str) -> PromptParts:
    """Split a text that holds ``CONVERSATION_SLOT`` exactly once around it."""
    if text_with_slot.count(CONVERSATION_SLOT) != 1:
        raise ValueError("the text must hold the conversation slot exactly once")
    head, tail = text_with_slot.split(CONVERSATION_SLOT)
    return PromptParts(head, tail)


def prompt_with_slot(routes: Sequence[Route]) -> str:
    """``route_prompt`` with ``CONVERSATION_SLOT`` where the conversation goes."""
    return TASK_INSTRUCTION.format(routes=routes_json(routes), conversation=CONVERSATION_SLOT) + (
        FORMAT_PROMPT
    )
