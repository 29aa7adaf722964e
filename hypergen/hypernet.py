"""HyperNetwork: a condition vector -> adapter weights for every adapted site, in one forward pass.

In the spirit of Text-to-LoRA: the condition is projected to a task vector, summed with a learned
embedding of the layer index and of the module kind, passed through a shared residual MLP trunk,
and read out by one head per module kind emitting that kind's tensors for all layers at once.
The adapter kind (``HyperNetConfig.adapter_kind``) picks the head class: ``LoraHead`` (A, B) or
``BottleneckHead`` (down, up and their biases); each head class also assembles its weights type.

Axes: b task (condition), l layer, k module kind, d hidden, r rank, i in, o out, m bottleneck.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from hypergen.config import BottleneckSpec, HyperNetConfig, LoraSpec
from hypergen.targets import AdapterTarget, kind_shapes, num_layers


class ResidualBlock(nn.Module):
    """Pre-norm MLP block: x + W2 silu(W1 norm(x))."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.mlp(self.norm(x))


class LoraHead(nn.Module):
    """Reads one module kind's LoRA factors out of the trunk features of every layer.

    Initialisation makes a fresh hypernetwork safe and trainable: B is exactly zero, so every
    generated adapter starts as a no-op (litgpt / x-transformers zero-init), and A starts near
    peft's kaiming-uniform LoRA init with a small condition-dependent part.
    """

    def __init__(self, dim: int, spec: LoraSpec, in_features: int, out_features: int):
        super().__init__()
        self.rank = rank = spec.rank
        self.to_A = nn.Linear(dim, rank * in_features)
        self.to_B = nn.Linear(dim, out_features * rank)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.normal_(self.to_A.weight, std=bound / math.sqrt(dim))
        nn.init.uniform_(self.to_A.bias, -bound, bound)
        nn.init.zeros_(self.to_B.weight)
        nn.init.zeros_(self.to_B.bias)

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        """h: (b, l, d) -> A (b, l, r, i), B (b, l, o, r)."""
        return {
            "A": rearrange(self.to_A(h), "b l (r i) -> b l r i", r=self.rank),
            "B": rearrange(self.to_B(h), "b l (o r) -> b l o r", r=self.rank),
        }

    @staticmethod
    def weights(fields: dict[str, dict[str, Tensor]], spec: LoraSpec) -> LoraWeights:
        """{"A": {module: (b, r, i)}, "B": ...} -> ``LoraWeights``."""
        return LoraWeights(fields["A"], fields["B"], spec.scaling)


class BottleneckHead(nn.Module):
    """Reads one block kind's bottleneck adapter out of the trunk features of every layer.

    The up-projection and its bias start at exactly zero, so every generated adapter starts as
    the identity; down starts near ``nn.Linear``'s default init with a small condition-dependent
    part, so gradients reach the up head from the first step.
    """

    def __init__(self, dim: int, spec: BottleneckSpec, in_features: int, out_features: int):
        super().__init__()
        assert in_features == out_features, "a bottleneck adapter maps the hidden size to itself"
        self.size = m = spec.size
        self.to_down = nn.Linear(dim, m * in_features)
        self.to_down_bias = nn.Linear(dim, m)
        self.to_up = nn.Linear(dim, out_features * m)
        self.to_up_bias = nn.Linear(dim, out_features)
        bound = 1.0 / math.sqrt(in_features)
        for layer in (self.to_down, self.to_down_bias):
            nn.init.normal_(layer.weight, std=bound / math.sqrt(dim))
            nn.init.uniform_(layer.bias, -bound, bound)
        for layer in (self.to_up, self.to_up_bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: Tensor) -> dict[str, Tensor]:
        """h: (b, l, d) -> down (b, l, m, i), down_bias (b, l, m), up (b, l, o, m), up_bias (b, l, o)."""
        return {
            "down": rearrange(self.to_down(h), "b l (m i) -> b l m i", m=self.size),
            "down_bias": self.to_down_bias(h),
            "up": rearrange(self.to_up(h), "b l (o m) -> b l o m", m=self.size),
            "up_bias": self.to_up_bias(h),
        }

    @staticmethod
    def weights(fields: dict[str, dict[str, Tensor]], spec: BottleneckSpec) -> BottleneckWeights:
        """{"down": {block: (b, m, d)}, ...} -> ``BottleneckWeights``."""
        return BottleneckWeights(
            fields["down"], fields["down_bias"], fields["up"], fields["up_bias"], spec.non_linearity
        )


