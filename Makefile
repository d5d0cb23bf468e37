# Two commands from a fresh clone (only Python >= 3.10 needed):
#   make run    create .venv if missing, install, train the baby preset on the bundled tiny Shakespeare
#   make test   the same install, then ruff and the test suite (the commands .ci/run runs after `make install`)
#   make screenshots   train a small run and save a PNG of each view of the app into visualizations/
# On a GPU machine pick the torch build for your CUDA, e.g.  make run TORCH_SPEC=torch
PYTHON ?= python3
VENV ?= .venv
# the local CPU build: an unpinned torch would pull gigabytes of CUDA libraries onto a CPU machine.
# Handed to pip as its arguments, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC ?= torch==2.13.0
RUN_DIR ?= runs/quickstart
BIN := $(VENV)/bin

.PHONY: install run test tui screenshots

# reinstalled when pyproject.toml changes; the stamp lives inside the venv, so deleting .venv starts over
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	@if [ -e $(RUN_DIR) ]; then \
		echo "$(RUN_DIR) already exists: 'make tui' opens it; 'make run RUN_DIR=runs/another' trains a new one"; \
	else \
		$(BIN)/minigpt train --headless --out $(RUN_DIR) && \
		echo "next: $(BIN)/minigpt sample $(RUN_DIR) --prompt 'ROMEO:'   or   make tui"; \
	fi

tui: $(VENV)/.installed
	@if [ -e $(RUN_DIR) ]; then $(BIN)/minigpt-tui $(RUN_DIR); else $(BIN)/minigpt-tui --out $(RUN_DIR); fi

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

screenshots: $(VENV)/.installed
	$(BIN)/python -m minigpt_tui.tui.screenshots --out visualizations
