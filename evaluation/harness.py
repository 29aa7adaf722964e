"""The evaluation run: tasks x systems -> per-example scores -> results JSON, table and plot.

    results = run(load_config("evaluation/configs/smollm2.yaml"))

Every system sees the same sampled test examples of each task. Each (system, task) result is
cached as ``<out>/cache/<system>/<task>.json`` under a key hashing everything that determines it
(model weights, task file, example indices, the system's prompt prefix, adapter or condition,
scoring settings); a rerun reuses matching results and computes only what changed or is new
(e.g. a checkpoint that appeared or was retrained). Missing systems are never cached, so they
run as soon as their artifact exists.

Scores (see ``hypergen.metrics``): multiple choice by accuracy of the raw (summed
log-likelihood) pick, ``acc``, and of the length-normalised (per-token) pick, ``acc_norm``;
generative tasks by exact match ``em`` and ROUGE-L ``rougeL`` of the greedy answer. Each task's
headline metric is ``acc`` for multiple choice and, for generative tasks, ``em`` unless the task
file lists only text-overlap metrics (rouge, bleu, bleurt, sequence_f1), then ``rougeL``.

Per task group, besides each system's macro-average and paired Δ vs base: the paired differences
``generated - generated_other_task`` and ``generated - generated_random``, and with the description
in the prompt ``generated+desc - base+desc``, ``generated+desc - generated`` and ``base+desc -
base+other_desc`` (``PAIRED_COMPARISONS``),
the share of the oracle's gain over base that ``generated`` recovers, and the specificity of the
generated adapters (``evaluation.specificity``: cosines of their updates, delta-W for LoRA, across
the tasks' descriptions and to each task's random-string adapter). With ``generation_check`` on,
the generation check (``evaluation.generation_check``) runs too, with its own cache entries.

The checkpoint may emit either adapter kind (LoRA or bottleneck: ``HyperNetConfig.adapter_kind``):
the generated systems, the specificity report and the generation check apply and compare what it
emits, one adapter per row of each forward batch (``hypergen.adapters.apply``). The LoRA
baselines (``multitask_lora``, ``oracle_lora``) read their own PEFT library and do not depend on
the checkpoint's kind. A checkpoint's results are keyed by its hash, so adding the bottleneck kind
moved no LoRA score or cache key (``HARNESS_VERSION`` unchanged).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.cache import cache_path, load_cached, record_path, write_json
from evaluation.config import EvalConfig
from evaluation.report import GROUP_ORDER
from evaluation.scoring import ScoringConfig, greedy_answers, score_options, stop_token_ids
from evaluation.systems import (
    GeneratorSource,
    MissingArtifact,
    System,
    TaskSetup,
    build_systems,
    demonstrations_condition,
    draw_demonstrations,
    nearest_answer_pick,
    nearest_neighbours,
    random_words,
    takes_examples,
    task_description,
)
from hypergen.config import DTYPES
from hypergen.data.tasks import (
    MULTIPLE_CHOICE,
    Example,
    Task,
    load_split,
    load_suite,
    named_by,
    split_examples,
)
from hypergen.digests import file_sha256, sha256_json
from hypergen.metrics import bootstrap_ci, exact_match, rouge_l

logger = logging.getLogger(__name__)

HARNESS_VERSION = 1  # bump when scoring changes, to invalidate every cached result
# Bump when greedy decoding changes: invalidates the cached results of generation tasks only
# (multiple-choice scores do not decode). 2: the shared loop (hypergen.decoding), left-padded rows
# that leave the batch when done; the same tokens up to float rounding in near-ties.
DECODE_VERSION = 2
TEXT_OVERLAP_METRICS = ("rouge", "bleu", "bleurt", "sequence_f1")


@dataclass
class EvalTask:
    """One task as evaluated.

    Attributes:
        task: the loaded task.
        group: "heldout", "validation", "train" (from the split), "other" (named by the config
            only) or "suite" (no split given).
        train: the task's train examples (for the nearest-example baseline).
        test: the sampled test examples, in file order.
        indices: position of each test example in ``task.examples``.
        num_test: size of the test part before sampling.
        file_sha256: hash of the task file.
        metric: headline metric ("acc", "em" or "rougeL").
        max_new_tokens: generation budget (generative tasks).
    """

    task: Task
    group: str
    train: list[Example]
    test: list[Example]
    indices: list[int]
    num_test: int
    file_sha256: str
    metric: str
    max_new_tokens: int = 0

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def multiple_choice(self) -> bool:
        return self.task.kind == MULTIPLE_CHOICE


def headline_metric(task: Task) -> str:
    if task.kind == MULTIPLE_CHOICE:
        return "acc"
    names = {m.lower() for m in task.metrics}
    if "exact_str_match" not in names and names & set(TEXT_OVERLAP_METRICS):
        return "rougeL"
    return "em"


def resolve_paths(config: EvalConfig) -> dict[str, str]:
    """The suite and LoRA folders, with empty config paths falling back to $HYPERGEN_HOME."""
    from hypergen.layout import library_dir, suite_dir

    return {
        "suite": str(suite_dir(config.suite)),
        "loras_dir": str(library_dir(config.loras_dir)),
    }


def load_eval_tasks(config: EvalConfig, suite: str) -> list[EvalTask]:
    """Load the configured tasks, split their examples and sample the test examples.

    Sampling: ``max_examples`` test examples per task, drawn without replacement by
    ``random.Random(f"{seed}:{task}")`` and kept in file order; all of them when fewer.
    """
    split = load_split(config.split) if config.split else None
    wanted: list[str] | None
    if isinstance(config.tasks, list):
        wanted = list(config.tasks)
    elif split is None:
        wanted = None
    elif config.tasks == "heldout":
        wanted = list(split.heldout_tasks)
    elif config.tasks == "validation":
        wanted = list(split.validation_tasks)
        if not wanted:
            raise ValueError(f"{config.split} names no validation_tasks")
    else:
        train = list(split.train_tasks)
        if config.max_train_tasks and len(train) > config.max_train_tasks:
            rng = random.Random(f"{config.seed}:train-tasks")
            train = sorted(rng.sample(sorted(train), config.max_train_tasks))
        wanted = train if config.tasks == "train" else [*train, *split.heldout_tasks]
    max_prompt_chars = split.max_prompt_chars if split else None
    tasks = load_suite(suite, wanted, max_prompt_chars)
    if not tasks:
        raise ValueError(f"no tasks to evaluate in {suite} (tasks={config.tasks!r})")

    out = []
    for name, task in tasks.items():
        if split is not None:
            group = (
                "heldout"
                if named_by(name, split.heldout_tasks)
                else "validation"
                if named_by(name, split.validation_tasks)
                else "train"
                if named_by(name, split.train_tasks)
                else "other"
            )
            train, test = split.examples(task)
        else:
            group = "suite"
            train, test = split_examples(task, config.test_fraction, config.seed)
        if not test:
            logger.warning("task %s has no test examples; skipped", name)
            continue
        position = {id(ex): i for i, ex in enumerate(task.examples)}
        chosen = range(len(test))
        if config.max_examples and len(test) > config.max_examples:
            chosen = sorted(
                random.Random(f"{config.seed}:{name}").sample(range(len(test)), config.max_examples)
            )
        sampled = [test[i] for i in chosen]
        out.append(
            EvalTask(
                task=task,
                group=group,
                train=train,
                test=sampled,
                indices=[position[id(ex)] for ex in sampled],
                num_test=len(test),
                file_sha256=file_sha256(_task_file(suite, name)),
                metric=headline_metric(task),
            )
        )
    return out


def _task_file(suite: str, name: str) -> Path:
    """``<suite>/<name>/task.json``, or ``<suite>/task.json`` when the suite is one task's folder."""
    path = Path(suite) / name / "task.json"
    return path if path.is_file() else Path(suite) / "task.json"


