"""Geometry of LoRA updates: inner products and cosines of delta W without forming it.

An adapter's update is the concatenation over its modules of ``dW_m = s * B_m @ A_m`` (peft's
``get_delta_weight``). Two adapters x and y are compared through

    <dW_x, dW_y> = sum_m s_x s_y <B_xm A_xm, B_ym A_ym>_F
    <B1 A1, B2 A2>_F = trace(A1^T B1^T B2 A2) = sum_{r,s} (B1^T B2)_{rs} (A1 A2^T)_{rs}
    cos(x, y) = <dW_x, dW_y> / (|dW_x| |dW_y|)

so only (r, r) Gram products are formed, never an (out, in) matrix per adapter. Sums run in
float64. The cosine with an all-zero adapter (an untrained hypernetwork's B heads are zero) is
undefined: NaN. Used by evaluation (specificity reports) and training (specificity in the logs).

Axes: j adapter of x, k adapter of y, o out, i in, r / s rank.
"""

from __future__ import annotations

import math

import torch
from einops import einsum
from torch import Tensor

from hypergen.adapters.lora import LoraWeights

QUANTITY = "delta W = s B A"


def _device(x: LoraWeights) -> torch.device:
    return next(iter(x.A.values())).device


def inner_products(x: LoraWeights, y: LoraWeights) -> Tensor:
    """(len(x), len(y)) float64 Frobenius inner products of the adapters' concatenated dW.

    Args:
        x: a batch of adapters.
        y: a batch of adapters over the same modules (any rank, any scaling).
    """
    if set(x.module_names) != set(y.module_names):
        raise ValueError("inner_products: the adapters cover different modules")
    out = torch.zeros(len(x), len(y), dtype=torch.float64, device=_device(x))
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
    out = torch.zeros(len(x), dtype=torch.float64, device=_device(x))
    for name in x.module_names:
        A, B = x.A[name].double(), x.B[name].double()
        left = einsum(B, B, "j o r, j o s -> j r s")
        right = einsum(A, A, "j r i, j s i -> j r s")
        out += (left * right).sum(dim=(1, 2))
    return (out * x.scaling**2).clamp(min=0)


def cosines(dot: Tensor, norm_x: Tensor, norm_y: Tensor) -> Tensor:
    """Inner products -> cosines (``norm_x``, ``norm_y`` broadcast against ``dot``); NaN where a
    norm is zero, clamped to [-1, 1] against rounding."""
    denominator = norm_x * norm_y
    cos = dot / denominator.where(denominator > 0, torch.ones_like(denominator))
    return cos.where(denominator > 0, torch.full_like(cos, math.nan)).clamp(-1, 1)


def cosine_matrix(x: LoraWeights, y: LoraWeights | None = None) -> Tensor:
    """(len(x), len(y)) cosines between adapters' dW (y defaults to x); NaN where one is zero."""
    y = x if y is None else y
    norm_x, norm_y = squared_norms(x).sqrt(), squared_norms(y).sqrt()
    return cosines(inner_products(x, y), norm_x[:, None], norm_y[None, :])


def paired_inner_products(x: LoraWeights, y: LoraWeights) -> Tensor:
    """(n,) float64 inner product of adapter k of ``x`` with adapter k of ``y``."""
    if len(x) != len(y):
        raise ValueError(f"paired_inner_products: {len(x)} vs {len(y)} adapters")
    dots = torch.zeros(len(x), dtype=torch.float64, device=_device(x))
    if set(x.module_names) != set(y.module_names):
        raise ValueError("paired_inner_products: the adapters cover different modules")
    for name in x.module_names:
        A1, B1 = x.A[name].double(), x.B[name].double()
        A2, B2 = y.A[name].double(), y.B[name].double()
        left = einsum(B1, B2, "j o r, j o s -> j r s")
        right = einsum(A1, A2, "j r i, j s i -> j r s")
        dots += (left * right).sum(dim=(1, 2))
    return dots * (x.scaling * y.scaling)


def paired_cosines(x: LoraWeights, y: LoraWeights) -> Tensor:
    """(n,) cosine of adapter k of ``x`` with adapter k of ``y``; NaN where one is zero."""
    dots = paired_inner_products(x, y)
    return cosines(dots, squared_norms(x).sqrt(), squared_norms(y).sqrt())
