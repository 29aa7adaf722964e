"""The compared systems: each turns a task into a prompt prefix and an adapter (or none).

    base                  the frozen LM, input only
    base+desc             the frozen LM, task description before the input
    base+other_desc       the frozen LM, another evaluated task's description before the input
                          (the control of base+desc, as generated_other_task is of generated)
    nearest_example       no model: the answer of the most similar training input (TF-IDF cosine);
                          multiple choice: that answer if it is one of the options, else a guess
                          scored at its expected value (#correct / #options)
    multitask_lora        one PEFT LoRA trained on all training tasks (a baseline: it runs
                          whatever kind of adapter the checkpoint emits)
    oracle_lora           a PEFT LoRA trained on this task's own train split (the ceiling), for
                          held-out and training tasks: ``<loras_dir>/<task>`` (subtask "a/b" in
                          ``a__b``), the layout of the LoRA library meta-training reads
    generated             adapter generated from the task's description (the checkpoint's
                          kind: LoRA or bottleneck; so for all generated_* systems)
    generated+desc        that adapter, and the description before the input
    generated_paraphrase  adapter generated from an unseen phrasing of the description
    generated_random      adapter generated from a fixed-seed random word string
    generated_other_task  adapter generated from another evaluated task's description
    generated_english     adapter generated from the task's description with the language part
                          set to English (a description + language checkpoint: the language's
                          effect on tasks in other languages)
    base+demos            the frozen LM, k demonstrations of the task before the input
                          (in-context learning; k training examples, never test ones)
    generated_demos       adapter generated from those same k demonstrations (a checkpoint with
                          an ``examples`` part; with ``description+examples``, also the description)

``base+other_desc`` and the last three are not in the default list (``EvalConfig.systems``; the
last three need a checkpoint conditioned on a language or on demonstrations): name them to run
them. With a description + language checkpoint every generated system also passes the task's
language (from the ``task_languages`` table; ``GeneratorSource.condition``).

"The task's description" is ``describe(task, "train")[0]`` (the file's description as a
sentence, template "plain"); the paraphrase is ``describe(task, "unseen")[0]``, a template the
hypernetwork never trained on. A system whose artifact is absent raises ``MissingArtifact`` for
that task, and the harness reports it as missing with the reason.
"""

from __future__ import annotations

import json
import logging
import random
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.cache import record_path
from hypergen.config import DEFAULT_TASK_LANGUAGES
from hypergen.data.descriptions import TRAIN, UNSEEN, describe, describe_prefix
from hypergen.data.tasks import Example, Task
from hypergen.digests import file_sha256
from hypergen.layout import MULTITASK, library_folder

if TYPE_CHECKING:  # torch loads with the model, not with the config (``evaluation.config``)
    from torch import nn

    from hypergen.adapters.bottleneck import BottleneckWeights
    from hypergen.adapters.lora import LoraWeights

logger = logging.getLogger(__name__)


class MissingArtifact(Exception):
    """A system cannot run on a task because something it needs does not exist."""


@dataclass
class TaskSetup:
    """What a system feeds the LM for one task.

    Attributes:
        prompt_prefix: text put before every example's prompt ("" for none).
        adapter: one adapter shared by all the task's examples, or None: a PEFT LoRA
            (baselines) or what the checkpoint emits (generated systems: LoRA or bottleneck).
        condition: the text given to the hypernetwork, if any.
        fingerprint: everything that determines the outputs besides the examples and model
            (hashed into the cache key).
        info: extra facts for the report (e.g. which task's description was borrowed).
    """

    prompt_prefix: str = ""
    adapter: LoraWeights | BottleneckWeights | None = None
    condition: str | None = None
    fingerprint: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def prompt(self, example: Example) -> str:
        return self.prompt_prefix + example.prompt


