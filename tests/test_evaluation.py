"""Evaluation harness: metrics on known cases, the scorer on models whose answers are forced, the
prefix-cached scorer against whole-row scoring, and a fast end-to-end run on the tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import LlamaConfig, PreTrainedTokenizerFast

from evaluation.config import ALL_SYSTEMS, DEFAULT_SYSTEMS, load_config
from evaluation.harness import cache_path, headline_metric, run
from evaluation.scoring import OptionScores, ScoringConfig, greedy_answers, score_options
from evaluation.systems import nearest_answer_pick, nearest_neighbours, random_words
from hypergen.data.tasks import Example, Task
from hypergen.data.text_batches import completion_logprobs, tokenize_pairs
from hypergen.metrics import accuracy, bootstrap_ci, exact_match, normalize_text, rouge_l

DATA = Path(__file__).parent / "data" / "eval_tasks"
TINY_CONFIG = Path(__file__).parents[1] / "evaluation" / "configs" / "tiny.yaml"

# ---------------------------------------------------------------- metrics


def test_normalize_and_exact_match():
    assert normalize_text("  The  Cat!\n") == "the cat"
    assert exact_match(" paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("tokyo", ["Kyoto", "TOKYO"]) == 1.0  # best over references


def test_rouge_l_known_values():
    assert rouge_l("the cat sat on the mat", ["the cat sat on the mat"]) == 1.0
    assert rouge_l("dog", ["the cat"]) == 0.0
    # LCS("the cat", "the big cat") = 2: P = 2/2, R = 2/3, F1 = 0.8
    assert rouge_l("the cat", ["the big cat"]) == pytest.approx(0.8)
    # LCS("a b c d", "a c e") = 2 ("a c"): P = 2/4, R = 2/3, F1 = 4/7
    assert rouge_l("a b c d", ["a c e"]) == pytest.approx(4 / 7)
    assert rouge_l("x", ["y", "x"]) == 1.0
    assert rouge_l("", [""]) == 1.0 and rouge_l("", ["a"]) == 0.0


def test_accuracy():
    assert accuracy([0, 2, 1], [(0,), (1, 2), (0,)]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        accuracy([0], [])


def test_bootstrap_ci_contains_mean_and_is_reproducible():
    scores = np.random.default_rng(1).integers(0, 2, 80).astype(float)
    mean, lo, hi = bootstrap_ci(scores, 500, seed=3)
    assert mean == pytest.approx(scores.mean())
    assert lo <= mean <= hi and hi - lo > 0.05
    assert bootstrap_ci(scores, 500, seed=3) == (mean, lo, hi)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    # macro-average of two tasks: the mean of task means, not of all examples
    macro, lo, hi = bootstrap_ci([[1.0] * 10, [0.0, 0.0]], 200)
    assert macro == 0.5 and lo <= 0.5 <= hi


# ---------------------------------------------------------------- scorer on a bigram LM


WORDS = ["<pad>", "question", "short", "long", "answer", "here", "yes", "no", "\n"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word of ``WORDS``."""
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<pad>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<pad>")


class BigramBackbone(nn.Module):
    def __init__(self, log_probs: torch.Tensor):
        super().__init__()
        self.table = nn.Embedding.from_pretrained(log_probs)

    def forward(
        self, input_ids, attention_mask=None, position_ids=None, cache=None, use_cache=None
    ):
        return SimpleNamespace(last_hidden_state=self.table(input_ids))


class BigramLM(nn.Module):
    """A causal LM whose next-token distribution depends only on the current token:
    ``p(next | current) = probs[current, next]``, so option log-likelihoods are known exactly."""

    def __init__(self, probs: dict[tuple[str, str], float]):
        super().__init__()
        n = len(WORDS)
        table = torch.zeros(n, n)
        for current in range(n):
            fixed = {WORDS.index(b): p for (a, b), p in probs.items() if a == WORDS[current]}
            rest = (1 - sum(fixed.values())) / (n - len(fixed))
            table[current] = torch.tensor([fixed.get(j, rest) for j in range(n)])
        self.model = BigramBackbone(table.log())
        self.head = nn.Identity()
        self.config = LlamaConfig(num_hidden_layers=1, vocab_size=n)  # sizes the (unused) cache

    @property
    def base_model(self):
        return self.model

    def forward(
        self,
        input_ids,
        attention_mask=None,
        position_ids=None,
        cache=None,
        use_cache=None,
        logits_to_keep=0,
    ):
        return SimpleNamespace(logits=self.head(self.model(input_ids).last_hidden_state))

    def get_output_embeddings(self):
        return self.head


