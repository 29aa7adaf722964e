"""The evaluation config: one dataclass, read from a YAML file plus ``key=value`` overrides.

Unknown keys fail, naming the key. Paths left empty fall back to the cache under
``$HYPERGEN_HOME`` (``hypergen.layout``): tasks in ``data/bigbench``, LoRAs in
``loras/``. Relative paths are relative to the working directory (the repository root for
``make eval``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluation.systems import SYSTEMS
from hypergen.config import (
    DEFAULT_BASE_MODEL,
    DEFAULT_TASK_LANGUAGES,
    HALF_DTYPE_NAMES,
    check_dtype,
)
from hypergen.config_files import read_config

# Every system the harness knows, in report order: the registry's (see evaluation.systems).
ALL_SYSTEMS = tuple(SYSTEMS)
# What a config that names no systems runs: all but those needing a demonstrations checkpoint.
DEFAULT_SYSTEMS = tuple(name for name, spec in SYSTEMS.items() if spec.default)
TASK_GROUPS = ("heldout", "validation", "train", "all")


@dataclass
class EvalConfig:
    """What to evaluate, on what, and how.

    Args:
        out: results folder (JSON, Markdown, PNG, and ``cache/`` for resuming).
        base_model: built-in name, local folder or Hub id of the frozen LM.
        checkpoint: hypernetwork checkpoint folder for the generated systems (missing: those
            systems are reported as missing).
        loras_dir: folder of per-task PEFT LoRAs (``<task>/``, subtasks as ``a__b``) and the
            multi-task LoRA (``_multitask/``); empty: ``$HYPERGEN_HOME/loras``.
        suite: folder of BIG-bench-format task files; empty: ``$HYPERGEN_HOME/data/bigbench``.
        split: committed split YAML; gives each task's train/test examples and its group
            (held-out or training). Empty: every task of ``suite`` is evaluated, group "suite",
            examples split with ``test_fraction`` and ``seed``.
        tasks: "heldout", "validation" (the split's tasks for choosing checkpoints), "train",
            "all" (the sampled training tasks and the held-out ones), or a list of task names.
        max_train_tasks: with a split, evaluate at most this many of its training tasks, a
            seeded sample (0: all); held-out tasks are always all evaluated.
        systems: which systems to compare (see ``ALL_SYSTEMS``; default ``DEFAULT_SYSTEMS``).
        max_examples: test examples sampled per task (seeded; all when the test part is smaller;
            0 or None: all).
        seed: seed for example sampling, random strings and the bootstrap.
        test_fraction: test share of each task's examples when there is no split.
        max_new_tokens: longest generated answer (generative tasks), in tokens.
        max_length: longest scored row in tokens (prompts are cut from the start).
        batch_tokens: padded tokens per forward pass.
        dtype: parameter dtype of the LM ("float32", "bfloat16").
        autocast: run forward passes under torch.autocast with this dtype ("bfloat16"; empty: off).
        num_threads: torch CPU threads (0: leave torch's default).
        device: torch device of the LM and hypernetwork.
        bootstrap_samples: bootstrap draws for the 95% intervals.
        random_words: words in the random-string condition.
        demonstrations: k, the train examples shown to ``base+demos`` and ``generated_demos``.
        task_languages: the task -> language table (``hypergen.data.task_languages``) that a
            description + language checkpoint's generated systems read.
        generation_check: run the generation check (``evaluation.generation_check``): chat
            prompts and the evaluated generative tasks, greedy replies without and with the
            generated adapter.
        chat_prompts: the check's chat prompts file; empty: ``evaluation/chat_prompts.yaml``.
        check_max_new_tokens: reply cap of the check, in tokens.
        check_max_examples: examples per generative task in the check (the first sampled ones).
        progress: show tqdm progress bars.
    """

    out: str = "results/eval"
    base_model: str = DEFAULT_BASE_MODEL
    checkpoint: str = ""
    loras_dir: str = ""
    suite: str = ""
    split: str = ""
    tasks: str | list[str] = "heldout"
    max_train_tasks: int = 0
    systems: list[str] = field(default_factory=lambda: list(DEFAULT_SYSTEMS))
    max_examples: int | None = 100
    seed: int = 0
    test_fraction: float = 0.2
    max_new_tokens: int = 32
    max_length: int = 512
    batch_tokens: int = 2048
    dtype: str = "float32"
    autocast: str = ""
    num_threads: int = 2
    device: str = "cpu"
    bootstrap_samples: int = 1000
    random_words: int = 12
    demonstrations: int = 4
    task_languages: str = DEFAULT_TASK_LANGUAGES
    generation_check: bool = True
    chat_prompts: str = ""
    check_max_new_tokens: int = 48
    check_max_examples: int = 8
    progress: bool = True

    def __post_init__(self):
        unknown = [s for s in self.systems if s not in ALL_SYSTEMS]
        if unknown:
            raise ValueError(f"EvalConfig.systems: unknown {unknown}; known: {list(ALL_SYSTEMS)}")
        if not self.systems:
            raise ValueError("EvalConfig.systems must name at least one system")
        if isinstance(self.tasks, str) and self.tasks not in TASK_GROUPS:
            raise ValueError(
                f"EvalConfig.tasks must be one of {TASK_GROUPS} or a list of names, got {self.tasks!r}"
            )
        if self.max_train_tasks < 0:
            raise ValueError(f"EvalConfig.max_train_tasks must be >= 0, got {self.max_train_tasks}")
        if self.max_examples is not None and self.max_examples < 0:
            raise ValueError(f"EvalConfig.max_examples must be >= 0, got {self.max_examples}")
        if not 0 < self.test_fraction <= 1:
            raise ValueError(
                f"EvalConfig.test_fraction must be in (0, 1], got {self.test_fraction}"
            )
        check_dtype(self.dtype, "EvalConfig.dtype")
        check_dtype(self.autocast, "EvalConfig.autocast", ("", *HALF_DTYPE_NAMES))
        for name in (
            "max_new_tokens",
            "max_length",
            "batch_tokens",
            "bootstrap_samples",
            "random_words",
            "check_max_new_tokens",
            "check_max_examples",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> EvalConfig:
    """Read a YAML config (or the defaults) and apply ``key=value`` overrides.

    Raises:
        ValueError: unknown key, malformed override, or an invalid value (naming the field).
    """
    data = read_config(EvalConfig, path, overrides)
    for key in ("out", "checkpoint", "loras_dir", "suite", "split", "autocast", "chat_prompts"):
        if data.get(key) is None and key in data:
            data[key] = ""
    try:
        return EvalConfig(**data)
    except TypeError as err:
        raise ValueError(str(err)) from err
