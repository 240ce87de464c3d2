"""Errors a client sees, in the shape of the API it speaks.

Each wire API has its error shape (``ext_proc.apis.ErrorShape``): OpenAI's
``{"error": {"message", "type", "param", "code"}}`` or Anthropic's
``{"type": "error", "error": {"type", "message"}}``.
"""

from __future__ import annotations

import json

from ext_proc.apis import ErrorShape, WireAPI

__all__ = ["GatewayError", "error_body", "error_payload"]

# Anthropic names its error types by status; OpenAI uses one type per family.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


class GatewayError(Exception):
    """A request Archway answers itself, with an HTTP status and a JSON error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers

    @property
    def openai_type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    @property
    def anthropic_type(self) -> str:
        if self.status >= 500 and self.status != 529:
            return "api_error"
        return _ANTHROPIC_TYPES.get(self.status, "invalid_request_error")


def error_payload(shape: ErrorShape, error: GatewayError) -> dict[str, object]:
    """``error`` as a JSON object of ``shape``; Envoy's own error replies are
    rendered from it too (``ext_proc.deploy.bootstrap``)."""
    if shape is ErrorShape.ANTHROPIC:
        return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": error.param,
            "code": error.code,
        }
    }


def error_body(api: WireAPI, error: GatewayError) -> bytes:
    """The JSON body of ``error`` as a client of ``api`` expects it."""
    # ASCII escapes: a message may quote client input that is not valid UTF-8
    # (a lone surrogate escape), and an error must always encode.
    return json.dumps(error_payload(api.error_shape, error)).encode()
