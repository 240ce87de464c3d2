"""The usage side of one answer: read as it passes, reported once it ends.

A ``ResponseMeter`` reads the provider's bytes (before any translation) and,
at the end of the body, gives a ``UsageReport``: the provider's token counts,
and for streams the time to the first output token (from the request's
arrival, carried in the ``Ticket``) and the time per output token after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ext_proc.access.gate import Ticket
from ext_proc.telemetry.usage import StreamMeter, Usage, usage_from_body

__all__ = ["ResponseMeter", "UsageReport"]


@dataclass(frozen=True, slots=True)
class UsageReport:
    provider: str
    model: str
    client: str | None
    usage: Usage | None
    """``None`` when the answer carried none (an OpenAI stream whose client did
    not ask for ``stream_options.include_usage``)."""
    first_token_s: float | None = None
    per_token_s: float | None = None

    def log_fields(self) -> dict[str, int | float | str]:
        """The access log's fields (``%DYNAMIC_METADATA(archway:...)%``)."""
        out: dict[str, int | float | str] = {}
        usage = self.usage
        if usage is not None:
            out["input_tokens"] = usage.input_tokens
            out["output_tokens"] = usage.output_tokens
            out["cached_tokens"] = usage.cached_tokens
            out["reasoning_tokens"] = usage.reasoning_tokens
        if self.first_token_s is not None:
            out["time_to_first_token_ms"] = round(self.first_token_s * 1000, 1)
        return out


class ResponseMeter:
    __slots__ = ("_chunks", "_stream", "client", "model", "provider", "ticket")

    def __init__(self, ticket: Ticket | None, provider: str, model: str, *, streamed: bool) -> None:
        self.ticket = ticket
        self.provider = provider
        self.model = model
        self.client = ticket.client if ticket is not None else None
        self._stream = StreamMeter() if streamed else None
        self._chunks: list[bytes] = []

    @property
    def finished(self) -> bool:
        """A stream's last event went by: report now, the client may be gone
        before the end of the body reaches Archway."""
        return self._stream is not None and self._stream.finished

    def feed(self, chunk: bytes) -> None:
        if self._stream is not None:
            self._stream.feed(chunk, time.time())
        elif chunk:
            self._chunks.append(chunk)

    def finish(self) -> UsageReport:
        stream = self._stream
        if stream is None:
            usage = usage_from_body(b"".join(self._chunks))
            return UsageReport(self.provider, self.model, self.client, usage)
        first = per_token = None
        ticket = self.ticket
        if stream.first_output_at is not None and ticket is not None:
            first = max(0.0, stream.first_output_at - ticket.started_ms / 1000)
            usage = stream.usage
            if usage is not None and usage.output_tokens > 1:
                per_token = max(0.0, time.time() - stream.first_output_at) / (
                    usage.output_tokens - 1
                )
        return UsageReport(self.provider, self.model, self.client, stream.usage, first, per_token)
