"""Shared fixtures: tiny random Llama and GPT-2 models built in code, a tokenizer trained in code,
the hashing conditioner, and generators whose adapters are non-trivial (random B heads).

Everything here is offline and fast: a tiny model's forward pass takes a few milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from hypergen.conditions.hashing import HashingConditioner
from hypergen.config import BottleneckSpec, EncoderConfig, HyperNetConfig, LoraSpec
from hypergen.generator import AdapterGenerator
from hypergen.layout import hypergen_home
from hypergen.models import load_base_model

CORPUS = [
    "Answer the question about dates. Q: What day comes after Monday? A: Tuesday",
    "Translate English to French. The cat sits on the mat. Le chat est assis sur le tapis.",
    "Classify the sentiment of the review as positive or negative. I loved it. positive",
    "Solve the arithmetic problem. What is 2 plus 3? 5. What is 7 minus 4? 3.",
    "user assistant system Hello, how are you? I am fine, thank you.",
] * 4
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
ENCODER = EncoderConfig(kind="hashing", name="hash-32")


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with a ~300-token vocabulary and a chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_llama(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def build_gpt2(vocab_size: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=256)
    return GPT2LMHeadModel(config)


def randomize_(generator: AdapterGenerator, std: float = 0.05, seed: int = 0) -> AdapterGenerator:
    """Give the zero-initialised B heads random weights so adapters change outputs (tests only)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for head in generator.hypernet.heads.values():
            head.to_B.weight.normal_(std=std)
            head.to_B.bias.normal_(std=std)
    generator.meta.trained_steps = 1  # not a no-op any more
    return generator


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


def _save_model(model, tokenizer, folder: Path) -> str:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tokenizer) -> str:
    return _save_model(
        build_llama(len(tokenizer)), tokenizer, tmp_path_factory.mktemp("tiny-llama")
    )


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory, tokenizer) -> str:
    return _save_model(build_gpt2(len(tokenizer)), tokenizer, tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def llama(llama_dir):
    """(model, tokenizer) loaded through the library's local-folder path, frozen."""
    return load_base_model(llama_dir)


@pytest.fixture(scope="session")
def gpt2(gpt2_dir):
    return load_base_model(gpt2_dir)


@pytest.fixture(scope="session")
def conditioner() -> HashingConditioner:
    return HashingConditioner(ENCODER.name)


def make_generator(
    model, model_dir: str, conditioner, target_modules: list[str], rank: int = 4
) -> AdapterGenerator:
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        lora=LoraSpec(rank=rank, alpha=8, target_modules=target_modules),
    )
    generator = AdapterGenerator.create(model, model_dir, conditioner, ENCODER, config)
    return randomize_(generator)


def make_bottleneck_generator(
    model, model_dir, conditioner, randomize=True, encoder=ENCODER, **spec
) -> AdapterGenerator:
    """A bottleneck generator for ``model`` (``spec``: BottleneckSpec fields, width 8 unless
    given; ``encoder``: the config of ``conditioner``), its up heads randomised unless
    ``randomize`` is False (then its adapters are identities)."""
    config = HyperNetConfig(
        hidden_dim=32,
        num_blocks=1,
        adapter_kind="bottleneck",
        bottleneck=BottleneckSpec(**{"size": 8, **spec}),
    )
    generator = AdapterGenerator.create(model, model_dir, conditioner, encoder, config)
    if randomize:  # the up head starts at zero: give it weights so adapters change outputs
        torch.manual_seed(0)
        with torch.no_grad():
            for head in generator.hypernet.heads.values():
                head.to_up.weight.normal_(std=0.05)
                head.to_up_bias.weight.normal_(std=0.05)
        generator.meta.trained_steps = 1
    return generator


@pytest.fixture
def llama_generator(llama, llama_dir, conditioner) -> AdapterGenerator:
    return make_generator(llama[0], llama_dir, conditioner, ["q_proj", "v_proj", "down_proj"])


@pytest.fixture
def gpt2_generator(gpt2, gpt2_dir, conditioner) -> AdapterGenerator:
    return make_generator(gpt2[0], gpt2_dir, conditioner, ["c_attn", "c_fc"])


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory, llama, llama_dir, conditioner) -> str:
    """A saved checkpoint for the tiny Llama with non-trivial adapters (for CLI and service tests)."""
    generator = make_generator(llama[0], llama_dir, conditioner, ["q_proj", "v_proj"])
    return str(generator.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny"))


@pytest.fixture(scope="session")
def bottleneck_checkpoint_dir(tmp_path_factory, llama, llama_dir, conditioner) -> str:
    """A saved bottleneck checkpoint (Houlsby placement) for the tiny Llama, non-trivial adapters."""
    generator = make_bottleneck_generator(llama[0], llama_dir, conditioner, placement="houlsby")
    return str(generator.save_pretrained(tmp_path_factory.mktemp("ckpt") / "bottleneck"))


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    """Point HYPERGEN_HOME at an empty folder: tests never read or write the user's cache (a real
    LoRA library or store there must not leak into tiny-model runs). Subprocesses inherit it."""
    home = tmp_path_factory.mktemp("hypergen-home")
    converted = hypergen_home() / "models"
    if converted.is_dir():  # base models converted once are a pure cache: share them (slow tests)
        (home / "models").symlink_to(converted, target_is_directory=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HYPERGEN_HOME", str(home))
        yield


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run fastest on one thread; on a busy 2-core machine two threads spin-wait on
    each other and every small op takes milliseconds (the service tests: ~15 s instead of ~6 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def engine(checkpoint_dir):
    """The service's Engine on the tiny checkpoint (one per test module)."""
    from service.engine import Engine

    return Engine.load(checkpoint_dir)


@pytest.fixture
def make_app(engine, tmp_path):
    """Factory: a test app on the tiny engine with a fresh store; batchers are closed afterwards."""
    from service import create_app

    apps = []

    def make(engine=engine, **config):
        app = create_app(
            {"TESTING": True, "STORE": str(tmp_path / "store"), **config}, engine=engine
        )
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["hypergen"].close()


def patch_decoders(monkeypatch, engine, forward=None, step=None) -> None:
    """Every decoder ``engine`` makes from now on gets ``forward(its forward)`` as its model call
    and ``step(its step)`` as its step; both batching modes run through ``Engine.decoder`` (the
    window batcher by way of ``Engine.complete``), so a test sees the same seam in either."""
    original = engine.decoder

    def decoder(*args, **kwargs):
        made = original(*args, **kwargs)
        if forward is not None:
            made.forward = forward(made.forward)
        if step is not None:
            made.step = step(made.step)
        return made

    monkeypatch.setattr(engine, "decoder", decoder)


def hf_greedy(engine, model, tokenizer, job) -> list[int]:
    """The reference for one job: Hugging Face ``generate`` (greedy) on the bare model with the
    library's hooks applying the job's adapter, end tokens dropped."""
    from contextlib import nullcontext

    from hypergen.adapters.apply import apply_adapters

    ids = torch.tensor([job.prompt_ids])
    hooks = apply_adapters(model, job.adapter) if job.adapter is not None else nullcontext()
    with torch.no_grad(), hooks:
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=job.params.max_tokens,
            do_sample=False,
            eos_token_id=sorted(engine.eos_ids),
            pad_token_id=tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    return [t for t in out if t not in engine.eos_ids]
