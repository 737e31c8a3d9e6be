#!/usr/bin/env bash
# Download, into .whl/, the wheels the GPU machine lacks for `make accelerator` (`make accelerator-wheels`): Keras
# and the two packages it needs that the machine's image does not hold (namex, optree), for its Python 3.12 on
# x86-64 Linux. Everything else the run imports is there (the lent machine's package list: jax, numpy,
# pillow, scikit-image, scipy, tqdm, h5py, ml-dtypes, absl-py, rich, packaging). Versions: this venv's.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WHEELS=${WHEELS:-.whl}
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p "$WHEELS"
for package in keras namex optree; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$WHEELS" "$package==$(version $package)"
done
ls "$WHEELS"
echo "wheels in $WHEELS ($(du -sh "$WHEELS" | cut -f1)): carry it with the device run"
