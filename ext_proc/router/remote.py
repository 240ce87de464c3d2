"""Arch-Router served elsewhere: the same prompt, posted to an OpenAI-compatible
chat endpoint (vLLM, Ollama, llama.cpp's server).

The server applies the chat template itself, so only the user message is sent.
The standard library's HTTP client runs on a worker thread: a routing call is
rare and short enough that a connection pool would buy nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from ext_proc.config import RemoteRouterOptions
from ext_proc.router import Route, RouteChoice, Turn
from ext_proc.router.decision import parse_route
from ext_proc.router.prompt import route_prompt

__all__ = ["RemoteArchRouter", "estimate_tokens"]

log = logging.getLogger("archway.router")

_DEFAULT_MAX_NEW_TOKENS = 32
_MAX_RESPONSE_BYTES = 1024 * 1024


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` when no tokenizer is at hand: about 4 characters each
    in English, after JSON escaping (as the prompt holds it)."""
    return len(json.dumps(text)) // 4 + 1


class RemoteArchRouter:
    """``PreferenceRouter`` that asks a served Arch-Router."""

    def __init__(
        self,
        routes: Sequence[Route],
        options: RemoteRouterOptions,
        *,
        timeout_s: float,
        count_tokens: Callable[[str], int] = estimate_tokens,
    ) -> None:
        self.routes = tuple(routes)
        self._names = frozenset(r.name for r in routes)
        self._options = options
        self._url = options.endpoint.rstrip("/") + "/chat/completions"
        self._timeout_s = timeout_s
        self.count_tokens = count_tokens

    async def choose(
        self, conversation: tuple[Turn, ...], routes: tuple[Route, ...] | None = None
    ) -> RouteChoice:
        chosen = routes or self.routes
        names = self._names if routes is None else frozenset(r.name for r in routes)
        payload = {
            "model": self._options.model,
            "messages": [{"role": "user", "content": route_prompt(chosen, conversation)}],
            "temperature": 0,
            "max_tokens": self._options.max_new_tokens or _DEFAULT_MAX_NEW_TOKENS,
            "stream": False,
        }
        answer = await asyncio.to_thread(self._post, payload)
        text = _message_text(answer)
        choice = parse_route(text, names)
        log.debug("remote Arch-Router said %r -> %s", text, choice.route)
        return choice

    async def close(self) -> None:
        return None

    def _post(self, payload: dict[str, Any]) -> Any:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self._options.access_key:
            headers["authorization"] = f"Bearer {self._options.access_key}"
        request = urllib.request.Request(
            self._url, data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        # The caller's own timeout answers the client first; this one frees the thread.
        with urllib.request.urlopen(request, timeout=self._timeout_s) as response:
            return json.loads(response.read(_MAX_RESPONSE_BYTES))


def _message_text(answer: Any) -> str:
    try:
        content = answer["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError("the router endpoint's answer has no choices[0].message") from None
    return content if isinstance(content, str) else ""
