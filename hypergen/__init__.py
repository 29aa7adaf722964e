"""hypergen: a hypernetwork turns a condition (a task description) into LoRA adapters for a
frozen language model in one forward pass. Importing does no work; models load on demand."""

from hypergen.adapters import LoraWeights, lora_delta, lora_delta_weight
from hypergen.apply import apply_adapters
from hypergen.checkpoint import CheckpointMeta, checkpoint_hash, load_checkpoint, save_checkpoint
from hypergen.conditions import CONDITIONERS, HashingConditioner, TextConditioner, build_conditioner
from hypergen.config import EncoderConfig, HyperNetConfig, LoraSpec
from hypergen.export import load_peft, save_peft
from hypergen.generator import AdapterGenerator
from hypergen.hypernet import HyperNetwork
from hypergen.models import hypergen_home, load_base_model
from hypergen.targets import AdapterTarget, find_targets

__all__ = [
    "CONDITIONERS",
    "AdapterGenerator",
    "AdapterTarget",
    "CheckpointMeta",
    "EncoderConfig",
    "HashingConditioner",
    "HyperNetConfig",
    "HyperNetwork",
    "LoraSpec",
    "LoraWeights",
    "TextConditioner",
    "apply_adapters",
    "build_conditioner",
    "checkpoint_hash",
    "find_targets",
    "hypergen_home",
    "load_base_model",
    "load_checkpoint",
    "load_peft",
    "lora_delta",
    "lora_delta_weight",
    "save_checkpoint",
    "save_peft",
]
