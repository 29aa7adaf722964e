"""AdapterHub folders (the ``adapters`` library's format) <-> ``BottleneckWeights``.

A written folder is what ``adapters`` (AdapterHub, 1.x) saves with ``use_safetensors=True``:

    adapter_config.json   {"config": {"mh_adapter": ..., "output_adapter": ..., ...},
                           "hidden_size", "model_type", "model_class", "model_name", "name",
                           "version", "hypergen": {...}}
    adapter.safetensors   <layer>.<attention_adapters|output_adapters>.adapters.<name>.
                          adapter_down.0.{weight,bias} / adapter_up.{weight,bias}

e.g. ``model.layers.3.output_adapters.adapters.hypergen.adapter_up.weight`` for a Llama model.
It loads with ``model.load_adapter(folder, use_safetensors=True)`` after ``adapters.init(model)``
(``tests/test_adapterhub.py`` checks equal logits with a real ``adapters`` install).

The config is AdapterHub's Houlsby layout (``DoubleSeqBnConfig``: the adapter reads the block's
output before the residual add, ``original_ln_before=False``), with ``mh_adapter=False`` for the
Pfeiffer placement (after the MLP only). AdapterHub's own Pfeiffer config (``SeqBnConfig``)
reads the residual stream after the add instead; reading such a folder is refused with a message,
as is any other option this module does not implement (layer norms, gating, parallel, PHM...).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from hypergen.adapters.bottleneck import ACTIVATIONS, BottleneckWeights
from hypergen.adapters.export import write_safetensors
from hypergen.atomic import FolderKind, atomic_folder
from hypergen.targets import AdapterTarget

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter.safetensors"  # AdapterHub's SAFE_WEIGHTS_NAME
ADAPTERS_VERSION = "adapters.1.3.0"  # the release whose format this writes (and the test loads)
# AdapterHub's names for the layer's bottleneck slots
LOCATIONS = {"attention": "attention_adapters", "mlp": "output_adapters"}
# a folder holding only these is a previous AdapterHub adapter and may be replaced
ADAPTERHUB_FOLDER = FolderKind(
    "AdapterHub adapter", CONFIG_NAME, frozenset({CONFIG_NAME, WEIGHTS_NAME, "README.md"})
)

# The options of AdapterHub's BnConfig (1.3.0) with the values whose math
# ``hypergen.adapters.bottleneck`` implements; written as they are and required when reading.
_FIXED = {
    "original_ln_before": False,
    "original_ln_after": True,
    "ln_before": False,
    "ln_after": False,
    "is_parallel": False,
    "scaling": 1.0,
    "use_gating": False,
    "residual_before_ln": True,
    "adapter_residual_before_ln": False,
    "inv_adapter": None,
    "cross_adapter": False,
    "dropout": 0.0,
    "phm_layer": False,
    "stochastic_depth": 0.0,
}
# options with no effect on the math here: written with AdapterHub's defaults, ignored on reading
_DEFAULTS = {
    "init_weights": "bert",
    "init_weights_seed": None,
    "inv_adapter_reduction_factor": None,
    "leave_out": [],
    "phm_dim": 4,
    "factorized_phm_W": True,
    "shared_W_phm": False,
    "shared_phm_rule": True,
    "factorized_phm_rule": False,
    "phm_c_init": "normal",
    "phm_init_range": 0.0001,
    "learn_phm": True,
    "hypercomplex_nonlinearity": "glorot-uniform",
    "phm_rank": 1,
    "phm_bias": True,
}
_KEY = re.compile(
    r"^(?P<layer>.+\.\d+)\.(?P<location>attention_adapters|output_adapters)\.adapters\."
    r"(?P<name>[^.]+)\.(?P<param>adapter_down\.0\.weight|adapter_down\.0\.bias|adapter_up\.weight|adapter_up\.bias)$"
)
_PARAMS = {
    "adapter_down.0.weight": "down",
    "adapter_down.0.bias": "down_bias",
    "adapter_up.weight": "up",
    "adapter_up.bias": "up_bias",
}


def _layer_path(target: AdapterTarget) -> str:
    return target.name.rsplit(".", 1)[0]


def save_adapterhub(
    weights: BottleneckWeights,
    targets: list[AdapterTarget],
    out_dir: str | Path,
    attention_module: str = "self_attn",
    mlp_module: str = "mlp",
    name: str = "hypergen",
    model_name: str | None = None,
    model_type: str | None = None,
    model_class: str | None = None,
    dtype: torch.dtype = torch.float32,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write adapter 0 of ``weights`` as an AdapterHub folder, atomically.

    Args:
        weights: a batch holding exactly one adapter.
        targets: the adapted blocks (``hypergen.targets.find_block_targets``).
        out_dir: folder to create, or an earlier adapter folder to replace (``hypergen.atomic``).
        attention_module, mlp_module: the block suffixes that map to AdapterHub's
            ``attention_adapters`` (``mh_adapter``) and ``output_adapters`` (``output_adapter``).
        name: the adapter's name inside AdapterHub (``model.load_adapter`` activates it by this name).
        model_name, model_type, model_class: recorded as AdapterHub records them (informative).
        dtype: dtype of the saved tensors.
        metadata: extra string metadata stored in the safetensors header.
        overwrite: also replace a non-empty ``out_dir`` that is not an adapter folder.
    """
    if len(weights) != 1:
        raise ValueError(
            f"save_adapterhub writes one adapter; got a batch of {len(weights)} (use .select(i))"
        )
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise ValueError(f"adapter name must be letters, digits, '_' or '-', got {name!r}")
    by_name = {t.name: t for t in targets}
    missing = [n for n in weights.module_names if n not in by_name]
    if missing:
        raise ValueError(f"no target description for blocks {missing[:3]}")
    location = {attention_module: "attention", mlp_module: "mlp"}
    used = [by_name[n] for n in weights.module_names]
    unknown = sorted({t.kind for t in used} - set(location))
    if unknown:
        raise ValueError(f"blocks {unknown} are neither '{attention_module}' nor '{mlp_module}'")
    hidden = {t.in_features for t in used}
    if len(hidden) != 1:
        raise ValueError(f"blocks of several hidden sizes {sorted(hidden)}")
    hidden_size, size = hidden.pop(), weights.size
    # AdapterHub sizes the bottleneck as int(hidden_size // reduction_factor)
    reduction_factor = hidden_size / size
    if int(hidden_size // reduction_factor) != size:
        raise ValueError(
            f"bottleneck size {size} is not expressible as a reduction factor of {hidden_size}"
        )
    blocks = {location[t.kind] for t in used}
    layers = {t.layer for t in used}
    for block in blocks:  # AdapterHub puts an adapter at a location in every layer or in none
        have = {t.layer for t in used if location[t.kind] == block}
        if have != layers:
            raise ValueError(
                f"{block} adapters cover layers {sorted(have)}, not all of {sorted(layers)}"
            )

    config = {
        "mh_adapter": "attention" in blocks,
        "output_adapter": "mlp" in blocks,
        "reduction_factor": reduction_factor,
        "non_linearity": weights.non_linearity,
        **_FIXED,
        **_DEFAULTS,
    }
    tensors = {}
    for target in used:
        prefix = f"{_layer_path(target)}.{LOCATIONS[location[target.kind]]}.adapters.{name}"
        for param, field in _PARAMS.items():
            tensors[f"{prefix}.{param}"] = (
                getattr(weights, field)[target.name][0].to(dtype).contiguous()
            )
    full = {
        "config": config,
        "hidden_size": hidden_size,
        "model_class": model_class,
        "model_name": model_name,
        "model_type": model_type,
        "name": name,
        "version": ADAPTERS_VERSION,
        # ours: how to map the folder back onto a model's blocks (AdapterHub ignores it)
        "hypergen": {
            "adapter_kind": "bottleneck",
            "attention_module": attention_module,
            "mlp_module": mlp_module,
        },
    }
    out_dir = Path(out_dir)
    with atomic_folder(out_dir, ADAPTERHUB_FOLDER, overwrite) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        write_safetensors(tensors, tmp / WEIGHTS_NAME, {"format": "pt", **(metadata or {})})
    return out_dir


def load_adapterhub(
    folder: str | Path,
    dtype: torch.dtype = torch.float32,
    attention_module: str | None = None,
    mlp_module: str | None = None,
) -> tuple[BottleneckWeights, dict]:
    """Read an AdapterHub bottleneck folder into a one-adapter ``BottleneckWeights`` (and its config).

    Only safetensors weights are read (never pickles). Folders written by other tools load when
    their options are the ones implemented here (AdapterHub's ``DoubleSeqBnConfig``, or it with
    ``mh_adapter=False``); anything else is a ValueError naming the option.

    Args:
        folder: the adapter folder.
        dtype: dtype of the returned tensors.
        attention_module, mlp_module: block suffixes of the target model (default: what the
            folder records under ``hypergen``, else Llama's ``self_attn`` and ``mlp``).
    """
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} is not an AdapterHub adapter folder: no {CONFIG_NAME}")
    if not weights_path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {WEIGHTS_NAME} (pickled .bin weights are not read)"
        )
    full = json.loads(config_path.read_text())
    config = full.get("config")
    if not isinstance(config, dict):
        # a malformed file is a ValueError, like json's own decode errors
        raise ValueError(f"{folder}: {CONFIG_NAME} has no 'config' object")  # noqa: TRY004
    if config.get("architecture") is not None:  # AdapterHub's bottleneck config has none
        raise ValueError(f"{folder}: a {config['architecture']} adapter, not a bottleneck adapter")
    for key, want in _FIXED.items():
        have = config.get(key, want)
        if key == "scaling" and isinstance(have, (int, float)) and not isinstance(have, bool):
            have = float(have)
        if have != want:
            raise ValueError(
                f"{folder}: AdapterHub option {key}={have!r} is not supported (only {want!r})"
            )
    if not isinstance(config.get("reduction_factor"), (int, float)) or isinstance(
        config["reduction_factor"], bool
    ):
        raise ValueError(f"{folder}: only a single numeric reduction_factor is supported")  # noqa: TRY004
    act = config.get("non_linearity")
    if act not in ACTIVATIONS:
        raise ValueError(
            f"{folder}: non_linearity {act!r} is not supported; known {sorted(ACTIVATIONS)}"
        )
    ours = full.get("hypergen") or {}
    modules = {
        "attention_adapters": attention_module or ours.get("attention_module", "self_attn"),
        "output_adapters": mlp_module or ours.get("mlp_module", "mlp"),
    }

    fields: dict[str, dict[str, torch.Tensor]] = {f: {} for f in _PARAMS.values()}
    names, found = set(), set()
    for key, tensor in load_file(weights_path).items():
        match = _KEY.match(key)
        if match is None:
            raise ValueError(f"{folder}: unexpected key {key}")
        names.add(match["name"])
        found.add(match["location"])
        block = f"{match['layer']}.{modules[match['location']]}"
        fields[_PARAMS[match["param"]]][block] = tensor.to(dtype).unsqueeze(0)
    if len(names) != 1:
        raise ValueError(f"{folder}: expected one adapter, found names {sorted(names)}")
    try:
        weights = BottleneckWeights(*fields.values(), non_linearity=act)
    except ValueError as err:
        raise ValueError(f"{folder}: {err}") from err
    # the keys say where each adapter sits; the config's flags must agree with them
    flags = {"mh_adapter": "attention_adapters", "output_adapter": "output_adapters"}
    expected = {location for flag, location in flags.items() if config.get(flag)}
    if found != expected:
        raise ValueError(
            f"{folder}: weights at {sorted(found)} but the config enables {sorted(expected)}"
        )
    return weights, full