def model_fingerprint(name: str) -> dict[str, Any]:
    """The base model's name and, for local folders, a hash of its config and weights."""
    from hypergen.models import resolve_model_path

    path = Path(resolve_model_path(name))
    if not path.is_dir():
        return {"name": name}
    digest = hashlib.sha256()
    for file in [path / "config.json", *sorted(path.glob("*.safetensors"))]:
        if file.is_file():
            digest.update(file.name.encode())
            digest.update(file_sha256(file).encode())
    return {"name": name, "path": record_path(path), "sha256": digest.hexdigest()}


def environment(num_threads: int) -> dict[str, Any]:
    import transformers

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    versions["numpy"] = np.__version__
    try:
        import peft

        versions["peft"] = peft.__version__
    except ImportError:
        pass
    return {
        "versions": versions,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads() if num_threads else None,
    }


# ---------------------------------------------------------------- one (system, task)


def _nearest_examples(et: EvalTask) -> list[dict[str, Any]]:
    if not et.train:
        raise MissingArtifact(f"task {et.name} has no train examples to look up")
    neighbours = nearest_neighbours([ex.input for ex in et.train], [ex.input for ex in et.test])
    position = {id(ex): i for i, ex in enumerate(et.task.examples)}
    rows = []
    for i, ex, j in zip(et.indices, et.test, neighbours):
        neighbour = et.train[j]
        row: dict[str, Any] = {"i": i, "nn": position[id(neighbour)]}
        if et.multiple_choice:
            pick = nearest_answer_pick(neighbour, ex)
            # the neighbour's answer is not an option here: fall back to a guess, scored at its
            # expected value, so the baseline sits at chance where nothing can be memorised
            hit = float(pick in ex.correct) if pick >= 0 else len(ex.correct) / len(ex.options)
            row.update(pick=pick, acc=hit, acc_norm=hit)
        else:
            pred = neighbour.references[0]
            row.update(
                pred=pred, em=exact_match(pred, ex.references), rougeL=rouge_l(pred, ex.references)
            )
        rows.append(row)
    return rows


