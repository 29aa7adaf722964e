"""training/device_bundle.py: the pipeline's inputs cut into parts for a registry-less GPU machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_training import write_toy_suite
from training import device_bundle


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    suite, split = write_toy_suite(tmp_path / "in")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, size in (
        ("fake_model-0.1-py3-none-any.whl", 5000),
        ("gguf-0.1-py3-none-any.whl", 300),
    ):
        (wheels / name).write_bytes(bytes(range(256)) * (size // 256))
    return {"suite": suite, "split": split, "wheels": wheels}


def _pack(inputs, out: Path, part_mib: float = 0.002) -> int:
    return device_bundle.main(
        ["pack", "--out", str(out), "--part-mib", str(part_mib), "--split", str(inputs["split"]),
         "--suite", str(inputs["suite"]), "--wheels", str(inputs["wheels"])]
    )  # fmt: skip


def test_parts_respect_the_size_limit_and_rebuild_every_file(inputs, tmp_path):
    out = tmp_path / "parts"
    assert _pack(inputs, out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    limit = int(0.002 * 2**20)
    assert len(manifest["parts"]) >= 3 and all(p["bytes"] <= limit for p in manifest["parts"])
    assert manifest["task_files"] == 6
    home = tmp_path / "home"
    wheels = device_bundle.unpack(device_bundle.join_parts(out), home)
    assert {w.name: w.read_bytes() for w in wheels} == {
        w.name: w.read_bytes() for w in inputs["wheels"].glob("*.whl")
    }
    for task in inputs["suite"].iterdir():
        copied = home / "data" / "bigbench" / task.name / "task.json"
        assert copied.read_bytes() == (task / "task.json").read_bytes()


def test_a_damaged_or_missing_part_is_refused(inputs, tmp_path):
    out = tmp_path / "parts"
    _pack(inputs, out)
    first = out / "part-001"
    data = bytearray(first.read_bytes())
    data[10] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="part-001 is damaged"):
        device_bundle.join_parts(out)
    first.unlink()
    with pytest.raises(FileNotFoundError, match="part-001 is missing"):
        device_bundle.join_parts(out)


def test_pack_never_writes_over_existing_parts(inputs, tmp_path, capsys):
    out = tmp_path / "parts"
    assert _pack(inputs, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _pack(inputs, out) == 2
    assert "already holds parts" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
