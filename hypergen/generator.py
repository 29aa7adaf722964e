"""AdapterGenerator: conditioner + hypernetwork, the one object users call to make adapters.

    generator = AdapterGenerator.from_pretrained("checkpoints/smollm2-text")
    lora = generator.generate(["Answer questions about dates.", "Translate to French."])
    generator.save_adapter(lora.select(0), "out/dates")  # a PEFT LoRA folder

A checkpoint whose condition has several parts (``generator.condition_parts``, e.g.
``("description", "language")``) takes one dict per adapter:

    generator.generate([{"description": "Answer riddles.", "language": "sw"}])

A checkpoint of the bottleneck kind returns ``BottleneckWeights``, saved as an AdapterHub folder.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from hypergen.adapters.adapterhub import save_adapterhub
from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.export import save_peft
from hypergen.adapters.lora import LoraWeights
from hypergen.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from hypergen.conditions.registry import Conditioner, build_conditioner, condition_from_parts
from hypergen.config import (
    COMPOSITE_KIND,
    DEFAULT_BASE_MODEL,
    DEFAULT_ENCODER,
    DEFAULT_ENCODER_KIND,
    DEFAULT_HIDDEN_DIM,
    DEFAULT_LORA_ALPHA,
    DEFAULT_LORA_RANK,
    DEFAULT_NUM_BLOCKS,
    DEFAULT_TARGET_MODULES,
    EncoderConfig,
    HyperNetConfig,
    LoraSpec,
)
from hypergen.hypernet import HyperNetwork
from hypergen.models import base_weights_metadata, hub_id, load_base_model
from hypergen.targets import adapter_targets

logger = logging.getLogger(__name__)


class AdapterGenerator:
    """Turns conditions into adapters (LoRA or bottleneck, as the checkpoint says) for one base model.

    Args:
        hypernet: the network mapping condition vectors to adapters.
        conditioner: encodes conditions; its ``dim`` must match the network's input.
        meta: base model, encoder and training record (``CheckpointMeta``).
    """

    def __init__(self, hypernet: HyperNetwork, conditioner: Conditioner, meta: CheckpointMeta):
        if conditioner.dim != hypernet.config.condition_dim:
            raise ValueError(
                f"conditioner gives {conditioner.dim}-d vectors but the hypernetwork expects "
                f"{hypernet.config.condition_dim}"
            )
        self.hypernet = hypernet
        self.conditioner = conditioner
        self.meta = meta

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        device: torch.device | str = "cpu",
        conditioner: Conditioner | None = None,
        base_model: torch.nn.Module | None = None,
    ) -> AdapterGenerator:
        """Load a checkpoint; pass ``base_model`` to check its shapes, ``conditioner`` to reuse one."""
        hypernet, meta = load_checkpoint(folder, device=device)
        if base_model is not None:
            try:
                hypernet.check_targets(adapter_targets(base_model, hypernet.config))
            except ValueError as err:
                raise ValueError(
                    f"{folder} was built for another base model ({meta.base_model}): {err}"
                ) from err
        conditioner = conditioner or build_conditioner(meta.encoder, device=device)
        if meta.untrained:
            logger.warning("checkpoint %s is UNTRAINED: its adapters are no-ops", folder)
        return cls(hypernet, conditioner, meta)

    @classmethod
    def create(
        cls,
        base_model: torch.nn.Module,
        base_model_name: str,
        conditioner: Conditioner,
        encoder: EncoderConfig,
        config: HyperNetConfig | None = None,
        seed: int = 0,
    ) -> AdapterGenerator:
        """A fresh, untrained generator for ``base_model`` (its adapters are exact no-ops).

        ``config`` is copied, not edited (its ``condition_dim`` becomes the conditioner's), and
        ``seed`` fixes the initial weights without touching the caller's global RNG state.
        """
        config = dataclasses.replace(config or HyperNetConfig(), condition_dim=conditioner.dim)
        targets = adapter_targets(base_model, config)
        with torch.random.fork_rng(devices=[]):  # nn.init draws from the global generator
            torch.manual_seed(seed)
            hypernet = HyperNetwork(config, targets)
        return cls(
            hypernet, conditioner, CheckpointMeta(base_model=base_model_name, encoder=encoder)
        )

    def save_pretrained(
        self, folder: str | Path, dtype: torch.dtype = torch.float32, overwrite: bool = False
    ) -> Path:
        """Write the checkpoint; ``folder`` must be new, empty or an earlier checkpoint unless
        ``overwrite`` (``hypergen.atomic``)."""
        return save_checkpoint(self.hypernet, self.meta, folder, dtype=dtype, overwrite=overwrite)

    @property
    def targets(self):
        return self.hypernet.targets

    @property
    def condition_parts(self) -> tuple[str, ...]:
        """The condition parts this checkpoint takes, e.g. ``("description",)`` or
        ``("description", "language")``."""
        return tuple(self.conditioner.parts)

    def condition(self, **parts: Any) -> Any:
        """The condition made of ``parts`` (``description=..., language=...``), normalised.

        Raises:
            ValueError: a part this checkpoint does not take, one it takes missing (the message
                names what it takes), or an invalid value (e.g. an unknown language code).
        """
        return self.conditioner.normalize(condition_from_parts(self.condition_parts, parts))

    def encode(self, conditions: Sequence[Any]) -> torch.Tensor:
        """Conditions -> (b, condition_dim) vectors on the hypernetwork's device.

        A condition is what the conditioner takes (a description string for a one-part text
        checkpoint, ``{part: value}`` for a composite one); a mapping of parts is accepted by any
        checkpoint and checked against ``condition_parts``.
        """
        device = next(self.hypernet.parameters()).device
        conditions = [
            condition_from_parts(self.condition_parts, c) if isinstance(c, Mapping) else c
            for c in conditions
        ]
        return self.conditioner.encode(conditions).to(device)

    def generate(
        self, conditions: Sequence[Any], autocast_dtype: torch.dtype | None = None
    ) -> LoraWeights | BottleneckWeights:
        """One adapter per condition, in one batched forward pass (no gradients).

        Args:
            conditions: e.g. task descriptions for a text conditioner, ``{"description": ...,
                "language": ...}`` dicts for a description + language one (see ``encode``).
            autocast_dtype: run encoder and hypernetwork under autocast in this dtype
                (``torch.bfloat16`` is ~3x faster on CPUs with AMX and on GPUs; adapters then
                carry bf16 rounding). None keeps float32.
        """
        if not conditions:
            raise ValueError("generate needs at least one condition")
        device = next(self.hypernet.parameters()).device
        with (
            torch.inference_mode(),
            torch.autocast(
                device.type,
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ),
        ):
            return self.hypernet(self.encode(conditions))

    def save_peft(
        self,
        lora: LoraWeights,
        out_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write one generated adapter as a PEFT LoRA folder for this generator's base model;
        ``out_dir`` must be new, empty or an earlier adapter folder unless ``overwrite``;
        ``metadata``: extra strings for the safetensors header."""
        if not isinstance(lora, LoraWeights):
            raise TypeError(
                f"save_peft writes LoRA adapters; this is {lora.kind} (use save_adapter)"
            )
        return save_peft(
            lora,
            self.targets,
            out_dir,
            base_model_name_or_path=self.base_model_id,
            dtype=dtype,
            metadata={**base_weights_metadata(self.meta.base_model), **(metadata or {})},
            overwrite=overwrite,
        )

    def save_adapter(
        self,
        weights: LoraWeights | BottleneckWeights,
        out_dir: str | Path,
        dtype: torch.dtype = torch.float32,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        """Write one generated adapter in its kind's format: LoRA as a PEFT folder
        (``save_peft``), bottleneck as an AdapterHub folder (``hypergen.adapters.adapterhub``);
        ``metadata``: extra strings for the safetensors header."""
        if isinstance(weights, LoraWeights):
            return self.save_peft(
                weights, out_dir, dtype=dtype, overwrite=overwrite, metadata=metadata
            )
        spec = self.hypernet.config.bottleneck
        return save_adapterhub(
            weights,
            self.targets,
            out_dir,
            attention_module=spec.attention_module,
            mlp_module=spec.mlp_module,
            model_name=self.base_model_id,
            dtype=dtype,
            metadata={**base_weights_metadata(self.meta.base_model), **(metadata or {})},
            overwrite=overwrite,
        )

    @property
    def base_model_id(self) -> str:
        """The base model as other tools know it: built-in names map to their Hub id."""
        return hub_id(self.meta.base_model)


def init_checkpoint(
    out: str | Path,
    base_model: str = DEFAULT_BASE_MODEL,
    encoder_kind: str = DEFAULT_ENCODER_KIND,
    encoder: str = DEFAULT_ENCODER,
    rank: int = DEFAULT_LORA_RANK,
    alpha: float = DEFAULT_LORA_ALPHA,
    targets: Sequence[str] = DEFAULT_TARGET_MODULES,
    hidden_dim: int = DEFAULT_HIDDEN_DIM,
    num_blocks: int = DEFAULT_NUM_BLOCKS,
    seed: int = 0,
    overwrite: bool = False,
    language_features: str | None = None,
    condition: Sequence[str] = ("description",),
) -> Path:
    """Build an untrained generator for ``base_model`` and save it; its adapters are no-ops.

    Args:
        out: checkpoint folder to write (new, empty or an earlier checkpoint unless ``overwrite``).
        base_model: built-in name, local folder or Hub id.
        encoder_kind: conditioner kind (``hypergen.conditions.registry.CONDITIONERS``).
        encoder: encoder name or folder.
        rank, alpha, targets: the LoRA the network emits.
        hidden_dim, num_blocks: the network's size.
        seed: initialisation seed.
        overwrite: replace ``out`` even if it holds something else.
        language_features: if set, the condition is a description (``encoder_kind``,
            ``encoder``) and a language (these URIEL feature sets, ``hypergen.conditions.language``).
        condition: the parts besides a language, in order: ``description`` (``encoder_kind``),
            ``document`` and ``examples`` (chunked documents and rendered demonstrations,
            ``hypergen.conditions.document``, wrapping the sentence encoder ``encoder``).
    """
    encoders = {
        "description": EncoderConfig(kind=encoder_kind, name=encoder),
        "document": EncoderConfig(kind="document", name=encoder),
        "examples": EncoderConfig(kind="demonstrations", name=encoder),
    }
    unknown = [p for p in condition if p not in encoders]
    if unknown or not condition or len(set(condition)) != len(condition):
        raise ValueError(
            f"condition must be distinct parts from {list(encoders)}, got {list(condition)}"
        )
    parts = {p: encoders[p] for p in condition}
    if language_features:
        parts["language"] = EncoderConfig(kind="language", name=language_features)
    model, _ = load_base_model(base_model)
    if len(parts) == 1:
        [encoder_config] = parts.values()
    else:
        encoder_config = EncoderConfig(kind=COMPOSITE_KIND, parts=parts)
    conditioner = build_conditioner(encoder_config)
    config = HyperNetConfig(
        hidden_dim=hidden_dim,
        num_blocks=num_blocks,
        lora=LoraSpec(rank=rank, alpha=alpha, target_modules=list(targets)),
    )
    generator = AdapterGenerator.create(
        model, base_model, conditioner, encoder_config, config, seed=seed
    )
    return generator.save_pretrained(out, overwrite=overwrite)