@dataclass
class System:
    """A named way of answering: ``setup(task)`` gives the prompt prefix and adapter.

    Attributes:
        name: the system's id (a key of ``SYSTEMS``).
        summary: one line for the report.
        setup: task -> TaskSetup, raising ``MissingArtifact`` when it cannot run.
        uses_model: False for the nearest-example baseline, which never calls the LM.
    """

    name: str
    summary: str
    setup: Callable[[Task], TaskSetup]
    uses_model: bool = True


def task_description(task: Task) -> str:
    """The task's own description as the hypernetwork saw descriptions in training ("plain")."""
    phrasings = describe(task, TRAIN)
    if not phrasings:
        raise MissingArtifact(f"task {task.name} has no description")
    return phrasings[0].text


def unseen_paraphrase(task: Task) -> str:
    """The first phrasing from a template held out of meta-training."""
    phrasings = describe(task, UNSEEN)
    if not phrasings:
        raise MissingArtifact(f"task {task.name} has no unseen-template phrasing")
    return phrasings[0].text


def random_words(seed: int, task_name: str, num_words: int) -> str:
    """A reproducible string of lowercase pseudo-words (3 to 9 letters), one per (seed, task)."""
    rng = random.Random(f"{seed}:random-condition:{task_name}")
    words = (
        "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
        for _ in range(num_words)
    )
    return " ".join(words).capitalize() + "."


# ---------------------------------------------------------------- nearest training example


_WORD = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _tfidf(doc: str, vocab: dict[str, int], idf: np.ndarray) -> dict[int, float]:
    """One document's L2-normalised TF-IDF weights, sparse; words outside ``vocab`` are ignored."""
    counts: dict[int, float] = {}
    for word in _words(doc):
        col = vocab.get(word)
        if col is not None:
            counts[col] = counts.get(col, 0.0) + 1.0
    weights = {col: c * idf[col] for col, c in counts.items()}
    norm = float(np.sqrt(sum(w * w for w in weights.values()))) or 1.0
    return {col: w / norm for col, w in weights.items()}


def nearest_neighbours(train_inputs: Sequence[str], test_inputs: Sequence[str]) -> list[int]:
    """Index of the most similar training input for each test input (TF-IDF cosine, first on ties).

    Words are lowercase ``\\w+`` runs; idf = ln((1 + N) / (1 + df)) + 1 over the training inputs.
    Similarities are accumulated through an inverted index, so tens of thousands of training
    inputs with a large vocabulary stay cheap.
    """
    if not train_inputs:
        raise ValueError("nearest_neighbours needs training inputs")
    vocab: dict[str, int] = {}
    df: list[float] = []
    for doc in train_inputs:
        for word in set(_words(doc)):
            if word not in vocab:
                vocab[word] = len(vocab)
                df.append(0.0)
            df[vocab[word]] += 1
    idf = np.log((1 + len(train_inputs)) / (1 + np.asarray(df))) + 1
    postings: dict[int, tuple[list[int], list[float]]] = {}
    for row, doc in enumerate(train_inputs):
        for col, weight in _tfidf(doc, vocab, idf).items():
            docs, weights = postings.setdefault(col, ([], []))
            docs.append(row)
            weights.append(weight)
    index = {col: (np.asarray(d), np.asarray(w)) for col, (d, w) in postings.items()}
    out = []
    for doc in test_inputs:
        similarity = np.zeros(len(train_inputs))
        for col, weight in _tfidf(doc, vocab, idf).items():
            docs, weights = index[col]
            similarity[docs] += weight * weights  # a word occurs once per posting list
        out.append(int(similarity.argmax()))
    return out


def nearest_answer_pick(neighbour: Example, example: Example) -> int:
    """Multiple choice: the option of ``example`` equal to one of the neighbour's correct options.

    Options are compared stripped and lowercased; -1 when none matches (the harness then scores a
    guess at its expected value).
    """
    answers = [neighbour.options[k].strip().lower() for k in neighbour.correct]
    for answer in answers:
        for k, option in enumerate(example.options):
            if option.strip().lower() == answer:
                return k
    return -1


