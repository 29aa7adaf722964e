"""Meta-training recipe and LoRA library on a tiny Llama and a toy BIG-bench-format suite (CPU, fast)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from peft import PeftModel
from safetensors.torch import load_file

from hypergen import (
    AdapterGenerator,
    LoraWeights,
    find_targets,
    load_base_model,
    load_peft,
    lora_delta_weight,
)
from hypergen.adapters.apply import apply_adapters
from hypergen.data.descriptions import describe_prefix
from training.config import LoraTrainConfig, MetaTrainConfig, load_config
from training.data import MixtureSampler, load_task_data, shard
from training.formats import tokenize_formatted
from training.objectives import contrastive_losses, delta_w_loss, distill_losses, other_task_rows

TINY = Path(__file__).resolve().parents[1] / "training" / "configs" / "tiny.yaml"
WORDS = ["cat", "dog", "sun", "mat", "day", "red", "sea", "hat"]


def write_toy_suite(root: Path) -> tuple[Path, Path]:
    """Six generative toy tasks (four train, two held out) and their split YAML."""
    suite = root / "suite"
    for t in range(6):
        rng = random.Random(t)
        examples = [
            {"input": f"{rng.choice(WORDS)} {rng.choice(WORDS)} {i}", "target": WORDS[(t + i) % 3]}
            for i in range(12)
        ]
        folder = suite / f"toy_{t}"
        folder.mkdir(parents=True)
        (folder / "task.json").write_text(
            json.dumps(
                {
                    "name": f"toy_{t}",
                    "description": f"Toy task {t}: answer with a word about the {WORDS[t]}.",
                    "keywords": ["toy", WORDS[t]],
                    "examples": examples,
                }
            )
        )
    split = root / "split.yaml"
    split.write_text(
        "train_tasks: [toy_0, toy_1, toy_2, toy_3]\nheldout_tasks: [toy_4, toy_5]\nseed: 0\ntest_fraction: 0.25\n"
    )
    return suite, split


@pytest.fixture(scope="module")
def toy(tmp_path_factory, llama_dir) -> dict[str, str]:
    suite, split = write_toy_suite(tmp_path_factory.mktemp("toy"))
    return {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}


def overrides(toy: dict[str, str], out: Path, **extra) -> list[str]:
    items = {**toy, "output_dir": str(out), **extra}
    return [f"{k}={v}" for k, v in items.items()]


def run_meta_train(toy, out: Path, **extra):
    from training import meta_train

    return meta_train.main(["--config", str(TINY), *overrides(toy, out, **extra)])


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# --- config ------------------------------------------------------------------------------------


def test_unknown_config_key_fails(tmp_path):
    with pytest.raises(ValueError, match=r"unknown key\(s\).*stepz"):
        load_config(MetaTrainConfig, TINY, ["stepz=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(MetaTrainConfig, bad)
    with pytest.raises(ValueError, match="objective"):
        load_config(MetaTrainConfig, TINY, ["objective=dpo"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(LoraTrainConfig, None, ["steps"])


def test_overrides_are_typed():
    config = load_config(
        MetaTrainConfig, TINY, ["steps=7", "lr=3e-4", "target_modules=[q_proj]", "resume=true"]
    )
    assert (config.steps, config.lr, config.target_modules, config.resume) == (
        7,
        3e-4,
        ["q_proj"],
        True,
    )


# --- data --------------------------------------------------------------------------------------


def test_batches_are_deterministic_and_mix_tasks(toy):
    data = load_task_data(toy["split"], toy["data_dir"])
    assert data.train_tasks == ["toy_0", "toy_1", "toy_2", "toy_3"]
    assert data.heldout_tasks == ["toy_4", "toy_5"]
    sampler = MixtureSampler(data.train_examples, data.train_phrasings, seed=3)
    again = MixtureSampler(data.train_examples, data.train_phrasings, seed=3)
    batch = sampler.batch(5, 16)
    assert batch == again.batch(5, 16) and batch != sampler.batch(6, 16)
    assert len({s.task for s in batch}) > 1
    assert all(s.condition in data.train_phrasings[s.task] for s in batch)
    # process slices of every micro-step put back together are the global batch
    pieces = [shard(batch, 2, 2, rank) for rank in range(2)]
    assert [s for m in range(2) for rank in range(2) for s in pieces[rank][m]] == batch


# --- objectives --------------------------------------------------------------------------------


def _lora(
    b: int, r: int, modules: dict[str, tuple[int, int]], scaling: float, seed: int
) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    A = {n: torch.randn(b, r, i, generator=g, dtype=torch.float64) for n, (i, o) in modules.items()}
    B = {n: torch.randn(b, o, r, generator=g, dtype=torch.float64) for n, (i, o) in modules.items()}
    return LoraWeights(A, B, scaling)


def test_delta_w_loss_matches_dense_and_ignores_gauge():
    modules = {"m.0.q": (12, 10), "m.0.v": (12, 6)}
    gen, tgt = _lora(3, 4, modules, 2.0, 0), _lora(3, 2, modules, 0.5, 1)
    dense = []
    for k in range(3):
        err = sum(
            (
                lora_delta_weight(gen.A[n][k], gen.B[n][k], 2.0)
                - lora_delta_weight(tgt.A[n][k], tgt.B[n][k], 0.5)
            )
            .pow(2)
            .sum()
            for n in modules
        )
        norm = sum(lora_delta_weight(tgt.A[n][k], tgt.B[n][k], 0.5).pow(2).sum() for n in modules)
        dense.append(err / norm)
    torch.testing.assert_close(delta_w_loss(gen, tgt), torch.stack(dense))
    # B A = (B G)(G^-1 A): a re-parametrised target has the same loss
    G = torch.randn(2, 2, dtype=torch.float64) + 3 * torch.eye(2, dtype=torch.float64)
    regauged = LoraWeights(
        {n: torch.linalg.inv(G) @ a for n, a in tgt.A.items()},
        {n: b @ G for n, b in tgt.B.items()},
        0.5,
    )
    torch.testing.assert_close(delta_w_loss(gen, regauged), delta_w_loss(gen, tgt))
    assert torch.allclose(delta_w_loss(tgt, tgt), torch.zeros(3, dtype=torch.float64), atol=1e-9)


# --- LoRA library ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library(toy, tmp_path_factory) -> Path:
    from training import train_lora

    out = tmp_path_factory.mktemp("loras")
    train_lora.main(
        [
            *[f"{k}={v}" for k, v in toy.items()],
            f"output_dir={out}",
            "per_task=all",
            "rank=2",
            "alpha=4",
            "steps=2",
            "multitask_steps=2",
            "batch_size=2",
            "max_length=64",
            "lr=0.01",
        ]
    )
    return out


def test_train_lora_writes_peft_folders(library, llama, llama_dir):
    names = sorted(p.name for p in library.iterdir())
    assert names == ["_multitask", "toy_0", "toy_1", "toy_2", "toy_3", "toy_4", "toy_5"]
    lora, config = load_peft(library / "toy_4")
    targets = {t.name for t in find_targets(llama[0], ["q_proj", "v_proj"])}
    assert set(lora.module_names) == targets and lora.rank == 2 and config["r"] == 2
    assert any(b.abs().sum() > 0 for b in lora.B.values())  # trained away from B = 0
    record = json.loads((library / "_multitask" / "training.json").read_text())
    assert record["tasks"] == ["toy_0", "toy_1", "toy_2", "toy_3"] and record["steps"] == 2
    model, _ = load_base_model(llama_dir)
    PeftModel.from_pretrained(model, library / "toy_4")  # a standard PEFT folder


# --- meta-training -----------------------------------------------------------------------------


def test_sft_smoke_run_saves_checkpoint_with_config(toy, tmp_path, llama_dir):
    reference = {k: v.clone() for k, v in load_base_model(llama_dir)[0].state_dict().items()}
    trainer = run_meta_train(toy, tmp_path / "run")
    # the LM is frozen and untouched; only the hypernetwork trained
    assert not any(p.requires_grad for p in trainer.model.parameters())
    assert all(torch.equal(v, reference[k]) for k, v in trainer.model.state_dict().items())
    final = tmp_path / "run" / "final"
    generator = AdapterGenerator.from_pretrained(final)
    assert generator.meta.trained_steps == 2 and not generator.meta.untrained
    record = generator.meta.training
    assert record["objective"] == "sft" and record["heldout_tasks"] == ["toy_4", "toy_5"]
    assert set(record["final_heldout"]) >= {"base", "generated"} and record["seconds"] > 0
    saved = yaml.safe_load((final / "config.yaml").read_text())
    assert saved == yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["base_model"] == llama_dir
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "config.yaml").is_file()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log if "loss" in r)
    assert max_diff(weights(final), weights(tmp_path / "run" / "checkpoints" / "step-000002")) == 0


def test_resume_continues_the_same_run(toy, tmp_path):
    run_meta_train(toy, tmp_path / "straight", steps=4, save_every=2)
    run_meta_train(toy, tmp_path / "resumed", steps=2)
    trainer = run_meta_train(toy, tmp_path / "resumed", steps=4, resume=True)
    assert trainer.step == 4
    log = [
        json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    # same data order, optimizer state and schedule: 2 + 2 steps == 4 steps
    assert (
        max_diff(weights(tmp_path / "resumed" / "final"), weights(tmp_path / "straight" / "final"))
        < 1e-6
    )
    assert (
        max_diff(
            weights(tmp_path / "straight" / "checkpoints" / "step-000002"),
            weights(tmp_path / "straight" / "final"),
        )
        > 0
    )


def test_contrastive_pairs_and_hinge():
    assert other_task_rows(["a", "a", "b", "c"]) == [2, 2, 3, 0]
    assert other_task_rows(["a", "a"]) == [None, None]
    assert other_task_rows(["a", "b", "a"]) == [1, 2, 1]
    own, other = torch.tensor([1.0, 1.0, 2.0]), torch.tensor([2.0, 1.2, 1.0])
    # own beats other by 1.0 (past the margin: 0), by 0.2 (0.3 short), loses by 1.0 (1.5)
    assert torch.allclose(contrastive_losses(own, other, 0.5), torch.tensor([0.0, 0.3, 1.5]))
    with pytest.raises(ValueError, match="contrastive_weight"):
        load_config(MetaTrainConfig, TINY, ["contrastive_weight=-1"])
    with pytest.raises(ValueError, match="objective sft or both"):
        load_config(MetaTrainConfig, TINY, ["contrastive_weight=1", "objective=reconstruction"])


def test_contrastive_term_is_own_vs_other_task_adapter(toy, tmp_path):
    """The logged term is the hinge of each sample's loss under its own adapter against its loss
    under the adapter of the sample paired with it, recomputed here by hand."""
    trainer = run_meta_train(toy, tmp_path / "c", contrastive_weight=2.0, contrastive_margin=5.0)
    samples = trainer.sampler.batch(0, 4)
    assert len({s.task for s in samples}) > 1
    with torch.no_grad():
        total, parts = trainer.loss(samples)
        lora = trainer._generated(samples)
        own = trainer._lm_losses(samples, lora, train=True)
        pairs = other_task_rows([s.task for s in samples])
        rows = [i for i, j in enumerate(pairs) if j is not None]
        other = torch.stack(
            [trainer._lm_losses([samples[i]], lora.select(pairs[i]), train=True)[0] for i in rows]
        )
    expected = torch.relu(5.0 - (other - own[rows])).sum() / len(samples)
    assert parts["contrastive"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert parts["contrastive"].item() > 0  # a 5-nat margin is not met by a 2-step hypernetwork
    assert total.item() == pytest.approx((own.mean() + 2.0 * expected).item(), rel=1e-4)
    log = [json.loads(line) for line in (tmp_path / "c" / "log.jsonl").read_text().splitlines()]
    assert all("contrastive" in r for r in log if "loss" in r)


def test_distill_losses_compare_the_same_answer_tokens_after_different_prompts():
    g = torch.Generator().manual_seed(0)
    vocab = 7
    # row 0: student prompt 2 tokens, teacher 4 (the description), answer 3 tokens; row 1: answer 2
    student_labels = torch.tensor([[-100, -100, 3, 4, 5, -100], [-100, -100, -100, 1, 2, -100]])
    teacher_labels = torch.tensor(
        [[-100, -100, -100, -100, 3, 4, 5, -100], [-100, -100, -100, -100, -100, 1, 2, -100]]
    )
    student = torch.randn(2, 6, vocab, generator=g)
    teacher = torch.randn(2, 8, vocab, generator=g)

    def kl(t, s):
        p, q = t.log_softmax(-1), s.log_softmax(-1)
        return (p.exp() * (p - q)).sum()

    # position t predicts token t+1: row 0's answer is predicted at student 1..3, teacher 3..5
    expected = torch.stack(
        [
            sum(kl(teacher[0, 3 + k], student[0, 1 + k]) for k in range(3)) / 3,
            sum(kl(teacher[1, 4 + k], student[1, 2 + k]) for k in range(2)) / 2,
        ]
    )
    got = distill_losses(student, student_labels, teacher, teacher_labels)
    assert torch.allclose(got, expected, atol=1e-6)
    # the same distributions at the answer positions: no loss
    aligned = teacher.clone()
    aligned[0, 3:6], aligned[1, 4:6] = student[0, 1:4], student[1, 2:4]
    assert distill_losses(student, student_labels, aligned, teacher_labels).abs().max() < 1e-6
    # a teacher that kept one more answer token than the student: the shared first ones count
    longer = torch.tensor(
        [[-100, -100, -100, -100, 3, 4, 5, 6], [-100, -100, -100, -100, -100, 1, 2, -100]]
    )
    assert torch.allclose(distill_losses(student, student_labels, teacher, longer), expected)


def test_meta_train_distills_the_description_in_the_prompt(toy, tmp_path):
    """objective=distill: the logged term is the KL on the answer tokens of the bare LM with the
    sample's description phrasing before its prompt against the LM with the generated adapter."""
    trainer = run_meta_train(toy, tmp_path / "k", objective="distill", steps=2)
    log = [json.loads(line) for line in (tmp_path / "k" / "log.jsonl").read_text().splitlines()]
    assert all("distill" in r and "sft" not in r for r in log if "loss" in r)
    samples = trainer.sampler.batch(0, 4)
    tok, cfg = trainer.tokenizer, trainer.config
    with torch.no_grad():
        total, parts = trainer.loss(samples)
        lora = trainer._generated(samples)
        expected = []
        for row, s in enumerate(samples):
            description = trainer.data.phrasings[s.condition]
            shown = tokenize_formatted(
                tok,
                [(s.prompt, s.completion, s.fmt)],
                2 * cfg.max_length,  # the teacher's room for the description
                cfg.end_of_answer,
                [describe_prefix(description)],
            )
            bare = tokenize_formatted(
                tok, [(s.prompt, s.completion, s.fmt)], cfg.max_length, cfg.end_of_answer
            )
            teacher = trainer.model(input_ids=shown["input_ids"]).logits
            with apply_adapters(trainer.model, lora.select([row])):
                student = trainer.model(input_ids=bare["input_ids"]).logits
            expected.append(distill_losses(student, bare["labels"], teacher, shown["labels"])[0])
    assert parts["distill"].item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    assert parts["distill"].item() > 0  # the description changes the bare LM's predictions
    assert total.item() == pytest.approx(parts["distill"].item())
    with pytest.raises(ValueError, match="distill_weight adds to objective sft or both"):
        load_config(MetaTrainConfig, TINY, ["distill_weight=1", "objective=reconstruction"])
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        load_config(MetaTrainConfig, TINY, ["distill_weight=-1"])
    mixed = run_meta_train(toy, tmp_path / "m", distill_weight=0.5, steps=1)
    with torch.no_grad():
        total, parts = mixed.loss(samples)
    assert total.item() == pytest.approx((parts["sft"] + 0.5 * parts["distill"]).item(), rel=1e-5)


