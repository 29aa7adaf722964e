"""Which dtype the frozen base model runs in when the user says ``auto``.

On a CPU with AMX (Intel Sapphire Rapids and later) oneDNN multiplies bf16 matrices on the tile
unit and reads half the bytes per weight: SmolLM2-135M's decode step at batch 16 took 77 ms in
bf16 against 105 ms in fp32 on the project's AMX machine (2 threads, both on prepacked weights;
medians of 12 shuffled rounds), its prompts 2.4x less time. Without AMX, bf16
matmuls are emulated or converted and run far slower than fp32 (~40x on the project's earlier
AVX2 machine), so ``auto`` picks bf16 only where AMX is present and fp32 everywhere else,
accelerators included (their bf16 speed was never measured here). bf16 rounds the model's
activations: greedy answers can differ from fp32's (README "Serving speed" gives the measured
agreement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

AUTO = "auto"  # torch is imported on use: the service's settings check reads this name


def cpu_has_amx() -> bool:
    """True where this CPU has AMX tiles and torch's oneDNN can run bf16 on them."""
    import torch

    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up softly
    if probe is None or not torch.backends.mkldnn.is_available():
        return False
    return bool(probe()) and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_model_dtype(name: str, device: torch.device | str = "cpu") -> str:
    """``name`` itself, or for ``auto``: ``bfloat16`` on an AMX CPU, ``float32`` elsewhere."""
    import torch

    if name != AUTO:
        return name
    return "bfloat16" if torch.device(device).type == "cpu" and cpu_has_amx() else "float32"
