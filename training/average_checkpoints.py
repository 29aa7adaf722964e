"""Average the weights of hypergen checkpoints: a "model soup" (Wortsman et al., 2022).

    python training/average_checkpoints.py A B [C ...] -o OUT [--weights 0.5,0.5]
        [--dtype float16] [--overwrite]

Runs fine-tuned from one start (here: SFT runs from the same reconstruction stage) tend to lie in
one basin of the loss, where the average of their weights works about as well as each of them and
can generalise better than either (the same idea as WiSE-FT's interpolation between a general and
a specialised model). The checkpoints must agree on base model, encoder, hypernetwork shape and
targets; the output's training record names its parents, their hashes and weights.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from hypergen.checkpoint import CheckpointMeta, checkpoint_hash, load_checkpoint, save_checkpoint
from hypergen.config import DTYPES
from hypergen.hypernet import HyperNetwork


def average_checkpoints(
    folders: Sequence[str | Path], weights: Sequence[float] | None = None
) -> tuple[HyperNetwork, CheckpointMeta]:
    """The weighted average of the checkpoints in ``folders`` (default: equal weights).

    Raises:
        ValueError: fewer than two checkpoints, weights that do not match them or do not sum to
            1, or checkpoints that differ in base model, encoder, shape or targets.
    """
    if len(folders) < 2:
        raise ValueError("averaging needs at least two checkpoints")
    weights = list(weights) if weights is not None else [1.0 / len(folders)] * len(folders)
    if len(weights) != len(folders) or any(w < 0 for w in weights):
        raise ValueError(f"need one weight >= 0 per checkpoint, got {weights}")
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"the weights must sum to 1, got {sum(weights):g}")
    loaded = [load_checkpoint(folder) for folder in folders]
    first, first_meta = loaded[0]

    def identity(net: HyperNetwork, meta: CheckpointMeta) -> dict:
        return {
            "base model": meta.base_model,
            "encoder": meta.encoder.to_dict(),
            "hypernetwork": net.config.to_dict(),
            "targets": [t.to_dict() for t in net.targets],
        }

    expected = identity(first, first_meta)
    for folder, (net, meta) in zip(folders[1:], loaded[1:]):
        theirs = identity(net, meta)
        differ = [key for key in expected if theirs[key] != expected[key]]
        if differ:
            raise ValueError(f"{folder} differs from {folders[0]} in {', '.join(differ)}")
    states = [net.state_dict() for net, _ in loaded]
    first.load_state_dict(
        {name: sum(w * state[name] for w, state in zip(weights, states)) for name in states[0]}
    )
    meta = CheckpointMeta(
        base_model=first_meta.base_model,
        encoder=first_meta.encoder,
        trained_steps=max(m.trained_steps for _, m in loaded),
        training={
            "average_of": [
                {"checkpoint": str(f), "sha256": checkpoint_hash(f), "weight": w}
                for f, w in zip(folders, weights)
            ],
        },
    )
    return first, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoint folders (at least two)")
    parser.add_argument("-o", "--out", required=True, help="the new checkpoint folder")
    parser.add_argument("--weights", help="comma-separated, summing to 1 (default: equal)")
    parser.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.overwrite:
        parser.error(f"{out} exists and is not empty; pass --overwrite to replace it")
    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        hypernet, meta = average_checkpoints(args.checkpoints, weights)
    except (ValueError, FileNotFoundError) as err:
        print(f"average_checkpoints: {err}", file=sys.stderr)
        return 2
    with torch.no_grad():
        save_checkpoint(hypernet, meta, out, dtype=DTYPES[args.dtype], overwrite=True)
    print(f"wrote {out} (sha256 {checkpoint_hash(out)[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
