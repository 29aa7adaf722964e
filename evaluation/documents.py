"""Document-conditioned adapters on the synthetic fact documents (``hypergen.data.fact_documents``).

    python -m evaluation.documents --checkpoint DIR [--documents 400 --heldout 50 --seed 0] \\
        [--group heldout|train] [--out results/documents.json]

Four systems answer each held-out document's test questions (greedy, one line):

    base                       the frozen LM, the question alone (the floor: the facts are invented)
    base+document              the frozen LM, the document then the question (the ceiling:
                               in-context reading), in the model's chat template when it has one
    generated                  the question alone, with the adapter generated from the document
    generated_other_document   the question alone, with the adapter of the next evaluated
                               document (cyclically): what an adapter gives without this
                               document's facts (the answer format, the kind of name asked for)

Reported: exact match and contains-reference accuracy per system (the chat ceiling answers in
sentences: read its ``contains``), and prompt tokens per question; ``tokens_saved`` is the
document's own tokens, what every question's prompt carries without the adapter (the document is
encoded once into an adapter instead). ``--documents``, ``--heldout``
and ``--seed`` must be those of the training run (``training/configs/document_smollm2.yaml``),
so the held-out documents are the ones it never saw. ``--group train`` asks the same questions
(the last ``test_questions`` of each) of training documents instead: questions meta-training saw,
so it measures how well the adapters fit what they were trained on, not generalisation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from evaluation.scoring import greedy_answers, stop_token_ids
from hypergen.data.fact_documents import fact_corpus, question_examples
from hypergen.generator import AdapterGenerator
from hypergen.metrics import contains_reference, exact_match
from hypergen.models import load_base_model

SYSTEMS = ("base", "base+document", "generated", "generated_other_document")
GROUPS = ("heldout", "train")


def ceiling_prompt(tokenizer, document: str, question: str, plain_prompt: str) -> str:
    """The ``base+document`` prompt: the document and the question in the chat template, asking
    for a short answer, for a model that has one; else ``document`` + blank line + ``plain_prompt``.

    Why the template: after ``<document>\n\nQ: <question>\nA:`` SmolLM2-135M-Instruct's first
    token ends the line (empty answers; 0.10 contains-reference on 40 held-out questions against
    0.65 in its chat template, measured 2026-11-28), which would make the ceiling a floor.
    """
    if not getattr(tokenizer, "chat_template", None):
        return f"{document}\n\n{plain_prompt}"
    message = f"{document}\n\n{question} Answer with the name or word only."
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


def evaluate_documents(
    checkpoint: str | Path,
    documents: int = 400,
    heldout: int = 50,
    seed: int = 0,
    max_documents: int = 0,
    max_new_tokens: int = 16,
    base_model: str | None = None,
    group: str = "heldout",
) -> dict[str, Any]:
    """Score the four systems on the ``group`` documents' test questions (module docstring)."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    generator = AdapterGenerator.from_pretrained(checkpoint)
    if generator.condition_parts != ("document",):
        raise ValueError(
            f"{checkpoint} takes {' and '.join(generator.condition_parts)}; this evaluation "
            "needs a checkpoint conditioned on a document alone"
        )
    model, tokenizer = load_base_model(base_model or generator.meta.base_model)
    corpus = fact_corpus(documents, heldout, seed=seed)
    names = corpus.heldout_names if group == "heldout" else corpus.train_names
    names = names[:max_documents] if max_documents else names
    texts = [corpus.document(n).text for n in names]
    asked = [question_examples(corpus.document(n))[-corpus.test_questions :] for n in names]
    questions = [(i, ex) for i, examples in enumerate(asked) for ex in examples]
    adapters = generator.generate(texts)  # one adapter per document, in one batch
    prompts = {
        "base": [ex.prompt for _, ex in questions],
        "base+document": [
            ceiling_prompt(tokenizer, texts[i], ex.input, ex.prompt) for i, ex in questions
        ],
        "generated": [ex.prompt for _, ex in questions],
        "generated_other_document": [ex.prompt for _, ex in questions],
    }
    # each question's adapter: its own document's, or (other_document) the next document's
    adapter_rows = {
        "generated": [i for i, _ in questions],
        "generated_other_document": [(i + 1) % len(names) for i, _ in questions],
    }
    stops = stop_token_ids(tokenizer)
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "corpus": {"documents": documents, "heldout": heldout, "seed": seed},
        "group": group,
        "documents": len(names),
        "questions": len(questions),
        "systems": {},
    }
    for system in SYSTEMS:
        with torch.no_grad():
            answers = greedy_answers(
                model,
                tokenizer,
                prompts[system],
                max_new_tokens,
                adapters if system in adapter_rows else None,
                adapter_rows.get(system),
                stop_ids=stops,
            )
        tokens = [len(tokenizer(p).input_ids) for p in prompts[system]]
        refs = [ex.references for _, ex in questions]
        report["systems"][system] = {
            "exact_match": sum(map(exact_match, answers, refs)) / len(questions),
            "contains": sum(map(contains_reference, answers, refs)) / len(questions),
            "prompt_tokens": sum(tokens) / len(tokens),
            "answers": answers[:8],
        }
    report["ceiling_format"] = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    document_tokens = [
        len(tokenizer(texts[i], add_special_tokens=False).input_ids) for i, _ in questions
    ]
    report["tokens_saved"] = sum(document_tokens) / len(document_tokens)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evaluation.documents", description=__doc__.split("\n")[0]
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint conditioned on a document")
    p.add_argument("--documents", type=int, default=400, help="corpus size of the training run")
    p.add_argument("--heldout", type=int, default=50, help="held-out documents of the training run")
    p.add_argument("--seed", type=int, default=0, help="corpus seed of the training run")
    p.add_argument("--max-documents", type=int, default=0, help="score only the first N (0: all)")
    p.add_argument(
        "--group",
        choices=GROUPS,
        default="heldout",
        help="held-out documents, or training ones (questions meta-training saw)",
    )
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--base-model", help="override the checkpoint's base model (a local folder)")
    p.add_argument("--out", help="also write the report here (JSON)")
    args = p.parse_args(argv)
    try:
        report = evaluate_documents(
            args.checkpoint,
            args.documents,
            args.heldout,
            args.seed,
            args.max_documents,
            args.max_new_tokens,
            args.base_model,
            args.group,
        )
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluation.documents: error: {err}", file=sys.stderr)
        return 2
    group = "held-out" if args.group == "heldout" else "training"
    print(f"{report['questions']} questions on {report['documents']} {group} documents")
    print("| system | exact match | contains | prompt tokens |\n|---|---|---|---|")
    for system, row in report["systems"].items():
        print(
            f"| {system} | {row['exact_match']:.3f} | {row['contains']:.3f} | "
            f"{row['prompt_tokens']:.1f} |"
        )
    print(
        f"prompt tokens saved per question (the document's) by generated: {report['tokens_saved']:.1f}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
