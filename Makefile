# Two set-up commands, both self-installing: `make test` and `make demo`; `make lint` checks style.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo bench lint install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) recipes/table3.py --profile demo

bench: $(STAMP)
	$(PY) benchmarks/bench_kd_loss.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
