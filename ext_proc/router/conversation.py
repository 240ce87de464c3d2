"""Which part of a request body a preference router reads: the conversation.

Pure: no I/O, no model. Every backend (Arch-Router, an embedding router) routes
on the same selection, so a route means the same thing whichever backend picks it.

The rules, in order:

1. Only user and assistant text counts. System and developer messages are the
   application's instructions, not the user's intent (Arch-Router is trained
   without them). Tool results and assistant turns that only call tools carry
   machine text that would drown the intent, so they go too.
2. A message's text parts are joined; image, audio, file and tool blocks are
   ignored (the router reads text only). A message left with no text is dropped.
3. At most the last ``max_messages`` remain.
4. They must fit ``token_budget`` as counted by ``count_tokens``. The latest user
   message is always kept, middle-trimmed when it alone is over the budget: the
   start of a long message usually says what is wanted and the end what to do
   now, so both ends are kept. Other turns are added newest first while they
   fit; the first that does not fit ends the selection, so no gap is left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ext_proc.apis import WireAPI
from ext_proc.router import Turn

__all__ = ["TRIM_MARKER", "middle_trim", "select_conversation"]

TRIM_MARKER = "\n[...]\n"
"""Stands where the middle of an over-long message was cut."""

_ROLES = frozenset({"user", "assistant"})
_TEXT_PART_TYPES: dict[WireAPI, frozenset[str]] = {
    # Both APIs call a text part "text"; images, audio, files and tool blocks
    # have their own types and are never read.
    WireAPI.OPENAI: frozenset({"text"}),
    WireAPI.ANTHROPIC: frozenset({"text"}),
}

# A request body may be several MiB. Before anything is tokenized a message is
# cut to this many characters per budget token: a token rarely spans more than
# 16 characters, so the cut keeps everything that could still fit, and the
# tokenizer never sees more than a few budgets' worth of text.
_MAX_CHARS_PER_TOKEN = 16
_TOKENS_PER_TEXT_SLACK = 4
"""Byte-level BPE, WordPiece and SentencePiece (with byte fallback) all spend at
most one token per UTF-8 byte, plus a word-start marker: a conversation with no
more bytes than the budget, less this per turn, fits without being tokenized."""


def select_conversation(
    body: Mapping[str, Any],
    api: WireAPI,
    *,
    count_tokens: Callable[[str], int],
    max_messages: int = 16,
    token_budget: int = 2048,
) -> tuple[Turn, ...]:
    """The turns a preference router should read, oldest first.

    ``body`` is an OpenAI chat completions body or an Anthropic Messages body
    (``api`` says which; Anthropic's top-level ``system`` is never read).
    ``count_tokens`` measures a message's text as the backend will see it.
    Returns ``()`` when the body has no conversation text at all.
    """
    turns = _text_turns(body.get("messages"), api)
    # turns[-0:] would be every turn, not none.
    turns = turns[-max_messages:] if max_messages > 0 else []
    return _fit_budget(turns, count_tokens, token_budget)


def _text_turns(messages: object, api: WireAPI) -> list[Turn]:
    if not isinstance(messages, Sequence) or isinstance(messages, str | bytes):
        return []
    out: list[Turn] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        # OpenAI's `tool`/`function` results, `system` and `developer` fall out
        # here; Anthropic has only user and assistant in `messages`.
        if role not in _ROLES:
            continue
        text = _message_text(message.get("content"), api)
        if text.strip():
            out.append(Turn(role=str(role), content=text))
    return out


def _message_text(content: object, api: WireAPI) -> str:
    """The text of one message: a string, or its text parts joined.

    An assistant turn that only calls tools has ``content: null`` (OpenAI) or only
    ``tool_use`` blocks (Anthropic); a user turn that only returns tool results
    has only ``tool_result`` blocks (Anthropic). All come out empty.
    """
    if isinstance(content, str):
        return content
    if not isinstance(content, Sequence) or isinstance(content, bytes):
        return ""
    text_types = _TEXT_PART_TYPES[api]
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            # Not valid in either API, but harmless to read as text.
            texts.append(part)
        elif isinstance(part, Mapping) and part.get("type") in text_types:
            text = part.get("text")
            if isinstance(text, str):
                texts.append(text)
    return "\n".join(t for t in texts if t)


def _fit_budget(
    turns: list[Turn], count_tokens: Callable[[str], int], token_budget: int
) -> tuple[Turn, ...]:
    if not turns or token_budget <= 0:
        return ()
    # Most conversations are far under the budget: tokenizing them only to learn
    # that costs a quarter of a millisecond per request.
    if sum(len(t.content.encode()) + _TOKENS_PER_TEXT_SLACK for t in turns) <= token_budget:
        return tuple(turns)
    cap = token_budget * _MAX_CHARS_PER_TOKEN
    last_user = next((i for i in range(len(turns) - 1, -1, -1) if turns[i].role == "user"), None)
    kept: dict[int, Turn] = {}
    remaining = token_budget
    if last_user is not None:
        turn = turns[last_user]
        text = middle_trim(turn.content, count_tokens, token_budget, max_chars=cap)
        kept[last_user] = Turn(turn.role, text)
        remaining -= count_tokens(text)
        # Anything after the latest user message is an assistant prefill: it goes in
        # only if it fits whole, and it never displaces the user's own words.
        for index in range(len(turns) - 1, last_user, -1):
            cost = _cost(turns[index].content, count_tokens, cap)
            if cost <= remaining:
                kept[index] = turns[index]
                remaining -= cost
        older = range(last_user - 1, -1, -1)
    else:
        older = range(len(turns) - 1, -1, -1)
    for index in older:
        cost = _cost(turns[index].content, count_tokens, cap)
        if cost > remaining:
            break
        kept[index] = turns[index]
        remaining -= cost
    return tuple(kept[i] for i in sorted(kept))


def _cost(text: str, count_tokens: Callable[[str], int], cap: int) -> int:
    if len(text) > cap:
        # Longer than any budget could hold (cap is budget x 16 characters): no
        # need to tokenize megabytes to know it does not fit.
        return cap
    return count_tokens(text)


def middle_trim(
    text: str, count_tokens: Callable[[str], int], budget: int, *, max_chars: int | None = None
) -> str:
    """``text`` if it fits ``budget`` tokens, else its start and end around
    ``TRIM_MARKER``, as long as still fits (found by bisection on the length)."""
    if max_chars is not None and len(text) > max_chars:
        text = _cut_middle(text, max_chars)
    if count_tokens(text) <= budget:
        return text
    low, high = 0, len(text) - 1
    best = _cut_middle(text, 0)
    while low <= high:
        keep = (low + high) // 2
        candidate = _cut_middle(text, keep)
        if count_tokens(candidate) <= budget:
            best, low = candidate, keep + 1
        else:
            high = keep - 1
    return best


def _cut_middle(text: str, keep: int) -> str:
    """``text`` with all but ``keep`` characters cut from its middle."""
    if keep >= len(text):
        return text
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + TRIM_MARKER + (text[len(text) - tail :] if tail else "")
