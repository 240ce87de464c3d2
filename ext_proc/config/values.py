"""Text values a config holds: durations and ``.env`` files. Pure functions."""

from __future__ import annotations

import math
import re

__all__ = ["DURATION_HINT", "ENV_REF", "parse_dotenv", "parse_duration"]

# `$$` first, so that `$$HOME` is a literal `$HOME` rather than `$` + $HOME.
ENV_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DURATION_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
DURATION_HINT = "write a number of seconds or a duration such as 30s, 500ms, 2m or 1h"


def parse_duration(value: str | int | float) -> float:
    """Seconds in a duration: ``"30s"``, ``"500ms"``, ``"2m"``, ``"1h"``, ``"1.5s"``,
    ``"1m30s"``, or a plain number of seconds. Raises ``ValueError`` otherwise."""
    # bool is an int to Python, but `timeout: true` is a mistake, not one second.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        if _DURATION_NUMBER.fullmatch(text):
            seconds = float(text)
        else:
            # Go-style sequences (`1m30s`), as Envoy and Plano write them.
            seconds, pos = 0.0, 0
            while pos < len(text):
                part = _DURATION_PART.match(text, pos)
                if part is None:
                    raise ValueError(f"not a duration: {value!r}")
                seconds += float(part.group(1)) * _DURATION_UNITS[part.group(2)]
                pos = part.end()
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a duration: {value!r}")
    return seconds


def parse_dotenv(text: str) -> tuple[dict[str, str], list[int]]:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed),
    and the numbers of the lines that are none of those."""
    values: dict[str, str] = {}
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export ") or stripped.startswith("export\t"):
            stripped = stripped[len("export") :].lstrip()
        key, sep, rest = stripped.partition("=")
        key = key.strip()
        if not sep or not _ENV_NAME.fullmatch(key):
            bad.append(number)
            continue
        value = _dotenv_value(rest.strip())
        if value is None:
            bad.append(number)
            continue
        values[key] = value
    return values, bad


def _dotenv_value(rest: str) -> str | None:
    if not rest or rest[0] not in "'\"":
        # An unquoted `#` starts a comment only after whitespace, as in shells,
        # so `KEY=abc#def` keeps its `#`.
        return re.split(r"\s#", rest, maxsplit=1)[0].rstrip()
    quote = rest[0]
    out: list[str] = []
    i = 1
    while i < len(rest):
        char = rest[i]
        if char == quote:
            tail = rest[i + 1 :].strip()
            return "".join(out) if not tail or tail.startswith("#") else None
        if char == "\\" and quote == '"' and i + 1 < len(rest):
            nxt = rest[i + 1]
            out.append({"n": "\n", "t": "\t", "r": "\r"}.get(nxt, nxt))
            i += 2
            continue
        out.append(char)
        i += 1
    return None  # unterminated quote: multi-line values are not supported
