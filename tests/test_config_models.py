"""The config's model index, and the declarations the loader reads settings from."""

from __future__ import annotations

import dataclasses

import pytest

from ext_proc.config import ModelIndex
from ext_proc.config.fields import setting_of
from ext_proc.router.factory import BACKENDS
from tests.factories import config, provider


def test_index_by_full_name_wildcard_and_bare_id() -> None:
    gpt = provider("openai/gpt-5.2")
    azure = provider("azure_openai/gpt-5.2")
    ollama = provider("ollama/*")
    index = config(gpt, azure, ollama).models
    assert index.by_model == {"openai/gpt-5.2": gpt, "azure_openai/gpt-5.2": azure}
    assert index.wildcards == {"ollama": ollama}
    assert index.by_bare_id == {"gpt-5.2": (gpt, azure)}
    assert index.provider_for("ollama/llama3") is ollama
    assert index.provider_for("openai/gpt-4o") is None


@pytest.mark.parametrize(
    ("ref", "served"),
    [
        ("openai/gpt-5.2", ["openai/gpt-5.2"]),
        ("ollama/llama3", ["ollama/llama3"]),
        ("gpt-5.2", ["openai/gpt-5.2", "azure_openai/gpt-5.2"]),
        ("llama3", ["ollama/llama3", "groq/llama3"]),
        ("openai/gpt-4o", []),
        ("mistral/large", []),
    ],
)
def test_serving_mirrors_request_time_resolution(ref: str, served: list[str]) -> None:
    index = ModelIndex.build(
        [
            provider("openai/gpt-5.2"),
            provider("azure_openai/gpt-5.2"),
            provider("ollama/*"),
            provider("groq/*"),
        ]
    )
    assert index.serving(ref) == served


def test_the_index_is_built_once_per_config() -> None:
    cfg = config(provider("openai/gpt-5.2"))
    assert cfg.models is cfg.models
    assert dataclasses.replace(cfg, providers=()).models.by_model == {}


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_option_is_declared(name: str) -> None:
    # An undeclared field could never be set from the config file.
    options = BACKENDS[name].options
    undeclared = [f.name for f in dataclasses.fields(options) if setting_of(f) is None]
    assert undeclared == []
