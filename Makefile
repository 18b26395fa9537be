# Two entry points (see README.md): `make demo` runs the main job, `make test` the test suite.
# Both create a virtual environment in .venv and install the project into it first.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED_DATA ?= ../shared/data

.PHONY: install test demo clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(PY) -m mtdp_core features $(SHARED_DATA)/mini/nct_crc_he --backbone efficientnet_lite0 --weights imagenet -o demo-output/nct_crc_he_features.npz

clean:
	rm -rf $(VENV) demo-output .pytest_cache
