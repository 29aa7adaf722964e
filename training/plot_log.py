"""Plot training curves from run folders' ``log.jsonl`` files (one panel per logged quantity).

    python training/plot_log.py RUN_DIR [RUN_DIR ...] -o curve.png

Each run becomes one line per panel: train losses (``loss``, ``sft``, ``reconstruction``), the
held-out loss and the specificity (mean pairwise delta-W cosine) logged at evaluations. Runs
given in order are drawn one after the other on a shared step axis (a pipeline's stages).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PANELS = {
    "train loss": ("loss", "sft", "reconstruction"),
    "held-out loss": ("heldout_loss",),
    "specificity (pairwise ΔW cosine)": ("specificity_heldout", "specificity_train"),
}


def read_log(run: Path) -> list[dict]:
    path = run / "log.jsonl" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no log.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot(runs: list[Path], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 3.6))
    offset = 0
    for run in runs:
        records = read_log(run)
        for ax, (title, keys) in zip(axes, PANELS.items()):
            for key in keys:
                points = [(offset + r["step"], r[key]) for r in records if key in r]
                if points:
                    xs, ys = zip(*points)
                    ax.plot(
                        xs, ys, marker="o" if len(points) < 8 else None, label=f"{run.name}: {key}"
                    )
            ax.set_title(title)
            ax.set_xlabel("step (stages in order)")
        offset += max((r["step"] for r in records), default=0)
    for ax in axes:
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "runs", nargs="+", type=Path, help="run folders (or log.jsonl files), in order"
    )
    parser.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args(argv)
    try:
        print(plot(args.runs, args.out))
    except FileNotFoundError as err:
        print(f"plot_log: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
