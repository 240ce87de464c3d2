"""Archway's configuration: a Plano config file as typed, validated, frozen data.

Both Plano formats load: the spec's (``listeners.egress_traffic``, ``llm_providers``
with inline ``routing_preferences``) and the current one (``version``, a list of
``listeners``, ``model_providers``, top-level ``routing_preferences``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.constructor import ConstructorError, SafeConstructor

from ext_proc.access.policy import AccessSettings
from ext_proc.access.section import ACCESS_GATEWAY_KEYS, read_access

__all__ = [
    "DEFAULT_LISTENER",
    "DEFAULT_MAX_REQUEST_BODY_BYTES",
    "DEFAULT_METRICS_PORT",
    "ROUTER_BACKENDS",
    "AffinitySettings",
    "ArchRouterOptions",
    "Config",
    "ConfigError",
    "EmbeddingRouterOptions",
    "GatewaySettings",
    "Listener",
    "Overrides",
    "ProviderConfig",
    "RemoteRouterOptions",
    "RouterOptions",
    "RouterSettings",
    "RoutingPreference",
    "TracingSettings",
    "load_config",
    "load_config_text",
    "parse_duration",
]

DEFAULT_MAX_REQUEST_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_METRICS_PORT = 9003
"""Next to the ext_proc server's 9002, so Archway's two ports are easy to remember."""


class ConfigError(Exception):
    """A config that cannot be used. ``problems`` holds one line per problem,
    each naming the file, line and key path and saying how to fix it."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Listener:
    """An Envoy listener that accepts LLM client traffic."""

    name: str
    address: str
    port: int
    timeout_s: float
    message_format: str = "openai"


@dataclass(frozen=True)
class ProviderConfig:
    """One configured model (an entry of ``llm_providers``/``model_providers``)."""

    model: str
    """As written: ``openai/gpt-5.2``, or ``openai/*`` for a wildcard."""
    provider: str
    """The part before the first ``/``: ``openai``."""
    model_id: str
    """The part after the first ``/``: ``gpt-5.2`` (may itself contain ``/``), or ``*``."""
    name: str
    """``name`` from the config, else ``model``."""
    access_key: str | None = field(default=None, repr=False)
    """The secret itself. Never printed: ``repr`` hides it."""
    access_key_ref: str | None = None
    """How the key was written when it came from the environment (``$OPENAI_API_KEY``),
    so tools can say where it came from without showing it."""
    default: bool = False
    base_url: str | None = None
    provider_interface: str | None = None
    passthrough_auth: bool = False
    http_host: str | None = None
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    """Extra upstream headers. Hidden from ``repr``: values often carry credentials."""
    fallbacks: tuple[str, ...] = ()
    """Models (``provider/model``) to try in order when this one fails with a
    connect error, 429 or 5xx (an Archway extension)."""
    timeout_s: float | None = None
    """Per-attempt timeout for this provider; ``None``: the listener's timeout."""
    line: int | None = None
    """Line of the entry in the config file, for messages."""

    @property
    def wildcard(self) -> bool:
        return self.model_id == "*"

    @property
    def interface(self) -> str:
        """The catalog entry that describes this provider's wire protocol."""
        return self.provider_interface or self.provider


@dataclass(frozen=True)
class RoutingPreference:
    """A route the preference router can choose, and the models that serve it
    (in order of preference; the first is used)."""

    name: str
    description: str
    models: tuple[str, ...]
    examples: tuple[str, ...] = ()
    """Example user requests for this route (an Archway extension, ``examples:``);
    the embedding router compares conversations with them."""


ROUTER_BACKENDS = ("arch_router", "remote", "embedding")
"""Preference-router backends: Arch-Router in-process on CTranslate2, Arch-Router
served elsewhere behind an OpenAI-compatible endpoint, or a sentence encoder on
CTranslate2 that compares the conversation with the routes (milliseconds on a CPU)."""

CT2_DEVICES = ("auto", "cpu", "cuda")
CT2_COMPUTE_TYPES = (
    "auto",
    "default",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
    "int16",
    "float16",
    "bfloat16",
    "float32",
)


@dataclass(frozen=True)
class ArchRouterOptions:
    """Settings only the in-process CTranslate2 backend has."""

    device: str = "auto"
    compute_type: str = "auto"
    """CTranslate2's: ``auto`` takes the fastest the device supports (int8 on a CPU)."""
    intra_threads: int = 0
    """Threads per generation; 0 lets CTranslate2 use one per core. On the 1.5B
    shape two threads beat one on a 2-core machine (bench/router_bench.py); one is
    better for tiny models, or when other processes need the cores."""
    max_batch_size: int | None = None
    """``None``: 8 on a GPU, 1 on a CPU. A CPU's prefill is compute-bound, and
    CTranslate2 decodes the part of longer prompts past the shortest one token by
    token, so a batch of four different conversations took twice as long as four
    one after another (bench/router_bench.py)."""
    batch_wait_s: float = 0.002
    """How long the first request of a batch waits for others to join it."""
    max_new_tokens: int | None = None
    """``None``: just enough to tell the answers apart once their shared start
    (``{"route": "``, put in the prompt) is given: usually one or two tokens."""
    static_prompt: bool = True
    """Cache the model state for the part of the prompt that only the config fixes."""


@dataclass(frozen=True)
class RemoteRouterOptions:
    """Settings only the remote backend has: an OpenAI-compatible endpoint
    (vLLM, Ollama, llama.cpp's server) that serves Arch-Router."""

    endpoint: str
    """Base URL, e.g. ``http://127.0.0.1:8000/v1``; ``/chat/completions`` is appended."""
    model: str
    access_key: str | None = field(default=None, repr=False)
    max_new_tokens: int | None = None


@dataclass(frozen=True)
class EmbeddingRouterOptions:
    """Settings only the embedding backend has. The decision defaults were tuned
    on the dev split of tests/data/routing_set.yaml (see bench/)."""

    device: str = "cpu"
    compute_type: str = "auto"
    """``auto``: int8 on a CPU, within 0.996 cosine of float32 and twice as fast."""
    intra_threads: int = 0
    """0 lets CTranslate2 pick (one per core, up to four)."""
    max_batch_size: int = 32
    """Requests whose turns share one encoder call."""
    threshold: float = 0.05
    """Below this cosine to its best route, a conversation is ``other``."""
    margin: float = 0.1
    """``other`` when the background of everyday requests beats every route on the
    latest user turn by more than this."""
    history_weight: float = 0.3
    """Each older user turn's weight relative to the next newer one."""
    context_margin: float = 0.2
    """Older user turns are read only when the latest turn's best route leads the
    runner-up by less than this (a follow-up that cannot stand alone)."""
    classifier_weight: float = 0.3
    """Of the route classifier's logit in a route's score; 0: nearest vector alone."""
    other_examples: tuple[str, ...] | None = None
    """Replaces the built-in background of off-topic requests; ``None``: built-in."""


RouterOptions = ArchRouterOptions | RemoteRouterOptions | EmbeddingRouterOptions
"""Backend-specific settings; a new backend adds its own class here."""


@dataclass(frozen=True)
class RouterSettings:
    """The top-level ``router:`` section (an Archway extension): which preference
    router runs, and the settings every backend shares."""

    backend: str
    model_path: Path | None
    """A local model directory, made absolute (relative paths are from the config file)."""
    timeout_s: float = 5.0
    """Past this, the request goes to the default model with ``x-archway-route: timeout``."""
    token_budget: int = 2048
    """Tokens of conversation the router reads, counted with the model's tokenizer."""
    max_messages: int = 16
    options: RouterOptions = field(default_factory=ArchRouterOptions)
    line: int | None = None


@dataclass(frozen=True)
class Overrides:
    """The parts of Plano's ``overrides`` section that Archway uses."""

    upstream_connect_timeout_s: float = 5.0
    upstream_tls_ca_path: str = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class TracingSettings:
    """OpenTelemetry tracing (``archway.tracing``): where spans go and how many."""

    collector_host: str
    collector_port: int
    """An OTLP/gRPC collector. Envoy always exports there; Archway does too unless
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or its traces variant) says otherwise."""
    sample_percent: float = 100.0
    """Envoy's random sampling of requests that arrive without a sampling decision."""


