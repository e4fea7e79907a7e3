# `make demo` and `make test` create (or reuse) .venv and need nothing else on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch comes from the CPU wheel on disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,tpu]"  # tpu: the TPU compiler the dry-run tests compile with
	touch $@

# JAX_PLATFORMS=cpu: the tiny default runs on CPU (with libtpu installed JAX would look for a TPU too).
demo: $(VENV)/.installed
	JAX_PLATFORMS=cpu $(PY) launch/tpu_evolve.py --config=configs/tiny.py --workdir=runs/tiny

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	for f in benchmarks/[a-z]*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
