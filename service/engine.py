"""Engine: the frozen base LM, its tokenizer and the adapter generator, loaded once per process.

The engine makes adapters (``adapter_id``, ``make_adapters``), checks adapters read from the
store against the base model, tokenizes prompts, and runs one batch of completions with a
different adapter per row (``complete``), or hands out a decode batch that requests join and leave
between steps (``decoder``). It holds no request state: the batchers (``service.batcher``,
``service.continuous``) decide what runs together.

The checkpoint may emit either adapter kind (``HyperNetConfig.adapter_kind``): LoRA adapters are
stored as PEFT folders, bottleneck adapters as AdapterHub folders (``ADAPTER_FORMATS``), and a
batch may mix both kinds (``service.batched``).

Which checkpoint: the one configured, else the trained default shipped with the package
(``hypergen.checkpoint.DEFAULT_CHECKPOINT``), else an UNTRAINED one built on first start under
``$HYPERGEN_HOME/checkpoints`` (its adapters are exact no-ops; the service labels it everywhere).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hypergen.adapters.bottleneck import BottleneckWeights
from hypergen.adapters.lora import LoraWeights
from hypergen.checkpoint import CONFIG_NAME, checkpoint_hash
from hypergen.checkpoint import DEFAULT_CHECKPOINT as SHIPPED_CHECKPOINT
from hypergen.config import DTYPES
from hypergen.decoding import Completion, Decoder, Job, eos_token_ids, model_forward, new_cache
from hypergen.generator import AdapterGenerator
from hypergen.layout import checkpoint_cache_dir
from hypergen.models import load_base_model
from hypergen.packed_linear import pack_linear_weights
from hypergen.precision import resolve_model_dtype
from hypergen.targets import find_block_targets, find_targets
from service.batched import RowAdapters

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = SHIPPED_CHECKPOINT  # package data: resolves in non-editable installs too
UNTRAINED_CHECKPOINT = "untrained-smollm2-minilm"
# adapter kind -> the format of its stored folder and download (adapter metadata ``format``)
ADAPTER_FORMATS = {"lora": "peft-lora", "bottleneck": "adapterhub"}
UNTRAINED_WARNING = (
    "UNTRAINED hypernetwork: its adapters are exact no-ops (outputs equal the base model's) "
    "until a trained checkpoint is configured"
)


def resolve_checkpoint(configured: str | Path | None = None, home: Path | None = None) -> Path:
    """The checkpoint folder to serve.

    Args:
        configured: an explicit folder; it must exist (a typo must not silently serve another).
        home: cache root for the untrained fallback (default ``hypergen_home()``).

    Returns:
        ``configured``, else the repository's trained default if present, else an untrained
        SmolLM2 + MiniLM checkpoint, built with ``hypergen.generator.init_checkpoint`` on first use.
    """
    if configured:
        folder = Path(configured)
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"checkpoint {folder} does not exist (no {CONFIG_NAME})")
        return folder
    if (DEFAULT_CHECKPOINT / CONFIG_NAME).is_file():
        return DEFAULT_CHECKPOINT
    folder = checkpoint_cache_dir(UNTRAINED_CHECKPOINT, home)
    if not (folder / CONFIG_NAME).is_file():
        from hypergen.generator import init_checkpoint

        logger.warning(
            "no trained checkpoint at %s: building an UNTRAINED one in %s",
            DEFAULT_CHECKPOINT,
            folder,
        )
        init_checkpoint(out=str(folder))
    return folder


def _inline(fn: Callable[[], Any]) -> Any:
    return fn()


@dataclass
class _AdapterOrder:
    """One ``Engine.make_adapters`` call's conditions, filled by whichever call runs the
    generator next."""

    conditions: list[Any]
    dtype: str
    adapters: list[LoraWeights | BottleneckWeights] | None = None
    error: Exception | None = None

    @property
    def done(self) -> bool:
        return self.adapters is not None or self.error is not None


class Engine:
    """Base LM + tokenizer + adapter generator.

    Args:
        model: the frozen causal LM (never modified; adapters are applied by hooks).
        tokenizer: its tokenizer (needs a pad or eos token).
        generator: makes adapters for ``model``.
        checkpoint: the generator's checkpoint folder (hashed into adapter ids).
        device: where inputs and adapters go.
    """

    # Runs the generator: in the calling thread, or where the service runs its torch work
    # (``service.batcher.JobQueue.call``, set per engine by ``service.runtime``).
    compute: Callable[[Callable[[], Any]], Any] = staticmethod(_inline)

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        generator: AdapterGenerator,
        checkpoint: str | Path,
        device: torch.device | str = "cpu",
    ):
        self.model, self.tokenizer, self.generator = model, tokenizer, generator
        self.checkpoint = Path(checkpoint)
        self.checkpoint_hash = checkpoint_hash(self.checkpoint)
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.base_model = generator.meta.base_model
        self.base_model_id = generator.base_model_id
        self.eos_ids = eos_token_ids(tokenizer, model)
        self.max_positions = getattr(model.config, "max_position_embeddings", None)
        # Fast tokenizers are not thread-safe ("Already borrowed"); the encoder has one too.
        self.tokenizer_lock = threading.Lock()
        self._generator_lock = threading.Lock()
        self._orders: list[_AdapterOrder] = []  # make_adapters calls waiting for the generator
        self._orders_lock = threading.Lock()

    @classmethod
    def load(
        cls,
        checkpoint: str | Path | None = None,
        base_model: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        packed_linear: bool = True,
    ) -> Engine:
        """Load everything once (see ``resolve_checkpoint``); ``base_model`` overrides the
        checkpoint's (e.g. a local copy of the same model). ``dtype``: the base model's, or
        ``auto`` (bf16 on an AMX CPU, else fp32: ``hypergen.precision``). ``packed_linear``: on
        a CPU in fp32 or bf16, run the base model's linear layers on oneDNN-prepacked weights
        (``hypergen.packed_linear``: same outputs, faster decoding)."""
        import peft  # noqa: F401 - imported once here, not on the first adapter written (seconds)

        folder = resolve_checkpoint(checkpoint)
        name = base_model or json.loads((folder / CONFIG_NAME).read_text())["base_model"]
        dtype = resolve_model_dtype(dtype, device)
        model, tokenizer = load_base_model(name, dtype=DTYPES[dtype], device=device)
        generator = AdapterGenerator.from_pretrained(folder, device=device, base_model=model)
        if packed_linear and device == "cpu":
            packed = pack_linear_weights(model)
            # the condition encoder too: 1.5-3 ms of the ~12 a description's encoding takes
            for network in generator.conditioner.networks():
                packed += pack_linear_weights(network)
            logger.info("engine: %d linear layers on prepacked oneDNN weights", packed)
        engine = cls(model, tokenizer, generator, folder, device=device)
        logger.info(
            "engine: %s + %s (%s)", name, folder, "UNTRAINED" if engine.untrained else "trained"
        )
        return engine

    # --- description -----------------------------------------------------------------------

    @property
    def untrained(self) -> bool:
        return self.generator.meta.untrained

    @property
    def condition_kind(self) -> str:
        return self.generator.conditioner.kind

    @property
    def condition_parts(self) -> tuple[str, ...]:
        """The condition parts the checkpoint takes, e.g. ``("description",)``."""
        return self.generator.condition_parts

    @property
    def adapter_kind(self) -> str:
        return self.generator.hypernet.config.adapter_kind

    def info(self) -> dict[str, Any]:
        """What /healthz and adapter metadata say about the served models."""
        # Not meta_dict(meta): that copies the whole training record (2.4 ms), on every
        # adapter stored.
        meta = self.generator.meta
        info = {
            "base_model": self.base_model,
            "base_model_id": self.base_model_id,
            "base_model_dtype": str(self.dtype).removeprefix("torch."),
            "checkpoint": {
                "name": self.checkpoint.name,
                "hash": self.checkpoint_hash,
                "untrained": self.untrained,
                "trained_steps": meta.trained_steps,
                "encoder": meta.encoder.to_dict(),
                "condition_parts": list(self.condition_parts),
            },
            "adapter_kind": self.adapter_kind,
            self.adapter_kind: self.adapter_settings("float32"),  # "lora" or "bottleneck"
        }
        if self.untrained:
            info["warning"] = UNTRAINED_WARNING
        return info

    @property
    def adapter_format(self) -> str:
        """How adapters are stored and downloaded: ``peft-lora`` or ``adapterhub``."""
        return ADAPTER_FORMATS[self.adapter_kind]

    def adapter_settings(self, dtype: str) -> dict[str, Any]:
        """The adapters' shape as metadata shows it (and adapter ids hash it): for LoRA rank,
        alpha and modules; for bottlenecks size, placement, non-linearity and blocks."""
        config = self.generator.hypernet.config
        if self.adapter_kind == "lora":
            spec = config.lora
            return {
                "rank": spec.rank,
                "alpha": spec.alpha,
                "target_modules": list(spec.target_modules),
                "dtype": dtype,
            }
        spec = config.bottleneck
        return {
            "size": spec.size,
            "placement": spec.placement,
            "non_linearity": spec.non_linearity,
            "target_modules": list(spec.target_modules),
            "dtype": dtype,
        }

    # --- adapters --------------------------------------------------------------------------

    def normalize(self, condition: Any) -> Any:
        """The canonical condition (raises ValueError with a message for bad input)."""
        return self.generator.conditioner.normalize(condition)

    def condition(self, parts: dict[str, Any]) -> Any:
        """The canonical condition made of request ``parts`` (``{"description": ..., "language":
        ...}``); ValueError naming what the checkpoint takes when a part is extra or missing."""
        return self.generator.condition(**parts)

    def condition_record(self, normalized: Any) -> dict[str, Any]:
        """A condition as adapter metadata shows it: ``{"kind": ..., <part>: <value>, ...}``."""
        parts = (
            normalized if isinstance(normalized, dict) else {self.condition_parts[0]: normalized}
        )
        return {"kind": self.condition_kind, **parts}

    def adapter_id(self, normalized: Any, dtype: str = "float32") -> str:
        """Content hash of (checkpoint, normalised condition, adapter settings): 64 hex digits.

        The whole condition is hashed: every part of a composite one (a description-only id is
        what it always was)."""
        payload = {
            "checkpoint": self.checkpoint_hash,
            "condition": {"kind": self.condition_kind, "value": normalized},
            "adapter": self.adapter_settings(dtype),
        }
        return hashlib.sha256(
            json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def make_adapters(
        self, normalized: Sequence[Any], dtype: str = "float32"
    ) -> list[LoraWeights | BottleneckWeights]:
        """One adapter per condition, in one forward pass of the hypernetwork.

        Concurrent calls are combined: while the generator runs, other calls queue their
        conditions, and the next call to get the generator makes all of them in one pass, so a
        burst of requests with new descriptions is not made one request at a time (a pass of 16
        costs about half as much per adapter as 16 passes of one). A pass that fails is rerun
        call by call, so a failing call fails alone.

        Tensors are rounded to ``dtype`` (the dtype they are stored in), so what is served equals
        what is downloaded.
        """
        order = _AdapterOrder(list(normalized), dtype)
        with self._orders_lock:
            self._orders.append(order)
        with self._generator_lock:
            if not order.done:  # else a call before it made this one's adapters too
                with self._orders_lock:
                    orders, self._orders = self._orders, []
                self.compute(lambda: self._make(orders))
        if order.error is not None:
            raise order.error
        return order.adapters

    def _make(self, orders: list[_AdapterOrder]) -> None:
        """Fill ``orders`` from one pass of the generator (the caller holds it)."""
        conditions = [c for order in orders for c in order.conditions]
        try:
            weights = self.generator.generate(conditions) if conditions else None
        except Exception as err:  # noqa: BLE001 - raised in the calling request's thread
            if len(orders) == 1:
                orders[0].error = err
                return
            for order in orders:  # one bad condition must not fail the other calls
                self._make([order])
            return
        start = 0
        for order in orders:
            order.adapters = [
                weights.select(i).to(dtype=DTYPES[order.dtype]).to(self.device, torch.float32)
                for i in range(start, start + len(order.conditions))
            ]
            start += len(order.conditions)

    def save_adapter(
        self,
        weights: LoraWeights | BottleneckWeights,
        folder: Path,
        dtype: str,
        metadata: dict[str, str],
    ) -> Path:
        """Write one adapter in its kind's format (atomically): a PEFT LoRA folder or an
        AdapterHub folder (``AdapterGenerator.save_adapter``); ``folder`` belongs to the store,
        which replaces any leftover there."""
        return self.generator.save_adapter(
            weights, folder, dtype=DTYPES[dtype], overwrite=True, metadata=metadata
        )

    def check_adapter(self, weights: LoraWeights | BottleneckWeights) -> None:
        """Raise ValueError unless every module (LoRA) or block (bottleneck) of ``weights`` exists
        in the base model with the adapter's sizes (adapters read from the store may come from
        other checkpoints, of either kind)."""
        kinds = sorted({name.rsplit(".", 1)[-1] for name in weights.module_names})
        bottleneck = isinstance(weights, BottleneckWeights)
        try:
            found = (find_block_targets if bottleneck else find_targets)(self.model, kinds)
        except ValueError as err:
            raise ValueError(
                f"the adapter does not fit the served base model {self.base_model}: {err}"
            ) from err
        shapes = {t.name: (t.in_features, t.out_features) for t in found}
        for name in weights.module_names:
            if bottleneck:  # down (1, m, d), up (1, d, m): d must be the hidden size
                want = (weights.down[name].shape[2], weights.up[name].shape[1])
            else:
                want = (weights.A[name].shape[2], weights.B[name].shape[1])
            if shapes.get(name) != want:
                raise ValueError(
                    f"adapter module {name} {want} does not fit the served base model "
                    f"{self.base_model} ({shapes.get(name, 'missing')})"
                )

    # --- text ------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Prompt text -> token ids (with the tokenizer's special tokens, e.g. BOS)."""
        with self.tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=True).input_ids)

    def detokenize(self, ids: list[int]) -> str:
        """Token ids -> text, special tokens skipped (as completions are returned)."""
        with self.tokenizer_lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True)

    def tokenize_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Messages -> prompt tokens through the model's chat template (ValueError if none)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                f"base model {self.base_model} has no chat template; use /v1/completions"
            )
        with self.tokenizer_lock:
            text = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def decoder(self, isolate_failures: bool = True) -> Decoder:
        """A decode batch on the base model, row k under its job's adapter, that rows may join
        and leave between steps (``hypergen.decoding.Decoder``; continuous batching).

        Args:
            isolate_failures: a decode step that raises is retried in halves, so only a row that
                fails on its own ends (``Decoder``); False: the exception propagates.
        """
        adapters = RowAdapters(dtype=self.dtype, device=self.device)
        return Decoder(
            model_forward(self.model, adapters.batch),
            self.tokenizer,
            self.eos_ids,
            self.device,
            tokenizer_lock=self.tokenizer_lock,
            new_cache=lambda: new_cache(self.model),
            on_join=adapters.join,
            on_leave=adapters.leave,
            isolate_failures=isolate_failures,
        )

    def complete(
        self, jobs: Sequence[Job], on_first_token=None, between_steps=None
    ) -> list[Completion]:
        """Run ``jobs`` as one batch, row k under ``jobs[k].adapter`` (any kind, or None); a
        failing forward pass raises (the window batcher then reruns the batch in halves).
        ``between_steps``: called between decode steps (the window batcher runs other threads'
        torch work there)."""
        return self.decoder(isolate_failures=False).run(
            jobs, on_first_token, between_steps=between_steps
        )
