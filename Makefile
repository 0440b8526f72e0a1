# The two newcomer commands are `make demo` and `make test` (see README.md); both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# options for every geosane command of the demo, e.g. `make demo GEOSANE=-v` for Ray's own output
GEOSANE ?=

.PHONY: setup demo test test-all lint bench

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes. Newer pip resolves the AWS client pins in seconds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	# TensorFlow in an environment of its own: it reads TensorFlow checkpoints (Dynamic World) in a child process
	# (beside PyTorch, libraries that import it when present crash)
	$(PYTHON) -m venv $(VENV)/tensorflow
	$(VENV)/tensorflow/bin/python -m pip install --quiet tensorflow-cpu==2.21.0 safetensors numpy
	# real pretrained U-Nets, read from their registry wheels by `geosane collect pretrained:...`
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==1.0.0
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==0.2.1
	touch $@

# The main job on the embedded default (local Ray, local files, the shipped data), told one line per stage: the real
# pretrained models and a tiny Ray Tune zoo into one collection, its make-up as a picture, the weight autoencoder
# trained on it with Ray Train + DeepSpeed ZeRO-2 on two local workers, the collection's embeddings (UMAP, kNN
# accuracy), weights generated for a 13-band prompt, and a small Ray Tune benchmark of generated models against
# training from scratch and the prompt's own weights. A second run reuses every finished stage. `GEOSANE=-v` shows
# Ray's own output.
demo: setup
	@echo "[1/7] collect: the real pretrained models (Presto, Galileo, ukis-csmask U-Nets) -> out/collection"
	@$(BIN)/geosane $(GEOSANE) collect pretrained:all --out out/collection
	@echo "[2/7] zoo: a tiny Ray Tune model zoo on EuroSAT RGB and cloud masks -> out/collection"
	@$(BIN)/geosane $(GEOSANE) zoo --config sweeps/zoo-tiny.yaml --out out/collection --storage out/runs
	@echo "[3/7] stats: the collection's make-up -> out/collection-stats.png"
	@$(BIN)/geosane $(GEOSANE) collection stats out/collection --png out/collection-stats.png > /dev/null && echo "wrote out/collection-stats.png"
	@echo "[4/7] train: the weight autoencoder, Ray Train + DeepSpeed ZeRO-2 on two workers -> out/runs/demo"
	@$(BIN)/geosane $(GEOSANE) train --collection out/collection --storage out/runs --name demo --config sweeps/train-tiny.yaml
	@echo "[5/7] embed: the collection in the latent space -> out/embed"
	@$(BIN)/geosane $(GEOSANE) embed --autoencoder out/runs/demo --collection out/collection --out out/embed
	@echo "[6/7] generate: weights for a 13-band test_resnet, ranked on EuroSAT multispectral -> out/generated"
	@$(BIN)/geosane $(GEOSANE) generate --autoencoder out/runs/demo --prompt 'timm:test_resnet?in_chans=13&num_classes=10' \
		--data eurosat_ms --candidates 4 --out out/generated
	@echo "[7/7] bench: generated vs scratch vs the prompt on two held-out tasks (Ray Tune) -> out/bench"
	@$(BIN)/geosane $(GEOSANE) bench --config sweeps/bench-demo.yaml --storage out/runs --out out/bench --resume

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
