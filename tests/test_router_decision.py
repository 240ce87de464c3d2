"""Reading the model's answer tolerantly."""

from __future__ import annotations

import pytest

from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER
from ext_proc.router.decision import parse_route

ROUTES = frozenset({"code generation", "creative writing"})


@pytest.mark.parametrize(
    ("text", "route"),
    [
        ('{"route": "code generation"}', "code generation"),
        ('```json\n{"route": "creative writing"}\n```', "creative writing"),
        ("{'route': 'code generation'}", "code generation"),
        (
            'Sure! The best route is {"route": "creative writing"}. Hope it helps',
            "creative writing",
        ),
        ('{"route": "Creative  Writing"}', "creative writing"),
        ('{"route": "creative writing"', "creative writing"),
        ('{"route": "other"}', ROUTE_OTHER),
        ('{"route": "poetry"}', ROUTE_OTHER),
        ("I cannot decide.", ROUTE_ERROR),
        ('{"route": 3}', ROUTE_ERROR),
        ('{"destination": "code generation"}', ROUTE_ERROR),
        ("", ROUTE_ERROR),
    ],
)
def test_parse_route(text: str, route: str) -> None:
    assert parse_route(text, ROUTES).route == route