# ---------------------------------------------------------------- building the systems


class GeneratorSource:
    """Loads the hypernetwork checkpoint once, on first use, and remembers why it could not."""

    def __init__(
        self,
        checkpoint: str,
        model: nn.Module,
        device: str,
        task_languages: str | Path = DEFAULT_TASK_LANGUAGES,
    ):
        self.checkpoint, self.model, self.device = checkpoint, model, device
        self.task_languages = task_languages
        self._languages = None
        self._generator = None
        self._error: str | None = None
        self.meta: dict[str, Any] = {}

    def condition(
        self, text: str, task: str | None = None, language: str | None = None
    ) -> str | dict[str, str]:
        """What the checkpoint generates from for the description ``text`` on ``task``.

        A description-only checkpoint takes the text itself; a description + language one (Hyper-X)
        also takes the task's language from the ``task_languages`` table (``task`` None: the
        table's default, for prompts of no task), unless ``language`` names one.

        Raises:
            MissingArtifact: the checkpoint cannot be loaded, or takes other parts (a document,
                examples), or ``language`` is given and it takes none.
        """
        parts = self.get().condition_parts
        if parts == ("description",) and language is None:
            return text
        if parts == ("description", "language"):
            if language is None:
                languages = self.languages()
                language = languages.primary(task) if task else languages.default
            return {"description": text, "language": language}
        needs = "a description and a language" if language else "a description (+ a language)"
        raise MissingArtifact(
            f"the checkpoint takes {' and '.join(parts)}; this conditions on {needs}"
        )

    def languages(self):
        """The task -> language table (``hypergen.data.task_languages``), read once."""
        from hypergen.data.task_languages import TaskLanguages

        if self._languages is None:
            try:
                self._languages = TaskLanguages.load(self.task_languages)
            except (OSError, ValueError) as err:
                raise MissingArtifact(f"task languages {self.task_languages}: {err}") from err
        return self._languages

    def get(self):
        """The generator; raises ``MissingArtifact`` with the reason when it cannot be loaded."""
        if self._generator is None and self._error is None:
            self._load()
        if self._error is not None:
            raise MissingArtifact(self._error)
        return self._generator

    @property
    def error(self) -> str | None:
        return self._error

    def _load(self) -> None:
        from hypergen.checkpoint import checkpoint_hash, meta_dict
        from hypergen.generator import AdapterGenerator

        if not self.checkpoint:
            self._error = "no checkpoint configured"
            return
        folder = Path(self.checkpoint)
        if not folder.is_dir():
            self._error = f"no hypernetwork checkpoint at {record_path(folder)}"
            return
        try:
            generator = AdapterGenerator.from_pretrained(
                folder, device=self.device, base_model=self.model
            )
        except (FileNotFoundError, ValueError) as err:
            self._error = f"checkpoint {record_path(folder)} cannot be used: {err}"
            return
        self._generator = generator
        self.meta = {
            "path": record_path(folder),
            "hash": checkpoint_hash(folder),
            **meta_dict(generator.meta),
        }
        # the training record can be long; keep its scalar facts (the hash identifies the rest)
        training = self.meta.pop("training", None) or {}
        self.meta["training"] = {
            k: v for k, v in training.items() if isinstance(v, (str, int, float, bool))
        }
        self.meta["trained_steps"] = generator.meta.trained_steps
        self.meta["adapter_kind"] = generator.hypernet.config.adapter_kind  # lora or bottleneck


