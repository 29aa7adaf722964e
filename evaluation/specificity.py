"""Adapter specificity: how much do generated adapters differ from task to task?

Two adapters are compared by the cosine of a kind-appropriate update, concatenated over the
adapted sites (``GEOMETRY``; both computed through r x r Gram products, float64):

    lora        the flattened updates dW = s B A (``hypergen.adapters.lora_geometry``)
    bottleneck  the linearised updates [U D | U b_d + b_u] of each block
                (``hypergen.adapters.bottleneck_geometry``, which says why not the raw parameters)

The cosine with an all-zero update (an untrained hypernetwork's B / up heads are zero) is
undefined: ``None`` in reports, and such pairs are left out of means (their count is reported).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from hypergen.adapters import bottleneck_geometry, lora_geometry
from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from hypergen.adapters.lora_geometry import (  # noqa: F401 (re-exported)
    cosine_matrix,
    inner_products,
    paired_cosines,
    squared_norms,
)

# adapter kind -> the module computing its cosines (same function names in each)
GEOMETRY = {"lora": lora_geometry, "bottleneck": bottleneck_geometry}


def _mean(values: list[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def mean_pairwise(cos: Tensor) -> tuple[float | None, int, int]:
    """Mean of the off-diagonal cosines of a square matrix (pairs i < j, NaN pairs left out).

    Returns:
        (mean or None, pairs counted, pairs left out as undefined).
    """
    n = cos.shape[0]
    values = [float(cos[i, j]) for i in range(n) for j in range(i + 1, n)]
    undefined = sum(math.isnan(v) for v in values)
    return _mean(values), len(values) - undefined, undefined


def specificity(
    names: list[str],
    own: LoraWeights | BottleneckWeights,
    random: LoraWeights | BottleneckWeights,
) -> dict[str, Any]:
    """The specificity report of one group of tasks.

    Args:
        names: task names, one per adapter.
        own: each task's adapter generated from its own description.
        random: each task's adapter generated from its random string (``generated_random``), of
            the same kind.

    Returns:
        ``quantity`` (what is compared, per ``GEOMETRY``), ``mean_pairwise_cosine`` across tasks'
        own adapters (pairs i < j), the same across the random-string adapters (a reference: what
        "no information" looks like), the mean of each task's own-vs-random cosine, and per task:
        its own-vs-random cosine, its mean cosine to the other tasks' adapters, and the norm of
        its update (|dW| for LoRA).
    """
    if not len(own) == len(random) == len(names):
        raise ValueError(f"{len(names)} names, {len(own)} adapters, {len(random)} random ones")
    if own.kind != random.kind:
        raise ValueError(f"cannot compare {own.kind} adapters with {random.kind} ones")
    geometry = GEOMETRY[own.kind]
    cos = geometry.cosine_matrix(own)
    mean, pairs, undefined = mean_pairwise(cos)
    random_mean, _, _ = mean_pairwise(geometry.cosine_matrix(random))
    to_random = geometry.paired_cosines(own, random)
    norms = geometry.squared_norms(own).sqrt()
    n = len(names)
    per_task = {}
    for k, name in enumerate(names):
        others = [float(cos[k, j]) for j in range(n) if j != k]
        per_task[name] = {
            "cosine_to_random": _number(float(to_random[k])),
            "mean_cosine_to_others": _number(_mean(others)),
            "norm": round(float(norms[k]), 6),
        }
    return {
        "status": "ok",
        "quantity": geometry.QUANTITY,
        "tasks": n,
        "mean_pairwise_cosine": _number(mean),
        "pairs": pairs,
        "undefined_pairs": undefined,
        "random_mean_pairwise_cosine": _number(random_mean),
        "mean_cosine_to_random": _number(_mean([float(c) for c in to_random])),
        "per_task": per_task,
    }
