"""Arch-Router's prompt, byte for byte, and the split that lets its prefix be cached."""

from __future__ import annotations

import json

from ext_proc.router import Route, Turn
from ext_proc.router.prompt import (
    CONVERSATION_SLOT,
    prompt_with_slot,
    route_prompt,
    routes_json,
    split_prompt,
)
from tests.tiny_qwen import EXAMPLE, EXAMPLE_CONVERSATION, ROUTES


def test_prompt_reproduces_the_documented_example_exactly() -> None:
    assert route_prompt(ROUTES, EXAMPLE_CONVERSATION) == EXAMPLE["prompt"]


def test_routes_are_name_and_description_in_config_order_ascii_escaped() -> None:
    routes = (Route("zeta", "last café", examples=("not sent",)), Route("alpha", "first"))
    assert json.loads(routes_json(routes)) == [
        {"name": "zeta", "description": "last café"},
        {"name": "alpha", "description": "first"},
    ]
    assert "caf\\u00e9" in routes_json(routes)
    assert "not sent" not in route_prompt(routes, (Turn("user", "hi"),))


def test_split_prompt_fills_back_to_the_whole_prompt() -> None:
    parts = split_prompt(prompt_with_slot(ROUTES))
    assert parts.fill(EXAMPLE_CONVERSATION) == EXAMPLE["prompt"]
    # Everything the config fixes is in the head: the routes, before the conversation.
    assert routes_json(ROUTES) in parts.head
    assert parts.head.endswith("<conversation>\n\n")
    assert CONVERSATION_SLOT not in parts.head + parts.tail
