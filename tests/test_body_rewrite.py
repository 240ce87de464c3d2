"""The body fast path: the new ``model`` is spliced into the client's bytes, and
the body means exactly what ``json.loads`` would have made of it."""

from __future__ import annotations

import json

import pytest

from ext_proc.apis import Endpoint
from ext_proc.errors import GatewayError
from ext_proc.routing.body import _scan_object, parse_body, parse_request
from ext_proc.routing.decide import decide, look
from ext_proc.routing.plan import RequestPlan, plan_request
from ext_proc.routing.resolve import RoutingTable, build_routing_table
from tests.factories import config, provider

TABLE = build_routing_table(
    config(
        provider("openai/gpt-5.2", default=True),
        provider("openai/gpt-5"),
        aliases={"fast-model": "gpt-5.2", "модель": "gpt-5"},
    )
)
HEADERS = {"content-type": "application/json"}


def plan_for(
    table: RoutingTable, endpoint: Endpoint, headers: dict[str, str], body: bytes
) -> RequestPlan:
    """The routing stream's steps for a request that asks no router."""
    parsed = parse_request(headers, body, endpoint.api)
    return plan_request(decide(table, look(table, parsed.data, headers)), parsed, endpoint, headers)


def plan(body: bytes) -> RequestPlan:
    return plan_for(TABLE, Endpoint.CHAT_COMPLETIONS, HEADERS, body)


def test_only_the_model_changes_byte_for_byte() -> None:
    body = (
        '{\n  "model" : "fast-model",\n  "messages": [{"role": "user", '
        '"content": "héllo 😀 \\u00e9 \\"quoted\\""}],\n'
        '  "temperature": 0.1000000000000000055511151231257827,\n'
        '  "seed": 123456789012345678901234567890, "stop": null\n}\n'
    ).encode()
    new = plan(body).body
    assert new == body.replace(b'"fast-model"', b'"gpt-5.2"')


def test_escaped_model_name_is_decoded_and_replaced() -> None:
    body = b'{"model":"fast\\u002dmodel","messages":[]}'
    result = plan(body)
    assert result.decision.model == "openai/gpt-5.2"
    assert result.body == b'{"model":"gpt-5.2","messages":[]}'


def test_model_inside_other_fields_is_left_alone() -> None:
    body = (
        b'{"metadata": {"model": "fast-model"}, "messages": [{"model": "x", "content": "model"}],'
        b' "model": "fast-model"}'
    )
    new = plan(body).body
    assert new is not None
    assert json.loads(new) == {
        "metadata": {"model": "fast-model"},
        "messages": [{"model": "x", "content": "model"}],
        "model": "gpt-5.2",
    }
    assert new.count(b'"fast-model"') == 1


def test_duplicate_model_keys_route_on_the_last_and_leave_one() -> None:
    body = b'{"model": "gpt-5", "messages": [], "model": "fast-model"}'
    result = plan(body)
    assert result.decision.model == "openai/gpt-5.2"  # json.loads keeps the last
    assert result.body is not None
    assert result.body.count(b'"model"') == 1
    assert json.loads(result.body) == {"model": "gpt-5.2", "messages": []}


def test_unicode_alias_and_target() -> None:
    body = '{"model": "модель", "messages": []}'.encode()
    result = plan(body)
    assert result.decision.model == "openai/gpt-5"
    assert result.body == b'{"model": "gpt-5", "messages": []}'
    assert result.set_headers[-1] == ("content-length", str(len(result.body)))


def test_absent_model_gets_the_default() -> None:
    result = plan(b'{"messages": []}')
    assert result.body is not None
    assert json.loads(result.body) == {"messages": [], "model": "gpt-5.2"}


def test_unchanged_model_leaves_the_body_alone() -> None:
    assert plan(b'{"model": "gpt-5.2"}').body is None


