"""How a settings dataclass declares its YAML keys: one ``setting(...)`` per field.

A field says its key, its kind of value, its bounds and its default; the loader's
``read_settings`` reads any such class, so a new router backend's options are one
dataclass and no loader code.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = ["Kind", "Setting", "setting", "setting_keys", "setting_of"]


class Kind(StrEnum):
    TEXT = "text"
    SECRET = "secret"
    """A string that may hold a credential: never echoed, ``$VAR`` may be unset
    when the loader allows it."""
    URL = "url"
    """An http(s) base URL."""
    CHOICE = "choice"
    INTEGER = "integer"
    SECONDS = "seconds"
    """A whole number of seconds, kept as a float."""
    NUMBER = "number"
    DURATION = "duration"
    """``30s``, ``500ms``, ``2m`` or a number of seconds."""
    BOOLEAN = "boolean"
    EXAMPLES = "examples"
    """A list of non-empty strings; present but empty is ``()``, absent is the default."""


@dataclass(frozen=True)
class Setting:
    kind: Kind
    key: str = ""
    """The YAML key; empty: the field's name."""
    low: float | None = None
    high: float | None = None
    positive: bool = False
    """For durations: zero is refused."""
    choices: tuple[str, ...] = ()
    what: str = ""
    """What a choice is called in messages (``device``)."""
    required: str = ""
    """When set, the key must be present; the text is the example the fix offers."""


_METADATA_KEY = "archway.setting"


def setting(
    kind: Kind,
    default: Any = dataclasses.MISSING,
    *,
    key: str = "",
    low: float | None = None,
    high: float | None = None,
    positive: bool = False,
    choices: tuple[str, ...] = (),
    what: str = "",
    required: str = "",
    repr: bool = True,
) -> Any:
    """A dataclass field that the loader reads from the key ``key`` (or its name)."""
    spec = Setting(kind, key, low, high, positive, choices, what, required)
    return dataclasses.field(default=default, repr=repr, metadata={_METADATA_KEY: spec})


def setting_of(item: dataclasses.Field[Any]) -> Setting | None:
    """The declaration of one field, with its key filled in; ``None`` for fields
    the loader does not read from YAML."""
    spec = item.metadata.get(_METADATA_KEY)
    if spec is None:
        return None
    return spec if spec.key else dataclasses.replace(spec, key=item.name)


def setting_keys(cls: type[Any]) -> tuple[str, ...]:
    """The YAML keys a settings dataclass declares, in field order."""
    specs = (setting_of(item) for item in dataclasses.fields(cls))
    return tuple(spec.key for spec in specs if spec is not None)
