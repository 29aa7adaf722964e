"""Evaluation additions of issue 8: adapter specificity (delta-W cosines through r x r Gram
products, against a dense brute force), paired differences between generated systems, oracle
LoRAs for training tasks, and the generation check (chat prompts and generative tasks, without
and with the generated adapter). Tiny random models answer gibberish: the end-to-end tests check
structure and that every reported number follows from the reported replies and scores."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from evaluation.config import load_config
from evaluation.generation_check import (
    DEFAULT_CHAT_PROMPTS,
    load_chat_prompts,
    reply_scores,
    run_check,
    side_summary,
)
from evaluation.harness import EvalTask, paired_delta, run
from evaluation.scoring import ScoringConfig, greedy_answers, greedy_generations
from evaluation.specificity import (
    cosine_matrix,
    inner_products,
    mean_pairwise,
    paired_cosines,
    specificity,
    squared_norms,
)
from evaluation.systems import (
    GeneratorSource,
    MissingArtifact,
    build_systems,
    random_words,
    task_description,
)
from hypergen.adapters import bottleneck_geometry
from hypergen.adapters.bottleneck import BottleneckWeights, bottleneck_delta
from hypergen.adapters.lora import LoraWeights
from hypergen.data.tasks import Task
from hypergen.decoding import eos_token_ids
from hypergen.generator import AdapterGenerator
from hypergen.metrics import contains_reference, distinct_bigram_ratio
from tests.conftest import make_generator, randomize_

TINY_CONFIG = Path(__file__).parents[1] / "evaluation" / "configs" / "tiny.yaml"
MODULES = {"q": (6, 5), "down": (4, 7)}  # name: (out, in)

# ---------------------------------------------------------------- specificity math


def random_lora(n: int, rank: int = 3, scaling: float = 2.0, seed: int = 0) -> LoraWeights:
    g = torch.Generator().manual_seed(seed)
    A = {m: torch.randn(n, rank, i, generator=g) for m, (o, i) in MODULES.items()}
    B = {m: torch.randn(n, o, rank, generator=g) for m, (o, i) in MODULES.items()}
    return LoraWeights(A, B, scaling)


def dense(lora: LoraWeights) -> torch.Tensor:
    """(n, sum of out * in) every adapter's concatenated scaling * B @ A, materialised."""
    return torch.cat(
        [
            (lora.scaling * lora.B[m].double() @ lora.A[m].double()).flatten(1)
            for m in lora.module_names
        ],
        dim=1,
    )


def dense_cosines(x: LoraWeights, y: LoraWeights) -> torch.Tensor:
    dx, dy = dense(x), dense(y)
    return (dx @ dy.T) / (dx.norm(dim=1)[:, None] * dy.norm(dim=1)[None, :])


def test_gram_products_match_dense_delta_w():
    x = random_lora(4, rank=3, scaling=2.0, seed=0)
    y = random_lora(3, rank=5, scaling=0.5, seed=1)  # other rank and scaling
    assert torch.allclose(inner_products(x, y), dense(x) @ dense(y).T, rtol=1e-10, atol=1e-9)
    assert torch.allclose(squared_norms(x), dense(x).pow(2).sum(1), rtol=1e-10)
    assert torch.allclose(cosine_matrix(x, y), dense_cosines(x, y), atol=1e-10)
    assert torch.allclose(cosine_matrix(x), dense_cosines(x, x), atol=1e-10)
    z = random_lora(4, rank=2, scaling=1.0, seed=2)
    assert torch.allclose(paired_cosines(x, z), dense_cosines(x, z).diagonal(), atol=1e-10)
    # the mean over pairs i < j of a symmetric matrix
    cos = dense_cosines(x, x)
    expected = np.mean([float(cos[i, j]) for i in range(4) for j in range(i + 1, 4)])
    assert mean_pairwise(cosine_matrix(x)) == (pytest.approx(expected, abs=1e-10), 6, 0)


