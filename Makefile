# toto-robot: `make demo` runs the main job on a small default, `make test` runs the suite.
# Both create the virtual environment on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Python 3.12 is required (lerobot 0.6). Take python3.12 from PATH, else a pyenv install.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo $$p; break; }; done)
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE := 1
PYTEST_ARGS ?=

.PHONY: setup demo test bench lint clean

PLUGINS := plugins/lerobot_policy_toto plugins/lerobot_env_toto plugins/lerobot_robot_toto
$(VENV)/.installed: pyproject.toml setup.py $(addsuffix /pyproject.toml,$(PLUGINS))
	@test -n "$(PYTHON312)" || { echo "error: Python 3.12 not found (expected python3.12 on PATH or ~/.pyenv/versions/3.12*)"; exit 1; }
	test -x $(PY) || $(PYTHON312) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' $(addprefix -e ,$(PLUGINS))
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/toto-demo

# Two test workers (pytest-xdist), one intra-op thread each: the 2-core machine runs two tests at once
# instead of one test on two oversubscribed threads.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not gpu and not hardware" -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: setup
	for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) outputs