# adapter kind -> the head class that emits it
HEADS: dict[str, type[LoraHead | BottleneckHead]] = {"lora": LoraHead, "bottleneck": BottleneckHead}


class HyperNetwork(nn.Module):
    """Condition vectors (b, condition_dim) -> adapter weights for ``targets``.

    Args:
        config: widths, depth, the adapter kind and its spec.
        targets: the adapted sites of the base model (``hypergen.targets.adapter_targets``).
    """

    def __init__(self, config: HyperNetConfig, targets: list[AdapterTarget]):
        super().__init__()
        kinds = kind_shapes(targets)
        spec = config.adapter
        assert list(kinds) == [k for k in spec.target_modules if k in kinds], (
            f"targets {list(kinds)} do not follow the config's target_modules {spec.target_modules}"
        )
        self.config = config
        self.targets = list(targets)
        self.kinds = list(kinds)
        d = config.hidden_dim
        self.task_proj = nn.Sequential(
            nn.Linear(config.condition_dim, d),
            nn.SiLU(),
            nn.Dropout(config.dropout),
            nn.Linear(d, d),
        )
        self.layer_emb = nn.Embedding(num_layers(targets), d)
        self.kind_emb = nn.Embedding(len(kinds), d)
        nn.init.normal_(self.layer_emb.weight, std=0.02)
        nn.init.normal_(self.kind_emb.weight, std=0.02)
        self.trunk = nn.Sequential(
            *[ResidualBlock(d) for _ in range(config.num_blocks)], nn.LayerNorm(d)
        )
        self.head_type = HEADS[config.adapter_kind]
        self.heads = nn.ModuleDict(
            {kind: self.head_type(d, spec, i, o) for kind, (i, o) in kinds.items()}
        )

    def forward_factors(self, condition: Tensor) -> dict[str, dict[str, Tensor]]:
        """condition (b, c) -> {kind: {field: (b, l, ...)}} for all l layer slots (the head's fields,
        e.g. A (b, l, r, i) and B (b, l, o, r) for LoRA)."""
        assert condition.dim() == 2 and condition.shape[1] == self.config.condition_dim, (
            f"condition must be (batch, {self.config.condition_dim}), got {tuple(condition.shape)}"
        )
        task = self.task_proj(condition)  # (b d)
        h = (
            rearrange(task, "b d -> b 1 1 d")
            + rearrange(self.layer_emb.weight, "l d -> 1 l 1 d")
            + rearrange(self.kind_emb.weight, "k d -> 1 1 k d")
        )  # (b l k d)
        h = self.trunk(h)
        return {kind: self.heads[kind](h[:, :, k]) for k, kind in enumerate(self.kinds)}

    def forward(self, condition: Tensor) -> LoraWeights | BottleneckWeights:
        """condition (b, c) -> one adapter per row, keyed by module path."""
        factors = self.forward_factors(condition)
        fields: dict[str, dict[str, Tensor]] = {}
        for t in self.targets:
            for field, value in factors[t.kind].items():
                fields.setdefault(field, {})[t.name] = value[:, t.layer]
        return self.head_type.weights(fields, self.config.adapter)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def check_targets(self, targets: list[AdapterTarget]) -> None:
        """Raise a clear ValueError if ``targets`` (from a base model) differ from this network's."""
        mine = {(t.name, t.in_features, t.out_features) for t in self.targets}
        theirs = {(t.name, t.in_features, t.out_features) for t in targets}
        if mine != theirs:
            diff = sorted(mine ^ theirs)[:4]
            raise ValueError(
                "this hypernetwork was built for another base model: adapter targets differ "
                f"(name, in, out), e.g. {diff}"
            )
