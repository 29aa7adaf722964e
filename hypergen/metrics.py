"""Metrics as pure functions: accuracy, exact match, ROUGE-L, bootstrap confidence intervals, and
the generation check's reply metrics (distinct-bigram ratio, contains-reference).

Text metrics compare normalised strings: lowercased, punctuation removed, whitespace collapsed
(``normalize_text``). A prediction is scored against every reference and keeps its best score.
Confidence intervals are percentile bootstraps over examples with a seeded numpy generator; a
macro-average resamples the examples of each task independently and averages the task means.
"""

from __future__ import annotations

import itertools
import re
import string
from collections.abc import Sequence

import numpy as np

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_text(text: str) -> str:
    """Lowercase, drop ASCII punctuation, collapse whitespace: ``" The  Cat!"`` -> ``"the cat"``."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def exact_match(prediction: str, references: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised reference, else 0.0."""
    if not references:
        raise ValueError("exact_match needs at least one reference")
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(ref) for ref in references))


def contains_reference(prediction: str, references: Sequence[str]) -> float:
    """1.0 if a normalised reference occurs in the normalised prediction as whole words, else 0.0.

    ``"The capital is Canberra."`` contains ``"canberra"``; ``"Canberras"`` does not.
    """
    if not references:
        raise ValueError("contains_reference needs at least one reference")
    pred = f" {normalize_text(prediction)} "
    return float(
        any(f" {normalize_text(ref)} " in pred for ref in references if normalize_text(ref))
    )


def distinct_bigram_ratio(text: str) -> float | None:
    """Distinct bigrams / bigrams of the reply's whitespace tokens (case and punctuation kept).

    1.0: no word pair repeats; ``"No. No. No. No."`` has 3 bigrams, 1 distinct: 1/3. A reply
    with fewer than two tokens has no bigram: None (callers leave it out of means and count it).
    """
    words = text.split()
    if len(words) < 2:
        return None
    bigrams = list(itertools.pairwise(words))
    return len(set(bigrams)) / len(bigrams)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, references: Sequence[str]) -> float:
    """ROUGE-L F1 over normalised word tokens, best over references.

    With LCS the longest common subsequence, P = LCS / len(prediction), R = LCS / len(reference)
    and F1 = 2PR / (P + R) (the ``rouge-score`` package's ``rougeL`` fmeasure, without stemming).
    Two empty strings score 1.0; one empty string scores 0.0.
    """
    if not references:
        raise ValueError("rouge_l needs at least one reference")
    pred = normalize_text(prediction).split()
    best = 0.0
    for ref in references:
        ref_tokens = normalize_text(ref).split()
        if not pred or not ref_tokens:
            best = max(best, float(not pred and not ref_tokens))
            continue
        lcs = _lcs_length(pred, ref_tokens)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def accuracy(picks: Sequence[int], correct: Sequence[Sequence[int]]) -> float:
    """Fraction of examples whose picked option index is among that example's correct indices."""
    if len(picks) != len(correct):
        raise ValueError(f"{len(picks)} picks but {len(correct)} answer sets")
    if not picks:
        raise ValueError("accuracy of zero examples is undefined")
    return float(np.mean([p in set(c) for p, c in zip(picks, correct)]))


def bootstrap_ci(
    scores: Sequence[Sequence[float]] | Sequence[float],
    num_samples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """Mean (or macro-average) with a percentile bootstrap interval.

    Args:
        scores: one task's per-example scores, or a list of per-task score arrays; in the second
            case the statistic is the macro-average (mean of task means) and each bootstrap draw
            resamples every task's examples with replacement, independently.
        num_samples: bootstrap draws.
        seed: seed of the numpy generator (same seed and scores -> same interval).
        level: coverage of the interval.

    Returns:
        (statistic, lower, upper).
    """
    if len(scores) and np.ndim(scores[0]) == 0:
        scores = [scores]
    tasks = [np.asarray(s, dtype=np.float64) for s in scores]
    if not tasks or any(t.ndim != 1 or t.size == 0 for t in tasks):
        raise ValueError("bootstrap_ci needs at least one non-empty 1-d score array per task")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    statistic = float(np.mean([t.mean() for t in tasks]))
    rng = np.random.default_rng(seed)
    draws = np.zeros(num_samples)
    for t in tasks:  # (num_samples, n) resampled indices per task; mean over examples
        idx = rng.integers(0, t.size, size=(num_samples, t.size))
        draws += t[idx].mean(axis=1)
    draws /= len(tasks)
    tail = (1 - level) / 2 * 100
    lower, upper = np.percentile(draws, [tail, 100 - tail])
    # the percentile interval can miss the statistic by float rounding when every draw is equal
    return statistic, float(min(lower, statistic)), float(max(upper, statistic))
