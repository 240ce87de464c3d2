"""What the Responses API translators cost per call, beside the chat translators.

    python -m bench.responses_cost

Pure Python, no network: the request, whole-answer and stream translations of
``ext_proc.translate.responses`` on the bodies the tests use, and the existing
chat <-> Anthropic translations for comparison. Best of 3; compare rows, not
machines.
"""

from __future__ import annotations

import asyncio
import timeit
from collections.abc import Callable

from ext_proc.state.memory import MemoryStore
from ext_proc.translate.anthropic_openai.stream import StreamTranslator as MessagesFromChat
from ext_proc.translate.openai_anthropic.request import translate_request as chat_to_messages
from ext_proc.translate.openai_anthropic.stream import StreamTranslator as ChatFromMessages
from ext_proc.translate.responses import (
    request_to_anthropic,
    request_to_chat,
    response_from_anthropic,
    response_from_chat,
    stream_from_anthropic,
    stream_from_chat,
)
from ext_proc.translate.responses.request import parse_request
from tests.fake_providers import (
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)

BODY = {
    "model": "m",
    "instructions": "Be brief.",
    "input": [
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"},
    ],
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
}


def per_call_us(fn: Callable[[], object], number: int = 2000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def main() -> None:
    request = parse_request(BODY)
    ctx = request.context("resp_bench", 0)
    completion, message = openai_completion("gpt"), anthropic_message("claude")
    chunks, events = openai_stream("gpt", include_usage=True), anthropic_stream("claude")
    chat_body = request_to_chat.translate_request(request)

    def stream(make: Callable[[], object], body: bytes) -> Callable[[], None]:
        def run() -> None:
            translator = make()
            translator.feed(body)  # type: ignore[attr-defined]
            translator.finish()  # type: ignore[attr-defined]

        return run

    store = MemoryStore()
    conversation = [
        *request.items,
        *response_from_chat.translate_response(ctx, completion)["output"],
    ]
    loop = asyncio.new_event_loop()

    def store_round_trip() -> None:
        loop.run_until_complete(store.put("resp_1", conversation, 60))
        loop.run_until_complete(store.get("resp_1"))

    rows = {
        "parse Responses request (3 items, 1 tool)": (lambda: parse_request(BODY), 1),
        "  -> chat request": (lambda: request_to_chat.translate_request(request), 1),
        "  -> Anthropic request": (lambda: request_to_anthropic.translate_request(request), 1),
        "  (chat request -> Anthropic request, existing)": (
            lambda: chat_to_messages(chat_body),
            1,
        ),
        "chat.completion -> Response": (
            lambda: response_from_chat.translate_response(ctx, completion),
            1,
        ),
        "Anthropic message -> Response": (
            lambda: response_from_anthropic.translate_response(ctx, message),
            1,
        ),
        "chat SSE -> Responses SSE, per upstream event": (
            stream(lambda: stream_from_chat.StreamTranslator(ctx), chunks),
            chunks.count(b"\n\n"),
        ),
        "Anthropic SSE -> Responses SSE, per upstream event": (
            stream(lambda: stream_from_anthropic.StreamTranslator(ctx), events),
            events.count(b"\n\n"),
        ),
        "  (Anthropic SSE -> chat chunks, existing)": (
            stream(lambda: ChatFromMessages(created=0, include_usage=True), events),
            events.count(b"\n\n"),
        ),
        "  (chat chunks -> Anthropic SSE, existing)": (
            stream(MessagesFromChat, chunks),
            chunks.count(b"\n\n"),
        ),
        "memory store put + get (5 items)": (store_round_trip, 1),
    }
    print("Python cost per call (best of 3):")
    for name, (fn, per) in rows.items():
        print(f"  {name:52s} {per_call_us(fn, 500) / per:7.1f} us")
    loop.close()


if __name__ == "__main__":
    main()
