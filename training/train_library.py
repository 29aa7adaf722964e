"""Train the LoRA library in one batched run: one LoRA per task, all at once.

    python training/train_library.py --config training/configs/library_smollm2.yaml [key=value ...]
    accelerate launch training/train_library.py --config ...        # a GPU: same recipe, bf16

Every batch mixes tasks and each example runs under its own task's LoRA (``training/lora_bank.py``),
so the cost is the number of examples, not tasks x steps: 192 task LoRAs cost one pass over their
examples instead of 192 PEFT runs.

The plan (which example of which task, in which format, at which step) is a function of the config
alone, so a run stopped at any point resumes exactly (``resume=true``, the default): the run folder
holds the bank, the optimizer and the step (``state/``), written every ``save_every`` steps.

Output: ``<output_dir>/<task>/`` for each task (``/`` in subtask names becomes ``__``), a standard
PEFT folder (``adapter_config.json``, ``adapter_model.safetensors``) plus ``training.json`` (examples
seen, test losses); ``<output_dir>/library.json`` summarises the run. These folders are the
reconstruction targets of meta-training and the oracle baselines of evaluation.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from hypergen.adapters.apply import apply_adapters
from hypergen.adapters.export import CONFIG_NAME, load_peft, save_peft
from hypergen.atomic import atomic_write_text
from hypergen.layout import MULTITASK, library_folder
from hypergen.models import hub_id, load_base_model
from hypergen.targets import find_targets
from training.config import LibraryTrainConfig, load_config, save_config
from training.data import TaskData, load_task_data, shard
from training.formats import tokenize_formatted
from training.lora_bank import LoraBank
from training.objectives import example_losses

logger = logging.getLogger(__name__)

STATE_FILE = "library_state.json"


@dataclass(frozen=True)
class Item:
    """One planned training example: bank row, prompt, completion, text format."""

    task: int
    prompt: str
    completion: str
    fmt: str


def choose_tasks(config: LibraryTrainConfig, data: TaskData) -> list[str]:
    """The tasks that get a LoRA, sorted; a named task must be in the split."""
    if isinstance(config.tasks, list):
        known = set(data.train_tasks) | set(data.heldout_tasks)
        unknown = sorted(set(config.tasks) - known)
        if unknown:
            raise ValueError(f"tasks not in the split: {unknown}")
        tasks = sorted(config.tasks)
    else:
        tasks = {
            "train": data.train_tasks,
            "heldout": data.heldout_tasks,
            "all": data.train_tasks + data.heldout_tasks,
        }[config.tasks]
    tasks = [t for t in sorted(tasks) if data.train_examples.get(t)]
    return tasks[: config.max_tasks] if config.max_tasks else tasks


def make_plan(config: LibraryTrainConfig, data: TaskData, tasks: list[str]) -> list[Item]:
    """Every training example of the run in order: a function of the config alone.

    Each task contributes its first ``examples_per_task`` training examples in a seeded order
    after skipping ``skip_examples`` (a continuation run sees new ones), ``epochs`` times, each
    time in a format drawn from ``formats``; the whole list is shuffled, so every batch mixes
    tasks and every task is seen equally often. ``multitask``: the same plan,
    every example on bank row 0.
    """
    rng = random.Random(f"library:{config.seed}")
    plan = []
    for row, task in enumerate(tasks):
        examples = list(data.train_examples[task])
        random.Random(f"{config.seed}:{task}").shuffle(examples)
        examples = examples[config.skip_examples :]
        if config.examples_per_task:
            examples = examples[: config.examples_per_task]
        for _ in range(config.epochs):
            bank_row = 0 if config.multitask else row
            plan += [
                Item(bank_row, e.prompt, e.completion, rng.choice(config.formats)) for e in examples
            ]
    rng.shuffle(plan)
    return plan


class LibraryTrainer:
    """The recipe: ``setup()``, ``train()``, ``write_library()``, ``report()``."""

    def __init__(self, config: LibraryTrainConfig):
        self.config = config
        self.step = 0
        self.history: list[dict] = []

    def setup(self) -> None:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.accelerator = Accelerator(cpu=cfg.cpu, project_dir=str(cfg.state_dir))
        set_seed(cfg.seed)
        acc = self.accelerator
        self.model, self.tokenizer = load_base_model(cfg.base_model, device=acc.device)
        self.data = load_task_data(cfg.split, cfg.suite_dir)
        self.tasks = choose_tasks(cfg, self.data)
        if not self.tasks:
            raise ValueError("no task with training examples to train a LoRA for")
        self.plan = make_plan(cfg, self.data, self.tasks)
        # the bank's rows: one LoRA per task, or one for all of them
        self.rows = [MULTITASK] if cfg.multitask else self.tasks
        self.total_steps = -(-len(self.plan) // cfg.batch_size)
        self.targets = find_targets(self.model, cfg.target_modules)
        torch.manual_seed(cfg.seed)
        bank = LoraBank(
            self.targets, len(self.rows), cfg.rank, cfg.alpha, shared_init=cfg.shared_init
        ).to(acc.device)
        if cfg.init_from:
            self._init_rows(bank, Path(cfg.init_from))
        optimizer = torch.optim.AdamW(bank.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.bank, self.optimizer = acc.prepare(bank, optimizer)
        logger.info(
            "%d LoRAs for %d tasks (%.1fM parameters), %d examples, %d steps of %d; %d processes on %s",
            len(self.rows),
            len(self.tasks),
            sum(p.numel() for p in bank.parameters()) / 1e6,
            len(self.plan),
            self.total_steps,
            cfg.batch_size,
            acc.num_processes,
            acc.device,
        )
        state = cfg.state_dir / "state"
        if cfg.resume and (state / STATE_FILE).is_file():
            saved = json.loads((state / STATE_FILE).read_text())
            if (
                saved["tasks"] != self.tasks
                or saved.get("rows", self.tasks) != self.rows
                or saved["plan_size"] != len(self.plan)
            ):
                raise ValueError(
                    f"{state} belongs to another library run (other tasks or plan); "
                    "use another run_dir or resume=false"
                )
            acc.load_state(str(state))
            self.step, self.history = saved["step"], saved["history"]
            logger.info("resumed from %s at step %d of %d", state, self.step, self.total_steps)
        if acc.is_main_process:
            save_config(cfg, cfg.state_dir / "config.yaml", header=_header())

    def _init_rows(self, bank: LoraBank, library: Path) -> None:
        """Start each row from ``library``'s LoRA of the same task, where it has one (continuing
        a library on more examples); r, alpha and modules must match."""
        found = 0
        for row, name in enumerate(self.rows):
            folder = library_folder(library, name)
            if not (folder / CONFIG_NAME).is_file():
                continue
            lora, config = load_peft(folder)
            if (
                int(config["r"]) != bank.rank
                or abs(lora.scaling - bank.scaling) > 1e-9
                or set(lora.A) != {t.name for t in self.targets}
            ):
                raise ValueError(
                    f"{folder}: r={config['r']}, alpha={config['lora_alpha']} on "
                    f"{len(lora.A)} modules does not match this library (r={bank.rank}, "
                    f"alpha={bank.alpha}, {len(self.targets)} modules)"
                )
            bank.load_rows(row, lora)
            found += 1
        if not found:
            raise ValueError(f"init_from: {library} has no LoRA for any of this run's tasks")
        logger.info(
            "init_from %s: %d of %d rows start from its LoRAs", library, found, len(self.rows)
        )

    def _batch_items(self, step: int) -> list[Item]:
        size = self.config.batch_size
        items = self.plan[step * size : (step + 1) * size]
        items += self.plan[: size - len(items)]  # the last batch wraps around to stay full
        # sorted by length so micro-batches pad less; the loss is a per-example mean
        return sorted(items, key=lambda it: len(it.prompt) + len(it.completion))

    def losses(
        self, items: list[Item], bank: LoraBank | None, rows: list[int] | None = None
    ) -> torch.Tensor:
        """(b,) completion losses of ``items``, each under bank row ``rows[k]`` (default: its task)."""
        cfg, device = self.config, self.accelerator.device
        batch = tokenize_formatted(
            self.tokenizer,
            [(it.prompt, it.completion, it.fmt) for it in items],
            cfg.max_length,
            end_of_answer=cfg.end_of_answer,
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        autocast = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"
        )
        with autocast:
            if bank is None:
                logits = self.model(**inputs).logits
            else:
                ids = torch.tensor(
                    rows if rows is not None else [it.task for it in items], device=device
                )
                with apply_adapters(self.model, bank(ids)):
                    logits = self.model(**inputs).logits
        return example_losses(logits, batch["labels"])

    def train(self, until: int | None = None) -> None:
        """Train up to step ``until`` (default: the end of the plan, or ``max_steps``), saving
        state as configured."""
        cfg, acc = self.config, self.accelerator
        until = self.total_steps if until is None else min(until, self.total_steps)
        if cfg.max_steps:
            until = min(until, cfg.max_steps)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="library",
            disable=not acc.is_main_process,
        )
        start, first = time.perf_counter(), self.step
        window: list[float] = []
        while self.step < until:
            (items,) = shard(self._batch_items(self.step), 1, acc.num_processes, acc.process_index)
            loss = self.losses(items, self.bank).mean()
            acc.backward(loss)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            window.append(acc.reduce(loss.detach(), "mean").item())
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == self.total_steps:
                elapsed = time.perf_counter() - start
                record = {
                    "step": self.step,
                    "loss": sum(window) / len(window),
                    "s_per_step": elapsed / (self.step - first),
                }
                window = []
                bar.set_postfix(loss=f"{record['loss']:.3f}")
                self._log(record)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step in (
                self.total_steps,
                cfg.max_steps,
            ):
                self.save_state()
        bar.close()

    def save_state(self) -> None:
        acc, cfg = self.accelerator, self.config
        state = cfg.state_dir / "state"
        acc.wait_for_everyone()
        acc.save_state(str(state))
        if acc.is_main_process:
            record = {
                "step": self.step,
                "tasks": self.tasks,
                "rows": self.rows,
                "plan_size": len(self.plan),
                "history": self.history,
            }
            atomic_write_text(state / STATE_FILE, json.dumps(record) + "\n")

    @torch.no_grad()
    def report(self) -> dict[str, dict[str, float]]:
        """Test loss per task: base model, its own LoRA, and the next task's LoRA (a wrong one;
        the multi-task LoRA again in a ``multitask`` run).

        Plain format with the end token, on up to ``eval_examples`` test examples per task.
        """
        cfg, bank = self.config, self.accelerator.unwrap_model(self.bank)
        items = [
            Item(t, e.prompt, e.completion, "plain")
            for t, task in enumerate(self.tasks)
            for e in self.data.test_examples[task][: cfg.eval_examples]
        ]
        sums: dict[int, list[float]] = {row: [0.0, 0.0, 0.0, 0] for row in range(len(self.tasks))}
        for start in tqdm(range(0, len(items), cfg.batch_size), desc="library report", leave=False):
            chunk = items[start : start + cfg.batch_size]
            base = self.losses(chunk, None)
            own = self.losses(chunk, bank, [0 if cfg.multitask else it.task for it in chunk])
            # the next task's LoRA; a multitask run has one LoRA, so "other" is its own again
            other = (
                own
                if cfg.multitask
                else self.losses(chunk, bank, [(it.task + 1) % len(self.tasks) for it in chunk])
            )
            for it, b, o, w in zip(chunk, base.tolist(), own.tolist(), other.tolist()):
                s = sums[it.task]
                s[0], s[1], s[2], s[3] = s[0] + b, s[1] + o, s[2] + w, s[3] + 1
        return {
            self.tasks[row]: {
                "base": s[0] / s[3],
                "own": s[1] / s[3],
                "other": s[2] / s[3],
                "n": s[3],
            }
            for row, s in sums.items()
            if s[3]
        }

    def write_library(self, report: dict[str, dict[str, float]]) -> Path:
        """One PEFT folder per bank row, with its ``training.json``; a per-task library also gets
        ``library.json`` (a ``multitask`` run writes ``_multitask/`` only). Returns the library folder."""
        cfg = self.config
        bank = self.accelerator.unwrap_model(self.bank)
        base_id = hub_id(cfg.base_model)
        seen = [0] * len(self.rows)
        for item in self.plan:
            seen[item.task] += 1
        summary = self._summary(report)
        out = cfg.library_dir
        for row, name in enumerate(tqdm(self.rows, desc="write library", leave=False)):
            folder = library_folder(out, name)
            # overwrite: the library folders are this recipe's own outputs (a rerun replaces them)
            save_peft(
                bank.lora(row),
                self.targets,
                folder,
                base_model_name_or_path=base_id,
                metadata={"hypergen_task": name},
                overwrite=True,
            )
            record = {
                "task": name,
                "trainer": "training/train_library.py (batched bank)",
                "train_examples": seen[row],
                "test_loss": summary["mean_test_loss"] if cfg.multitask else report.get(name),
                "config": asdict(cfg),
            }
            if cfg.multitask:
                record["tasks"] = self.tasks
            (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")
        if not cfg.multitask:
            atomic_write_text(out / "library.json", json.dumps(summary, indent=2) + "\n")
        logger.info("library: %s", json.dumps({k: v for k, v in summary.items() if k != "config"}))
        return out

    def _summary(self, report: dict[str, dict[str, float]]) -> dict:
        own_better = sum(r["own"] < r["other"] for r in report.values())
        return {
            "tasks": len(self.tasks),
            "loras": len(self.rows),
            "steps": self.step,
            "examples": len(self.plan),
            "mean_test_loss": {
                k: sum(r[k] for r in report.values()) / len(report)
                for k in ("base", "own", "other")
            }
            if report
            else None,  # eval_examples=0: no report
            "own_beats_other": f"{own_better}/{len(report)}",
            "seconds_per_step": self.history[-1]["s_per_step"] if self.history else None,
            "config": asdict(self.config),
        }

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.accelerator.is_main_process:
            logger.info(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                )
            )
            with open(self.config.state_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")


def _header() -> str:
    return "Written by training/train_library.py: the exact config of this run."


def main(argv: list[str] | None = None) -> LibraryTrainer:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (see training/configs/library_smollm2.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config entries")
    args = parser.parse_args(argv)
    config = load_config(LibraryTrainConfig, args.config, args.overrides)
    trainer = LibraryTrainer(config)
    trainer.setup()
    trainer.train()
    if trainer.accelerator.is_main_process:
        trainer.write_library(trainer.report())
    trainer.accelerator.end_training()
    return trainer


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    main()