def test_identical_opposite_and_orthogonal_adapters():
    one = random_lora(1, seed=3)
    same = LoraWeights.cat([one, one, one])
    assert torch.allclose(cosine_matrix(same), torch.ones(3, 3, dtype=torch.float64))
    assert mean_pairwise(cosine_matrix(same))[0] == pytest.approx(1.0)
    # B -> -B flips dW: cosine -1; scaling does not change cosines
    flipped = LoraWeights(one.A, {m: -b for m, b in one.B.items()}, 7.0)
    assert paired_cosines(one, flipped).item() == pytest.approx(-1.0)
    # A rows on disjoint input coordinates: the dW have disjoint supports, cosine 0
    A1 = {m: torch.zeros(1, 2, i) for m, (o, i) in MODULES.items()}
    A2 = {m: torch.zeros(1, 2, i) for m, (o, i) in MODULES.items()}
    for m in MODULES:
        A1[m][0, :, 0], A2[m][0, :, 1] = 1.0, 1.0
    B = {m: torch.randn(1, o, 2) for m, (o, i) in MODULES.items()}
    assert paired_cosines(LoraWeights(A1, B, 1.0), LoraWeights(A2, B, 1.0)).item() == 0.0


def test_zero_adapter_cosines_are_undefined_and_left_out():
    lora = random_lora(3, seed=4)
    for m in MODULES:
        lora.B[m][1] = 0.0  # adapter 1 is a no-op (an untrained B head)
    cos = cosine_matrix(lora)
    assert math.isnan(cos[0, 1]) and math.isnan(cos[1, 2]) and math.isnan(cos[1, 1])
    assert not math.isnan(cos[0, 2])
    mean, pairs, undefined = mean_pairwise(cos)
    assert (pairs, undefined) == (1, 2) and mean == pytest.approx(float(cos[0, 2]))
    noise = random_lora(3, seed=5)
    report = specificity(["a", "b", "c"], lora, noise)
    assert report["per_task"]["b"]["cosine_to_random"] is None
    assert report["per_task"]["b"]["norm"] == 0.0
    assert report["undefined_pairs"] == 2 and report["pairs"] == 1
    expected = np.mean([float(c) for k, c in enumerate(paired_cosines(lora, noise)) if k != 1])
    assert report["mean_cosine_to_random"] == pytest.approx(expected, abs=1e-6)
    json.dumps(report, allow_nan=False)  # None, never NaN, in results.json
    # every adapter zero: nothing defined
    zero = LoraWeights(lora.A, {m: torch.zeros_like(b) for m, b in lora.B.items()}, 1.0)
    assert specificity(["a", "b", "c"], zero, noise)["mean_pairwise_cosine"] is None


def random_bottleneck(n: int, size: int = 3, seed: int = 0, act: str = "relu") -> BottleneckWeights:
    g = torch.Generator().manual_seed(seed)
    blocks = {"layers.0.mlp": 6, "layers.1.mlp": 6}  # name: hidden size

    def draw(*shape):
        return torch.randn(n, *shape, generator=g)

    return BottleneckWeights(
        {k: draw(size, d) for k, d in blocks.items()},
        {k: draw(size) for k in blocks},
        {k: draw(d, size) for k, d in blocks.items()},
        {k: draw(d) for k, d in blocks.items()},
        act,
    )


def dense_linearised(x: BottleneckWeights) -> torch.Tensor:
    """(n, sum of d * (d + 1)) every adapter's [U D | U b_d + b_u], materialised."""
    parts = []
    for k in x.module_names:
        up, down = x.up[k].double(), x.down[k].double()
        offset = (up @ x.down_bias[k].double()[..., None])[..., 0] + x.up_bias[k].double()
        parts += [torch.cat([up @ down, offset[..., None]], dim=2).flatten(1)]
    return torch.cat(parts, dim=1)


