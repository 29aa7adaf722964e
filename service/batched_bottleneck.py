"""Many requests' bottleneck adapters stacked into one batch, for the serving hooks.

Axes: b row (one request each), n token, d hidden, m bottleneck width.

``hypergen.adapters.bottleneck.BottleneckWeights`` holds adapters of one generator (same blocks,
width and non-linearity). A serving batch mixes requests whose adapters may come from different
checkpoints (other widths, blocks or non-linearities) and requests with no adapter.
``BatchedBottleneck`` makes them one batch without changing any row's math:

- widths are zero-padded to the largest: a padded unit has a zero column of ``up``, so whatever
  the non-linearity makes of it, it adds ``0``;
- a row with no adapter, or an adapter without some block, gets zeros there: ``up`` and ``b_up``
  zero add exactly ``0`` to the block's output (base rows are untouched, bit for bit);
- each row keeps its own non-linearity (rows are grouped by it inside the hook).

It implements the protocol of ``hypergen.adapters.apply.apply_adapters`` (``module_names``,
``forward_hook``, ``__len__``) plus ``select`` (rows leave the batch as they finish), with the
projections stored pre-transposed, D^T (b, d, m) and U^T (b, m, d), so a hook is two
``baddbmm`` calls (biases folded in), as ``service.batched_lora`` does for LoRA. Inference only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from hypergen.adapters.bottleneck import ACTIVATIONS, BottleneckWeights
from service.stacking import present_rows, stack_modules


class BatchedBottleneck:
    """Per-row bottleneck adapters for a serving batch.

    Args:
        Dt: ``{block: (b, d, m)}`` transposed down-projections.
        db: ``{block: (b, 1, m)}`` down biases.
        Ut: ``{block: (b, m, d)}`` transposed up-projections.
        ub: ``{block: (b, 1, d)}`` up biases.
        acts: the non-linearities in the batch (names of ``ACTIVATIONS``).
        act_rows: (b,) index into ``acts`` of each row's non-linearity.
    """

    def __init__(
        self,
        Dt: dict[str, Tensor],
        db: dict[str, Tensor],
        Ut: dict[str, Tensor],
        ub: dict[str, Tensor],
        acts: Sequence[str],
        act_rows: Tensor,
    ):
        if not Dt.keys() == db.keys() == Ut.keys() == ub.keys():
            raise ValueError("BatchedBottleneck: the fields must cover the same blocks")
        sizes = {t.shape[0] for f in (Dt, db, Ut, ub) for t in f.values()} | {len(act_rows)}
        if len(sizes) != 1:
            raise ValueError(f"BatchedBottleneck: inconsistent batch sizes {sorted(sizes)}")
        self.Dt, self.db, self.Ut, self.ub = Dt, db, Ut, ub
        self.acts, self.act_rows = tuple(acts), act_rows

    @classmethod
    def stack(
        cls,
        adapters: Sequence[BottleneckWeights | None],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> BatchedBottleneck | None:
        """One row per entry of ``adapters`` (each a one-adapter ``BottleneckWeights`` or None).

        Returns None when no row has an adapter (the batch runs on the bare model).
        """
        present = present_rows(adapters)
        if not present:
            return None
        m = max(a.size for a in present)
        names = list(dict.fromkeys(name for a in present for name in a.module_names))
        acts = list(dict.fromkeys(a.non_linearity for a in present))
        act_rows = torch.tensor(
            [0 if a is None else acts.index(a.non_linearity) for a in adapters], device=device
        )

        def zeros(name: str) -> tuple[Tensor, ...]:
            d = next(a for a in present if name in a.down).down[name].shape[2]
            zero = torch.zeros(1, m, d)
            return zero, torch.zeros(1, m), zero.transpose(1, 2), torch.zeros(1, d)

        def factors(a: BottleneckWeights, name: str) -> tuple[Tensor, ...]:
            pad = m - a.size  # zero units: their up column is zero, they add nothing
            return (
                F.pad(a.down[name], (0, 0, 0, pad)),
                F.pad(a.down_bias[name], (0, pad)),
                F.pad(a.up[name], (0, pad)),
                a.up_bias[name],
            )

        stacked = stack_modules(
            adapters, names, lambda a, name: name in a.down, factors, zeros, dtype, device
        )
        Dt, db, Ut, ub = {}, {}, {}, {}
        for name, (down, down_bias, up, up_bias) in stacked.items():
            Dt[name] = rearrange(down, "b m d -> b d m").contiguous()
            db[name] = rearrange(down_bias, "b m -> b 1 m").contiguous()
            Ut[name] = rearrange(up, "b d m -> b m d").contiguous()
            ub[name] = rearrange(up_bias, "b d -> b 1 d").contiguous()
        return cls(Dt, db, Ut, ub, acts, act_rows)

    @property
    def module_names(self) -> list[str]:
        return list(self.Dt)

    def __len__(self) -> int:
        return len(self.act_rows)

    def select(self, rows: Tensor | Sequence[int]) -> BatchedBottleneck:
        """The rows still decoding (finished rows leave the batch)."""
        rows = torch.as_tensor(rows, device=self.act_rows.device)
        Dt, db, Ut, ub = (
            {k: v[rows] for k, v in f.items()} for f in (self.Dt, self.db, self.Ut, self.ub)
        )
        return BatchedBottleneck(Dt, db, Ut, ub, self.acts, self.act_rows[rows])

    def _activate(self, z: Tensor) -> Tensor:
        if len(self.acts) == 1:
            return ACTIVATIONS[self.acts[0]](z)
        out = torch.empty_like(z)
        for k, act in enumerate(self.acts):
            mask = self.act_rows == k
            out[mask] = ACTIVATIONS[act](z[mask])
        return out

    def forward_hook(self, name: str):
        """Adds ``act(h D^T + b_d) U^T + b_u`` row by row to block ``name``'s output h (the first
        element of an attention block's tuple output)."""
        Dt, db, Ut, ub = self.Dt[name], self.db[name], self.Ut[name], self.ub[name]

        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            assert h.dim() == 3 and h.shape[0] == Dt.shape[0], (
                f"{name}: expected (b={Dt.shape[0]}, n, d) outputs, got {tuple(h.shape)}"
            )
            z = self._activate(torch.baddbmm(db, h, Dt))  # (b n m)
            h = h + torch.baddbmm(ub, z, Ut)  # (b n d)
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return hook
