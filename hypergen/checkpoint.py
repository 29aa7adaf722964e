"""Hypernetwork checkpoints: ``hypernet_config.json`` + ``model.safetensors`` in one folder.

The JSON records everything needed to rebuild and trust the network: format version, base
model, encoder, adapter targets with shapes, the adapter kind (``hypernet.adapter_kind``: lora or
bottleneck) and its spec, and how it was trained (or that it was not). Weights are safetensors
only; nothing is unpickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from hypergen.atomic import FolderKind, atomic_folder
from hypergen.config import EncoderConfig, HyperNetConfig
from hypergen.digests import files_sha256
from hypergen.hypernet import HyperNetwork
from hypergen.targets import AdapterTarget

FORMAT_VERSION = 1
# The trained SmolLM2 + MiniLM checkpoint shipped with the package (package data: in a source
# checkout ``hypergen/checkpoints`` links to the repository's ``checkpoints/``). It is the default
# of ``hypergen generate`` and ``hypergen serve``.
DEFAULT_CHECKPOINT = (Path(__file__).parent / "checkpoints" / "smollm2-minilm").resolve()
CONFIG_NAME = "hypernet_config.json"
WEIGHTS_NAME = "model.safetensors"
# A folder holding only these is a previous checkpoint and may be replaced (config.yaml: the
# training config the recipe writes beside the weights).
CHECKPOINT_FOLDER = FolderKind(
    "hypergen checkpoint", CONFIG_NAME, frozenset({CONFIG_NAME, WEIGHTS_NAME, "config.yaml"})
)


@dataclass
class CheckpointMeta:
    """What a checkpoint was built for and how it was trained.

    Args:
        base_model: name or path the adapters are meant for (``hypergen.models.load_base_model``).
        encoder: the conditioner that produces the hypernetwork's input.
        trained_steps: optimisation steps taken; 0 means an untrained (no-op) network.
        training: free-form record of the training run (config, data, losses).
    """

    base_model: str
    encoder: EncoderConfig
    trained_steps: int = 0
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def untrained(self) -> bool:
        return self.trained_steps == 0


def save_checkpoint(
    hypernet: HyperNetwork,
    meta: CheckpointMeta,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    overwrite: bool = False,
) -> Path:
    """Write the checkpoint folder atomically (temporary folder + rename).

    ``out_dir`` must be new, empty or an earlier checkpoint; ``overwrite=True`` also replaces any
    other folder (see ``hypergen.atomic``).
    """
    out_dir = Path(out_dir)
    config = {
        "format_version": FORMAT_VERSION,
        "base_model": meta.base_model,
        "encoder": meta.encoder.to_dict(),
        "hypernet": hypernet.config.to_dict(),
        "targets": [t.to_dict() for t in hypernet.targets],
        "trained_steps": meta.trained_steps,
        "training": meta.training,
    }
    tensors = {
        k: v.detach().to("cpu", dtype).contiguous() for k, v in hypernet.state_dict().items()
    }
    with atomic_folder(out_dir, CHECKPOINT_FOLDER, overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        save_file(tensors, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
    return out_dir


def load_checkpoint(
    folder: str | Path,
    device: torch.device | str = "cpu",
    targets: list[AdapterTarget] | None = None,
) -> tuple[HyperNetwork, CheckpointMeta]:
    """Rebuild a hypernetwork from ``folder`` (float32, eval mode).

    Args:
        folder: a folder written by ``save_checkpoint``.
        device: where to put the network.
        targets: the targets of the base model it will be used with; a shape mismatch raises.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a hypergen checkpoint: no {CONFIG_NAME}")
    config = json.loads(config_path.read_text())
    version = config.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{folder}: checkpoint format {version} is not supported (expected {FORMAT_VERSION})"
        )
    saved_targets = [AdapterTarget(**t) for t in config["targets"]]
    hypernet = HyperNetwork(HyperNetConfig.from_dict(config["hypernet"]), saved_targets)
    if targets is not None:
        hypernet.check_targets(targets)
    state = load_file(folder / WEIGHTS_NAME)
    hypernet.load_state_dict({k: v.float() for k, v in state.items()})
    meta = CheckpointMeta(
        base_model=config["base_model"],
        encoder=EncoderConfig.from_dict(config["encoder"]),
        trained_steps=int(config.get("trained_steps", 0)),
        training=config.get("training", {}),
    )
    return hypernet.to(device).eval(), meta


def checkpoint_adapter_kind(folder: str | Path) -> str:
    """The adapter kind a checkpoint emits (``lora`` or ``bottleneck``), read from its config
    alone (no weights, no model): what a caller needs before loading, e.g. to check where its
    adapters will be written. Checkpoints from before the bottleneck kind are LoRA.

    Raises:
        FileNotFoundError: ``folder`` has no checkpoint config.
    """
    config_path = Path(folder) / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not a hypergen checkpoint: no {CONFIG_NAME}")
    return json.loads(config_path.read_text()).get("hypernet", {}).get("adapter_kind", "lora")


def checkpoint_hash(folder: str | Path) -> str:
    """SHA-256 over the config and weights files: identifies a checkpoint in adapter ids and results."""
    return files_sha256([Path(folder) / name for name in (CONFIG_NAME, WEIGHTS_NAME)])


def meta_dict(meta: CheckpointMeta) -> dict[str, Any]:
    """JSON-ready view of ``meta`` (for APIs and reports)."""
    data = asdict(meta)
    data["encoder"] = meta.encoder.to_dict()  # no empty "parts" for one-part encoders
    data["untrained"] = meta.untrained
    return data
