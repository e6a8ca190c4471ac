# cerp_jax: `make train` (CERP + LightGCN on the real Gowalla data, the :cpu recipe) and `make test`.
# Both create .venv and install the pinned requirements and the package on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/gowalla_lightgcn_cpu
CONFIG ?= configs/gowalla_lightgcn.py:cpu
# The uncompressed reference eval.py prints beside each budget: the recorded d = 64 run for the
# default config, none for another CONFIG (or REFERENCE=<full-table workdir or recorded .json>).
REFERENCE ?= $(if $(filter configs/gowalla_lightgcn.py:cpu,$(CONFIG)),docs/results/reference_gowalla_lightgcn_d64.json,)
EVAL_ARGS = $(if $(REFERENCE),--reference=$(REFERENCE),)
PYTEST_ARGS ?=
BENCH_ARGS ?=  # e.g. --p3_workdir=runs/gowalla_mlp_parity_p3 (P3 from a measured stage 1)

.PHONY: install train eval test test-all bench clean-venv

# The pins first (requirements.txt, with the build backend), then cerp_jax itself from pyproject.toml,
# editable and without resolving again: `import cerp_jax` works from any directory.
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed  # .venv with the pinned requirements and cerp_jax (editable)

train: $(VENV)/.installed
	$(PY) train.py --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) eval.py --workdir=$(WORKDIR) $(EVAL_ARGS)

eval: $(VENV)/.installed
	$(PY) eval.py --workdir=$(WORKDIR) $(EVAL_ARGS)

test: $(VENV)/.installed  # what CI runs: every test but the heavy real-data runs (-m slow)
	$(PY) -m pytest -q tests -m "not slow" $(PYTEST_ARGS)

test-all: $(VENV)/.installed  # everything, the slow real-data runs included
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

bench: $(VENV)/.installed  # the benchmark suite (figures vs targets; see benchmarks/run.py)
	$(PY) benchmarks/run.py $(BENCH_ARGS)

clean-venv:
	rm -rf $(VENV)