def test_bottleneck_geometry_matches_dense_linearised_updates():
    x, y = random_bottleneck(4, size=3, seed=0), random_bottleneck(3, size=5, seed=1)
    dx, dy = dense_linearised(x), dense_linearised(y)
    assert torch.allclose(bottleneck_geometry.inner_products(x, y), dx @ dy.T, atol=1e-9)
    assert torch.allclose(bottleneck_geometry.squared_norms(x), dx.pow(2).sum(1), rtol=1e-10)
    expected = (dx @ dy.T) / (dx.norm(dim=1)[:, None] * dy.norm(dim=1)[None, :])
    assert torch.allclose(bottleneck_geometry.cosine_matrix(x, y), expected, atol=1e-10)
    z = random_bottleneck(4, size=2, seed=2)
    dz = dense_linearised(z)
    paired = (dx * dz).sum(1) / (dx.norm(dim=1) * dz.norm(dim=1))
    assert torch.allclose(bottleneck_geometry.paired_cosines(x, z), paired, atol=1e-10)
    # the report picks the geometry by kind
    report = specificity(["a", "b", "c", "d"], x, z)
    assert report["quantity"] == bottleneck_geometry.QUANTITY
    assert report["per_task"]["b"]["cosine_to_random"] == pytest.approx(float(paired[1]), abs=1e-6)
    with pytest.raises(ValueError, match="cannot compare bottleneck adapters with lora"):
        specificity(["a", "b", "c", "d"], x, random_lora(4))


def test_bottleneck_cosines_ignore_unit_permutation_and_scaling_and_zero_is_undefined():
    """What leaves a (ReLU) bottleneck adapter's function unchanged leaves its cosine at 1;
    an identity adapter (up and up bias zero, an untrained one) has no defined cosine."""
    x = random_bottleneck(1, size=4, seed=3)
    perm, scale = torch.tensor([2, 0, 3, 1]), torch.tensor([0.5, 2.0, 3.0, 0.25])
    same = BottleneckWeights(
        {k: v[:, perm] * scale[None, :, None] for k, v in x.down.items()},
        {k: v[:, perm] * scale for k, v in x.down_bias.items()},
        {k: v[:, :, perm] / scale for k, v in x.up.items()},
        x.up_bias,
        x.non_linearity,
    )
    h = torch.randn(1, 5, 6)
    name = x.module_names[0]

    def fields(w: BottleneckWeights) -> tuple[torch.Tensor, ...]:
        return w.down[name], w.down_bias[name], w.up[name], w.up_bias[name]

    torch.testing.assert_close(
        bottleneck_delta(h, *fields(x), "relu"), bottleneck_delta(h, *fields(same), "relu")
    )
    assert bottleneck_geometry.paired_cosines(x, same).item() == pytest.approx(1.0)
    flat_x, flat_same = (torch.cat([t.flatten() for t in fields(w)]) for w in (x, same))
    assert torch.nn.functional.cosine_similarity(flat_x, flat_same, dim=0) < 0.9, (
        "the raw parameters moved: the reason they are not what is compared"
    )
    identity = BottleneckWeights(
        x.down,
        x.down_bias,
        {k: torch.zeros_like(v) for k, v in x.up.items()},
        {k: torch.zeros_like(v) for k, v in x.up_bias.items()},
    )
    assert math.isnan(bottleneck_geometry.paired_cosines(x, identity).item())
    report = specificity(["a"], identity, x)
    assert (
        report["per_task"]["a"]["cosine_to_random"] is None and report["per_task"]["a"]["norm"] == 0
    )


# ---------------------------------------------------------------- reply metrics


def test_distinct_bigram_ratio_and_contains_reference():
    assert distinct_bigram_ratio("No. No. No. No.") == pytest.approx(1 / 3)
    assert distinct_bigram_ratio("a b a b") == pytest.approx(2 / 3)  # (a b) (b a) (a b)
    assert distinct_bigram_ratio("the cat sat on the mat") == 1.0
    assert distinct_bigram_ratio("word") is None and distinct_bigram_ratio("  ") is None
    assert contains_reference("The capital is Canberra.", ["canberra"]) == 1.0
    assert contains_reference("Canberras", ["Canberra"]) == 0.0  # whole words only
    assert (
        contains_reference("it is one hundred and fifty", ["150", "one hundred and fifty"]) == 1.0
    )