def test_forced_model_picks_the_forced_option():
    tokenizer = word_tokenizer()
    lm = BigramLM({("question", "yes"): 0.9})
    [scores] = score_options(lm, tokenizer, ["question"], [[" no", " yes"]])
    assert scores.raw_pick == 1 and scores.normalized_pick == 1
    assert scores.logliks[1] == pytest.approx(math.log(0.9), abs=1e-5)
    assert scores.num_tokens == (1, 1)


def test_length_normalisation_changes_the_pick_where_it_should():
    tokenizer = word_tokenizer()
    probs = {
        ("question", "short"): 0.3,
        ("question", "long"): 0.2,
        ("long", "answer"): 0.9,
        ("answer", "here"): 0.9,
    }
    lm = BigramLM(probs)
    [scores] = score_options(lm, tokenizer, ["question"], [[" short", " long answer here"]])
    short, long = math.log(0.3), math.log(0.2) + 2 * math.log(0.9)
    assert scores.logliks == pytest.approx((short, long), abs=1e-5)
    assert scores.num_tokens == (1, 3)
    assert long < short and long / 3 > short  # higher total for short, higher per token for long
    assert scores.raw_pick == 0 and scores.normalized_pick == 1
    # the reverse: the long option wins in total and per token; both picks agree
    lm = BigramLM({**probs, ("question", "long"): 0.6})
    [scores] = score_options(lm, tokenizer, ["question"], [[" short", " long answer here"]])
    assert scores.raw_pick == 1 and scores.normalized_pick == 1


def test_option_scores_ties_pick_first():
    s = OptionScores((-1.0, -1.0, -2.0), (1, 1, 2))
    assert s.raw_pick == 0 and s.normalized_pick == 0


def test_greedy_generation_follows_the_forced_path_and_stops_at_newline():
    tokenizer = word_tokenizer()
    newline = WORDS.index("\n")
    probs = {
        ("question", "yes"): 0.9,
        ("yes", "\n"): 0.9,
        ("short", "long"): 0.9,
        ("long", "answer"): 0.9,
    }
    lm = BigramLM({**probs, ("answer", "\n"): 0.9})
    answers = greedy_answers(
        lm, tokenizer, ["question", "short", "question short"], 5, stop_ids={newline}
    )
    assert answers == [
        "yes",
        "long answer",
        "long answer",
    ]  # the word-level decoder joins with spaces
    # without a newline the answer runs to max_new_tokens: "answer" -> "here" -> "here" ...
    lm = BigramLM({**probs, ("answer", "here"): 0.9, ("here", "here"): 0.9})
    assert greedy_answers(lm, tokenizer, ["short"], 4, stop_ids={newline}) == [
        "long answer here here"
    ]


# ---------------------------------------------------------------- scorer on the tiny LMs


PROMPTS = ["Q: What day comes after Monday?\nA:", "Translate: The cat", "Q: What is 2 plus 3?\nA:"]
OPTIONS = [
    [" Tuesday", " Sunday and more words", " x"],
    [" Le chat", " the dog is"],
    [" 5", " 6", " seven", " 3."],
]


def _whole_row_scores(model, tokenizer, prompt, options):
    batch = tokenize_pairs(tokenizer, [prompt] * len(options), options)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return completion_logprobs(logits, batch["labels"])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_tokens", [8, 4096])  # one example per batch / all in one batch
def test_prefix_cached_scores_equal_whole_rows(arch, batch_tokens, request):
    model, tokenizer = request.getfixturevalue(arch)
    results = score_options(
        model, tokenizer, PROMPTS, OPTIONS, config=ScoringConfig(batch_tokens=batch_tokens)
    )
    for prompt, options, result in zip(PROMPTS, OPTIONS, results):
        logliks, counts = _whole_row_scores(model, tokenizer, prompt, options)
        assert torch.allclose(torch.tensor(result.logliks), logliks, atol=1e-4)
        assert list(result.num_tokens) == counts.tolist()


