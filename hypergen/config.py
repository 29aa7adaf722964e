"""Configuration dataclasses: one per concern, validated on construction, JSON-serialisable."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

DEFAULT_BASE_MODEL = "smollm2-135m"
DEFAULT_ENCODER = "all-minilm-l6-v2"
DEFAULT_ENCODER_KIND = "text"
# the conditioner kind that concatenates the vectors of several condition parts
COMPOSITE_KIND = "composite"
# the URIEL feature sets of the language conditioner (lang2vec names joined by "+")
DEFAULT_LANGUAGE_FEATURES = "syntax_knn+phonology_knn+inventory_knn"
# the reviewed task -> language table of the BIG-bench split (``hypergen.data.task_languages``)
DEFAULT_TASK_LANGUAGES = "evaluation/splits/bigbench_languages.yaml"
# the LoRA the hypernetwork emits and the network's size, unless a config says otherwise
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 16.0
DEFAULT_TARGET_MODULES = ("q_proj", "v_proj")
DEFAULT_HIDDEN_DIM = 128
DEFAULT_NUM_BLOCKS = 2
# the adapter kind and, for the bottleneck kind, its shape
DEFAULT_ADAPTER_KIND = "lora"
DEFAULT_BOTTLENECK_SIZE = 16
DEFAULT_PLACEMENT = "pfeiffer"
DEFAULT_NON_LINEARITY = "relu"
# dtype names accepted in configs, CLI flags and API requests; DTYPES maps them to torch dtypes
DTYPE_NAMES = ("float32", "float16", "bfloat16")
HALF_DTYPE_NAMES = ("float16", "bfloat16")  # what autocast takes


def __getattr__(name: str) -> Any:
    # DTYPES needs torch: built on first use, so that reading this module (e.g. for `hypergen
    # --help`) does not import torch.
    if name == "DTYPES":
        import torch

        globals()["DTYPES"] = {n: getattr(torch, n) for n in DTYPE_NAMES}
        return globals()["DTYPES"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def unknown_keys(data: Mapping[str, Any], allowed: Iterable[str]) -> list[str]:
    """The keys of ``data`` not in ``allowed``, sorted."""
    return sorted(set(data) - set(allowed))


def check_keys(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """The one unknown-key rule (configs, files, requests): a typo must not silently fall back to
    a default.

    Raises:
        ValueError: naming ``where``, the unknown keys and the known ones.
    """
    unknown = unknown_keys(data, allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(allowed)}")


def check_dtype(value: Any, where: str, allowed: Sequence[str] = DTYPE_NAMES) -> None:
    """Raise a ValueError naming ``where`` unless ``value`` is one of the ``allowed`` dtype names."""
    if value not in allowed:
        raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}")


def _from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, failing on unknown keys."""
    check_keys(data, [f.name for f in fields(cls)], cls.__name__)
    return cls(**data)


@dataclass
class LoraSpec:
    """What the hypernetwork emits: LoRA factors for these module kinds in every layer.

    Args:
        rank: LoRA rank r; A is (r, in), B is (out, r).
        alpha: scaling numerator; the update is ``B @ A * alpha / r`` (as in peft).
        target_modules: module-name suffixes to adapt, e.g. ``["q_proj", "v_proj"]``.
    """

    rank: int = DEFAULT_LORA_RANK
    alpha: float = DEFAULT_LORA_ALPHA
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"LoraSpec.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be > 0, got {self.alpha}")
        if not self.target_modules:
            raise ValueError("LoraSpec.target_modules must name at least one module")
        self.target_modules = list(self.target_modules)

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoraSpec:
        return _from_dict(cls, data)


# bottleneck placements: which blocks of each layer get an adapter after them
PLACEMENTS = {"houlsby": ("attention", "mlp"), "pfeiffer": ("mlp",)}
# bottleneck non-linearities (names as in transformers' ACT2FN, which AdapterHub uses)
NON_LINEARITIES = ("relu", "silu", "swish", "gelu", "tanh")
ADAPTER_KINDS = ("lora", "bottleneck")


