"""Meta-train the hypernetwork: task descriptions -> LoRAs that help the frozen LM on that task.

    python training/meta_train.py --config training/configs/tiny.yaml [key=value ...]
    accelerate launch training/meta_train.py --config training/configs/smollm2.yaml
    accelerate launch --config_file training/accelerate/multi_gpu.yaml \\
        training/meta_train.py --config training/configs/smollm2.yaml

Objectives (``objective``):
    sft             completion-only cross-entropy through the frozen LM, each example carrying the
                    LoRA generated from one of its task's descriptions (per-example hooks);
    reconstruction  relative squared error of each generated delta W against the task's LoRA in
                    the library (``train_lora.py``); see ``training/objectives.py`` for why delta W;
    both            per-sample weighted sum (samples of tasks without a library LoRA get SFT only);
    distill         context distillation: the LM with the generated adapter should predict each
                    answer token as the bare LM with the description in its prompt does
                    (``distill_weight`` adds the same term to ``sft`` or ``both``).

Each step's global batch is a function of ``(seed, step)`` (``training/data.py``) and every
process trains on its own slice with a per-example mean loss, so 1 process and N processes take
the same steps (``tests/test_ddp.py``), and a resumed run continues the same sequence.

Run folder (``output_dir``, default ``$HYPERGEN_HOME/runs/<name>``): ``config.yaml``,
``log.jsonl``, ``state/`` (accelerate state: weights, optimizer, schedule, RNG, step),
``checkpoints/step-N/`` and ``final/`` (hypergen checkpoints, each with its ``config.yaml``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from tqdm import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_with_min_lr_schedule_with_warmup,
)

from hypergen.adapters.apply import apply_adapters
from hypergen.adapters.export import load_peft
from hypergen.adapters.lora import LoraWeights
from hypergen.adapters.lora_geometry import cosine_matrix
from hypergen.atomic import atomic_write_text
from hypergen.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hypergen.conditions.registry import build_conditioner
from hypergen.config import (
    COMPOSITE_KIND,
    DTYPES,
    BottleneckSpec,
    EncoderConfig,
    HyperNetConfig,
    LoraSpec,
)
from hypergen.data.descriptions import describe_prefix
from hypergen.data.task_languages import TaskLanguages
from hypergen.generator import AdapterGenerator
from hypergen.layout import MULTITASK, library_folder
from hypergen.models import load_base_model
from hypergen.targets import AdapterTarget
from training.chat_replies import load_chat_examples
from training.config import MetaTrainConfig, load_config, save_config
from training.data import (
    MixtureSampler,
    Sample,
    TaskData,
    conditions_for,
    load_task_data,
    shard,
)
from training.documents import document_task_data, with_demonstrations
from training.formats import tokenize_formatted
from training.objectives import (
    contrastive_losses,
    delta_w_loss,
    distill_losses,
    example_losses,
    other_task_rows,
)

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
MIN_LR_RATE = 0.1  # the cosine schedule ends at this fraction of the peak learning rate


class MetaTrainer:
    """The recipe: ``setup()``, ``train()``, ``save_checkpoint()``, ``cleanup()``."""

    def __init__(self, config: MetaTrainConfig):
        self.config = config
        self.run_dir = config.run_dir
        self.step = 0
        self.history: list[dict] = []

    # --- setup -----------------------------------------------------------------------------

    def setup(self) -> None:
        """Build everything in dependency order; each step is a method below."""
        self._setup_accelerator()
        self._setup_model()
        # 2. Tasks, examples and their condition rows (description phrasings, or documents, or
        # demonstration sets: training/documents.py).
        self.data = self._load_data()
        conditioner, encoder = self._setup_conditions()
        hypernet = self._setup_hypernet(conditioner, encoder)
        del conditioner  # the condition table is built; the encoder's memory can go
        pool = self._setup_library_and_sampler(hypernet)
        self._setup_optimizer(hypernet)
        self._log_sizes(hypernet, pool)
        self._setup_eval_items()
        self._resume_or_start()

    def _setup_accelerator(self) -> None:
        cfg = self.config
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        # split_batches: we slice each global batch ourselves, so the schedule must step once per
        # optimizer step (without it accelerate steps it num_processes times).
        self.accelerator = Accelerator(
            cpu=cfg.cpu,
            gradient_accumulation_steps=cfg.grad_accum,
            log_with=cfg.log_with or None,
            project_dir=str(self.run_dir),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
        )
        acc = self.accelerator
        per_process, rest = divmod(cfg.batch_size, cfg.grad_accum * acc.num_processes)
        if rest or not per_process:
            raise ValueError(
                f"batch_size {cfg.batch_size} must be a multiple of grad_accum x processes "
                f"({cfg.grad_accum} x {acc.num_processes})"
            )
        set_seed(cfg.seed)

    def _setup_model(self) -> None:
        """1. The frozen LM: moved to the device, never wrapped (it has no gradients to reduce)."""
        device = self.accelerator.device
        self.model, self.tokenizer = load_base_model(self.config.base_model, device=device)
        assert not any(p.requires_grad for p in self.model.parameters()), (
            "the base LM must be frozen"
        )

    def _load_data(self) -> TaskData:
        cfg = self.config
        if cfg.condition == "document":
            return document_task_data(cfg.documents, cfg.heldout_documents, seed=cfg.seed)
        data = load_task_data(cfg.split, cfg.suite_dir, cfg.max_train_tasks)
        if cfg.condition == "demonstrations":
            data = with_demonstrations(
                data, cfg.demonstrations, cfg.demonstration_sets, seed=cfg.seed
            )
        return data

    def _setup_conditions(self):
        """3. Condition vectors of every phrasing, once: the encoder is frozen, so this is exact,
        and every process holds the same table. With ``language_features`` a row is the
        phrasing and its task's language (``training/languages.py``)."""
        cfg = self.config
        encoder = EncoderConfig(kind=cfg.encoder_kind, name=cfg.encoder_name)
        if cfg.condition != "description":  # the sentence encoder behind the document path
            kind = {"document": "document", "demonstrations": "demonstrations"}[cfg.condition]
            encoder = EncoderConfig(kind=kind, name=cfg.encoder_name)
        conditions: list = list(self.data.phrasings)
        if cfg.language_features:
            encoder = EncoderConfig(
                kind=COMPOSITE_KIND,
                parts={
                    "description": encoder,
                    "language": EncoderConfig(kind="language", name=cfg.language_features),
                },
            )
            languages = TaskLanguages.load(cfg.task_languages)
            conditions = [
                {"description": text, "language": languages.primary(task)}
                for text, task in zip(self.data.phrasings, self.data.phrasing_tasks)
            ]
            logger.info(
                "task languages from %s: %s",
                cfg.task_languages,
                Counter(
                    languages.primary(t) for t in self.data.train_tasks + self.data.heldout_tasks
                ).most_common(),
            )
        conditioner = build_conditioner(encoder)
        with torch.no_grad():
            chunks = [conditions[i : i + 64] for i in range(0, len(conditions), 64)]
            self.conditions = torch.cat([conditioner.encode(c).cpu() for c in chunks]).to(
                self.accelerator.device
            )
        return conditioner, encoder

    def _setup_hypernet(self, conditioner, encoder: EncoderConfig):
        """4. The hypernetwork (the only trainable module), built identically on every process."""
        cfg = self.config
        hypernet_config = HyperNetConfig(
            hidden_dim=cfg.hidden_dim,
            num_blocks=cfg.num_blocks,
            dropout=cfg.dropout,
            adapter_kind=cfg.adapter_kind,
            lora=LoraSpec(rank=cfg.rank, alpha=cfg.alpha, target_modules=cfg.target_modules),
            bottleneck=BottleneckSpec(cfg.bottleneck_size, cfg.placement, cfg.non_linearity),
        )
        generator = AdapterGenerator.create(
            self.model, cfg.base_model, conditioner, encoder, hypernet_config, seed=cfg.seed
        )
        self.meta: CheckpointMeta = generator.meta
        hypernet = generator.hypernet
        if cfg.init_checkpoint:
            # e.g. a reconstruction run's checkpoint: SFT then starts from task-specific adapters
            start, _ = load_checkpoint(cfg.init_checkpoint, targets=hypernet.targets)
            if _shape(start.config) != _shape(hypernet.config):
                raise ValueError(
                    f"init_from {cfg.init_from}: hypernetwork shape differs from this config"
                )
            hypernet.load_state_dict(start.state_dict())
            logger.info("hypernetwork initialised from %s", cfg.init_checkpoint)
        return hypernet.to(self.accelerator.device).train()

    def _setup_library_and_sampler(self, hypernet) -> list[str]:
        """5. The LoRA library (reconstruction targets and final baselines) and the sampler over
        the training tasks it allows; returns that task pool."""
        cfg = self.config
        self.library = self._load_library(
            self.data.train_tasks + self.data.heldout_tasks + [MULTITASK], hypernet.targets
        )
        pool = self.data.train_tasks
        if cfg.objective == "reconstruction":
            pool = [t for t in pool if t in self.library]
            if not pool:
                raise ValueError(
                    f"objective=reconstruction but no training task has a LoRA in {cfg.library_dir}"
                )
        elif cfg.objective == "both" and not any(t in self.library for t in pool):
            logger.warning(
                "objective=both but no training task has a LoRA in %s: SFT only", cfg.library_dir
            )
        chat_examples = None
        if cfg.chat_replies_file and "chat" in cfg.formats:
            chat_examples = load_chat_examples(cfg.chat_replies_file, pool)
            logger.info(
                "chat replies for %d of %d tasks from %s",
                len(chat_examples),
                len(pool),
                cfg.chat_replies_file,
            )
        self.sampler = MixtureSampler(
            {t: self.data.train_examples[t] for t in pool},
            self.data.train_phrasings,
            seed=cfg.seed,
            formats=cfg.formats,
            chat_examples=chat_examples,
        )
        return pool

    def _setup_optimizer(self, hypernet) -> None:
        """6. Optimizer (heads and trunk may take different rates) and schedule, then accelerate
        wraps the trainable parts only."""
        cfg = self.config
        heads = [p for n, p in hypernet.named_parameters() if n.startswith("heads.")]
        trunk = [p for n, p in hypernet.named_parameters() if not n.startswith("heads.")]
        optimizer = torch.optim.AdamW(
            [{"params": trunk}, {"params": heads, "lr": cfg.head_lr or cfg.lr}],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        scheduler = lr_schedule(optimizer, cfg)
        self.hypernet, self.optimizer, self.scheduler = self.accelerator.prepare(
            hypernet, optimizer, scheduler
        )

    def _log_sizes(self, hypernet, pool: list[str]) -> None:
        trainable = sum(p.numel() for p in hypernet.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "trainable: hypernetwork %.2fM parameters; frozen: LM %.1fM; %d processes on %s",
            trainable / 1e6,
            frozen / 1e6,
            self.accelerator.num_processes,
            self.accelerator.device,
        )
        logger.info(
            "%d training tasks (%d in the sampling pool, %d with library LoRAs), %d held-out tasks, "
            "%d phrasings; objective %s",
            len(self.data.train_tasks),
            len(pool),
            sum(t in self.library for t in self.data.train_tasks),
            len(self.data.heldout_tasks),
            len(self.data.phrasings),
            self.config.objective,
        )

    def _setup_eval_items(self) -> None:
        """7. Held-out evaluation set: the first test examples of each held-out task, with the
        task file's own description."""
        self.eval_items = [
            Sample(task, self.data.eval_phrasing[task], ex.prompt, ex.completion)
            for task in self.data.heldout_tasks
            for ex in self.data.test_examples[task][: self.config.eval_examples]
        ]

    def _resume_or_start(self) -> None:
        """8. Resume, or start a fresh run folder; then the base model's held-out loss."""
        cfg, acc = self.config, self.accelerator
        state_dir = self.run_dir / "state"
        if cfg.resume and (state_dir / STATE_FILE).is_file():
            acc.load_state(str(state_dir))
            saved = json.loads((state_dir / STATE_FILE).read_text())
            self.step, self.history = saved["step"], saved["history"]
            logger.info("resumed from %s at step %d", state_dir, self.step)
        elif cfg.resume:
            logger.info("resume=true but %s holds no state: starting fresh", state_dir)
        if acc.is_main_process:
            save_config(cfg, self.run_dir / "config.yaml", header=_launch_header())
        if cfg.log_with:
            acc.init_trackers(cfg.name, config=asdict(cfg))
        self.base_heldout = self.evaluate(None)
        logger.info("held-out loss of the base model (no adapter): %.4f", self.base_heldout["loss"])

    def _load_library(
        self, names: list[str], targets: list[AdapterTarget]
    ) -> dict[str, LoraWeights]:
        """Library LoRAs (``train_lora.py``) that exist for ``names`` and fit ``targets``.

        A LoRA made for another model (other module names or shapes, e.g. a SmolLM2 library
        found in the cache during a tiny-model run) is skipped with a warning, never applied.
        """
        shapes = {t.name: (t.in_features, t.out_features) for t in targets}
        library = {}
        for name in names:
            folder = library_folder(self.config.library_dir, name)
            if not (folder / "adapter_config.json").is_file():
                continue
            lora, _ = load_peft(folder)
            fits = set(lora.module_names) == set(shapes) and all(
                (lora.A[m].shape[-1], lora.B[m].shape[-2]) == shapes[m] for m in lora.module_names
            )
            if not fits:
                logger.warning(
                    "skipping library LoRA %s: it does not fit this model's targets", folder
                )
                continue
            library[name] = lora.to(self.accelerator.device)
        return library

    # --- losses ----------------------------------------------------------------------------

    def _tokenize(self, samples: list[Sample], train: bool) -> dict[str, torch.Tensor]:
        """Training samples in their own format (ending with the end token if configured);
        evaluation items plain, without it, so held-out losses compare across runs."""
        batch = tokenize_formatted(
            self.tokenizer,
            [(s.prompt, s.completion, s.fmt if train else "plain") for s in samples],
            self.config.max_length,
            end_of_answer=train and self.config.end_of_answer,
        )
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _forward(self, batch: dict[str, torch.Tensor], lora: LoraWeights | None) -> torch.Tensor:
        """Logits of the frozen LM on a token batch, with ``lora`` applied (or none)."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        # Autocast the LM only: the hypernetwork's output (the adapters) stays float32.
        device_type = self.accelerator.device.type
        with torch.autocast(
            device_type, dtype=torch.bfloat16, enabled=self.config.mixed_precision == "bf16"
        ):
            if lora is None:
                return self.model(**inputs).logits
            with apply_adapters(self.model, lora):
                return self.model(**inputs).logits

    def _lm_logits(
        self, samples: list[Sample], lora: LoraWeights | None, train: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, labels) of the frozen LM with ``lora`` applied (or none) on ``samples``."""
        batch = self._tokenize(samples, train)
        return self._forward(batch, lora), batch["labels"]

    def _lm_losses(
        self, samples: list[Sample], lora: LoraWeights | None, train: bool = False
    ) -> torch.Tensor:
        """(b,) per-example completion losses of the frozen LM with ``lora`` applied (or none)."""
        return example_losses(*self._lm_logits(samples, lora, train))

    def _distill_losses(
        self, samples: list[Sample], student: torch.Tensor, student_labels: torch.Tensor
    ) -> torch.Tensor:
        """(b,) KL on the answer tokens of the bare LM with each sample's description phrasing
        in its prompt (the teacher, no gradient) against ``student``, the logits of the LM with
        the generated adapter and no description (``_lm_logits``, train format)."""
        prefixes = [describe_prefix(self.data.phrasings[s.condition]) for s in samples]
        items = [(s.prompt, s.completion, s.fmt) for s in samples]
        cfg, device = self.config, self.accelerator.device
        # the teacher's prompt is longer: give it room, so both keep the same answer tokens
        teacher_batch = tokenize_formatted(
            self.tokenizer, items, 2 * cfg.max_length, cfg.end_of_answer, prefixes
        )
        teacher_batch = {k: v.to(device) for k, v in teacher_batch.items()}
        with torch.no_grad():
            teacher = self._forward(teacher_batch, None)
        return distill_losses(student, student_labels, teacher, teacher_batch["labels"])

    def loss(self, samples: list[Sample]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective on one micro-batch: a mean over its samples of each sample's loss."""
        cfg = self.config
        lora = self.hypernet(conditions_for(samples, self.conditions))
        parts: dict[str, torch.Tensor] = {}
        total = 0.0
        student = None  # the LM's logits under the generated adapters: SFT's and distillation's
        if cfg.objective in ("sft", "both"):
            student = self._lm_logits(samples, lora, train=True)
            own = example_losses(*student)
            parts["sft"] = own.mean()
            total = total + (cfg.sft_weight if cfg.objective == "both" else 1.0) * parts["sft"]
            if cfg.contrastive_weight > 0:
                pairs = other_task_rows([s.task for s in samples])
                rows = [i for i, j in enumerate(pairs) if j is not None]
                parts["contrastive"] = own.new_zeros(())  # one task in the micro-batch: no pair
                if rows:
                    other = self._lm_losses(
                        [samples[i] for i in rows], lora.select([pairs[i] for i in rows]), True
                    )
                    # a sum over the paired rows / the micro-batch size: a per-sample mean
                    parts["contrastive"] = contrastive_losses(
                        own[rows], other, cfg.contrastive_margin
                    ).sum() / len(samples)
                    total = total + cfg.contrastive_weight * parts["contrastive"]
        if cfg.objective == "distill" or cfg.distill_weight > 0:
            student = student or self._lm_logits(samples, lora, train=True)
            parts["distill"] = self._distill_losses(samples, *student).mean()
            weight = 1.0 if cfg.objective == "distill" else cfg.distill_weight
            total = total + weight * parts["distill"]
        if cfg.objective in ("reconstruction", "both"):
            rows = [i for i, s in enumerate(samples) if s.task in self.library]
            if rows:
                targets = LoraWeights.cat([self.library[samples[i].task] for i in rows])
                # A sum over the rows / the micro-batch size: samples without a target add 0, so
                # the loss stays a per-sample mean (DDP-consistent).
                parts["reconstruction"] = delta_w_loss(lora.select(rows), targets).sum() / len(
                    samples
                )
                weight = cfg.reconstruction_weight if cfg.objective == "both" else 1.0
                total = total + weight * parts["reconstruction"]
        return total, parts

    @torch.no_grad()
    def evaluate(
        self, adapters: Callable[[list[Sample]], LoraWeights] | None, tasks: list[str] | None = None
    ) -> dict:
        """Held-out loss: the mean over held-out tasks of each task's mean example loss.

        Args:
            adapters: samples -> one adapter per sample; None evaluates the bare base model.
            tasks: only these held-out tasks (default: all).

        Items are sharded across processes and the sums reduced, so every process gets the result.
        """
        acc, tasks = self.accelerator, tasks or self.data.heldout_tasks
        index = {t: i for i, t in enumerate(tasks)}
        sums = torch.zeros(len(tasks), 2, device=acc.device)  # (task, [loss sum, count])
        items = [s for s in self.eval_items if s.task in index]
        mine = items[acc.process_index :: acc.num_processes]
        size = max(1, self.config.batch_size // (self.config.grad_accum * acc.num_processes))
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            losses = self._lm_losses(chunk, adapters(chunk) if adapters is not None else None)
            for s, value in zip(chunk, losses.tolist()):
                sums[index[s.task], 0] += value
                sums[index[s.task], 1] += 1
        sums = acc.reduce(sums, reduction="sum")
        per_task = {t: (sums[i, 0] / sums[i, 1]).item() for t, i in index.items() if sums[i, 1] > 0}
        loss = sum(per_task.values()) / max(1, len(per_task))
        return {"loss": loss, "per_task": per_task}

    def _generated(self, samples: list[Sample]) -> LoraWeights:
        hypernet = self.accelerator.unwrap_model(self.hypernet)
        return hypernet(conditions_for(samples, self.conditions))

    # --- loop ------------------------------------------------------------------------------

    def train(self) -> None:
        cfg, acc = self.config, self.accelerator
        bar = tqdm(
            total=cfg.steps, initial=self.step, desc="meta-train", disable=not acc.is_main_process
        )
        window: list[dict[str, float]] = []
        start, first_step = time.perf_counter(), self.step
        self.started = start
        while self.step < cfg.steps:
            samples = self.sampler.batch(self.step, cfg.batch_size)
            # Sorted by length, so micro-batches (grad_accum > 1) group similar lengths and pad less;
            # the loss is a per-example mean, so the order changes nothing else.
            samples.sort(key=lambda s: len(s.prompt) + len(s.completion))
            micro_batches = shard(samples, cfg.grad_accum, acc.num_processes, acc.process_index)
            logged: dict[str, float] = {}
            for micro in micro_batches:
                with acc.accumulate(self.hypernet):
                    loss, parts = self.loss(micro)
                    acc.backward(loss)
                    if acc.sync_gradients and cfg.max_grad_norm > 0:
                        acc.clip_grad_norm_(self.hypernet.parameters(), cfg.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for key, value in {
                    "loss": loss.detach(),
                    **{k: v.detach() for k, v in parts.items()},
                }.items():
                    logged[key] = (
                        logged.get(key, 0.0) + acc.reduce(value, "mean").item() / cfg.grad_accum
                    )
            self.step += 1
            window.append(logged)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                record = {k: sum(w[k] for w in window) / len(window) for k in window[-1]}
                elapsed = time.perf_counter() - start
                record.update(
                    step=self.step,
                    lr=self.scheduler.get_last_lr()[0],
                    samples_per_s=(self.step - first_step) * cfg.batch_size / max(elapsed, 1e-9),
                )
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                self._log(record)
                window = []
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                result = self._eval_generated()
                self._log(
                    {
                        "step": self.step,
                        "heldout_loss": result["loss"],
                        **{f"specificity_{k}": v for k, v in result["specificity"].items()},
                    }
                )
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps:
                self.save_checkpoint(final=self.step == cfg.steps)
        bar.close()

    def _eval_generated(self) -> dict:
        self.hypernet.eval()
        result = self.evaluate(self._generated)
        result["specificity"] = self.specificity()
        self.hypernet.train()
        return result

    @torch.no_grad()
    def specificity(self) -> dict[str, float]:
        """Mean pairwise cosine of the generated delta W across tasks' plain descriptions.

        Near 1: one adapter for every task (the collapse this project started from, 0.994).
        Cheap (no LM forward), so it is logged at every evaluation.
        """
        hypernet = self.accelerator.unwrap_model(self.hypernet)
        out = {}
        if hypernet.config.adapter_kind != "lora":
            return out  # the delta-W cosine is defined for LoRA only
        for group, tasks in (
            ("heldout", self.data.heldout_tasks),
            ("train", self.data.train_tasks[:32]),
        ):
            if len(tasks) < 2:
                continue
            rows = torch.tensor(
                [self.data.eval_phrasing[t] for t in tasks], device=self.conditions.device
            )
            cos = cosine_matrix(hypernet(self.conditions[rows]))
            off = cos[~torch.eye(len(tasks), dtype=torch.bool)]
            off = off[~off.isnan()]
            out[group] = off.mean().item() if off.numel() else float("nan")
        return out

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.config.log_with:
            self.accelerator.log(
                {k: v for k, v in record.items() if k != "step"}, step=record["step"]
            )
        if self.accelerator.is_main_process:
            logger.info(
                " ".join(
                    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in record.items()
                )
            )
            with open(self.run_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    # --- checkpoints -----------------------------------------------------------------------

    def save_checkpoint(self, final: bool = False) -> None:
        """Resumable state (all processes) + a hypergen checkpoint with its config (main process)."""
        acc, cfg = self.accelerator, self.config
        acc.wait_for_everyone()
        state_dir = self.run_dir / "state"
        acc.save_state(str(state_dir))
        extra = self.final_report() if final else {}
        if acc.is_main_process:
            # atomic: a run killed mid-write must still find the last complete step on resume
            atomic_write_text(
                state_dir / STATE_FILE,
                json.dumps({"step": self.step, "history": self.history}) + "\n",
            )
            self._write(
                self.run_dir / "checkpoints" / f"step-{self.step:06d}", torch.float32, extra
            )
            if final:
                self._write(self.run_dir / "final", torch.float32, extra)
                if cfg.export_dir:
                    self._write(Path(cfg.export_dir), DTYPES[cfg.export_dtype], extra)
        acc.wait_for_everyone()

    def _write(self, folder: Path, dtype: torch.dtype, extra: dict) -> None:
        cfg = self.config
        evals = [h for h in self.history if "heldout_loss" in h]
        self.meta.trained_steps = self.step
        self.meta.training = {
            "recipe": "training/meta_train.py",
            "objective": cfg.objective,
            "num_processes": self.accelerator.num_processes,
            "train_tasks": self.data.train_tasks,
            "heldout_tasks": self.data.heldout_tasks,
            "train_loss": next((h["loss"] for h in reversed(self.history) if "loss" in h), None),
            "heldout_loss": {"base": self.base_heldout["loss"], "history": evals},
            **extra,
            "config": asdict(cfg),
        }
        # the run's own folders, and export_dir that the config names: replaced as before
        save_checkpoint(
            self.accelerator.unwrap_model(self.hypernet),
            self.meta,
            folder,
            dtype=dtype,
            overwrite=True,
        )
        save_config(cfg, folder / "config.yaml", header=_launch_header())
        logger.info("saved checkpoint %s (step %d)", folder, self.step)

    def final_report(self) -> dict:
        """Held-out losses of the trained generator and of the library baselines (all processes)."""
        report = {"base": self.base_heldout}
        self.hypernet.eval()
        report["generated"] = self.evaluate(self._generated)
        report["specificity"] = self.specificity()
        self._log(
            {
                "step": self.step,
                "heldout_loss": report["generated"]["loss"],
                **{f"specificity_{k}": v for k, v in report["specificity"].items()},
            }
        )
        unseen = self.data.unseen_phrasings
        if any(unseen.get(t) for t in self.data.heldout_tasks):

            def generated_unseen(samples: list[Sample]) -> LoraWeights:
                # phrasing picked by the prompt's checksum: the same on any number of processes
                rows = [
                    unseen[s.task][zlib.crc32(s.prompt.encode()) % len(unseen[s.task])]
                    if unseen.get(s.task)
                    else s.condition
                    for s in samples
                ]
                return self.accelerator.unwrap_model(self.hypernet)(self.conditions[rows])

            report["generated_unseen_phrasings"] = self.evaluate(generated_unseen)
        self.hypernet.train()
        if MULTITASK in self.library:
            multitask = self.library[MULTITASK]
            report["multitask_lora"] = self.evaluate(lambda samples: multitask)
        oracle_tasks = [t for t in self.data.heldout_tasks if t in self.library]
        if oracle_tasks:

            def oracle(samples: list[Sample]) -> LoraWeights:
                return LoraWeights.cat([self.library[s.task] for s in samples])

            report["oracle_lora"] = self.evaluate(oracle, oracle_tasks)
            report["oracle_lora"]["tasks"] = oracle_tasks
        if self.accelerator.is_main_process:
            for key, value in report.items():
                if "loss" in value:
                    logger.info("final held-out loss, %s: %.4f", key, value["loss"])
        seconds = time.perf_counter() - self.started  # this session's training time (+ evals)
        return {"seconds": round(seconds, 3), "final_heldout": report}

    def cleanup(self) -> None:
        self.accelerator.end_training()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _shape(config: HyperNetConfig) -> dict:
    """What a checkpoint's weights must agree on to start a run (dropout is no shape: a run may
    fine-tune a checkpoint with another rate)."""
    return {k: v for k, v in config.to_dict().items() if k != "dropout"}


def lr_schedule(optimizer: torch.optim.Optimizer, cfg: MetaTrainConfig):
    """Linear warmup over ``warmup_steps``, then constant or cosine down to ``MIN_LR_RATE`` of
    the peak at ``steps`` (transformers' schedules)."""
    if cfg.lr_schedule == "constant":
        return get_constant_schedule_with_warmup(optimizer, cfg.warmup_steps)
    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, cfg.warmup_steps, cfg.steps, min_lr_rate=MIN_LR_RATE
    )


def _launch_header() -> str:
    return (
        "Written by training/meta_train.py: the exact config of this run. Rerun with\n"
        "  accelerate launch training/meta_train.py --config <this file>"
    )


def main(argv: list[str] | None = None) -> MetaTrainer:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (see training/configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of config entries")
    args = parser.parse_args(argv)
    config = load_config(MetaTrainConfig, args.config, args.overrides)
    trainer = MetaTrainer(config)
    trainer.setup()
    trainer.train()
    trainer.cleanup()
    return trainer


if __name__ == "__main__":
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    trainer = main()  # kept alive to the end: freeing it (or the interpreter's teardown) ...
    # ... runs DDP's Reducer destructor, which sometimes joined gloo's threads forever once the
    # peer rank had gone (py-spy on a hung rank: ~Reducer -> ~ProcessGroupGloo -> thread join;
    # faulthandler: stuck on this very line while the discarded return value was freed).
    # Everything is written and the process group destroyed, so exit without tearing down.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
