# Two set-up commands, both self-installing: `make test` and `make demo`; `make lint` checks style.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
LIB_STAMP := $(VENV)/.installed-lib-stamp

.PHONY: test test-lib demo bench lint install clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(LIB_STAMP)

# the library and the test runner alone (what `make test-lib` needs; the full install above includes it)
$(LIB_STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . pytest hypothesis
	touch $(LIB_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# the library tiers: the loss math, the baselines and their doctests; they need only `pip install -e .`
# and the test runner (pytest, hypothesis), not the recipes' or the frameworks' packages
test-lib: $(LIB_STAMP)
	$(PY) -m pytest -q tests/lib tests/baselines rskd_loss baselines

lint: $(STAMP)
	$(VENV)/bin/ruff check .

demo: $(STAMP)
	$(PY) -m recipes.table3 --profile demo

bench: $(STAMP)
	$(PY) -m recipes.benchmark.kd_loss

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