def _peft_setup(folder: Path, model: nn.Module, what: str, absent: str = "") -> TaskSetup:
    from hypergen.adapters.export import CONFIG_NAME, WEIGHTS_NAME, load_peft

    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise MissingArtifact(absent or f"no {what} at {record_path(folder)}")
    try:
        lora, _ = load_peft(folder)
    except (ValueError, KeyError) as err:
        raise MissingArtifact(f"{what} at {record_path(folder)} cannot be read: {err}") from err
    modules = dict(model.named_modules())
    absent = [n for n in lora.module_names if n not in modules]
    if absent:
        raise MissingArtifact(
            f"{what} at {record_path(folder)} targets modules the base model lacks: {absent[:3]}"
        )
    info: dict[str, Any] = {"path": record_path(folder), "rank": lora.rank}
    record = folder / "training.json"
    if record.is_file():
        try:
            training = json.loads(record.read_text())
            info["training"] = {
                k: training[k] for k in ("steps", "examples", "final_loss") if k in training
            }
        except json.JSONDecodeError:
            pass
    fingerprint = {
        "lora_sha256": file_sha256(folder / WEIGHTS_NAME),
        "config_sha256": file_sha256(folder / CONFIG_NAME),
    }
    return TaskSetup(adapter=lora, fingerprint=fingerprint, info=info)


# ---------------------------------------------------------------- the registry


@dataclass
class SystemContext:
    """What the systems of one evaluation run share.

    Args:
        source: the (lazily loaded) hypernetwork checkpoint of the generated systems.
        model: the base LM (PEFT LoRAs are checked against it).
        tasks: every evaluated task; ``generated_other_task`` gives task i (sorted by name) the
            description of task i+1, cyclically.
        loras_dir: folder of per-task LoRAs and the multi-task one (``hypergen.layout``).
        seed: seed of the random-string conditions and of the demonstrations drawn.
        num_random_words: words per random string.
        train_examples: task name -> its train examples (where demonstrations come from).
        demonstrations: k, the demonstrations per task of ``base+demos`` and ``generated_demos``.
    """

    source: GeneratorSource
    model: nn.Module
    tasks: Sequence[Task]
    loras_dir: Path
    seed: int = 0
    num_random_words: int = 12
    train_examples: Mapping[str, Sequence[Example]] = field(default_factory=dict)
    demonstrations: int = 4

    def __post_init__(self):
        self.by_name = {t.name: t for t in self.tasks}
        self.order = sorted(self.by_name)


@dataclass(frozen=True)
class SystemSpec:
    """A registered system: ``setup(context, task)``; ``summary`` may name context fields."""

    name: str
    summary: str
    setup: Callable[[SystemContext, Task], TaskSetup]
    uses_model: bool = True
    default: bool = True


SYSTEMS: dict[str, SystemSpec] = {}  # name -> spec, in report order


def register(name: str, summary: str, uses_model: bool = True, default: bool = True):
    """Add the decorated ``setup(context, task)`` to ``SYSTEMS`` as ``name`` (``default``: in
    the systems a config runs when it names none)."""

    def add(setup: Callable[[SystemContext, Task], TaskSetup]):
        if name in SYSTEMS:
            raise ValueError(f"system {name!r} is registered twice")
        SYSTEMS[name] = SystemSpec(name, summary, setup, uses_model, default)
        return setup

    return add


def build_systems(
    names: Sequence[str],
    model: nn.Module,
    tasks: Sequence[Task],
    checkpoint: str,
    loras_dir: str | Path,
    seed: int = 0,
    num_random_words: int = 12,
    device: str = "cpu",
    train_examples: Mapping[str, Sequence[Example]] | None = None,
    demonstrations: int = 4,
    task_languages: str | Path = DEFAULT_TASK_LANGUAGES,
) -> tuple[list[System], GeneratorSource]:
    """The systems called ``names``, and the (lazily loaded) checkpoint the generated ones use.

    Args:
        names: system ids (keys of ``SYSTEMS``), in report order.
        checkpoint: hypernetwork checkpoint folder ("" for none).
        device: where the hypernetwork runs.
        model, tasks, loras_dir, seed, num_random_words, train_examples, demonstrations: see
            ``SystemContext``.
        task_languages: the task -> language table a description + language checkpoint reads.
    """
    unknown = [n for n in names if n not in SYSTEMS]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {list(SYSTEMS)}")
    source = GeneratorSource(checkpoint, model, device, task_languages)
    context = SystemContext(
        source,
        model,
        tasks,
        Path(loras_dir),
        seed,
        num_random_words,
        dict(train_examples or {}),
        demonstrations,
    )
    systems = [
        System(
            spec.name,
            spec.summary.format(num_random_words=num_random_words, demonstrations=demonstrations),
            partial(spec.setup, context),
            spec.uses_model,
        )
        for spec in (SYSTEMS[n] for n in names)
    ]
    return systems, source


