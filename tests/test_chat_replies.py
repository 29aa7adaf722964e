"""The base model's own correct chat replies as chat-format training targets
(training/chat_replies.py, the ``chat_replies`` option of meta-training)."""

from __future__ import annotations

import json

import pytest

from hypergen.data.tasks import Example
from tests.test_training import run_meta_train, write_toy_suite
from training import chat_replies
from training.data import MixtureSampler


def test_a_reply_is_kept_only_when_it_states_the_answer_ends_and_does_not_loop():
    refs = chat_replies.references(Example("q", "Q: q\nA:", " Canberra", references=("Canberra",)))
    assert refs == ["canberra"]
    assert chat_replies.is_kept("The capital city of Australia is Canberra.", refs, ended=True)
    assert not chat_replies.is_kept("Queensland", refs, ended=True)  # wrong
    assert not chat_replies.is_kept(
        "It is Canberra, the capital", refs, ended=False
    )  # cut at the cap
    assert not chat_replies.is_kept("Canberra is it. " * 8, refs, ended=True)  # a loop
    assert not chat_replies.is_kept("Canberraville is big.", refs, ended=True)  # whole words only
    # a verdict counts only as the first word: "not true" contains "true"
    assert chat_replies.is_kept("True. The UN was founded in 1945.", ["true"], ended=True)
    assert not chat_replies.is_kept("The claim is not true.", ["true"], ended=True)
    # multiple choice: the correct option; one-letter answers say nothing as words
    mc = Example("q", "Q: q\nA:", " modern", options=(" ancient", " modern"), correct=(1,))
    assert chat_replies.references(mc) == ["modern"]
    wrong = chat_replies.wrong_answers(mc)
    assert wrong == ["ancient"]
    assert chat_replies.is_kept("The opposite is modern.", ["modern"], True, wrong)
    assert not chat_replies.is_kept(
        "It is ancient or modern.", ["modern"], True, wrong
    )  # lists both
    irony = Example(
        "q", "Q: q\nA:", " not ironic", options=(" ironic", " not ironic"), correct=(1,)
    )
    assert chat_replies.wrong_answers(irony) == []  # "ironic" is inside the right answer
    assert chat_replies.references(Example("q", "Q: q\nA:", " B", references=("B",))) == []


def test_chat_samples_of_a_task_with_replies_train_on_them_and_other_batches_do_not_change():
    examples = {
        t: [Example(f"{t}{i}", f"Q: {t}{i}\nA:", " x") for i in range(5)] for t in ("a", "b")
    }
    replies = {"a": [Example("qa", "Q: qa\nA:", " A full, correct sentence.")]}
    plain = MixtureSampler(examples, seed=3, formats=["plain", "chat"])
    with_replies = MixtureSampler(
        examples, seed=3, formats=["plain", "chat"], chat_examples=replies
    )
    batch, before = with_replies.batch(0, 64), plain.batch(0, 64)
    assert {s.fmt for s in batch} == {"plain", "chat"}
    for s in batch:
        if s.task == "a" and s.fmt == "chat":
            assert s.completion == " A full, correct sentence."
        else:
            assert s.completion == " x"
    # up to the first chat sample of "a", both samplers drew the same samples
    first = next(i for i, s in enumerate(batch) if s.task == "a" and s.fmt == "chat")
    assert batch[:first] == before[:first]


def test_the_script_asks_training_tasks_only_and_meta_training_reads_its_file(tmp_path, llama_dir):
    suite, split = write_toy_suite(tmp_path)
    out = tmp_path / "replies.json"
    argv = [f"base_model={llama_dir}", f"split={split}", f"data_dir={suite}", "examples_per_task=2"]
    argv += ["max_new_tokens=4", "batch_size=3", f"output={out}", "num_threads=1"]
    assert chat_replies.main(argv) == 0
    record = json.loads(out.read_text())
    assert record["asked"] == 8  # 4 training tasks x 2; held-out tasks are never asked
    assert set(record["replies"]) <= {"toy_0", "toy_1", "toy_2", "toy_3"}
    assert chat_replies.main(argv) == 2  # never overwrites without overwrite=true
    with pytest.raises(SystemExit):
        chat_replies.main(["examples_per_tsk=2"])  # unknown keys fail

    # a hand-made file: meta-training loads it for the training tasks it names
    out.write_text(
        json.dumps(
            {
                "replies": {
                    "toy_1": [
                        {"prompt": "Q: red\nA:", "reference": " cat", "reply": "It is a cat."}
                    ]
                }
            }
        )
    )
    toy = {"base_model": llama_dir, "data_dir": str(suite), "split": str(split)}
    trainer = run_meta_train(
        toy, tmp_path / "run", formats="[plain,chat]", chat_replies=str(out), steps=1
    )
    assert trainer.sampler.chat_examples["toy_1"][0].completion == " It is a cat."
    out.write_text("not json")
    with pytest.raises(ValueError, match="chat replies"):
        run_meta_train(
            toy, tmp_path / "run2", formats="[plain,chat]", chat_replies=str(out), steps=1
        )


def test_replies_come_from_the_model_greedily(llama):
    model, tokenizer = llama
    side = tokenizer.padding_side
    replies = chat_replies.chat_replies(
        model, tokenizer, ["red sea", "a much longer question here"], 3, 2
    )
    again = chat_replies.chat_replies(model, tokenizer, ["red sea"], 3, 1)
    assert len(replies) == 2 and replies[0] == again[0]  # left padding does not change a reply
    assert all(isinstance(text, str) and isinstance(ended, bool) for text, ended in replies)
    assert tokenizer.padding_side == side, "the shared tokenizer's padding side must not change"
