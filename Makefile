# The two newcomer commands are `make demo` and `make test` (see README.md); both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all lint bench

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes. Newer pip resolves the AWS client pins in seconds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	# real pretrained U-Nets, read from their registry wheels by `geosane collect pretrained:...`
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==1.0.0
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==0.2.1
	touch $@

# The main job on the embedded default (local Ray, local files, the shipped data): the real pretrained models
# and a tiny Ray Tune zoo into one collection, its make-up as a picture, then the weight autoencoder trained on
# it with Ray Train + DeepSpeed ZeRO-2 on two local workers; the collection's embeddings (UMAP, kNN accuracy), and
# weights generated for a 13-band prompt, ranked on EuroSAT multispectral, with their model cards.
demo: setup
	$(BIN)/geosane collect pretrained:all --out out/collection
	$(BIN)/geosane zoo --config sweeps/zoo-tiny.yaml --out out/collection --storage out/runs
	$(BIN)/geosane collection stats out/collection --png out/collection-stats.png
	$(BIN)/geosane train --collection out/collection --storage out/runs --name demo --config sweeps/train-tiny.yaml
	$(BIN)/geosane embed --autoencoder out/runs/demo --collection out/collection --out out/embed
	$(BIN)/geosane generate --autoencoder out/runs/demo --prompt 'timm:test_resnet?in_chans=13&num_classes=10' \
		--data eurosat_ms --candidates 4 --out out/generated

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ""

# lint, format and type checks, as CI runs them before the tests
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python benchmarks/tokenizer.py
	$(BIN)/python benchmarks/autoencoder.py
