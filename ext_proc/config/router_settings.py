"""The ``router:`` section (an Archway extension): which preference-router
backend runs, the settings every backend shares, and the backend's own options.

The backends and their options classes come from ``ext_proc/router/factory.py``;
the options are read from the ``setting`` declarations on those classes, so this
module names no backend.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ext_proc.config.fields import setting_keys
from ext_proc.config.reader import Reader, is_null, line_of
from ext_proc.config.types import RouterSettings
from ext_proc.router.factory import BACKENDS, BackendKind

__all__ = ["read_router"]

_COMMON_KEYS = ("backend", "model_path", *setting_keys(RouterSettings))


def read_router(r: Reader, entry: tuple[yaml.Node, yaml.Node] | None) -> RouterSettings | None:
    """``None`` when the section is absent, or broken (reported)."""
    node = entry[1] if entry is not None else None
    if entry is None or is_null(node):
        return None
    keys_of = {name: setting_keys(backend.options) for name, backend in BACKENDS.items()}
    allowed = dict.fromkeys(_COMMON_KEYS)
    for keys in keys_of.values():
        allowed.update(dict.fromkeys(keys))
    fields = r.mapping(node, "router", tuple(allowed))
    if fields is None:
        return None
    assert node is not None
    errors_before = r.error_count
    if "backend" in fields:
        name = r.choice(fields["backend"], "router.backend", tuple(BACKENDS), "backend")
    else:
        # `router: {endpoint, model}` is the remote form the issue and Plano users write.
        name = "remote" if "endpoint" in fields else "arch_router"
    if name is None:
        return None
    backend = BACKENDS[name]
    own = set(_COMMON_KEYS) | set(keys_of[name])
    for key in fields:
        if key not in own:
            owner = next(b for b, keys in keys_of.items() if key in keys)
            r.error(
                fields[key],
                f"router.{key}",
                f"{key} is a setting of backend {owner!r}, not {name!r}",
                f"remove it, or set backend: {owner}",
            )
    model_path = _model_path(r, fields.get("model_path"), backend)
    if backend.model_dir is not None and "model_path" not in fields:
        r.missing_key(node, "router", "model_path", f"`model_path: DIR`, {backend.model_dir}")
    common = r.settings(RouterSettings, fields, node, "router") or {}
    options = r.settings(backend.options, fields, node, "router")
    if options is None or r.error_count > errors_before:
        return None
    return RouterSettings(
        backend=name,
        model_path=model_path,
        options=backend.options(**options),
        line=line_of(entry[0]),
        **common,
    )


def _model_path(r: Reader, node: yaml.Node | None, backend: BackendKind) -> Path | None:
    text = r.text(node, "router.model_path")
    if text is None:
        return None
    if not text.strip():
        r.error(node, "router.model_path", "empty path", "write the model directory")
        return None
    path = Path(text).expanduser()
    if not path.is_absolute() and r.source is not None:
        # Relative to the config, not to wherever `archway` happens to run.
        path = r.source.resolve().parent / path
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        fix = (
            f"convert the model with `{backend.convert} SRC OUT` and set model_path to OUT"
            if backend.model_dir is not None
            else "point it at a directory holding the model's tokenizer files"
        )
        r.error(node, "router.model_path", f"{str(path)!r} {what}", fix)
        return None
    return path
