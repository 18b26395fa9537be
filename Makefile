# Two entry points (see README.md): `make demo` runs the main job, `make test` the test suite.
# Both create a virtual environment in .venv and install the project into it first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data

.PHONY: install test lint demo demo-slides clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

demo: install
	$(PY) demo/run_demo.py --output demo-output

demo-slides: install
	$(PY) demo/slide_demo.py --output demo-output --data $(SHARED_DATA)

clean:
	rm -rf $(VENV) demo-output .pytest_cache
