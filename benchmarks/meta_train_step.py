"""Cost of one SFT meta-training step against a plain PEFT LoRA step, on the same batches.

    python benchmarks/meta_train_step.py [--model smollm2-135m] [--batch 8] [--steps 10] [--threads 2]

(a) meta-train step: hypernetwork forward (batch of condition vectors -> one LoRA per example),
    frozen LM forward/backward through the per-example hooks, AdamW step on the hypernetwork;
(b) LoRA step: the same LM wrapped by ``peft.get_peft_model`` (same r, alpha, targets),
    forward/backward, AdamW step on the LoRA parameters.

Both see the same token batches (BIG-bench training examples when the data and split exist,
otherwise fixed synthetic text) and run interleaved, a then b, so load from other processes hits
both alike; the ratio of medians is the figure of merit (target: <= 1.3). Condition vectors are
random unit vectors: meta-training precomputes them once, so the encoder is not part of a step.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from hypergen.adapters.apply import apply_adapters
from hypergen.config import HyperNetConfig, LoraSpec
from hypergen.data.text_batches import tokenize_pairs
from hypergen.hypernet import HyperNetwork
from hypergen.layout import suite_dir
from hypergen.models import load_base_model
from hypergen.targets import find_targets
from training.objectives import example_losses


def batches(
    split: Path, suite: Path, batch: int, count: int, seed: int = 0
) -> list[tuple[list[str], list[str]]]:
    """``count`` (prompts, completions) batches mixing training tasks, or synthetic ones."""
    if split.is_file() and suite.is_dir():
        from training.data import MixtureSampler, load_task_data

        data = load_task_data(split, suite)
        sampler = MixtureSampler({t: data.train_examples[t] for t in data.train_tasks}, seed=seed)
        out = []
        for step in range(count):
            samples = sampler.batch(step, batch)
            out.append(([s.prompt for s in samples], [s.completion for s in samples]))
        return out
    rng = random.Random(seed)
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "two",
        "dogs",
        "ran",
        "past",
        "the",
        "old",
        "red",
        "barn",
        "near",
        "water",
    ]
    return [
        (
            [
                "Q: " + " ".join(rng.choices(words, k=rng.randint(20, 60))) + "\nA:"
                for _ in range(batch)
            ],
            [" " + " ".join(rng.choices(words, k=rng.randint(1, 5))) for _ in range(batch)],
        )
        for _ in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=10, help="timed steps of each kind (after 2 warm-up steps)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="autocast both steps to bfloat16")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--split", default="evaluation/splits/bigbench.yaml")
    parser.add_argument("--data-dir", default=str(suite_dir()))
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    spec = LoraSpec(rank=8, alpha=16.0, target_modules=["q_proj", "v_proj"])
    model, tokenizer = load_base_model(args.model)
    hypernet = HyperNetwork(
        HyperNetConfig(lora=spec), find_targets(model, spec.target_modules)
    ).train()
    meta_opt = torch.optim.AdamW(hypernet.parameters(), lr=1e-3)
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(
            r=spec.rank, lora_alpha=spec.alpha, target_modules=spec.target_modules, lora_dropout=0.0
        ),
    )
    peft_model.train()
    lora_opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3)

    data = batches(Path(args.split), Path(args.data_dir), args.batch, args.steps + 2)
    tokenized = [tokenize_pairs(tokenizer, p, c, args.max_length) for p, c in data]
    conditions = torch.nn.functional.normalize(torch.randn(args.batch, 384), dim=1)

    def meta_step(batch):
        lora = hypernet(conditions)
        with (
            apply_adapters(model, lora),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16),
        ):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        example_losses(logits, batch["labels"]).mean().backward()
        meta_opt.step()
        meta_opt.zero_grad(set_to_none=True)

    def lora_step(batch):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            logits = peft_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        example_losses(logits, batch["labels"]).mean().backward()
        lora_opt.step()
        lora_opt.zero_grad(set_to_none=True)

    times: dict[str, list[float]] = {"meta": [], "lora": []}
    for i, batch in enumerate(tokenized):
        for name, step in (("meta", meta_step), ("lora", lora_step)):
            start = time.perf_counter()
            step(batch)
            if i >= 2:  # warm-up
                times[name].append(time.perf_counter() - start)

    meta, lora = statistics.median(times["meta"]), statistics.median(times["lora"])
    tokens = statistics.mean(int(b["attention_mask"].sum()) for b in tokenized)
    result = {
        "model": args.model,
        "batch": args.batch,
        "mean_tokens_per_batch": round(tokens),
        "threads": args.threads,
        "bf16": args.bf16,
        "steps": args.steps,
        "data": "bigbench" if Path(args.split).is_file() else "synthetic",
        "meta_s_per_step": round(meta, 4),
        "lora_s_per_step": round(lora, 4),
        "meta_samples_per_s": round(args.batch / meta, 2),
        "lora_samples_per_s": round(args.batch / lora, 2),
        "ratio_meta_over_lora": round(meta / lora, 3),
        "hypernet_params": hypernet.num_parameters(),
    }
    print(f"{'step':<12}{'s/step':>10}{'samples/s':>12}")
    print(f"{'meta-train':<12}{meta:>10.3f}{args.batch / meta:>12.2f}")
    print(f"{'PEFT LoRA':<12}{lora:>10.3f}{args.batch / lora:>12.2f}")
    print(f"ratio meta/LoRA: {meta / lora:.3f} (target <= 1.3)")
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
