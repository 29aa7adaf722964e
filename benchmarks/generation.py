"""Adapter-generation speed on SmolLM2 targets, encoder included.

    python benchmarks/generation.py [--checkpoint DIR] [--threads 2]

Prints latency (p50/p95, one description) and throughput (adapters/s at batch 1, 16, 64), and,
as the baseline this project replaces, the time of PEFT LoRA fine-tuning steps on the same model
measured in the same process (extrapolated to 100 steps).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from hypergen.conditions.text import TextConditioner
from hypergen.config import EncoderConfig, HyperNetConfig
from hypergen.data.text_batches import tokenize_pairs
from hypergen.generator import AdapterGenerator
from hypergen.models import load_base_model

WORDS = [
    "answer",
    "classify",
    "translate",
    "dates",
    "sentiment",
    "arithmetic",
    "riddles",
    "logic",
    "names",
    "sports",
    "french",
    "code",
]


def descriptions(n: int, offset: int) -> list[str]:
    """Distinct, realistic-length descriptions (nothing is cached between calls)."""
    return [
        f"Task {offset + i}: {WORDS[(offset + i) % len(WORDS)]} the input and {WORDS[i % 7]} "
        f"the question about {WORDS[(i * 3) % len(WORDS)]}, answering with one short phrase."
        for i in range(n)
    ]


def time_generate(
    generator: AdapterGenerator,
    batch: int,
    repeats: int,
    offset: int = 0,
    dtype: torch.dtype | None = None,
) -> list[float]:
    times = []
    for r in range(repeats):
        texts = descriptions(batch, offset + r * batch)
        start = time.perf_counter()
        lora = generator.generate(texts, autocast_dtype=dtype)
        _ = [b.sum() for b in lora.B.values()]  # materialise every output
        times.append(time.perf_counter() - start)
    return times


def time_lora_steps(model, tokenizer, steps: int = 5, batch: int = 8) -> float:
    """Seconds per PEFT LoRA training step (r=8, q_proj/v_proj, batch 8 x ~64 tokens)."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    )
    optim = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)
    prompts = [f"Q: {d}\nA:" for d in descriptions(batch, 0)]
    data = tokenize_pairs(tokenizer, prompts, [" yes"] * batch, max_length=64)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = peft_model(**data).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        times.append(time.perf_counter() - start)
    peft_model.unload()
    return statistics.median(times[1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--checkpoint", help="hypernetwork checkpoint (default: fresh default-sized network)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model, tokenizer = load_base_model("smollm2-135m")
    conditioner = TextConditioner()
    if args.checkpoint:
        generator = AdapterGenerator.from_pretrained(
            args.checkpoint, conditioner=conditioner, base_model=model
        )
    else:
        generator = AdapterGenerator.create(
            model, "smollm2-135m", conditioner, EncoderConfig(), HyperNetConfig()
        )
    hypernet = generator.hypernet
    print(
        f"hypernetwork: {hypernet.num_parameters() / 1e6:.2f}M parameters, "
        f"{len(generator.targets)} target modules, rank {hypernet.config.lora.rank}, {args.threads} threads"
    )

    enc = []
    for r in range(args.repeats):
        start = time.perf_counter()
        conditioner.encode(descriptions(1, 20_000 + r))
        enc.append((time.perf_counter() - start) * 1000)
    print(f"encoder alone, one description: p50 {statistics.median(enc):.1f} ms (float32)")

    print(
        "\n| precision | p50 ms (1 desc) | p95 ms | adapters/s @1 | @16 | @64 |\n|---|---:|---:|---:|---:|---:|"
    )
    results = {}
    for label, dtype in (("float32", None), ("bf16 autocast", torch.bfloat16)):
        time_generate(generator, 64, 2, offset=10_000, dtype=dtype)  # warm-up
        single_ms = sorted(t * 1000 for t in time_generate(generator, 1, args.repeats, dtype=dtype))
        p50, p95 = statistics.median(single_ms), single_ms[int(0.95 * (len(single_ms) - 1))]
        rates = {}
        for batch in (1, 16, 64):
            repeats = max(3, args.repeats // max(1, batch // 4))
            rates[batch] = batch / statistics.median(
                time_generate(generator, batch, repeats, 30_000, dtype)
            )
        results[label] = (p50, rates[64])
        print(
            f"| {label} | {p50:.1f} | {p95:.1f} | {rates[1]:.0f} | {rates[16]:.0f} | {rates[64]:.0f} |"
        )

    step = time_lora_steps(model, tokenizer)
    print(
        f"\nbaseline, PEFT LoRA fine-tuning (r=8, batch 8 x 64 tokens): {step:.2f} s/step "
        f"-> 100 steps ~ {100 * step:.0f} s per adapter"
    )
    for label, (p50, rate64) in results.items():
        print(
            f"{label}: one adapter (p50) is {100 * step / (p50 / 1000):,.0f}x faster than 100 fine-tuning "
            f"steps; targets p50 < 25 ms {'met' if p50 < 25 else 'MISSED'}, "
            f">= 500 adapters/s at batch 64 {'met' if rate64 >= 500 else 'MISSED'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
