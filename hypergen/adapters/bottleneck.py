"""Bottleneck adapters (Houlsby et al. 2019, Pfeiffer et al. 2020) as plain tensors.

Axes: b example (one adapter per example), n token, d hidden, m bottleneck width.

A bottleneck adapter sits after a block (attention or MLP) of a layer and replaces the block's
output h, before the layer adds it to its residual stream, by

    h' = h + up(act(down h + b_down)) + b_up,    down (m, d), up (d, m), b_down (m,), b_up (d,)

The layout is ``nn.Linear``'s (out, in), the one AdapterHub's ``adapter_down.0`` and
``adapter_up`` use. With ``up`` and ``b_up`` zero the adapter is the identity (the
hypernetwork starts its up head at zero, so an untrained adapter is a no-op).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import einsum, pack, rearrange, unpack
from torch import Tensor

# names as in transformers' ACT2FN (what AdapterHub's Activation_Function_Class looks up)
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,  # the exact erf form, as ACT2FN["gelu"]
    "tanh": torch.tanh,
}
_FIELDS = ("down", "down_bias", "up", "up_bias")


def bottleneck_delta(
    h: Tensor, down: Tensor, down_bias: Tensor, up: Tensor, up_bias: Tensor, non_linearity: str
) -> Tensor:
    """Per-example bottleneck update ``up_b act(down_b h + b_down_b) + b_up_b`` for a batch.

    Args:
        h: (b, ..., d) block outputs.
        down: (b, m, d), or (1, m, d) shared by the whole batch; down_bias (b, m) or (1, m).
        up: (b, d, m), or (1, d, m); up_bias (b, d) or (1, d).
        non_linearity: a key of ``ACTIVATIONS``.

    Returns:
        (b, ..., d) the amount added to the block's output.
    """
    b = h.shape[0]
    if down.shape[0] != b:
        assert down.shape[0] == 1, f"{down.shape[0]} adapters for a batch of {b}"
        down, down_bias = down.expand(b, -1, -1), down_bias.expand(b, -1)
        up, up_bias = up.expand(b, -1, -1), up_bias.expand(b, -1)
    x, packed = pack([h], "b * d")  # (b n d): any token axes flattened into n
    z = einsum(x, down, "b n d, b m d -> b n m") + rearrange(down_bias, "b m -> b 1 m")
    z = ACTIVATIONS[non_linearity](z)
    out = einsum(z, up, "b n m, b d m -> b n d") + rearrange(up_bias, "b d -> b 1 d")
    return unpack(out, packed, "b * d")[0]


@dataclass
class BottleneckWeights:
    """Bottleneck adapters for a batch of b examples over the same blocks.

    For each adapted block path ``name``: ``down[name]`` (b, m, d), ``down_bias[name]`` (b, m),
    ``up[name]`` (b, d, m), ``up_bias[name]`` (b, d). Adapter k of the batch changes the block's
    output h to ``h + up[k] act(down[k] h + down_bias[k]) + up_bias[k]``.
    """

    down: dict[str, Tensor]
    down_bias: dict[str, Tensor]
    up: dict[str, Tensor]
    up_bias: dict[str, Tensor]
    non_linearity: str = "relu"

    kind = "bottleneck"

    def __post_init__(self):
        names = self.down.keys()
        if not names or any(getattr(self, f).keys() != names for f in _FIELDS):
            raise ValueError(
                "BottleneckWeights: down, down_bias, up and up_bias must cover the same blocks"
            )
        if self.non_linearity not in ACTIVATIONS:
            raise ValueError(
                f"BottleneckWeights: unknown non_linearity {self.non_linearity!r}; known {sorted(ACTIVATIONS)}"
            )
        sizes = {t.shape[0] for f in _FIELDS for t in getattr(self, f).values()}
        if len(sizes) != 1:
            raise ValueError(f"BottleneckWeights: inconsistent batch sizes {sorted(sizes)}")
        for name in names:
            (m, d), (d2, m2) = self.down[name].shape[1:], self.up[name].shape[1:]
            shapes = (self.down_bias[name].shape[1:], self.up_bias[name].shape[1:])
            if (m, d) != (m2, d2) or shapes != ((m,), (d,)):
                raise ValueError(f"BottleneckWeights: shapes of {name} do not fit together")

    @property
    def module_names(self) -> list[str]:
        return list(self.down)

    @property
    def size(self) -> int:
        """Bottleneck width m."""
        return next(iter(self.down.values())).shape[1]

    def __len__(self) -> int:
        return next(iter(self.down.values())).shape[0]

    def _map(self, fn: Callable[[Tensor], Tensor]) -> BottleneckWeights:
        return BottleneckWeights(
            *({k: fn(v) for k, v in getattr(self, f).items()} for f in _FIELDS), self.non_linearity
        )

    def select(self, index: int | Sequence[int] | Tensor) -> BottleneckWeights:
        """Adapters at ``index`` (a list keeps the batch axis; repeats are allowed)."""
        if isinstance(index, int):
            index = [index]
        return self._map(lambda v: v[index])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BottleneckWeights:
        return self._map(lambda v: v.to(device=device, dtype=dtype))

    @staticmethod
    def cat(batches: Sequence[BottleneckWeights]) -> BottleneckWeights:
        """Concatenate adapter batches along b (same blocks and non-linearity)."""
        first = batches[0]
        for other in batches[1:]:
            if (
                other.module_names != first.module_names
                or other.non_linearity != first.non_linearity
            ):
                raise ValueError("BottleneckWeights.cat: batches differ in blocks or non-linearity")
        return BottleneckWeights(
            *(
                {k: torch.cat([getattr(w, f)[k] for w in batches]) for k in first.down}
                for f in _FIELDS
            ),
            first.non_linearity,
        )

    def forward_hook(self, name: str) -> Callable:
        """A ``register_forward_hook`` function adding this batch's bottleneck to block ``name``.

        Attention blocks return a tuple whose first element is the hidden states (Llama, GPT-2):
        only that element changes.
        """
        down, down_bias, up, up_bias = (getattr(self, f)[name] for f in _FIELDS)
        act = self.non_linearity

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            t = h.dtype
            h = h + bottleneck_delta(h, down.to(t), down_bias.to(t), up.to(t), up_bias.to(t), act)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook
