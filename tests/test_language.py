"""The language condition: URIEL vectors from lang2vec's data, the description + language
composite, and its round trips through the Python API, the CLI, the HTTP API and meta-training
(tiny models, offline)."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch

from hypergen import AdapterGenerator, apply_adapters, load_peft
from hypergen.cli import main
from hypergen.conditions.composite import CompositeConditioner
from hypergen.conditions.hashing import HashingConditioner
from hypergen.conditions.language import LanguageConditioner, iso639_3
from hypergen.conditions.registry import build_conditioner, condition_from_parts, condition_parts
from hypergen.config import EncoderConfig, HyperNetConfig, LoraSpec
from hypergen.data.task_languages import TaskLanguages
from hypergen.data.tasks import Task
from tests.conftest import ENCODER, randomize_

DESCRIPTION = "Answer the riddle with one word."
COMPOSITE = EncoderConfig(
    kind="composite",
    parts={"description": ENCODER, "language": EncoderConfig(kind="language", name="syntax_knn")},
)


@pytest.fixture(scope="module")
def languages() -> LanguageConditioner:
    return LanguageConditioner()


# --- the language conditioner ---------------------------------------------------------------------


def test_iso639_1_and_639_3_codes_give_the_same_vector(languages):
    assert iso639_3("fr") == iso639_3("fra") == iso639_3(" FRA ") == "fra"
    assert languages.normalize("de") == "deu" and languages.normalize("sw") == "swa"
    vectors = languages.encode(["fr", "fra", "de", "deu"])
    assert vectors.shape == (4, 289) == (4, languages.dim)
    torch.testing.assert_close(vectors[0], vectors[1], rtol=0, atol=0)
    torch.testing.assert_close(vectors[2], vectors[3], rtol=0, atol=0)
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(4))


def test_unknown_codes_are_errors_that_name_them(languages):
    for bad in ("xx", "qqq", "english", "", "e1", "fr-FR"):
        with pytest.raises(ValueError, match=f"unknown language code {bad!r}"):
            languages.normalize(bad)
    # a real ISO 639-3 code (Aninka) that URIEL has no features for
    with pytest.raises(ValueError, match="'aqk' .*no URIEL syntax_knn"):
        languages.normalize("aqk")
    with pytest.raises(ValueError, match="'thx' is deprecated.*oyb"):
        languages.normalize("thx")
    with pytest.raises(TypeError, match="must be a string"):
        languages.normalize(3)


def test_vectors_are_uriel_typology(languages):
    """Different languages differ, and related ones are closer: this is URIEL's data."""
    v = languages.encode(["deu", "nld", "jpn", "spa", "por", "eng"])
    cos = v @ v.T
    assert (cos - torch.eye(6)).max() < 0.99, "every language has its own vector"
    assert cos[0, 1] > cos[0, 2] + 0.2, "German is closer to Dutch than to Japanese"
    assert cos[3, 4] > cos[3, 2] + 0.2, "Spanish is closer to Portuguese than to Japanese"


def test_data_is_found_when_a_lang2vec_script_shadows_the_package(tmp_path, monkeypatch):
    """lang2vec installs bin/lang2vec.py, which console scripts see first on sys.path; importing
    it fails (it needs pkg_resources). The conditioner reads the data without importing either."""
    import sys

    from hypergen.conditions import language

    (tmp_path / "lang2vec.py").write_text("import pkg_resources_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lang2vec", raising=False)
    language._feature_table.cache_clear()
    try:
        assert LanguageConditioner("syntax_knn").encode(["fra"]).shape == (1, 103)
    finally:
        language._feature_table.cache_clear()


def test_missing_lang2vec_is_a_clear_cli_error(composite_dir, tmp_path, monkeypatch, capsys):
    import importlib.metadata

    from hypergen.conditions import language

    real = importlib.metadata.distribution

    def distribution(name):
        if name == "lang2vec":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    language._feature_table.cache_clear()
    try:
        argv = ["generate", "--checkpoint", composite_dir, DESCRIPTION, "--language", "fr"]
        assert main([*argv, "-o", str(tmp_path / "out")]) == 2
    finally:
        language._feature_table.cache_clear()
    assert "pip install 'hypergen[languages]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_feature_sets(languages):
    both = LanguageConditioner("syntax_knn+fam")
    assert both.dim == 103 + 3718 and LanguageConditioner("geo").dim == 299
    for bad in ("learned", "syntax_wals", "syntax_knn+syntax_knn", "nope"):
        with pytest.raises(ValueError, match="lang2vec sets"):
            LanguageConditioner(bad)


# --- config and composite -------------------------------------------------------------------------


def test_encoder_config_records_the_parts():
    data = COMPOSITE.to_dict()
    assert data == {
        "kind": "composite",
        "name": "description+language",
        "parts": {
            "description": {"kind": "hashing", "name": "hash-32"},
            "language": {"kind": "language", "name": "syntax_knn"},
        },
    }
    assert EncoderConfig.from_dict(json.loads(json.dumps(data))) == COMPOSITE
    assert ENCODER.to_dict() == {"kind": "hashing", "name": "hash-32"}, "one-part JSON unchanged"
    assert condition_parts(COMPOSITE) == ("description", "language")
    assert condition_parts(ENCODER) == ("description",)
    with pytest.raises(ValueError, match="at least two"):
        EncoderConfig(kind="composite", parts={"description": ENCODER})
    with pytest.raises(ValueError, match="parts is for kind 'composite'"):
        EncoderConfig(kind="text", parts={"description": ENCODER})


def test_composite_concatenates_the_parts(languages):
    text = HashingConditioner("hash-32")
    composite = build_conditioner(COMPOSITE)
    assert isinstance(composite, CompositeConditioner) and composite.dim == 32 + 103
    condition = {"description": f"  {DESCRIPTION} ", "language": "fr"}
    assert composite.normalize(condition) == {"description": DESCRIPTION, "language": "fra"}
    vector = composite.encode([condition])
    torch.testing.assert_close(vector[0, :32], text.encode([DESCRIPTION])[0])
    torch.testing.assert_close(vector[0, 32:], LanguageConditioner("syntax_knn").encode(["fra"])[0])
    with pytest.raises(ValueError, match="takes description and language; language is missing"):
        composite.normalize({"description": DESCRIPTION})
    with pytest.raises(ValueError, match="it does not take document"):
        composite.normalize({**condition, "document": "text"})
    with pytest.raises(ValueError, match="^language: unknown language code 'xx'"):
        composite.normalize({"description": DESCRIPTION, "language": "xx"})
    with pytest.raises(TypeError, match="mapping"):
        composite.normalize(DESCRIPTION)
    with pytest.raises(ValueError, match="the 'language' part needs"):
        CompositeConditioner({"description": text, "language": text})
    assert condition_from_parts(("description",), {"description": "x"}) == "x"


# --- Python API -----------------------------------------------------------------------------------


def _composite_generator(llama, llama_dir) -> AdapterGenerator:
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        lora=LoraSpec(rank=4, alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    conditioner = build_conditioner(COMPOSITE)
    generator = AdapterGenerator.create(llama[0], llama_dir, conditioner, COMPOSITE, config)
    return randomize_(generator)


@pytest.fixture(scope="module")
def composite_dir(tmp_path_factory, llama, llama_dir) -> str:
    """A saved description + language checkpoint for the tiny Llama (non-trivial adapters)."""
    generator = _composite_generator(llama, llama_dir)
    return str(generator.save_pretrained(tmp_path_factory.mktemp("ckpt") / "composite"))


def test_checkpoint_records_and_restores_the_parts(composite_dir, llama, llama_dir):
    saved = json.loads((Path(composite_dir) / "hypernet_config.json").read_text())
    assert saved["encoder"] == COMPOSITE.to_dict()
    assert saved["hypernet"]["condition_dim"] == 32 + 103
    generator = AdapterGenerator.from_pretrained(composite_dir)
    assert generator.condition_parts == ("description", "language")
    fresh = _composite_generator(llama, llama_dir)  # same seeds: the weights that were saved
    condition = {"description": DESCRIPTION, "language": "ja"}
    a, b = generator.generate([condition]), fresh.generate([condition])
    for name in a.module_names:
        torch.testing.assert_close(a.B[name], b.B[name])


def test_mixed_languages_batch_equals_each_row_alone(composite_dir, llama):
    model, tokenizer = llama
    generator = AdapterGenerator.from_pretrained(composite_dir)
    conditions = [
        {"description": DESCRIPTION, "language": "fr"},
        {"description": DESCRIPTION, "language": "jpn"},
        {"description": "Classify the review.", "language": "sw"},
    ]
    lora = generator.generate(conditions)
    name = lora.module_names[0]
    assert (lora.B[name][0] - lora.B[name][1]).abs().max() > 1e-4, "only the language differs"
    texts = ["The cat sits on the mat.", "What is 2 plus 3?", "I loved it."]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad(), apply_adapters(model, lora):
        batched = model(**batch).logits
    for i, (text, condition) in enumerate(zip(texts, conditions)):
        alone_lora = generator.generate([condition])
        torch.testing.assert_close(alone_lora.B[name][0], lora.B[name][i])
        single = tokenizer([text], return_tensors="pt")
        n = single.input_ids.shape[1]
        with torch.no_grad(), apply_adapters(model, alone_lora):
            alone = model(**single).logits
        torch.testing.assert_close(batched[i, :n], alone[0], atol=1e-5, rtol=1e-5)


def test_parts_are_checked_against_the_checkpoint(composite_dir, checkpoint_dir):
    generator = AdapterGenerator.from_pretrained(composite_dir)
    assert generator.condition(description=DESCRIPTION, language="fr") == {
        "description": DESCRIPTION,
        "language": "fra",
    }
    with pytest.raises(ValueError, match="takes description and language; language is missing"):
        generator.generate([{"description": DESCRIPTION}])
    with pytest.raises(TypeError, match="mapping"):
        generator.generate([DESCRIPTION])
    described = AdapterGenerator.from_pretrained(checkpoint_dir)
    assert described.condition_parts == ("description",)
    with pytest.raises(ValueError, match="takes description; it does not take language"):
        described.condition(description=DESCRIPTION, language="fr")
    # a description-only checkpoint takes a parts mapping as well as a bare string
    a = described.generate([{"description": DESCRIPTION}])
    b = described.generate([DESCRIPTION])
    torch.testing.assert_close(a.A[a.module_names[0]], b.A[b.module_names[0]])


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_generate_with_language(composite_dir, checkpoint_dir, tmp_path, capsys):
    out = tmp_path / "fr"
    args = ["generate", "--checkpoint", composite_dir, DESCRIPTION, "-o"]
    assert main([*args, str(out), "--language", "fr"]) == 0
    assert capsys.readouterr().out.split() == [str(out)]
    written, _ = load_peft(out)
    expected = AdapterGenerator.from_pretrained(composite_dir).generate(
        [{"description": DESCRIPTION, "language": "fra"}]
    )
    for name in expected.module_names:
        torch.testing.assert_close(written.B[name], expected.B[name])
    assert main([*args, str(tmp_path / "de"), "--language", "deu"]) == 0
    german, _ = load_peft(tmp_path / "de")
    name = expected.module_names[0]
    assert (german.B[name] - written.B[name]).abs().max() > 1e-4

    cases = [
        ([*args, str(tmp_path / "a")], "takes description and language; language is missing"),
        ([*args, str(tmp_path / "b"), "--language", "xx"], "unknown language code 'xx'"),
        (
            ["generate", "--checkpoint", checkpoint_dir, DESCRIPTION, "-o", str(tmp_path / "c")]
            + ["--language", "fr"],
            "takes description; it does not take language",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert message in capsys.readouterr().err
        assert not Path(argv[argv.index("-o") + 1]).exists()


def test_cli_init_checkpoint_with_language(llama_dir, tmp_path, capsys):
    out = tmp_path / "ckpt"
    argv = ["init-checkpoint", "-o", str(out), "--base-model", llama_dir]
    argv += ["--encoder-kind", "hashing", "--encoder", "hash-16", "--language-features", "geo"]
    assert main(argv + ["--hidden-dim", "16", "--num-blocks", "1"]) == 0
    saved = json.loads((out / "hypernet_config.json").read_text())
    assert saved["encoder"]["parts"] == {
        "description": {"kind": "hashing", "name": "hash-16"},
        "language": {"kind": "language", "name": "geo"},
    }
    assert saved["hypernet"]["condition_dim"] == 16 + 299


# --- HTTP API -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def composite_engine(composite_dir):
    from service.engine import Engine

    return Engine.load(composite_dir)


# parts no checkpoint takes yet, in a form the request schema accepts
WELL_TYPED = {"document": "Some text.", "examples": [{"input": "2 + 2", "output": "4"}]}


def _post(client, body: dict):
    return client.post("/v1/adapters", json=body)


def _error(response, status: int, pattern: str) -> dict:
    assert response.status_code == status, (response.status_code, response.data[:300])
    error = response.json["error"]
    assert pattern in error["message"], error
    return error


def test_http_description_and_language(make_app, composite_engine, composite_dir, tmp_path):
    client = make_app(engine=composite_engine).test_client()
    first = _post(client, {"description": DESCRIPTION, "language": "fr"})
    assert first.status_code == 201, first.json
    meta = first.json
    assert meta["condition"] == {"kind": "composite", "description": DESCRIPTION, "language": "fra"}
    assert meta["adapter_kind"] == "lora"
    again = _post(client, {"description": f" {DESCRIPTION}", "language": "fra"})
    assert again.status_code == 200 and again.json["id"] == meta["id"], "same condition, same id"
    german = _post(client, {"description": DESCRIPTION, "language": "de"}).json
    assert german["id"] != meta["id"], "the id covers the language"
    assert client.get(f"/v1/adapters/{meta['id']}").json["condition"]["language"] == "fra"

    batch = _post(client, {"descriptions": [DESCRIPTION, "Classify it."], "language": "fr"})
    assert batch.status_code == 201
    first_id, second_id = (a["id"] for a in batch.json["data"])
    assert first_id == meta["id"] and second_id not in (meta["id"], german["id"])
    assert batch.json["data"][1]["condition"]["language"] == "fra", "the language applies to all"

    # the download is the adapter the Python API makes for that condition
    archive = client.get(f"/v1/adapters/{german['id']}/download")
    with zipfile.ZipFile(io.BytesIO(archive.data)) as z:
        z.extractall(tmp_path / "de")
    downloaded, _ = load_peft(tmp_path / "de")
    expected = AdapterGenerator.from_pretrained(composite_dir).generate(
        [{"description": DESCRIPTION, "language": "deu"}]
    )
    for name in expected.module_names:
        torch.testing.assert_close(downloaded.B[name], expected.B[name])

    missing = "this checkpoint takes description and language; language is missing"
    _error(_post(client, {"description": DESCRIPTION}), 400, missing)
    _error(_post(client, {"language": "fr"}), 400, "description is missing")
    for part, value in WELL_TYPED.items():
        body = {"description": DESCRIPTION, "language": "fr", part: value}
        _error(_post(client, body), 400, f"takes description and language; it does not take {part}")
    _error(_post(client, {"description": DESCRIPTION, "language": "xx"}), 400, "'xx'")
    _error(_post(client, {"description": DESCRIPTION, "language": 7}), 400, "must be a string")
    _error(_post(client, {"description": DESCRIPTION, "languages": "fr"}), 400, "unknown field")
    completion = {"adapter_description": DESCRIPTION, "prompt": "hi", "max_tokens": 1}
    _error(client.post("/v1/completions", json=completion), 400, missing)
    health = client.get("/healthz").json
    assert health["checkpoint"]["condition_parts"] == ["description", "language"]


def test_http_description_only_checkpoint(make_app, engine):
    client = make_app().test_client()
    for part, value in {"language": "fr", **WELL_TYPED}.items():
        _error(
            _post(client, {"description": DESCRIPTION, part: value}),
            400,
            f"this checkpoint takes description; it does not take {part}",
        )
    meta = _post(client, {"description": DESCRIPTION}).json
    assert meta["adapter_kind"] == "lora"
    assert meta["condition"] == {"kind": "hashing", "description": DESCRIPTION}
    # description-only ids are what they were before conditions had parts
    payload = {
        "checkpoint": engine.checkpoint_hash,
        "condition": {"kind": "hashing", "value": DESCRIPTION},
        "adapter": engine.adapter_settings("float32"),
    }
    old_id = hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode())
    assert meta["id"] == old_id.hexdigest()


# --- meta-training --------------------------------------------------------------------------------


def test_task_languages_table(tmp_path):
    table = tmp_path / "languages.yaml"
    table.write_text(
        "default: en\ntasks:\n  multiemo/all_text_de: [de]\n  kanji_ascii: [jpn, eng]\n"
    )
    languages = TaskLanguages.load(table)
    assert languages.of("multiemo/all_text_de") == ["deu"]
    assert languages.primary("kanji_ascii/kanji_ascii_meaning") == "jpn", "a parent covers subtasks"
    assert languages.of("date_understanding") == ["eng"]

    def task(name, keywords):
        return Task(name, "d", keywords, "generative", [], [])

    flagged = [
        task("multiemo/all_text_fr", ["non-English"]),
        task("kanji_ascii/x", ["multilingual"]),
    ]
    assert languages.unlisted_non_english([*flagged, task("toy", ["logic"])]) == [
        "multiemo/all_text_fr"
    ]
    table.write_text("tasks:\n  toy: [klingon]\n")
    with pytest.raises(ValueError, match="task 'toy': unknown language code 'klingon'"):
        TaskLanguages.load(table)
    table.write_text("task: {}\n")
    with pytest.raises(ValueError, match="unknown key"):
        TaskLanguages.load(table)


def test_committed_table_and_config_are_valid():
    from training.config import MetaTrainConfig, load_config

    config = load_config(MetaTrainConfig, "training/configs/language_smollm2.yaml", [])
    languages = TaskLanguages.load(config.task_languages)
    assert languages.primary("swahili_english_proverbs") == "swa"
    uriel = LanguageConditioner(config.language_features).languages
    assert all(code in uriel for codes in languages.tasks.values() for code in codes)


def test_meta_train_with_language_condition(llama_dir, tmp_path):
    from tests.test_training import TINY, overrides, write_toy_suite
    from training import meta_train

    suite, split = write_toy_suite(tmp_path)
    table = tmp_path / "languages.yaml"
    table.write_text("tasks:\n  toy_0: [fr]\n  toy_1: [de]\n  toy_4: [sw]\n")
    toy = {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}
    extra = {"language_features": "syntax_knn", "task_languages": str(table)}
    trainer = meta_train.main(["--config", str(TINY), *overrides(toy, tmp_path / "run", **extra)])
    assert trainer.conditions.shape[1] == 32 + 103
    row = {t: trainer.data.phrasing_tasks.index(t) for t in ("toy_0", "toy_1", "toy_2")}
    fra, deu, eng = (LanguageConditioner("syntax_knn").encode([c]) for c in ("fra", "deu", "eng"))
    torch.testing.assert_close(trainer.conditions[row["toy_0"], 32:], fra[0])
    torch.testing.assert_close(trainer.conditions[row["toy_1"], 32:], deu[0])
    torch.testing.assert_close(trainer.conditions[row["toy_2"], 32:], eng[0])
    generator = AdapterGenerator.from_pretrained(tmp_path / "run" / "final")
    assert generator.condition_parts == ("description", "language")
    assert generator.meta.trained_steps == 2


# --- evaluation -----------------------------------------------------------------------------------


def test_harness_scores_a_description_and_language_checkpoint(
    composite_dir, checkpoint_dir, llama, llama_dir, tmp_path, monkeypatch
):
    """Every generated system passes the task's language from the table; ``generated_english``
    swaps it for English; specificity and the generation check run on the composite adapters."""
    from evaluation.config import load_config
    from evaluation.harness import cache_path, load_eval_tasks, resolve_paths, run
    from evaluation.scoring import ScoringConfig, score_options
    from evaluation.systems import task_description

    monkeypatch.setenv("HYPERGEN_HOME", str(tmp_path))
    table = tmp_path / "languages.yaml"
    table.write_text("tasks:\n  opposites: [fr]\n")
    systems = "systems=[generated,generated_random,generated_english]"

    def config(checkpoint, out):
        overrides = [f"base_model={llama_dir}", f"checkpoint={checkpoint}", f"out={out}", systems]
        return load_config("evaluation/configs/tiny.yaml", [*overrides, f"task_languages={table}"])

    cfg = config(composite_dir, tmp_path / "out")
    results = run(cfg)
    r = results["results"]
    for system in ("generated", "generated_random", "generated_english"):
        assert all(entry["status"] == "ok" for entry in r[system].values()), system

    model, tokenizer = llama
    generator = AdapterGenerator.from_pretrained(composite_dir, base_model=model)
    tasks = {et.name: et for et in load_eval_tasks(cfg, resolve_paths(cfg)["suite"])}
    scoring = ScoringConfig(batch_tokens=cfg.batch_tokens, max_length=cfg.max_length)

    def logliks(system, task):
        rows = json.loads(cache_path(tmp_path / "out", system, task).read_text())["examples"]
        return [row["ll"] for row in rows]

    et = tasks["opposites"]
    prompts, options = [ex.prompt for ex in et.test], [ex.options for ex in et.test]
    for language, system in (("fra", "generated"), ("eng", "generated_english")):
        adapter = generator.generate(
            [{"description": task_description(et.task), "language": language}]
        )
        want = score_options(model, tokenizer, prompts, options, adapter, config=scoring)
        for got, expected in zip(logliks(system, "opposites"), want):
            assert got == pytest.approx(expected.logliks, abs=1e-3)
    assert logliks("generated", "opposites") != logliks("generated_english", "opposites")
    # an English task (the table's default) gets the same adapter either way
    assert logliks("generated", "colours") == logliks("generated_english", "colours")

    paired = {p["other"]: p for p in results["comparisons"]["heldout"]["paired"]}
    english = paired["generated_english"]
    assert set(english["per_task"]) == {"opposites", "capitals"}
    assert english["per_task"]["capitals"]["mean"] == 0, "an English task: the same adapter"
    spec = results["specificity"]["heldout"]
    assert spec["status"] == "ok" and set(spec["per_task"]) == {"opposites", "capitals"}
    assert results["generation_check"]["sets"]["chat"]["with"]["status"] == "ok"

    # a description-only checkpoint has no language to swap
    plain = run(config(checkpoint_dir, tmp_path / "plain"))["results"]
    assert plain["generated"]["opposites"]["status"] == "ok"
    english = plain["generated_english"]["opposites"]
    assert (
        english["status"] == "missing"
        and "conditions on a description and a language" in english["reason"]
    )
