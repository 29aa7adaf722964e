"""A real AdapterHub ``adapters`` install loads our bottleneck export and gives the same logits.

``adapters`` 1.3.0 pins transformers ~=4.57 while this project runs 5.x, so the check runs in a
virtual environment of its own (``python -m venv``; torch 2.13.0, then ``adapters==1.3.0``, from
the package index) through ``tests/adapterhub_reference.py``, which imports no hypergen code.
Slow (the first run installs ~1 GB); set ``HYPERGEN_ADAPTERS_VENV`` to a folder to build the
environment there once and reuse it (``make check-adapterhub``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from hypergen.adapters.adapterhub import CONFIG_NAME, WEIGHTS_NAME
from hypergen.adapters.apply import apply_adapters
from hypergen.config import BottleneckSpec, HyperNetConfig
from hypergen.generator import AdapterGenerator
from tests.conftest import ENCODER, build_llama

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]  # builds a venv: pip installs
ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = (("torch==2.13.0",), ("adapters==1.3.0",))  # torch first: the CPU wheel


def _run(*args: str, timeout: int = 1200) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def adapters_python(tmp_path_factory) -> str:
    """The python of a venv with ``adapters`` 1.3.0 (built once per folder)."""
    venv = Path(
        os.environ.get("HYPERGEN_ADAPTERS_VENV") or tmp_path_factory.mktemp("adapters-venv")
    )
    python = venv / "bin" / "python"
    if not python.exists():
        _run(sys.executable, "-m", "venv", str(venv))
    probe = subprocess.run(
        [str(python), "-c", "import adapters, transformers; print(adapters.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0 or probe.stdout.strip() != "1.3.0":
        for requirement in REQUIREMENTS:
            _run(
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "-q",
                *requirement,
            )
    return str(python)


@pytest.mark.parametrize("placement", ["houlsby", "pfeiffer"])
@pytest.mark.parametrize("non_linearity", ["relu", "silu"])
def test_adapters_library_loads_export_with_same_logits(
    adapters_python, tmp_path, tokenizer, conditioner, placement, non_linearity
):
    model = build_llama(len(tokenizer)).eval()
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        adapter_kind="bottleneck",
        bottleneck=BottleneckSpec(size=8, placement=placement, non_linearity=non_linearity),
    )
    generator = AdapterGenerator.create(model, "tiny-llama", conditioner, ENCODER, config)
    torch.manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: the zero-initialised up head made random
        for head in generator.hypernet.heads.values():
            head.to_up.weight.normal_(std=0.05)
            head.to_up_bias.weight.normal_(std=0.05)
    weights = generator.generate(["Answer questions about dates."])
    generator.save_adapter(weights, tmp_path / "adapter")

    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"},
        tmp_path / "model.safetensors",
    )
    llama = {
        k: getattr(model.config, k)
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
            "tie_word_embeddings",
            "rms_norm_eps",
        )
    }  # rope: both defaults
    (tmp_path / "llama_config.json").write_text(json.dumps(llama))
    input_ids = torch.randint(0, len(tokenizer), (2, 9), generator=torch.Generator().manual_seed(0))
    save_file({"input_ids": input_ids}, tmp_path / "input.safetensors")
    with torch.no_grad():
        base = model(input_ids).logits
        with apply_adapters(model, weights):
            ours = model(input_ids).logits

    out = _run(adapters_python, str(ROOT / "tests" / "adapterhub_reference.py"), str(tmp_path))
    assert "loaded 'hypergen'" in out
    reference = load_file(tmp_path / "reference.safetensors")
    # the same base model on both sides, and the adapter changes it
    assert (reference["base"] - base).abs().max().item() < 1e-5
    assert (ours - base).abs().max().item() > 1e-2
    assert (reference["logits"] - ours).abs().max().item() < 1e-4
    # AdapterHub saves back exactly our key names, tensors and config
    ours_saved = load_file(tmp_path / "adapter" / WEIGHTS_NAME)
    resaved = load_file(tmp_path / "resaved" / WEIGHTS_NAME)
    assert resaved.keys() == ours_saved.keys()
    assert all(torch.equal(resaved[k], ours_saved[k]) for k in resaved)
    theirs = json.loads((tmp_path / "resaved" / CONFIG_NAME).read_text())
    mine = json.loads((tmp_path / "adapter" / CONFIG_NAME).read_text())
    assert theirs["config"] == mine["config"]
    assert (theirs["name"], theirs["hidden_size"], theirs["version"]) == (
        "hypergen",
        64,
        mine["version"],
    )