def test_reply_and_side_summaries_on_known_replies():
    rows = [
        {"text": "Canberra\nIt is in Australia.", "num_tokens": 9, "ended": True},
        {"text": "No. No. No. No. No.", "num_tokens": 12, "ended": False},
        {"text": "Yes", "num_tokens": 1, "ended": True},
    ]
    references = [["Canberra"], ["negative"], []]
    first = reply_scores(rows[0]["text"], references[0])
    assert first["em"] == 1.0 and first["contains"] == 1.0  # exact match of the first line
    assert first["distinct"] == 1.0 and not first["loops"]
    second = reply_scores(rows[1]["text"], references[1])
    assert second["distinct"] == 0.25 and second["loops"] and second["em"] == 0.0
    assert "em" not in reply_scores("Yes", [])  # no reference: no exact match
    summary = side_summary(rows, references)
    assert summary["n"] == 3 and summary["short"] == 1  # "Yes" has no bigram
    assert summary["distinct_bigrams"] == pytest.approx((1.0 + 0.25) / 2)
    assert summary["ended"] == pytest.approx(2 / 3) and summary["loops"] == pytest.approx(1 / 3)
    assert summary["n_references"] == 2 and summary["em"] == 0.5 and summary["contains"] == 0.5
    assert summary["tokens"] == pytest.approx(22 / 3)


def test_committed_chat_prompts(tmp_path):
    prompts = load_chat_prompts(DEFAULT_CHAT_PROMPTS)
    assert len(prompts) >= 8 and len({p.name for p in prompts}) == len(prompts)
    assert all(p.description and p.prompt for p in prompts)
    assert sum(bool(p.references) for p in prompts) >= 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("prompts:\n  - name: a\n    prompt: hi\n")
    with pytest.raises(ValueError, match="description"):
        load_chat_prompts(bad)
    bad.write_text("prompts:\n  - {name: a, description: d, prompt: p, answer: x}\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\)"):
        load_chat_prompts(bad)


# ---------------------------------------------------------------- decoding with a stop set


def _force(model, token_ids: list[int]):
    """Make ``token_ids`` overwhelmingly likely at every position (a hook on the output head)."""
    return model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: out.index_add(
            -1, torch.tensor(token_ids), torch.full((*out.shape[:-1], len(token_ids)), 50.0)
        )
    )


def test_generation_stops_at_eos_ids_not_at_newlines(llama):
    model, tokenizer = llama
    eos = eos_token_ids(tokenizer, model)
    assert tokenizer.eos_token_id in eos
    fake = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[5, 7]))
    assert eos_token_ids(tokenizer, fake) == {tokenizer.eos_token_id, 5, 7}

    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1
    prompts = ["Q: What day comes after Monday? A:", "Translate English to French."]
    handle = _force(model, newline)
    try:
        free = greedy_generations(model, tokenizer, prompts, 5, stop_ids=eos)
        one_line = greedy_generations(model, tokenizer, prompts, 5)  # newlines stop by default
        answers = greedy_answers(model, tokenizer, prompts, 5)
    finally:
        handle.remove()
    # with only eos ids as stops a newline loop runs to the cap and does not "end"
    assert [(g.num_tokens, g.ended) for g in free] == [(5, False)] * 2
    assert [(g.num_tokens, g.ended, g.text) for g in one_line] == [(0, True, "")] * 2
    assert answers == ["", ""]

    handle = _force(model, [tokenizer.eos_token_id])
    try:
        ended = greedy_generations(model, tokenizer, prompts, 5, stop_ids=eos)
    finally:
        handle.remove()
    assert [(g.num_tokens, g.ended) for g in ended] == [(0, True)] * 2


# ---------------------------------------------------------------- paired deltas (pure)


def _et(name: str) -> EvalTask:
    task = Task(name, "d", (), "multiple_choice", ("multiple_choice_grade",), [])
    return EvalTask(task, "heldout", [], [], [], 0, "", "acc")


