"""A model directory's tokenizer and chat template, without torch or transformers.

``tokenizers`` reads ``tokenizer.json``; the chat template (``chat_template.jinja``
or ``tokenizer_config.json``'s ``chat_template``) is rendered with jinja2 in a
sandbox, set up the way Hugging Face's ``apply_chat_template`` sets it up, so the
text matches what the model was trained on (tests compare the two).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ModelFilesError", "ModelTokenizer", "chat_renderer"]

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token")


class ModelFilesError(Exception):
    """A model directory that cannot be used, with what is missing and how to fix it."""


class ModelTokenizer:
    """Encodes text to ids, names ids as the model's vocabulary tokens, and renders
    the chat template."""

    def __init__(
        self,
        tokenizer: Any,
        chat_template: str,
        special_tokens: Mapping[str, str],
        eos_ids: Iterable[int],
    ) -> None:
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens)
        self.eos_ids = tuple(dict.fromkeys(eos_ids))
        self._render = chat_renderer(chat_template)

    @classmethod
    def from_dir(cls, directory: Path) -> ModelTokenizer:
        from tokenizers import Tokenizer

        tokenizer_file = directory / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ModelFilesError(
                f"{directory}: no tokenizer.json; copy the tokenizer files of the original "
                "model into it (archway router convert does)"
            )
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        config = _read_json(directory / "tokenizer_config.json")
        template_file = directory / "chat_template.jinja"
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        else:
            template = _named_template(config.get("chat_template"))
        if not template:
            raise ModelFilesError(
                f"{directory}: no chat template (chat_template.jinja, or chat_template in "
                "tokenizer_config.json); copy them from the original model"
            )
        special = {
            key: _token_text(config[key])
            for key in _SPECIAL_KEYS
            if _token_text(config.get(key)) is not None
        }
        eos_ids: list[int] = []
        for source in ("generation_config.json", "config.json"):
            eos_ids.extend(_ids(_read_json(directory / source).get("eos_token_id")))
        if "eos_token" in special:
            eos = tokenizer.token_to_id(special["eos_token"])
            if eos is not None:
                eos_ids.append(eos)
        return cls(tokenizer, template, special, eos_ids)

    def encode(self, text: str) -> list[int]:
        # The template already wrote every special token as text.
        return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary entries for ``ids``, as CTranslate2 takes them."""
        return [self._tokenizer.id_to_token(i) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=True))

    def vocabulary(self) -> dict[str, int]:
        return dict(self._tokenizer.get_vocab(with_added_tokens=True))

    def render_chat(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        return self._render(
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )


@lru_cache(maxsize=8)
def chat_renderer(template: str) -> Any:
    """A compiled chat template; call it with ``messages=..., add_generation_prompt=...``."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(
        value: object,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
        return json.dumps(
            value,
            ensure_ascii=ensure_ascii,
            indent=indent,
            separators=separators,
            sort_keys=sort_keys,
        )

    def strftime_now(fmt: str) -> str:
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template).render


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"{path}: not readable JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _named_template(value: object) -> str | None:
    """``chat_template`` is a string, or a list of named templates (``default`` wins)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            t.get("name"): t.get("template")
            for t in value
            if isinstance(t, dict) and isinstance(t.get("template"), str)
        }
        return named.get("default") or next(iter(named.values()), None)
    return None


def _token_text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _ids(value: object) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []
