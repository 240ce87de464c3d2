"""Greedy generation on a CTranslate2 ``Generator``: the only module that imports it.

CTranslate2 runs the model in C++ and releases the GIL, so a call on a worker
thread leaves the event loop free. A static prompt (the routes prefix, the same
for every request) is forwarded once and its model state cached by CTranslate2;
each request then pays only for its own conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ext_proc.router.tokenizer import ModelFilesError

__all__ = ["REQUIRED_FILES", "CT2Engine", "missing_model_files", "resolve_device"]

REQUIRED_FILES = ("model.bin", "config.json", "tokenizer.json")
_VOCABULARY_FILES = ("vocabulary.json", "vocabulary.txt", "shared_vocabulary.json")


def missing_model_files(directory: Path) -> list[str]:
    """What a converted Arch-Router directory lacks (empty when complete)."""
    missing = [name for name in REQUIRED_FILES if not (directory / name).is_file()]
    if not any((directory / name).is_file() for name in _VOCABULARY_FILES):
        missing.append("vocabulary.json")
    return missing


def resolve_device(device: str) -> str:
    """``auto`` as the device CTranslate2 will run on: a GPU when it sees one."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


class CT2Engine:
    def __init__(self, generator: Any, *, device: str, compute_type: str) -> None:
        self._generator = generator
        self.device = device
        self.compute_type = compute_type

    @classmethod
    def load(
        cls, directory: Path, *, device: str, compute_type: str, intra_threads: int
    ) -> CT2Engine:
        missing = missing_model_files(directory)
        if missing:
            raise ModelFilesError(
                f"{directory} is not a converted CTranslate2 model: missing "
                f"{', '.join(missing)}; convert it with `archway router convert SRC {directory}`"
            )
        import ctranslate2

        device = resolve_device(device)
        generator = ctranslate2.Generator(
            str(directory),
            device=device,
            compute_type=compute_type,
            inter_threads=1,
            intra_threads=intra_threads,
        )
        return cls(generator, device=device, compute_type=generator.compute_type)

    def generate(
        self,
        prompts: Sequence[Sequence[str]],
        *,
        static_prompt: Sequence[str] | None,
        max_new_tokens: int,
        end_ids: Sequence[int],
    ) -> list[list[int]]:
        """The generated ids of each prompt (greedy), the prompt itself left out."""
        results = self._generator.generate_batch(
            [list(p) for p in prompts],
            static_prompt=list(static_prompt) if static_prompt else None,
            cache_static_prompt=True,
            # The prompt is forwarded in one pass to fill the cache, not decoded
            # token by token, and it is not echoed back.
            include_prompt_in_result=False,
            max_length=max_new_tokens,
            beam_size=1,
            sampling_topk=1,
            end_token=list(end_ids) or None,
            # The closing `"}` may be the end token; without it the JSON is cut short.
            return_end_token=True,
        )
        return [list(r.sequences_ids[0]) for r in results]
