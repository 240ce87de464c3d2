"""Reading composed YAML nodes: line tracking, ``$VAR`` and ``.env`` expansion,
typed scalars, did-you-mean for keys, and every problem with its line and fix.

A ``Reader`` is one load's context: the section readers call it and return the
values they read; it keeps only what it has reported and what it has cached.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from ext_proc.config.fields import Kind, Setting, setting_of
from ext_proc.config.problems import Problems
from ext_proc.config.values import DURATION_HINT, ENV_REF, parse_dotenv, parse_duration

__all__ = [
    "BOOL_TAG",
    "FLOAT_TAG",
    "IGNORED",
    "INT_TAG",
    "Reader",
    "describe",
    "is_null",
    "join",
    "line_of",
    "listing",
]


_STR = "tag:yaml.org,2002:str"
INT_TAG = "tag:yaml.org,2002:int"
FLOAT_TAG = "tag:yaml.org,2002:float"
BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

IGNORED = "Plano setting not used by Archway; ignored"

_KINDS = {
    _STR: "a string",
    INT_TAG: "an integer",
    FLOAT_TAG: "a number",
    BOOL_TAG: "a boolean",
    _NULL: "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def join(path: str, key: str) -> str:
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def line_of(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


def describe(node: yaml.Node, *, secret: bool = False) -> str:
    kind = _kind(node)
    if secret or not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
        return kind
    return f"{kind} {node.value!r}" if node.tag == _STR else f"{kind} ({node.value})"


def listing(names: Iterable[str]) -> str:
    return ", ".join(names) or "(none)"


def _shown_url(raw: str) -> str:
    # A URL may embed credentials (https://user:token@host): name it without them.
    return "(value hidden: it contains credentials)" if "@" in raw else repr(raw)


class Reader:
    """One load: walks the composed YAML by schema, gathering every problem."""

    def __init__(
        self, *, source: Path | None, environ: Mapping[str, str], allow_missing_env: bool
    ) -> None:
        self.source = source
        self.environ = environ
        self.allow_missing_env = allow_missing_env
        label = str(source) if source is not None else "<config>"
        self.errors = Problems(label)
        self.warnings = Problems(label)
        self.dotenv_path = source.resolve().parent / ".env" if source is not None else None
        self._dotenv: dict[str, str] | None = None
        self._constructor = SafeConstructor()
        self._pairs: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    # -- reporting -----------------------------------------------------------------

    def error(
        self, node: yaml.Node | int | None, path: str, message: str, fix: str | None = None
    ) -> None:
        line = node if isinstance(node, int) or node is None else line_of(node)
        self.errors.add(line, path, message, fix)

    @property
    def error_count(self) -> int:
        """Compare before and after reading a part, to tell whether it had a fault."""
        return len(self.errors.items)

    def warn(self, node: yaml.Node | int | None, path: str, message: str) -> None:
        line = node if isinstance(node, int) or node is None else line_of(node)
        self.warnings.add(line, path, message)

    def unknown_key(self, key_node: yaml.Node, path: str, key: str, allowed: Iterable[str]) -> None:
        choices = sorted(set(allowed))
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {listing(choices)}"
        self.error(key_node, join(path, key), f"unknown key {key!r}", fix)

    def missing_key(self, node: yaml.Node, path: str, key: str, example: str) -> None:
        self.error(node, path, f"missing required key {key!r}", f"add {example}")

    # -- environment ---------------------------------------------------------------

    def lookup_env(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is not None:
            return value
        return self.dotenv().get(name)

    def dotenv(self) -> dict[str, str]:
        # Read only when a variable is missing from the environment, so a broken
        # .env never gets in the way of a fully exported environment.
        if self._dotenv is not None:
            return self._dotenv
        self._dotenv = {}
        path = self.dotenv_path
        if path is None or not path.is_file():
            return self._dotenv
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error(None, "", f"cannot read {path}: {exc}", "fix or remove that file")
            return self._dotenv
        self._dotenv, bad = parse_dotenv(text)
        for number in bad:
            # The line is not echoed: it may well hold a secret.
            self.errors.add_unplaced(
                f"{path}:{number}: cannot parse this line; write it as KEY=VALUE"
            )
        return self._dotenv

    def env_fix(self, name: str) -> str:
        if self.dotenv_path is None:
            return f"export {name}=... before loading the config"
        return f"export {name}=... or add it to {self.dotenv_path}"

    def expand(
        self, raw: str, node: yaml.Node, path: str, *, missing_ok: bool = False
    ) -> str | None:
        """``raw`` with its variables substituted; ``None`` when one is missing
        (reported unless ``missing_ok``)."""
        if "$" not in raw:
            return raw
        missing: list[str] = []

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1) or match.group(2)
            if name is None:
                return "$"
            value = self.lookup_env(name)
            if value is None:
                missing.append(name)
                return ""
            return value

        out = ENV_REF.sub(substitute, raw)
        if not missing:
            return out
        if not missing_ok:
            for name in dict.fromkeys(missing):
                self.error(
                    node, path, f"environment variable {name} is not set", self.env_fix(name)
                )
        return None

    # -- structure -----------------------------------------------------------------

    def pairs(self, node: yaml.MappingNode, path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """The mapping's entries by key, with YAML merge keys (``<<: *anchor``)
        applied and duplicate keys reported."""
        # Memoized: several passes read one mapping, and each problem is told once.
        cached = self._pairs.get(id(node))
        if cached is not None:
            return cached
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        self._pairs[id(node)] = out
        merged: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:
                merged.append(value_node)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, path, f"a key must be plain text, not {_kind(key_node)}")
                continue
            key = key_node.value
            if key in out:
                first = line_of(out[key][0])
                self.error(
                    key_node,
                    join(path, key),
                    f"duplicate key {key!r} (also at line {first})",
                    "keep only one of them",
                )
                continue
            out[key] = (key_node, value_node)
        for source in merged:
            parts = source.value if isinstance(source, yaml.SequenceNode) else [source]
            for part in parts:
                if not isinstance(part, yaml.MappingNode):
                    self.error(part, path, "a merge key (<<) must refer to a mapping")
                    continue
                for key, entry in self.pairs(part, path).items():
                    out.setdefault(key, entry)
        return out

    def mapping(
        self,
        node: yaml.Node | None,
        path: str,
        allowed: Sequence[str] | None,
        ignored: Mapping[str, str] | None = None,
    ) -> dict[str, yaml.Node] | None:
        """The entries of a mapping (``{}`` when absent or null). Keys outside
        ``allowed`` are errors, keys in ``ignored`` warnings; ``allowed=None``
        takes any key. ``None`` when it is not a mapping (reported)."""
        if is_null(node):
            return {}
        assert node is not None
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node,
                path,
                f"expected a mapping, got {describe(node)}",
                "write it as indented `key: value` lines",
            )
            return None
        out: dict[str, yaml.Node] = {}
        ignored = ignored or {}
        for key, (key_node, value_node) in self.pairs(node, path).items():
            if allowed is None or key in allowed:
                out[key] = value_node
            elif key in ignored:
                self.warn(key_node, join(path, key), ignored[key])
            else:
                self.unknown_key(key_node, path, key, [*(allowed or ()), *ignored])
        return out

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node] | None:
        if is_null(node):
            return []
        assert node is not None
        if not isinstance(node, yaml.SequenceNode):
            self.error(
                node,
                path,
                f"expected a list, got {describe(node)}",
                "write one entry per line, each starting with '- '",
            )
            return None
        return list(node.value)

    # -- scalars -------------------------------------------------------------------

    def raw_text(self, node: yaml.Node | None, path: str, *, secret: bool = False) -> str | None:
        """The string as written, before variables are substituted."""
        if is_null(node):
            return None
        assert node is not None
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        fix = (
            "put the value in quotes"
            if isinstance(node, yaml.ScalarNode)
            else "write a single string value"
        )
        self.error(node, path, f"expected a string, got {describe(node, secret=secret)}", fix)
        return None

    def text(self, node: yaml.Node | None, path: str, *, secret: bool = False) -> str | None:
        raw = self.raw_text(node, path, secret=secret)
        if raw is None:
            return None
        assert node is not None
        return self.expand(raw, node, path)

    def typed(
        self,
        node: yaml.Node | None,
        path: str,
        tags: tuple[str, ...],
        expected: str,
        fix: str,
        coerce: Callable[[str], Any],
    ) -> Any:
        """A scalar of one of ``tags``. A string that is a ``$VAR`` reference is
        substituted and then converted with ``coerce``, so ``port: ${PORT}`` works."""
        if is_null(node):
            return None
        assert node is not None
        if isinstance(node, yaml.ScalarNode) and node.tag in tags:
            try:
                return self._constructor.construct_object(node)
            except (ConstructorError, ValueError):
                pass
        elif isinstance(node, yaml.ScalarNode) and node.tag == _STR and ENV_REF.search(node.value):
            value = self.expand(node.value, node, path)
            if value is None:
                return None
            try:
                return coerce(value.strip())
            except ValueError:
                self.error(node, path, f"expected {expected}, got {node.value} = {value!r}", fix)
                return None
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            fix += ", without quotes"
        self.error(node, path, f"expected {expected}, got {describe(node)}", fix)
        return None

    def integer(
        self, node: yaml.Node | None, path: str, *, low: int, high: int | None = None
    ) -> int | None:
        value = self.typed(node, path, (INT_TAG,), "an integer", "write a whole number", int)
        if value is None:
            return None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.error(node, path, f"{value} is out of range", f"use a number {allowed}")
            return None
        return int(value)

    def number(self, node: yaml.Node | None, path: str, *, low: float, high: float) -> float | None:
        value = self.typed(
            node, path, (INT_TAG, FLOAT_TAG), "a number", "write a number such as 0.1", float
        )
        if value is None:
            return None
        if not math.isfinite(float(value)) or not low <= float(value) <= high:
            self.error(node, path, f"{value} is out of range", f"use a number from {low} to {high}")
            return None
        return float(value)

    def boolean(self, node: yaml.Node | None, path: str) -> bool | None:
        words = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}

        def coerce(text: str) -> bool:
            if text.lower() not in words:
                raise ValueError(text)
            return words[text.lower()]

        value = self.typed(node, path, (BOOL_TAG,), "true or false", "write true or false", coerce)
        return None if value is None else bool(value)

    def duration(self, node: yaml.Node | None, path: str, *, positive: bool) -> float | None:
        if is_null(node):
            return None
        assert node is not None
        value: Any
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            value = self.expand(node.value, node, path)
            if value is None:
                return None
        else:
            value = self.typed(node, path, (INT_TAG, FLOAT_TAG), "a duration", DURATION_HINT, float)
            if value is None:
                return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.error(node, path, f"invalid duration {node.value!r}", DURATION_HINT)
            return None
        if positive and seconds <= 0:
            self.error(node, path, "the duration must be more than zero", DURATION_HINT)
            return None
        return seconds

    def choice(
        self, node: yaml.Node | None, path: str, choices: Sequence[str], what: str
    ) -> str | None:
        value = self.text(node, path)
        if value is None or value in choices:
            return value
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of: {listing(choices)}"
        self.error(node, path, f"unknown {what} {value!r}", hint)
        return None

    def compose(self, text: str) -> yaml.MappingNode | None:
        """The document's top-level mapping; ``None`` when there is none (reported)."""
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            problem = exc.problem or exc.context or "invalid YAML"
            # Only PyYAML's problem text: its snippet of the line may hold a secret.
            where = f" (column {mark.column + 1})" if mark is not None else ""
            self.error(
                mark.line + 1 if mark is not None else None,
                "",
                f"YAML syntax error: {problem}{where}",
                "fix the YAML at that spot (check indentation, colons and quotes)",
            )
            return None
        except yaml.YAMLError as exc:
            self.error(None, "", f"not readable as YAML: {type(exc).__name__}", "fix the file")
            return None
        if is_null(root):
            self.error(
                1,
                "",
                "the config is empty",
                "add at least an llm_providers list, e.g. `- model: openai/gpt-5.2`",
            )
            return None
        assert root is not None
        if not isinstance(root, yaml.MappingNode):
            self.error(
                root,
                "",
                f"the top level must be a mapping of sections, got {describe(root)}",
                "start the file with sections such as `llm_providers:`",
            )
            return None
        return root

    def secret(self, node: yaml.Node | None, path: str) -> tuple[str | None, str | None]:
        """A credential, and how it was written when it named variables
        (``$OPENAI_API_KEY``) so tools can say where it came from."""
        raw = self.raw_text(node, path, secret=True)
        if raw is None:
            return None, None
        assert node is not None
        refers = any(m.group(1) or m.group(2) for m in ENV_REF.finditer(raw))
        # Tools that send no requests (render) load configs whose keys are unset.
        value = self.expand(raw, node, path, missing_ok=self.allow_missing_env)
        return value, raw if refers else None

    def url(self, node: yaml.Node | None, path: str, what: str) -> str | None:
        url = self.text(node, path)
        if url is None:
            return None
        assert isinstance(node, yaml.ScalarNode)
        parts = urlsplit(url)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            self.error(
                node,
                path,
                f"{what} {_shown_url(node.value)} is not an http(s) URL",
                "write it like https://api.example.com/v1",
            )
            return None
        return url

    def examples(self, node: yaml.Node | None, path: str) -> tuple[str, ...]:
        if is_null(node):
            return ()
        out: list[str] = []
        for number, item in enumerate(self.sequence(node, path) or []):
            text = self.text(item, f"{path}[{number}]")
            if text is not None and not text.strip():
                self.error(item, f"{path}[{number}]", "empty example", "write a user request")
            elif text is not None:
                out.append(text)
        return tuple(out)

    # -- declared settings -----------------------------------------------------------

    def settings(
        self, cls: type[Any], fields: Mapping[str, yaml.Node], node: yaml.Node | None, path: str
    ) -> dict[str, Any] | None:
        """The values of ``cls``'s declared fields (see ``fields.setting``) that
        ``fields`` sets, by field name; absent keys are left out, so the class's
        defaults apply. ``None`` when a required key is missing or unusable."""
        out: dict[str, Any] = {}
        complete = True
        for item in dataclasses.fields(cls):
            spec = setting_of(item)
            if spec is None:
                continue
            if spec.key not in fields or (spec.required and is_null(fields[spec.key])):
                if spec.required:
                    complete = False
                    if node is not None:
                        self.missing_key(node, path, spec.key, spec.required)
                continue
            value = self.setting_value(spec, fields[spec.key], join(path, spec.key))
            if value is not None:
                out[item.name] = value
            elif spec.required:
                complete = False
        return out if complete else None

    def setting_value(self, spec: Setting, node: yaml.Node, path: str) -> Any:
        kind = spec.kind
        if kind is Kind.TEXT:
            return self.text(node, path)
        if kind is Kind.SECRET:
            return self.secret(node, path)[0]
        if kind is Kind.URL:
            return self.url(node, path, spec.key)
        if kind is Kind.CHOICE:
            return self.choice(node, path, spec.choices, spec.what)
        if kind is Kind.BOOLEAN:
            return self.boolean(node, path)
        if kind is Kind.DURATION:
            return self.duration(node, path, positive=spec.positive)
        if kind is Kind.EXAMPLES:
            return self.examples(node, path)
        assert spec.low is not None
        if kind is Kind.NUMBER:
            assert spec.high is not None
            return self.number(node, path, low=spec.low, high=spec.high)
        high = None if spec.high is None else int(spec.high)
        value = self.integer(node, path, low=int(spec.low), high=high)
        return float(value) if kind is Kind.SECONDS and value is not None else value