def test_per_example_adapters_equal_each_example_alone(llama, llama_generator):
    model, tokenizer = llama
    lora = llama_generator.generate(["Answer questions about dates.", "Translate to French."])
    index = [1, 0, 1]
    together = score_options(
        model, tokenizer, PROMPTS, OPTIONS, lora, index, ScoringConfig(batch_tokens=4096)
    )
    base = score_options(model, tokenizer, PROMPTS, OPTIONS)
    for e in range(3):
        [alone] = score_options(
            model, tokenizer, PROMPTS[e : e + 1], OPTIONS[e : e + 1], lora.select(index[e])
        )
        assert together[e].logliks == pytest.approx(alone.logliks, abs=1e-4)
        assert together[e].logliks != pytest.approx(base[e].logliks, abs=1e-4)  # adapters do act
    answers = greedy_answers(
        model, tokenizer, PROMPTS, 4, lora, index, ScoringConfig(batch_tokens=4096)
    )
    for e in range(3):
        assert (
            answers[e]
            == greedy_answers(model, tokenizer, PROMPTS[e : e + 1], 4, lora.select(index[e]))[0]
        )


def test_per_example_bottleneck_adapters_equal_each_example_alone(llama, llama_dir, conditioner):
    """The scorer and greedy decoding apply bottleneck adapters per row as they do LoRAs."""
    from tests.conftest import make_bottleneck_generator

    model, tokenizer = llama
    generator = make_bottleneck_generator(model, llama_dir, conditioner, placement="houlsby")
    adapters = generator.generate(["Answer questions about dates.", "Translate to French."])
    index = [1, 0, 1]
    together = score_options(
        model, tokenizer, PROMPTS, OPTIONS, adapters, index, ScoringConfig(batch_tokens=4096)
    )
    base = score_options(model, tokenizer, PROMPTS, OPTIONS)
    for e in range(3):
        [alone] = score_options(
            model, tokenizer, PROMPTS[e : e + 1], OPTIONS[e : e + 1], adapters.select(index[e])
        )
        assert together[e].logliks == pytest.approx(alone.logliks, abs=1e-4)
        assert together[e].logliks != pytest.approx(base[e].logliks, abs=1e-4)  # adapters do act
    answers = greedy_answers(
        model, tokenizer, PROMPTS, 4, adapters, index, ScoringConfig(batch_tokens=4096)
    )
    for e in range(3):
        single = greedy_answers(model, tokenizer, PROMPTS[e : e + 1], 4, adapters.select(index[e]))
        assert answers[e] == single[0]


def test_forced_tiny_llama_picks_forced_option(llama):
    """The real LM code path: a hook on the output head makes one token overwhelmingly likely."""
    model, tokenizer = llama
    options = [" Tuesday", " cat", " 5"]
    forced = tokenizer(" cat", add_special_tokens=False).input_ids
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: out.index_add(
            -1, torch.tensor(forced), torch.full((*out.shape[:-1], len(forced)), 30.0)
        )
    )
    try:
        results = score_options(model, tokenizer, PROMPTS, [options] * 3)
    finally:
        handle.remove()
    assert [r.raw_pick for r in results] == [1, 1, 1]


def test_greedy_equals_step_by_step_decoding(llama):
    model, tokenizer = llama
    answers = greedy_answers(model, tokenizer, PROMPTS, 6, config=ScoringConfig(batch_tokens=4096))
    for prompt, answer in zip(PROMPTS, answers):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
        tokens = []
        for _ in range(6):
            with torch.no_grad():
                token = model(ids).logits[0, -1].argmax().item()
            if "\n" in tokenizer.decode([token]) or token == tokenizer.eos_token_id:
                break
            tokens.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        assert answer == tokenizer.decode(tokens, skip_special_tokens=True).split("\n")[0].strip()


# ---------------------------------------------------------------- systems


def _mc(text, options, correct):
    return Example(
        input=text,
        prompt=text,
        completion=options[correct],
        options=tuple(options),
        correct=(correct,),
    )


def test_nearest_neighbours_and_answer_pick():
    train = ["the capital of france", "the capital of spain", "two plus two"]
    assert nearest_neighbours(train, ["capital of spain please", "two plus three"]) == [1, 2]
    neighbour = _mc("x", [" no", " yes"], 1)
    assert (
        nearest_answer_pick(neighbour, _mc("y", [" Yes", " no"], 0)) == 0
    )  # case-insensitive match
    assert (
        nearest_answer_pick(neighbour, _mc("y", [" maybe", " no"], 0)) == -1
    )  # not an option: wrong


