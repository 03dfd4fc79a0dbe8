PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: demo test lint typecheck pytest test-keras-backends docs venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,docs]'
	touch $(DOCS_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/skipkit demo

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/ruff format --check src tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# `pytest` runs tests/keras on the torch backend; here the same tests run on the other two (the
# torch-free test starts its own JAX interpreter, so it runs once, in `pytest`).
test-keras-backends: $(STAMP)
	KERAS_BACKEND=tensorflow TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -n 2 --dist loadfile tests/keras \
		--ignore=tests/keras/test_keras_without_torch.py
	KERAS_BACKEND=jax JAX_PLATFORMS=cpu $(PY) -m pytest -n 2 --dist loadfile tests/keras \
		--ignore=tests/keras/test_keras_without_torch.py

test: lint typecheck pytest test-keras-backends

# The guides and an API reference from the docstrings, into site/ (warnings are errors).
docs: $(DOCS_STAMP)
	$(PY) -m sphinx -E -W --keep-going -q -b html docs site

bench: $(STAMP)
	$(PY) benchmarks/bench_residual.py

clean:
	rm -rf $(VENV) build dist site *.egg-info src/*.egg-info