def test_a_utf8_bom_still_parses() -> None:
    result = plan(b'\xef\xbb\xbf{"model": "fast-model"}')
    assert result.body is not None
    assert json.loads(result.body)["model"] == "gpt-5.2"


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b" { } ",
        b'{"a": 1, "b": [1, 2, {"c": null}], "d": "\\ud83d\\ude00", "e": -1.5e-3}',
        b'{"model": "x", "model": "y"}',
        b'{"n": NaN, "i": Infinity}',
        '{"ключ": "значение"}'.encode(),
    ],
)
def test_the_scan_agrees_with_json_loads(body: bytes) -> None:
    scanned = _scan_object(body)
    assert scanned is not None
    assert scanned.data == json.loads(body) or body.startswith(b'{"n"')


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "x"} trailing',
        b'{"model": "x",}',
        b'{"model" "x"}',
        b"[1, 2]",
        b'"model"',
        b'{"model": "x"',
        b'{"a": tru}',
        b"\xff\xfe{}",
        b'{"a": "\x01"}',
    ],
)
def test_errors_are_worded_as_before(body: bytes) -> None:
    assert _scan_object(body) is None
    with pytest.raises(GatewayError) as info:
        parse_body(HEADERS, body)
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, json.JSONDecodeError):
            assert f"{exc.msg} at line {exc.lineno} column {exc.colno}" in info.value.message
    else:
        assert not isinstance(parsed, dict)
        assert info.value.code == "invalid_body"


def test_cached_headers_follow_what_the_client_sent() -> None:
    anthropic = build_routing_table(config(provider("anthropic/claude-sonnet-4-5", default=True)))
    body = b'{"model": "claude-sonnet-4-5", "max_tokens": 5, "messages": []}'

    def run(extra: dict[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
        plan = plan_for(anthropic, Endpoint.MESSAGES, {**HEADERS, **extra}, body)
        return dict(plan.set_headers), plan.remove_headers

    for _ in range(2):  # the second round is served from the cache
        sets, removes = run({"authorization": "Bearer c", "anthropic-version": "2099-01-01"})
        assert "anthropic-version" not in sets and removes == ("authorization",)
        sets, removes = run({})
        assert sets["anthropic-version"] == "2023-06-01" and removes == ()
        assert sets["x-api-key"] == "sk-anthropic-secret"


def test_a_new_table_never_reads_an_old_tables_plans() -> None:
    for key in ("sk-first", "sk-second", "sk-third"):
        table = build_routing_table(config(provider("openai/gpt-5.2", access_key=key)))
        plan = plan_for(table, Endpoint.CHAT_COMPLETIONS, HEADERS, b'{"model": "gpt-5.2"}')
        assert ("authorization", f"Bearer {key}") in plan.set_headers
        del table  # its id may be reused by the next table


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"fast-model"}',
        b' {\n\t"a" : [1, {"model": "x"}] ,\r\n "model"\t:\n"fast-model" , "z": "}"}  ',
        b'{"m\\u006fdels": "gpt-5", "model": "fast-model", "k\\"ey": {"model": 1}}',
        b'{"a": "\\"model\\": \\"x\\"", "model": "fast-model", "b": []}',
        b'{"model": "fast-model", "messages": [{"content": "' + b"x" * 70_000 + b'"}]}',
    ],
)
def test_the_member_walk_splices_exactly_the_model(body: bytes) -> None:
    parsed = parse_request(HEADERS, body)
    assert parsed.text is None and parsed.model_span is not None  # the msgspec path
    assert dict(parsed.fields) == json.loads(body)
    assert plan(body).body == body.replace(b'"fast-model"', b'"gpt-5.2"')


def test_an_escaped_duplicate_model_is_still_a_duplicate() -> None:
    body = b'{"m\\u006fdel": "gpt-5", "model": "fast-model"}'
    assert parse_request(HEADERS, body).model_span is None
    assert json.loads(plan(body).body or b"") == {"model": "gpt-5.2"}


def test_members_are_decoded_only_when_read() -> None:
    parsed = parse_request(HEADERS, b'{"model": "fast-model", "messages": [], "n": 1}')
    assert parsed.fields["model"] == "fast-model"
    assert parsed.fields._values == {"model": "fast-model"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["messages", "top", "unread"])
def test_a_body_nested_past_the_parsers_depth_is_a_400(where: str) -> None:
    deep = b'{"a":' * 3000 + b"1" + b"}" * 3000
    body = {
        "messages": b'{"model": "gpt-5.2", "messages": [' + deep + b"]}",
        "top": deep,
        "unread": b'{"model": "gpt-5.2", "metadata": ' + deep + b', "messages": []}',
    }[where]
    with pytest.raises(GatewayError) as err:
        parse_request({"content-type": "application/json"}, body).data  # noqa: B018
    assert err.value.status == 400 and err.value.code == "invalid_json"
    assert "nested too deeply" in err.value.message