def test_random_words_are_reproducible():
    assert random_words(0, "a", 12) == random_words(0, "a", 12)
    assert random_words(0, "a", 12) != random_words(0, "b", 12)
    assert len(random_words(0, "a", 12).split()) == 12


def test_headline_metric_follows_task_file():
    def task(kind, metrics):
        return Task("t", "d", (), kind, metrics, [])

    assert headline_metric(task("multiple_choice", ("multiple_choice_grade",))) == "acc"
    assert headline_metric(task("generative", ("exact_str_match", "rouge"))) == "em"
    assert headline_metric(task("generative", ("rouge",))) == "rougeL"
    assert headline_metric(task("generative", ())) == "em"


def test_config_rejects_unknown_keys_and_systems():
    with pytest.raises(ValueError, match=r"unknown key\(s\)"):
        load_config(TINY_CONFIG, ["max_exampels=3"])
    with pytest.raises(ValueError, match="systems"):
        load_config(TINY_CONFIG, ["systems=[base, telepathy]"])
    assert load_config(TINY_CONFIG, ["max_examples=7"]).max_examples == 7


# ---------------------------------------------------------------- end to end


@pytest.fixture
def loras(tmp_path, llama_generator) -> Path:
    """A LoRA library with an oracle for one held-out task (opposites) and a multi-task LoRA."""
    folder = tmp_path / "loras"
    llama_generator.save_peft(llama_generator.generate(["opposites"]), folder / "opposites")
    llama_generator.save_peft(llama_generator.generate(["all tasks"]), folder / "_multitask")
    return folder


def _config(tmp_path, llama_dir, checkpoint, loras, *extra):
    overrides = [
        f"base_model={llama_dir}",
        f"checkpoint={checkpoint}",
        f"loras_dir={loras}",
        f"out={tmp_path / 'out'}",
    ]
    return load_config(TINY_CONFIG, [*overrides, *extra])


def test_end_to_end_outputs_missing_systems_and_resume(
    tmp_path, llama_dir, checkpoint_dir, loras, monkeypatch
):
    monkeypatch.setenv("HYPERGEN_HOME", str(tmp_path))  # the LoRA library lies in the home
    config = _config(tmp_path, llama_dir, checkpoint_dir, loras)
    results = run(config)
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} >= {"results.json", "results.md", "scores.png", "cache"}
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((out / "results.json").read_text())
    # results record portable paths, not this machine's cache folder
    assert saved["paths"]["loras_dir"] == "$HYPERGEN_HOME/loras"
    assert saved["config"]["out"] == saved["config"]["loras_dir"].replace("loras", "out")
    assert saved["config"]["out"] == "$HYPERGEN_HOME/out"
    assert "$HYPERGEN_HOME/out" in (out / "results.md").read_text().splitlines()[0]
    oracle_info = saved["results"]["oracle_lora"]["opposites"]["info"]
    assert oracle_info["path"] == "$HYPERGEN_HOME/loras/opposites"
    assert saved["checkpoint"]["hash"] and saved["data"]["version"] and saved["model"]["sha256"]
    assert set(saved["results"]) == set(DEFAULT_SYSTEMS)
    assert (
        saved["tasks"]["opposites"]["group"] == "heldout"
        and saved["tasks"]["colours"]["group"] == "train"
    )

    # same examples for every system; 4 sampled per task (tiny config), at most the test part
    for task, info in saved["tasks"].items():
        assert info["n_sampled"] == min(4, info["n_test"])
        for system in DEFAULT_SYSTEMS:
            r = saved["results"][system][task]
            if r["status"] == "ok":
                assert r["n"] == info["n_sampled"]
    # the oracle exists only for "opposites": reported missing elsewhere, with the reason
    oracle = saved["results"]["oracle_lora"]
    assert oracle["opposites"]["status"] == "ok"
    assert (
        oracle["capitals"]["status"] == "missing"
        and "no oracle LoRA for this task" in oracle["capitals"]["reason"]
    )
    assert saved["summary"]["heldout"]["oracle_lora"]["tasks_ok"] == 1
    # nearest example on "opposites": the neighbour's answer is never an option -> chance (1/3)
    nearest = saved["results"]["nearest_example"]["opposites"]
    assert nearest["coverage"] == 0 and nearest["score"] == pytest.approx(1 / 3)
    report = (out / "results.md").read_text()
    assert "## Missing" in report and "oracle_lora" in report and "missing" in report
    assert results["cache"]["computed"] > 0 and results["cache"]["reused"] == 0

    # rerun: everything comes from the cache, nothing is scored again
    again = run(config)
    assert (
        again["cache"]["computed"] == 0 and again["cache"]["reused"] == results["cache"]["computed"]
    )
    assert again["results"]["generated"] == results["results"]["generated"]

    # a new oracle LoRA: only that (system, task) is computed on the next run
    generator_dir = Path(loras) / "_multitask"
    (Path(loras) / "capitals").symlink_to(generator_dir, target_is_directory=True)
    third = run(config)
    assert third["cache"]["computed"] == 1
    assert third["results"]["oracle_lora"]["capitals"]["status"] == "ok"


