"""What the openai SDK makes of Archway's Responses output: each Response and
stream event validated against ``openai.types.responses``, and streams run
through the SDK's own accumulator (the code behind ``client.responses.stream``),
which refuses an event out of order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from ext_proc.translate.sse import SSEDecoder

__all__ = ["SDKStream", "sdk_response", "sdk_stream"]

_EVENT = TypeAdapter(ResponseStreamEvent)
_TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def sdk_response(payload: dict[str, Any]) -> Response:
    """Validated, not merely constructed: a missing required field fails."""
    return Response.model_validate(payload)


@dataclass
class SDKStream:
    types: list[str]
    payloads: list[dict[str, Any]]
    response: Response
    """The terminal event's Response, as the SDK's accumulator finished it."""

    def text_deltas(self) -> list[str]:
        return [p["delta"] for p in self.payloads if p["type"] == "response.output_text.delta"]


def sdk_stream(body: bytes) -> SDKStream:
    decoder = SSEDecoder()
    events = decoder.feed(body) + decoder.flush()
    assert body.endswith(b"\n\n"), "every event is terminated"
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    types: list[str] = []
    payloads: list[dict[str, Any]] = []
    final: Response | None = None
    for number, event in enumerate(events):
        payload = json.loads(event.data)
        assert event.event == payload["type"], "the SSE event name is the type"
        assert payload["sequence_number"] == number, "sequence numbers count from 0, no gaps"
        parsed = _EVENT.validate_python(payload)
        for emitted in state.handle_event(parsed):
            if emitted.type in _TERMINAL:
                final = emitted.response
        types.append(payload["type"])
        payloads.append(payload)
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] in _TERMINAL and types.count(types[-1]) == 1
    assert final is not None
    return SDKStream(types, payloads, final)