def _model_examples(
    model, tokenizer, et: EvalTask, setup: TaskSetup, scoring: ScoringConfig, stop_ids, progress
) -> list[dict]:
    prompts = [setup.prompt(ex) for ex in et.test]
    rows = []
    if et.multiple_choice:
        scores = score_options(
            model,
            tokenizer,
            prompts,
            [ex.options for ex in et.test],
            setup.adapter,
            config=scoring,
            on_examples=progress,
        )
        for i, ex, s in zip(et.indices, et.test, scores):
            rows.append(
                {
                    "i": i,
                    "ll": [round(x, 4) for x in s.logliks],
                    "nt": list(s.num_tokens),
                    "raw": s.raw_pick,
                    "norm": s.normalized_pick,
                    "acc": float(s.raw_pick in ex.correct),
                    "acc_norm": float(s.normalized_pick in ex.correct),
                }
            )
    else:
        answers = greedy_answers(
            model,
            tokenizer,
            prompts,
            et.max_new_tokens,
            setup.adapter,
            config=scoring,
            stop_ids=stop_ids,
            on_examples=progress,
        )
        for i, ex, pred in zip(et.indices, et.test, answers):
            rows.append(
                {
                    "i": i,
                    "pred": pred,
                    "em": exact_match(pred, ex.references),
                    "rougeL": rouge_l(pred, ex.references),
                }
            )
    return rows


# ---------------------------------------------------------------- summaries


METRICS = {True: ("acc", "acc_norm"), False: ("em", "rougeL")}


