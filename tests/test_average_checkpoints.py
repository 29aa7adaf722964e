"""Weight averaging of checkpoints (``training/average_checkpoints.py``)."""

from __future__ import annotations

import pytest
import torch

from hypergen.checkpoint import checkpoint_hash, load_checkpoint
from tests.conftest import make_generator, randomize_
from training.average_checkpoints import average_checkpoints, main


@pytest.fixture
def two_checkpoints(llama, llama_dir, conditioner, tmp_path):
    folders = []
    for seed in (0, 1):
        generator = make_generator(llama[0], llama_dir, conditioner, ["q_proj", "v_proj"])
        randomize_(generator, seed=seed)
        folders.append(str(generator.save_pretrained(tmp_path / f"c{seed}")))
    return folders


def test_the_average_is_the_weighted_mean_of_the_weights(two_checkpoints):
    a, b = (load_checkpoint(f)[0].state_dict() for f in two_checkpoints)
    assert any(not torch.equal(a[name], b[name]) for name in a), "two different checkpoints"
    net, meta = average_checkpoints(two_checkpoints, [0.25, 0.75])
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, 0.25 * a[name] + 0.75 * b[name])
    parents = meta.training["average_of"]
    assert [p["weight"] for p in parents] == [0.25, 0.75]
    assert parents[0]["sha256"] == checkpoint_hash(two_checkpoints[0])


def test_mismatched_checkpoints_and_bad_weights_are_refused(
    two_checkpoints, llama, llama_dir, conditioner, tmp_path
):
    other = make_generator(llama[0], llama_dir, conditioner, ["q_proj", "v_proj", "down_proj"])
    wider = str(other.save_pretrained(tmp_path / "wider"))
    with pytest.raises(ValueError, match="differs from .* in hypernetwork, targets"):
        average_checkpoints([two_checkpoints[0], wider])
    with pytest.raises(ValueError, match="sum to 1"):
        average_checkpoints(two_checkpoints, [0.5, 0.6])
    with pytest.raises(ValueError, match="at least two"):
        average_checkpoints(two_checkpoints[:1])


def test_the_command_writes_a_checkpoint_and_keeps_existing_folders(
    two_checkpoints, tmp_path, capsys
):
    out = tmp_path / "soup"
    assert main([*two_checkpoints, "-o", str(out), "--dtype", "float32"]) == 0
    net, meta = load_checkpoint(out)
    a, b = (load_checkpoint(f)[0].state_dict() for f in two_checkpoints)
    for name, tensor in net.state_dict().items():
        torch.testing.assert_close(tensor, (a[name] + b[name]) / 2)
    assert meta.trained_steps == 1 and len(meta.training["average_of"]) == 2
    before = checkpoint_hash(out)
    with pytest.raises(SystemExit):
        main([*two_checkpoints, "-o", str(out), "--weights", "0.9,0.1"])
    assert "--overwrite" in capsys.readouterr().err and checkpoint_hash(out) == before
    bad = [*two_checkpoints, "-o", str(out), "--weights", "1,1", "--overwrite"]
    assert main(bad) == 2 and "sum to 1" in capsys.readouterr().err
    assert checkpoint_hash(out) == before
