"""Typed configs for the training recipes: a YAML file plus ``key=value`` overrides.

    config = load_config(MetaTrainConfig, "training/configs/smollm2.yaml", ["steps=50", "lr=3e-4"])

Values given on the command line are parsed as YAML (``steps=50`` is an int, ``objective=both`` a
string, ``target_modules=[q_proj,v_proj]`` a list). An unknown key, in the file or on the command
line, raises a ValueError naming it: a typo must not silently train with a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypergen.config import (
    ADAPTER_KINDS,
    DEFAULT_ADAPTER_KIND,
    DEFAULT_BASE_MODEL,
    DEFAULT_BOTTLENECK_SIZE,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_KIND,
    DEFAULT_HIDDEN_DIM,
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_RANK,
    DEFAULT_NON_LINEARITY,
    DEFAULT_NUM_BLOCKS,
    DEFAULT_PLACEMENT,
    DEFAULT_TARGET_MODULES,
    DEFAULT_TASK_LANGUAGES,
    check_dtype,
)
from hypergen.config_files import load_config, save_config
from hypergen.layout import hypergen_home, library_dir, run_dir, suite_dir

OBJECTIVES = ("sft", "reconstruction", "both", "distill")
CONDITIONS = ("description", "document", "demonstrations")
SCHEDULES = ("cosine", "constant")


def _check_positive(obj: Any, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 1:
            raise ValueError(f"{type(obj).__name__}.{name} must be >= 1, got {getattr(obj, name)}")


@dataclass
class MetaTrainConfig:
    """One meta-training run of the hypernetwork (``training/meta_train.py``).

    Args:
        name: run name; the run folder is ``output_dir`` or ``$HYPERGEN_HOME/runs/<name>``.
        base_model: built-in name, local folder or Hub id of the frozen LM.
        encoder_kind: conditioner kind of the description (``text`` or ``hashing``).
        encoder_name: conditioner model (``all-minilm-l6-v2``, ``hash-64``, a folder...).
        language_features: null: the condition is the description alone. Set (lang2vec URIEL
            feature sets joined by ``+``, e.g. ``syntax_knn+phonology_knn+inventory_knn``): the
            condition is the description and the task's language (a composite conditioner,
            ``hypergen.conditions.composite``), each task's language read from ``task_languages``.
        task_languages: the task -> language table (````hypergen.data.task_languages``).
        condition: what the hypernetwork is conditioned on: ``description`` (the task's
            description phrasings), ``document`` (a synthetic fact document; the tasks are its
            questions, ``training/documents.py``; ``data_dir`` and ``split`` are not read) or
            ``demonstrations`` (``demonstrations`` of the task's own training examples, never
            the one being predicted). The last two wrap the sentence encoder ``encoder_name``.
        documents, heldout_documents: ``condition: document``: corpus size and how
            many of its last documents are held out (``training/documents.py``).
        demonstrations, demonstration_sets: ``condition: demonstrations``: examples per
            condition (k) and how many such sets are drawn per task.
        data_dir: BIG-bench-format suite; default ``$HYPERGEN_HOME/data/bigbench`` (``make data``).
        split: the committed task split YAML (train_tasks / heldout_tasks).
        max_train_tasks: use only the first N training tasks of the split (0: all).
        hidden_dim, num_blocks, dropout: hypernetwork shape (``hypergen.config.HyperNetConfig``).
        adapter_kind: what the hypernetwork emits, ``lora`` or ``bottleneck``.
        rank, alpha, target_modules: the LoRA it emits (``adapter_kind=lora``).
        bottleneck_size, placement, non_linearity: the bottleneck adapter it emits
            (``adapter_kind=bottleneck``; ``hypergen.config.BottleneckSpec``). The reconstruction
            objective needs a library of the same kind and the library is LoRA-only, so this kind
            trains with ``objective=sft``.
        objective: ``sft`` (completion loss through the LM), ``reconstruction`` (regress onto the
            LoRA library), ``both`` (weighted sum) or ``distill`` (context distillation of the
            description alone: ``training.objectives.distill_losses``).
        sft_weight, reconstruction_weight: weights of the two losses when ``objective=both``.
        contrastive_weight, contrastive_margin: an SFT-side term (0: off) asking each example's
            completion loss under its own task's adapter to beat, by ``contrastive_margin`` nats,
            its loss under the adapter of another task of the same micro-batch
            (``training.objectives.contrastive_losses``); costs a second LM forward per step.
        distill_weight: weight of the distillation term added to ``sft`` or ``both`` (0: off):
            the LM with the generated adapter should predict the answer as the LM with the
            description in its prompt does; costs a forward of the bare LM per step.
        lora_library: folder of per-task PEFT LoRAs (``train_lora.py``); default
            ``$HYPERGEN_HOME/loras``.
        steps: optimizer steps in total (a resumed run continues up to this number).
        batch_size: examples per optimizer step, summed over processes (the global batch).
        grad_accum: micro-batches per optimizer step; each process's micro-batch is
            ``batch_size / (num_processes * grad_accum)``.
        lr, weight_decay, warmup_steps, lr_schedule, max_grad_norm: AdamW and its schedule
            (``meta_train.lr_schedule``: linear warmup from 0, then ``constant`` or ``cosine``
            down to 10% of ``lr`` at ``steps``).
        max_length: longest tokenized prompt + completion; prompts are cut from the left.
        formats: text formats of SFT samples (``plain``, ``chat``: ``training/formats.py``).
        end_of_answer: end every SFT completion with the end-of-turn token, so generated
            adapters learn where answers stop (the held-out loss stays plain, without it).
        head_lr: learning rate of the LoRA heads (null: ``lr``); the heads write every layer's
            A/B at once, the trunk only shapes the condition.
        init_from: a hypergen checkpoint to start the hypernetwork from (e.g. the result of a
            reconstruction run); it must have the same shape. A relative path that does not
            exist from the working directory is read under ``$HYPERGEN_HOME``
            (``runs/smollm2-recon/final``).
        chat_replies: JSON of the base model's own correct chat replies
            (``training/chat_replies.py``): ``chat`` samples of a task that has some train on them
            instead of the terse reference. Relative paths as for ``init_from``
            (``data/chat_replies.json``).
        seed: seeds the model init and the data order (the data order is a function of
            ``(seed, step)`` alone, which makes runs reproducible across process counts and resumes).
        eval_every: held-out loss every N steps (0: only at the end).
        eval_examples: test examples per held-out task in that loss.
        save_every: checkpoint + resumable state every N steps (0: only at the end).
        log_every: progress-bar / log line every N steps.
        log_with: accelerate trackers (``tensorboard``, ``wandb``...; empty: none).
        resume: continue from the run folder's saved state if there is one.
        num_threads: torch CPU threads per process (0: torch's default).
        mixed_precision: ``no`` or ``bf16``: autocast of the frozen LM's forward only (the
            hypernetwork and its adapters stay float32); about 2x faster on CPUs with AMX and on
            GPUs, and scores match float32 to about 0.01.
        cpu: train on CPU even if an accelerator is present; a multi-process CPU run needs it
            (accelerate uses gloo only then; ``ACCELERATE_USE_CPU=1`` does the same).
        output_dir: run folder; default ``$HYPERGEN_HOME/runs/<name>``.
        export_dir: where to also write the final checkpoint (e.g. ``checkpoints/smollm2-minilm``).
        export_dtype: dtype of that copy (``float16`` makes it half the size).
    """

    name: str = "smollm2"
    base_model: str = DEFAULT_BASE_MODEL
    encoder_kind: str = DEFAULT_ENCODER_KIND
    encoder_name: str = DEFAULT_ENCODER
    language_features: str | None = None
    task_languages: str = DEFAULT_TASK_LANGUAGES
    condition: str = "description"
    documents: int = 400
    heldout_documents: int = 50
    demonstrations: int = 4
    demonstration_sets: int = 4
    data_dir: str | None = None
    split: str = "evaluation/splits/bigbench.yaml"
    max_train_tasks: int = 0
    hidden_dim: int = DEFAULT_HIDDEN_DIM
    num_blocks: int = DEFAULT_NUM_BLOCKS
    dropout: float = 0.0
    adapter_kind: str = DEFAULT_ADAPTER_KIND
    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    bottleneck_size: int = DEFAULT_BOTTLENECK_SIZE
    placement: str = DEFAULT_PLACEMENT
    non_linearity: str = DEFAULT_NON_LINEARITY
    objective: str = "sft"
    sft_weight: float = 1.0
    reconstruction_weight: float = 1.0
    contrastive_weight: float = 0.0
    contrastive_margin: float = 0.5
    distill_weight: float = 0.0
    lora_library: str | None = None
    steps: int = 300
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    lr_schedule: str = "cosine"
    max_grad_norm: float = 1.0
    max_length: int = 256
    formats: list[str] = field(default_factory=lambda: ["plain"])
    end_of_answer: bool = False
    head_lr: float | None = None
    init_from: str | None = None
    chat_replies: str | None = None
    seed: int = 0
    eval_every: int = 50
    eval_examples: int = 16
    save_every: int = 100
    log_every: int = 10
    log_with: list[str] = field(default_factory=list)
    resume: bool = False
    num_threads: int = 0
    mixed_precision: str = "no"
    cpu: bool = False
    output_dir: str | None = None
    export_dir: str | None = None
    export_dtype: str = "float16"

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(
                f"MetaTrainConfig.condition must be one of {CONDITIONS}, got {self.condition!r}"
            )
        if self.condition != "description" and (self.language_features or self.objective != "sft"):
            raise ValueError(
                f"MetaTrainConfig.condition={self.condition} trains with objective=sft and no "
                "language_features (the LoRA library and language table are per described task)"
            )
        _check_positive(
            self, "documents", "heldout_documents", "demonstrations", "demonstration_sets"
        )
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"MetaTrainConfig.objective must be one of {OBJECTIVES}, got {self.objective!r}"
            )
        if self.adapter_kind not in ADAPTER_KINDS:
            raise ValueError(
                f"MetaTrainConfig.adapter_kind must be one of {ADAPTER_KINDS}, got {self.adapter_kind!r}"
            )
        if self.contrastive_weight < 0 or self.contrastive_margin < 0:
            raise ValueError(
                "MetaTrainConfig.contrastive_weight and contrastive_margin must be >= 0"
            )
        if self.distill_weight < 0:
            raise ValueError(
                f"MetaTrainConfig.distill_weight must be >= 0, got {self.distill_weight}"
            )
        if self.distill_weight > 0 and self.objective not in ("sft", "both"):
            raise ValueError(
                "MetaTrainConfig.distill_weight adds to objective sft or both "
                "(objective=distill is distillation alone)"
            )
        if self.contrastive_weight > 0 and self.objective not in ("sft", "both"):
            raise ValueError(
                "MetaTrainConfig.contrastive_weight needs the LM loss: objective sft or both"
            )
        if self.adapter_kind != "lora" and self.objective in ("reconstruction", "both"):
            raise ValueError(
                f"MetaTrainConfig.objective={self.objective} needs a library of {self.adapter_kind} "
                "adapters; the library is LoRA-only: use objective=sft or distill"
            )
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(
                f"MetaTrainConfig.lr_schedule must be one of {SCHEDULES}, got {self.lr_schedule!r}"
            )
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(
                f"MetaTrainConfig.mixed_precision must be no or bf16, got {self.mixed_precision!r}"
            )
        check_dtype(self.export_dtype, "MetaTrainConfig.export_dtype")
        _check_positive(
            self, "steps", "batch_size", "grad_accum", "max_length", "log_every", "eval_examples"
        )
        for name in ("eval_every", "save_every", "warmup_steps", "max_train_tasks", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"MetaTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"MetaTrainConfig.batch_size ({self.batch_size}) must be a multiple of grad_accum ({self.grad_accum})"
            )
        if self.lr <= 0 or (self.head_lr is not None and self.head_lr <= 0):
            raise ValueError(
                f"MetaTrainConfig.lr and head_lr must be > 0, got {self.lr}, {self.head_lr}"
            )
        if not self.formats or any(f not in ("plain", "chat") for f in self.formats):
            raise ValueError(
                f"MetaTrainConfig.formats must be a non-empty subset of plain/chat, got {self.formats}"
            )
        self.target_modules, self.log_with = list(self.target_modules), list(self.log_with)
        self.formats = list(self.formats)

    @property
    def run_dir(self) -> Path:
        return run_dir(self.name, self.output_dir)

    @property
    def suite_dir(self) -> Path:
        return suite_dir(self.data_dir)

    @property
    def library_dir(self) -> Path:
        return library_dir(self.lora_library)

    @property
    def init_checkpoint(self) -> Path | None:
        return _here_or_home(self.init_from)

    @property
    def chat_replies_file(self) -> Path | None:
        return _here_or_home(self.chat_replies)


def _here_or_home(name: str | None) -> Path | None:
    """A path as given, or under ``$HYPERGEN_HOME`` when relative and absent from here."""
    if not name:
        return None
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.exists() else hypergen_home() / path


@dataclass
class LoraTrainConfig:
    """Per-task and multi-task LoRAs with PEFT (``training/train_lora.py``).

    Args:
        base_model: built-in name, local folder or Hub id of the frozen LM.
        data_dir: BIG-bench-format suite; default ``$HYPERGEN_HOME/data/bigbench``.
        split: the committed task split YAML.
        per_task: which tasks get their own LoRA: ``heldout``, ``train``, ``all`` or ``none``.
        tasks: explicit task names instead of ``per_task`` (empty: use ``per_task``).
        multitask: also train one LoRA on the union of the training tasks (folder ``_multitask``).
        rank, alpha, target_modules: the LoRA (same as the hypernetwork's, so it can be a target).
        steps: optimizer steps per per-task LoRA.
        multitask_steps: optimizer steps of the multi-task LoRA.
        batch_size, lr, weight_decay, max_length, seed: as in meta-training.
        bf16: autocast the LM to bfloat16 (about 2x faster on CPUs with AMX and on GPUs).
        skip_existing: keep LoRA folders that already exist (lets an interrupted run resume).
        num_threads: torch CPU threads (0: torch's default).
        output_dir: library folder; default ``$HYPERGEN_HOME/loras``.
    """

    base_model: str = DEFAULT_BASE_MODEL
    data_dir: str | None = None
    split: str = "evaluation/splits/bigbench.yaml"
    per_task: str = "heldout"
    tasks: list[str] = field(default_factory=list)
    multitask: bool = True
    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    steps: int = 100
    multitask_steps: int = 400
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_length: int = 256
    seed: int = 0
    bf16: bool = False
    skip_existing: bool = True
    num_threads: int = 0
    output_dir: str | None = None

    def __post_init__(self):
        if self.per_task not in ("heldout", "train", "all", "none"):
            raise ValueError(
                f"LoraTrainConfig.per_task must be heldout/train/all/none, got {self.per_task!r}"
            )
        _check_positive(self, "rank", "steps", "multitask_steps", "batch_size", "max_length")
        self.tasks, self.target_modules = list(self.tasks), list(self.target_modules)

    @property
    def suite_dir(self) -> Path:
        return suite_dir(self.data_dir)

    @property
    def library_dir(self) -> Path:
        return library_dir(self.output_dir)


@dataclass
class LibraryTrainConfig:
    """One LoRA per task, all trained in one batched run (``training/train_library.py``).

    Args:
        base_model: built-in name, local folder or Hub id of the frozen LM.
        data_dir: BIG-bench-format suite; default ``$HYPERGEN_HOME/data/bigbench``.
        split: the committed task split YAML.
        tasks: ``train`` (the split's training tasks: reconstruction targets and the training-task
            oracle of evaluation), ``heldout`` (the held-out oracles), ``all``, or a list of names.
        max_tasks: keep only the first N of those by name (0: all).
        examples_per_task: each task's first N training examples in a seeded order (0: all).
        skip_examples: skip each task's first N examples of that order first (with
            ``init_from``: continue a library on examples it has not seen).
        init_from: a library folder whose LoRAs start the rows of the same tasks (their alpha
            must match too: the scaling is this config's).
        epochs: passes over those examples.
        rank, alpha, target_modules: the LoRA (the hypernetwork's, so it can be a target).
        shared_init: every task's LoRA starts from the same random A (``training/lora_bank.py``):
            the differences between tasks are then only what training put there.
        multitask: train ONE LoRA on the same examples instead (the ``multitask_lora`` baseline
            of evaluation, written to ``<output_dir>/_multitask/``; run folder
            ``runs/library-multitask``).
        formats: text formats mixed in training (``plain``, ``chat``: ``training/formats.py``).
        end_of_answer: end every completion with the end-of-turn token.
        batch_size, lr, weight_decay, max_length, seed: as in meta-training.
        max_steps: stop after this many steps of the plan (0: the whole plan); a later run
            with a larger value (or 0) continues from there.
        eval_examples: test examples per task for the final own/other/base loss report.
        save_every: resumable state every N steps (0: only at the end).
        log_every: log line every N steps.
        resume: continue from the run folder's saved state if there is one.
        mixed_precision: ``no`` or ``bf16`` autocast of the frozen LM's forward.
        num_threads: torch CPU threads (0: torch's default).
        cpu: stay on CPU even if an accelerator is present.
        output_dir: library folder (one PEFT folder per task); default ``$HYPERGEN_HOME/loras``.
        run_dir: state and log folder; default ``$HYPERGEN_HOME/runs/library``.
    """

    base_model: str = DEFAULT_BASE_MODEL
    data_dir: str | None = None
    split: str = "evaluation/splits/bigbench.yaml"
    tasks: str | list[str] = "train"
    max_tasks: int = 0
    examples_per_task: int = 32
    skip_examples: int = 0
    init_from: str | None = None
    epochs: int = 1
    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    shared_init: bool = True
    multitask: bool = False
    formats: list[str] = field(default_factory=lambda: ["plain", "chat"])
    end_of_answer: bool = True
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_length: int = 128
    seed: int = 0
    max_steps: int = 0
    eval_examples: int = 4
    save_every: int = 50
    log_every: int = 10
    resume: bool = True
    mixed_precision: str = "bf16"
    num_threads: int = 0
    cpu: bool = False
    output_dir: str | None = None
    run_dir: str | None = None

    def __post_init__(self):
        if isinstance(self.tasks, str) and self.tasks not in ("train", "heldout", "all"):
            raise ValueError(
                f"LibraryTrainConfig.tasks must be train/heldout/all or a list, got {self.tasks!r}"
            )
        unknown = [f for f in self.formats if f not in ("plain", "chat")]
        if unknown or not self.formats:
            raise ValueError(
                f"LibraryTrainConfig.formats must be a non-empty subset of plain/chat, got {self.formats}"
            )
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16"):
            raise ValueError(
                f"LibraryTrainConfig.mixed_precision must be no or bf16, got {self.mixed_precision!r}"
            )
        _check_positive(self, "rank", "epochs", "batch_size", "max_length", "log_every")
        for name in (
            "max_tasks",
            "examples_per_task",
            "max_steps",
            "eval_examples",
            "save_every",
            "num_threads",
        ):
            if getattr(self, name) < 0:
                raise ValueError(
                    f"LibraryTrainConfig.{name} must be >= 0, got {getattr(self, name)}"
                )
        if self.lr <= 0:
            raise ValueError(f"LibraryTrainConfig.lr must be > 0, got {self.lr}")
        self.target_modules, self.formats = list(self.target_modules), list(self.formats)

    @property
    def suite_dir(self) -> Path:
        return suite_dir(self.data_dir)

    @property
    def library_dir(self) -> Path:
        return library_dir(self.output_dir)

    @property
    def state_dir(self) -> Path:
        return run_dir("library-multitask" if self.multitask else "library", self.run_dir)


__all__ = ["LibraryTrainConfig", "LoraTrainConfig", "MetaTrainConfig", "load_config", "save_config"]


@dataclass
class ChatRepliesConfig:
    """The base model's own correct chat replies as chat training targets (``training/chat_replies.py``).

    Args:
        base_model: built-in name, local folder or Hub id of the frozen LM.
        data_dir, split: the task suite and split; only the split's training tasks are asked.
        examples_per_task: each task's first N training examples are asked.
        max_question_chars: longer questions are skipped (they would be cut in training).
        max_new_tokens: reply length cap; a reply that reaches it is not kept.
        batch_size: questions per generation batch.
        max_tasks: only the first N training tasks (0: all).
        output: the JSON file; default ``$HYPERGEN_HOME/data/chat_replies.json``.
        overwrite: replace an existing output file.
        num_threads: torch CPU threads (0: torch's default).
        cpu: stay on CPU even if CUDA is present.
    """

    base_model: str = "smollm2-135m"
    data_dir: str | None = None
    split: str = "evaluation/splits/bigbench.yaml"
    examples_per_task: int = 4
    max_question_chars: int = 400
    max_new_tokens: int = 64
    batch_size: int = 16
    max_tasks: int = 0
    output: str | None = None
    overwrite: bool = False
    num_threads: int = 0
    cpu: bool = False

    def __post_init__(self):
        _check_positive(
            self, "examples_per_task", "max_question_chars", "max_new_tokens", "batch_size"
        )
        if self.max_tasks < 0 or self.num_threads < 0:
            raise ValueError("ChatRepliesConfig.max_tasks and num_threads must be >= 0")

    @property
    def suite_dir(self) -> Path:
        return suite_dir(self.data_dir)

    @property
    def output_file(self) -> Path:
        return Path(self.output) if self.output else hypergen_home() / "data" / "chat_replies.json"
