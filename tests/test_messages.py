"""ProcessingResponse builders: cached header options never leak between responses,
and mode overrides say what ``ext_proc.server.modes`` says."""

from __future__ import annotations

import pytest
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from google.protobuf import json_format

from ext_proc.server import messages, modes
from ext_proc.server.modes import BodyMode


def test_responses_do_not_share_cached_options() -> None:
    sets = [("x-archway-model", "openai/gpt-5.2"), ("content-length", "10")]
    first = messages.body_response(sets, ["authorization"], b"0123456789")
    first.request_body.response.header_mutation.set_headers[0].header.raw_value = b"changed"
    second = messages.body_response(sets, [], None)
    options = second.request_body.response.header_mutation.set_headers
    assert [(o.header.key, o.header.raw_value) for o in options] == [
        ("x-archway-model", b"openai/gpt-5.2"),
        ("content-length", b"10"),
    ]
    assert options[0].append_action == options[0].OVERWRITE_IF_EXISTS_OR_ADD
    assert second.request_body.response.clear_route_cache
    assert not second.request_body.response.HasField("body_mutation")
    assert list(first.request_body.response.header_mutation.remove_headers) == ["authorization"]


def test_empty_responses_still_name_their_phase() -> None:
    assert messages.headers_response().WhichOneof("response") == "request_headers"
    response = messages.body_response((), (), None, clear_route_cache=False)
    assert response.WhichOneof("response") == "request_body"
    assert response.request_body.HasField("response")


def test_attempt_overrides_follow_the_modes() -> None:
    retry = messages.attempt_headers_response((), (), retry=True).mode_override
    assert (retry.request_header_mode, retry.request_body_mode) == (
        ProcessingMode.SEND,
        ProcessingMode.BUFFERED,
    )
    assert (retry.response_header_mode, retry.response_body_mode) == (
        ProcessingMode.SEND,
        ProcessingMode.NONE,
    )
    first = messages.attempt_headers_response((), (), retry=False).mode_override
    assert (first.request_header_mode, first.request_body_mode) == (
        ProcessingMode.SEND,
        ProcessingMode.NONE,
    )
    assert first.response_header_mode == ProcessingMode.SKIP
    for override in (retry, first):
        assert override.request_trailer_mode == ProcessingMode.SKIP
        assert override.response_trailer_mode == ProcessingMode.SKIP


@pytest.mark.parametrize(
    ("body_mode", "expected"),
    [(BodyMode.STREAMED, ProcessingMode.STREAMED), (BodyMode.BUFFERED, ProcessingMode.BUFFERED)],
)
def test_translation_asks_for_the_response_body_as_told(body_mode: BodyMode, expected: int) -> None:
    override = messages.response_headers_response(body_mode=body_mode).mode_override
    assert override.response_body_mode == expected
    assert override.response_header_mode == ProcessingMode.SEND
    assert override.request_header_mode == ProcessingMode.SKIP
    assert override.request_body_mode == ProcessingMode.NONE
    assert not messages.response_headers_response().HasField("mode_override")


@pytest.mark.parametrize(
    "mode",
    [modes.ROUTING, modes.ATTEMPT_FIRST, modes.ATTEMPT_RETRY, modes.TRANSLATION_OFF],
)
def test_each_mode_is_one_envoy_processing_mode(mode: modes.Mode) -> None:
    # Every field written out, and each a name Envoy's enum knows.
    written = mode.envoy()
    assert set(written) == {f.name for f in ProcessingMode.DESCRIPTOR.fields}
    parsed = json_format.ParseDict(written, ProcessingMode())
    back = json_format.MessageToDict(
        parsed, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    # DEFAULT would mean "whatever the filter's config says": never written.
    assert back == written and "DEFAULT" not in written.values()
