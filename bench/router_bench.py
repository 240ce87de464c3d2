"""Decision latency of the in-process Arch-Router on CTranslate2, on this machine.

A model of Arch-Router-1.5B's exact shape (Qwen2: hidden 1536, 28 layers, 12 heads,
2 KV heads, intermediate 8960, vocab 151936, tied embeddings) is built with random
weights, once, into --model-dir. Random weights time the same as the real ones
for a fixed number of tokens in and out, which is what is fixed here: a
380-token prompt (300 of them the config-only prefix, the size of the example
routes in Arch-Router's prompt) and 8 generated tokens (the length of
``{"route": "creative writing"}``). Decisions go through Archway's own
``CT2Engine`` (``load`` and ``generate``), with the options the router uses.

Measured, for each --compute-type (and, on a CPU, each of --threads):
  (a) one decision: p50/p99 without and with the cached static prompt, and the
      first token alone (the prompt's forward pass, without the decoding steps);
      and the short answer the router now asks for (``short_answer``: the
      answers' 4 shared tokens read with the prompt, then 2 generated),
  (b) N concurrent decisions (--batch-sizes): one generate call against N calls in
      a row, for N conversations of equal length and of lengths 50 to 80 tokens,
  (c) the same N through the router's MicroBatcher, batched against one at a time,
  (d) transformers' generate on the same prompt and output length (fp32 on a CPU,
      fp16 on a GPU), unless --no-transformers.

    pip install -e '.[test]'
    python bench/router_bench.py [--model-dir DIR] [--repeats N] [--no-transformers]
    python bench/router_bench.py --device cuda [--compute-type float16 int8_float16]

Two ways to build the model (--build): ``transformers`` (the default on a CPU)
makes a random Qwen2ForCausalLM with torch and converts it to int8 with
CTranslate2's converter, as ``archway router convert`` does; ``numpy`` (the
default on a GPU) fills CTranslate2's decoder spec straight from numpy and
stores float16, without torch. --layers shrinks the model for a smoke test.
It takes minutes on a small CPU, and under five on an H200 (both GPU compute types
and transformers).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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
# The router's short answer: every answer starts with the same tokens
# (`{"`, `route`, `":`, ` "` in a byte-level BPE like Qwen2's), which go in with
# the prompt, and two more tell the spec's four routes and `other` apart
# ("code" is followed by " understanding" or " generation").
ANSWER_PREFIX_TOKENS = 4
DECISIVE_TOKENS = 2
VOCAB = ARCH_ROUTER_SHAPE["vocab_size"]
EOS_ID = VOCAB - 1
# Conversations of different lengths, as a micro-batch sees them: from the
# longest (the 80 tokens after the static prefix) down to this many.
SHORTEST_SUFFIX = 50


def _tokenizer() -> Any:
    """A word-level tokenizer of exactly the model's vocabulary size: only token
    counts matter here."""
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB - 2)}
    vocab["<|endoftext|>"] = VOCAB - 2
    vocab["<|im_end|>"] = EOS_ID
    return Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))


def build_model(model_dir: Path, *, build: str, layers: int) -> Path:
    """The CTranslate2 model of Arch-Router's shape (built once, then reused)."""
    suffix = "" if layers == ARCH_ROUTER_SHAPE["num_hidden_layers"] else f"-{layers}l"
    if build == "numpy":
        return _build_with_numpy(model_dir / f"ct2-float16-numpy{suffix}", layers)
    return _build_with_transformers(model_dir, suffix, layers)


