"""Deciding apart from planning: the pure steps, the config's one model index, the retry
splice, and the processor each stream role gets."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from envoy.config.core.v3.base_pb2 import HeaderMap, HeaderValue
from envoy.service.ext_proc.v3.external_processor_pb2 import (
    HttpBody,
    HttpHeaders,
    ProcessingRequest,
)

from ext_proc.config import RoutingPreference
from ext_proc.errors import GatewayError
from ext_proc.headers import FALLBACK_CHAIN, UPSTREAM_PHASE_KEY
from ext_proc.router import RouteChoice
from ext_proc.routing.body import parse_json, with_model
from ext_proc.routing.decide import Decision, decide, is_open_model, look, resolve_model
from ext_proc.routing.resolve import Resolution, build_routing_table, configured_entry
from ext_proc.server.attempt import ATTEMPT_HEADER, AttemptProcessor
from ext_proc.server.routing_stream import RoutingProcessor
from ext_proc.server.service import ExternalProcessor
from ext_proc.server.translation_stream import TranslationProcessor
from ext_proc.state.process import reset_process_state
from tests.factories import config, provider

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True, fallbacks=("openai/gpt-5",)),
        provider("openai/gpt-5"),
        provider("anthropic/claude-sonnet-4-5"),
        aliases={"fast-model": "gpt-5.2"},
        preferences=(RoutingPreference("code", "writing code", ("anthropic/claude-sonnet-4-5",)),),
    )
)


@pytest.fixture(autouse=True)
def fresh_pins() -> Iterator[None]:
    reset_process_state()
    yield
    reset_process_state()


@pytest.mark.parametrize(
    ("requested", "open_model"),
    [(None, True), ("", True), ("auto", True), (" AUTO ", True), ("fast-model", False)],
)
def test_the_open_model_test(requested: str | None, open_model: bool) -> None:
    assert is_open_model(requested) is open_model
    assert look(TABLE, {"model": requested}, {}).asks_router is open_model


def test_a_named_model_never_asks_the_router_and_ignores_its_answer() -> None:
    seen = look(TABLE, {"model": "fast-model"}, {"x-model-affinity": "conv-1"})
    assert not seen.asks_router and seen.session is None
    decision = decide(TABLE, seen, RouteChoice("code", 0.9))
    assert decision.target.resolution is Resolution.ALIAS
    assert decision.target.route is None and decision.score is None
    assert decision.affinity is None


def test_the_routers_answer_and_score_become_the_decision() -> None:
    seen = look(TABLE, {"messages": []}, {})
    routed = decide(TABLE, seen, RouteChoice("code", 0.75))
    assert routed.target.model == "anthropic/claude-sonnet-4-5"
    assert routed.target.resolution is Resolution.ROUTER and routed.score == 0.75
    # A reason for no route goes to the default, reported with its score.
    other = decide(TABLE, seen, RouteChoice("other", 0.2))
    assert other.target.resolution is Resolution.DEFAULT and other.target.route == "other"
    assert other.score == 0.2
    assert decide(TABLE, seen) == Decision(decide(TABLE, seen).target)


def test_a_session_gets_a_new_decision_then_its_pinned_one() -> None:
    headers = {"x-model-affinity": "conv-1"}
    first = look(TABLE, {"model": "auto"}, headers)
    assert first.asks_router and first.session == "conv-1" and first.pinned is None
    pinned = decide(TABLE, first, RouteChoice("code"))
    assert pinned.affinity == "new"
    # The processor reads the pin from the shared store into the look.
    again = look(TABLE, {}, headers)._replace(pinned=pinned.target)
    assert not again.asks_router
    reused = decide(TABLE, again, RouteChoice("other"))
    assert reused.affinity == "pinned"
    assert reused.target.model == "anthropic/claude-sonnet-4-5" and reused.target.route == "code"


def test_every_lookup_reads_the_configs_one_index() -> None:
    table = build_routing_table(
        config(
            provider("openai/gpt-5"),
            provider("mistral/gpt-5"),
            provider("groq/*"),
            provider("deepseek/*"),
        )
    )
    assert table.models is table.config.models
    found = resolve_model(table, "groq/llama-4")
    assert (found.provider.model, found.upstream_model) == ("groq/*", "llama-4")
    assert configured_entry(table.models, "groq/llama-4").model == "groq/*"  # type: ignore[union-attr]
    assert configured_entry(table.models, "gpt-5") is None  # two explicit models: ambiguous
    for name, served_by in (("gpt-5", "openai/gpt-5, mistral/gpt-5"), ("x", "groq/*, deepseek/*")):
        with pytest.raises(GatewayError) as info:
            resolve_model(table, name)
        assert info.value.code == "model_ambiguous" and served_by in info.value.message
    with pytest.raises(GatewayError) as info:
        resolve_model(table, "nobody/gpt-5")
    assert info.value.code == "model_not_found"


def test_a_retry_body_gets_the_same_splice_as_the_first_attempt() -> None:
    body = b'{ "model" : "gpt-5.2",\n "seed": 1.50, "messages": [] }'
    assert with_model(parse_json(body), "gpt-5") == body.replace(b'"gpt-5.2"', b'"gpt-5"')
    assert with_model(parse_json(body), "gpt-5.2") is None

    def request(*pairs: tuple[str, str]) -> ProcessingRequest:
        values = [HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        return ProcessingRequest(request_headers=HttpHeaders(headers=HeaderMap(headers=values)))

    async def retry() -> bytes:
        attempt = AttemptProcessor(TABLE)
        await attempt.handle(
            request(
                (":path", "/v1/chat/completions"),
                (FALLBACK_CHAIN, "openai/gpt-5.2 openai/gpt-5"),
                (ATTEMPT_HEADER, "2"),
            )
        )
        response = await attempt.handle(
            ProcessingRequest(request_body=HttpBody(body=body, end_of_stream=True))
        )
        return response.request_body.response.body_mutation.body

    assert asyncio.run(retry()) == body.replace(b'"gpt-5.2"', b'"gpt-5"')


@pytest.mark.parametrize(
    ("metadata", "kind"),
    [
        ((), RoutingProcessor),
        (((UPSTREAM_PHASE_KEY, "translation"),), TranslationProcessor),
        (((UPSTREAM_PHASE_KEY, "upstream"),), AttemptProcessor),
        (((UPSTREAM_PHASE_KEY, "something-new"),), RoutingProcessor),
    ],
)
def test_each_stream_role_gets_its_own_processor(
    metadata: tuple[tuple[str, str], ...], kind: type
) -> None:
    servicer = ExternalProcessor(TABLE)
    headers = [(b":path", b"/envoy.service.ext_proc.v3.ExternalProcessor/Process")]
    headers += [(k.encode(), v.encode()) for k, v in metadata]
    stream = servicer.new_stream(headers)
    assert type(stream._processor) is kind


def test_a_routing_stream_that_sees_its_response_translates_it() -> None:
    """Envoy Gateway's one ext_proc filter sends the response on the routing stream."""
    values = [
        HeaderValue(key=k, raw_value=v.encode())
        for k, v in {
            ":status": "200",
            "content-type": "application/json",
            "x-archway-translate": "openai-to-anthropic",
        }.items()
    ]
    message = ProcessingRequest(
        response_headers=HttpHeaders(headers=HeaderMap(headers=values), end_of_stream=False)
    )
    response = asyncio.run(RoutingProcessor(TABLE).handle(message))
    assert response.WhichOneof("response") == "response_headers"
    assert list(response.response_headers.response.header_mutation.remove_headers) == [
        "x-archway-translate"
    ]
    assert response.HasField("mode_override")
