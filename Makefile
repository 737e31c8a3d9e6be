# `make demo` and `make test` build .venv on first use; nothing else is needed but Python 3.11+.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DATA := data/samples
RUN := runs/demo

SAMPLES = $$($(PY) -c "import skimage.data; print(skimage.data.data_dir)")
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: demo test soak lint lab bench runtimes weights accelerator accelerator-pack accelerator-wheels clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# The main job on the photos scikit-image ships, from scratch each time: dataset, a short two-phase training run
# of the light `video` network (2,000 pretraining steps at 2e-3 on 64 px patches, then 3 GAN epochs of 100
# steps against a small discriminator), its test-split scores beside bicubic, then a photo and an animated GIF upscaled by it, with
# bicubic | the model just trained | the shipped PSNR model side by side in out/demo/chelsea_x4_compare.png.
demo: $(VENV)/.installed
	@mkdir -p out/demo && date +%s > out/demo/.started && rm -rf $(RUN)
	$(PY) create_dataset.py --samples --out $(DATA)
	$(PY) flow.py train --data $(DATA) --out $(RUN) --preset video --patch-size 64 --steps-per-epoch 100 \
		--pretrain-epochs 20 --lr-g 2e-3 --lr-schedule cosine --gan-epochs 3 --d-filters 8 --content-loss l1
	$(PY) flow.py evaluate --model $(RUN)/generator.keras --data $(DATA) --out $(RUN)/eval
	$(PY) upscale.py $(SAMPLES)/chelsea.png -o out/demo/chelsea_x4.png --model $(RUN)/generator.keras \
		--compare-with psnr --overwrite
	$(PY) upscale.py $(SAMPLES)/no_time_for_that_tiny.gif -o out/demo/no_time_for_that_x4.gif \
		--model $(RUN)/generator.keras --overwrite
	@s=$$(( $$(date +%s) - $$(cat out/demo/.started) )); echo "demo done in $$((s / 60)) min $$((s % 60)) s:" \
		"dataset $(DATA), run $(RUN) (open analyze.ipynb), out/demo/chelsea_x4_compare.png (bicubic | your" \
		"model | shipped psnr), out/demo/no_time_for_that_x4.gif"

# The suite spread over the cores (pytest-xdist; 2 cores: 2 workers): much of a test's time is a subprocess
# starting, TensorFlow tracing or a pipe waiting, which another test's work fills.
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --maxprocesses 4

# The long checks make test leaves out (a kill at every kind of write, more multi-worker orders, JAX's GAN step).
soak: $(VENV)/.installed
	$(PY) -m pytest -m soak

lint: $(VENV)/.installed
	$(PY) -m ruff check .

# JupyterLab on the notebooks (analyze.ipynb needs a run: `make demo` makes runs/demo).
lab: $(VENV)/.installed
	$(PY) -m jupyter lab analyze.ipynb dataset_preparation.ipynb

bench: $(VENV)/.installed
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

# The optional runtimes (ONNX Runtime, OpenVINO, NNCF): flow.py export, deploy.py, benchmarks/bench_runtimes.py.
runtimes: $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-runtimes.txt

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
