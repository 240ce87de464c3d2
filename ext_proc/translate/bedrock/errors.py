"""Bedrock's errors in the client's shape.

Bedrock answers an error with ``{"message": ...}`` (some services spell it
``Message``) and names the error in the ``x-amzn-ErrorType`` header, as
``ThrottlingException:http://internal.amazon.com/...``; the JSON may also say
``__type``. The upstream status is kept; the error's name becomes the code.
"""

from __future__ import annotations

import json

from ext_proc.apis import WireAPI
from ext_proc.errors import GatewayError, error_body
from ext_proc.translate.common import error_in_client_shape

__all__ = ["ERROR_TYPE_HEADER", "bedrock_error", "translate_error"]

ERROR_TYPE_HEADER = "x-amzn-errortype"
_PREVIEW_CHARS = 500


def bedrock_error(status: int, body: bytes, error_type: str | None = None) -> GatewayError:
    """What a Bedrock error body (and its ``x-amzn-ErrorType``) says."""
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        parsed = None
    message: object = None
    kind = _error_name(error_type)
    if isinstance(parsed, dict):
        message = parsed.get("message") or parsed.get("Message")
        kind = kind or _error_name(parsed.get("__type"))
    if not isinstance(message, str) or not message:
        text = body.decode("utf-8", "replace").strip()[:_PREVIEW_CHARS]
        message = f"Bedrock answered HTTP {status}" + (f": {text}" if text else ".")
    return GatewayError(status, message, code=kind or "upstream_error")


def _error_name(value: object) -> str | None:
    """``ValidationException:http://...`` or ``com.amazon...#ValidationException`` -> the name."""
    if not isinstance(value, str) or not value:
        return None
    name = value.split(":", 1)[0].rsplit("#", 1)[-1].strip()
    return name or None


def translate_error(
    client: WireAPI, status: int, body: bytes, error_type: str | None = None
) -> bytes:
    """An error body (any status >= 300) in the client's shape. Envoy's own replies
    (upstream unreachable, timeout) are already in that shape and pass unchanged."""
    if error_type is None and _looks_like_client_error(body):
        return error_in_client_shape(client, status, body)
    return error_body(client, bedrock_error(status, body, error_type))


def _looks_like_client_error(body: bytes) -> bool:
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, RecursionError):
        return False
    return isinstance(parsed, dict) and isinstance(parsed.get("error"), dict)