@pytest.mark.parametrize("objective", ["reconstruction", "both"])
def test_reconstruction_objectives(toy, library, tmp_path, objective):
    trainer = run_meta_train(
        toy, tmp_path / objective, objective=objective, lora_library=str(library), steps=3
    )
    log = [
        json.loads(line) for line in (tmp_path / objective / "log.jsonl").read_text().splitlines()
    ]
    losses = [r["reconstruction"] for r in log if "reconstruction" in r]
    assert len(losses) == 3 and all(x >= 0 and torch.isfinite(torch.tensor(x)) for x in losses)
    if objective == "reconstruction":
        # a fresh (no-op) adapter has relative error exactly 1
        assert losses[0] == pytest.approx(1.0, abs=1e-5)
    else:
        assert all("sft" in r for r in log if "loss" in r)
    record = AdapterGenerator.from_pretrained(tmp_path / objective / "final").meta.training
    # with a library present the final report also scores the library baselines
    assert {"multitask_lora", "oracle_lora"} <= set(record["final_heldout"])
    assert trainer.step == 3


def test_reconstruction_without_library_fails(toy, tmp_path):
    with pytest.raises(ValueError, match="no training task has a LoRA"):
        run_meta_train(
            toy, tmp_path / "r", objective="reconstruction", lora_library=str(tmp_path / "none")
        )


