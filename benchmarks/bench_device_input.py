"""Benchmark the training input of the GPU recipes: a batch made by Python on the host (PairBatches) against one cut
on the accelerator from the split held in its memory (DevicePairBatches), per batch, in the same run.

    KERAS_BACKEND=jax python benchmarks/bench_device_input.py            # the accelerator.py batch sizes
    KERAS_BACKEND=jax python benchmarks/bench_device_input.py --pairs 2000 --repeat 20

Synthetic uint8 pairs of the accelerator DATASET's size (128 px HR, 32 px LR, x4). For each recipe's batch it
times, median of --repeat: PairBatches.make_batch on one thread (a PyDataset worker's cost per batch: with W
threads the host makes about W / that batches a second), and DevicePairBatches's __getitem__ (the training loop's
wait: random draws and the dispatch) and __getitem__ until the batch is ready (the gather itself, on the device).
A GPU step shorter than the host's time per batch / W leaves the GPU waiting for input.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from peak import median_seconds  # noqa: E402

RECIPES = {"stream": 1024, "psnr": 256, "gan": 64}  # accelerator.py's batch sizes
HR, SCALE = 128, 4


def main(argv=None):
    """Print one line per recipe and the ratio; returns 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=1000, help="synthetic training pairs")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)  # --help answers before Keras loads
    import keras

    import training  # imports runtime first: Keras starts quietly
    rng = np.random.default_rng(0)
    hrs = [rng.integers(0, 256, (HR, HR, 3), dtype=np.uint8) for _ in range(args.pairs)]
    lrs = [hr[::SCALE, ::SCALE].copy() for hr in hrs]
    arrays = training.device_arrays(lrs, hrs)
    print(f"backend {keras.backend.backend()}, {args.pairs} pairs of {HR} px, median of {args.repeat}")
    for name, batch in RECIPES.items():
        host = training.PairBatches(lrs, hrs, batch_size=batch, steps=10**6, scale=SCALE, workers=1)
        device = training.DevicePairBatches(arrays, batch_size=batch, steps=10**6, scale=SCALE)
        host_s = median_seconds(lambda h=host: h.make_batch(0, 0), args.repeat)
        dispatch_s = median_seconds(lambda d=device: d[0], args.repeat)
        ready_s = median_seconds(lambda d=device: keras.ops.convert_to_numpy(d[0][1]), args.repeat)
        print(f"{name}: batch {batch}: host PairBatches {1e3 * host_s:.1f} ms/batch/thread; device cut: "
              f"{1e3 * dispatch_s:.2f} ms in the loop, {1e3 * ready_s:.1f} ms to the batch on the host "
              f"(x{host_s / dispatch_s:.0f} less time in the loop)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
