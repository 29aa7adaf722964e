"""Document and demonstration conditions: chunk-and-pool encoding, the synthetic fact corpus,
and round trips through the Python API, the CLI, the HTTP API and meta-training (tiny models,
the hashing encoder, offline)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hypergen import AdapterGenerator, apply_adapters, load_peft
from hypergen.cli import main
from hypergen.conditions.demonstrations import (
    DemonstrationsConditioner,
    normalize_examples,
    render_examples,
)
from hypergen.conditions.document import DocumentConditioner, chunk_spans
from hypergen.conditions.registry import build_conditioner, condition_parts
from hypergen.config import EncoderConfig, HyperNetConfig, LoraSpec
from hypergen.data.fact_documents import fact_documents
from tests.conftest import randomize_
from training.documents import document_task_data, with_demonstrations

DOCUMENT = EncoderConfig(kind="document", name="hash-64")
DEMOS = EncoderConfig(kind="demonstrations", name="hash-64")
DESCRIBED_DEMOS = EncoderConfig(
    kind="composite",
    parts={"description": EncoderConfig(kind="hashing", name="hash-32"), "examples": DEMOS},
)
EXAMPLES = [{"input": "2 + 2", "output": "4"}, {"input": "3 + 4", "output": "7"}]


def filler(words: int, seed: int = 0) -> str:
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(500)]
    return " ".join(rng.choice(vocab) for _ in range(words))


@pytest.fixture(scope="module")
def documents() -> DocumentConditioner:
    return DocumentConditioner("hash-64")


# --- the document conditioner ---------------------------------------------------------------------


def test_windows_cover_every_token_with_overlap():
    spans = [(i * 3, i * 3 + 2) for i in range(300)]  # 300 tokens
    windows = chunk_spans(spans, chunk_tokens=128, overlap=32)
    assert windows == [(0, 383), (288, 671), (576, 899)]  # token starts 0, 96, 192; last ends 299
    assert chunk_spans(spans[:10], 128, 32) == [(0, 29)], "a short document is one window"
    assert chunk_spans([], 128, 32) == []


def test_a_fact_only_in_the_last_window_changes_the_vector(documents):
    body = filler(1000)
    text = f"{body} The treasure is buried under the old oak tree."
    other = f"{body} The treasure is hidden inside the lighthouse tower."
    windows = documents.chunks(text)
    assert len(windows) == 11 and "oak" in windows[-1] and all("oak" not in w for w in windows[:-1])
    a, b = documents.encode([text, other])
    assert (a - b).abs().max() > 1e-3, "the last window's fact reaches the pooled vector"
    # the pooled vector is the normalised mean of the windows' vectors
    mean = documents.encoder.encode(windows).mean(0)
    torch.testing.assert_close(a, mean / mean.norm())
    torch.testing.assert_close(a.norm(), torch.tensor(1.0))


def test_same_document_same_vector_and_normalisation(documents):
    text = "Ada  Lovelace lived in\nLondon.\n\n  She wrote notes. "
    assert documents.normalize(text) == "Ada Lovelace lived in London. She wrote notes."
    a, b, c = documents.encode([text, "Ada Lovelace lived in London. She wrote notes.", "Other."])
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3
    assert DocumentConditioner("hash-64").encode([text]).equal(a.unsqueeze(0)), "deterministic"


def test_document_errors(documents):
    for empty in ("", "  \n\t "):
        with pytest.raises(ValueError, match="a document must not be empty"):
            documents.normalize(empty)
    with pytest.raises(ValueError, match="at most 100000 characters, got 100001"):
        documents.normalize("x" * 100_001)
    assert len(documents.normalize("x" * 100_000)) == 100_000
    with pytest.raises(TypeError, match="a document must be a string, got list"):
        documents.normalize(["a"])
    with pytest.raises(ValueError, match="overlap must be in"):
        DocumentConditioner("hash-8", chunk_tokens=32, overlap=32)


def test_a_long_document_encodes_in_batches(documents):
    text = filler(20_000)  # ~210 windows: several encoder batches
    [vector] = documents.encode([text])
    assert vector.shape == (64,) and torch.isfinite(vector).all()


# --- demonstrations -------------------------------------------------------------------------------


def test_demonstrations_reuse_the_document_path():
    demos = DemonstrationsConditioner("hash-64")
    messy = [{"input": " 2 +  2", "output": "4 "}, {"output": "7", "input": "3 + 4"}]
    assert demos.normalize(messy) == EXAMPLES
    assert render_examples(EXAMPLES) == "Input: 2 + 2\nOutput: 4\n\nInput: 3 + 4\nOutput: 7"
    expected = DocumentConditioner("hash-64").encode([render_examples(EXAMPLES)])
    torch.testing.assert_close(demos.encode([messy]), expected, rtol=0, atol=0)
    swapped = demos.encode([[{"input": "2 + 2", "output": "5"}, EXAMPLES[1]]])
    assert (swapped - expected).abs().max() > 1e-3


def test_demonstration_errors():
    cases = [
        ([], ValueError, "1 to 32 pairs, got 0"),
        ([EXAMPLES[0]] * 33, ValueError, "1 to 32 pairs, got 33"),
        ("Input: 2", TypeError, "must be a list"),
        ([{"input": "a"}], ValueError, r"examples\[0\] must have exactly the keys"),
        ([{"input": "a", "output": "b", "x": 1}], ValueError, "exactly the keys"),
        ([EXAMPLES[0], {"input": " ", "output": "b"}], ValueError, r"examples\[1\].input must not"),
        ([{"input": "a", "output": 4}], TypeError, r"examples\[0\].output must be a string"),
        ([["a", "b"]], TypeError, r"examples\[0\] must be an object"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            normalize_examples(value)


def test_registry_and_composite():
    assert condition_parts(DOCUMENT) == ("document",)
    assert condition_parts(DEMOS) == ("examples",)
    assert condition_parts(DESCRIBED_DEMOS) == ("description", "examples")
    composite = build_conditioner(DESCRIBED_DEMOS)
    assert composite.dim == 32 + 64
    vector = composite.encode([{"description": "Add the numbers.", "examples": EXAMPLES}])
    torch.testing.assert_close(
        vector[0, 32:], DemonstrationsConditioner("hash-64").encode([EXAMPLES])[0]
    )


# --- the synthetic corpus and demonstration sets --------------------------------------------------


def test_fact_corpus_is_deterministic_and_held_out_documents_are_unseen():
    a, b = fact_documents(60, seed=3), fact_documents(60, seed=3)
    assert a == b and a != fact_documents(60, seed=4)
    assert fact_documents(20, seed=3) == a[:20], "a bigger corpus extends a smaller one"
    data = document_task_data(60, heldout=10, seed=3)
    assert len(data.train_tasks) == 50 and len(data.heldout_tasks) == 10
    training_text = " ".join(data.phrasings[data.eval_phrasing[t]] for t in data.train_tasks)
    training_words = set(training_text.replace(".", " ").split())
    for task in data.heldout_tasks:
        held = data.phrasings[data.eval_phrasing[task]]
        assert held not in training_text
        for example in data.test_examples[task]:
            answer = example.references[0]
            assert answer in held, "every answer is stated in its document"
            if answer[0].isupper():  # invented names are never reused in training documents
                assert not set(answer.split()) & training_words - {"Works"}
        assert len(data.test_examples[task]) == 4
    for document in a[50:]:  # the held-out people's names are in no training document
        assert not set(document.name.split()) & training_words
    assert all(len(data.train_examples[t]) == 8 for t in data.train_tasks)


def test_demonstration_sets_never_hold_the_predicted_example():
    from hypergen.data.tasks import Example
    from training.data import TaskData

    def ex(i):
        return Example(f"in {i}", f"Q: in {i}\nA:", f" out {i}", references=(f"out {i}",))

    base = TaskData(
        ["t0", "t1"],
        ["h0"],
        {
            "t0": [ex(i) for i in range(10)],
            "t1": [ex(i) for i in range(3)],
            "h0": [ex(i) for i in range(5)],
        },
        {"t0": [], "t1": [], "h0": [ex(99)]},
        [],
        {},
        {},
        {},
    )
    data = with_demonstrations(base, k=3, sets=2, seed=0)
    assert data.train_tasks == ["t0"] and data.heldout_tasks == ["h0"], "t1 has no targets left"
    targets = {e.input for e in data.train_examples["t0"]}
    assert targets == {f"in {i}" for i in range(5, 10)}
    for row in data.train_phrasings["t0"]:
        demos = data.phrasings[row]
        assert len(demos) == 3 and not {d["input"] for d in demos} & targets
    assert with_demonstrations(base, k=3, sets=2, seed=0).phrasings == data.phrasings
    assert data.test_examples["h0"][0].input == "in 99"


# --- Python API, CLI, HTTP ------------------------------------------------------------------------


def _generator(llama, llama_dir, encoder: EncoderConfig) -> AdapterGenerator:
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        lora=LoraSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    return randomize_(
        AdapterGenerator.create(llama[0], llama_dir, build_conditioner(encoder), encoder, config)
    )


@pytest.fixture(scope="module")
def document_dir(tmp_path_factory, llama, llama_dir) -> str:
    generator = _generator(llama, llama_dir, DOCUMENT)
    return str(generator.save_pretrained(tmp_path_factory.mktemp("ckpt") / "document"))


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory, llama, llama_dir) -> str:
    generator = _generator(llama, llama_dir, DESCRIBED_DEMOS)
    return str(generator.save_pretrained(tmp_path_factory.mktemp("ckpt") / "examples"))


def test_python_api_document(document_dir):
    generator = AdapterGenerator.from_pretrained(document_dir)
    assert generator.condition_parts == ("document",)
    text = fact_documents(2)[0].text
    a = generator.generate([{"document": text}, {"document": fact_documents(2)[1].text}, text])
    name = a.module_names[0]
    assert (a.B[name][0] - a.B[name][1]).abs().max() > 1e-4, (
        "different documents, different adapters"
    )
    torch.testing.assert_close(a.B[name][0], a.B[name][2])
    with pytest.raises(ValueError, match="takes document; it does not take description"):
        generator.condition(description="x")
    with pytest.raises(ValueError, match="must not be empty"):
        generator.generate([{"document": " "}])


def test_python_api_description_and_examples(examples_dir):
    generator = AdapterGenerator.from_pretrained(examples_dir)
    assert generator.condition_parts == ("description", "examples")
    condition = generator.condition(description="Add.", examples=EXAMPLES)
    assert condition == {"description": "Add.", "examples": EXAMPLES}
    with pytest.raises(ValueError, match="takes description and examples; examples is missing"):
        generator.generate([{"description": "Add."}])


@pytest.mark.parametrize("kind", ["document", "examples"])
def test_mixed_batch_equals_each_row_alone(document_dir, examples_dir, llama, kind):
    """Adapters from three documents (or three example sets) applied one per row of one batch
    give each row the logits it has alone with its own adapter."""
    model, tokenizer = llama
    if kind == "document":
        generator = AdapterGenerator.from_pretrained(document_dir)
        conditions = [{"document": d.text} for d in fact_documents(3)]
    else:
        generator = AdapterGenerator.from_pretrained(examples_dir)
        sets = [EXAMPLES, EXAMPLES[:1], [{"input": "9 - 4", "output": "5"}]]
        conditions = [{"description": "Do the sum.", "examples": e} for e in sets]
    adapters = generator.generate(conditions)
    name = adapters.module_names[0]
    assert (adapters.B[name][0] - adapters.B[name][1]).abs().max() > 1e-4
    texts = ["Q: In which town was she born?\nA:", "What is 2 plus 3?", "I loved it."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), apply_adapters(model, adapters):
        batched = model(**batch).logits
    for i, (text, condition) in enumerate(zip(texts, conditions)):
        single = tokenizer([text], return_tensors="pt")
        with torch.no_grad(), apply_adapters(model, generator.generate([condition])):
            alone = model(**single).logits
        n = single.input_ids.shape[1]
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_cli_generate_document_and_examples(document_dir, examples_dir, tmp_path, capsys):
    doc = tmp_path / "doc.txt"
    doc.write_text(fact_documents(1)[0].text, encoding="utf-8")
    out = tmp_path / "a"
    assert (
        main(["generate", "--checkpoint", document_dir, "--document", str(doc), "-o", str(out)])
        == 0
    )
    assert capsys.readouterr().out.split() == [str(out)]
    written, _ = load_peft(out)
    expected = AdapterGenerator.from_pretrained(document_dir).generate([doc.read_text()])
    for name in expected.module_names:
        torch.testing.assert_close(written.B[name], expected.B[name])

    jsonl, as_json = tmp_path / "demos.jsonl", tmp_path / "demos.json"
    jsonl.write_text("\n".join(json.dumps(e) for e in EXAMPLES) + "\n")
    as_json.write_text(json.dumps(EXAMPLES))
    folders = []
    for i, source in enumerate((jsonl, as_json)):
        folder = tmp_path / f"e{i}"
        argv = ["generate", "--checkpoint", examples_dir, "Add.", "--examples", str(source)]
        assert main([*argv, "-o", str(folder)]) == 0
        folders.append(load_peft(folder)[0])
    name = folders[0].module_names[0]
    torch.testing.assert_close(folders[0].B[name], folders[1].B[name])
    capsys.readouterr()

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    doc_args = ["generate", "--checkpoint", document_dir, "-o"]
    cases = [
        (
            [*doc_args, str(tmp_path / "b"), "--document", str(tmp_path / "missing.txt")],
            "missing.txt",
        ),
        (
            [*doc_args, str(tmp_path / "c"), "Describe it."],
            "takes document; it does not take description",
        ),
        (
            [*doc_args, str(tmp_path / "d"), "--document", str(doc), "--examples", str(jsonl)],
            "does not take examples",
        ),
        (
            [
                "generate",
                "--checkpoint",
                examples_dir,
                "Add.",
                "--examples",
                str(bad),
                "-o",
                str(tmp_path / "e"),
            ],
            "not a JSON list or JSON Lines",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
        assert not Path(argv[argv.index("-o") + 1]).exists()
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", document_dir, "-o", str(tmp_path / "f")])
    assert "give a task description, --document or --examples" in capsys.readouterr().err


def test_cli_init_checkpoint_condition(llama_dir, tmp_path, capsys):
    base = ["init-checkpoint", "--base-model", llama_dir, "--encoder-kind", "hashing"]
    base += ["--encoder", "hash-16", "--hidden-dim", "16", "--num-blocks", "1"]
    assert main([*base, "-o", str(tmp_path / "d"), "--condition", "document"]) == 0
    saved = json.loads((tmp_path / "d" / "hypernet_config.json").read_text())
    assert saved["encoder"] == {"kind": "document", "name": "hash-16"}
    assert saved["hypernet"]["condition_dim"] == 16
    assert main([*base, "-o", str(tmp_path / "e"), "--condition", "description+examples"]) == 0
    saved = json.loads((tmp_path / "e" / "hypernet_config.json").read_text())
    assert saved["encoder"]["parts"] == {
        "description": {"kind": "hashing", "name": "hash-16"},
        "examples": {"kind": "demonstrations", "name": "hash-16"},
    }
    assert main([*base, "-o", str(tmp_path / "f"), "--condition", "documents"]) == 2
    assert "condition must be distinct parts from" in capsys.readouterr().err


def _post(client, body):
    return client.post("/v1/adapters", json=body)


def test_http_document(make_app, document_dir):
    from service.engine import Engine

    client = make_app(engine=Engine.load(document_dir)).test_client()
    corpus = fact_documents(2)
    first = _post(client, {"document": corpus[0].text})
    assert first.status_code == 201, first.json
    meta = first.json
    assert meta["condition"] == {"kind": "document", "document": " ".join(corpus[0].text.split())}
    again = _post(client, {"document": corpus[0].text.replace(" ", "  ")})
    assert again.status_code == 200 and again.json["id"] == meta["id"], "same canonical document"
    other = _post(client, {"document": corpus[1].text})
    assert other.status_code == 201 and other.json["id"] != meta["id"], "ids differ by document"
    for body, message in [
        (
            {"description": "Answer."},
            "this checkpoint takes document; it does not take description",
        ),
        ({"document": "   "}, "a document must not be empty"),
        ({"document": "x" * 100_001}, "100000"),
        ({"examples": EXAMPLES}, "takes document; it does not take examples"),
    ]:
        response = _post(client, body)
        assert response.status_code == 400, (body, response.json)
        assert message in response.json["error"]["message"]
    assert client.get("/healthz").json["checkpoint"]["condition_parts"] == ["document"]


def test_http_description_and_examples(make_app, examples_dir):
    from service.engine import Engine

    client = make_app(engine=Engine.load(examples_dir)).test_client()
    first = _post(client, {"description": "Add.", "examples": EXAMPLES})
    assert first.status_code == 201, first.json
    assert first.json["condition"]["examples"] == EXAMPLES
    changed = _post(client, {"description": "Add.", "examples": EXAMPLES[:1]})
    assert changed.status_code == 201 and changed.json["id"] != first.json["id"]
    response = _post(client, {"description": "Add."})
    assert response.status_code == 400
    assert (
        "takes description and examples; examples is missing" in response.json["error"]["message"]
    )
    response = _post(client, {"description": "Add.", "examples": [EXAMPLES[0]] * 33})
    assert response.status_code == 400


# --- meta-training --------------------------------------------------------------------------------


def test_meta_train_document_condition(llama_dir, tmp_path):
    from tests.test_training import TINY, overrides
    from training import meta_train

    extra = {"condition": "document", "documents": 12, "heldout_documents": 3}
    argv = overrides({"base_model": llama_dir}, tmp_path / "run", **extra)
    trainer = meta_train.main(["--config", str(TINY), *argv])
    assert len(trainer.data.train_tasks) == 9 and trainer.conditions.shape == (12, 32)
    expected = DocumentConditioner("hash-32").encode([fact_documents(12)[0].text])
    torch.testing.assert_close(trainer.conditions[0], expected[0])
    generator = AdapterGenerator.from_pretrained(tmp_path / "run" / "final")
    assert generator.condition_parts == ("document",) and generator.meta.trained_steps == 2


def test_meta_train_demonstrations_condition(llama_dir, tmp_path):
    from tests.test_training import TINY, overrides, write_toy_suite
    from training import meta_train

    suite, split = write_toy_suite(tmp_path)
    toy = {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}
    extra = {"condition": "demonstrations", "demonstrations": 2, "demonstration_sets": 3}
    trainer = meta_train.main(["--config", str(TINY), *overrides(toy, tmp_path / "run", **extra)])
    assert len(trainer.data.phrasings) == 6 * 3 and trainer.conditions.shape == (18, 32)
    first = trainer.data.phrasings[0]
    expected = DemonstrationsConditioner("hash-32").encode([first])
    torch.testing.assert_close(trainer.conditions[0], expected[0])
    generator = AdapterGenerator.from_pretrained(tmp_path / "run" / "final")
    assert generator.condition_parts == ("examples",) and generator.meta.trained_steps == 2


def test_meta_train_rejects_mixed_settings():
    from training.config import MetaTrainConfig

    with pytest.raises(ValueError, match="condition must be one of"):
        MetaTrainConfig(condition="documents")
    with pytest.raises(ValueError, match="trains with objective=sft"):
        MetaTrainConfig(condition="document", objective="both")


# --- evaluation: in-context demonstrations vs the adapter generated from them ---------------------


def test_harness_demonstration_systems(
    tmp_path, llama, llama_dir, examples_dir, checkpoint_dir, monkeypatch
):
    from evaluation.harness import load_eval_tasks, resolve_paths, run
    from evaluation.systems import MissingArtifact, build_systems, task_description
    from tests.test_evaluation import _config

    monkeypatch.setenv("HYPERGEN_HOME", str(tmp_path))
    systems = "systems=[base,base+demos,generated_demos,generated]"
    config = _config(
        tmp_path, llama_dir, examples_dir, tmp_path / "no-loras", systems, "demonstrations=2"
    )
    out = run(config)
    results = out["results"]
    tasks = {et.task.name: et for et in load_eval_tasks(config, resolve_paths(config)["suite"])}
    # specificity of an examples checkpoint: its demonstrations' adapters against random-word ones
    groups = {}
    for et in tasks.values():
        groups[et.group] = groups.get(et.group, 0) + 1
    for group, count in groups.items():
        spec = out["specificity"][group]
        assert spec.get("status") != "missing", spec
        assert spec["tasks"] == count
        if count > 1:
            assert -1 <= spec["mean_pairwise_cosine"] <= 1
    for name, et in tasks.items():
        assert results["base+demos"][name]["status"] == "ok"
        assert results["generated_demos"][name]["status"] == "ok", results["generated_demos"][name]
        assert results["generated"][name]["status"] == "missing"
        assert "conditions on a description (+ a language)" in results["generated"][name]["reason"]

    # what the systems feed the LM: the same 2 train examples, never a test one
    name, et = next(iter(tasks.items()))
    generator = AdapterGenerator.from_pretrained(examples_dir)
    built, _ = build_systems(
        ["base+demos", "generated_demos"],
        llama[0],
        [et.task],
        examples_dir,
        tmp_path,
        train_examples={name: et.train},
        demonstrations=2,
    )
    icl, adapter = (s.setup(et.task) for s in built)
    demos = [ex for ex in et.train if f"{ex.prompt}{ex.completion}\n\n" in icl.prompt_prefix]
    assert len(demos) == 2 and not any(ex.prompt in icl.prompt_prefix for ex in et.test)
    condition = {
        "description": task_description(et.task),
        "examples": [{"input": ex.input, "output": ex.completion.strip()} for ex in demos],
    }
    # the adapter is generated from those demonstrations (in the order drawn)
    assert json.loads(adapter.condition)["description"] == condition["description"]
    assert sorted(json.loads(adapter.condition)["examples"], key=str) == sorted(
        condition["examples"], key=str
    )
    expected = generator.generate([json.loads(adapter.condition)])
    module = expected.module_names[0]
    torch.testing.assert_close(adapter.adapter.B[module], expected.B[module])

    # a description-only checkpoint cannot run generated_demos; too few train examples is missing
    [demo_system], _ = build_systems(
        ["generated_demos"],
        None,
        [et.task],
        checkpoint_dir,
        tmp_path,
        train_examples={name: et.train},
    )
    with pytest.raises(MissingArtifact, match="needs an examples part"):
        demo_system.setup(et.task)
    [icl_system], _ = build_systems(["base+demos"], None, [et.task], "", tmp_path, demonstrations=2)
    with pytest.raises(MissingArtifact, match="needs 2 train examples"):
        icl_system.setup(et.task)


def test_document_evaluation_floor_ceiling_and_tokens_saved(document_dir, llama, tmp_path, capsys):
    from evaluation.documents import SYSTEMS, main

    out = tmp_path / "documents.json"
    argv = ["--checkpoint", document_dir, "--documents", "6", "--heldout", "2"]
    assert main([*argv, "--max-new-tokens", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["documents"] == 2 and report["questions"] == 8
    assert set(report["systems"]) == set(SYSTEMS)
    for row in report["systems"].values():
        assert 0 <= row["exact_match"] <= row["contains"] <= 1
    # the document in the prompt costs its tokens on every question; the adapter costs none
    _, tokenizer = llama
    data = document_task_data(6, 2)
    questions = [ex for t in data.heldout_tasks for ex in data.test_examples[t]]
    base_tokens = sum(len(tokenizer(ex.prompt).input_ids) for ex in questions) / 8
    assert report["systems"]["generated"]["prompt_tokens"] == pytest.approx(base_tokens)
    assert report["systems"]["base"]["prompt_tokens"] == pytest.approx(base_tokens)
    doc_tokens = [
        len(tokenizer(data.phrasings[data.eval_phrasing[t]], add_special_tokens=False).input_ids)
        for t in data.heldout_tasks
    ]
    assert (
        report["tokens_saved"] == pytest.approx(sum(doc_tokens) / 2) and report["tokens_saved"] > 40
    )
    # the ceiling asks in the chat template: document, question, the request for a short answer
    from evaluation.documents import ceiling_prompt

    assert report["ceiling_format"] == "chat"
    no_template = SimpleNamespace(chat_template=None)
    assert ceiling_prompt(no_template, "Doc.", "Who?", "Q: Who?\nA:") == "Doc.\n\nQ: Who?\nA:"
    docs = [data.phrasings[data.eval_phrasing[t]] for t in data.heldout_tasks for _ in range(4)]
    ceiling = [ceiling_prompt(tokenizer, d, ex.input, ex.prompt) for d, ex in zip(docs, questions)]
    assert docs[0] in ceiling[0] and questions[0].input in ceiling[0] and "A:" not in ceiling[0]
    assert report["systems"]["base+document"]["prompt_tokens"] == pytest.approx(
        sum(len(tokenizer(c).input_ids) for c in ceiling) / 8
    )
    assert "prompt tokens saved per question (the document's)" in capsys.readouterr().out
    # generated uses each document's own adapter, generated_other_document the next document's
    from evaluation.scoring import greedy_answers, stop_token_ids

    model, _ = llama
    adapters = AdapterGenerator.from_pretrained(document_dir).generate(
        [data.phrasings[data.eval_phrasing[t]] for t in data.heldout_tasks]
    )
    prompts = [ex.prompt for ex in questions]
    for system, rows in (
        ("generated", [0] * 4 + [1] * 4),
        ("generated_other_document", [1] * 4 + [0] * 4),
    ):
        with torch.no_grad():
            want = greedy_answers(
                model, tokenizer, prompts, 3, adapters, rows, stop_ids=stop_token_ids(tokenizer)
            )
        assert report["systems"][system]["answers"] == want[:8], system
    systems = report["systems"]
    assert systems["generated"]["answers"] != systems["generated_other_document"]["answers"]
    assert main(["--checkpoint", str(tmp_path / "none")]) == 2

    # the training group asks the same question slots of the documents meta-training saw
    assert main([*argv, "--group", "train", "--max-new-tokens", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["group"] == "train" and report["documents"] == 4
    asked = [ex.prompt for t in data.train_tasks for ex in data.train_examples[t][-4:]]
    assert report["questions"] == len(asked) == 16
    assert report["systems"]["base"]["prompt_tokens"] == pytest.approx(
        sum(len(tokenizer(p).input_ids) for p in asked) / 16
    )
    assert "16 questions on 4 training documents" in capsys.readouterr().out


def test_committed_configs_load():
    from training.config import MetaTrainConfig, load_config

    document = load_config(MetaTrainConfig, "training/configs/document_smollm2.yaml", [])
    assert document.condition == "document" and document.heldout_documents == 50
    corpus = document_task_data(document.documents, document.heldout_documents, document.seed)
    assert len(corpus.train_tasks) == 350 and len(set(corpus.phrasings)) == 400
    demos = load_config(MetaTrainConfig, "training/configs/demonstrations_smollm2.yaml", [])
    assert demos.condition == "demonstrations" and demos.demonstrations == 4
