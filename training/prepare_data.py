"""Fetch the BIG-bench task files into a local cache (the `make data` step).

    python training/prepare_data.py [--cache DIR] [--sdist bigbench-1.0.0.tar.gz]

Downloads the `bigbench==1.0.0` sdist from PyPI with pip (never installs it: it needs
tensorflow, t5 and seqio), then streams the tarball and extracts only the
`bigbench/benchmark_tasks/**/task.json` members into DIR as `<task>/task.json` and
`<task>/<subtask>/task.json`. The default DIR is `$HYPERGEN_HOME/data/bigbench`, with
HYPERGEN_HOME defaulting to `~/.cache/hypergen`.

The data carries BIG-bench's canary string: it must stay out of the repository. The sdist is
358 MB and the extracted JSON about 1.7 GB (a handful of image-as-text tasks make up most of it).
Running the script again is a no-op once DIR holds a completed extraction.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from hypergen.atomic import atomic_write_text
from hypergen.layout import suite_dir

logger = logging.getLogger(__name__)

PACKAGE = "bigbench==1.0.0"
TASKS_DIR = "bigbench/benchmark_tasks/"
MARKER = ".complete.json"  # written last; its presence means the cache is whole


def default_cache() -> Path:
    """The default cache folder: `$HYPERGEN_HOME/data/bigbench` (HYPERGEN_HOME: ~/.cache/hypergen)."""
    return suite_dir().expanduser()


def download_sdist(dest: Path) -> Path:
    """Download the BIG-bench sdist with pip into `dest` and return the tarball's path.

    Args:
        dest: Folder to download into.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation"]
    cmd += ["-d", str(dest), PACKAGE]
    logger.info("running: %s", " ".join(cmd))
    subprocess.run(cmd, check=True)
    tarballs = sorted(dest.glob("bigbench-*.tar.gz"))
    if not tarballs:
        raise RuntimeError(f"pip download left no bigbench-*.tar.gz in {dest}")
    return tarballs[0]


def member_target(name: str) -> PurePosixPath | None:
    """Map a tar member name to its path inside the cache, or None if it is not a task file.

    Args:
        name: The member's name in the tarball, e.g.
            `bigbench-1.0.0/bigbench/benchmark_tasks/navigate/task.json`.

    Raises:
        ValueError: For absolute paths or paths containing `..`.
    """
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"refusing unsafe tar member {name!r}")
    if path.name != "task.json" or TASKS_DIR not in name:
        return None
    rel = PurePosixPath(name.split(TASKS_DIR, 1)[1])
    if not rel.parts or len(rel.parts) > 3:  # <task>/task.json or <task>/<sub>/task.json
        return None
    return rel


def file_kind(data: dict) -> str:
    """Classify a parsed task.json: "multiple_choice", "generative" or "no_examples".

    Args:
        data: The file's JSON object.
    """
    examples = data.get("examples") or []
    if not examples:
        return "no_examples"  # e.g. the index file of a task with subtasks
    return "multiple_choice" if any("target_scores" in ex for ex in examples) else "generative"


def extract_tasks(tarball: Path, cache: Path) -> dict[str, int]:
    """Stream `tarball` and write its task.json members under `cache`.

    Args:
        tarball: The bigbench sdist (.tar.gz).
        cache: Destination folder; created if missing.

    Returns:
        Counts: "files", "tasks" (top-level folders) and one count per `file_kind`.
    """
    counts: Counter[str] = Counter()
    cache.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, mode="r|gz") as tar, tqdm(desc="extracting", unit=" files") as bar:
        for member in tar:
            rel = member_target(member.name)
            if rel is None or not member.isfile():
                continue
            source = tar.extractfile(member)
            assert source is not None, f"cannot read {member.name}"
            with source:
                raw = source.read()
            out = cache / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_name(out.name + ".part")
            tmp.write_bytes(raw)
            tmp.replace(out)
            counts["files"] += 1
            counts["tasks"] += len(rel.parts) == 2
            counts[file_kind(json.loads(raw))] += 1
            bar.update(1)
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    """Download and extract the BIG-bench task files unless the cache is already complete.

    Args:
        argv: Command-line arguments (defaults to sys.argv[1:]).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=default_cache(), help="output folder")
    parser.add_argument("--sdist", type=Path, default=None, help="use this bigbench tarball")
    parser.add_argument("--force", action="store_true", help="extract even if cache is complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    cache: Path = args.cache.expanduser()
    if (cache / MARKER).is_file() and not args.force:
        logger.info("cache %s is complete; skipping download", cache)
    else:
        with tempfile.TemporaryDirectory(prefix="bigbench-") as tmp:
            tarball = args.sdist if args.sdist is not None else download_sdist(Path(tmp))
            counts = extract_tasks(tarball, cache)
        atomic_write_text(
            cache / MARKER, json.dumps({"package": PACKAGE, "counts": counts}, indent=1)
        )
        logger.info("extracted %d task files into %s", counts.get("files", 0), cache)

    counts = json.loads((cache / MARKER).read_text())["counts"]
    print(f"BIG-bench cache: {cache}")
    print(
        f"{counts.get('tasks', 0)} tasks, {counts.get('files', 0)} task.json files: "
        f"{counts.get('multiple_choice', 0)} multiple choice, "
        f"{counts.get('generative', 0)} generative, "
        f"{counts.get('no_examples', 0)} without examples (subtask indexes)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
