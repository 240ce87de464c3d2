"""Conversation selection: what a preference router reads from a request body."""

from __future__ import annotations

from ext_proc.apis import WireAPI
from ext_proc.router import Turn
from ext_proc.router.conversation import TRIM_MARKER, middle_trim, select_conversation


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


def select(body: dict, api: WireAPI = WireAPI.OPENAI, **kwargs: int) -> tuple[Turn, ...]:
    return select_conversation(body, api, count_tokens=words, **kwargs)


def test_openai_drops_system_developer_tools_and_tool_only_assistant_turns() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Never route to X."},
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "type": "function", "function": {"name": "w"}}],
            },
            {"role": "tool", "tool_call_id": "1", "content": '{"temp": 21}'},
            {"role": "function", "name": "w", "content": "legacy result"},
            {"role": "assistant", "content": "It is 21 degrees."},
            {"role": "user", "content": "Write a poem about it"},
        ]
    }
    assert select(body) == (
        Turn("user", "What is the weather in Paris?"),
        Turn("assistant", "It is 21 degrees."),
        Turn("user", "Write a poem about it"),
    )


def test_assistant_text_alongside_tool_calls_is_kept() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "look it up"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "1"}]},
        ]
    }
    assert select(body)[-1] == Turn("assistant", "Checking.")


def test_text_parts_are_joined_and_media_parts_ignored() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGR", "format": "wav"}},
                    {"type": "text", "text": "this picture"},
                ],
            },
            # Only an image: nothing for the router to read.
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        ]
    }
    assert select(body) == (Turn("user", "Describe\nthis picture"),)


def test_anthropic_body_ignores_system_tool_use_and_tool_results() -> None:
    body = {
        "system": "You are a router-hostile system prompt.",
        "messages": [
            {"role": "user", "content": "Find flights to Rome"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "s"},
                    {"type": "tool_use", "id": "t1", "name": "search", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "AZ 123"}],
            },
            {"role": "assistant", "content": [{"type": "text", "text": "Found AZ 123."}]},
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "data": "AAAA"}},
                    {"type": "text", "text": "Now translate this ticket"},
                ],
            },
        ],
    }
    assert select(body, WireAPI.ANTHROPIC) == (
        Turn("user", "Find flights to Rome"),
        Turn("assistant", "Found AZ 123."),
        Turn("user", "Now translate this ticket"),
    )


def test_keeps_at_most_the_last_max_messages() -> None:
    body = {"messages": [{"role": "user", "content": f"m{i}"} for i in range(40)]}
    turns = select(body)
    assert len(turns) == 16
    assert turns[0].content == "m24" and turns[-1].content == "m39"
    assert [t.content for t in select(body, max_messages=3)] == ["m37", "m38", "m39"]


def test_budget_keeps_newest_turns_without_gaps() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "one two three"},
            {"role": "assistant", "content": "a b c d e f g h"},
            {"role": "user", "content": "tiny"},
            {"role": "assistant", "content": "x y"},
            {"role": "user", "content": "latest ask here"},
        ]
    }
    # 3 + 2 + 1 = 6 fit in 7; the 8-word turn does not, so the older 3-word one
    # (which would fit) is not taken either: no holes in the conversation.
    assert [t.content for t in select(body, token_budget=7)] == ["tiny", "x y", "latest ask here"]


def test_a_conversation_with_fewer_bytes_than_the_budget_is_not_tokenized() -> None:
    calls: list[str] = []

    def counting(text: str) -> int:
        calls.append(text)
        return words(text)

    body = {"messages": [{"role": "user", "content": "héllo"}, {"role": "user", "content": "hi"}]}
    # 6 + 2 bytes, plus 4 per turn: 16.
    short = select_conversation(body, WireAPI.OPENAI, count_tokens=counting, token_budget=16)
    assert [t.content for t in short] == ["héllo", "hi"] and calls == []
    # One byte less and the tokenizer decides (here: both fit as two words).
    tight = select_conversation(body, WireAPI.OPENAI, count_tokens=counting, token_budget=15)
    assert [t.content for t in tight] == ["héllo", "hi"] and calls


def test_oversized_latest_user_message_is_middle_trimmed_not_dropped() -> None:
    long = " ".join(f"w{i}" for i in range(1000))
    body = {
        "messages": [
            {"role": "user", "content": "earlier"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": long},
        ]
    }
    (turn,) = select(body, token_budget=50)
    assert turn.role == "user"
    assert words(turn.content) <= 50
    assert turn.content.startswith("w0 w1 w2") and turn.content.endswith("w998 w999")
    assert TRIM_MARKER in turn.content


def test_assistant_prefill_never_displaces_the_latest_user_message() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "write a limerick"},
            {"role": "assistant", "content": " ".join(["la"] * 100)},
        ]
    }
    assert select(body, token_budget=10) == (Turn("user", "write a limerick"),)


def test_huge_messages_are_never_tokenized_whole() -> None:
    seen: list[int] = []

    def counting(text: str) -> int:
        seen.append(len(text))
        return len(text) // 4

    body = {
        "messages": [
            {"role": "assistant", "content": "b" * 3_000_000},
            {"role": "user", "content": "a" * 5_000_000},
        ]
    }
    (turn,) = select_conversation(body, WireAPI.OPENAI, count_tokens=counting, token_budget=100)
    assert counting(turn.content) <= 100
    assert max(seen) <= 100 * 16 + len(TRIM_MARKER)


def test_bodies_without_a_conversation_give_nothing() -> None:
    assert select({}) == ()
    assert select({"messages": "hello"}) == ()
    assert select({"messages": [None, 3, {"role": "user"}, {"role": "user", "content": " "}]}) == ()
    assert select({"messages": [{"role": "user", "content": "hi"}]}, token_budget=0) == ()
    assert select({"messages": [{"role": "user", "content": "hi"}]}, max_messages=0) == ()


def test_middle_trim_leaves_short_text_alone() -> None:
    assert middle_trim("a b c", words, 3) == "a b c"
    trimmed = middle_trim("a b c d e f", words, 4)
    assert words(trimmed) <= 4 and trimmed.startswith("a") and trimmed.endswith("f")