def _linearised(weights) -> torch.Tensor:
    """Each bottleneck adapter's [U D | U b_d + b_u] over all blocks, flattened (dense, float64)."""
    parts = []
    for name in weights.module_names:
        up, down = weights.up[name].double(), weights.down[name].double()
        offset = (up @ weights.down_bias[name].double()[..., None])[..., 0]
        parts += [(up @ down).flatten(1), offset + weights.up_bias[name].double()]
    return torch.cat(parts, dim=1)


def test_end_to_end_with_a_bottleneck_checkpoint(
    tmp_path, llama, llama_dir, conditioner, loras, monkeypatch
):
    """A checkpoint emitting bottleneck adapters: the generated systems score with them (checked
    against scoring here), the LoRA baselines run from their own library as before, specificity
    compares linearised updates, and the generation check applies them."""
    from evaluation.harness import load_eval_tasks, resolve_paths
    from evaluation.systems import task_description
    from tests.conftest import make_bottleneck_generator

    monkeypatch.setenv("HYPERGEN_HOME", str(tmp_path))
    model, tokenizer = llama
    generator = make_bottleneck_generator(model, llama_dir, conditioner, placement="houlsby")
    checkpoint = generator.save_pretrained(tmp_path / "bottleneck")
    config = _config(tmp_path, llama_dir, checkpoint, loras)
    results = run(config)
    out = tmp_path / "out"
    assert results["checkpoint"]["adapter_kind"] == "bottleneck"
    r = results["results"]
    generated = [s for s in DEFAULT_SYSTEMS if s.startswith("generated")]
    for system in generated:
        assert all(entry["status"] == "ok" for entry in r[system].values()), system
    # the baselines read the PEFT library: they do not depend on the checkpoint's kind
    assert r["multitask_lora"]["opposites"]["status"] == "ok"
    assert r["oracle_lora"]["opposites"]["status"] == "ok"

    # the generated scores are the bottleneck adapter's, one adapter for the task's examples
    tasks = load_eval_tasks(config, resolve_paths(config)["suite"])
    et = next(et for et in tasks if et.multiple_choice)
    adapter = generator.generate([task_description(et.task)])
    prompts, options = [ex.prompt for ex in et.test], [ex.options for ex in et.test]
    scoring = ScoringConfig(batch_tokens=config.batch_tokens, max_length=config.max_length)
    expected = score_options(model, tokenizer, prompts, options, adapter, config=scoring)
    base = score_options(model, tokenizer, prompts, options, config=scoring)
    rows = json.loads(cache_path(out, "generated", et.name).read_text())["examples"]
    for row, want, bare in zip(rows, expected, base):
        assert row["ll"] == pytest.approx(want.logliks, abs=1e-3)
        assert row["ll"] != pytest.approx(bare.logliks, abs=1e-3), "the adapter must act"

    # specificity: cosines of the linearised updates, as a dense computation gives them
    for group in ("heldout", "train"):
        spec = results["specificity"][group]
        assert spec["status"] == "ok" and "bottleneck" in spec["quantity"]
        names = sorted(spec["per_task"])
        by_name = {et.name: et for et in tasks}
        own = _linearised(generator.generate([task_description(by_name[n].task) for n in names]))
        noise = _linearised(
            generator.generate([random_words(config.seed, n, config.random_words) for n in names])
        )
        cos = (
            torch.nn.functional.normalize(own, dim=1) @ torch.nn.functional.normalize(own, dim=1).T
        )
        pairs = [float(cos[i, j]) for i in range(len(names)) for j in range(i + 1, len(names))]
        assert spec["mean_pairwise_cosine"] == pytest.approx(np.mean(pairs), abs=1e-6)
        for k, name in enumerate(names):
            to_random = torch.nn.functional.cosine_similarity(own[k], noise[k], dim=0)
            assert spec["per_task"][name]["cosine_to_random"] == pytest.approx(
                float(to_random), abs=1e-6
            )
            assert spec["per_task"][name]["norm"] == pytest.approx(float(own[k].norm()), rel=1e-5)
    report = (out / "results.md").read_text()
    assert "cosine between generated linearised bottleneck updates" in report

    # the generation check ran both sides with the bottleneck adapters, and they act
    chat = results["generation_check"]["sets"]["chat"]
    assert chat["with"]["status"] == "ok"
    assert any(reply["with"]["text"] != reply["without"]["text"] for reply in chat["replies"])

    # a rerun reuses everything
    again = run(config)
    assert again["cache"]["computed"] == 0 and again["results"]["generated"] == r["generated"]


