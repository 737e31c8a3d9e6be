"""GAN-phase training speed on the TensorFlow and the JAX backend in one run, with a loss-equality check.

    .venv/bin/python benchmarks/bench_gan_step.py                 # a few minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_gan_step.py --preset srresnet --batch 16 --hr 128 --steps 5

Both backends start from the same SRGAN saved as .keras (generator preset, discriminator of hr px, Adam 1e-4,
MSE content + 1e-3 adversarial) and train on the same batch with train_on_batch, compiled (TF: XLA,
jit_compile=True; JAX: jax.jit). The JAX side runs in a subprocess with KERAS_BACKEND=jax. The first --check
steps warm up (tracing, compiling) and their losses are compared (the first step's: rtol 1e-4); the next
--steps are timed.
Prints images/s of each and the ratio JAX/TF.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

import presets  # noqa: E402


def measure(model_path, batch_path, check, steps):
    """Losses of the first `check` steps, then seconds per step over `steps`, on the current backend."""
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines)

    # isort: split
    import keras

    import gan  # noqa: F401 (registers SRGAN for loading)
    import generator  # noqa: F401 (registers the generator's layers for loading)

    model = keras.saving.load_model(model_path, safe_mode=True)
    model.jit_compile = True
    batch = np.load(batch_path)
    lr, hr = batch["lr"], batch["hr"]
    losses = [model.train_on_batch(lr, hr, return_dict=True) for _ in range(check)]
    start = time.perf_counter()
    for _ in tqdm(range(steps), desc=f"{keras.backend.backend()} steps", file=sys.stderr):
        logs = model.train_on_batch(lr, hr, return_dict=True)
    float(logs["g_loss"])  # the last step has finished
    return {"losses": losses, "seconds_per_step": (time.perf_counter() - start) / steps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="fast", choices=sorted(presets.GENERATOR_PRESETS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hr", type=int, default=96, help="HR patch size (the paper's 96)")
    parser.add_argument("--check", type=int, default=2, help="warm-up steps whose losses are compared")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # the JAX side
        print("RESULT " + json.dumps(measure(*args.worker, args.check, args.steps)))
        return
    import runtime  # noqa: F401 (Keras loads once the command line is known, quietly: --help answers at once)

    # isort: split
    import keras

    import gan
    import generator

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(f"run with KERAS_BACKEND=tensorflow (got {keras.backend.backend()}); JAX runs as a child")

    from discriminator import build_discriminator

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    hr = rng.random((args.batch, args.hr, args.hr, 3), np.float32)
    lr = hr.reshape(args.batch, args.hr // 4, 4, args.hr // 4, 4, 3).mean(axis=(2, 4))  # x4 box downscale
    with tempfile.TemporaryDirectory() as tmp:
        model_path, batch_path = f"{tmp}/srgan.keras", f"{tmp}/batch.npz"
        model = gan.SRGAN(generator.build_generator(4, preset=args.preset), build_discriminator(args.hr))
        model.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4), content_loss="mse")
        model.save(model_path)
        np.savez(batch_path, lr=lr, hr=hr)
        tf_result = measure(model_path, batch_path, args.check, args.steps)
        env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(ROOT)}
        child = subprocess.run([sys.executable, __file__, "--worker", model_path, batch_path, "--check",
                                str(args.check), "--steps", str(args.steps)], env=env, stdout=subprocess.PIPE,
                               text=True, check=True)
        jax_result = json.loads(child.stdout.split("RESULT ", 1)[1])

    differences = [max(abs(jax_logs[key] - value) / max(abs(value), 1e-6) for key, value in tf_logs.items())
                   for tf_logs, jax_logs in zip(tf_result["losses"], jax_result["losses"], strict=True)]
    tf_rate = args.batch / tf_result["seconds_per_step"]
    jax_rate = args.batch / jax_result["seconds_per_step"]
    print(f"SRGAN GAN step, preset {args.preset}, batch {args.batch} of {args.hr}px HR, {args.steps} timed steps")
    print(f"  tensorflow (XLA): {tf_rate:7.2f} img/s   jax (jit): {jax_rate:7.2f} img/s   ratio JAX/TF: "
          f"{jax_rate / tf_rate:.2f}")
    # The first step's losses are the same forward pass on the same weights: equal up to rounding. Later steps
    # follow Adam updates, whose first step is lr * sign(gradient): rounding can flip tiny gradients' signs.
    print(f"  largest relative loss difference JAX vs TF, step by step: "
          f"{', '.join(f'{d:.1e}' for d in differences)} (first step {'equal' if differences[0] < 1e-4 else 'DIFFERENT'}"
          f" at rtol 1e-4)")
    if differences[0] >= 1e-4:
        raise SystemExit(1)

if __name__ == "__main__":
    main()
