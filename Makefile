# One command each, from a fresh clone:  make demo  (train + sample + evaluate)   make test  (the test suite)
# TORCH_SPEC picks the torch build: the default is the CPU wheel; e.g. TORCH_SPEC="torch==2.13.0 --index-url ..."
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
DEMO_CKPT := runs/demo/checkpoints/last.ckpt

.PHONY: setup demo test lint bench clean-demo

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, so the package's "torch>=" requirement never pulls another (multi-GB CUDA) build
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[demo,dev,vae,ode,plot]"
	@touch $@

demo: setup
	$(PY) train.py fit --config configs/demo.yaml
	$(PY) -m crossflow.eval.evaluate --ckpt $(DEMO_CKPT) --num 256 --out runs/demo/eval
	$(PY) sample.py --ckpt $(DEMO_CKPT) --out runs/demo/samples --num 4 \
	  --prompt "a small red circle in the top left" --prompt "a big blue square in the center" \
	  --prompt "a large yellow triangle at the bottom right" --prompt "a tiny white disc in the upper right corner"

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check crossflow tests bench train.py sample.py

bench: setup
	$(PY) bench/model_sizes.py
	$(PY) bench/throughput.py

clean-demo:
	rm -rf runs/demo data/shapes
