"""Train the LoRA library with PEFT: one LoRA per task (the oracle) and one on all training tasks.

    python training/train_lora.py --config training/configs/loras_smollm2.yaml [key=value ...]

Writes standard PEFT folders ``<output_dir>/<task>/`` (``/`` in subtask names becomes ``__``) and
``<output_dir>/_multitask/``, each with ``adapter_config.json``, ``adapter_model.safetensors`` and
``training.json`` (steps, examples, final loss). They are the reconstruction targets of
meta-training and the "oracle" / "multi-task LoRA" baselines of evaluation; they read back with
``hypergen.adapters.export.load_peft`` or ``peft.PeftModel.from_pretrained``.

Each LoRA trains on its tasks' split train part only (the test part stays unseen), with the same
loss as meta-training: per-example mean completion cross-entropy, averaged over the batch.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tqdm import tqdm

from hypergen.data.text_batches import tokenize_pairs
from hypergen.layout import MULTITASK, library_folder
from hypergen.models import load_base_model
from training.config import LoraTrainConfig, load_config
from training.data import MixtureSampler, TaskData, load_task_data
from training.objectives import example_losses

logger = logging.getLogger(__name__)


def train_lora(
    config: LoraTrainConfig,
    examples: dict[str, list],
    steps: int,
    out_dir: Path,
    seed: int,
) -> dict:
    """Train one fresh PEFT LoRA on ``examples`` (task -> examples, mixed uniformly) and save it."""
    model, tokenizer = load_base_model(config.base_model)
    torch.manual_seed(seed)
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        target_modules=config.target_modules,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_config)
    device = next(model.parameters()).device
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sampler = MixtureSampler(examples, seed=seed)
    losses, start = [], time.perf_counter()
    for step in tqdm(range(steps), desc=out_dir.name, leave=False):
        samples = sampler.batch(step, config.batch_size)
        batch = tokenize_pairs(
            tokenizer,
            [s.prompt for s in samples],
            [s.completion for s in samples],
            config.max_length,
        )
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        loss = example_losses(logits, batch["labels"]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    record = {
        "tasks": sorted(examples),
        "train_examples": sum(len(v) for v in examples.values()),
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 1),
        "first_loss": round(sum(losses[:10]) / len(losses[:10]), 4),
        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        "config": asdict(config),
    }
    model.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def setup(config: LoraTrainConfig) -> tuple[TaskData, list[str]]:
    """Load the split's tasks and decide which get a per-task LoRA."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    data = load_task_data(config.split, config.suite_dir)
    chosen = {
        "heldout": data.heldout_tasks,
        "train": data.train_tasks,
        "all": data.train_tasks + data.heldout_tasks,
        "none": [],
    }[config.per_task]
    if config.tasks:
        known = set(data.train_tasks) | set(data.heldout_tasks)
        unknown = sorted(set(config.tasks) - known)
        if unknown:
            raise ValueError(f"tasks not in the split: {unknown}")
        chosen = list(config.tasks)
    return data, chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (see training/configs/loras_smollm2.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config entries")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(LoraTrainConfig, args.config, args.overrides)
    data, per_task = setup(config)
    library = config.library_dir
    jobs = [(task, {task: data.train_examples[task]}, config.steps) for task in per_task]
    if config.multitask:
        jobs.append(
            (
                MULTITASK,
                {t: data.train_examples[t] for t in data.train_tasks},
                config.multitask_steps,
            )
        )
    logger.info("training %d LoRAs into %s", len(jobs), library)
    for index, (name, examples, steps) in enumerate(jobs):
        out_dir = library_folder(library, name)
        if config.skip_existing and (out_dir / "training.json").is_file():
            logger.info("[%d/%d] %s: exists, skipped", index + 1, len(jobs), name)
            continue
        if not any(examples.values()):
            logger.warning("[%d/%d] %s: no training examples, skipped", index + 1, len(jobs), name)
            continue
        record = train_lora(config, examples, steps, out_dir, seed=config.seed)
        logger.info(
            "[%d/%d] %s: %d steps in %.0f s, loss %.3f -> %.3f",
            index + 1,
            len(jobs),
            name,
            steps,
            record["seconds"],
            record["first_loss"],
            record["final_loss"],
        )


if __name__ == "__main__":
    main()
