# `make demo` and `make test` each create .venv when missing and install everything the project needs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mtiasim-installed

.PHONY: demo test lint bench validate cv calibrate clean fuzz

# Re-installs whenever pyproject.toml, this Makefile or the compiled event core's sources change.
$(STAMP): pyproject.toml Makefile setup.py src/mtiasim/engine/eventloop.py src/mtiasim/engine/eventloop.pxd
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch is pinned in every pip call that may pull it: an unpinned torch is a multi-GB CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,ray]' torch==2.13.0
	# The torchrec stack for mtiasim.workloads (it cannot be expressed in pyproject.toml):
	# fbgemm-gpu-cpu 1.8.0 is the release that loads with torch 2.13 (1.9.0 fails with an undefined symbol);
	# torchrec goes in with --no-deps, since its metadata requires the 493 MB CUDA fbgemm-gpu; then its real deps.
	$(PY) -m pip install --quiet torch==2.13.0 fbgemm-gpu-cpu==1.8.0
	$(PY) -m pip install --quiet --no-deps torchrec==1.8.0
	$(PY) -m pip install --quiet torch==2.13.0 tensordict==0.15.3 torchmetrics==1.0.3 pyre-extensions tqdm
	# an editable install leaves byte-compiling to the first import, which PYTHONDONTWRITEBYTECODE forbids:
	# without it every `mtiasim` process compiles the package again (~0.8 s of a run's start-up)
	$(PY) -m compileall -q src
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mtiasim chip show mtia-v1
	$(VENV)/bin/mtiasim bench gemm --m 2048 --k 4096 --n 4096 --dtype int8 --placement sram
	$(VENV)/bin/mtiasim bench tbe --batch 256 --pooling 50 --rows 1000000 --dim 256
	$(VENV)/bin/mtiasim validate
	$(VENV)/bin/mtiasim run dlrm-kaggle --batch 256 --check --report demo-report --trace demo-report/trace.json

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

test: $(STAMP) lint
	$(VENV)/bin/pytest

# the long differential-fuzzing run (docs/numerics.md section 5): 20,000 graphs instead of make test's 1,000,
# new graphs every run (the seed is printed: `make fuzz SEED=N` runs those graphs again)
fuzz: $(STAMP)
	seed=$${SEED:-$$($(PY) -c 'import secrets; print(secrets.randbelow(2**32))')}; \
	echo "make fuzz: hypothesis seed $$seed (make fuzz SEED=$$seed runs the same graphs)"; \
	$(VENV)/bin/pytest tests/test_fuzz_numerics.py -k fuzzed_graphs --hypothesis-profile nightly --hypothesis-seed $$seed

validate: $(STAMP)
	$(VENV)/bin/mtiasim validate

# out-of-sample validation (issue 10): leave one group out, re-fit the calibrated constants on the rest (~20 min)
cv: $(STAMP)
	$(VENV)/bin/mtiasim validate --cv

bench: $(STAMP)
	$(PY) -m compileall -q src
	$(PY) benchmarks/run_all.py
	$(PY) benchmarks/eventcore.py
	$(PY) benchmarks/pytorch_path.py

calibrate: $(STAMP)
	$(PY) scripts/calibrate.py
	$(PY) scripts/calibrate_power.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info src/mtiasim/engine/eventloop.c src/mtiasim/engine/eventloop.*.so src/mtiasim/engine/eventloop.sha256 .pytest_cache .ruff_cache .hypothesis demo-report