@register("base", "frozen LM, input only")
def _base(context: SystemContext, task: Task) -> TaskSetup:
    return TaskSetup(fingerprint={"prompt": "input"})


@register("base+desc", "frozen LM, description + input")
def _base_desc(context: SystemContext, task: Task) -> TaskSetup:
    description = task_description(task)
    return TaskSetup(
        prompt_prefix=describe_prefix(description), fingerprint={"description": description}
    )


@register(
    "base+other_desc", "frozen LM, another evaluated task's description + input", default=False
)
def _base_other_desc(context: SystemContext, task: Task) -> TaskSetup:
    # the control of base+desc: what any task's text in the prompt does, not this task's
    description, info = _borrowed(context, task)
    return TaskSetup(
        prompt_prefix=describe_prefix(description),
        fingerprint={"description": description},
        info=info,
    )


@register(
    "nearest_example",
    "no LM: answer of the most similar train input (TF-IDF); MC: a guess if not an option",
    uses_model=False,
)
def _nearest(context: SystemContext, task: Task) -> TaskSetup:
    return TaskSetup(fingerprint={"method": "tfidf-cosine, chance fallback"})


@register("multitask_lora", "one LoRA trained on all training tasks")
def _multitask(context: SystemContext, task: Task) -> TaskSetup:
    return _peft_setup(
        library_folder(context.loras_dir, MULTITASK), context.model, "multi-task LoRA"
    )


@register("oracle_lora", "LoRA trained on this task's own train split (ceiling)")
def _oracle(context: SystemContext, task: Task) -> TaskSetup:
    # held-out and training tasks alike, in the library's layout (``hypergen.layout``)
    folder = library_folder(context.loras_dir, task.name)
    return _peft_setup(
        folder,
        context.model,
        "oracle LoRA",
        f"no oracle LoRA for this task in {record_path(context.loras_dir)} "
        f"(looked for {folder.name}/)",
    )


# The generated systems differ only in the condition: (text, info for the report) per task.


def _own(context: SystemContext, task: Task) -> tuple[str, dict]:
    return task_description(task), {}


def _paraphrase(context: SystemContext, task: Task) -> tuple[str, dict]:
    return unseen_paraphrase(task), {"template": describe(task, UNSEEN)[0].template}


def _random_string(context: SystemContext, task: Task) -> tuple[str, dict]:
    return random_words(context.seed, task.name, context.num_random_words), {}


def _borrowed(context: SystemContext, task: Task) -> tuple[str, dict]:
    order = context.order
    if len(order) < 2:
        raise MissingArtifact("needs at least two evaluated tasks to borrow another's description")
    other = order[(order.index(task.name) + 1) % len(order)]
    return task_description(context.by_name[other]), {"from_task": other}


