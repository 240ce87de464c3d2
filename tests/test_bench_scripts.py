"""The profiling scripts still measure what they say (docs/profile.md): the
messages ``bench/phase_cost.py`` builds are routed by today's processor, and
every bootstrap ``bench/envoy_filter_cost.py`` writes is one Envoy accepts,
with the filters each setup names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingRequest

from bench import envoy_filter_cost, phase_cost
from ext_proc.deploy.envoy_process import validate_bootstrap


def test_phase_cost_measures_a_routed_request(tmp_path: Path) -> None:
    phases = phase_cost.Phases(phase_cost.write_config(tmp_path), iterations=3, repeat=1)
    phases.routing(2)  # raises when the body's answer is not a routed one
    labels = {label for _, label, _ in phases.rows}
    assert "body: handle" in labels
    assert "  body: handle, in context: parse_request" in labels


def test_one_message_request_carries_the_attributes() -> None:
    body = phase_cost.chat_body(2048)
    request = ProcessingRequest.FromString(
        phase_cost.one_message(body, phase_cost.client_headers(body))
    )
    fields = request.attributes[phase_cost.EXT_PROC_FILTER].fields
    assert fields["request.path"].string_value == "/v1/chat/completions"
    assert fields["request.method"].string_value == "POST"
    assert request.request_body.body == body


def test_canned_answers_match_each_phase() -> None:
    answers = envoy_filter_cost.canned_answers(phase_cost.chat_body(2048))
    from envoy.service.ext_proc.v3.external_processor_pb2 import ProcessingResponse

    kinds = {
        tag: ProcessingResponse.FromString(a).WhichOneof("response") for tag, a in answers.items()
    }
    assert kinds[0x12] == "request_headers"
    assert kinds[0x22] == kinds[0x100] == "request_body"
    assert ProcessingResponse.FromString(answers[0x100]).dynamic_metadata.fields["archway"]


@pytest.mark.parametrize("setup", ["buffered", "body_only", "translation_off"])
def test_filter_cost_bootstraps_are_valid(setup: str) -> None:
    data = envoy_filter_cost.bootstrap(setup, 10000, 10001, 10002, 10003)
    validate_bootstrap(json.dumps(data))
