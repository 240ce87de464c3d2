"""Shared fixtures, built once per test run: the tiny Arch-Router-shaped model,
and Archway installed from its wheel.

ctranslate2, torch and transformers are declared test dependencies (the
``test`` extra): a broken install makes the router tests error, loudly, rather
than skip and leave the router untested while the suite passes.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.installed import Installation


def _require_router_test_dependencies() -> None:
    for name in ("ctranslate2", "torch", "transformers"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise RuntimeError(
                f"{name} does not import ({exc}); it is a test dependency: pip install -e '.[test]'"
            ) from exc


@dataclass(frozen=True)
class TinyModel:
    hf_dir: Path
    """The Hugging Face checkpoint and tokenizer (what a user downloads)."""
    ct2_dir: Path
    """Its float32 CTranslate2 conversion (what router.model_path points at)."""


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    _require_router_test_dependencies()
    from ext_proc.router.convert import convert_model
    from tests.tiny_qwen import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-arch-router")
    hf_dir = root / "hf"
    build_tokenizer(hf_dir)
    build_model(hf_dir)
    # float32, so CTranslate2's greedy output can be compared with transformers'.
    ct2_dir = convert_model(hf_dir, root / "ct2", quantization="float32")
    return TinyModel(hf_dir, ct2_dir)


@dataclass(frozen=True)
class TinyEncoder:
    hf_dir: Path
    """A tiny BERT checkpoint (safetensors) and WordPiece tokenizer."""
    ct2_dir: Path
    """Its float32 CTranslate2 encoder, converted by Archway's numpy converter."""


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> TinyEncoder:
    _require_router_test_dependencies()
    from ext_proc.router.convert import convert_encoder
    from tests.tiny_bert import build_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny-bert")
    hf_dir = root / "hf"
    build_tokenizer(hf_dir)
    build_model(hf_dir)
    ct2_dir = convert_encoder(hf_dir, root / "ct2", quantization="float32")
    return TinyEncoder(hf_dir, ct2_dir)


@pytest.fixture(scope="session")
def installed_archway(tmp_path_factory: pytest.TempPathFactory) -> Installation:
    """The sdist, the wheel built from it, and a fresh venv with the wheel
    installed (not editable); shared by test_install.py and test_container_paths.py."""
    from tests.installed import build_and_install

    return build_and_install(tmp_path_factory.mktemp("archway-install"))
