"""Reading Arch-Router's answer: ``{"route": "name"}``, however it comes. Pure.

Small models wrap JSON in code fences, use Python quotes, or add a sentence; all
of that is accepted. What it decides:

- a configured route name: that route;
- ``other``, or a name that is not configured: ``other`` (the model answered,
  and no configured route fits);
- no ``route`` found at all: ``error`` (the model did not answer the question).

Either way the default model serves the request.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection

from ext_proc.router import ROUTE_ERROR, ROUTE_OTHER, RouteChoice

__all__ = ["extract_route", "parse_route"]

_OBJECT = re.compile(r"\{.*?\}", re.S)
_ROUTE_FIELD = re.compile(r"""["']?route["']?\s*:\s*(?:"([^"]*)"|'([^']*)')""", re.I)


def parse_route(text: str, routes: Collection[str]) -> RouteChoice:
    """The decision in ``text`` for a router configured with ``routes``."""
    name = extract_route(text)
    if name is None:
        return RouteChoice(ROUTE_ERROR)
    if name in routes:
        return RouteChoice(name)
    # The model may change case or spacing of a name it was shown.
    folded = {" ".join(r.split()).casefold(): r for r in routes}
    match = folded.get(" ".join(name.split()).casefold())
    return RouteChoice(match if match is not None else ROUTE_OTHER)


def extract_route(text: str) -> str | None:
    """The ``route`` value in ``text``, or ``None`` when there is none."""
    for candidate in _OBJECT.findall(text):
        value = _route_of(candidate)
        if value is not None:
            return value
    found = _ROUTE_FIELD.search(text)
    if found is not None:
        return found.group(1) if found.group(1) is not None else found.group(2)
    return None


def _route_of(candidate: str) -> str | None:
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(candidate)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, dict) and isinstance(value.get("route"), str):
            return value["route"]
    return None
