"""Many requests' LoRA adapters stacked into one batch, in the layout the serving hooks want.

Axes: b row (one request each), n token, r rank, i in, o out.

``hypergen.adapters.lora.LoraWeights`` holds a batch of adapters from one generator (same modules,
rank and scaling). A serving batch mixes requests whose adapters may come from different
checkpoints (other ranks, scalings or modules) and requests with no adapter at all. ``BatchedLora``
makes them one batch without changing any row's math:

- the scaling is folded into B: ``s * B (A x) = (s B) (A x)``;
- ranks are zero-padded to the largest: extra rank columns add ``0``;
- a row with no adapter, or an adapter without some module, gets zero factors there.

It implements the protocol of ``hypergen.adapters.apply.apply_adapters`` (``module_names``,
``forward_hook``, ``__len__``) with factors stored pre-transposed, A^T (b, i, r) and
(s B)^T (b, r, o), so a hook is two ``bmm`` calls adding in place into the module's output:
about 2.5x cheaper per call than the general ``einsum`` path, which matters in decoding, where
a step is one token per row. Inference only (the in-place add is not for autograd).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from hypergen.adapters.lora import LoraWeights
from service.stacking import present_rows, stack_modules

# The factors' dtype for a model computing in another: a decode step's bmm of one token per row
# is slow in bf16 on CPUs (AMX machine, 16 rows, SmolLM2's shapes: 153 us per adapted module
# against 53 us with the input cast to fp32 and back), so bf16 models keep fp32 factors; longer
# inputs (a prefill) run in bf16 on factors cast down per call (259 us at 64 tokens against 894
# through fp32).
FACTOR_DTYPES = {torch.bfloat16: torch.float32}


class BatchedLora:
    """Per-row LoRA factors for a serving batch.

    Args:
        At: ``{module: (b, i, r)}`` transposed down-projections.
        Bt: ``{module: (b, r, o)}`` transposed up-projections, scaling already applied.
    """

    def __init__(self, At: dict[str, Tensor], Bt: dict[str, Tensor]):
        if At.keys() != Bt.keys():
            raise ValueError("BatchedLora: At and Bt must cover the same modules")
        sizes = {t.shape[0] for t in [*At.values(), *Bt.values()]}
        if len(sizes) != 1:
            raise ValueError(f"BatchedLora: inconsistent batch sizes {sorted(sizes)}")
        self.At, self.Bt = At, Bt

    @classmethod
    def stack(
        cls,
        adapters: Sequence[LoraWeights | None],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> BatchedLora | None:
        """One row per entry of ``adapters`` (each a one-adapter ``LoraWeights`` or None), for a
        model computing in ``dtype`` (bf16 models get fp32 factors: ``FACTOR_DTYPES``).

        Returns None when no row has an adapter (the batch runs on the bare model).
        """
        present = present_rows(adapters)
        if not present:
            return None
        dtype = FACTOR_DTYPES.get(dtype, dtype)
        rank = max(a.rank for a in present)
        names = list(dict.fromkeys(name for a in present for name in a.module_names))
        scales = torch.tensor([a.scaling if a is not None else 0.0 for a in adapters], dtype=dtype)
        scales = rearrange(scales, "b -> b 1 1").to(device)

        def zeros(name: str) -> tuple[Tensor, Tensor]:
            ref = next(a for a in present if name in a.A)
            i, o = ref.A[name].shape[2], ref.B[name].shape[1]
            return ref.A[name].new_zeros(1, rank, i), ref.B[name].new_zeros(1, o, rank)

        def factors(a: LoraWeights, name: str) -> tuple[Tensor, Tensor]:
            pad = rank - a.rank  # zero rank columns add nothing
            if not pad:
                return a.A[name], a.B[name]
            return F.pad(a.A[name], (0, 0, 0, pad)), F.pad(a.B[name], (0, pad))

        stacked = stack_modules(
            adapters, names, lambda a, name: name in a.A, factors, zeros, dtype, device
        )
        At, Bt = {}, {}
        for name, (A, B) in stacked.items():  # (b r i) -> (b i r), (b o r) -> (b r o)
            At[name] = A.transpose(1, 2).contiguous()
            Bt[name] = (B * scales).transpose(1, 2).contiguous()
        return cls(At, Bt)

    @classmethod
    def cat(cls, parts: Sequence[tuple[BatchedLora | None, int]]) -> BatchedLora | None:
        """The rows of ``parts`` (each a batch, or None for that many rows without adapters)
        one after another, ranks zero-padded to the largest and missing modules zero-filled,
        as ``stack`` does (None when no part has an adapter)."""
        present = [part for part, _ in parts if part is not None]
        if not present:
            return None
        rank = max(part.rank for part in present)
        names = list(dict.fromkeys(name for part in present for name in part.At))
        At, Bt = {}, {}
        for name in names:
            ref = next(part for part in present if name in part.At)
            i, o = ref.At[name].shape[1], ref.Bt[name].shape[2]
            a_rows, b_rows = [], []
            for part, rows in parts:
                if part is None or name not in part.At:
                    a_rows.append(ref.At[name].new_zeros(rows, i, rank))
                    b_rows.append(ref.Bt[name].new_zeros(rows, rank, o))
                    continue
                pad = rank - part.rank  # zero rank columns add nothing
                a_rows.append(F.pad(part.At[name], (0, pad)) if pad else part.At[name])
                b_rows.append(F.pad(part.Bt[name], (0, 0, 0, pad)) if pad else part.Bt[name])
            At[name], Bt[name] = torch.cat(a_rows), torch.cat(b_rows)  # (b i r), (b r o)
        return cls(At, Bt)

    @property
    def rank(self) -> int:
        return next(iter(self.At.values())).shape[2]

    @property
    def module_names(self) -> list[str]:
        return list(self.At)

    def __len__(self) -> int:
        return next(iter(self.At.values())).shape[0]

    def select(self, rows: Tensor | Sequence[int]) -> BatchedLora:
        """The rows still decoding (finished rows leave the batch)."""
        index = torch.as_tensor(rows, device=next(iter(self.At.values())).device)
        return BatchedLora(
            {k: v.index_select(0, index) for k, v in self.At.items()},
            {k: v.index_select(0, index) for k, v in self.Bt.items()},
        )

    def forward_hook(self, name: str):
        """Adds ``x A^T (s B)^T`` row by row into the output of module ``name``."""
        At, Bt = self.At[name], self.Bt[name]

        def hook(module, args, output):
            x = args[0]
            assert x.dim() == 3 and x.shape[0] == At.shape[0], (
                f"{name}: expected (b={At.shape[0]}, n, i) inputs, got {tuple(x.shape)}"
            )
            if x.dtype == At.dtype:
                h = torch.bmm(x, At)  # (b n r)
                return output.baddbmm_(h, Bt)  # (b n o) += (b n r) @ (b r o)
            if x.shape[1] == 1:  # a decode step: in the factors' dtype (FACTOR_DTYPES)
                return output.add_(torch.bmm(torch.bmm(x.to(At.dtype), At), Bt))
            return output.baddbmm_(torch.bmm(x, At.to(x.dtype)), Bt.to(x.dtype))

        return hook
