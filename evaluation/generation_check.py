"""The generation check: does a generated adapter keep free generation sane?

Two kinds of sets, each run once without an adapter ("without", the frozen LM) and once with the
adapter generated from each prompt's description ("with"):

    chat      the fixed prompts of ``chat_prompts.yaml`` (each a user message with a matching task
              description), formatted by the tokenizer's chat template with the generation prompt
    <task>    each generative task among the evaluated ones: its first ``check_max_examples``
              sampled test examples, plain prompts (``Q: ... A:``), the task's own description

Decoding is greedy, at most ``check_max_new_tokens`` new tokens, stopping only at the tokenizer's
and generation config's end-of-sequence ids (``hypergen.decoding.eos_token_ids``), never at newlines: a
reply that loops runs to the cap. Per reply: the distinct-bigram ratio of its whitespace tokens
(``metrics.distinct_bigram_ratio``; replies of fewer than two words have none and are counted as
``short``), whether it ended by itself (end-of-sequence before the cap), whether it loops
(distinct-bigram ratio below ``LOOP_THRESHOLD``), and where references exist, exact match of its
first line and whether it contains a reference (``metrics.contains_reference``). Per set and side:
the means; per set: ``distinct_ratio`` = mean ratio with / mean ratio without (target >= 0.9).

Each (side, set) is a cache entry ``<out>/cache/generation_check/<side>/<set>.json`` keyed like the
systems' entries, so a new checkpoint recomputes only the "with" side. Chat replies are reported in
full (the prompts are ours); replies to task examples stay in the local cache (task-derived text).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from evaluation.cache import cache_path, load_cached, record_path, write_json
from evaluation.scoring import ScoringConfig, greedy_generations
from evaluation.systems import GeneratorSource, MissingArtifact, task_description
from hypergen.config import check_keys
from hypergen.decoding import eos_token_ids
from hypergen.digests import sha256_json
from hypergen.metrics import contains_reference, distinct_bigram_ratio, exact_match

if TYPE_CHECKING:  # the harness imports this module
    from evaluation.harness import EvalTask

logger = logging.getLogger(__name__)

# bump when the check's decoding or metrics change, to invalidate its cache (2: hypergen.decoding)
CHECK_VERSION = 2
DEFAULT_CHAT_PROMPTS = Path(__file__).parent / "chat_prompts.yaml"
LOOP_THRESHOLD = 0.5  # a reply loops if fewer than half of its word bigrams are distinct
SIDES = ("without", "with")


@dataclass(frozen=True)
class ChatPrompt:
    """One chat prompt of the check.

    Attributes:
        name: short id (unique in the file).
        description: the task description the "with" adapter is generated from.
        prompt: the user message.
        references: acceptable answers (may be empty).
    """

    name: str
    description: str
    prompt: str
    references: tuple[str, ...] = ()


def load_chat_prompts(path: str | Path) -> list[ChatPrompt]:
    """Read a prompts file (``prompts:`` list of name, description, prompt, optional references).

    Raises:
        ValueError: a missing or empty field, an unknown field, or a repeated name.
    """
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    entries = data.get("prompts") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: needs a non-empty 'prompts' list")
    out, seen = [], set()
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: prompts[{k}] must be a mapping")  # noqa: TRY004 (a file error)
        check_keys(entry, ("name", "description", "prompt", "references"), f"{path}: prompts[{k}]")
        for key in ("name", "description", "prompt"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise ValueError(f"{path}: prompts[{k}].{key} must be a non-empty string")
        references = entry.get("references") or []
        if not isinstance(references, list):
            raise ValueError(f"{path}: prompts[{k}].references must be a list")  # noqa: TRY004
        if entry["name"] in seen:
            raise ValueError(f"{path}: prompts[{k}].name {entry['name']!r} is repeated")
        seen.add(entry["name"])
        out.append(
            ChatPrompt(
                entry["name"],
                entry["description"].strip(),
                " ".join(entry["prompt"].split()),
                tuple(str(r) for r in references),
            )
        )
    return out


@dataclass
class CheckSet:
    """The prompts of one set of the check.

    Attributes:
        name: "chat" or the task's name.
        kind: "chat" or "task".
        group: the task's group (None for chat).
        ids: one id per item (chat prompt names, or example indices in the task file).
        prompts: the text fed to the LM.
        descriptions: the condition of each item's "with" adapter.
        references: each item's references (may be empty).
        shown: what a reader sees of each item (the user message; None for task examples).
    """

    name: str
    kind: str
    group: str | None
    ids: list[Any]
    prompts: list[str]
    descriptions: list[str]
    references: list[list[str]]
    shown: list[str] | None = None


def chat_set(tokenizer, prompts: Sequence[ChatPrompt]) -> CheckSet:
    """The chat prompts, formatted by the tokenizer's chat template with the generation prompt
    (as ``/v1/chat/completions`` formats them)."""
    if not getattr(tokenizer, "chat_template", None):
        raise MissingArtifact("the base model's tokenizer has no chat template")
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    return CheckSet(
        name="chat",
        kind="chat",
        group=None,
        ids=[p.name for p in prompts],
        prompts=texts,
        descriptions=[p.description for p in prompts],
        references=[list(p.references) for p in prompts],
        shown=[p.prompt for p in prompts],
    )


def task_set(et: EvalTask, max_examples: int) -> CheckSet:
    """A generative task's first ``max_examples`` sampled test examples, plain prompts, and its
    own description (``systems.task_description``; "" when it has none: the "with" side is then
    missing)."""
    try:
        description = task_description(et.task)
    except MissingArtifact:
        description = ""
    examples = et.test[:max_examples]
    return CheckSet(
        name=et.name,
        kind="task",
        group=et.group,
        ids=et.indices[: len(examples)],
        prompts=[ex.prompt for ex in examples],
        descriptions=[description] * len(examples),
        references=[list(ex.references) for ex in examples],
    )


# ---------------------------------------------------------------- metrics


def reply_scores(text: str, references: Sequence[str]) -> dict[str, Any]:
    """One reply's scores: distinct-bigram ratio (None under two words), loops, and with
    references exact match of the first line and contains-reference."""
    ratio = distinct_bigram_ratio(text)
    out: dict[str, Any] = {
        "distinct": None if ratio is None else round(ratio, 4),
        "loops": ratio is not None and ratio < LOOP_THRESHOLD,
    }
    if references:
        first_line = text.split("\n")[0]
        out["em"] = exact_match(first_line, references)
        out["contains"] = contains_reference(text, references)
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def side_summary(
    rows: Sequence[dict[str, Any]], references: Sequence[Sequence[str]]
) -> dict[str, Any]:
    """Means over one side's replies.

    Args:
        rows: one ``{"text", "num_tokens", "ended"}`` per item.
        references: each item's references.

    Returns:
        ``distinct_bigrams`` (mean over replies of >= 2 words), ``short`` (replies of < 2 words),
        ``ended`` (share ending by themselves), ``loops`` (share looping), ``tokens`` (mean new
        tokens), ``em`` / ``contains`` (means over items with references; None without any), and
        ``n`` / ``n_references``.
    """
    scores = [reply_scores(row["text"], refs) for row, refs in zip(rows, references)]
    ratios = [s["distinct"] for s in scores if s["distinct"] is not None]
    with_refs = [s for s in scores if "em" in s]
    return {
        "n": len(rows),
        "distinct_bigrams": _mean(ratios),
        "short": len(rows) - len(ratios),
        "ended": _mean([float(row["ended"]) for row in rows]),
        "loops": _mean([float(s["loops"]) for s in scores]),
        "tokens": _mean([float(row["num_tokens"]) for row in rows]),
        "n_references": len(with_refs),
        "em": _mean([s["em"] for s in with_refs]),
        "contains": _mean([s["contains"] for s in with_refs]),
    }


def set_summary(
    check_set: CheckSet, records: dict[str, dict[str, Any]], public: bool
) -> dict[str, Any]:
    """One set's report: each side's summary (or why it is missing), the ratio of distinct-bigram
    ratios, and, when ``public``, every reply with its scores."""
    out: dict[str, Any] = {
        "kind": check_set.kind,
        "group": check_set.group,
        "n": len(check_set.ids),
    }
    for side in SIDES:
        record = records[side]
        if record["status"] != "ok":
            out[side] = {"status": record["status"], "reason": record.get("reason", "")}
        else:
            out[side] = {"status": "ok", **side_summary(record["rows"], check_set.references)}
    both = [out[side].get("distinct_bigrams") for side in SIDES]
    out["distinct_ratio"] = both[1] / both[0] if both[0] and both[1] is not None else None
    if public:
        replies = []
        for k, item in enumerate(check_set.ids):
            reply: dict[str, Any] = {
                "id": item,
                "prompt": check_set.shown[k] if check_set.shown else None,
                "description": check_set.descriptions[k],
                "references": check_set.references[k],
            }
            for side in SIDES:
                if records[side]["status"] == "ok":
                    row = records[side]["rows"][k]
                    reply[side] = {
                        **row,
                        **reply_scores(row["text"], check_set.references[k]),
                    }
            replies.append(reply)
        out["replies"] = replies
    return out


# ---------------------------------------------------------------- running it


def _with_adapters(check_set: CheckSet, source: GeneratorSource):
    """The generator, the distinct conditions to generate from (with a description + language
    checkpoint, each with the task's language; chat prompts: the table's default), and each
    item's adapter index."""
    if not all(check_set.descriptions):
        raise MissingArtifact(f"task {check_set.name} has no description")
    generator = source.get()
    task = check_set.name if check_set.kind == "task" else None
    distinct = sorted(set(check_set.descriptions))
    conditions = [source.condition(d, task) for d in distinct]
    return generator, conditions, [distinct.index(d) for d in check_set.descriptions]