def task_summary(
    et: EvalTask, record: dict[str, Any], num_samples: int, seed: int
) -> dict[str, Any]:
    """Mean and 95% interval of each metric of one (system, task), plus the per-example scores."""
    if record["status"] != "ok":
        return {"status": record["status"], "reason": record.get("reason", "")}
    rows = record["examples"]
    out: dict[str, Any] = {
        "status": "ok",
        "n": len(rows),
        "metrics": {},
        "scores": {},
        "seconds": record.get("seconds"),
    }
    for metric in METRICS[et.multiple_choice]:
        values = [row[metric] for row in rows]
        mean, lo, hi = bootstrap_ci(values, num_samples, seed)
        out["metrics"][metric] = {"mean": mean, "ci": [lo, hi]}
        out["scores"][metric] = [round(v, 4) for v in values]
    out["score"] = out["metrics"][et.metric]["mean"]
    if (
        rows and "pick" in rows[0]
    ):  # nearest example: how often the neighbour's answer was an option
        out["coverage"] = float(np.mean([row["pick"] >= 0 for row in rows]))
    for key in ("condition", "prompt_prefix", "info"):
        if record.get(key):
            out[key] = record[key]
    return out


def _macro(arrays: list[list[float]], num_samples: int, seed: int) -> dict[str, Any] | None:
    if not arrays:
        return None
    mean, lo, hi = bootstrap_ci(arrays, num_samples, seed)
    return {"mean": mean, "ci": [lo, hi], "tasks": len(arrays)}


# Paired comparisons reported per group besides Δ vs base: (system, minus this system).
PAIRED_COMPARISONS = (
    ("generated", "generated_other_task"),
    ("generated", "generated_random"),
    ("generated", "generated_english"),  # a description + language checkpoint's language effect
    # does the adapter add to the description in the prompt, and the description to the adapter?
    ("generated+desc", "base+desc"),
    ("generated+desc", "generated"),
    ("base+desc", "base+other_desc"),  # does the description's text in the prompt matter?
)


def paired_delta(
    tasks: list[EvalTask],
    results: dict[str, dict[str, dict]],
    system: str,
    other: str,
    num_samples: int,
    seed: int,
) -> dict[str, Any] | None:
    """Paired difference ``system - other`` on the tasks both ran on (same examples).

    Returns:
        None if either system is absent from ``results``; else the macro-average of per-example
        differences with its bootstrap interval (``mean``, ``ci``, ``tasks``; None when no task
        has both), the number of ``examples``, and ``per_task``: each task's mean difference with
        its interval and ``n``.
    """
    if system not in results or other not in results:
        return None
    a, b = results[system], results[other]
    both = [et for et in tasks if a[et.name]["status"] == "ok" and b[et.name]["status"] == "ok"]
    diffs = {
        et.name: list(np.subtract(a[et.name]["scores"][et.metric], b[et.name]["scores"][et.metric]))
        for et in both
    }
    per_task = {}
    for name, d in diffs.items():
        mean, lo, hi = bootstrap_ci(d, num_samples, seed)
        per_task[name] = {"mean": mean, "ci": [lo, hi], "n": len(d)}
    return {
        "system": system,
        "other": other,
        "delta": _macro(list(diffs.values()), num_samples, seed),
        "examples": sum(len(d) for d in diffs.values()),
        "per_task": per_task,
    }


def oracle_gain_recovered(
    tasks: list[EvalTask], results: dict[str, dict[str, dict]], system: str = "generated"
) -> dict[str, Any] | None:
    """Share of the oracle LoRA's gain over base that ``system`` recovers, on the tasks where
    base, the oracle and ``system`` all ran: (system - base) / (oracle - base), macro-averages.

    None when a system is absent or no task has all three; ``share`` is None when the oracle's
    gain is not positive.
    """
    names = (system, "oracle_lora", "base")
    if any(n not in results for n in names):
        return None
    common = [et for et in tasks if all(results[n][et.name]["status"] == "ok" for n in names)]
    if not common:
        return None
    macro = {n: float(np.mean([results[n][et.name]["score"] for et in common])) for n in names}
    gain, oracle_gain = macro[system] - macro["base"], macro["oracle_lora"] - macro["base"]
    return {
        "system": system,
        "tasks": len(common),
        "gain": gain,
        "oracle_gain": oracle_gain,
        "share": gain / oracle_gain if oracle_gain > 0 else None,
    }


