"""The shipped recipe in one command: LoRA library -> reconstruction -> SFT, into one folder.

    python training/pipeline.py --out DIR                       # SmolLM2 configs, any device
    python training/pipeline.py --out DIR --all steps=50        # key=value for every stage
    python training/pipeline.py --out DIR --sft steps=400 --library examples_per_task=64

Stages (each a recipe of its own, with its YAML config):
    library  training/train_library.py   (library_smollm2.yaml)  -> DIR/library/<task>/ PEFT folders
    recon    training/meta_train.py      (recon_smollm2.yaml)    -> DIR/recon/final
    sft      training/meta_train.py      (smollm2.yaml)          -> DIR/sft/final, DIR/checkpoint

On a CUDA device every stage runs under bf16 autocast (``mixed_precision=bf16``); on a CPU it
stays float32 unless a config says otherwise (bf16 autocast is ~40x slower on CPUs without
AVX512-BF16/AMX). Logs: ``DIR/pipeline.log`` plus each stage's ``log.jsonl``. Rerunning the same
command continues: finished stages are skipped and a stage cut short resumes from its state.
Nothing outside DIR is written (the SFT stage's ``export_dir`` is pointed at ``DIR/checkpoint``).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from training import meta_train, train_library

CONFIGS = Path(__file__).resolve().parent / "configs"
STAGES = ("library", "recon", "sft")
logger = logging.getLogger("training.pipeline")


def stage_overrides(stage: str, out: Path, common: list[str], own: list[str]) -> list[str]:
    """Overrides that put a stage's inputs and outputs inside ``out`` (user's last, so they win)."""
    device = ["mixed_precision=bf16"] if torch.cuda.is_available() else []
    library = f"lora_library={out / 'library'}"
    placed = {
        "library": [f"output_dir={out / 'library'}", f"run_dir={out / 'library-run'}"],
        "recon": [library, f"output_dir={out / 'recon'}", "resume=true", "export_dir=null"],
        "sft": [
            library,
            f"output_dir={out / 'sft'}",
            f"init_from={out / 'recon' / 'final'}",
            f"export_dir={out / 'checkpoint'}",
            "resume=true",
        ],
    }[stage]
    return [*placed, *device, *common, *own]


def done(stage: str, out: Path) -> bool:
    marker = {
        "library": out / "library" / "library.json",
        "recon": out / "recon" / "final" / "model.safetensors",
        "sft": out / "sft" / "final" / "model.safetensors",
    }[stage]
    return marker.is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for every output of the run")
    parser.add_argument("--library-config", default=str(CONFIGS / "library_smollm2.yaml"))
    parser.add_argument("--recon-config", default=str(CONFIGS / "recon_smollm2.yaml"))
    parser.add_argument("--sft-config", default=str(CONFIGS / "smollm2.yaml"))
    parser.add_argument("--all", nargs="*", default=[], metavar="KEY=VALUE", help="for every stage")
    for stage in STAGES:
        parser.add_argument(f"--{stage}", nargs="*", default=[], metavar="KEY=VALUE", help=f"for the {stage} stage")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset to run")
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; expected a subset of {list(STAGES)}")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logger.setLevel(logging.INFO)  # its own lines always reach pipeline.log
    handler = logging.FileHandler(out / "pipeline.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    configs = {"library": args.library_config, "recon": args.recon_config, "sft": args.sft_config}
    device = "cuda (bf16 autocast)" if torch.cuda.is_available() else "cpu"
    logger.info("pipeline into %s on %s: %s", out, device, ", ".join(stages))
    for stage in stages:
        if done(stage, out):
            logger.info("stage %s: already complete, skipped", stage)
            continue
        own = getattr(args, stage)
        overrides = stage_overrides(stage, out, args.all, own)
        logger.info("stage %s: %s %s", stage, configs[stage], " ".join(overrides))
        start = time.perf_counter()
        recipe = train_library if stage == "library" else meta_train
        recipe.main(["--config", configs[stage], *overrides])
        logger.info("stage %s: done in %.0f s", stage, time.perf_counter() - start)
    logging.getLogger().removeHandler(handler)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