def run_check(
    model,
    tokenizer,
    tasks: Sequence[EvalTask],
    source: GeneratorSource,
    prompts_path: str | Path,
    max_new_tokens: int,
    max_examples: int,
    scoring: ScoringConfig,
    scoring_key: dict[str, Any],
    out: str | Path,
    counts: dict[str, int],
) -> dict[str, Any]:
    """Run the check on the chat prompts and the generative ``tasks``; cache each (side, set).

    Args:
        model, tokenizer: the frozen LM.
        tasks: the evaluated tasks (the generative ones get a set each).
        source: the hypernetwork checkpoint (a missing one makes every "with" side missing).
        prompts_path: the chat prompts file.
        max_new_tokens: reply cap in tokens.
        max_examples: examples per generative task.
        scoring: batching, truncation and autocast.
        scoring_key: the harness's scoring key (model hash, dtype, ...), part of every cache key.
        out: results folder (``cache/generation_check/`` goes there).
        counts: the harness's computed / reused / missing counters, updated.

    Returns:
        The ``generation_check`` entry of ``results.json``.
    """
    stop_ids = eos_token_ids(tokenizer, model)
    sets: list[tuple[CheckSet | None, str, str]] = []  # (set, name, reason if it cannot run)
    try:
        sets.append((chat_set(tokenizer, load_chat_prompts(prompts_path)), "chat", ""))
    except MissingArtifact as err:
        sets.append((None, "chat", str(err)))
    for et in tasks:
        if not et.multiple_choice:
            sets.append((task_set(et, max_examples), et.name, ""))

    report: dict[str, Any] = {
        "settings": {
            "max_new_tokens": max_new_tokens,
            "stop_ids": sorted(stop_ids),
            "decoding": "greedy; stops only at end-of-sequence ids",
            "max_examples_per_task": max_examples,
            "chat_prompts": record_path(prompts_path),
            "loop_threshold": LOOP_THRESHOLD,
        },
        "sets": {},
    }
    seconds = 0.0
    for check_set, name, reason in sets:
        if check_set is None:
            report["sets"][name] = {"kind": name, "status": "missing", "reason": reason}
            counts["missing"] += 1
            continue
        base_key = {
            **scoring_key,
            "check": CHECK_VERSION,
            "set": name,
            "prompts": check_set.prompts,
            "max_new_tokens": max_new_tokens,
            "stop_ids": sorted(stop_ids),
        }
        records: dict[str, dict[str, Any]] = {}
        for side in SIDES:
            key_data = {**base_key, "side": side}
            adapters, index = None, None
            if side == "with":
                try:
                    generator, conditions, index = _with_adapters(check_set, source)
                except MissingArtifact as err:
                    records[side] = {"status": "missing", "reason": str(err)}
                    counts["missing"] += 1
                    continue
                key_data.update(checkpoint=source.meta["hash"], descriptions=check_set.descriptions)
                if not all(isinstance(c, str) for c in conditions):  # with their languages
                    key_data["conditions"] = conditions
            key = sha256_json(key_data)
            path = cache_path(out, f"generation_check/{side}", name)
            record = load_cached(path, key)
            if record is not None:
                counts["reused"] += 1
            else:
                started = time.perf_counter()
                if side == "with":
                    adapters = generator.generate(conditions)
                replies = greedy_generations(
                    model,
                    tokenizer,
                    check_set.prompts,
                    max_new_tokens,
                    adapters,
                    index,
                    config=scoring,
                    stop_ids=stop_ids,
                )
                record = {
                    "key": key,
                    "status": "ok",
                    "set": name,
                    "side": side,
                    "ids": check_set.ids,
                    "seconds": round(time.perf_counter() - started, 2),
                    "rows": [
                        {"text": r.text, "num_tokens": r.num_tokens, "ended": r.ended}
                        for r in replies
                    ],
                }
                write_json(path, record)
                counts["computed"] += 1
            seconds += record.get("seconds", 0.0)
            records[side] = record
        report["sets"][name] = set_summary(check_set, records, public=check_set.kind == "chat")
        report["sets"][name]["status"] = "ok"
    report["seconds"] = round(seconds, 1)
    return report
