"""``archway router convert``: a Hugging Face model directory (a downloaded
katanemo/Arch-Router-1.5B) -> a CTranslate2 model directory Archway loads.

CTranslate2's own converter does the weights; the tokenizer and chat-template
files are copied beside them so the directory is all the router needs. Needs
the ``convert`` extra (transformers and torch), at conversion time only.
"""

from __future__ import annotations

from pathlib import Path

from ext_proc.router.ct2_engine import missing_model_files
from ext_proc.router.tokenizer import ModelFilesError

__all__ = ["QUANTIZATIONS", "TOKENIZER_FILES", "convert_model"]

QUANTIZATIONS = ("int8", "int8_float16", "int8_bfloat16", "int16", "float16", "bfloat16", "float32")

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
)


def convert_model(
    source: Path, output: Path, *, quantization: str | None = "int8", force: bool = False
) -> Path:
    """Convert ``source`` into ``output``; returns ``output``.

    ``quantization`` is how the weights are stored (``int8``: a quarter of the
    float32 size, the fastest on CPUs; ``None`` keeps the checkpoint's type).
    """
    if not (source / "config.json").is_file():
        raise ModelFilesError(
            f"{source}: no config.json; point at a Hugging Face model directory "
            "(e.g. a download of katanemo/Arch-Router-1.5B)"
        )
    if not (source / "tokenizer.json").is_file():
        raise ModelFilesError(f"{source}: no tokenizer.json; the router needs the fast tokenizer")
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as exc:
        raise ModelFilesError(
            f"converting needs {exc.name}: pip install 'archway[convert]'"
        ) from None
    files = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    converter = TransformersConverter(str(source), copy_files=files, low_cpu_mem_usage=True)
    try:
        converter.convert(str(output), quantization=quantization, force=force)
    except ImportError as exc:
        raise ModelFilesError(
            f"converting needs {exc.name}: pip install 'archway[convert]'"
        ) from None
    missing = missing_model_files(output)
    if missing:
        raise ModelFilesError(f"{output}: conversion left out {', '.join(missing)}")
    return output
