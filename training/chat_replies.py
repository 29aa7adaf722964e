"""The base model's own correct chat replies, kept as chat-format training targets.

    python training/chat_replies.py [key=value ...]      # make chat-replies

BIG-bench completions are terse ("Canberra", "B", "positive"). Trained on them in the chat format,
adapters taught the chat model to answer in one word, and often wrongly: "What is the capital city
of Australia?" got "Queensland" with the adapter and "The capital city of Australia is Canberra."
without it. The service's chat users want the second kind of reply.

This script asks the frozen base model each training task's first questions through the chat
template (greedy) and keeps a reply only when it is right and well-formed: it contains the
reference answer as whole words, ends by itself within ``max_new_tokens``, and does not loop.
Meta-training (``chat_replies:`` in its config) then trains the chat format on these replies: long,
natural, in the base model's own voice, and correct, so an adapter learns the task without
unlearning how the chat model talks. Tasks without a kept reply keep their reference completions.

Held-out tasks are never asked (their examples stay unseen by training).

Output (JSON): ``{"config": {...}, "replies": {task: [{"prompt", "reference", "reply"}, ...]},
"asked": N, "kept": M}``; default ``$HYPERGEN_HOME/data/chat_replies.json`` (options:
``training.config.ChatRepliesConfig``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from hypergen.data.tasks import Example
from hypergen.metrics import contains_reference, distinct_bigram_ratio, normalize_text
from hypergen.models import load_base_model
from training.config import ChatRepliesConfig, load_config
from training.data import load_task_data
from training.formats import chat_question

logger = logging.getLogger(__name__)


def references(example: Example) -> list[str]:
    """The answers a correct reply must state: a generative task's references, or the correct
    multiple-choice option. One-character answers ("a", "B", "1") are dropped: as words they
    appear in replies that do not give them."""
    refs = (
        list(example.references)
        or [example.options[i] for i in example.correct]
        or [example.completion]
    )
    return [r for r in (normalize_text(r) for r in refs) if len(r) > 1]


def wrong_answers(example: Example) -> list[str]:
    """A multiple-choice example's other options, as words; those inside a correct one ("ironic" in
    "not ironic") are left out, since a correct reply contains them too."""
    right = [normalize_text(example.options[i]) for i in example.correct]
    wrong = [normalize_text(o) for i, o in enumerate(example.options) if i not in example.correct]
    return [w for w in wrong if len(w) > 1 and not any(f" {w} " in f" {r} " for r in right)]


# Answers a reply can contain while saying the opposite ("The claim is not true."): they count only
# as the reply's first word.
_VERDICTS = {"yes", "no", "true", "false"}


def is_kept(reply: str, refs: Sequence[str], ended: bool, wrong: Sequence[str] = ()) -> bool:
    """A reply worth training on: it ended by itself, does not loop, states a reference and no
    wrong option (a reply that lists every option is not an answer)."""
    ratio = distinct_bigram_ratio(reply)
    if not ended or not reply.strip() or (ratio is not None and ratio < 0.5):
        return False
    if wrong and contains_reference(reply, wrong):
        return False
    first = normalize_text(reply).split(" ", 1)[0]
    return any(first == r if r in _VERDICTS else contains_reference(reply, [r]) for r in refs)


@torch.no_grad()
def chat_replies(
    model, tokenizer, questions: Sequence[str], max_new_tokens: int, batch_size: int
) -> list[tuple[str, bool]]:
    """Greedy chat replies to ``questions``: (reply text, ended before the cap)."""
    out = []
    for start in tqdm(range(0, len(questions), batch_size), desc="chat replies", leave=False):
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            )
            for q in questions[start : start + batch_size]
        ]
        # left padding (decoder-only batches grow on the right), per call: the tokenizer is
        # shared and its own padding_side stays as it was
        batch = tokenizer(
            texts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        ).to(model.device)
        tokens = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )[:, batch["input_ids"].shape[1] :]
        for row in tokens.tolist():
            ended = tokenizer.eos_token_id in row
            row = row[: row.index(tokenizer.eos_token_id)] if ended else row
            out.append((tokenizer.decode(row, skip_special_tokens=True).strip(), ended))
    return out


def load_chat_examples(path: Path, tasks: Sequence[str]) -> dict[str, list[Example]]:
    """Task -> examples whose completion is a kept reply, for the given (training) tasks only."""
    try:
        record = json.loads(Path(path).read_text())
        replies = record["replies"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"cannot read chat replies from {path} (training/chat_replies.py writes it): {err}"
        ) from err
    wanted = set(tasks)
    return {
        task: [
            Example(input=r["prompt"], prompt=r["prompt"], completion=" " + r["reply"])
            for r in rows
        ]
        for task, rows in replies.items()
        if task in wanted and rows
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="YAML config (optional; defaults: ChatRepliesConfig)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(ChatRepliesConfig, args.config, args.overrides)
    except ValueError as err:
        parser.error(str(err))
    out = cfg.output_file
    if out.exists() and not cfg.overwrite:
        print(f"error: {out} exists; pass overwrite=true to replace it", file=sys.stderr)
        return 2
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)

    data = load_task_data(cfg.split, cfg.suite_dir)
    tasks = data.train_tasks[: cfg.max_tasks] if cfg.max_tasks else data.train_tasks
    asked = [
        (task, e)
        for task in tasks
        for e in data.train_examples[task][: cfg.examples_per_task]
        if len(chat_question(e.prompt)) <= cfg.max_question_chars and references(e)
    ]
    device = "cuda" if torch.cuda.is_available() and not cfg.cpu else "cpu"
    model, tokenizer = load_base_model(cfg.base_model, device=device)
    # Longest first: batches of similar length waste less on padding.
    order = sorted(range(len(asked)), key=lambda i: -len(asked[i][1].prompt))
    questions = [chat_question(asked[i][1].prompt) for i in order]
    replies = chat_replies(model, tokenizer, questions, cfg.max_new_tokens, cfg.batch_size)
    kept: dict[str, list[dict]] = {}
    for i, (reply, ended) in zip(order, replies):
        task, example = asked[i]
        if is_kept(reply, references(example), ended, wrong_answers(example)):
            kept.setdefault(task, []).append(
                {"prompt": example.prompt, "reference": example.completion, "reply": reply}
            )
    record = {
        "config": asdict(cfg),
        "asked": len(asked),
        "kept": sum(map(len, kept.values())),
        "tasks_with_replies": len(kept),
        "replies": {t: kept[t] for t in sorted(kept)},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(out)
    print(f"kept {record['kept']} of {record['asked']} replies ({len(kept)} tasks) -> {out}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
