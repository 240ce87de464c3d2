"""Decision latency of the in-process Arch-Router on CTranslate2, on this machine.

A model of Arch-Router-1.5B's exact shape (Qwen2: hidden 1536, 28 layers, 12 heads,
2 KV heads, intermediate 8960, vocab 151936, tied embeddings) is built with random
weights and converted to int8, once, into --model-dir. Random weights time the
same as the real ones for a fixed number of tokens in and out, which is what is
fixed here: a 380-token prompt (300 of them the config-only prefix, the size of
the example routes in Arch-Router's prompt) and 8 generated tokens (the length of
``{"route": "creative writing"}``).

Measured, each as p50/p99 over --repeats decisions:
  (a) CTranslate2 int8 without and with the cached static prompt,
  (b) intra_threads 1 and 2,
  (c) 4 concurrent decisions: one generate_batch call against 4 calls in a row,
  (d) transformers' generate (fp32, torch) on the same prompt and output length.

    pip install -e '.[test]'
    python bench/router_bench.py [--model-dir DIR] [--repeats N] [--no-transformers]

Needs the ``convert`` extra (transformers, torch) to build the model; the
measurement itself runs on CTranslate2 alone. It takes minutes on a small CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ARCH_ROUTER_SHAPE = {
    "hidden_size": 1536,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "intermediate_size": 8960,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
}
PROMPT_TOKENS = 380
STATIC_TOKENS = 300
NEW_TOKENS = 8


def build_model(model_dir: Path) -> Path:
    """The int8 CTranslate2 model of Arch-Router's shape (built once, then reused)."""
    ct2_dir = model_dir / "ct2-int8"
    if (ct2_dir / "model.bin").is_file():
        return ct2_dir
    import torch
    from ctranslate2.converters import TransformersConverter
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    hf_dir = model_dir / "hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    size = ARCH_ROUTER_SHAPE["vocab_size"]
    # A word-level vocabulary of exactly the model's size: only token counts matter.
    vocab = {f"t{i}": i for i in range(size - 2)}
    vocab["<|endoftext|>"] = size - 2
    vocab["<|im_end|>"] = size - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    ).save_pretrained(str(hf_dir))
    if not (hf_dir / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = Qwen2Config(**ARCH_ROUTER_SHAPE, eos_token_id=size - 1)
        # bfloat16 halves the memory and the file; int8 quantization comes next anyway.
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(str(hf_dir))
        del model
    TransformersConverter(str(hf_dir), low_cpu_mem_usage=True).convert(
        str(ct2_dir), quantization="int8", force=True
    )
    return ct2_dir


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_s": round(statistics.median(ordered), 3),
        "p99_s": round(p99, 3),
        "n": len(ordered),
    }


def timed(repeats: int, run: Callable[[], object]) -> dict[str, float]:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return percentiles(samples)


def prompt_tokens(rng: random.Random, vocab: int, count: int) -> list[str]:
    return [f"t{rng.randrange(1, vocab - 1)}" for _ in range(count)]


def bench_ct2(ct2_dir: Path, threads: int, repeats: int, rng: random.Random) -> dict[str, object]:
    import ctranslate2

    generator = ctranslate2.Generator(
        str(ct2_dir), device="cpu", compute_type="int8", intra_threads=threads
    )
    vocab = ARCH_ROUTER_SHAPE["vocab_size"]
    static = prompt_tokens(rng, vocab, STATIC_TOKENS)
    suffixes = [prompt_tokens(rng, vocab, PROMPT_TOKENS - STATIC_TOKENS) for _ in range(4)]
    options = {
        "max_length": NEW_TOKENS,
        "min_length": NEW_TOKENS,
        "include_prompt_in_result": False,
        "sampling_topk": 1,
    }

    def whole(suffix: list[str]) -> None:
        generator.generate_batch([static + suffix], **options)

    def cached(batch: list[list[str]]) -> None:
        generator.generate_batch(batch, static_prompt=static, **options)

    out: dict[str, object] = {"intra_threads": threads}
    out["no_cache"] = timed(repeats, lambda: whole(suffixes[0]))
    cached([suffixes[0]])  # fills the static-prompt cache, as the first request does
    out["static_prompt_cache"] = timed(repeats, lambda: cached([suffixes[1]]))
    # Four concurrent conversations of different lengths, as a micro-batch sees them.
    varied = [s[: PROMPT_TOKENS - STATIC_TOKENS - 10 * i] for i, s in enumerate(suffixes)]
    out["4_in_one_batch"] = timed(max(1, repeats // 2), lambda: cached(varied))
    out["4_one_by_one"] = timed(max(1, repeats // 2), lambda: [cached([s]) for s in varied])
    return out


def bench_transformers(ct2_dir: Path, repeats: int) -> dict[str, object]:
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(str(ct2_dir.parent / "hf"), dtype=torch.float32)
    model.eval()
    ids = torch.randint(1, ARCH_ROUTER_SHAPE["vocab_size"] - 1, (1, PROMPT_TOKENS))
    mask = torch.ones_like(ids)

    def run() -> None:
        with torch.no_grad():
            model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
            )

    return {"torch_threads": torch.get_num_threads(), "fp32_generate": timed(repeats, run)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path("/tmp/archway-bench/arch-router-shape")
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-transformers", action="store_true")
    args = parser.parse_args()

    started = time.perf_counter()
    ct2_dir = build_model(args.model_dir)
    results: dict[str, object] = {
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "load_average_at_start": os.getloadavg(),
            "python": platform.python_version(),
        },
        "prompt_tokens": PROMPT_TOKENS,
        "static_prompt_tokens": STATIC_TOKENS,
        "new_tokens": NEW_TOKENS,
        "build_s": round(time.perf_counter() - started, 1),
        "ctranslate2_int8": [],
    }
    rng = random.Random(0)
    for threads in args.threads:
        run = bench_ct2(ct2_dir, threads, args.repeats, rng)
        results["ctranslate2_int8"].append(run)  # type: ignore[union-attr]
        print(json.dumps(run), flush=True)
    if not args.no_transformers:
        results["transformers"] = bench_transformers(ct2_dir, max(1, args.repeats // 2))
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    main()
