"""Amazon Bedrock's Converse API, for OpenAI and Anthropic clients.

Plano's ``amazon_bedrock/<model id>`` providers speak Converse: ``POST
/model/{modelId}/converse`` answers JSON, ``.../converse-stream`` answers AWS
event-stream frames (``ext_proc.translate.eventstream``), not SSE. One module per
direction and phase, all pure:

- ``request_from_openai`` / ``request_from_anthropic``: client request -> ``ConverseRequest``;
- ``response_to_openai`` / ``response_to_anthropic``: Converse JSON -> client JSON;
- ``stream_to_openai`` / ``stream_to_anthropic``: event-stream bytes -> client SSE;
- ``errors``: Bedrock error body -> the client's error shape;
- ``converse``: what they share (paths, stop reasons, usage, stream events);
- ``request_parts``: what both request translators build (media, tools, settings).
"""

from ext_proc.translate.bedrock.converse import (
    STREAM_CONTENT_TYPE,
    ConverseRequest,
    converse_path,
)

__all__ = ["STREAM_CONTENT_TYPE", "ConverseRequest", "converse_path"]