def _build_with_transformers(model_dir: Path, suffix: str, layers: int) -> Path:
    ct2_dir = model_dir / f"ct2-int8{suffix}"
    if (ct2_dir / "model.bin").is_file():
        _write_tokenizer(ct2_dir)  # directories built before the bench used CT2Engine
        return ct2_dir
    import torch
    from ctranslate2.converters import TransformersConverter
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    hf_dir = model_dir / f"hf{suffix}"
    hf_dir.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(
        tokenizer_object=_tokenizer(),
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    ).save_pretrained(str(hf_dir))
    if not (hf_dir / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = Qwen2Config(
            **{**ARCH_ROUTER_SHAPE, "num_hidden_layers": layers}, eos_token_id=EOS_ID
        )
        # bfloat16 halves the memory and the file; int8 quantization comes next anyway.
        model = Qwen2ForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(str(hf_dir))
        del model
    TransformersConverter(
        str(hf_dir), copy_files=["tokenizer.json"], low_cpu_mem_usage=True
    ).convert(str(ct2_dir), quantization="int8", force=True)
    return ct2_dir


def _build_with_numpy(ct2_dir: Path, layers: int) -> Path:
    """Qwen2's decoder, as CTranslate2's converter lays it out, from random numpy
    weights stored as float16: the GPU compute types all start from it."""
    if (ct2_dir / "model.bin").is_file():
        return ct2_dir
    import numpy as np
    from ctranslate2.specs import common_spec, transformer_spec

    shape = ARCH_ROUTER_SHAPE
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    heads, kv_heads = shape["num_attention_heads"], shape["num_key_value_heads"]
    kv = kv_heads * hidden // heads
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        layers,
        heads,
        pre_norm=True,
        activation=common_spec.Activation.SWISH,
        ffn_glu=True,
        rms_norm=True,
        rotary_dim=0,
        rotary_interleave=False,
        rotary_base=shape["rope_theta"],
        num_heads_kv=kv_heads,
    )
    rng = np.random.default_rng(0)

    def random(*dims: int) -> np.ndarray:
        # Uniform in +-0.05, made once in float32 and stored in float16: values do
        # not change the time, and every matrix differs (no aliasing, no cache luck).
        return ((rng.random(dims, dtype=np.float32) - 0.5) * 0.1).astype(np.float16)

    def ones() -> np.ndarray:
        return np.ones(hidden, dtype=np.float16)  # RMSNorm weights as initialised

    decoder = spec.decoder
    decoder.scale_embeddings = False
    decoder.embeddings.weight = random(VOCAB, hidden)
    decoder.projection.weight = decoder.embeddings.weight  # tied, aliased on save
    decoder.layer_norm.gamma = ones()
    for layer in decoder.layer:
        layer.self_attention.layer_norm.gamma = ones()
        # Q, K and V fused into one projection, with Qwen2's biases.
        layer.self_attention.linear[0].weight = random(hidden + 2 * kv, hidden)
        layer.self_attention.linear[0].bias = random(hidden + 2 * kv)
        layer.self_attention.linear[1].weight = random(hidden, hidden)
        layer.ffn.layer_norm.gamma = ones()
        layer.ffn.linear_0.weight = random(inner, hidden)  # gate
        layer.ffn.linear_0_noact.weight = random(inner, hidden)  # up
        layer.ffn.linear_1.weight = random(hidden, inner)  # down
    tokenizer = _tokenizer()
    by_id = {index: token for token, index in tokenizer.get_vocab().items()}
    spec.register_vocabulary([by_id[i] for i in range(VOCAB)])
    spec.config.bos_token = "<|endoftext|>"
    spec.config.eos_token = "<|im_end|>"
    spec.config.unk_token = "<|endoftext|>"
    spec.config.layer_norm_epsilon = shape["rms_norm_eps"]
    spec.validate()
    spec.optimize(quantization="float16")
    ct2_dir.mkdir(parents=True, exist_ok=True)
    spec.save(str(ct2_dir))
    tokenizer.save(str(ct2_dir / "tokenizer.json"))
    return ct2_dir


def _write_tokenizer(ct2_dir: Path) -> None:
    if not (ct2_dir / "tokenizer.json").is_file():
        _tokenizer().save(str(ct2_dir / "tokenizer.json"))


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_s": round(statistics.median(ordered), 4),
        "p99_s": round(p99, 4),
        "n": len(ordered),
    }


def timed(repeats: int, run: Callable[[], object], *, warmup: int = 0) -> dict[str, float]:
    for _ in range(warmup):
        run()
    samples = []
    cpu_started = os.times()
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    cpu = os.times()
    result = percentiles(samples)
    # This process's CPU time per run: next to the wall time, it says whether a
    # GPU run waits on the host (kernel launches) rather than on the GPU.
    used = cpu.user - cpu_started.user + cpu.system - cpu_started.system
    result["process_cpu_s"] = round(used / max(1, repeats), 4)
    return result


def prompt_tokens(rng: random.Random, count: int) -> list[str]:
    return [f"t{rng.randrange(1, VOCAB - 2)}" for _ in range(count)]


