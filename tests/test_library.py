"""The batched LoRA library trainer (training/train_library.py) and the training text formats, on a
tiny Llama and the toy BIG-bench-format suite of test_training.py."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from hypergen import (
    AdapterGenerator,
    LoraWeights,
    apply_adapters,
    find_targets,
    load_base_model,
    load_peft,
)
from hypergen.data.text_batches import IGNORE_INDEX, tokenize_pairs
from tests.test_training import write_toy_suite
from training.config import LibraryTrainConfig
from training.formats import chat_question, render, tokenize_formatted
from training.lora_bank import LoraBank
from training.objectives import example_losses
from training.train_library import LibraryTrainer, make_plan

PROMPTS = ["Q: red sea 1\nA:", "Q: cat mat 2\nA:", "Q: sun day 3\nA:"]
ANSWERS = [" cat", " dog", " sun"]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, llama_dir) -> dict[str, str]:
    suite, split = write_toy_suite(tmp_path_factory.mktemp("toy"))
    return {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}


def _losses(model, tokenizer, lora: LoraWeights) -> torch.Tensor:
    batch = tokenize_pairs(tokenizer, PROMPTS, ANSWERS)
    with apply_adapters(model, lora):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return example_losses(logits, batch["labels"])


def test_each_example_sends_gradient_to_its_own_task_only(llama, tokenizer):
    model, _ = llama
    bank = LoraBank(find_targets(model, ["q_proj", "v_proj"]), num_tasks=4, rank=2, alpha=4.0)
    with torch.no_grad():  # B = 0 would give A no gradient at all: make both factors live
        for B in bank.B:
            B.normal_(std=0.1)
    _losses(model, tokenizer, bank(torch.tensor([0, 2, 2])))[0].backward()
    for params in (bank.A, bank.B):
        for p in params:
            assert p.grad[0].abs().sum() > 0
            assert (
                p.grad[1:].abs().sum() == 0
            )  # rows 1 and 3 unused; row 2's examples not in the loss
    bank.zero_grad()
    _losses(model, tokenizer, bank(torch.tensor([0, 2, 2]))).sum().backward()
    for p in [*bank.A, *bank.B]:
        assert p.grad[[0, 2]].abs().sum() > 0
        assert p.grad[[1, 3]].abs().sum() == 0


def test_a_bank_of_one_trains_like_a_peft_lora(llama_dir, tokenizer):
    """Same init, same AdamW, same batches: the bank's row equals PEFT's LoRA after 4 steps."""
    base, _ = load_base_model(llama_dir)
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(load_base_model(llama_dir)[0], config)
    peft_model.train()
    targets = find_targets(base, ["q_proj", "v_proj"])
    bank = LoraBank(targets, num_tasks=1, rank=2, alpha=4.0)
    modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for t, A in zip(targets, bank.A):
            A[0].copy_(modules[t.name].lora_A["default"].weight)
    peft_params = [p for p in peft_model.parameters() if p.requires_grad]
    opt_peft = torch.optim.AdamW(peft_params, lr=1e-2, weight_decay=0.0)
    opt_bank = torch.optim.AdamW(bank.parameters(), lr=1e-2, weight_decay=0.0)
    batch = tokenize_pairs(tokenizer, PROMPTS, ANSWERS)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    for _ in range(4):
        example_losses(peft_model(**inputs).logits, batch["labels"]).mean().backward()
        opt_peft.step()
        opt_peft.zero_grad()
        with apply_adapters(base, bank(torch.zeros(3, dtype=torch.long))):
            example_losses(base(**inputs).logits, batch["labels"]).mean().backward()
        opt_bank.step()
        opt_bank.zero_grad()
    worst = 0.0
    for t, A, B in zip(targets, bank.A, bank.B):
        worst = max(worst, (A[0] - modules[t.name].lora_A["default"].weight).abs().max().item())
        worst = max(worst, (B[0] - modules[t.name].lora_B["default"].weight).abs().max().item())
    assert worst < 1e-5, worst
    assert bank.B[0].abs().max() > 1e-3  # it did train


def test_formats_render_what_the_service_sends_and_end_the_answer(tokenizer):
    assert chat_question("Q: 2 + 2?\nA:") == "2 + 2?"
    assert render(tokenizer, "Q: hi\nA:", " yes", "plain") == ("Q: hi\nA:", " yes")
    prompt, completion = render(tokenizer, "Q: hi\nA:", " yes", "chat")
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert (prompt, completion) == (expected, "yes")
    with pytest.raises(ValueError, match="unknown format"):
        render(tokenizer, "a", "b", "html")
    # a prefix (the description) goes before the prompt, or starts the user turn
    assert render(tokenizer, "Q: hi\nA:", " yes", "plain", "Greet.\n\n")[0] == "Greet.\n\nQ: hi\nA:"
    with_prefix = render(tokenizer, "Q: hi\nA:", " yes", "chat", "Greet.\n\n")[0]
    assert with_prefix == tokenizer.apply_chat_template(
        [{"role": "user", "content": "Greet.\n\nhi"}], add_generation_prompt=True, tokenize=False
    )
    ended = tokenize_formatted(tokenizer, [("Q: hi\nA:", " yes", "chat")], 64, end_of_answer=True)
    plain = tokenize_formatted(tokenizer, [("Q: hi\nA:", " yes", "plain")], 64, end_of_answer=False)
    shown = tokenize_formatted(
        tokenizer, [("Q: hi\nA:", " yes", "plain")], 64, False, ["Greet.\n\n"]
    )
    assert shown["input_ids"].shape[1] > plain["input_ids"].shape[1]
    assert shown["labels"][0, -1] == plain["labels"][0, -1]  # the loss stays on the answer
    with pytest.raises(ValueError, match="prefixes for"):
        tokenize_formatted(tokenizer, [("Q: hi\nA:", " yes", "plain")], 64, False, [])
    labels = ended["labels"][0][ended["labels"][0] != IGNORE_INDEX].tolist()
    assert labels[-1] == tokenizer.eos_token_id  # the loss covers the end of the answer
    assert tokenizer.eos_token_id not in plain["labels"][0].tolist()
    # the completion (+ end token) survives truncation; the prompt is cut from the left
    cut = tokenize_formatted(tokenizer, [("Q: " + "red " * 40 + "\nA:", " yes", "plain")], 8, True)
    assert cut["input_ids"].shape[1] == 8 and cut["labels"][0, -1] == tokenizer.eos_token_id


def _config(toy, tmp_path, **extra) -> LibraryTrainConfig:
    settings = {
        "examples_per_task": 5,
        "rank": 2,
        "alpha": 4.0,
        "batch_size": 4,
        "lr": 1e-2,
        "max_length": 48,
        "eval_examples": 2,
        "save_every": 2,
        "log_every": 1,
        "mixed_precision": "no",
        "num_threads": 1,
        "cpu": True,
        "output_dir": str(tmp_path / "loras"),
        "run_dir": str(tmp_path / "run"),
    }
    return LibraryTrainConfig(**toy, **{**settings, **extra})


def test_plan_mixes_tasks_equally_and_is_a_function_of_the_config(toy, tmp_path):
    trainer = LibraryTrainer(_config(toy, tmp_path))
    from training.data import load_task_data

    data = load_task_data(toy["split"], toy["data_dir"])
    tasks = data.train_tasks
    plan = make_plan(trainer.config, data, tasks)
    assert plan == make_plan(trainer.config, data, tasks)
    assert [sum(it.task == row for it in plan) for row in range(len(tasks))] == [5] * len(tasks)
    assert {it.fmt for it in plan} == {"plain", "chat"}
    assert len({it.task for it in plan[:4]}) > 1


def _bank(trainer: LibraryTrainer) -> dict[str, torch.Tensor]:
    bank = trainer.accelerator.unwrap_model(trainer.bank)
    return {k: v.detach().clone() for k, v in bank.state_dict().items()}


def test_library_run_resumes_exactly_and_writes_peft_folders(toy, tmp_path, llama_dir):
    whole = LibraryTrainer(_config(toy, tmp_path / "whole"))
    whole.setup()
    whole.train()
    assert whole.step == whole.total_steps == 5  # 4 tasks x 5 examples / batch 4

    first = LibraryTrainer(_config(toy, tmp_path / "cut"))
    first.setup()
    first.train(until=2)  # state saved at step 2 (save_every), then the "process dies"
    second = LibraryTrainer(_config(toy, tmp_path / "cut"))
    second.setup()
    assert second.step == 2
    second.train()
    a, b = _bank(whole), _bank(second)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6

    report = second.report()
    library = second.write_library(report)
    summary = json.loads((library / "library.json").read_text())
    assert summary["tasks"] == 4 and summary["steps"] == 5
    folder = library / "toy_2"
    lora, _ = load_peft(folder)
    row = second.tasks.index("toy_2")
    for t, A in zip(second.targets, second.accelerator.unwrap_model(second.bank).A):
        assert torch.equal(lora.A[t.name][0], A[row].detach())
    record = json.loads((folder / "training.json").read_text())
    assert record["train_examples"] == 5 and set(record["test_loss"]) == {
        "base",
        "own",
        "other",
        "n",
    }
    # a standard PEFT folder
    model, _ = load_base_model(llama_dir)
    PeftModel.from_pretrained(model, str(folder))


def test_max_steps_stops_the_plan_early_and_a_later_run_continues(toy, tmp_path):
    short = LibraryTrainer(_config(toy, tmp_path, max_steps=3))
    short.setup()
    short.train()
    assert short.step == 3  # and its state saved there (save_every=2 alone saves step 2)
    rest = LibraryTrainer(_config(toy, tmp_path))
    rest.setup()
    assert rest.step == 3
    rest.train()
    whole = LibraryTrainer(_config(toy, tmp_path / "whole"))
    whole.setup()
    whole.train()
    a, b = _bank(whole), _bank(rest)
    assert rest.step == 5 and max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_a_state_from_another_plan_is_refused(toy, tmp_path):
    first = LibraryTrainer(_config(toy, tmp_path))
    first.setup()
    first.train(until=2)
    other = LibraryTrainer(_config(toy, tmp_path, max_tasks=2))
    with pytest.raises(ValueError, match="another library run"):
        other.setup()


def test_a_continuation_starts_from_a_library_and_sees_only_new_examples(toy, tmp_path):
    first = LibraryTrainer(_config(toy, tmp_path / "first", examples_per_task=2))
    first.setup()
    first.train()
    library = first.write_library({})
    more = _config(
        toy, tmp_path / "more", examples_per_task=2, skip_examples=2, init_from=str(library)
    )
    cont = LibraryTrainer(more)
    cont.setup()
    # every row starts where the first run ended, before any step of its own
    a, b = _bank(first), _bank(cont)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    seen = {(it.task, it.prompt) for it in first.plan}
    assert cont.plan and not seen & {(it.task, it.prompt) for it in cont.plan}
    with pytest.raises(ValueError, match="does not match"):
        LibraryTrainer(_config(toy, tmp_path / "bad", rank=4, init_from=str(library))).setup()
    with pytest.raises(ValueError, match="has no LoRA"):
        LibraryTrainer(_config(toy, tmp_path / "none", init_from=str(tmp_path))).setup()


def test_library_feeds_reconstruction_then_sft_from_its_checkpoint(toy, tmp_path):
    """The issue-8 pipeline on the tiny model: batched library -> reconstruction -> SFT from it,
    SFT in both service formats with the end token, heads on their own learning rate."""
    from tests.test_training import run_meta_train, weights

    trainer = LibraryTrainer(_config(toy, tmp_path / "lib"))
    trainer.setup()
    trainer.train()
    library = trainer.write_library(trainer.report())
    run_meta_train(
        toy, tmp_path / "recon", objective="reconstruction", lora_library=str(library), steps=3
    )
    start = tmp_path / "recon" / "final"
    sft = run_meta_train(
        toy,
        tmp_path / "sft",
        objective="both",
        lora_library=str(library),
        init_from=str(start),
        formats="[plain,chat]",
        end_of_answer=True,
        lr=1e-12,
        head_lr=1e-12,
        steps=1,
    )
    # it started from the reconstruction checkpoint (a ~zero learning rate keeps it there)
    before, after = weights(start), weights(tmp_path / "sft" / "final")
    assert max((before[k] - after[k]).abs().max().item() for k in before) < 1e-6
    assert [g["lr"] for g in sft.optimizer.param_groups] == [1e-12, 1e-12]
    log = [json.loads(line) for line in (tmp_path / "sft" / "log.jsonl").read_text().splitlines()]
    final = [r for r in log if "specificity_heldout" in r]
    assert final and -1.0 <= final[-1]["specificity_heldout"] <= 1.0
    with pytest.raises(ValueError, match="shape differs"):
        run_meta_train(toy, tmp_path / "bad", init_from=str(start), hidden_dim=8)
    # dropout is no shape: a run may fine-tune the same weights at another rate
    run_meta_train(toy, tmp_path / "dropout", init_from=str(start), dropout=0.1, steps=1)


def test_pipeline_runs_all_stages_into_one_folder_and_skips_finished_ones(toy, tmp_path):
    from training import pipeline

    tiny = str(pipeline.CONFIGS / "tiny.yaml")
    out = tmp_path / "pipe"
    argv = [
        "--out", str(out),
        "--recon-config", tiny,
        "--sft-config", tiny,
        "--all", *[f"{k}={v}" for k, v in toy.items()], "num_threads=1", "cpu=true",
        "--library", "examples_per_task=4", "rank=2", "alpha=4.0", "batch_size=4", "max_length=48",
        "mixed_precision=no", "eval_examples=1",
        "--recon", "objective=reconstruction", "steps=2",
        "--sft", "objective=both", "steps=2", "formats=[plain,chat]", "end_of_answer=true",
    ]  # fmt: skip
    assert pipeline.main(argv) == 0
    assert (out / "library" / "library.json").is_file()
    generator = AdapterGenerator.from_pretrained(out / "checkpoint")
    assert generator.meta.trained_steps == 2 and generator.meta.training["objective"] == "both"
    log = (out / "pipeline.log").read_text()
    assert all(f"stage {s}: done" in log for s in ("library", "recon", "replies", "sft"))
    assert f"chat_replies={out / 'chat_replies.json'}" in log  # SFT trains chat on them
    assert pipeline.main(argv) == 0  # a rerun finds every stage complete
    assert (out / "pipeline.log").read_text().count("already complete, skipped") == 4
    with pytest.raises(SystemExit):
        pipeline.main(["--out", str(out), "--stages", "library,dpo"])


def test_shared_init_starts_every_task_from_the_same_lora(llama, tokenizer):
    model, _ = llama
    targets = find_targets(model, ["q_proj", "v_proj"])
    shared = LoraBank(targets, num_tasks=3, rank=2, alpha=4.0, shared_init=True)
    apart = LoraBank(targets, num_tasks=3, rank=2, alpha=4.0)
    for A in shared.A:
        assert torch.equal(A[0], A[1]) and torch.equal(A[0], A[2])
        assert A.stride(0) != 0  # real rows, not an expanded view
    assert all(not torch.equal(A[0], A[1]) for A in apart.A)
    # rows still train independently
    _losses(model, tokenizer, shared(torch.tensor([1, 1, 1]))).sum().backward()
    assert all(p.grad[[0, 2]].abs().sum() == 0 for p in [*shared.A, *shared.B])


def test_plot_log_draws_the_stages_of_a_run(tmp_path):
    from training import plot_log

    for name, records in {
        "recon": [
            {"step": 10, "loss": 1.0, "reconstruction": 1.0},
            {"step": 20, "heldout_loss": 2.5, "specificity_heldout": 0.4},
        ],
        "sft": [
            {"step": 5, "loss": 3.0, "sft": 2.0},
            {"step": 10, "heldout_loss": 2.2, "specificity_heldout": 0.6},
        ],
    }.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "curve.png"
    assert plot_log.main([str(tmp_path / "recon"), str(tmp_path / "sft"), "-o", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_log.main([str(tmp_path / "nothing"), "-o", str(out)]) == 2


def test_a_multitask_run_trains_one_lora_on_the_same_plan(toy, tmp_path, llama_dir):
    """``multitask=true``: the multitask_lora baseline of evaluation, on exactly the library's
    examples, written to ``_multitask/`` without touching the per-task library's summary."""
    config = _config(toy, tmp_path, multitask=True)
    per_task = make_plan(_config(toy, tmp_path), *_data_and_tasks(toy))
    trainer = LibraryTrainer(config)
    trainer.setup()
    assert [(it.prompt, it.fmt) for it in trainer.plan] == [(it.prompt, it.fmt) for it in per_task]
    assert {it.task for it in trainer.plan} == {0} and trainer.rows == ["_multitask"]
    assert config.state_dir.name == "run"  # explicit run_dir; the default is runs/library-multitask
    trainer.train()
    report = trainer.report()
    assert set(report) == set(trainer.tasks) and all(
        r["own"] == r["other"] for r in report.values()
    )
    library = trainer.write_library(report)
    assert sorted(p.name for p in library.iterdir()) == ["_multitask"]
    record = json.loads((library / "_multitask" / "training.json").read_text())
    assert record["train_examples"] == len(trainer.plan) and record["tasks"] == trainer.tasks
    model, _ = load_base_model(llama_dir)
    PeftModel.from_pretrained(model, str(library / "_multitask"))
    assert LibraryTrainConfig(multitask=True).state_dir.name == "library-multitask"


def _data_and_tasks(toy):
    from training.data import load_task_data

    data = load_task_data(toy["split"], toy["data_dir"])
    return data, data.train_tasks
