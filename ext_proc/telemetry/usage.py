"""Token usage from a provider's answer: JSON bodies and SSE streams, every API.

Pure: bytes in, ``Usage`` out. The three shapes providers report:

- OpenAI Chat Completions: ``usage.prompt_tokens``, ``completion_tokens``,
  ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``;
  streamed only in the last chunk, and only when the request asked for it
  (``stream_options.include_usage``).
- Anthropic Messages: ``usage.input_tokens`` (excluding cache reads and writes),
  ``output_tokens``, ``cache_read_input_tokens``, ``cache_creation_input_tokens``;
  streamed in ``message_start`` (input) and ``message_delta`` (output, cumulative).
- OpenAI Responses: ``usage.input_tokens``, ``output_tokens``,
  ``input_tokens_details.cached_tokens``, ``output_tokens_details.reasoning_tokens``;
  streamed in ``response.completed`` (or ``response.incomplete``/``failed``).

``Usage.input_tokens`` is every prompt token the provider counted, cached or
not (OpenAI's meaning, and the GenAI conventions' ``gen_ai.usage.input_tokens``):
for Anthropic that is the sum of its three input counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ext_proc.translate.sse import SSEDecoder, SSEError

__all__ = ["StreamMeter", "Usage", "usage_from_body", "usage_from_object"]


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    """All prompt tokens, cached ones included."""
    output_tokens: int = 0
    """All generated tokens, reasoning ones included."""
    cached_tokens: int = 0
    """Prompt tokens read from the provider's cache."""
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    """Prompt tokens written to the cache (Anthropic's ``cache_creation_input_tokens``)."""

    def merge(self, later: Usage) -> Usage:
        """Anthropic streams report input and output in separate events; a later
        non-zero count replaces an earlier one (``message_delta`` is cumulative)."""
        return Usage(
            input_tokens=later.input_tokens or self.input_tokens,
            output_tokens=later.output_tokens or self.output_tokens,
            cached_tokens=later.cached_tokens or self.cached_tokens,
            reasoning_tokens=later.reasoning_tokens or self.reasoning_tokens,
            cache_write_tokens=later.cache_write_tokens or self.cache_write_tokens,
        )


def _count(value: Any) -> int:
    # bool is an int; a provider's `true` is no count.
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return 0


def _details(usage: Mapping[str, Any], key: str, field: str) -> int:
    details = usage.get(key)
    return _count(details.get(field)) if isinstance(details, dict) else 0


def usage_from_object(usage: Any) -> Usage | None:
    """A ``usage`` object in any of the three shapes; ``None`` if it is not one."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "completion_tokens" in usage:
        return Usage(
            input_tokens=_count(usage.get("prompt_tokens")),
            output_tokens=_count(usage.get("completion_tokens")),
            cached_tokens=_details(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_details(usage, "completion_tokens_details", "reasoning_tokens"),
        )
    if "input_tokens" in usage or "output_tokens" in usage:
        if "input_tokens_details" in usage or "output_tokens_details" in usage:
            # Responses API: input_tokens already includes the cached ones.
            return Usage(
                input_tokens=_count(usage.get("input_tokens")),
                output_tokens=_count(usage.get("output_tokens")),
                cached_tokens=_details(usage, "input_tokens_details", "cached_tokens"),
                reasoning_tokens=_details(usage, "output_tokens_details", "reasoning_tokens"),
            )
        cache_read = _count(usage.get("cache_read_input_tokens"))
        cache_write = _count(usage.get("cache_creation_input_tokens"))
        return Usage(
            input_tokens=_count(usage.get("input_tokens")) + cache_read + cache_write,
            output_tokens=_count(usage.get("output_tokens")),
            cached_tokens=cache_read,
            cache_write_tokens=cache_write,
        )
    return None


def usage_from_body(body: bytes) -> Usage | None:
    """The usage in a JSON answer (any API); ``None`` when it has none or is not JSON."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):
        usage = data["response"].get("usage")
    return usage_from_object(usage)


_ANTHROPIC_OUTPUT_EVENTS = frozenset({"content_block_delta", "content_block_start"})
_RESPONSES_DONE = frozenset({"response.completed", "response.incomplete", "response.failed"})
_FINAL_EVENTS = _RESPONSES_DONE | {"message_stop"}


class StreamMeter:
    """Reads a provider's SSE stream as it passes: its usage and when the first
    output arrived. Only events that can matter are parsed: before the first
    output every event, after it only those that mention ``usage``."""

    __slots__ = ("_decoder", "finished", "first_output_at", "usage")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self.usage: Usage | None = None
        self.first_output_at: float | None = None
        """The ``now`` of the ``feed`` call that carried the first output token."""
        self.finished = False
        """The stream's last event went by (``[DONE]``, ``message_stop``,
        ``response.completed``): clients close the connection on it, often
        before the body's end reaches Archway, so usage is reported here."""

    def feed(self, chunk: bytes, now: float) -> None:
        """Read ``chunk``; a stream that is not SSE stops being read (no usage)."""
        try:
            events = self._decoder.feed(chunk)
        except SSEError:
            self._decoder = SSEDecoder()
            return
        for event in events:
            data = event.data
            if data == "[DONE]" or event.event in _FINAL_EVENTS:
                self.finished = True
            if self.first_output_at is None:
                if self._is_output(event.event, data):
                    self.first_output_at = now
            elif '"usage"' not in data:
                continue
            if '"usage"' in data:
                self._read_usage(data)

    @staticmethod
    def _is_output(name: str | None, data: str) -> bool:
        if name is not None:
            if name in _ANTHROPIC_OUTPUT_EVENTS:
                return True
            return name.startswith("response.") and name.endswith(".delta")
        if '"delta"' not in data:
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            return False
        if not isinstance(chunk, dict):
            return False
        kind = chunk.get("type")
        if isinstance(kind, str):
            return kind in _ANTHROPIC_OUTPUT_EVENTS or kind.endswith(".delta")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and any(
                delta.get(k) for k in ("content", "tool_calls", "reasoning_content", "refusal")
            ):
                return True
        return False

    def _read_usage(self, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind == "message_start" and isinstance(message.get("message"), dict):
            found = usage_from_object(message["message"].get("usage"))
        elif kind in _RESPONSES_DONE and isinstance(message.get("response"), dict):
            found = usage_from_object(message["response"].get("usage"))
        else:
            found = usage_from_object(message.get("usage"))
        if found is not None:
            self.usage = found if self.usage is None else self.usage.merge(found)
