# The two newcomer commands are `make demo` and `make test` (see README.md); both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test test-all bench

setup: $(VENV)/.installed

# Re-install whenever pyproject.toml changes. Newer pip resolves the AWS client pins in seconds.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# real pretrained U-Nets, read from their registry wheels by `geosane collect pretrained:...`
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==1.0.0
	$(BIN)/python -m pip download --quiet --no-deps -d $(VENV)/wheels ukis-csmask==0.2.1
	touch $@

# The main job on the embedded default: real pretrained weights from ../shared plus timm architectures at
# 13 Sentinel-2 bands, tokenized into a local collection, then listed.
demo: setup
	$(BIN)/geosane collect ../shared/weights --out out/collection --tag licence=MIT --tag modality=multimodal
	$(BIN)/geosane collect "timm:resnet18?in_chans=13&num_classes=10" "timm:vit_small_patch16_224?in_chans=13&num_classes=10" \
		"timm:mobilenetv3_large_100?in_chans=13&num_classes=10" --out out/collection --tag modality=multispectral
	$(BIN)/geosane collection ls out/collection

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ""

bench: setup
	$(BIN)/python benchmarks/tokenize.py