def group_summary(
    tasks: list[EvalTask], results: dict[str, dict[str, dict]], num_samples: int, seed: int
) -> dict[str, Any]:
    """Macro-averages of each system over ``tasks`` (only the tasks it ran on), with intervals,
    and its paired difference to ``base`` on the tasks both ran on."""
    out = {}
    for system, per_task in results.items():
        ok = [et for et in tasks if per_task[et.name]["status"] == "ok"]
        missing = {et.name: per_task[et.name].get("reason", "") for et in tasks if et not in ok}
        entry: dict[str, Any] = {
            "tasks": len(tasks),
            "tasks_ok": len(ok),
            "missing": missing,
            "examples": sum(per_task[et.name]["n"] for et in ok),
            "score": _macro(
                [per_task[et.name]["scores"][et.metric] for et in ok], num_samples, seed
            ),
        }
        for metric, mc in (("acc", True), ("acc_norm", True), ("em", False), ("rougeL", False)):
            arrays = [per_task[et.name]["scores"][metric] for et in ok if et.multiple_choice == mc]
            entry[metric] = _macro(arrays, num_samples, seed)
        if "base" in results and system != "base":
            entry["delta_vs_base"] = paired_delta(
                tasks, results, system, "base", num_samples, seed
            )["delta"]
        out[system] = entry
    return out


def comparisons(
    tasks: list[EvalTask], results: dict[str, dict[str, dict]], num_samples: int, seed: int
) -> dict[str, Any]:
    """The group's paired comparisons (``PAIRED_COMPARISONS`` whose systems ran) and the share of
    the oracle's gain that ``generated`` recovers."""
    paired = [paired_delta(tasks, results, a, b, num_samples, seed) for a, b in PAIRED_COMPARISONS]
    return {
        "paired": [p for p in paired if p is not None],
        "oracle_gain_recovered": oracle_gain_recovered(tasks, results),
    }


def adapter_specificity(
    source: GeneratorSource,
    tasks: list[EvalTask],
    seed: int,
    num_random_words: int,
    demonstrations: int = 4,
) -> dict[str, Any]:
    """``evaluation.specificity`` of the adapters generated for ``tasks``: from each task's own
    description (the ``generated`` condition) and from its random string (``generated_random``),
    each with the task's language for a description + language checkpoint. An examples checkpoint
    generates from the task's ``demonstrations`` (those of ``generated_demos``) against as many
    demonstrations of random words.

    Returns:
        The specificity report, or ``{"status": "missing", "reason": ...}`` without a checkpoint.
        Tasks without a description (or too few train examples) are left out and listed under
        ``skipped``.
    """
    from evaluation.specificity import specificity

    try:
        generator = source.get()
        if takes_examples(generator.condition_parts):
            conditions = _demonstration_conditions(generator.condition_parts, demonstrations)
        else:
            source.condition("")  # does the checkpoint take a description (+ a language)?
            conditions = _description_conditions(source)
    except MissingArtifact as err:
        return {"status": "missing", "reason": str(err)}
    names, own, noise, skipped = [], [], [], []
    for et in tasks:
        try:
            task_own, task_noise = conditions(et, seed, num_random_words)
        except MissingArtifact:
            skipped.append(et.name)
            continue
        names.append(et.name)
        own.append(task_own)
        noise.append(task_noise)
    if not names:
        return {"status": "missing", "reason": "no evaluated task has a condition to generate from"}

    def generate(conditions: list, chunk: int = 32):  # bounded memory
        parts = [
            generator.generate(conditions[k : k + chunk]) for k in range(0, len(conditions), chunk)
        ]
        return type(parts[0]).cat(parts)  # LoraWeights or BottleneckWeights, as the checkpoint

    report = specificity(names, generate(own), generate(noise))
    if skipped:
        report["skipped"] = skipped
    return report