def test_paired_delta_is_the_mean_of_per_example_differences():
    tasks = [_et("t1"), _et("t2"), _et("t3")]

    def ok(scores):
        return {"status": "ok", "scores": {"acc": scores}}

    results = {
        "generated": {"t1": ok([1, 1, 0, 1]), "t2": ok([0, 1]), "t3": ok([1, 1])},
        "generated_random": {
            "t1": ok([0, 1, 0, 0]),
            "t2": ok([1, 1]),
            "t3": {"status": "missing", "reason": "x"},
        },
    }
    paired = paired_delta(tasks, results, "generated", "generated_random", 200, 0)
    assert set(paired["per_task"]) == {"t1", "t2"}  # only tasks both ran on
    assert paired["per_task"]["t1"]["mean"] == pytest.approx(0.5)
    assert paired["per_task"]["t2"]["mean"] == pytest.approx(-0.5)
    assert paired["delta"]["mean"] == pytest.approx(0.0) and paired["delta"]["tasks"] == 2
    assert paired["examples"] == 6
    lo, hi = paired["per_task"]["t1"]["ci"]
    assert lo <= 0.5 <= hi
    assert paired_delta(tasks, results, "generated", "generated_other_task", 200, 0) is None


# ---------------------------------------------------------------- oracle LoRAs for training tasks


def test_oracle_finds_subtask_folders(tmp_path, llama, llama_generator):
    model, _ = llama
    library = tmp_path / "library"
    llama_generator.save_peft(llama_generator.generate(["parent sub"]), library / "parent__sub")
    task = Task("parent/sub", "d", (), "multiple_choice", ("multiple_choice_grade",), [])
    other = Task("parent/other", "d", (), "multiple_choice", ("multiple_choice_grade",), [])
    [oracle], _ = build_systems(["oracle_lora"], model, [task, other], "", library)
    setup = oracle.setup(task)
    assert setup.adapter is not None and setup.info["path"] == str(library / "parent__sub")
    with pytest.raises(MissingArtifact, match=r"looked for parent__other/"):
        oracle.setup(other)


# ---------------------------------------------------------------- end to end on the tiny model


@pytest.fixture(scope="module")
def library(tmp_path_factory, llama, llama_dir, conditioner) -> Path:
    """Oracle LoRAs for one held-out task (opposites) and one training task (colours)."""
    generator = make_generator(llama[0], llama_dir, conditioner, ["q_proj", "v_proj"])
    folder = tmp_path_factory.mktemp("library")
    generator.save_peft(generator.generate(["opposites"]), folder / "opposites")
    generator.save_peft(generator.generate(["colours"]), folder / "colours")
    return folder


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, llama_dir, checkpoint_dir, library):
    out = tmp_path_factory.mktemp("eval") / "out"
    config = load_config(
        TINY_CONFIG,
        [
            f"base_model={llama_dir}",
            f"checkpoint={checkpoint_dir}",
            f"loras_dir={library}",
            f"out={out}",
            (
                "systems=[base, base+desc, base+other_desc, oracle_lora, generated, "
                "generated+desc, generated_random, generated_other_task]"
            ),
        ],
    )
    results = run(config)
    return config, results, json.loads((out / "results.json").read_text()), out


def test_paired_deltas_in_results_and_markdown(evaluated):
    _, _, saved, out = evaluated
    report = (out / "results.md").read_text()
    for group in ("heldout", "train"):
        paired = {(p["system"], p["other"]): p for p in saved["comparisons"][group]["paired"]}
        assert set(paired) == {
            ("generated", "generated_other_task"),
            ("generated", "generated_random"),
            ("generated+desc", "base+desc"),
            ("generated+desc", "generated"),
            ("base+desc", "base+other_desc"),
        }
        tasks = [t for t, info in saved["tasks"].items() if info["group"] == group]
        for (a, b), entry in paired.items():
            diffs = []
            for task in tasks:
                metric = saved["tasks"][task]["metric"]
                d = np.subtract(
                    saved["results"][a][task]["scores"][metric],
                    saved["results"][b][task]["scores"][metric],
                )
                assert entry["per_task"][task]["mean"] == pytest.approx(d.mean())
                diffs.append(d.mean())
            assert entry["delta"]["mean"] == pytest.approx(np.mean(diffs))
            lo, hi = entry["delta"]["ci"]
            assert lo <= entry["delta"]["mean"] <= hi and entry["delta"]["tasks"] == len(tasks)
    # one paired table per group, each with a macro row and every comparison
    header = (
        "| Task | n | generated − generated_other_task | generated − generated_random "
        "| generated+desc − base+desc | generated+desc − generated | base+desc − base+other_desc |"
    )
    assert report.count(header) == 2
    assert report.count("| **macro** |") == 2


