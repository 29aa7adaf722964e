"""Adapter specificity: how much do generated LoRAs differ from task to task?

An adapter's update is the concatenation over its modules of ``dW_m = s * B_m @ A_m`` (peft's
``get_delta_weight``). Two adapters x and y are compared by the cosine of these flattened updates:

    <dW_x, dW_y> = sum_m s_x s_y <B_xm A_xm, B_ym A_ym>_F
    <B1 A1, B2 A2>_F = trace(A1^T B1^T B2 A2) = sum_{r,s} (B1^T B2)_{rs} (A1 A2^T)_{rs}
    cos(x, y) = <dW_x, dW_y> / (|dW_x| |dW_y|)

so only (r, r) Gram products are formed, never an (out, in) matrix per adapter (the trick of
``training.objectives._gram``). Sums run in float64. The cosine with an all-zero adapter (an
untrained hypernetwork's B heads are zero) is undefined: NaN here, ``None`` in reports, and such
pairs are left out of means (their count is reported).

Axes: j adapter of x, k adapter of y, o out, i in, r / s rank.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from einops import einsum
from torch import Tensor

from hypergen.adapters import LoraWeights


def inner_products(x: LoraWeights, y: LoraWeights) -> Tensor:
    """(len(x), len(y)) float64 Frobenius inner products of the adapters' concatenated dW.

    Args:
        x: a batch of adapters.
        y: a batch of adapters over the same modules (any rank, any scaling).
    """
    if set(x.module_names) != set(y.module_names):
        raise ValueError("inner_products: the adapters cover different modules")
    out = torch.zeros(len(x), len(y), dtype=torch.float64)
    for name in x.module_names:
        A1, B1 = x.A[name].double(), x.B[name].double()  # (j r i), (j o r)
        A2, B2 = y.A[name].double(), y.B[name].double()  # (k s i), (k o s)
        assert A1.shape[-1] == A2.shape[-1] and B1.shape[1] == B2.shape[1], (
            f"{name}: shapes differ, {tuple(B1.shape)}x{tuple(A1.shape)} vs "
            f"{tuple(B2.shape)}x{tuple(A2.shape)}"
        )
        left = einsum(B1, B2, "j o r, k o s -> j k r s")
        right = einsum(A1, A2, "j r i, k s i -> j k r s")
        out += (left * right).sum(dim=(2, 3))
    return out * (x.scaling * y.scaling)


def squared_norms(x: LoraWeights) -> Tensor:
    """(len(x),) float64 squared Frobenius norms |dW|^2 of each adapter (the Gram diagonal)."""
    out = torch.zeros(len(x), dtype=torch.float64)
    for name in x.module_names:
        A, B = x.A[name].double(), x.B[name].double()
        left = einsum(B, B, "j o r, j o s -> j r s")
        right = einsum(A, A, "j r i, j s i -> j r s")
        out += (left * right).sum(dim=(1, 2))
    return (out * x.scaling**2).clamp(min=0)


def _cosine(dot: Tensor, norm_x: Tensor, norm_y: Tensor) -> Tensor:
    denominator = norm_x * norm_y
    cos = dot / denominator.where(denominator > 0, torch.ones_like(denominator))
    return cos.where(denominator > 0, torch.full_like(cos, math.nan)).clamp(-1, 1)


def cosine_matrix(x: LoraWeights, y: LoraWeights | None = None) -> Tensor:
    """(len(x), len(y)) cosines between adapters' dW (y defaults to x); NaN where one is zero."""
    y = x if y is None else y
    norm_x, norm_y = squared_norms(x).sqrt(), squared_norms(y).sqrt()
    return _cosine(inner_products(x, y), norm_x[:, None], norm_y[None, :])


def paired_cosines(x: LoraWeights, y: LoraWeights) -> Tensor:
    """(n,) cosine of adapter k of ``x`` with adapter k of ``y``; NaN where one is zero."""
    if len(x) != len(y):
        raise ValueError(f"paired_cosines: {len(x)} vs {len(y)} adapters")
    dots = torch.zeros(len(x), dtype=torch.float64)
    if set(x.module_names) != set(y.module_names):
        raise ValueError("paired_cosines: the adapters cover different modules")
    for name in x.module_names:
        A1, B1 = x.A[name].double(), x.B[name].double()
        A2, B2 = y.A[name].double(), y.B[name].double()
        left = einsum(B1, B2, "j o r, j o s -> j r s")
        right = einsum(A1, A2, "j r i, j s i -> j r s")
        dots += (left * right).sum(dim=(1, 2))
    dots *= x.scaling * y.scaling
    return _cosine(dots, squared_norms(x).sqrt(), squared_norms(y).sqrt())


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


def specificity(names: list[str], own: LoraWeights, random: LoraWeights) -> dict[str, Any]:
    """The specificity report of one group of tasks.

    Args:
        names: task names, one per adapter.
        own: each task's adapter generated from its own description.
        random: each task's adapter generated from its random string (``generated_random``).

    Returns:
        ``mean_pairwise_cosine`` across tasks' own adapters (pairs i < j), the same across the
        random-string adapters (a reference: what "no information" looks like), the mean of each
        task's own-vs-random cosine, and per task: its own-vs-random cosine, its mean cosine to
        the other tasks' adapters, and |dW|.
    """
    if not len(own) == len(random) == len(names):
        raise ValueError(f"{len(names)} names, {len(own)} adapters, {len(random)} random ones")
    cos = cosine_matrix(own)
    mean, pairs, undefined = mean_pairwise(cos)
    random_mean, _, _ = mean_pairwise(cosine_matrix(random))
    to_random = paired_cosines(own, random)
    norms = squared_norms(own).sqrt()
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
        "tasks": n,
        "mean_pairwise_cosine": _number(mean),
        "pairs": pairs,
        "undefined_pairs": undefined,
        "random_mean_pairwise_cosine": _number(random_mean),
        "mean_cosine_to_random": _number(_mean([float(c) for c in to_random])),
        "per_task": per_task,
    }