def _description_conditions(source: GeneratorSource):
    """(own, random) conditions of a task for a description (+ language) checkpoint."""

    def conditions(et: EvalTask, seed: int, num_random_words: int):
        own = source.condition(task_description(et.task), et.name)
        return own, source.condition(random_words(seed, et.name, num_random_words), et.name)

    return conditions


def _demonstration_conditions(parts: tuple[str, ...], k: int):
    """(own, random) conditions of a task for an examples checkpoint: its ``k`` demonstrations,
    and ``k`` pairs of random words (with a random-string description where it takes one)."""

    def conditions(et: EvalTask, seed: int, num_random_words: int):
        demos = draw_demonstrations(et.train, k, seed, et.name)
        own = demonstrations_condition(
            parts, [(ex.input, ex.completion.strip()) for ex in demos], task_description(et.task)
        )
        words = [
            (
                random_words(seed, f"{et.name}:input:{j}", num_random_words),
                random_words(seed, f"{et.name}:output:{j}", 2),
            )
            for j in range(k)
        ]
        noise = demonstrations_condition(
            parts, words, random_words(seed, et.name, num_random_words)
        )
        return own, noise

    return conditions


# ---------------------------------------------------------------- the run


def _max_new_tokens(tokenizer, task: Task, cap: int) -> int:
    """Room for the longest reference in the task file (+2 tokens), at most ``cap``."""
    longest = max(
        len(tokenizer(" " + ref, add_special_tokens=False).input_ids)
        for ex in task.examples
        for ref in ex.references
    )
    return max(1, min(cap, longest + 2))


@dataclass
class RunSetup:
    """Everything one evaluation run works with, built by ``setup_run`` in dependency order."""

    config: EvalConfig
    paths: dict[str, str]
    out: Path
    tasks: list[EvalTask]
    model: Any
    tokenizer: Any
    model_record: dict[str, Any]
    scoring: ScoringConfig
    scoring_key: dict[str, Any]
    stop_ids: set[int]
    systems: list[System]
    source: GeneratorSource
    counts: dict[str, int] = field(
        default_factory=lambda: {"computed": 0, "reused": 0, "missing": 0}
    )