def test_training_task_oracle_from_the_library(evaluated):
    _, _, saved, out = evaluated
    oracle = saved["results"]["oracle_lora"]
    assert saved["tasks"]["colours"]["group"] == "train"
    assert oracle["colours"]["status"] == "ok" and oracle["opposites"]["status"] == "ok"
    assert oracle["plurals"]["status"] == "missing" and "plurals/" in oracle["plurals"]["reason"]
    assert saved["summary"]["train"]["oracle_lora"]["tasks_ok"] == 1
    recovered = saved["comparisons"]["train"]["oracle_gain_recovered"]
    assert recovered["tasks"] == 1  # colours: the only training task with an oracle
    r = saved["results"]
    assert recovered["gain"] == pytest.approx(
        r["generated"]["colours"]["score"] - r["base"]["colours"]["score"]
    )
    assert recovered["oracle_gain"] == pytest.approx(
        r["oracle_lora"]["colours"]["score"] - r["base"]["colours"]["score"]
    )
    assert "Oracle gain recovered by `generated`" in (out / "results.md").read_text()


def test_specificity_in_results_matches_dense_computation(evaluated, checkpoint_dir, llama):
    config, _, saved, out = evaluated
    generator = AdapterGenerator.from_pretrained(checkpoint_dir, base_model=llama[0])
    report = (out / "results.md").read_text()
    assert report.count("Adapter specificity (cosine between generated delta-W") == 2
    for group in ("heldout", "train"):
        spec = saved["specificity"][group]
        tasks = sorted(t for t, info in saved["tasks"].items() if info["group"] == group)
        assert spec["status"] == "ok" and sorted(spec["per_task"]) == tasks
        own = generator.generate([task_description(saved_task(t)) for t in tasks])
        noise = generator.generate(
            [random_words(config.seed, t, config.random_words) for t in tasks]
        )
        cos = dense_cosines(own, own)
        assert spec["mean_pairwise_cosine"] == pytest.approx(float(cos[0, 1]), abs=1e-5)
        to_random = dense_cosines(own, noise).diagonal()
        for k, task in enumerate(tasks):
            assert spec["per_task"][task]["cosine_to_random"] == pytest.approx(
                float(to_random[k]), abs=1e-5
            )
        assert spec["mean_cosine_to_random"] == pytest.approx(float(to_random.mean()), abs=1e-5)


def saved_task(name: str) -> Task:
    """The tiny suite's task ``name`` (for its description)."""
    from hypergen.data.tasks import load_suite

    return load_suite(Path(__file__).parent / "data" / "eval_tasks" / "suite", [name])[name]


def test_generation_check_reports_replies_and_their_metrics(evaluated):
    config, _, saved, out = evaluated
    check = saved["generation_check"]
    prompts = load_chat_prompts(DEFAULT_CHAT_PROMPTS)
    assert check["settings"]["max_new_tokens"] == config.check_max_new_tokens
    assert set(check["sets"]) == {"chat", "capitals", "plurals"}  # chat + the generative tasks
    chat = check["sets"]["chat"]
    assert chat["status"] == "ok" and chat["n"] == len(prompts) == len(chat["replies"])
    for side in ("without", "with"):
        rows = [reply[side] for reply in chat["replies"]]
        refs = [reply["references"] for reply in chat["replies"]]
        assert chat[side] == {"status": "ok", **side_summary(rows, refs)}
        for reply, row in zip(chat["replies"], rows):
            assert isinstance(row["text"], str) and isinstance(row["ended"], bool)
            assert row["num_tokens"] <= config.check_max_new_tokens
            assert row["ended"] or row["num_tokens"] == config.check_max_new_tokens
            assert row["distinct"] == (
                None
                if distinct_bigram_ratio(row["text"]) is None
                else pytest.approx(distinct_bigram_ratio(row["text"]), abs=1e-4)
            )
    ratios = [chat[side]["distinct_bigrams"] for side in ("without", "with")]
    if None not in ratios and ratios[0] > 0:
        assert chat["distinct_ratio"] == pytest.approx(ratios[1] / ratios[0])
    assert [r["id"] for r in chat["replies"]] == [p.name for p in prompts]
    # the adapter changes the replies (random B heads), so both sides really ran
    assert any(r["without"]["text"] != r["with"]["text"] for r in chat["replies"])
    for task in ("capitals", "plurals"):
        entry = check["sets"][task]
        assert entry["kind"] == "task" and entry["n"] == config.check_max_examples
        assert "replies" not in entry  # task-derived text stays in the cache
        cached = json.loads(
            (out / "cache" / "generation_check" / "with" / f"{task}.json").read_text()
        )
        assert len(cached["rows"]) == config.check_max_examples
    report = (out / "results.md").read_text()
    assert "## Generation check" in report and "Chat replies" in report
    assert f"| chat | {len(prompts)} |" in report
    for reply in chat["replies"][:3]:
        assert reply["prompt"].replace("|", "\\|") in report


