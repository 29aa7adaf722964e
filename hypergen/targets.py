"""Adapter sites in a Hugging Face causal LM: which linear modules, in which layer, what shape.

Targets are picked like peft's ``target_modules``: by module type (``nn.Linear`` or GPT-2's
``Conv1D``) and name suffix, never by hard-coded attribute paths, so any architecture whose
projections are linear layers inside numbered blocks works.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from torch import nn
from transformers.pytorch_utils import Conv1D

from hypergen.config import HyperNetConfig

_LAYER_INDEX = re.compile(r"\.(\d+)\.")


@dataclass(frozen=True)
class AdapterTarget:
    """One adapted module.

    Args:
        name: full module path, e.g. ``model.layers.3.self_attn.q_proj``.
        kind: the matched suffix, e.g. ``q_proj``; one hypernetwork head per kind.
        layer: index of the transformer block the module sits in.
        in_features: input width seen by the module.
        out_features: output width of the module.
        fan_in_fan_out: True for GPT-2's Conv1D, whose weight is stored (in, out).
    """

    name: str
    kind: str
    layer: int
    in_features: int
    out_features: int
    fan_in_fan_out: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _matches(name: str, kind: str) -> bool:
    return name == kind or name.endswith("." + kind)


def _shape(module: nn.Module) -> tuple[int, int, bool] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if isinstance(module, Conv1D):
        in_features, out_features = module.weight.shape
        return in_features, out_features, True
    return None


def _in_layers(model: nn.Module, kind: str, what: str) -> Iterator[tuple[str, nn.Module, int]]:
    """(name, module, layer index) of each module whose name ends with ``kind``; one outside a
    numbered layer is a ValueError (``what`` names the caller's kind of site in it)."""
    for name, module in model.named_modules():
        if not _matches(name, kind):
            continue
        layer = _LAYER_INDEX.search("." + name + ".")
        if layer is None:
            raise ValueError(
                f"{what} '{kind}' matches {name}, which is not inside a numbered layer"
            )
        yield name, module, int(layer.group(1))


def find_targets(model: nn.Module, target_modules: list[str]) -> list[AdapterTarget]:
    """List the adaptable modules of ``model`` matching ``target_modules``, ordered by (layer, kind).

    Every kind must match at least one linear module inside a numbered block, and all modules of
    one kind must share a shape (the hypernetwork has one output head per kind).

    Raises:
        ValueError: a kind matches nothing, matches a non-linear module, or changes shape.
    """
    targets: list[AdapterTarget] = []
    for kind in target_modules:
        found = []
        for name, module, layer in _in_layers(model, kind, "target"):
            shape = _shape(module)
            if shape is None:
                raise ValueError(
                    f"target '{kind}' matches {name} ({type(module).__name__}), "
                    "which is not a Linear or Conv1D layer"
                )
            found.append(AdapterTarget(name, kind, layer, *shape))
        if not found:
            suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if _shape(m)})
            raise ValueError(
                f"target module '{kind}' not found in {type(model).__name__}; "
                f"linear modules available: {suffixes}"
            )
        shapes = {(t.in_features, t.out_features) for t in found}
        if len(shapes) > 1:
            raise ValueError(
                f"target '{kind}' has several shapes {sorted(shapes)}; one head needs one"
            )
        targets.extend(found)
    return sorted(targets, key=lambda t: (t.layer, target_modules.index(t.kind)))


def find_block_targets(model: nn.Module, block_modules: list[str]) -> list[AdapterTarget]:
    """The blocks of ``model`` that a bottleneck adapter follows, ordered by (layer, kind).

    A block (``self_attn``, ``mlp``...) is matched by name suffix inside a numbered layer, exactly
    once per layer; its output is the model's hidden size (``config.hidden_size``), so
    ``in_features == out_features == hidden_size``.

    Raises:
        ValueError: a kind matches nothing, matches a linear layer, or matches twice in a layer.
    """
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if not hidden:
        raise ValueError(
            f"{type(model).__name__} has no config.hidden_size: cannot size bottleneck adapters"
        )
    targets: list[AdapterTarget] = []
    for kind in block_modules:
        found = []
        for name, module, layer in _in_layers(model, kind, "bottleneck block"):
            if _shape(module) is not None:
                raise ValueError(
                    f"bottleneck block '{kind}' matches {name}, a linear layer; name a block "
                    "(e.g. self_attn, mlp) whose output joins the residual stream"
                )
            found.append(AdapterTarget(name, kind, layer, hidden, hidden))
        if not found:
            raise ValueError(f"bottleneck block '{kind}' not found in {type(model).__name__}")
        layers = [t.layer for t in found]
        if len(set(layers)) != len(layers):
            raise ValueError(f"bottleneck block '{kind}' matches several modules in one layer")
        targets.extend(found)
    return sorted(targets, key=lambda t: (t.layer, block_modules.index(t.kind)))


def adapter_targets(model: nn.Module, config: HyperNetConfig) -> list[AdapterTarget]:
    """The sites of ``model`` that a hypernetwork with ``config`` writes adapters for."""
    finders = {"lora": find_targets, "bottleneck": find_block_targets}
    return finders[config.adapter_kind](model, config.adapter.target_modules)


def num_layers(targets: list[AdapterTarget]) -> int:
    """Number of layer slots the targets span (max index + 1)."""
    return max(t.layer for t in targets) + 1


def kind_shapes(targets: list[AdapterTarget]) -> dict[str, tuple[int, int]]:
    """``{kind: (in_features, out_features)}`` in first-seen order."""
    shapes: dict[str, tuple[int, int]] = {}
    for t in targets:
        shapes.setdefault(t.kind, (t.in_features, t.out_features))
    return shapes