def run(config: EvalConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """Evaluate ``config.systems`` on ``config.tasks`` and write the results folder.

    Args:
        config: the run's config.
        model: an already loaded LM to use instead of ``config.base_model`` (tests).
        tokenizer: its tokenizer.

    Returns:
        The results dictionary also written to ``<out>/results.json``.
    """
    start = time.perf_counter()
    setup = setup_run(config, model, tokenizer)
    records = evaluate_systems(setup)
    check = generation_check(setup)
    results = summarize(setup, records, check)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    write_results(results, setup.out)
    logger.info("wrote %s (%s)", setup.out, setup.counts)
    return results


def setup_run(config: EvalConfig, model=None, tokenizer=None) -> RunSetup:
    """Paths, tasks, the LM (loaded unless given), scoring settings and the systems."""
    from hypergen.models import load_base_model

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    paths = resolve_paths(config)
    tasks = load_eval_tasks(config, paths["suite"])
    logger.info("evaluating %d tasks x %d systems", len(tasks), len(config.systems))
    if model is None:
        model, tokenizer = load_base_model(
            config.base_model, dtype=DTYPES[config.dtype], device=config.device
        )
    model_record = model_fingerprint(config.base_model)
    for et in tasks:
        if not et.multiple_choice:
            et.max_new_tokens = _max_new_tokens(tokenizer, et.task, config.max_new_tokens)
    scoring = ScoringConfig(
        batch_tokens=config.batch_tokens,
        max_length=config.max_length,
        autocast_dtype=DTYPES[config.autocast] if config.autocast else None,
    )
    stop_ids = stop_token_ids(tokenizer) if any(not et.multiple_choice for et in tasks) else set()
    systems, source = build_systems(
        config.systems,
        model,
        [et.task for et in tasks],
        config.checkpoint,
        paths["loras_dir"],
        seed=config.seed,
        num_random_words=config.random_words,
        device=config.device,
        train_examples={et.task.name: et.train for et in tasks},
        demonstrations=config.demonstrations,
        task_languages=config.task_languages,
    )
    scoring_key = {
        "harness": HARNESS_VERSION,
        "model": model_record.get("sha256", model_record["name"]),
        "dtype": config.dtype,
        "autocast": config.autocast,
        "max_length": config.max_length,
    }
    return RunSetup(
        config=config,
        paths=paths,
        out=Path(config.out),
        tasks=tasks,
        model=model,
        tokenizer=tokenizer,
        model_record=model_record,
        scoring=scoring,
        scoring_key=scoring_key,
        stop_ids=stop_ids,
        systems=systems,
        source=source,
    )


def evaluate_systems(setup: RunSetup) -> dict[str, dict[str, dict]]:
    """Every (system, task) record, from the cache where its key matches: system -> task -> record."""
    from tqdm.auto import tqdm

    tasks, systems = setup.tasks, setup.systems
    total = len(systems) * sum(len(et.test) for et in tasks)
    bar = tqdm(total=total, unit="ex", disable=not setup.config.progress, dynamic_ncols=True)
    records: dict[str, dict[str, dict]] = {s.name: {} for s in systems}
    try:
        for system in systems:
            for et in tasks:
                bar.set_description(f"{system.name} | {et.name}"[:60])
                records[system.name][et.name] = _evaluate_one(setup, system, et, bar)
    finally:
        bar.close()
    return records


def generation_check(setup: RunSetup) -> dict[str, Any] | None:
    """The generation check's report (``evaluation.generation_check``), or None when off."""
    config = setup.config
    if not config.generation_check:
        return None
    from evaluation.generation_check import DEFAULT_CHAT_PROMPTS, run_check

    return run_check(
        setup.model,
        setup.tokenizer,
        setup.tasks,
        setup.source,
        config.chat_prompts or DEFAULT_CHAT_PROMPTS,
        config.check_max_new_tokens,
        config.check_max_examples,
        setup.scoring,
        setup.scoring_key,
        setup.out,
        setup.counts,
    )


def summarize(
    setup: RunSetup, records: dict[str, dict[str, dict]], check: dict[str, Any] | None
) -> dict[str, Any]:
    """The results dictionary: provenance, per-task scores, group summaries and comparisons."""
    config, tasks, systems, source = setup.config, setup.tasks, setup.systems, setup.source
    per_system = {
        s.name: {
            et.name: task_summary(
                et, records[s.name][et.name], config.bootstrap_samples, config.seed
            )
            for et in tasks
        }
        for s in systems
    }
    groups = sorted({et.group for et in tasks}, key=lambda g: GROUP_ORDER.index(g))
    by_group = {g: [et for et in tasks if et.group == g] for g in groups}
    specificity = {  # before the checkpoint record below: this loads the checkpoint if nothing did
        g: adapter_specificity(
            source, by_group[g], config.seed, config.random_words, config.demonstrations
        )
        for g in groups
    }
    samples, seed = config.bootstrap_samples, config.seed
    return {
        "harness_version": HARNESS_VERSION,
        "decode_version": DECODE_VERSION,
        "config": _portable_config(config),
        "paths": {k: record_path(v) for k, v in setup.paths.items()},
        "model": setup.model_record,
        "checkpoint": source.meta
        or {"path": config.checkpoint, "error": source.error or "not loaded"},
        "data": _data_record(setup),
        "sampling": {
            "rule": "random.Random(f'{seed}:{task}').sample(test part, max_examples), kept in file order",
            "seed": config.seed,
            "max_examples": config.max_examples,
        },
        "systems": {s.name: s.summary for s in systems},
        "tasks": {et.name: _task_record(et) for et in tasks},
        "results": per_system,
        "summary": {g: group_summary(by_group[g], per_system, samples, seed) for g in groups},
        "comparisons": {g: comparisons(by_group[g], per_system, samples, seed) for g in groups},
        "specificity": specificity,
        "generation_check": check or {"status": "off"},
        "environment": environment(config.num_threads),
        "cache": setup.counts,
        "compute_seconds": round(
            sum(r.get("seconds", 0.0) for s in records.values() for r in s.values())
            + (check["seconds"] if check else 0.0),
            1,
        ),
    }


# config keys that may name files or folders: recorded portably, like ``paths``
PATH_KEYS = ("out", "base_model", "checkpoint", "loras_dir", "suite", "split", "chat_prompts")


def _portable_config(config: EvalConfig) -> dict[str, Any]:
    """The config as results record it: paths under the home or the repo made portable (a model
    or checkpoint given by name stays as given)."""
    record = config.to_dict()
    for key in PATH_KEYS:
        value = record.get(key)
        if value and Path(os.path.expanduser(value)).exists():
            record[key] = record_path(value)
    return record


def _data_record(setup: RunSetup) -> dict[str, Any]:
    files = {et.name: et.file_sha256 for et in setup.tasks}
    return {
        "suite": record_path(setup.paths["suite"]),
        "split": setup.config.split or None,
        "version": sha256_json(files),
        "files": files,
    }


def _task_record(et: EvalTask) -> dict[str, Any]:
    return {
        "group": et.group,
        "kind": et.task.kind,
        "metric": et.metric,
        "n_test": et.num_test,
        "n_sampled": len(et.test),
        "n_train": len(et.train),
        "max_new_tokens": et.max_new_tokens or None,
        "indices": et.indices,
    }


def write_results(results: dict[str, Any], out: Path) -> None:
    """``results.json``, ``results.md`` and ``scores.png`` in ``out``."""
    from evaluation.report import plot_scores, write_markdown

    write_json(out / "results.json", results, indent=1)
    write_markdown(results, out / "results.md")
    plot_scores(results, out / "scores.png")


def _evaluate_one(setup: RunSetup, system: System, et: EvalTask, bar) -> dict:
    """One (system, task): its cached result if the key matches, else compute and cache it."""
    model, tokenizer, scoring = setup.model, setup.tokenizer, setup.scoring
    scoring_key = setup.scoring_key
    stop_ids, out, counts = setup.stop_ids, setup.out, setup.counts
    try:
        setup = system.setup(et.task)
    except MissingArtifact as err:
        counts["missing"] += 1
        bar.update(len(et.test))
        logger.info("%s on %s: missing (%s)", system.name, et.name, err)
        return {"status": "missing", "reason": str(err)}
    key_data = {
        "system": system.name,
        "setup": setup.fingerprint,
        "task_file": et.file_sha256,
        "examples": et.indices,
        "max_new_tokens": et.max_new_tokens,
        **(scoring_key if system.uses_model else {"harness": scoring_key["harness"]}),
        **({} if et.multiple_choice else {"decode": DECODE_VERSION}),
    }
    key = sha256_json(key_data)
    path = cache_path(out, system.name, et.name)
    cached = load_cached(path, key)
    if cached is not None:
        counts["reused"] += 1
        bar.update(len(et.test))
        cached["info"] = setup.info  # today's facts (paths move between machines, the key does not)
        return cached
    started = time.perf_counter()
    try:
        if system.uses_model:
            rows = _model_examples(model, tokenizer, et, setup, scoring, stop_ids, bar.update)
        else:
            rows = _nearest_examples(et)
            bar.update(len(rows))
    except MissingArtifact as err:
        counts["missing"] += 1
        bar.update(len(et.test))
        return {"status": "missing", "reason": str(err)}
    record = {
        "key": key,
        "status": "ok",
        "system": system.name,
        "task": et.name,
        "condition": setup.condition,
        "prompt_prefix": setup.prompt_prefix,
        "info": setup.info,
        "seconds": round(time.perf_counter() - started, 2),
        "examples": rows,
    }
    write_json(path, record)
    counts["computed"] += 1
    return record