def test_library_loras_for_another_model_are_skipped(toy, tmp_path, gpt2_generator, caplog):
    """A LoRA library made for another base model (here GPT-2) is never applied to this one."""
    foreign = tmp_path / "foreign"
    lora = gpt2_generator.generate(["a task"])
    for name in ("toy_0", "toy_1", "_multitask"):
        gpt2_generator.save_peft(lora, foreign / name)
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="no training task has a LoRA"):
        run_meta_train(toy, tmp_path / "r", objective="reconstruction", lora_library=str(foreign))
    assert "does not fit this model's targets" in caplog.text


def test_lr_schedule_is_transformers_cosine_with_min_lr():
    import math

    from training.config import MetaTrainConfig
    from training.meta_train import MIN_LR_RATE, lr_schedule

    def lrs(**overrides):
        cfg = MetaTrainConfig(lr=1.0, steps=10, **overrides)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        schedule = lr_schedule(optimizer, cfg)
        out = []
        for _ in range(cfg.steps + 1):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
        return out

    cosine = lrs(warmup_steps=0, lr_schedule="cosine")
    expected = [
        MIN_LR_RATE + (1 - MIN_LR_RATE) * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(11)
    ]
    assert cosine == pytest.approx(expected)
    assert cosine[-1] == pytest.approx(MIN_LR_RATE)
    warm = lrs(warmup_steps=4, lr_schedule="cosine")
    assert warm[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert lrs(warmup_steps=2, lr_schedule="constant")[:5] == pytest.approx([0, 0.5, 1, 1, 1])
