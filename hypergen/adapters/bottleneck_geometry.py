"""Geometry of bottleneck adapters: inner products and cosines of their linearised updates.

A bottleneck adapter adds ``U act(D h + b_d) + b_u`` to a block's output h. Its parameters are
a poor thing to compare directly: the m bottleneck units can be permuted, and (ReLU) a unit's
row of D and bias scaled by c > 0 with its column of U scaled by 1/c, without changing the
adapter; and D starts at a condition-independent init (only U and b_u start at zero), so the
cosine of flattened (D, b_d, U, b_u) sits near 1 for any two adapters of a fresh or barely
trained hypernetwork. What is compared instead is the adapter's update with the non-linearity
replaced by the identity, the affine map

    h -> U D h + (U b_d + b_u),   in homogeneous coordinates the (d, d + 1) matrix [U D | U b_d + b_u]

per block, concatenated over blocks. It is invariant to both symmetries above, it is exactly
zero for an adapter that is the identity (U = 0, b_u = 0: an untrained hypernetwork's), whose
cosines are then undefined (NaN) as for LoRA's all-zero B, and ``U D`` is a rank-m product like
LoRA's delta W = s B A, so the same r x r Gram products compute it
(``hypergen.adapters.lora_geometry``, with A = D, B = U, s = 1) without forming a (d, d) matrix.
What it leaves out is the non-linearity's effect (units a ReLU switches off for some inputs).

Axes: j adapter of x, k adapter of y, d hidden, m bottleneck. Sums run in float64.
"""

from __future__ import annotations

from einops import einsum
from torch import Tensor

from hypergen.adapters import lora_geometry
from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights

QUANTITY = "linearised bottleneck update [U D | U b_d + b_u]"


def linear_part(x: BottleneckWeights) -> LoraWeights:
    """The ``U D`` part as LoRA factors: A = D (b, m, d), B = U (b, d, m), scaling 1."""
    return LoraWeights(x.down, x.up, 1.0)


def offsets(x: BottleneckWeights) -> dict[str, Tensor]:
    """The constant part ``U b_d + b_u`` of each block: (b, d) float64."""
    return {
        name: einsum(x.up[name].double(), x.down_bias[name].double(), "j d m, j m -> j d")
        + x.up_bias[name].double()
        for name in x.module_names
    }


def _same_blocks(x: BottleneckWeights, y: BottleneckWeights) -> None:
    if set(x.module_names) != set(y.module_names):
        raise ValueError("bottleneck geometry: the adapters cover different blocks")


def inner_products(x: BottleneckWeights, y: BottleneckWeights) -> Tensor:
    """(len(x), len(y)) float64 Frobenius inner products of the linearised updates."""
    _same_blocks(x, y)
    out = lora_geometry.inner_products(linear_part(x), linear_part(y))
    off_x, off_y = offsets(x), offsets(y)
    for name in x.module_names:
        out += einsum(off_x[name], off_y[name].to(off_x[name].device), "j d, k d -> j k")
    return out


def squared_norms(x: BottleneckWeights) -> Tensor:
    """(len(x),) float64 squared norms of the linearised updates."""
    out = lora_geometry.squared_norms(linear_part(x))
    for offset in offsets(x).values():
        out += (offset**2).sum(dim=1)
    return out


def paired_inner_products(x: BottleneckWeights, y: BottleneckWeights) -> Tensor:
    """(n,) float64 inner product of adapter k of ``x`` with adapter k of ``y``."""
    _same_blocks(x, y)
    dots = lora_geometry.paired_inner_products(linear_part(x), linear_part(y))
    off_x, off_y = offsets(x), offsets(y)
    for name in x.module_names:
        dots += (off_x[name] * off_y[name].to(off_x[name].device)).sum(dim=1)
    return dots


def cosine_matrix(x: BottleneckWeights, y: BottleneckWeights | None = None) -> Tensor:
    """(len(x), len(y)) cosines of the linearised updates (y defaults to x); NaN where one is 0."""
    y = x if y is None else y
    norm_x, norm_y = squared_norms(x).sqrt(), squared_norms(y).sqrt()
    return lora_geometry.cosines(inner_products(x, y), norm_x[:, None], norm_y[None, :])


def paired_cosines(x: BottleneckWeights, y: BottleneckWeights) -> Tensor:
    """(n,) cosine of adapter k of ``x`` with adapter k of ``y``; NaN where one is zero."""
    dots = paired_inner_products(x, y)
    return lora_geometry.cosines(dots, squared_norms(x).sqrt(), squared_norms(y).sqrt())
