# Set-up and everyday commands. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_FLAGS := -q --disable-pip-version-check -c constraints.txt

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -e ".[test,export,nnunet]"
	@# nnunetv2 -> timm -> torchvision: PyPI's torchvision is built for CUDA torch and does not import with
	@# the pinned CPU torch wheel, which breaks `import lightning`; nothing here needs it (docs/nnunet.md)
	$(BIN)/python -c "import torchvision" >/dev/null 2>&1 || $(BIN)/pip uninstall -y -q torchvision
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/factorseg demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

bench: $(STAMP)
	$(BIN)/python -m benchmarks.models --sizes 64 96 128 --repeats 3

clean:
	rm -rf $(VENV) demo_out build *.egg-info src/*.egg-info
