"""Translation between wire APIs: one ``Translator`` per (client API, provider API).

Each pair is a package named ``<client>_<provider>`` with one module per phase
(``request``, ``response``, ``stream``), wired together behind the ``Translator``
interface in its ``__init__``; ``translator_for`` picks the pair once per
request. Supporting a new API pair is a new package and one registry entry.
Pure: no protobuf, no I/O.

The request is translated in the routing filter's body phase. The response is
translated by a second ext_proc stream (see ``ext_proc.deploy.bootstrap``), which
reads the ``TranslationContext`` back from ``TRANSLATE_HEADER`` echoed onto the
response.
"""

from __future__ import annotations

import json

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError
from ext_proc.translate.anthropic_openai import AnthropicToOpenAI
from ext_proc.translate.base import StreamTranslator, TranslationContext, Translator
from ext_proc.translate.common import encode_json
from ext_proc.translate.openai_anthropic import OpenAIToAnthropic

__all__ = [
    "StreamTranslator",
    "TranslationContext",
    "Translator",
    "context_from_header",
    "translate_response",
    "translator_for",
]

_TRANSLATORS: dict[tuple[WireAPI, WireAPI], Translator] = {
    (t.client, t.provider): t for t in (OpenAIToAnthropic(), AnthropicToOpenAI())
}


def translator_for(client: WireAPI, provider: WireAPI) -> Translator | None:
    """The translator serving ``client``'s API from ``provider``'s; ``None`` when
    they are the same API and the body goes through as it is."""
    if client is provider:
        return None
    translator = _TRANSLATORS.get((client, provider))
    if translator is None:
        raise GatewayError(
            400,
            f"This model's provider speaks the {provider} API, and Archway cannot "
            f"translate {client} API requests to it; pick a model served in the {client} API.",
            code="unsupported_api_pair",
        )
    return translator


_BY_PAIR: dict[str, Translator] = {
    TranslationContext(t.client, t.provider).pair: t for t in _TRANSLATORS.values()
}


def context_from_header(value: str | None) -> tuple[Translator, TranslationContext] | None:
    """The translator and context a ``TranslationContext.header_value`` names, or
    ``None`` for anything else (a header no translator wrote)."""
    if value is None:
        return None
    pair, _, state = value.partition(";")
    translator = _BY_PAIR.get(pair)
    if translator is None:
        return None
    return translator, TranslationContext(translator.client, translator.provider, state)


def translate_response(
    translator: Translator, context: TranslationContext, body: bytes, *, created: int
) -> bytes:
    """A whole successful (2xx) JSON response body, in the client's API.

    A body that is not a JSON object goes back unchanged: there is nothing
    meaningful to translate, and the client is better served seeing it.
    """
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(parsed, dict):
        return body
    return encode_json(translator.response(parsed, context, created=created))