@dataclass
class BottleneckSpec:
    """What the hypernetwork emits for the bottleneck kind: a residual bottleneck after blocks.

    Args:
        size: bottleneck width m; down is (m, d), up is (d, m) for hidden size d.
        placement: ``houlsby`` (after the attention and the MLP block of every layer) or
            ``pfeiffer`` (after the MLP block only).
        non_linearity: between the projections (``relu``, ``silu``/``swish``, ``gelu``, ``tanh``).
        attention_module, mlp_module: name suffixes of the blocks (Llama: ``self_attn``, ``mlp``;
            GPT-2: ``attn``, ``mlp``).
    """

    size: int = DEFAULT_BOTTLENECK_SIZE
    placement: str = DEFAULT_PLACEMENT
    non_linearity: str = DEFAULT_NON_LINEARITY
    attention_module: str = "self_attn"
    mlp_module: str = "mlp"

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"BottleneckSpec.size must be >= 1, got {self.size}")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"BottleneckSpec.placement must be one of {sorted(PLACEMENTS)}, got {self.placement!r}"
            )
        if self.non_linearity not in NON_LINEARITIES:
            raise ValueError(
                f"BottleneckSpec.non_linearity must be one of {NON_LINEARITIES}, got {self.non_linearity!r}"
            )
        if not self.attention_module or not self.mlp_module:
            raise ValueError("BottleneckSpec.attention_module and mlp_module must be set")

    @property
    def target_modules(self) -> list[str]:
        """Block-name suffixes that get an adapter after them, attention first."""
        names = {"attention": self.attention_module, "mlp": self.mlp_module}
        return [names[block] for block in PLACEMENTS[self.placement]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottleneckSpec:
        return _from_dict(cls, data)


@dataclass
class EncoderConfig:
    """Which conditioner turns a condition into a vector.

    Args:
        kind: conditioner kind, a key of ``hypergen.conditions.registry.CONDITIONERS`` (``"text"``,
            ``"hashing"``, ``"language"``, ``"document"``, ``"demonstrations"``, ``"composite"``).
        name: built-in name, local folder or Hub id of the encoder model (for ``language``: the
            URIEL feature sets, e.g. ``syntax_knn+phonology_knn+inventory_knn``; for ``document`` and
            ``demonstrations``: the wrapped sentence encoder, ``hash-<n>`` for the hashing one). For
            ``composite`` it is derived: the part names joined by ``+``.
        parts: for ``composite`` only: condition part (``description``, ``language``) -> the
            encoder of that part, in the order their vectors are concatenated. Checkpoints of
            one-part conditioners have no such key.
    """

    kind: str = DEFAULT_ENCODER_KIND
    name: str = DEFAULT_ENCODER
    parts: dict[str, EncoderConfig] = field(default_factory=dict)

    def __post_init__(self):
        if not self.kind:
            raise ValueError("EncoderConfig.kind must be set")
        self.parts = {
            part: e if isinstance(e, EncoderConfig) else EncoderConfig.from_dict(e)
            for part, e in dict(self.parts).items()
        }
        if self.kind == COMPOSITE_KIND:
            if len(self.parts) < 2:
                raise ValueError(
                    f"EncoderConfig.parts of a composite encoder must name at least two condition "
                    f"parts, got {sorted(self.parts)}"
                )
            if any(e.kind == COMPOSITE_KIND for e in self.parts.values()):
                raise ValueError("EncoderConfig.parts must not hold another composite encoder")
            self.name = "+".join(self.parts)
        elif self.parts:
            raise ValueError(
                f"EncoderConfig.parts is for kind {COMPOSITE_KIND!r}, not {self.kind!r}"
            )
        if not self.name:
            raise ValueError("EncoderConfig.name must be set")

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "name": self.name}
        if self.parts:  # one-part encoders keep the key set (and checkpoint JSON) they always had
            data["parts"] = {part: e.to_dict() for part, e in self.parts.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return _from_dict(cls, data)


@dataclass
class HyperNetConfig:
    """Shape of the hypernetwork (see ``hypergen.hypernet``).

    Args:
        condition_dim: size of the conditioner's output vector.
        hidden_dim: width of the task projection, the embeddings and the trunk.
        num_blocks: residual MLP blocks in the shared trunk.
        dropout: dropout on the condition projection (regularises over descriptions).
        adapter_kind: what to emit, ``lora`` or ``bottleneck`` (checkpoints before the bottleneck
            kind have no such key and are LoRA).
        lora: the LoRA spec (used when ``adapter_kind == "lora"``).
        bottleneck: the bottleneck spec (used when ``adapter_kind == "bottleneck"``).
    """

    condition_dim: int = 384
    hidden_dim: int = DEFAULT_HIDDEN_DIM
    num_blocks: int = DEFAULT_NUM_BLOCKS
    dropout: float = 0.0
    adapter_kind: str = DEFAULT_ADAPTER_KIND
    lora: LoraSpec = field(default_factory=LoraSpec)
    bottleneck: BottleneckSpec = field(default_factory=BottleneckSpec)

    def __post_init__(self):
        if isinstance(self.lora, dict):
            self.lora = LoraSpec.from_dict(self.lora)
        if isinstance(self.bottleneck, dict):
            self.bottleneck = BottleneckSpec.from_dict(self.bottleneck)
        if self.adapter_kind not in ADAPTER_KINDS:
            raise ValueError(
                f"HyperNetConfig.adapter_kind must be one of {ADAPTER_KINDS}, got {self.adapter_kind!r}"
            )
        for name in ("condition_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"HyperNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_blocks < 0:
            raise ValueError(f"HyperNetConfig.num_blocks must be >= 0, got {self.num_blocks}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"HyperNetConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def adapter(self) -> LoraSpec | BottleneckSpec:
        """The spec of the adapter kind this network emits."""
        return self.lora if self.adapter_kind == "lora" else self.bottleneck

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HyperNetConfig:
        return _from_dict(cls, data)
