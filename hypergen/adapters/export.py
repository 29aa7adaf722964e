"""PEFT LoRA folders <-> ``LoraWeights``.

A written folder is a standard PEFT LoRA adapter (``adapter_config.json`` +
``adapter_model.safetensors`` with keys ``base_model.model.<module>.lora_{A,B}.weight``): it loads
with ``peft.PeftModel.from_pretrained`` and in engines that read PEFT files (vLLM, LoRAX).
Reading accepts LoRAs trained elsewhere, so they can be served or used as reconstruction targets.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.numpy
import torch
from safetensors.torch import load_file, save_file

from hypergen.adapters.lora import LoraWeights
from hypergen.atomic import FolderKind, atomic_folder
from hypergen.targets import AdapterTarget

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = "base_model.model."
# A folder holding only these is a previous adapter and may be replaced: what save_peft writes,
# PEFT's model card (README.md, from PeftModel.save_pretrained) and the training record that the
# LoRA-library recipes write beside the weights (training.json).
ADAPTER_FOLDER = FolderKind(
    "PEFT adapter",
    CONFIG_NAME,
    frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md", "training.json"}),
)


_NUMPY_DTYPES = (torch.float32, torch.float16)  # bfloat16 has no numpy dtype


def save_peft(
    lora: LoraWeights,
    targets: list[AdapterTarget],
    out_dir: str | Path,
    base_model_name_or_path: str | None = None,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write adapter 0 of ``lora`` as a PEFT LoRA folder, atomically (temporary folder + rename).

    Args:
        lora: a batch holding exactly one adapter.
        targets: the adapted modules (gives kinds and Conv1D layout).
        out_dir: folder to create, or an earlier adapter folder to replace (``hypergen.atomic``).
        base_model_name_or_path: recorded in the config; peft loads against it by default.
        dtype: dtype of the saved tensors.
        metadata: extra string metadata stored in the safetensors header.
        overwrite: also replace a non-empty ``out_dir`` that is not an adapter folder.
    """
    from peft import LoraConfig

    if len(lora) != 1:
        raise ValueError(
            f"save_peft writes one adapter; got a batch of {len(lora)} (use .select(i))"
        )
    by_name = {t.name: t for t in targets}
    missing = [n for n in lora.module_names if n not in by_name]
    if missing:
        raise ValueError(f"no target description for modules {missing[:3]}")
    used = [by_name[n] for n in lora.module_names]
    fan_in_fan_out = {t.fan_in_fan_out for t in used}
    if len(fan_in_fan_out) != 1:
        raise ValueError("cannot mix Linear and Conv1D targets in one PEFT config")
    kinds = sorted({t.kind for t in used})
    rank = lora.rank
    alpha = lora.scaling * rank
    config = LoraConfig(
        r=rank,
        lora_alpha=int(alpha) if float(alpha).is_integer() else alpha,
        target_modules=kinds,
        lora_dropout=0.0,
        bias="none",
        fan_in_fan_out=fan_in_fan_out.pop(),
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_name_or_path,
    )
    tensors = {}
    for name in lora.module_names:
        tensors[f"{_PREFIX}{name}.lora_A.weight"] = lora.A[name][0].to(dtype).contiguous()
        tensors[f"{_PREFIX}{name}.lora_B.weight"] = lora.B[name][0].to(dtype).contiguous()

    out_dir = Path(out_dir)
    with atomic_folder(out_dir, ADAPTER_FOLDER, overwrite) as tmp:
        config.save_pretrained(tmp)
        write_safetensors(tensors, tmp / WEIGHTS_NAME, {"format": "pt", **(metadata or {})})
    return out_dir


def write_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    """``safetensors.torch.save_file``, through safetensors' numpy writer where numpy has the
    dtype: the same bytes in 2.5x less time (1.9 against 4.8 ms for a 120-tensor LoRA here),
    which counts because the service writes a new adapter (LoRA or AdapterHub bottleneck) while its
    first request waits."""
    if all(t.device.type == "cpu" and t.dtype in _NUMPY_DTYPES for t in tensors.values()):
        safetensors.numpy.save_file({k: t.numpy() for k, t in tensors.items()}, path, metadata)
    else:
        save_file(tensors, path, metadata=metadata)


def load_peft(folder: str | Path, dtype: torch.dtype = torch.float32) -> tuple[LoraWeights, dict]:
    """Read a PEFT LoRA folder into a one-adapter ``LoraWeights`` (and its config dict).

    Only safetensors weights are read (never pickles). Plain LoRA and rsLoRA are supported;
    DoRA, per-module rank/alpha patterns and extra saved modules are rejected with a clear error.
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a PEFT adapter folder: no {CONFIG_NAME}")
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME} (pickled .bin weights are not read)"
        )
    config = json.loads(config_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder}: peft_type {config.get('peft_type')} is not LORA")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if config.get(key):
            raise ValueError(f"{folder}: '{key}' is not supported")
    r, alpha = int(config["r"]), float(config["lora_alpha"])
    scaling = alpha / (r**0.5) if config.get("use_rslora") else alpha / r

    A, B = {}, {}
    for key, tensor in load_file(weights_path).items():
        if not key.startswith(_PREFIX):
            raise ValueError(f"{folder}: unexpected key {key}")
        name, _, rest = key[len(_PREFIX) :].rpartition(".lora_")
        factor = rest.split(".")[0]
        if factor not in ("A", "B") or not rest.endswith("weight"):
            raise ValueError(f"{folder}: unexpected key {key}")
        (A if factor == "A" else B)[name] = tensor.to(dtype).unsqueeze(0)  # (1, r, i) / (1, o, r)
    if not A or A.keys() != B.keys():
        raise ValueError(f"{folder}: lora_A and lora_B keys do not pair up")
    return LoraWeights(A, B, scaling), config