def test_generation_check_cache_reuses_the_side_without_adapter(
    tmp_path, llama, llama_dir, conditioner
):
    """A new checkpoint recomputes only the "with" side; the same one recomputes nothing."""
    model, tokenizer = llama
    other = make_generator(model, llama_dir, conditioner, ["q_proj", "v_proj"])
    other_dir = other.save_pretrained(tmp_path / "other")
    tasks = [_generative_task()]

    def check(checkpoint) -> dict:
        counts = {"computed": 0, "reused": 0, "missing": 0}
        source = GeneratorSource(str(checkpoint), model, "cpu")
        report = run_check(
            model,
            tokenizer,
            tasks,
            source,
            DEFAULT_CHAT_PROMPTS,
            6,
            2,
            ScoringConfig(batch_tokens=512, max_length=128),
            {"model": "tiny"},
            tmp_path / "out",
            counts,
        )
        return counts, report

    counts, first = check(other_dir)
    assert counts == {"computed": 4, "reused": 0, "missing": 0}  # (chat, task) x (without, with)
    counts, again = check(other_dir)
    assert counts == {"computed": 0, "reused": 4, "missing": 0} and again["sets"] == first["sets"]
    randomize_(other, seed=1).save_pretrained(other_dir)  # retrained: new adapters
    counts, _ = check(other_dir)
    assert counts == {"computed": 2, "reused": 2, "missing": 0}
    counts, missing = check(tmp_path / "nowhere")
    assert counts == {"computed": 0, "reused": 2, "missing": 2}
    assert missing["sets"]["chat"]["with"]["status"] == "missing"
    assert missing["sets"]["chat"]["distinct_ratio"] is None


def _generative_task() -> EvalTask:
    task = saved_task("capitals")
    return EvalTask(task, "heldout", [], task.examples[:3], [0, 1, 2], 3, "", "em")


def test_missing_checkpoint_reports_specificity_and_check_as_missing(tmp_path, llama_dir):
    config = load_config(
        TINY_CONFIG,
        [
            f"base_model={llama_dir}",
            f"checkpoint={tmp_path / 'none'}",
            f"loras_dir={tmp_path / 'none'}",
            f"out={tmp_path / 'out'}",
            "systems=[base]",
            "tasks=heldout",
        ],
    )
    results = run(config)
    assert results["specificity"]["heldout"]["status"] == "missing"
    assert "no hypernetwork checkpoint" in results["specificity"]["heldout"]["reason"]
    chat = results["generation_check"]["sets"]["chat"]
    assert chat["without"]["status"] == "ok" and chat["with"]["status"] == "missing"
    assert results["comparisons"]["heldout"]["paired"] == []
    report = (tmp_path / "out" / "results.md").read_text()
    assert "Adapter specificity: missing" in report and "Missing sides:" in report
    off = run(load_config(TINY_CONFIG, [*_overrides(config), "generation_check=false"]))
    assert off["generation_check"] == {"status": "off"}


def _overrides(config) -> list[str]:
    return [
        f"base_model={config.base_model}",
        f"checkpoint={config.checkpoint}",
        f"loras_dir={config.loras_dir}",
        f"out={config.out}",
        "systems=[base]",
        "tasks=heldout",
    ]
