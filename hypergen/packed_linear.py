"""Frozen ``nn.Linear`` layers on oneDNN's prepacked weights: faster inference on x86 CPUs.

A decode step of a small LM is mostly its linear layers at tiny batch sizes (one token per row).
PyTorch's ``F.linear`` re-reads each weight in its stored layout on every call; oneDNN can reorder
a weight once into the blocked layout its kernels want (``mkldnn._reorder_linear_weight``) and
then multiply with ``mkldnn._linear_pointwise``, which is what inductor's ``freezing`` does for
compiled CPU models. Measured on the project's 2-core AVX2 machine (SmolLM2-135M, fp32, two
threads, rounds alternating with the eager model): a bare decode step at batch 16 109 -> 89 ms
(``benchmarks/decode_floor.py``), decoding with 16 distinct adapters 1.38x the eager bare model's
tokens/s (``benchmarks/serving.py`` part 1); logits within 1e-4 of the eager model's, the same
greedy picks. A call with a single fp32 row keeps the plain weight (``MIN_ROWS``). bf16 weights
are packed too where oneDNN has bf16 kernels: on the project's AMX machine a bf16 decode step at
batch 16 packed took 77 ms against 112 ms for the fp32 eager model (medians of 12 shuffled rounds;
fp32 packed: 105 ms).

Only the module's ``forward`` changes: forward hooks (the per-row adapters of
``hypergen.adapters.apply_adapters``, PEFT's layers around a base layer) still see the same inputs
and outputs. The packed weight is a copy, so this is for frozen weights (the service's model): a
weight changed afterwards is not seen until ``unpack_linear_weights`` and a new pack. Where
autograd needs the layer (a grad-requiring input or weight), it falls back to ``F.linear``, which
has the backward the packed kernel lacks.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F
from torch import nn

_PACKED = "_hypergen_packed_weight"
# fp32 calls with fewer rows (tokens x sequences) run on the plain weight. One request decoding
# alone over HTTP took 2.5 s per 32 tokens packed against 2.1 s plain in one measurement and the
# same in the next, while a bare decode step at batch 1 was faster packed (45 vs 53 ms):
# unsettled, so a lone fp32 row keeps the plain path; batches are where the gain is (1.2-1.8x per
# step at batch 16, by run). bf16 always runs packed: on an AMX CPU a lone row's plain bf16 matmul
# is the slow one (LM head 4.8 ms plain against 1.9 packed).
MIN_ROWS = 2
PACKED_DTYPES = (torch.float32, torch.bfloat16)


def packed_linear_available() -> bool:
    """True where oneDNN (mkldnn) and its linear reorder op are in this torch build."""
    return torch.backends.mkldnn.is_available() and hasattr(
        torch.ops.mkldnn, "_reorder_linear_weight"
    )


def _packable(weight: torch.Tensor) -> bool:
    if weight.device.type != "cpu" or weight.dtype not in PACKED_DTYPES:
        return False
    # oneDNN's bf16 kernels need AVX512 (fast with AVX512-BF16 or AMX); elsewhere stay plain
    return weight.dtype != torch.bfloat16 or torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _packed_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
    if needs_grad:
        return F.linear(x, self.weight, self.bias)
    # 2-D rows: a 3-D view such as the LM head's last position (``hidden[:, -1:]`` of a prompt)
    # sends bf16 ``F.linear`` down a batched-matmul path that copies the weight (125 ms against
    # 5 ms for one row of SmolLM2's head), and costs the packed kernel a little too.
    rows = x.reshape(-1, x.shape[-1])
    if x.dtype == torch.float32 and rows.shape[0] < MIN_ROWS:
        out = F.linear(rows, self.weight, self.bias)
    else:
        out = torch.ops.mkldnn._linear_pointwise(
            rows, getattr(self, _PACKED), self.bias, "none", [], ""
        )
    return out.view(*x.shape[:-1], out.shape[-1])


def pack_linear_weights(model: nn.Module, batch_hint: int = 16) -> int:
    """Run every fp32 or bf16 CPU ``nn.Linear`` of ``model`` on a prepacked copy of its weight.

    Args:
        model: the (frozen) model; changed in place.
        batch_hint: the rows per call the layout is tuned for (a decode batch); any size works.

    Returns:
        How many layers were packed now (0 where oneDNN is unavailable; layers already packed,
        on another device or in another dtype are left as they are).
    """
    if not packed_linear_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module) is not nn.Linear or hasattr(module, _PACKED):
            continue
        if not _packable(module.weight):
            continue
        packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), batch_hint)
        setattr(module, _PACKED, packed)
        module.forward = types.MethodType(_packed_forward, module)
        count += 1
    return count


def unpack_linear_weights(model: nn.Module) -> int:
    """Undo ``pack_linear_weights``: the layers run ``nn.Linear.forward`` again. Returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, _PACKED):
            delattr(module, _PACKED)
            del module.forward  # the instance attribute; the class's forward shows through again
            count += 1
    return count


def is_packed(module: nn.Module) -> bool:
    return hasattr(module, _PACKED)
