"""A non-editable install: build the wheel from this tree, install it into a fresh virtual
environment (``--system-site-packages`` for the dependencies, ``--no-deps``, offline), and check
from outside the repository that the shipped checkpoint resolves inside the installed package,
for ``hypergen generate`` and for ``hypergen serve``, that the service's page and /openapi.json are
served, and that the subcommands are found."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from hypergen.checkpoint import DEFAULT_CHECKPOINT, checkpoint_hash

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.cfg", "pyproject.toml", "README.md")
TREES = ("hypergen", "service", "evaluation", "training", "checkpoints")

CHECK = """
import json, sys
from pathlib import Path
import hypergen, hypergen.checkpoint as c
import hypergen.data.tasks, hypergen.decoding  # subpackages ship too
from hypergen.checkpoint import checkpoint_hash, load_checkpoint
from service import create_app
from service.engine import resolve_checkpoint
_, meta = load_checkpoint(c.DEFAULT_CHECKPOINT)
web = create_app({"TESTING": True}).test_client()  # no models load for these two routes
print(json.dumps({
    "page": web.get("/").status_code,
    "openapi_paths": sorted(web.get("/openapi.json").get_json()["paths"]),
    "package": hypergen.__file__,
    "default": str(c.DEFAULT_CHECKPOINT),
    "served": str(resolve_checkpoint()),
    "hash": checkpoint_hash(c.DEFAULT_CHECKPOINT),
    "trained_steps": meta.trained_steps,
}))
"""


def _run(*args, cwd: Path) -> str:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_wheel_ships_the_default_checkpoint(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in TREES:  # symlinks kept: hypergen/checkpoints -> ../checkpoints, as in the repo
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=ignore)
    pip = ("-m", "pip", "--disable-pip-version-check", "--no-input")
    _run(
        sys.executable,
        *pip,
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-w",
        str(tmp_path / "dist"),
        str(src),
        cwd=tmp_path,
    )
    wheel = next((tmp_path / "dist").glob("hypergen-*.whl"))

    venv = tmp_path / "venv"
    _run(
        sys.executable,
        "-m",
        "venv",
        "--system-site-packages",
        "--without-pip",
        str(venv),
        cwd=tmp_path,
    )
    python = venv / "bin" / "python"
    _run(python, *pip, "install", "--no-deps", "--no-index", str(wheel), cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"  # not the repository: nothing resolves relative to it
    elsewhere.mkdir()
    found = json.loads(_run(python, "-c", CHECK, cwd=elsewhere).strip().splitlines()[-1])
    site = venv.resolve()
    assert Path(found["package"]).resolve().is_relative_to(site), "the wheel, not the repo"
    default = Path(found["default"])
    assert default.is_relative_to(site) and not default.is_symlink()
    assert Path(found["served"]) == default, "hypergen serve uses the same default"
    assert found["hash"] == checkpoint_hash(DEFAULT_CHECKPOINT) and found["trained_steps"] > 0
    # the page ships as package data; /openapi.json is generated, so it needs no file
    assert found["page"] == 200 and "/v1/completions" in found["openapi_paths"]

    help_text = _run(venv / "bin" / "hypergen", "--help", cwd=elsewhere)
    assert all(
        f"  {name} " in help_text for name in ("generate", "init-checkpoint", "serve", "eval")
    )
