"""The OpenAI Responses API (``POST /v1/responses``) served by providers without it.

- ``request``: the client's body, checked and normalised (``parse_request``),
  and the ``ResponseContext`` the response side needs;
- ``request_to_chat`` / ``request_to_anthropic``: the provider's request;
- ``response_from_chat`` / ``response_from_anthropic``: a whole answer as a Response;
- ``stream_from_chat`` / ``stream_from_anthropic``: upstream SSE in, Responses SSE
  out (``events.EventWriter`` writes the protocol, ``stream_base`` holds what the
  two share);
- ``output.translate_error``: an upstream error in the Responses error shape.

Pure: no protobuf, no I/O. Conversation state (``previous_response_id``,
``store``) lives in ``ext_proc.state``; a request carries the stored history
in, and ``output_items()`` / ``Response["output"]`` is what goes back.
"""