@dataclass(frozen=True)
class AffinitySettings:
    """Session affinity (Plano's ``routing.session_ttl_seconds`` and
    ``routing.session_max_entries``): how long and how many pins each ext_proc
    worker process keeps."""

    ttl_s: float = 600.0
    max_entries: int = 10_000


@dataclass(frozen=True)
class GatewaySettings:
    """Archway's own settings (the optional top-level ``archway:`` section, an
    Archway extension that Plano does not have)."""

    ext_proc_address: str = "127.0.0.1"
    ext_proc_port: int = 9002
    admin_address: str = "127.0.0.1"
    admin_port: int = 9901
    max_request_body_bytes: int = DEFAULT_MAX_REQUEST_BODY_BYTES
    message_timeout_s: float = 5.0
    failure_mode_allow: bool = False
    metrics_address: str = "127.0.0.1"
    metrics_port: int | None = DEFAULT_METRICS_PORT
    """The Prometheus endpoint's port: 0 picks a free one, ``None`` turns it off."""
    tracing: TracingSettings | None = None
    """``None``: no tracing in Envoy; Archway traces only if the OTEL_* variables ask."""


@dataclass(frozen=True)
class Config:
    """A loaded, validated config. Every cross-reference has been checked."""

    listeners: tuple[Listener, ...]
    providers: tuple[ProviderConfig, ...]
    aliases: dict[str, str] = field(default_factory=dict)
    alias_fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Per alias, the models (``provider/model``) to try when its target fails."""
    routing_preferences: tuple[RoutingPreference, ...] = ()
    overrides: Overrides = field(default_factory=Overrides)
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    router: RouterSettings | None = None
    """``None`` when the config has no ``router:`` section: open models go to the default."""
    affinity: AffinitySettings = field(default_factory=AffinitySettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    """Client keys, token limits (Plano's ``ratelimits``) and where counters live."""
    version: str | None = None
    source: Path | None = None
    warnings: tuple[str, ...] = ()

    @property
    def default_provider(self) -> ProviderConfig | None:
        return next((p for p in self.providers if p.default), None)


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

_KINDS = {
    _STR: "a string",
    _INT: "an integer",
    _FLOAT: "a number",
    _BOOL: "a boolean",
    _NULL: "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:binary": "binary data",
}

_TOP_KEYS = (
    "version",
    "listeners",
    "llm_providers",
    "model_providers",
    "model_aliases",
    "routing_preferences",
    "overrides",
    "archway",
    "router",
    "routing",
    "ratelimits",
)
_PLANO_ONLY_SECTIONS = (
    "agents",
    "filters",
    "endpoints",
    "prompt_targets",
    "tracing",
    "mode",
    "state_storage",
    "prompt_guards",
    "model_metrics_sources",
    "prompt_caching",
    "system_prompt",
)
_PLANO_VERSIONS = ("v0.1", "v0.1.0", "0.1-beta", "0.2.0", "v0.3.0", "v0.4.0")

_IGNORED = "Plano setting not used by Archway; ignored"
_LEGACY_LISTENERS = ("egress_traffic",)
_LEGACY_LISTENERS_IGNORED = {
    "ingress_traffic": "ingress (prompt) listener not implemented by Archway; ignored"
}
_LEGACY_LISTENER_KEYS = ("address", "port", "message_format", "timeout")
_LISTENER_KEYS = ("type", "name", "address", "port", "timeout")
_LISTENER_IGNORED = dict.fromkeys(
    ("router", "max_retries", "agents", "input_filters", "output_filters"), _IGNORED
)
_LISTENER_TYPES = ("model", "prompt", "agent")
_MESSAGE_FORMATS = ("openai",)
_PROVIDER_KEYS = (
    "name",
    "access_key",
    "model",
    "default",
    "base_url",
    "passthrough_auth",
    "http_host",
    "provider_interface",
    "headers",
    "routing_preferences",
    "fallbacks",
    "timeout",
)
_MAX_FALLBACKS = 4
# `examples` is an Archway extension (utterances for the embedding router);
# Plano's own keys load unchanged.
_INLINE_PREFERENCE_KEYS = ("name", "description", "examples")
_PREFERENCE_KEYS = ("name", "description", "models", "examples")
_PREFERENCE_IGNORED = {"selection_policy": _IGNORED}
_OVERRIDE_KEYS = ("upstream_connect_timeout", "upstream_tls_ca_path")
_OVERRIDE_IGNORED = dict.fromkeys(
    (
        "prompt_target_intent_matching_threshold",
        "optimize_context_window",
        "use_agent_orchestrator",
        "disable_signals",
        "agent_orchestration_model",
        "orchestrator_model_context_length",
    ),
    _IGNORED,
)
_ROUTER_HINT = (
    "Archway runs the preference router itself and ignores this; "
    "set router.model_path to a converted Arch-Router directory (archway router convert)"
)
_OVERRIDE_IGNORED["llm_routing_model"] = _ROUTER_HINT
# The names ext_proc.router gives to "no route" (config knows nothing of that package).
_RESERVED_ROUTES = ("other", "error", "timeout")
_ROUTER_COMMON_KEYS = ("backend", "model_path", "timeout", "token_budget", "max_messages")
_ROUTER_BACKEND_KEYS: dict[str, tuple[str, ...]] = {
    "arch_router": (
        "device",
        "compute_type",
        "intra_threads",
        "max_batch_size",
        "batch_wait",
        "max_new_tokens",
        "static_prompt",
    ),
    "remote": ("endpoint", "model", "access_key", "max_new_tokens"),
    "embedding": (
        "device",
        "compute_type",
        "intra_threads",
        "max_batch_size",
        "threshold",
        "margin",
        "history_weight",
        "context_margin",
        "classifier_weight",
        "other_examples",
    ),
}
_GATEWAY_KEYS = (
    "ext_proc_address",
    "ext_proc_port",
    "admin_address",
    "admin_port",
    "max_request_body_bytes",
    "message_timeout",
    "failure_mode_allow",
    "metrics_address",
    "metrics_port",
    "tracing",
    *ACCESS_GATEWAY_KEYS,
)
_TRACING_KEYS = ("collector", "sample_percent")
_AFFINITY_KEYS = ("session_ttl_seconds", "session_max_entries", "session_cache")
_MAX_AFFINITY_ENTRIES = 1_000_000
_BASE_URL_EXAMPLES = {
    "ollama": "http://localhost:11434",
    "azure_openai": "https://YOUR-RESOURCE.openai.azure.com",
}

DEFAULT_LISTENER = Listener(name="egress_traffic", address="0.0.0.0", port=12000, timeout_s=300.0)

# `$$` first, so that `$$HOME` is a literal `$HOME` rather than `$` + $HOME.
_ENV_REF = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_DURATION_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_HINT = "write a number of seconds or a duration such as 30s, 500ms, 2m or 1h"


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


def load_config(
    path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    allow_missing_env: bool = False,
) -> Config:
    """Load and validate the config file at ``path``.

    ``$VAR``/``${VAR}`` are taken from ``environ`` (default ``os.environ``), else
    from a ``.env`` file beside the config. Raises ``ConfigError`` listing every
    problem found. ``allow_missing_env`` lets ``access_key`` variables be unset
    (they become ``None``), for tools that never send a request.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(
            [f"{source}: cannot read the config file: {reason}; check the path"]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: the config file is not UTF-8 text ({exc.reason}); save it as UTF-8"]
        ) from None
    return load_config_text(
        text, source=source, environ=environ, allow_missing_env=allow_missing_env
    )


def load_config_text(
    text: str,
    *,
    source: Path | None = None,
    environ: Mapping[str, str] | None = None,
    allow_missing_env: bool = False,
) -> Config:
    """Load and validate config ``text``; ``source`` names it in messages and
    locates the ``.env`` file. See ``load_config``."""
    loader = _Loader(
        source=Path(source) if source is not None else None,
        environ=os.environ if environ is None else environ,
        allow_missing_env=allow_missing_env,
    )
    return loader.load(text)


def _parse_dotenv(text: str) -> tuple[dict[str, str], list[int]]:
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


def _join(path: str, key: str) -> str:
    if not _PLAIN_KEY.fullmatch(key):
        return f"{path}[{key!r}]"
    return f"{path}.{key}" if path else key


def _line(node: yaml.Node | None) -> int | None:
    return None if node is None else node.start_mark.line + 1


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _NULL)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag, f"a value tagged {node.tag}")


def _describe(node: yaml.Node, *, secret: bool = False) -> str:
    kind = _kind(node)
    if secret or not isinstance(node, yaml.ScalarNode) or node.tag == _NULL:
        return kind
    return f"{kind} {node.value!r}" if node.tag == _STR else f"{kind} ({node.value})"


def _listing(names: Iterable[str]) -> str:
    return ", ".join(names) or "(none)"


def _shown_url(raw: str) -> str:
    # A URL may embed credentials (https://user:token@host): name it without them.
    return "(value hidden: it contains credentials)" if "@" in raw else repr(raw)


@dataclass
class _Problems:
    """Messages gathered while loading, each kept with its line for sorting."""

    label: str
    items: list[tuple[int, str]] = field(default_factory=list)

    def add(self, line: int | None, path: str, message: str, fix: str | None = None) -> None:
        where = f"{self.label}:{line}" if line is not None else self.label
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        if fix:
            text += f"; {fix}"
        self.items.append((line or 0, text))

    def lines(self) -> list[str]:
        return [text for _, text in sorted(self.items, key=lambda item: item[0])]


@dataclass
class _PreferenceEntry:
    name: str
    description: str
    models: tuple[str, ...]
    line: int | None
    path: str
    valid: bool
    """False when a model it names is unusable: kept only so duplicate names are found."""
    examples: tuple[str, ...] = ()


class _Loader:
    """One load: walks the composed YAML by schema, gathering every problem."""

    def __init__(
        self, *, source: Path | None, environ: Mapping[str, str], allow_missing_env: bool
    ) -> None:
        self.source = source
        self.environ = environ
        self.allow_missing_env = allow_missing_env
        self.alias_fallbacks: dict[str, tuple[str, ...]] = {}
        label = str(source) if source is not None else "<config>"
        self.errors = _Problems(label)
        self.warnings = _Problems(label)
        self.dotenv_path = source.resolve().parent / ".env" if source is not None else None
        self._dotenv: dict[str, str] | None = None
        self._constructor = SafeConstructor()
        self._pairs: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}
        self.section = "llm_providers"

    # -- reporting -----------------------------------------------------------------

    def error(
        self, node: yaml.Node | int | None, path: str, message: str, fix: str | None = None
    ) -> None:
        line = node if isinstance(node, int) or node is None else _line(node)
        self.errors.add(line, path, message, fix)

    def warn(self, node: yaml.Node | None, path: str, message: str) -> None:
        self.warnings.add(_line(node), path, message)

    def unknown_key(self, key_node: yaml.Node, path: str, key: str, allowed: Iterable[str]) -> None:
        choices = sorted(set(allowed))
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        fix = f"did you mean {close[0]!r}?" if close else f"allowed keys here: {_listing(choices)}"
        self.error(key_node, _join(path, key), f"unknown key {key!r}", fix)

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
        self._dotenv, bad = _parse_dotenv(text)
        for number in bad:
            # The line is not echoed: it may well hold a secret.
            self.errors.items.append(
                (0, f"{path}:{number}: cannot parse this line; write it as KEY=VALUE")
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

        out = _ENV_REF.sub(substitute, raw)
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
                first = _line(out[key][0])
                self.error(
                    key_node,
                    _join(path, key),
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
        if _is_null(node):
            return {}
        assert node is not None
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node,
                path,
                f"expected a mapping, got {_describe(node)}",
                "write it as indented `key: value` lines",
            )
            return None
        out: dict[str, yaml.Node] = {}
        ignored = ignored or {}
        for key, (key_node, value_node) in self.pairs(node, path).items():
            if allowed is None or key in allowed:
                out[key] = value_node
            elif key in ignored:
                self.warn(key_node, _join(path, key), ignored[key])
            else:
                self.unknown_key(key_node, path, key, [*(allowed or ()), *ignored])
        return out

    def sequence(self, node: yaml.Node | None, path: str) -> list[yaml.Node] | None:
        if _is_null(node):
            return []
        assert node is not None
        if not isinstance(node, yaml.SequenceNode):
            self.error(
                node,
                path,
                f"expected a list, got {_describe(node)}",
                "write one entry per line, each starting with '- '",
            )
            return None
        return list(node.value)

    # -- scalars -------------------------------------------------------------------

    def raw_text(self, node: yaml.Node | None, path: str, *, secret: bool = False) -> str | None:
        """The string as written, before variables are substituted."""
        if _is_null(node):
            return None
        assert node is not None
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            return str(node.value)
        fix = (
            "put the value in quotes"
            if isinstance(node, yaml.ScalarNode)
            else "write a single string value"
        )
        self.error(node, path, f"expected a string, got {_describe(node, secret=secret)}", fix)
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
        if _is_null(node):
            return None
        assert node is not None
        if isinstance(node, yaml.ScalarNode) and node.tag in tags:
            try:
                return self._constructor.construct_object(node)
            except (ConstructorError, ValueError):
                pass
        elif isinstance(node, yaml.ScalarNode) and node.tag == _STR and _ENV_REF.search(node.value):
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
        self.error(node, path, f"expected {expected}, got {_describe(node)}", fix)
        return None

    def integer(
        self, node: yaml.Node | None, path: str, *, low: int, high: int | None = None
    ) -> int | None:
        value = self.typed(node, path, (_INT,), "an integer", "write a whole number", int)
        if value is None:
            return None
        if value < low or (high is not None and value > high):
            allowed = f"from {low} to {high}" if high is not None else f"at least {low}"
            self.error(node, path, f"{value} is out of range", f"use a number {allowed}")
            return None
        return int(value)

    def number(self, node: yaml.Node | None, path: str, *, low: float, high: float) -> float | None:
        value = self.typed(
            node, path, (_INT, _FLOAT), "a number", "write a number such as 0.1", float
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

        value = self.typed(node, path, (_BOOL,), "true or false", "write true or false", coerce)
        return None if value is None else bool(value)

    def duration(self, node: yaml.Node | None, path: str, *, positive: bool) -> float | None:
        if _is_null(node):
            return None
        assert node is not None
        value: Any
        if isinstance(node, yaml.ScalarNode) and node.tag == _STR:
            value = self.expand(node.value, node, path)
            if value is None:
                return None
        else:
            value = self.typed(node, path, (_INT, _FLOAT), "a duration", _DURATION_HINT, float)
            if value is None:
                return None
        try:
            seconds = parse_duration(value)
        except ValueError:
            self.error(node, path, f"invalid duration {node.value!r}", _DURATION_HINT)
            return None
        if positive and seconds <= 0:
            self.error(node, path, "the duration must be more than zero", _DURATION_HINT)
            return None
        return seconds

    def choice(
        self, node: yaml.Node | None, path: str, choices: Sequence[str], what: str
    ) -> str | None:
        value = self.text(node, path)
        if value is None or value in choices:
            return value
        close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"use one of: {_listing(choices)}"
        self.error(node, path, f"unknown {what} {value!r}", hint)
        return None

    # -- the config ----------------------------------------------------------------

    def load(self, text: str) -> Config:
        root = self.compose(text)
        config = self.build(root) if root is not None else None
        problems = self.errors.lines()
        if problems or config is None:
            raise ConfigError(problems)
        return config

    def compose(self, text: str) -> yaml.Node | None:
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
        if _is_null(root):
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
                f"the top level must be a mapping of sections, got {_describe(root)}",
                "start the file with sections such as `llm_providers:`",
            )
            return None
        return root

    def build(self, root: yaml.Node) -> Config | None:
        assert isinstance(root, yaml.MappingNode)
        top = self.pairs(root, "")
        for key, (key_node, _) in top.items():
            if key in _PLANO_ONLY_SECTIONS:
                self.warn(key_node, key, "Plano section not implemented by Archway; ignored")
            elif key not in _TOP_KEYS:
                self.unknown_key(key_node, "", key, (*_TOP_KEYS, *_PLANO_ONLY_SECTIONS))

        def value(key: str) -> yaml.Node | None:
            entry = top.get(key)
            return entry[1] if entry is not None else None

        version = self.version(value("version"))
        listeners = self.listeners(value("listeners"))
        providers, inline = self.providers(top)
        aliases = self.aliases(value("model_aliases"), providers)
        preferences = self.preferences(value("routing_preferences"), inline, providers)
        overrides = self.overrides(value("overrides"))
        gateway = self.gateway(value("archway"))
        affinity = self.affinity(value("routing"))
        router = self.router(value("router"), top.get("router"))
        if router is not None and not preferences:
            self.warn(
                top["router"][0],
                "router",
                "a router is configured but there are no routing_preferences, so it is never asked",
            )
        if listeners is not None and gateway is not None:
            self.check_ports(top, listeners, gateway)
        archway, routing = value("archway"), value("routing")
        access = read_access(
            self,
            value("ratelimits"),
            (self.mapping(routing, "routing", None) or {}).get("session_cache")
            if isinstance(routing, yaml.MappingNode)
            else None,
            (self.mapping(archway, "archway", None) or {})
            if isinstance(archway, yaml.MappingNode)
            else {},
            [p.model for p in providers],
            aliases,
        )
        if (
            listeners is None
            or overrides is None
            or gateway is None
            or affinity is None
            or access is None
        ):
            return None
        return Config(
            listeners=tuple(listener for listener, _ in listeners),
            providers=tuple(providers),
            aliases=aliases,
            alias_fallbacks=dict(self.alias_fallbacks),
            routing_preferences=tuple(
                RoutingPreference(p.name, p.description, p.models, p.examples) for p in preferences
            ),
            overrides=overrides,
            gateway=gateway,
            router=router,
            affinity=affinity,
            access=access,
            version=version,
            source=self.source.resolve() if self.source is not None else None,
            warnings=tuple(self.warnings.lines()),
        )

    def version(self, node: yaml.Node | None) -> str | None:
        if node is not None and isinstance(node, yaml.ScalarNode) and node.tag in (_INT, _FLOAT):
            self.error(
                node,
                "version",
                f"expected a string, got {_describe(node)}",
                f'put it in quotes: version: "{node.value}"',
            )
            return None
        version = self.text(node, "version")
        if version is not None and version not in _PLANO_VERSIONS:
            self.warn(
                node,
                "version",
                f"{version!r} is not a Plano config version ({_listing(_PLANO_VERSIONS)})",
            )
        return version

    # -- listeners -----------------------------------------------------------------

    def listeners(self, node: yaml.Node | None) -> list[tuple[Listener, yaml.Node | None]] | None:
        """The model listeners, each with the node it came from."""
        if _is_null(node):
            return [(DEFAULT_LISTENER, node)]
        assert node is not None
        errors_before = len(self.errors.items)
        if isinstance(node, yaml.MappingNode):
            found = self.legacy_listeners(node)
        elif isinstance(node, yaml.SequenceNode):
            found = self.listener_list(node)
        else:
            self.error(
                node,
                "listeners",
                f"expected a list of listeners, got {_describe(node)}",
                "write `listeners:` followed by `- type: model` entries",
            )
            return None
        if found is None or len(self.errors.items) > errors_before:
            # A broken model listener is not "no model listener": no fallback.
            return None
        if not found:
            self.warn(
                node,
                "listeners",
                "no model listener (type: model, or egress_traffic); using the default "
                f"{DEFAULT_LISTENER.name} on {DEFAULT_LISTENER.address}:{DEFAULT_LISTENER.port}",
            )
            return [(DEFAULT_LISTENER, node)]
        names: dict[str, int | None] = {}
        for listener, where in found:
            if listener.name in names:
                self.error(
                    where,
                    "listeners",
                    f"duplicate listener name {listener.name!r} "
                    f"(also at line {names[listener.name]})",
                    "give each listener its own name",
                )
            names.setdefault(listener.name, _line(where))
        return found

    def legacy_listeners(
        self, node: yaml.MappingNode
    ) -> list[tuple[Listener, yaml.Node | None]] | None:
        fields = self.mapping(node, "listeners", _LEGACY_LISTENERS, _LEGACY_LISTENERS_IGNORED)
        if fields is None:
            return None
        out: list[tuple[Listener, yaml.Node | None]] = []
        for name, entry in fields.items():
            listener = self.listener(entry, _join("listeners", name), name, legacy=True)
            if listener is not None:
                out.append((listener, entry))
        return out

    def listener_list(
        self, node: yaml.SequenceNode
    ) -> list[tuple[Listener, yaml.Node | None]] | None:
        out: list[tuple[Listener, yaml.Node | None]] = []
        for index, entry in enumerate(node.value):
            path = f"listeners[{index}]"
            if not isinstance(entry, yaml.MappingNode):
                self.error(
                    entry,
                    path,
                    f"expected a listener mapping, got {_describe(entry)}",
                    "write it as `- type: model` followed by name, port, ...",
                )
                continue
            kind_entry = self.pairs(entry, path).get("type")
            if kind_entry is None:
                self.missing_key(entry, path, "type", "`type: model`")
                continue
            kind = self.choice(kind_entry[1], f"{path}.type", _LISTENER_TYPES, "listener type")
            if kind is None:
                continue
            if kind != "model":
                self.warn(entry, path, f"{kind} listener not implemented by Archway; skipped")
                continue
            listener = self.listener(entry, path, None, legacy=False)
            if listener is not None:
                out.append((listener, entry))
        return out

    def listener(
        self, node: yaml.Node, path: str, name: str | None, *, legacy: bool
    ) -> Listener | None:
        if legacy:
            fields = self.mapping(node, path, _LEGACY_LISTENER_KEYS)
        else:
            fields = self.mapping(node, path, _LISTENER_KEYS, _LISTENER_IGNORED)
        if fields is None:
            return None
        errors_before = len(self.errors.items)
        if name is None:
            name = self.text(fields.get("name"), f"{path}.name")
            if name is None and "name" not in fields:
                self.missing_key(node, path, "name", "`name: model_listener`")
        address = self.text(fields.get("address"), f"{path}.address")
        if address == "":
            self.error(fields["address"], f"{path}.address", "empty address", "use 0.0.0.0")
        port = self.integer(fields.get("port"), f"{path}.port", low=0, high=65535)
        timeout = self.duration(fields.get("timeout"), f"{path}.timeout", positive=False)
        message_format = self.choice(
            fields.get("message_format"), f"{path}.message_format", _MESSAGE_FORMATS, "format"
        )
        if name is None or len(self.errors.items) > errors_before:
            return None
        return Listener(
            name=name,
            address=address or DEFAULT_LISTENER.address,
            port=port if port is not None else DEFAULT_LISTENER.port,
            timeout_s=timeout if timeout is not None else DEFAULT_LISTENER.timeout_s,
            message_format=message_format or DEFAULT_LISTENER.message_format,
        )

    # -- providers -----------------------------------------------------------------

    def providers(
        self, top: Mapping[str, tuple[yaml.Node, yaml.Node]]
    ) -> tuple[list[ProviderConfig], list[_PreferenceEntry]]:
        legacy = top.get("llm_providers")
        current = top.get("model_providers")
        if legacy is not None and current is not None:
            self.error(
                current[0],
                "model_providers",
                f"llm_providers (line {_line(legacy[0])}) and model_providers are both set",
                "keep one list: model_providers is Plano's current name for llm_providers",
            )
        self.section = "model_providers" if current is not None else "llm_providers"
        chosen = current or legacy
        entries = self.sequence(chosen[1], self.section) if chosen is not None else []
        if entries is None:
            return [], []
        providers: list[ProviderConfig] = []
        inline: list[_PreferenceEntry] = []
        by_model: dict[str, ProviderConfig] = {}
        by_name: dict[str, ProviderConfig] = {}
        default: ProviderConfig | None = None
        with_fallbacks: list[tuple[yaml.Node, str]] = []
        position_of: list[int] = []
        for index, entry in enumerate(entries):
            path = f"{self.section}[{index}]"
            provider = self.provider(entry, path, inline)
            if provider is None:
                continue
            if provider.model in by_model:
                self.error(
                    entry,
                    f"{path}.model",
                    f"duplicate model {provider.model!r} "
                    f"(also at line {by_model[provider.model].line})",
                    "remove one of the two entries",
                )
                continue
            if provider.name in by_name:
                self.error(
                    entry,
                    f"{path}.name",
                    f"duplicate name {provider.name!r} "
                    f"(also at line {by_name[provider.name].line})",
                    "give each model its own name",
                )
                continue
            if provider.default and default is not None:
                self.error(
                    entry,
                    f"{path}.default",
                    f"more than one default model: {provider.model!r} and "
                    f"{default.model!r} (line {default.line})",
                    "keep `default: true` on one model only",
                )
            elif provider.default:
                default = provider
            by_model[provider.model] = provider
            by_name[provider.name] = provider
            providers.append(provider)
            if "fallbacks" in self.pairs(entry, path):
                position_of.append(len(providers) - 1)
                with_fallbacks.append((entry, path))
        # Fallbacks may name models listed further down, so they resolve last.
        for position, (entry, path) in enumerate(with_fallbacks):
            node = self.pairs(entry, path)["fallbacks"][1]
            primary = providers[position_of[position]]
            chain = self.fallback_list(node, f"{path}.fallbacks", primary.model, providers)
            providers[position_of[position]] = dataclasses.replace(primary, fallbacks=chain)
        if not entries:
            where = chosen[0] if chosen is not None else 1
            self.error(
                where,
                self.section,
                "no models are configured",
                f"add at least one entry to {self.section}, e.g. `- model: openai/gpt-5.2`",
            )
        return providers, inline

    def provider(
        self, node: yaml.Node, path: str, inline: list[_PreferenceEntry]
    ) -> ProviderConfig | None:
        from ext_proc.routing.catalog import CATALOG, PROVIDERS_REQUIRING_BASE_URL

        fields = self.mapping(node, path, _PROVIDER_KEYS)
        if fields is None:
            return None
        errors_before = len(self.errors.items)
        line = _line(node)

        model = self.text(fields.get("model"), f"{path}.model")
        provider = model_id = ""
        if model is None:
            if "model" not in fields:
                self.missing_key(
                    node, path, "model", "`model: provider/model`, e.g. openai/gpt-5.2"
                )
        else:
            provider, sep, model_id = model.partition("/")
            model_node = fields["model"]
            if not sep or not provider or not model_id or any(c.isspace() for c in model):
                example = f"openai/{model_id or provider or 'gpt-5.2'}"
                self.error(
                    model_node,
                    f"{path}.model",
                    f"{model!r} is not in provider/model form",
                    f"write the provider first, e.g. {example!r}",
                )
                model = None
            elif "*" in provider or ("*" in model_id and model_id != "*"):
                self.error(
                    model_node,
                    f"{path}.model",
                    f"{model!r}: only a whole model id can be a wildcard",
                    f"write {provider.replace('*', '') or 'openai'}/* to serve every model",
                )
                model = None

        name = self.text(fields.get("name"), f"{path}.name")
        access_key, access_key_ref = self.access_key(fields.get("access_key"), f"{path}.access_key")
        default = self.boolean(fields.get("default"), f"{path}.default")
        passthrough = self.boolean(fields.get("passthrough_auth"), f"{path}.passthrough_auth")
        http_host = self.text(fields.get("http_host"), f"{path}.http_host")
        base_url = self.base_url(fields.get("base_url"), f"{path}.base_url")
        interface = self.text(fields.get("provider_interface"), f"{path}.provider_interface")
        headers = self.headers(fields.get("headers"), f"{path}.headers")
        timeout = self.duration(fields.get("timeout"), f"{path}.timeout", positive=True)

        if interface is not None and interface not in CATALOG:
            self.error(
                fields["provider_interface"],
                f"{path}.provider_interface",
                f"provider_interface {interface!r} is not supported by Archway",
                f"use one of: {_listing(CATALOG)}",
            )
        elif model is not None and provider not in CATALOG and interface is None:
            close = difflib.get_close_matches(provider.lower(), CATALOG, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            self.error(
                node,
                path,
                f"unknown provider {provider!r} in {model!r}",
                f"{hint}a provider outside Archway's catalog needs both base_url and "
                "provider_interface (e.g. provider_interface: openai); "
                f"known providers: {_listing(CATALOG)}",
            )
        elif model is not None and base_url is None and "base_url" not in fields:
            wire = interface or provider
            if provider not in CATALOG:
                self.error(
                    node,
                    path,
                    f"provider {provider!r} is not in Archway's catalog, so it needs base_url",
                    "add base_url: https://<host>/v1 (the server's OpenAI-compatible endpoint)",
                )
            elif needs := [p for p in (provider, wire) if p in PROVIDERS_REQUIRING_BASE_URL]:
                # `ollama/x` with provider_interface: openai is still a local server,
                # not api.openai.com.
                example = _BASE_URL_EXAMPLES.get(needs[0], "https://llm.example.com/v1")
                self.error(
                    node,
                    path,
                    f"provider {needs[0]!r} has no standard address, so it needs base_url",
                    f"add base_url: {example}",
                )

        preferences = self.sequence(
            fields.get("routing_preferences"), f"{path}.routing_preferences"
        )
        for index, entry in enumerate(preferences or []):
            pref_path = f"{path}.routing_preferences[{index}]"
            found = self.preference_fields(entry, pref_path, inline=True)
            if found is not None:
                inline.append(
                    _PreferenceEntry(
                        name=found[0],
                        description=found[1],
                        models=(model,) if model is not None else (),
                        line=_line(entry),
                        path=f"{pref_path}.name",
                        valid=model is not None,
                        examples=found[2],
                    )
                )

        if model is None:
            return None
        if len(self.errors.items) > errors_before:
            # Keep the model known despite its other faults (an unset key, a bad
            # URL), so aliases that name it do not report a second, false error.
            # The load still fails on the errors already recorded.
            return ProviderConfig(
                model=model, provider=provider, model_id=model_id, name=name or model
            )
        return ProviderConfig(
            model=model,
            provider=provider,
            model_id=model_id,
            name=name or model,
            access_key=access_key,
            access_key_ref=access_key_ref,
            default=bool(default),
            base_url=base_url,
            provider_interface=interface,
            passthrough_auth=bool(passthrough),
            http_host=http_host,
            headers=headers or (),
            timeout_s=timeout,
            line=line,
        )

    def access_key(self, node: yaml.Node | None, path: str) -> tuple[str | None, str | None]:
        raw = self.raw_text(node, path, secret=True)
        if raw is None:
            return None, None
        assert node is not None
        refers = any(m.group(1) or m.group(2) for m in _ENV_REF.finditer(raw))
        # Tools that send no requests (render) load configs whose keys are unset.
        value = self.expand(raw, node, path, missing_ok=self.allow_missing_env)
        return value, raw if refers else None

    def base_url(self, node: yaml.Node | None, path: str, what: str = "base_url") -> str | None:
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

    def headers(self, node: yaml.Node | None, path: str) -> tuple[tuple[str, str], ...] | None:
        fields = self.mapping(node, path, None)
        if fields is None:
            return None
        out: list[tuple[str, str]] = []
        for name, value_node in fields.items():
            header_path = _join(path, name)
            if not _HEADER_NAME.fullmatch(name):
                self.error(
                    value_node,
                    header_path,
                    f"{name!r} is not a valid HTTP header name",
                    "use letters, digits and '-' only",
                )
                continue
            # Header values are treated as secrets: they often carry tokens.
            value = self.text(value_node, header_path, secret=True)
            if value is None:
                if _is_null(value_node):
                    self.error(value_node, header_path, "the header has no value", "add a value")
                continue
            if "\r" in value or "\n" in value:
                self.error(
                    value_node, header_path, "the header value has a line break", "remove it"
                )
                continue
            out.append((name, value))
        return tuple(out)

    # -- aliases and routing preferences -------------------------------------------

    def serving(self, ref: str, providers: Sequence[ProviderConfig]) -> list[str]:
        """The configured models that would serve ``ref``, as ``provider/model``.

        Mirrors request-time resolution: exact model, then the provider's wildcard,
        then a bare model id (explicit models first, then wildcard providers).
        """
        explicit = [p for p in providers if not p.wildcard]
        wildcards = {p.provider: p for p in providers if p.wildcard}
        if any(p.model == ref for p in explicit):
            return [ref]
        prefix, sep, model_id = ref.partition("/")
        if sep and model_id and prefix in wildcards:
            return [ref]
        bare = [p.model for p in explicit if p.model_id == ref]
        if bare or sep:
            return bare
        return [f"{provider}/{ref}" for provider in wildcards]

    def model_ref(
        self,
        node: yaml.Node,
        path: str,
        ref: str,
        providers: Sequence[ProviderConfig],
        what: str,
    ) -> str | None:
        """The one configured model ``ref`` names, or ``None`` (reported)."""
        available = f"available models: {_listing(p.model for p in providers)}"
        if "*" in ref:
            self.error(
                node,
                path,
                f"{what} {ref!r} is a wildcard",
                f"name one model, e.g. {ref.replace('*', 'gpt-5.2')!r}",
            )
            return None
        matches = self.serving(ref, providers)
        if not matches:
            self.error(
                node,
                path,
                f"{what} {ref!r} matches no configured model; {available}",
                f"use one of those, or add {ref!r} to {self.section}",
            )
            return None
        if len(matches) > 1:
            self.error(
                node,
                path,
                f"{what} {ref!r} is ambiguous: it is served by {_listing(matches)}",
                "write the full provider/model",
            )
            return None
        return matches[0]

    def aliases(
        self, node: yaml.Node | None, providers: Sequence[ProviderConfig]
    ) -> dict[str, str]:
        fields = self.mapping(node, "model_aliases", None)
        out: dict[str, str] = {}
        for alias, entry in (fields or {}).items():
            path = _join("model_aliases", alias)
            spec = self.mapping(entry, path, ("target", "fallbacks"))
            if spec is None:
                continue
            if "target" not in spec:
                self.missing_key(entry, path, "target", "`target: provider/model`")
                continue
            target = self.text(spec["target"], f"{path}.target")
            if target is None:
                continue
            resolved = self.model_ref(
                spec["target"], f"{path}.target", target, providers, "alias target"
            )
            if resolved:
                out[alias] = target
                if "fallbacks" in spec:
                    chain = self.fallback_list(
                        spec["fallbacks"], f"{path}.fallbacks", resolved, providers
                    )
                    if chain:
                        self.alias_fallbacks[alias] = chain
        return out

    def fallback_list(
        self, node: yaml.Node, path: str, primary: str, providers: Sequence[ProviderConfig]
    ) -> tuple[str, ...]:
        """The fallback models of ``primary``, each as ``provider/model``."""
        from ext_proc.routing.catalog import WireAPI, spec_for

        items = self.sequence(node, path)
        if items is None:
            return ()
        if len(items) > _MAX_FALLBACKS:
            self.error(
                node,
                path,
                f"{len(items)} fallbacks; at most {_MAX_FALLBACKS} are tried",
                f"keep the best {_MAX_FALLBACKS}",
            )
            return ()

        def api_of(model: str) -> WireAPI:
            prefix = model.partition("/")[0]
            served = next(
                (p for p in providers if p.model == model or (p.wildcard and p.provider == prefix)),
                None,
            )
            spec = spec_for(served) if served is not None else None
            return spec.api if spec is not None else WireAPI.OPENAI

        chain: list[str] = []
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]"
            ref = self.text(item, item_path)
            if ref is None:
                continue
            model = self.model_ref(item, item_path, ref, providers, "fallback")
            if model is None:
                continue
            if model == primary or model in chain:
                self.error(item, item_path, f"{model!r} is already in this chain", "list it once")
                continue
            if api_of(model) is not api_of(primary):
                # The request body was shaped for the primary's API before the
                # first attempt; a retry cannot change the API it speaks.
                self.error(
                    item,
                    item_path,
                    f"fallback {model!r} speaks the {api_of(model).value} API but "
                    f"{primary!r} speaks {api_of(primary).value}",
                    "choose fallbacks that speak the same API as the model they back up",
                )
                continue
            chain.append(model)
        return tuple(chain)

    def preference_fields(
        self, node: yaml.Node, path: str, *, inline: bool
    ) -> tuple[str, str, tuple[str, ...]] | None:
        """Name, description and examples; ``None`` when name or description is
        unusable (reported)."""
        keys = _INLINE_PREFERENCE_KEYS if inline else _PREFERENCE_KEYS
        ignored = None if inline else _PREFERENCE_IGNORED
        fields = self.mapping(node, path, keys, ignored)
        if fields is None:
            return None
        found: list[str] = []
        for key in ("name", "description"):
            value = self.text(fields.get(key), f"{path}.{key}")
            if value is None and _is_null(fields.get(key)):
                self.missing_key(node, path, key, f"`{key}: ...`")
            elif value is not None and not value.strip():
                self.error(fields[key], f"{path}.{key}", f"empty {key}", f"write a {key}")
                value = None
            if value is not None:
                found.append(value)
        examples = self.examples(fields.get("examples"), f"{path}.examples")
        return (found[0], found[1], examples) if len(found) == 2 else None

    def examples(self, node: yaml.Node | None, path: str) -> tuple[str, ...]:
        if _is_null(node):
            return ()
        out: list[str] = []
        for number, item in enumerate(self.sequence(node, path) or []):
            text = self.text(item, f"{path}[{number}]")
            if text is not None and not text.strip():
                self.error(item, f"{path}[{number}]", "empty example", "write a user request")
            elif text is not None:
                out.append(text)
        return tuple(out)

    def preferences(
        self,
        node: yaml.Node | None,
        inline: list[_PreferenceEntry],
        providers: Sequence[ProviderConfig],
    ) -> list[_PreferenceEntry]:
        entries = list(inline)
        for index, entry in enumerate(self.sequence(node, "routing_preferences") or []):
            path = f"routing_preferences[{index}]"
            found = self.preference_fields(entry, path, inline=False)
            if not isinstance(entry, yaml.MappingNode):
                continue
            models = self.preference_models(entry, path, providers)
            if found is not None:
                entries.append(
                    _PreferenceEntry(
                        name=found[0],
                        description=found[1],
                        models=tuple(models or ()),
                        line=_line(entry),
                        path=f"{path}.name",
                        valid=bool(models),
                        examples=found[2],
                    )
                )
        seen: dict[str, _PreferenceEntry] = {}
        for pref in entries:
            if pref.name in _RESERVED_ROUTES:
                self.error(
                    pref.line,
                    pref.path,
                    f"{pref.name!r} is reserved: the router answers it when no route fits "
                    "or it fails",
                    "rename the routing preference",
                )
                continue
            first = seen.get(pref.name)
            if first is not None:
                self.error(
                    pref.line,
                    pref.path,
                    f"duplicate routing preference {pref.name!r} (also at line {first.line})",
                    "give each routing preference its own name; a preference served by "
                    "several models lists them all in its models",
                )
                continue
            seen[pref.name] = pref
        return [pref for pref in seen.values() if pref.valid]

    def preference_models(
        self, entry: yaml.MappingNode, path: str, providers: Sequence[ProviderConfig]
    ) -> list[str] | None:
        """The models a top-level preference names, resolved to ``provider/model``;
        ``None`` when any is unusable (reported)."""
        found = self.pairs(entry, path).get("models")
        if found is None or _is_null(found[1]):
            self.missing_key(entry, path, "models", "`models: [provider/model, ...]`")
            return None
        items = self.sequence(found[1], f"{path}.models")
        if items is None:
            return None
        if not items:
            self.error(
                found[1],
                f"{path}.models",
                "the list is empty",
                "name at least one model, e.g. [openai/gpt-5.2]",
            )
            return None
        models: list[str] = []
        for number, item in enumerate(items):
            item_path = f"{path}.models[{number}]"
            ref = self.text(item, item_path)
            resolved = (
                None if ref is None else self.model_ref(item, item_path, ref, providers, "model")
            )
            if resolved is not None:
                models.append(resolved)
        return models if len(models) == len(items) else None

    # -- overrides and Archway's own settings ---------------------------------------

    def overrides(self, node: yaml.Node | None) -> Overrides | None:
        fields = self.mapping(node, "overrides", _OVERRIDE_KEYS, _OVERRIDE_IGNORED)
        if fields is None:
            return None
        defaults = Overrides()
        timeout = self.duration(
            fields.get("upstream_connect_timeout"),
            "overrides.upstream_connect_timeout",
            positive=True,
        )
        ca_path = self.text(fields.get("upstream_tls_ca_path"), "overrides.upstream_tls_ca_path")
        if ca_path == "":
            self.error(
                fields["upstream_tls_ca_path"],
                "overrides.upstream_tls_ca_path",
                "empty path",
                f"remove it to use {defaults.upstream_tls_ca_path}",
            )
        return Overrides(
            upstream_connect_timeout_s=(
                timeout if timeout is not None else defaults.upstream_connect_timeout_s
            ),
            upstream_tls_ca_path=ca_path or defaults.upstream_tls_ca_path,
        )

    def gateway(self, node: yaml.Node | None) -> GatewaySettings | None:
        fields = self.mapping(node, "archway", _GATEWAY_KEYS)
        if fields is None:
            return None
        d = GatewaySettings()

        def pick(value: Any, fallback: Any) -> Any:
            return fallback if value is None else value

        return GatewaySettings(
            ext_proc_address=pick(
                self.text(fields.get("ext_proc_address"), "archway.ext_proc_address"),
                d.ext_proc_address,
            ),
            ext_proc_port=pick(
                self.integer(
                    fields.get("ext_proc_port"), "archway.ext_proc_port", low=0, high=65535
                ),
                d.ext_proc_port,
            ),
            admin_address=pick(
                self.text(fields.get("admin_address"), "archway.admin_address"), d.admin_address
            ),
            admin_port=pick(
                self.integer(fields.get("admin_port"), "archway.admin_port", low=0, high=65535),
                d.admin_port,
            ),
            max_request_body_bytes=pick(
                self.integer(
                    fields.get("max_request_body_bytes"), "archway.max_request_body_bytes", low=1
                ),
                d.max_request_body_bytes,
            ),
            message_timeout_s=pick(
                self.duration(
                    fields.get("message_timeout"), "archway.message_timeout", positive=True
                ),
                d.message_timeout_s,
            ),
            failure_mode_allow=pick(
                self.boolean(fields.get("failure_mode_allow"), "archway.failure_mode_allow"),
                d.failure_mode_allow,
            ),
            metrics_address=pick(
                self.text(fields.get("metrics_address"), "archway.metrics_address"),
                d.metrics_address,
            ),
            metrics_port=self.metrics_port(fields.get("metrics_port"), d.metrics_port),
            tracing=self.tracing(fields.get("tracing")),
        )

    def metrics_port(self, node: yaml.Node | None, default: int | None) -> int | None:
        """A port, or ``false``/``off`` for no metrics endpoint."""
        if _is_null(node):
            return default
        assert node is not None
        if isinstance(node, yaml.ScalarNode) and node.tag == _BOOL:
            if self.boolean(node, "archway.metrics_port") is False:
                return None
            self.error(
                node,
                "archway.metrics_port",
                "true is not a port",
                f"give a port (default {DEFAULT_METRICS_PORT}), or false for no metrics endpoint",
            )
            return None
        return self.integer(node, "archway.metrics_port", low=0, high=65535)

    def tracing(self, node: yaml.Node | None) -> TracingSettings | None:
        path = "archway.tracing"
        if _is_null(node):
            return None
        fields = self.mapping(node, path, _TRACING_KEYS)
        if fields is None:
            return None
        assert node is not None
        collector = self.text(fields.get("collector"), f"{path}.collector")
        if "collector" not in fields:
            self.missing_key(node, path, "collector", "collector: 127.0.0.1:4317 (OTLP over gRPC)")
            return None
        if collector is None:
            return None
        host, sep, port = collector.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            self.error(
                fields["collector"],
                f"{path}.collector",
                f"expected HOST:PORT, got {collector!r}",
                "write the OTLP/gRPC collector's address, e.g. otel-collector:4317",
            )
            return None
        sample = self.typed(
            fields.get("sample_percent"),
            f"{path}.sample_percent",
            (_INT, _FLOAT),
            "a percentage",
            "write a number from 0 to 100",
            float,
        )
        if sample is not None and not 0 <= float(sample) <= 100:
            self.error(
                fields["sample_percent"],
                f"{path}.sample_percent",
                f"{sample} is out of range",
                "use a number from 0 to 100",
            )
            return None
        return TracingSettings(
            collector_host=host,
            collector_port=int(port),
            sample_percent=100.0 if sample is None else float(sample),
        )

    def affinity(self, node: yaml.Node | None) -> AffinitySettings | None:
        """Plano's ``routing`` section: only the session pin's size and lifetime
        are Archway's business; every other key is warned about and ignored."""
        fields = self.mapping(node, "routing", None)
        if fields is None:
            return None
        if isinstance(node, yaml.MappingNode):
            for key, (key_node, _) in self.pairs(node, "routing").items():
                if key in ("llm_provider", "model"):
                    self.warn(key_node, f"routing.{key}", _ROUTER_HINT)
                elif key not in _AFFINITY_KEYS:
                    self.warn(key_node, f"routing.{key}", _IGNORED)
        d = AffinitySettings()
        ttl = self.integer(fields.get("session_ttl_seconds"), "routing.session_ttl_seconds", low=1)
        entries = self.integer(
            fields.get("session_max_entries"),
            "routing.session_max_entries",
            low=1,
            high=_MAX_AFFINITY_ENTRIES,
        )
        return AffinitySettings(
            ttl_s=d.ttl_s if ttl is None else float(ttl),
            max_entries=d.max_entries if entries is None else entries,
        )

    def router(
        self, node: yaml.Node | None, entry: tuple[yaml.Node, yaml.Node] | None
    ) -> RouterSettings | None:
        """The ``router:`` section; ``None`` when absent or broken (reported)."""
        if entry is None or _is_null(node):
            return None
        allowed = dict.fromkeys(_ROUTER_COMMON_KEYS)
        for keys in _ROUTER_BACKEND_KEYS.values():
            allowed.update(dict.fromkeys(keys))
        fields = self.mapping(node, "router", tuple(allowed))
        if fields is None:
            return None
        errors_before = len(self.errors.items)
        if "backend" in fields:
            backend = self.choice(fields["backend"], "router.backend", ROUTER_BACKENDS, "backend")
        else:
            # `router: {endpoint, model}` is the remote form the issue and Plano users write.
            backend = "remote" if "endpoint" in fields else "arch_router"
        if backend is None:
            return None
        own = set(_ROUTER_COMMON_KEYS) | set(_ROUTER_BACKEND_KEYS[backend])
        for key in fields:
            if key not in own:
                owner = next(b for b, keys in _ROUTER_BACKEND_KEYS.items() if key in keys)
                self.error(
                    fields[key],
                    f"router.{key}",
                    f"{key} is a setting of backend {owner!r}, not {backend!r}",
                    f"remove it, or set backend: {owner}",
                )
        local = backend in ("arch_router", "embedding")
        convert = "archway router convert --encoder" if backend == "embedding" else None
        model_path = self.model_path(fields.get("model_path"), required=local, convert=convert)
        if local and "model_path" not in fields:
            what = (
                "a converted sentence encoder (archway router convert --encoder)"
                if backend == "embedding"
                else "a converted Arch-Router directory"
            )
            self.missing_key(node, "router", "model_path", f"`model_path: DIR`, {what}")
        defaults = RouterSettings(backend=backend, model_path=None)
        timeout = self.duration(fields.get("timeout"), "router.timeout", positive=True)
        token_budget = self.integer(fields.get("token_budget"), "router.token_budget", low=16)
        max_messages = self.integer(fields.get("max_messages"), "router.max_messages", low=1)
        options: RouterOptions | None
        if backend == "arch_router":
            options = self.arch_router_options(fields)
        elif backend == "embedding":
            options = self.embedding_router_options(fields)
        else:
            options = self.remote_router_options(node, fields)
        if options is None or len(self.errors.items) > errors_before:
            return None
        return RouterSettings(
            backend=backend,
            model_path=model_path,
            timeout_s=timeout if timeout is not None else defaults.timeout_s,
            token_budget=token_budget if token_budget is not None else defaults.token_budget,
            max_messages=max_messages if max_messages is not None else defaults.max_messages,
            options=options,
            line=_line(entry[0]),
        )

    def model_path(
        self, node: yaml.Node | None, *, required: bool, convert: str | None = None
    ) -> Path | None:
        text = self.text(node, "router.model_path")
        if text is None:
            return None
        if not text.strip():
            self.error(node, "router.model_path", "empty path", "write the model directory")
            return None
        path = Path(text).expanduser()
        if not path.is_absolute() and self.source is not None:
            # Relative to the config, not to wherever `archway` happens to run.
            path = self.source.resolve().parent / path
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a directory"
            fix = (
                f"convert the model with `{convert or 'archway router convert'} SRC OUT` "
                "and set model_path to OUT"
                if required
                else "point it at a directory holding the model's tokenizer files"
            )
            self.error(node, "router.model_path", f"{str(path)!r} {what}", fix)
            return None
        return path

    def embedding_router_options(
        self, fields: Mapping[str, yaml.Node]
    ) -> EmbeddingRouterOptions | None:
        d = EmbeddingRouterOptions()
        device = self.choice(fields.get("device"), "router.device", CT2_DEVICES, "device")
        compute_type = self.choice(
            fields.get("compute_type"), "router.compute_type", CT2_COMPUTE_TYPES, "compute type"
        )
        threads = self.integer(fields.get("intra_threads"), "router.intra_threads", low=0)
        batch = self.integer(
            fields.get("max_batch_size"), "router.max_batch_size", low=1, high=1024
        )
        # Cosines live in [-1, 1]: a threshold or margin outside that is a typo.
        threshold = self.number(fields.get("threshold"), "router.threshold", low=-1.0, high=1.0)
        margin = self.number(fields.get("margin"), "router.margin", low=-2.0, high=2.0)
        history = self.number(
            fields.get("history_weight"), "router.history_weight", low=0.0, high=1.0
        )
        context = self.number(
            fields.get("context_margin"), "router.context_margin", low=0.0, high=2.0
        )
        classifier = self.number(
            fields.get("classifier_weight"), "router.classifier_weight", low=0.0, high=10.0
        )
        other = None
        if "other_examples" in fields:
            other = self.examples(fields["other_examples"], "router.other_examples")
        return EmbeddingRouterOptions(
            device=device or d.device,
            compute_type=compute_type or d.compute_type,
            intra_threads=threads if threads is not None else d.intra_threads,
            max_batch_size=batch or d.max_batch_size,
            threshold=threshold if threshold is not None else d.threshold,
            margin=margin if margin is not None else d.margin,
            history_weight=history if history is not None else d.history_weight,
            context_margin=context if context is not None else d.context_margin,
            classifier_weight=classifier if classifier is not None else d.classifier_weight,
            other_examples=other,
        )

    def arch_router_options(self, fields: Mapping[str, yaml.Node]) -> ArchRouterOptions | None:
        d = ArchRouterOptions()
        device = self.choice(fields.get("device"), "router.device", CT2_DEVICES, "device")
        compute_type = self.choice(
            fields.get("compute_type"), "router.compute_type", CT2_COMPUTE_TYPES, "compute type"
        )
        # 0 lets CTranslate2 pick (one thread per core).
        threads = self.integer(fields.get("intra_threads"), "router.intra_threads", low=0)
        batch = self.integer(fields.get("max_batch_size"), "router.max_batch_size", low=1, high=256)
        wait = self.duration(fields.get("batch_wait"), "router.batch_wait", positive=False)
        new_tokens = self.integer(
            fields.get("max_new_tokens"), "router.max_new_tokens", low=1, high=4096
        )
        static = self.boolean(fields.get("static_prompt"), "router.static_prompt")
        return ArchRouterOptions(
            device=device or d.device,
            compute_type=compute_type or d.compute_type,
            intra_threads=threads if threads is not None else d.intra_threads,
            max_batch_size=batch,
            batch_wait_s=wait if wait is not None else d.batch_wait_s,
            max_new_tokens=new_tokens,
            static_prompt=static if static is not None else d.static_prompt,
        )

    def remote_router_options(
        self, node: yaml.Node | None, fields: Mapping[str, yaml.Node]
    ) -> RemoteRouterOptions | None:
        assert node is not None
        endpoint = self.base_url(fields.get("endpoint"), "router.endpoint", "endpoint")
        if "endpoint" not in fields:
            self.missing_key(node, "router", "endpoint", "`endpoint: http://HOST:PORT/v1`")
        model = self.text(fields.get("model"), "router.model")
        if "model" not in fields:
            self.missing_key(
                node, "router", "model", "`model: NAME`, as the endpoint names Arch-Router"
            )
        access_key, _ = self.access_key(fields.get("access_key"), "router.access_key")
        new_tokens = self.integer(
            fields.get("max_new_tokens"), "router.max_new_tokens", low=1, high=4096
        )
        if endpoint is None or model is None:
            return None
        return RemoteRouterOptions(
            endpoint=endpoint, model=model, access_key=access_key, max_new_tokens=new_tokens
        )

    def check_ports(
        self,
        top: Mapping[str, tuple[yaml.Node, yaml.Node]],
        listeners: Sequence[tuple[Listener, yaml.Node | None]],
        gateway: GatewaySettings,
    ) -> None:
        """Two sockets on one port fail only at startup; say so now, with lines."""
        archway = top.get("archway")
        settings = (
            self.pairs(archway[1], "archway")
            if archway is not None and isinstance(archway[1], yaml.MappingNode)
            else {}
        )

        def line_of(key: str) -> int | None:
            entry = settings.get(key) or archway
            return _line(entry[1] if key in settings else entry[0]) if entry else None

        sockets: list[tuple[str, str, int, int | None]] = [
            (f"listener {listener.name!r}", listener.address, listener.port, _line(where))
            for listener, where in listeners
        ]
        sockets.append(
            ("archway.admin_port", gateway.admin_address, gateway.admin_port, line_of("admin_port"))
        )
        sockets.append(
            (
                "archway.ext_proc_port",
                gateway.ext_proc_address,
                gateway.ext_proc_port,
                line_of("ext_proc_port"),
            )
        )
        if gateway.metrics_port is not None:
            sockets.append(
                (
                    "archway.metrics_port",
                    gateway.metrics_address,
                    gateway.metrics_port,
                    line_of("metrics_port"),
                )
            )
        wildcard = {"0.0.0.0", "::", "[::]"}
        for i, (what, address, port, line) in enumerate(sockets):
            for other, other_address, other_port, other_line in sockets[:i]:
                overlap = (
                    address == other_address or address in wildcard or other_address in wildcard
                )
                # Port 0 asks the OS for a free port, so it never clashes.
                if port == other_port and port != 0 and overlap:
                    where = f" (line {other_line})" if other_line is not None else ""
                    self.error(
                        line,
                        "listeners" if what.startswith("listener") else what,
                        f"{what} and {other}{where} both use port {port}",
                        "give each its own port",
                    )