def bench_ct2(
    ct2_dir: Path,
    *,
    device: str,
    compute_type: str,
    threads: int,
    repeats: int,
    warmup: int,
    batch_sizes: Sequence[int],
    rng: random.Random,
) -> dict[str, object]:
    from ext_proc.router.batching import MicroBatcher
    from ext_proc.router.ct2_engine import CT2Engine

    started = time.perf_counter()
    engine = CT2Engine.load(
        ct2_dir, device=device, compute_type=compute_type, intra_threads=threads
    )
    out: dict[str, object] = {
        "device": engine.device,
        "compute_type": engine.compute_type,
        "intra_threads": threads,
        "load_s": round(time.perf_counter() - started, 1),
    }
    lengths: Counter[int] = Counter()

    def generate(prompts: list[list[str]], static: list[str] | None) -> list[list[int]]:
        # The router's call: greedy, prompt left out of the result, stop at the end
        # token (random weights all but never produce it: every decision is 8 tokens).
        ids = engine.generate(
            prompts, static_prompt=static, max_new_tokens=NEW_TOKENS, end_ids=(EOS_ID,)
        )
        lengths.update(len(i) for i in ids)
        return ids

    static = prompt_tokens(rng, STATIC_TOKENS)
    rest = PROMPT_TOKENS - STATIC_TOKENS
    largest = max(batch_sizes, default=1)
    suffixes = [prompt_tokens(rng, rest) for _ in range(max(2, largest))]
    out["no_cache"] = timed(repeats, lambda: generate([static + suffixes[0]], None), warmup=warmup)
    # The first call with the static prompt fills its cache, as the first request does.
    generate([suffixes[0]], static)
    out["static_prompt_cache"] = timed(
        repeats, lambda: generate([suffixes[1]], static), warmup=warmup
    )
    # A decision as the router makes it: the answers' shared start read with the
    # prompt, then the two tokens that tell the routes apart.
    answer_start = prompt_tokens(rng, ANSWER_PREFIX_TOKENS)
    out["short_answer"] = timed(
        repeats,
        lambda: engine.generate(
            [suffixes[1] + answer_start],
            static_prompt=static,
            max_new_tokens=DECISIVE_TOKENS,
            end_ids=(EOS_ID,),
        ),
        warmup=warmup,
    )
    # The same with one output token: the prompt's forward pass alone; the rest
    # of a full decision is its 7 further decoding steps.
    out["first_token_only"] = timed(
        repeats,
        lambda: engine.generate(
            [suffixes[1]], static_prompt=static, max_new_tokens=1, end_ids=(EOS_ID,)
        ),
        warmup=warmup,
    )
    batch_repeats = max(1, repeats // 2)
    batches = []
    for size in batch_sizes:
        spread = rest - SHORTEST_SUFFIX
        varied = [
            s[: rest - round(spread * i / max(1, size - 1))] for i, s in enumerate(suffixes[:size])
        ]
        for kind, prompts in (("equal", suffixes[:size]), ("varied", varied)):
            one_call = timed(batch_repeats, lambda p=prompts: generate(p, static), warmup=warmup)
            in_a_row = timed(
                batch_repeats, lambda p=prompts: [generate([x], static) for x in p], warmup=warmup
            )
            batches.append(
                {
                    "size": size,
                    "lengths": kind,
                    "suffix_tokens": sorted({len(p) for p in prompts}),
                    "one_call": one_call,
                    "in_a_row": in_a_row,
                    "decisions_per_s_one_call": round(size / one_call["p50_s"], 1),
                    "decisions_per_s_in_a_row": round(size / in_a_row["p50_s"], 1),
                    "batching_speedup": round(in_a_row["p50_s"] / one_call["p50_s"], 2),
                }
            )
        # The router's own path: `size` requests at once through its MicroBatcher
        # (2 ms wait), batched as configured against one at a time.
        for max_batch in sorted({size, 1}, reverse=True):
            batches.append(
                _through_batcher(
                    MicroBatcher,
                    lambda p: generate(list(p), static),
                    varied,
                    max_batch=max_batch,
                    repeats=batch_repeats,
                    warmup=warmup,
                )
            )
    out["batches"] = batches
    out["generated_tokens"] = dict(sorted(lengths.items()))
    out["cublas"] = _loaded_cublas()
    return out


def _through_batcher(
    batcher_class: Any,
    run_batch: Callable[[list[list[str]]], list[list[int]]],
    prompts: list[list[str]],
    *,
    max_batch: int,
    repeats: int,
    warmup: int,
) -> dict[str, object]:
    async def measure() -> tuple[list[float], list[int]]:
        batcher = batcher_class(run_batch, max_batch_size=max_batch, max_wait_s=0.002)
        samples = []
        try:
            for index in range(warmup + repeats):
                started = time.perf_counter()
                await asyncio.gather(*(batcher.submit(p) for p in prompts))
                if index >= warmup:
                    samples.append(time.perf_counter() - started)
            return samples, list(batcher.batch_sizes)
        finally:
            await batcher.close()

    samples, sizes = asyncio.run(measure())
    result = percentiles(samples)
    return {
        "size": len(prompts),
        "lengths": "varied",
        "micro_batcher_max_batch_size": max_batch,
        "all": result,
        "decisions_per_s": round(len(prompts) / result["p50_s"], 1),
        "batch_sizes_formed": dict(sorted(Counter(sizes).items())),
    }


def _loaded_cublas() -> list[str]:
    """The cuBLAS files this process has mapped (CTranslate2 opens it on first use)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return []
    return sorted({line.split()[-1] for line in maps.splitlines() if "libcublas" in line})


def bench_transformers(
    ct2_dir: Path, *, device: str, layers: int, repeats: int, warmup: int
) -> dict[str, object]:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    dtype = torch.float16 if device == "cuda" else torch.float32
    hf_dir = ct2_dir.parent / ct2_dir.name.replace("ct2-int8", "hf")
    if device == "cpu" and (hf_dir / "model.safetensors").is_file():
        model = Qwen2ForCausalLM.from_pretrained(str(hf_dir), dtype=dtype)
    else:
        # Random weights made where they run (a GPU makes 1.5B of them in no time).
        torch.manual_seed(0)
        config = Qwen2Config(
            **{**ARCH_ROUTER_SHAPE, "num_hidden_layers": layers}, eos_token_id=EOS_ID
        )
        with torch.device(device):
            model = Qwen2ForCausalLM(config).to(dtype)
    model.eval()
    ids = torch.randint(1, VOCAB - 2, (1, PROMPT_TOKENS), device=device)
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
        if device == "cuda":
            torch.cuda.synchronize()

    return {
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "generate": timed(repeats, run, warmup=warmup),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model-dir", type=Path, default=Path("/tmp/archway-bench/arch-router-shape")
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--compute-type", nargs="+", help="default: int8 on a CPU, float16 int8_float16 on a GPU"
    )
    parser.add_argument("--build", choices=("transformers", "numpy"))
    parser.add_argument("--layers", type=int, default=ARCH_ROUTER_SHAPE["num_hidden_layers"])
    parser.add_argument("--repeats", type=int, help="default: 5 on a CPU, 40 on a GPU")
    parser.add_argument("--warmup", type=int, help="untimed runs first; default 0 CPU, 3 GPU")
    parser.add_argument("--threads", type=int, nargs="+", help="default: 1 2 on a CPU, 0 on a GPU")
    parser.add_argument("--batch-sizes", type=int, nargs="+", help="default: 4 CPU, 8 16 GPU")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    compute_types = args.compute_type or (["float16", "int8_float16"] if gpu else ["int8"])
    build = args.build or ("numpy" if gpu else "transformers")
    repeats = args.repeats or (40 if gpu else 5)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 0)
    threads = args.threads or ([0] if gpu else [1, 2])
    batch_sizes = args.batch_sizes or ([8, 16] if gpu else [4])

    started = time.perf_counter()
    ct2_dir = build_model(args.model_dir, build=build, layers=args.layers)
    results: dict[str, Any] = {
        "machine": _machine(gpu),
        "ctranslate2": _version("ctranslate2"),
        "model": {"dir": str(ct2_dir), "build": build, "layers": args.layers},
        "prompt_tokens": PROMPT_TOKENS,
        "static_prompt_tokens": STATIC_TOKENS,
        "new_tokens": NEW_TOKENS,
        "short_answer": {"prefix_tokens": ANSWER_PREFIX_TOKENS, "new_tokens": DECISIVE_TOKENS},
        "build_s": round(time.perf_counter() - started, 1),
        "ctranslate2_runs": [],
    }

    def save() -> None:
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    rng = random.Random(0)
    for compute_type in compute_types:
        for count in threads:
            run = bench_ct2(
                ct2_dir,
                device=args.device,
                compute_type=compute_type,
                threads=count,
                repeats=repeats,
                warmup=warmup,
                batch_sizes=batch_sizes,
                rng=rng,
            )
            results["ctranslate2_runs"].append(run)
            gc.collect()  # the generator, and its device memory, goes before the next
            print(json.dumps(run), flush=True)
            save()
    if not args.no_transformers:
        try:
            results["transformers"] = bench_transformers(
                ct2_dir,
                device=args.device,
                layers=args.layers,
                repeats=max(1, repeats // 2),
                warmup=min(warmup, 1),
            )
        except Exception as exc:  # a reference only: the CTranslate2 figures stand
            results["transformers"] = {"error": repr(exc)}
    results["load_average_at_end"] = os.getloadavg()
    save()
    print(json.dumps(results, indent=2))


def _machine(gpu: bool) -> dict[str, object]:
    machine: dict[str, object] = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
    }
    if gpu:
        try:
            machine["gpu"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as exc:
            machine["gpu"] = f"nvidia-smi failed: {exc}"
    return machine


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


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