def test_missing_checkpoint_and_loras_are_reported(tmp_path, llama_dir):
    config = _config(
        tmp_path, llama_dir, tmp_path / "no-checkpoint", tmp_path / "no-loras", "tasks=heldout"
    )
    results = run(config)
    for system in DEFAULT_SYSTEMS:
        entry = results["summary"]["heldout"][system]
        if system.startswith("generated") or system.endswith("_lora"):
            assert entry["tasks_ok"] == 0, system
            assert all(
                r["status"] == "missing" and r["reason"]
                for r in results["results"][system].values()
            )
        else:
            assert entry["tasks_ok"] == 2, system
    assert "no hypernetwork checkpoint" in (tmp_path / "out" / "results.md").read_text()
    assert not cache_path(
        tmp_path / "out", "generated", "opposites"
    ).exists()  # missing is never cached


def test_cli_runs_fast_mode(tmp_path, llama_dir, checkpoint_dir, capsys):
    from hypergen.cli import main

    code = main(
        [
            "eval",
            "--config",
            str(TINY_CONFIG),
            "--fast",
            f"base_model={llama_dir}",
            f"checkpoint={checkpoint_dir}",
            f"out={tmp_path / 'cli'}",
            "systems=[base, generated, nearest_example]",
            "tasks=[opposites, capitals]",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| generated |" in printed and (tmp_path / "cli" / "results.json").is_file()
    assert main(["eval", "--config", str(TINY_CONFIG), "bogus_key=1"]) == 2


def test_systems_come_from_one_registry():
    from evaluation import systems

    assert ALL_SYSTEMS == tuple(systems.SYSTEMS)  # the config's list is the registry's
    with pytest.raises(ValueError, match="registered twice"):
        systems.register("base", "again")(lambda context, task: None)
    built, _ = systems.build_systems(
        ["generated_random", "base"], None, [], "", "loras", num_random_words=5
    )
    assert [s.name for s in built] == ["generated_random", "base"]
    assert built[0].summary == "generated from 5 random words"
    assert built[1].setup(Task("t", "d", (), "generative", (), [])).fingerprint == {
        "prompt": "input"
    }
    with pytest.raises(ValueError, match="unknown systems"):
        systems.build_systems(["telepathy"], None, [], "", "loras")
    # base+other_desc: the next evaluated task's description in the prompt, as base+desc shows it
    one, two = (
        Task("a", "Say yes.", (), "generative", (), []),
        Task("b", "Say no.", (), "generative", (), []),
    )
    (own, other), _ = systems.build_systems(
        ["base+desc", "base+other_desc"], None, [one, two], "", "loras"
    )
    assert (
        other.setup(one).prompt_prefix
        == own.setup(two).prompt_prefix
        != own.setup(one).prompt_prefix
    )
    assert other.setup(two).info == {"from_task": "a"}
    with pytest.raises(systems.MissingArtifact, match="at least two"):
        systems.build_systems(["base+other_desc"], None, [one], "", "loras")[0][0].setup(one)
