"""Accuracy and speed of the embedding router on a real sentence encoder.

Accuracy: every labelled user turn of ``tests/data/routing_set.yaml`` is one
decision. The router sees the conversation up to that turn, sent as a client
would send it (an OpenAI chat completions body) and selected by the same rules
as every preference-router backend. Reported for the held-out ``test`` split
(``--split dev`` shows the tuning split), twice: with the routes' descriptions
alone and with three ``examples`` per route.

Speed: decision latency for a three-turn conversation (user, assistant, user),
one request at a time and 16 at a time, for two kinds: a latest user turn that
stands alone (one encoder call) and a follow-up that the router reads with the
turn before it (two calls). Every conversation is new to the router (the turn
cache is off), so each decision pays for its encoder calls; the follow-up is
also timed with its first turn cached, as when a client resends its history.

    python bench/embedding_router_bench.py --model DIR           # accuracy + speed
    python bench/embedding_router_bench.py --model DIR --tune    # grid-search on dev

DIR is a converted encoder (``archway router convert --encoder``). Needs the
``router`` extra and PyYAML; no torch, no network.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_proc.apis import WireAPI  # noqa: E402
from ext_proc.router import ROUTE_OTHER, Route, Turn  # noqa: E402
from ext_proc.router.conversation import select_conversation  # noqa: E402
from ext_proc.router.embedding import DecisionRule, EmbeddingRouter, SentenceEncoder  # noqa: E402

DATA = ROOT / "tests" / "data" / "routing_set.yaml"


@dataclass(frozen=True)
class Case:
    conversation_id: str
    messages: tuple[dict[str, str], ...]
    label: str


@dataclass(frozen=True)
class Score:
    accuracy: float
    other_precision: float
    other_recall: float
    n: int
    misses: tuple[str, ...]


def load_set(split: str) -> tuple[list[Route], list[Case]]:
    data = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    routes = [
        Route(r["name"], r["description"], tuple(r.get("examples", ()))) for r in data["routes"]
    ]
    cases: list[Case] = []
    for conversation in data["conversations"]:
        if conversation["split"] != split:
            continue
        messages: list[dict[str, str]] = []
        for turn in conversation["turns"]:
            role = "user" if "user" in turn else "assistant"
            messages.append({"role": role, "content": turn[role]})
            if "route" in turn:
                cases.append(Case(conversation["id"], tuple(messages), turn["route"]))
    return routes, cases


def conversation_of(router: EmbeddingRouter, case: Case) -> tuple[Turn, ...]:
    body: dict[str, Any] = {"messages": list(case.messages)}
    return select_conversation(body, WireAPI.OPENAI, count_tokens=router.count_tokens)


async def evaluate(router: EmbeddingRouter, cases: Sequence[Case]) -> Score:
    right = true_other = false_other = missed_other = 0
    misses: list[str] = []
    for case in cases:
        choice = await router.choose(conversation_of(router, case))
        predicted = choice.route
        right += predicted == case.label
        if predicted == ROUTE_OTHER:
            if case.label == ROUTE_OTHER:
                true_other += 1
            else:
                false_other += 1
        elif case.label == ROUTE_OTHER:
            missed_other += 1
        if predicted != case.label:
            last = case.messages[-1]["content"]
            misses.append(f"{case.conversation_id}: {case.label} -> {predicted}: {last[:60]!r}")
    return Score(
        accuracy=right / len(cases),
        other_precision=true_other / max(true_other + false_other, 1),
        other_recall=true_other / max(true_other + missed_other, 1),
        n=len(cases),
        misses=tuple(misses),
    )


def with_rule(router: EmbeddingRouter, rule: DecisionRule) -> None:
    router.rule = rule
    router.index.rule = rule


def routers(
    encoder: SentenceEncoder, routes: Sequence[Route], rule: DecisionRule, cache_size: int = 0
) -> dict[str, EmbeddingRouter]:
    bare = [dataclasses.replace(r, examples=()) for r in routes]
    return {
        "descriptions alone": EmbeddingRouter(encoder, bare, rule=rule, cache_size=cache_size),
        "with 3 examples per route": EmbeddingRouter(
            encoder, routes, rule=rule, cache_size=cache_size
        ),
    }


async def accuracy(args: argparse.Namespace, encoder: SentenceEncoder) -> dict[str, Any]:
    routes, cases = load_set(args.split)
    out: dict[str, Any] = {}
    for name, router in routers(encoder, routes, DecisionRule()).items():
        score = await evaluate(router, cases)
        await router.close()
        out[name] = score
        print(
            f"{args.split} split, {name}: accuracy {score.accuracy:.1%} ({score.n} turns), "
            f"other precision {score.other_precision:.1%}, recall {score.other_recall:.1%}"
        )
        if args.verbose:
            for miss in score.misses:
                print(f"    miss {miss}")
    return out


async def tune(encoder: SentenceEncoder) -> None:
    """Grid-search the decision rule on the dev split only."""
    routes, cases = load_set("dev")
    # The turns are the same at every grid point: encode them once.
    both = routers(encoder, routes, DecisionRule(), cache_size=100_000)
    results = []
    grid = itertools.product(
        (0.0, 0.05, 0.1),  # threshold
        (0.05, 0.1, 0.15),  # margin
        (0.0, 0.1, 0.3, 0.5),  # classifier_weight
        (0.0, 0.2, math.inf),  # context_margin
    )
    for threshold, margin, classifier, context in grid:
        rule = DecisionRule(
            threshold=threshold,
            margin=margin,
            classifier_weight=classifier,
            context_margin=context,
        )
        scores = []
        for router in both.values():
            with_rule(router, rule)
            scores.append((await evaluate(router, cases)).accuracy)
        results.append((sum(scores) / 2, scores, rule))
    results.sort(key=lambda r: -r[0])
    for mean, scores, rule in results[:10]:
        print(f"dev mean {mean:.1%} (alone {scores[0]:.1%}, examples {scores[1]:.1%}): {rule}")


def standalone(i: int) -> dict[str, Any]:
    """Three turns whose latest user turn is clear on its own (a topic shift)."""
    # A number in every turn makes each conversation new to the router.
    return {
        "messages": [
            {
                "role": "user",
                "content": f"Can you explain what this function does? "
                f"def f{i}(x): return x[::-{i % 3 + 1}]",
            },
            {"role": "assistant", "content": f"It returns every {i % 3 + 1}th item, reversed."},
            {
                "role": "user",
                "content": f"Now write a story about robot number {i} who reverses time.",
            },
        ]
    }


def follow_up(i: int) -> dict[str, Any]:
    """Three turns whose latest user turn leans on the one before it. Whether the
    router reads the earlier turn depends on how close a call the latest is, so
    the timing forces it (``context_margin`` infinite): the two-call path."""
    return {
        "messages": [
            {
                "role": "user",
                "content": f"Write a Python function that parses log line number {i} "
                "into a timestamp, a level and a message.",
            },
            {"role": "assistant", "content": "def parse(line): ..."},
            {"role": "user", "content": f"Make version {i} of it faster?"},
        ]
    }


CONVERSATIONS = {"standalone": standalone, "follow-up": follow_up}


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def speed(
    encoder: SentenceEncoder, rounds: int, kind: str, *, warm: bool = False
) -> dict[str, float]:
    """Decision latency for ``kind`` of three-turn conversation, alone and 16 at a
    time. Every conversation is new to the router; with ``warm``, its first user
    turn was routed before (as when a client resends its history to the same
    worker), so a history read finds it cached."""
    make = CONVERSATIONS[kind]
    routes, _ = load_set("test")
    rule = DecisionRule(context_margin=math.inf) if kind == "follow-up" else DecisionRule()
    router = EmbeddingRouter(encoder, routes, rule=rule, cache_size=100_000 if warm else 0)

    def conversation(body: dict[str, Any]) -> tuple[Turn, ...]:
        return select_conversation(body, WireAPI.OPENAI, count_tokens=router.count_tokens)

    async def first_turn(i: int) -> None:
        await router.choose(conversation({"messages": make(i)["messages"][:1]}))

    async def decide(i: int, *, prime: bool = True) -> float:
        if warm and prime:
            await first_turn(i)
        started = time.perf_counter()
        await router.choose(conversation(make(i)))
        return time.perf_counter() - started

    for i in range(20):  # warm-up: thread start, first allocations
        await decide(-1 - i)
    calls_before = len(router.batcher.batch_sizes)
    alone = [await decide(i) for i in range(rounds)]
    calls = len(router.batcher.batch_sizes) - calls_before - (rounds if warm else 0)
    concurrent: list[float] = []
    elapsed = 0.0
    batches: list[int] = []
    for r in range(rounds // 4):
        ids = [10_000 + r * 16 + k for k in range(16)]
        if warm:
            await asyncio.gather(*(first_turn(i) for i in ids))
        before = len(router.batcher.batch_sizes)
        started = time.perf_counter()
        concurrent += await asyncio.gather(*(decide(i, prime=False) for i in ids))
        elapsed += time.perf_counter() - started
        batches += router.batcher.batch_sizes[before:]
    await router.close()
    out = {
        "alone_p50_ms": statistics.median(alone) * 1000,
        "alone_p99_ms": percentile(alone, 0.99) * 1000,
        "alone_encoder_calls_per_decision": calls / rounds,
        "concurrent_p50_ms": statistics.median(concurrent) * 1000,
        "concurrent_p99_ms": percentile(concurrent, 0.99) * 1000,
        "concurrent_decisions_per_s": len(concurrent) / elapsed,
        "mean_batch": statistics.mean(batches),
    }
    label = f"{kind}, {'history cached' if warm else 'every turn new'}"
    print(
        f"[{label}] alone ({rounds} decisions, {out['alone_encoder_calls_per_decision']:.1f} "
        f"encoder calls each): p50 {out['alone_p50_ms']:.2f} ms, "
        f"p99 {out['alone_p99_ms']:.2f} ms"
    )
    print(
        f"[{label}] 16 concurrent ({len(concurrent)} decisions): "
        f"p50 {out['concurrent_p50_ms']:.2f} ms, "
        f"p99 {out['concurrent_p99_ms']:.2f} ms, {out['concurrent_decisions_per_s']:.0f} "
        f"decisions/s (mean batch {out['mean_batch']:.1f} encoder inputs)"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="converted encoder directory")
    parser.add_argument("--split", default="test", choices=("test", "dev"))
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 intra_threads")
    parser.add_argument("--compute-type", default="auto")
    parser.add_argument("--rounds", type=int, default=400, help="decisions timed alone")
    parser.add_argument("--tune", action="store_true", help="grid-search the rule on dev")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="list the misses")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    encoder = SentenceEncoder.load(
        args.model, compute_type=args.compute_type, intra_threads=args.threads
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible, "
        f"{len(os.sched_getaffinity(0))} usable; intra_threads={args.threads}, "
        f"compute_type={encoder._encoder.compute_type}; load average {os.getloadavg()[0]:.2f}"
    )
    if args.tune:
        asyncio.run(tune(encoder))
        return
    figures: dict[str, Any] = {}
    if not args.no_accuracy:
        scores = asyncio.run(accuracy(args, encoder))
        figures["accuracy"] = {k: dataclasses.asdict(v) for k, v in scores.items()}
    if not args.no_speed:
        for kind in CONVERSATIONS:
            figures[f"speed_{kind}"] = asyncio.run(speed(encoder, args.rounds, kind))
        figures["speed_follow-up_cached"] = asyncio.run(
            speed(encoder, args.rounds, "follow-up", warm=True)
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
