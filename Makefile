# `make demo` and `make test` build .venv on first use; nothing else is needed but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/samples
RUN := runs/demo

.PHONY: demo test lint bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) create_dataset.py --samples --out $(DATA)

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(RUN) $(DATA)
