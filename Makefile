# Set-up and main jobs. Each target creates the virtualenv .venv and installs relssl into it.
#   make demo   pretrain the default method on Fashion-MNIST and evaluate it (about 3.5 min of training on 2 CPU cores)
#   make test   the whole test suite, one pytest worker per core (CI runs it, then make docs)
#   make docs   the documentation site in build/site (MkDocs, strict: a broken link or reference fails)
# TORCH: the torch/torchvision pins. The defaults are the wheels on this project's machines'
# disk; elsewhere e.g. `make test TORCH="torch torchvision"`.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
# pytest-xdist workers for make test (auto: one per core, each with one torch thread)
TEST_WORKERS ?= auto
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: venv data demo test docs bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# Fashion-MNIST from Debian where it is missing and apt-get can run; relssl itself also looks
# in $$RELSSL_DATA and ~/.cache/relssl and can use torchvision's download when online.
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ -z "$$RELSSL_DATA" ]; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else echo "Fashion-MNIST not in $(FMNIST): install the Debian package dataset-fashion-mnist, or put the IDX files in a directory and set RELSSL_DATA"; fi; \
	fi

demo: venv data
	$(BIN)/relssl demo

test: venv data
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

bench: venv data
	$(BIN)/python benchmarks/throughput.py

clean:
	rm -rf $(VENV) runs .pytest_cache build
