# `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-unit bench clean

# torch first, pinned to the local CPU build: a looser pin would pull GBs of CUDA wheels.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# MTCNN's weights ship in facenet-pytorch; its pins would downgrade torch and its import
	# needs torchvision, so it is installed without dependencies and only its files are read.
	$(BIN)/pip install -q --no-deps facenet-pytorch==2.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/facerestore run pipelines/configs/demo.yaml

# Lint first (a red lint fails CI too); pytest exits 5 when it collects no test, which is not a
# failure of the code under test.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q || [ $$? -eq 5 ]

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf .facerestore
