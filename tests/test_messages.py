"""ProcessingResponse builders: cached header options never leak between responses."""

from __future__ import annotations

from ext_proc.server import messages


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
