"""HyperNetwork: a condition vector -> LoRA factors for every adapted module, in one forward pass.

In the spirit of Text-to-LoRA: the condition is projected to a task vector, summed with a learned
embedding of the layer index and of the module kind, passed through a shared residual MLP trunk,
and read out by one head per module kind emitting A and B for all layers at once.

Axes: b task (condition), l layer, k module kind, d hidden, r rank, i in, o out.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import Tensor, nn

from hypergen.adapters import LoraWeights
from hypergen.config import HyperNetConfig
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

    def __init__(self, dim: int, rank: int, in_features: int, out_features: int):
        super().__init__()
        self.rank = rank
        self.to_A = nn.Linear(dim, rank * in_features)
        self.to_B = nn.Linear(dim, out_features * rank)
        bound = 1.0 / math.sqrt(in_features)
        nn.init.normal_(self.to_A.weight, std=bound / math.sqrt(dim))
        nn.init.uniform_(self.to_A.bias, -bound, bound)
        nn.init.zeros_(self.to_B.weight)
        nn.init.zeros_(self.to_B.bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """h: (b, l, d) -> A (b, l, r, i), B (b, l, o, r)."""
        A = rearrange(self.to_A(h), "b l (r i) -> b l r i", r=self.rank)
        B = rearrange(self.to_B(h), "b l (o r) -> b l o r", r=self.rank)
        return A, B


class HyperNetwork(nn.Module):
    """Condition vectors (b, condition_dim) -> ``LoraWeights`` for ``targets``.

    Args:
        config: widths, depth and the LoRA spec.
        targets: the adapted modules of the base model (``hypergen.targets.find_targets``).
    """

    def __init__(self, config: HyperNetConfig, targets: list[AdapterTarget]):
        super().__init__()
        kinds = kind_shapes(targets)
        assert list(kinds) == [k for k in config.lora.target_modules if k in kinds], (
            f"targets {list(kinds)} do not follow the config's target_modules {config.lora.target_modules}"
        )
        self.config = config
        self.targets = list(targets)
        self.kinds = list(kinds)
        d = config.hidden_dim
        self.task_proj = nn.Sequential(
            nn.Linear(config.condition_dim, d), nn.SiLU(), nn.Dropout(config.dropout), nn.Linear(d, d)
        )
        self.layer_emb = nn.Embedding(num_layers(targets), d)
        self.kind_emb = nn.Embedding(len(kinds), d)
        nn.init.normal_(self.layer_emb.weight, std=0.02)
        nn.init.normal_(self.kind_emb.weight, std=0.02)
        self.trunk = nn.Sequential(*[ResidualBlock(d) for _ in range(config.num_blocks)], nn.LayerNorm(d))
        self.heads = nn.ModuleDict(
            {kind: LoraHead(d, config.lora.rank, i, o) for kind, (i, o) in kinds.items()}
        )

    def forward_factors(self, condition: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """condition (b, c) -> {kind: (A (b, l, r, i), B (b, l, o, r))} for all l layer slots."""
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

    def forward(self, condition: Tensor) -> LoraWeights:
        """condition (b, c) -> one LoRA adapter per row, keyed by module path."""
        factors = self.forward_factors(condition)
        A = {t.name: factors[t.kind][0][:, t.layer] for t in self.targets}
        B = {t.name: factors[t.kind][1][:, t.layer] for t in self.targets}
        return LoraWeights(A, B, self.config.lora.scaling)

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
