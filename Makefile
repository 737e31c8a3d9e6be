# `make demo` and `make test` build .venv on first use; nothing else is needed but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/samples
RUN := runs/demo

SAMPLES = $$($(PY) -c "import skimage.data; print(skimage.data.data_dir)")
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test lint lab bench weights accelerator accelerator-pack accelerator-wheels clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The main job on the photos scikit-image ships: dataset, a short two-phase training run, its test-split scores
# beside bicubic, then the shipped default model on a photo and an animated GIF.
demo: $(VENV)/.installed
	$(PY) create_dataset.py --samples --out $(DATA)
	$(PY) flow.py train --data $(DATA) --out $(RUN) --preset fast --interpolation-skip bicubic \
		--patch-size 96 --pretrain-epochs 5 --gan-epochs 1 --steps-per-epoch 40 --lr-g 5e-4 --content-loss l1
	$(PY) flow.py evaluate --model $(RUN)/generator.keras --data $(DATA) --out $(RUN)/eval
	$(PY) upscale.py $(SAMPLES)/chelsea.png -o out/demo/chelsea_x4.png --compare --overwrite
	$(PY) upscale.py $(SAMPLES)/no_time_for_that_tiny.gif -o out/demo/no_time_for_that_x4.gif --overwrite
	@echo "demo done: dataset $(DATA), run $(RUN) (open analyze.ipynb), upscaled files in out/demo/"

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: $(VENV)/.installed
	$(PY) -m ruff check .

# JupyterLab on the notebooks (analyze.ipynb needs a run: `make demo` makes runs/demo).
lab: $(VENV)/.installed
	$(PY) -m jupyter lab analyze.ipynb dataset_preparation.ipynb

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# Rebuild the shipped models from scratch (Debian machine; see weights/README.md for times).
weights: $(VENV)/.installed
	PY=$(PY) weights/train.sh

# The whole GPU run in one command (docs/accelerator.md): trains the stream, PSNR and GAN models on a wall-clock
# budget and writes their generators, histories and figures.json into OUT. No venv there: the lent machine has
# python3 with JAX, and Keras from the carried wheels.
OUT ?= out/accelerator
ACCEL_PY ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
accelerator:
	KERAS_BACKEND=jax $(ACCEL_PY) accelerator.py --out $(OUT) $(ACCEL_ARGS)

# What the device run carries, made here: the licensed photos (from the Debian packages weights/train.sh downloads,
# DEBS=folder of their .deb files) in data/accel-photos, and Keras' wheels for the device's Python in .whl.
DEBS ?= data/weights-work/debs
accelerator-pack: $(VENV)/.installed
	PY=$(PY) DEBS=$(DEBS) weights/pack_photos.sh

accelerator-wheels: $(VENV)/.installed
	PY=$(PY) weights/accelerator_wheels.sh

clean:
	rm -rf $(RUN) $(DATA)
