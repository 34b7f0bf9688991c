# One command to set up and run the demo, one to set up and run the tests. Everything lands in .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU machines this project is developed on carry these two wheels; any torch>=2.4 works.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

.PHONY: setup data slurm demo test test-slow bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# Fashion-MNIST, the embedded dataset, from Debian's dataset-fashion-mnist package.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# A single-node SLURM for the slow suite's scheduler test (Debian's slurm-wlm and munge; the test starts the
# daemons itself, and skips, saying why, where they cannot be installed).
slurm:
	@if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq slurm-wlm munge \
	    || echo "slurm-wlm and munge could not be installed: the real-SLURM test will be skipped"; \
	fi

demo: setup data
	$(BIN)/pitvit demo

test: setup data
	$(BIN)/python -m pytest -q

test-slow: setup data slurm
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/python benchmarks/bench_models.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
