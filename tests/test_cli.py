"""The `hypergen` command, run in-process through `hypergen.cli.main`."""

from __future__ import annotations

import json
import logging

from hypergen.adapters.export import load_peft
from hypergen.cli import main


def test_init_checkpoint_is_labelled_untrained(llama_dir, tmp_path, capsys, caplog):
    out = tmp_path / "untrained"
    code = main(
        [
            "init-checkpoint",
            "-o",
            str(out),
            "--base-model",
            llama_dir,
            "--encoder-kind",
            "hashing",
            "--encoder",
            "hash-32",
            "--rank",
            "2",
            "--hidden-dim",
            "16",
        ]
    )
    assert code == 0
    assert "UNTRAINED" in capsys.readouterr().out
    config = json.loads((out / "hypernet_config.json").read_text())
    assert config["trained_steps"] == 0 and config["hypernet"]["lora"]["rank"] == 2
    with caplog.at_level(logging.WARNING):
        assert (
            main(["generate", "--checkpoint", str(out), "a task", "-o", str(tmp_path / "a")]) == 0
        )
    assert "UNTRAINED" in caplog.text
    lora, _ = load_peft(tmp_path / "a")
    assert all(b.abs().max() == 0 for b in lora.B.values())


def test_generate_batch_writes_one_folder_each(checkpoint_dir, tmp_path, capsys):
    descriptions = [
        "Answer questions about dates.",
        "Translate English to French.",
        "Count the letters.",
    ]
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                checkpoint_dir,
                *descriptions,
                "-o",
                str(tmp_path),
                "--dtype",
                "float16",
                "--bf16",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.split()
    assert len(printed) == 3 and printed[0].endswith("000-answer-questions-about-dates")
    loras = [load_peft(p)[0] for p in printed]
    name = loras[0].module_names[0]
    assert not (loras[0].B[name] == loras[1].B[name]).all(), "each description gets its own adapter"
    config = json.loads((tmp_path / printed[0].split("/")[-1] / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["q_proj", "v_proj"]


def test_generate_errors_exit_nonzero(tmp_path, capsys):
    assert (
        main(["generate", "--checkpoint", str(tmp_path / "nope"), "x", "-o", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err
    assert "not a hypergen checkpoint" in err
    assert not (tmp_path / "o").exists()
