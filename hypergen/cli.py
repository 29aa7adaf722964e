"""The ``hypergen`` command: subcommands mapped to plain typed functions.

    hypergen init-checkpoint -o checkpoints/untrained          # an untrained (no-op) generator
    hypergen generate --checkpoint DIR "a task description" -o OUT
    hypergen serve ...                                          # see service/server.py
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

import torch

from hypergen.config import (
    DEFAULT_BASE_MODEL,
    DEFAULT_ENCODER,
    DTYPES,
    EncoderConfig,
    HyperNetConfig,
    LoraSpec,
)

logger = logging.getLogger(__name__)



def init_checkpoint(
    out: str,
    base_model: str = DEFAULT_BASE_MODEL,
    encoder_kind: str = "text",
    encoder: str = DEFAULT_ENCODER,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = ("q_proj", "v_proj"),
    hidden_dim: int = 128,
    num_blocks: int = 2,
    seed: int = 0,
) -> Path:
    """Build an untrained generator for ``base_model`` and save it; its adapters are no-ops."""
    from hypergen.conditions import build_conditioner
    from hypergen.generator import AdapterGenerator
    from hypergen.models import load_base_model

    model, _ = load_base_model(base_model)
    encoder_config = EncoderConfig(kind=encoder_kind, name=encoder)
    conditioner = build_conditioner(encoder_config)
    config = HyperNetConfig(
        hidden_dim=hidden_dim, num_blocks=num_blocks, lora=LoraSpec(rank=rank, alpha=alpha, target_modules=list(targets))
    )
    generator = AdapterGenerator.create(model, base_model, conditioner, encoder_config, config, seed=seed)
    return generator.save_pretrained(out)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "adapter"


def generate(
    checkpoint: str, descriptions: list[str], out: str, dtype: str = "float32", bf16: bool = False
) -> list[Path]:
    """Generate one PEFT folder per description, all in one batch.

    One description writes the folder ``out``; several write ``out/<index>-<slug>`` each.
    ``bf16`` runs encoder and hypernetwork under bfloat16 autocast (faster for large batches).
    """
    from hypergen.generator import AdapterGenerator

    generator = AdapterGenerator.from_pretrained(checkpoint)
    lora = generator.generate(descriptions, autocast_dtype=torch.bfloat16 if bf16 else None)
    if len(descriptions) == 1:
        folders = [Path(out)]
    else:
        folders = [Path(out) / f"{i:03d}-{_slug(d)}" for i, d in enumerate(descriptions)]
    for i, folder in enumerate(folders):
        generator.save_peft(lora.select(i), folder, dtype=DTYPES[dtype])
    return folders


def _add_init(sub) -> None:
    p = sub.add_parser("init-checkpoint", help="create an untrained (no-op) hypernetwork checkpoint")
    p.add_argument("-o", "--out", required=True, help="checkpoint folder to write")
    p.add_argument("--base-model", default=DEFAULT_BASE_MODEL, help="built-in name, local folder or Hub id")
    p.add_argument("--encoder-kind", default="text", help="conditioner kind (text, hashing)")
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="encoder name or folder")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--targets", default="q_proj,v_proj", help="comma-separated module suffixes")
    p.add_argument("--hidden-dim", type=int, default=128)
    p.add_argument("--num-blocks", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="write PEFT LoRA folders for task descriptions")
    p.add_argument("--checkpoint", required=True, help="hypernetwork checkpoint folder")
    p.add_argument("descriptions", nargs="+", help="one or more task descriptions (one batch)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of saved tensors")
    p.add_argument("--bf16", action="store_true", help="generate under bfloat16 autocast (large batches)")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve and eval own their flags; hand them the rest of the line untouched.
    if argv and argv[0] == "serve":
        from service.server import main as serve_main

        return serve_main(argv[1:])
    if argv and argv[0] == "eval":
        from evaluation.__main__ import main as eval_main

        return eval_main(argv[1:])

    parser = argparse.ArgumentParser(prog="hypergen", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{init-checkpoint,generate,serve,eval}")
    _add_init(sub)
    _add_generate(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")

    try:
        if args.command == "init-checkpoint":
            out = init_checkpoint(
                args.out, args.base_model, args.encoder_kind, args.encoder, args.rank, args.alpha,
                tuple(t for t in args.targets.split(",") if t), args.hidden_dim, args.num_blocks, args.seed,
            )
            print(f"wrote UNTRAINED checkpoint {out} (its adapters are no-ops until trained)")
        elif args.command == "generate":
            # AdapterGenerator.from_pretrained warns (stderr) when the checkpoint is untrained.
            for folder in generate(args.checkpoint, args.descriptions, args.out, args.dtype, args.bf16):
                print(folder)
    except (ValueError, FileNotFoundError) as err:
        print(f"hypergen {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