def _generated(condition, with_desc: bool = False, language: str | None = None):
    """A generated system's setup: the adapter made from ``condition``'s text (with a description
    + language checkpoint, and the task's language, or ``language``), and the task's description
    before the input when ``with_desc``."""

    def setup(context: SystemContext, task: Task) -> TaskSetup:
        text, info = condition(context, task)
        made_from = context.source.condition(text, task.name, language)
        prefix = describe_prefix(task_description(task)) if with_desc else ""
        adapter = context.source.get().generate([made_from])
        fingerprint = {
            "checkpoint": context.source.meta["hash"],
            "condition": made_from,
            "prefix": prefix,
        }
        shown = made_from if isinstance(made_from, str) else json.dumps(made_from)
        return TaskSetup(
            prompt_prefix=prefix,
            adapter=adapter,
            condition=shown,
            fingerprint=fingerprint,
            info=info,
        )

    return setup


register("generated", "adapter generated from the task description")(_generated(_own))
register("generated+desc", "generated adapter + description in the prompt")(
    _generated(_own, with_desc=True)
)
register("generated_paraphrase", "generated from an unseen-template paraphrase")(
    _generated(_paraphrase)
)
register("generated_random", "generated from {num_random_words} random words")(
    _generated(_random_string)
)
register("generated_other_task", "generated from another evaluated task's description")(
    _generated(_borrowed)
)
register(
    "generated_english",
    "generated from the task description with the language set to English",
    default=False,
)(_generated(_own, language="eng"))  # a description + language checkpoint's language effect


# Demonstrations: k of the task's train examples, the same for in-context learning and the adapter.


def draw_demonstrations(
    train: Sequence[Example], k: int, seed: int, task_name: str
) -> list[Example]:
    """``k`` of a task's train examples, drawn by ``(seed, task)``."""
    train = list(train)
    if len(train) < k:
        raise MissingArtifact(
            f"needs {k} train examples for demonstrations, the task has {len(train)}"
        )
    return random.Random(f"{seed}:demonstrations:{task_name}").sample(train, k)


def task_demonstrations(context: SystemContext, task: Task) -> list[Example]:
    """``context.demonstrations`` of the task's train examples, drawn by ``(seed, task)``."""
    return draw_demonstrations(
        context.train_examples.get(task.name, ()), context.demonstrations, context.seed, task.name
    )


def takes_examples(parts: Sequence[str]) -> bool:
    """Whether a checkpoint with these condition parts generates from demonstrations."""
    return "examples" in parts and set(parts) <= {"description", "examples"}


def demonstrations_condition(
    parts: Sequence[str], examples: Sequence[tuple[str, str]], description: str
) -> dict:
    """The condition of an examples checkpoint: ``(input, output)`` pairs, and the description
    where the checkpoint takes one too."""
    condition: dict = {"examples": [{"input": i, "output": o} for i, o in examples]}
    if "description" in parts:
        condition["description"] = description
    return condition


def demonstrations_prefix(demos: Sequence[Example]) -> str:
    """The prompt prefix of ``base+demos``: each demonstration as a solved prompt."""
    return "".join(f"{ex.prompt}{ex.completion}\n\n" for ex in demos)


@register("base+demos", "frozen LM, {demonstrations} demonstrations + input (ICL)", default=False)
def _base_demos(context: SystemContext, task: Task) -> TaskSetup:
    prefix = demonstrations_prefix(task_demonstrations(context, task))
    return TaskSetup(prompt_prefix=prefix, fingerprint={"prefix": prefix})


@register(
    "generated_demos",
    "adapter generated from the same {demonstrations} demonstrations",
    default=False,
)
def _generated_demos(context: SystemContext, task: Task) -> TaskSetup:
    generator = context.source.get()
    parts = generator.condition_parts
    if not takes_examples(parts):
        raise MissingArtifact(
            f"the checkpoint takes {' and '.join(parts)}; this system needs an examples part"
        )
    demos = [(ex.input, ex.completion.strip()) for ex in task_demonstrations(context, task)]
    condition = demonstrations_condition(parts, demos, task_description(task))
    adapter = generator.generate([condition])
    fingerprint = {"checkpoint": context.source.meta["hash"], "condition": condition}
    return TaskSetup(adapter=adapter, condition=json.dumps(condition), fingerprint=fingerprint)
