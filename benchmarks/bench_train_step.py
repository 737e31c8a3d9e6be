"""Training-step speed: this project's Keras fit paths against a plain TF2 GradientTape loop, in the same run.

    .venv/bin/python benchmarks/bench_train_step.py            # ~5-8 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_train_step.py --steps 3 --rounds 2 --variants fit,bf16

Batch 16 of 32x32 LR -> 128x128 HR (x4), the `srresnet` generator preset, Adam(1e-4).
  phase 1: the generator alone, MSE (generator.compile + fit, gan.ContentLoss)
  phase 2: SRGAN, MSE content + 1e-3 adversarial against the 128x128 discriminator (gan.SRGAN + fit)
Implementations, all from the same initial weights and the same batch:
  baseline  a @tf.function GradientTape loop without XLA, as earlier TF2 SRGAN code does (krasserm's trainer)
  fit       keras fit(), float32, no XLA
  xla       keras fit(), float32, jit_compile=True
  bf16      keras fit(), mixed_bfloat16 policy (bf16 compute, float32 weights), no XLA
Checks: the first LOSS_STEPS losses of every path against the baseline's (float32 paths: rtol 1e-4, atol 1e-6;
bf16 is another precision: rtol 5e-2, atol 1e-3). The batch is crops of scikit-image's sample photos. Timing interleaves the implementations round by round (teammates share the
machine, so load drifts and comes in bursts): the best round's img/s is the headline, with the median of
per-round ratios and the ratio of CPU seconds per step (the work done; little affected by other processes)
beside it.
--ab-steps N: phase 1 of a preset trained N steps twice by flow.py, the same seed and data (scikit-image's
samples as patches), differing only in what --ab names: precision (--mixed-precision off and on: the validation
PSNR difference decides whether bf16 training is safe, within 0.05 dB, where the hardware has it natively) and
ema (--ema 0 and 0.999 at a constant learning rate: whether validating and exporting the average helps).
Phase 1 also gives each path's share of the CPU's peak (benchmarks/peak.py, measured first in the same run):
its img/s times 3 forward passes' FLOPs over the fp32 peak (the bf16 peak for bf16).
Last: phase-1 fit fed by the real tf.data pipeline over PNG files (training.tf_pair_dataset) vs in-memory tensors.

NO_AUTOTUNE: on this 2-core machine, fit() fed by a tf.data pipeline with autotuning on (which Keras' own array
adapter also uses) stalls: a 3.1 s step often takes 5.1 s of wall time, for the same CPU time. The in-memory feed
here therefore runs with autotune off; the PNG pipeline is measured both as flow.py builds it and with it off.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ----------------------------------------------------------------------------- configuration
BATCH = 16
LR_SIZE = 32
SCALE = 4
PRESET = "srresnet"
LEARNING_RATE = 1e-4
ADVERSARIAL_WEIGHT = 1e-3
SEED = 0
STEPS = 2  # timed steps per implementation per round
ROUNDS = 4  # several short rounds: the best round is the least disturbed by other processes
LOSS_STEPS = 3  # steps compared with the baseline's; they also warm up (tracing, XLA, oneDNN primitive caches)
DATA_IMAGES = 48  # PNG pairs written for the tf.data measurement
VARIANTS = ("baseline", "fit", "xla", "bf16")
TOLERANCE = {"fit": (1e-4, 1e-6), "xla": (1e-4, 1e-6), "bf16": (5e-2, 1e-3)}  # (rtol, atol) against baseline
BASELINE_FIGURES = {"phase 1": 3.7, "phase 2": 2.0}  # img/s the issue measured for the baseline on this machine


# ----------------------------------------------------------------------------- models and data
def fixed_batch(root):
    """The first BATCH pairs of the PNG dataset as in-memory float32 tensors."""
    from PIL import Image

    names = sorted((root / "train" / "hr").glob("*.png"))[:BATCH]
    load = [np.stack([np.asarray(Image.open(root / "train" / sub / n.name), np.float32) / 255 for n in names])
            for sub in ("lr", "hr")]
    return tf.constant(load[0]), tf.constant(load[1])
# precision: float32 against bfloat16 compute, from scratch, 1e-3 with cosine decay, as phase 1 trains.
# ema: the raw weights against their moving average (decay 0.999), fine-tuning the shipped model of the preset at
#      a constant 1e-4, as the GAN phase trains: the weights keep moving and an average has their noise to remove.
#      (From scratch an average over the first ~1000 steps only lags: -0.76 dB after 1500 steps of the video
#      preset at 1e-3, measured.)
AB_VARIANTS = {
    "precision": {"fp32": ["--mixed-precision", "off"], "bf16": ["--mixed-precision", "on"]},
    "ema": {"raw": ["--mixed-precision", "off", "--ema", "0"], "ema": ["--mixed-precision", "off", "--ema", "0.999"]},
}
AB_RECIPES = {"precision": ["--lr-g", "1e-3", "--lr-schedule", "cosine"],
              "ema": ["--lr-g", "1e-4", "--lr-schedule", "constant"]}


def parse_args(argv=None):
    """The command line, with its checks (argparse only: no Keras needed to answer it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=STEPS, help="timed steps per implementation per round")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="interleaved timing rounds")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    parser.add_argument("--phases", default="1,2", help="which phases to time: 1, 2, 1,2 or '' (none)")
    parser.add_argument("--input-variant", default="fit", help="the fit path timed with real input ('' to skip)")
    parser.add_argument("--ab-steps", type=int, default=0,
                        help="also train phase 1 this many steps twice (see --ab) and compare validation PSNR")
    parser.add_argument("--ab", default="precision", help=f"comma-separated A/Bs to run: {tuple(AB_VARIANTS)}")
    parser.add_argument("--ab-preset", default="video", help="the generator preset of the A/B runs")
    args = parser.parse_args(argv)
    if set(filter(None, args.ab.split(","))) - set(AB_VARIANTS):
        parser.error(f"--ab: choose from {tuple(AB_VARIANTS)}")
    args.variants = ["baseline"] + [v for v in args.variants.split(",") if v and v != "baseline"]
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    return args


if __name__ == "__main__":
    parse_args()  # --help and usage errors answer here, before Keras loads below

import runtime  # noqa: E402, F401  (first: Keras starts without TensorFlow's C++ log lines)

# isort: split
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.get_logger().setLevel("ERROR")  # many models trace side by side here: the retracing warnings are expected

from peak import describe_peak, generator_flops, measure_peak  # noqa: E402

from discriminator import build_discriminator  # noqa: E402
from gan import SRGAN, ContentLoss  # noqa: E402
from generator import build_generator  # noqa: E402


def template_weights():
    """Initial generator and discriminator weights, shared by every implementation."""
    keras.utils.set_random_seed(SEED)
    generator = build_generator(SCALE, preset=PRESET)
    discriminator = build_discriminator(LR_SIZE * SCALE)
    return generator.get_weights(), discriminator.get_weights()


def build_models(weights, policy="float32"):
    """A fresh generator and discriminator under a dtype policy, with the template's weights."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        generator = build_generator(SCALE, preset=PRESET)
        discriminator = build_discriminator(LR_SIZE * SCALE)
    finally:
        keras.config.set_dtype_policy(previous)
    generator.set_weights(weights[0])
    discriminator.set_weights(weights[1])
    return generator, discriminator


# ----------------------------------------------------------------------------- the baseline: a plain TF2 loop
class BaselinePhase1:
    """@tf.function GradientTape loop on the generator, no XLA."""

    def __init__(self, weights):
        self.generator, _ = build_models(weights)
        self.optimizer = keras.optimizers.Adam(LEARNING_RATE)

        @tf.function
        def step(lr, hr):
            with tf.GradientTape() as tape:
                sr = self.generator(lr, training=True)
                loss = tf.reduce_mean(tf.square(hr - sr))
            grads = tape.gradient(loss, self.generator.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.generator.trainable_variables, strict=True))
            return loss

        self.step = step

    def losses(self, lr, hr, steps):
        return [float(self.step(lr, hr)) for _ in range(steps)]

    def run(self, lr, hr, steps):
        for _ in range(steps):
            loss = self.step(lr, hr)
        float(loss)  # wait for the last step


class BaselinePhase2:
    """krasserm/super-resolution's SRGAN train_step: two tapes over one forward pass, @tf.function, no XLA."""

    def __init__(self, weights):
        self.generator, self.discriminator = build_models(weights)
        self.g_optimizer, self.d_optimizer = keras.optimizers.Adam(LEARNING_RATE), keras.optimizers.Adam(LEARNING_RATE)
        bce = keras.losses.BinaryCrossentropy(from_logits=True)

        @tf.function
        def step(lr, hr):
            with tf.GradientTape() as gen_tape, tf.GradientTape() as disc_tape:
                sr = self.generator(lr, training=True)
                hr_output = self.discriminator(hr, training=True)
                sr_output = self.discriminator(sr, training=True)
                con_loss = tf.reduce_mean(tf.square(hr - sr))
                gen_loss = bce(tf.ones_like(sr_output), sr_output)
                perc_loss = con_loss + ADVERSARIAL_WEIGHT * gen_loss
                disc_loss = bce(tf.ones_like(hr_output), hr_output) + bce(tf.zeros_like(sr_output), sr_output)
            g_vars, d_vars = self.generator.trainable_variables, self.discriminator.trainable_variables
            self.g_optimizer.apply_gradients(zip(gen_tape.gradient(perc_loss, g_vars), g_vars, strict=True))
            self.d_optimizer.apply_gradients(zip(disc_tape.gradient(disc_loss, d_vars), d_vars, strict=True))
            return perc_loss, disc_loss

        self.step = step

    def losses(self, lr, hr, steps):
        return [tuple(float(v) for v in self.step(lr, hr)) for _ in range(steps)]

    def run(self, lr, hr, steps):
        for _ in range(steps):
            out = self.step(lr, hr)
        float(out[0])


# ----------------------------------------------------------------------------- this project's paths: fit()
class FitPath:
    """generator.compile/fit (phase 1) or SRGAN.compile/fit (phase 2), timed one fit() call per round."""

    def __init__(self, phase, weights, *, jit, policy):
        generator, discriminator = build_models(weights, policy)
        self.phase = phase
        if phase == "phase 1":
            self.model = generator
            self.model.compile(keras.optimizers.Adam(LEARNING_RATE), loss=ContentLoss("mse"), jit_compile=jit)
        else:
            self.model = SRGAN(generator, discriminator)
            self.model.compile(keras.optimizers.Adam(LEARNING_RATE), keras.optimizers.Adam(LEARNING_RATE),
                               content_loss="mse", adversarial_weight=ADVERSARIAL_WEIGHT, jit_compile=jit)

    def losses(self, lr, hr, steps):
        """One fit() epoch per step, so each epoch's logged loss is that step's (and fit's function is traced)."""
        if not steps:
            return []
        history = self.run(lr, hr, 1, epochs=steps).history
        if self.phase == "phase 1":
            return history["loss"]
        return list(zip(history["g_loss"], history["d_loss"], strict=True))

    def run(self, lr, hr, steps, dataset=None, epochs=1):
        data = dataset if dataset is not None else without_autotune(tf.data.Dataset.from_tensors((lr, hr)).repeat())
        return self.model.fit(data, epochs=epochs, steps_per_epoch=steps, shuffle=False, verbose=0)


def make_implementation(name, phase, weights):
    if name == "baseline":
        return BaselinePhase1(weights) if phase == "phase 1" else BaselinePhase2(weights)
    return FitPath(phase, weights, jit=name == "xla", policy="mixed_bfloat16" if name == "bf16" else "float32")


# ----------------------------------------------------------------------------- measuring
def check_losses(impls, lr, hr):
    """Each path's first LOSS_STEPS losses against the baseline's, from identical weights; prints and returns ok."""
    reference = np.asarray(impls["baseline"].losses(lr, hr, LOSS_STEPS), np.float64)
    ok = True
    print(f"  losses of the first {LOSS_STEPS} steps (phase 2: perceptual, discriminator):")
    print(f"    {'baseline':9s} {np.array2string(reference, precision=6)}")
    for name, impl in impls.items():
        if name == "baseline":
            continue
        losses = np.asarray(impl.losses(lr, hr, LOSS_STEPS), np.float64)
        rtol, atol = TOLERANCE[name]
        worst = float(np.max(np.abs(losses - reference) / np.maximum(np.abs(reference), 1e-12)))
        same = bool(np.allclose(losses, reference, rtol=rtol, atol=atol))
        ok &= same
        print(f"    {name:9s} {np.array2string(losses, precision=6)}  max rel diff {worst:.1e} "
              f"({'ok' if same else 'DIFFERENT'}: rtol {rtol:g}, atol {atol:g})")
    return ok


def time_steps(impl, lr, hr, steps, dataset=None):
    start = time.perf_counter()
    if dataset is None:
        impl.run(lr, hr, steps)
    else:
        impl.run(lr, hr, steps, dataset=dataset)
    return time.perf_counter() - start


def measure(impls, lr, hr, steps, rounds):
    """Interleaved timing: {name: {"rate": [img/s per round], "cpu": [CPU seconds per step per round]}}."""
    results = {name: {"rate": [], "cpu": []} for name in impls}
    for r in range(rounds):
        for name, impl in impls.items():
            cpu = time.process_time()
            seconds = time_steps(impl, lr, hr, steps)
            results[name]["rate"].append(BATCH * steps / seconds)
            results[name]["cpu"].append((time.process_time() - cpu) / steps)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {v['rate'][-1]:.2f}" for n, v in results.items())
              + " img/s", flush=True)
    return results


def speedups(results, name):
    """name's speed-ups over the baseline: (best round's img/s, median of per-round ratios, CPU s per step)."""
    mine, base = results[name], results["baseline"]
    return (max(mine["rate"]) / max(base["rate"]),
            statistics.median(m / b for m, b in zip(mine["rate"], base["rate"], strict=True)),
            statistics.median(base["cpu"]) / statistics.median(mine["cpu"]))


def report(phase, results, peak):
    """Best round (least disturbed by other processes), median of rounds, and CPU time (the work done); for
    phase 1, the best round's share of this run's peak (training ~ 3 forward passes: forward, and the
    backward pass's two products per layer)."""
    print(f"  {phase} summary (the issue's baseline figure: {BASELINE_FIGURES[phase]} img/s). Speed-ups by best round"
          f" | median round | CPU time per step:")
    train_flops = 3 * generator_flops(build_generator(SCALE, preset=PRESET), LR_SIZE, LR_SIZE)
    for name, r in results.items():
        best, median_ratio, cpu_ratio = speedups(results, name)
        share = ""
        if phase == "phase 1":
            precision = "bf16" if name == "bf16" else "fp32"
            share = f" | {max(r['rate']) * train_flops / 1e9 / peak[precision]:5.1%} of the {precision} peak"
        print(f"    {name:9s} best {max(r['rate']):6.2f} img/s ({1000 * BATCH / max(r['rate']):5.0f} ms/step) "
              f"x{best:.2f} | median {statistics.median(r['rate']):6.2f} img/s x{median_ratio:.2f} | "
              f"{statistics.median(r['cpu']):5.2f} CPU-s/step x{cpu_ratio:.2f}{share}")


def bench_phase(phase, weights, batch, variants, steps, rounds, peak):
    print(f"\n== {phase}: batch {BATCH}, {LR_SIZE}x{LR_SIZE} -> {LR_SIZE * SCALE}x{LR_SIZE * SCALE}, {PRESET} ==",
          flush=True)
    lr, hr = batch
    impls = {name: make_implementation(name, phase, weights) for name in variants}
    # loss check first (fresh optimizers: every path starts at step 0 from the same weights); it warms up too
    start = time.perf_counter()
    ok = check_losses(impls, lr, hr)
    print(f"  (loss check and warm-up, tracing and compilation included: {time.perf_counter() - start:.0f}s)")
    results = measure(impls, lr, hr, steps, rounds)
    report(phase, results, peak)
    return results, ok


# ----------------------------------------------------------------------------- real input: tf.data over PNGs
def write_png_dataset(root, count):
    """A DATASET train split of HR crops from scikit-image's sample photos and their bicubic LR (Pillow)."""
    from PIL import Image
    from skimage import data as samples

    hr_size = LR_SIZE * SCALE
    photos = [getattr(samples, n)() for n in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")]
    rng = np.random.default_rng(SEED)
    for sub in ("hr", "lr"):
        (root / "train" / sub).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - hr_size), rng.integers(0, photo.shape[1] - hr_size)
        hr = Image.fromarray(photo[y:y + hr_size, x:x + hr_size, :3])
        hr.save(root / "train" / "hr" / f"crop-{i:03d}.png")
        hr.resize((LR_SIZE, LR_SIZE), Image.BICUBIC).save(root / "train" / "lr" / f"crop-{i:03d}.png")
    return root


def png_input(root):
    """flow.py's training pipeline over the PNGs (decode, cache, shuffle, augment, batch, prefetch)."""
    import create_dataset
    import training

    split, scale = create_dataset.scan_split(root, "train")
    return training.tf_pair_dataset(split, batch_size=BATCH, scale=scale, seed=SEED), "training.tf_pair_dataset"


def without_autotune(dataset):
    """The dataset with tf.data autotuning off (see NO_AUTOTUNE)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def bench_input(weights, root, batch, name, steps, rounds):
    print(f"\n== input: phase-1 fit ({name}) fed by tf.data over PNG files vs in-memory tensors ==", flush=True)
    lr, hr = batch
    impl = make_implementation(name, "phase 1", weights)
    dataset, source = png_input(root)
    start = time.perf_counter()
    batches = sum(1 for _ in dataset.take(4 * steps))
    print(f"  {source} alone: {BATCH * batches / (time.perf_counter() - start):.0f} img/s (input only, no training)")
    feeds = {"in-memory": None, "PNG": dataset, "PNG no-autotune": without_autotune(dataset)}
    for feed in feeds.values():
        time_steps(impl, lr, hr, 1, dataset=feed)  # warm-up: tracing, oneDNN primitives, file cache
    ms = {k: [] for k in feeds}
    cpu = {k: [] for k in feeds}
    for r in range(rounds):  # rotate the order, so a change of load hits every feed alike
        names = list(feeds)[r % len(feeds):] + list(feeds)[:r % len(feeds)]
        for k in names:
            start = time.process_time()
            ms[k].append(1000 * time_steps(impl, lr, hr, steps, dataset=feeds[k]) / steps)
            cpu[k].append((time.process_time() - start) / steps)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{k} {ms[k][-1]:.0f} ms/step ({cpu[k][-1]:.2f} CPU-s)"
                                                     for k in feeds), flush=True)
    ratio = min(ms["PNG"]) / min(ms["in-memory"])
    for k in feeds:
        r = min(ms[k]) / min(ms["in-memory"])
        print(f"  {k:16s} best {min(ms[k]):6.0f} ms/step {100 * (r - 1):+6.1f}% | median {statistics.median(ms[k]):6.0f}"
              f" ms/step | {statistics.median(cpu[k]):.2f} CPU-s/step")
    print(f"  input summary: {source} {100 * (ratio - 1):+.1f}% vs in-memory (best rounds): "
          f"{'within' if abs(ratio - 1) <= 0.10 else 'NOT within'} 10%")
    return ratio


# ----------------------------------------------------------------------------- quality A/Bs: bf16, EMA
# Each A/B: two flow.py phase-1 runs that differ only in these flags (same seed, data and steps).



def ab_init(kind, preset):
    """--init-generator flags of an A/B: the ema A/B fine-tunes the shipped model of the preset (the video model;
    the shipped PSNR model is srresnet without batch norm, not the preset as it is)."""
    import presets

    return ["--init-generator", str(presets.SHIPPED_MODELS["video"])] if kind == "ema" and preset == "video" else []


def flow_ab(kind, steps, preset):
    """Two `flow.py train` runs of phase 1 that differ only in AB_VARIANTS[kind], the same seed, data and steps;
    returns {variant: (val PSNR dB of the exported weights, seconds)}."""
    import csv

    from bench_presets import sample_dataset, train_phase1

    with tempfile.TemporaryDirectory() as tmp:
        data = sample_dataset(tmp, hr_size=LR_SIZE * SCALE)
        results = {}
        for variant, flags in AB_VARIANTS[kind].items():
            run = Path(tmp) / variant
            seconds = train_phase1(data, run, 1, steps, BATCH, ["--preset", preset, *AB_RECIPES[kind],
                                                                 *ab_init(kind, preset), "--seed", str(SEED), *flags])
            with open(run / "history.csv", newline="") as f:
                psnr = float(list(csv.DictReader(f))[-1]["val_psnr"])
            results[variant] = (psnr, seconds)
            print(f"  {variant}: validation PSNR {psnr:.3f} dB after {steps} steps ({seconds:.0f} s)", flush=True)
    return results


def ab_summary(kind, results, steps):
    """One summary line for an A/B's results."""
    (a, (psnr_a, time_a)), (b, (psnr_b, time_b)) = results.items()
    diff = psnr_b - psnr_a
    line = f"{b} validation PSNR {diff:+.3f} dB vs {a} after {steps} steps"
    if kind == "precision":
        return line + f" ({'within' if abs(diff) <= 0.05 else 'NOT within'} 0.05 dB), {time_a / time_b:.2f}x the speed"
    return line + f" ({'helps' if diff > 0.05 else 'hurts' if diff < -0.05 else 'no difference beyond 0.05 dB'})"


def main(argv=None):
    args = parse_args(argv)
    variants = args.variants
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs, "
          f"devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    peak = measure_peak()
    print(f"peak of this CPU now: {describe_peak(peak)}")
    weights = template_weights()
    tmp = tempfile.TemporaryDirectory()
    root = write_png_dataset(Path(tmp.name) / "dataset", DATA_IMAGES)
    batch = fixed_batch(root)
    all_ok, summary = True, []
    for phase in (f"phase {p}" for p in args.phases.split(",") if p):
        results, ok = bench_phase(phase, weights, batch, variants, args.steps, args.rounds, peak)
        all_ok &= ok
        for name in results:
            if name != "baseline":
                best, median_ratio, cpu_ratio = speedups(results, name)
                summary.append(f"{phase} {name} x{best:.2f} (median x{median_ratio:.2f}, CPU x{cpu_ratio:.2f})")
    if args.input_variant:
        ratio = bench_input(weights, root, batch, args.input_variant, args.steps, args.rounds)
        summary.append(f"PNG input {100 * (ratio - 1):+.1f}% vs in-memory")
    tmp.cleanup()
    for kind in (k for k in args.ab.split(",") if k and args.ab_steps):
        print(f"\n== A/B: phase 1 of the {args.ab_preset} preset, {args.ab_steps} steps, "
              f"{' vs '.join(AB_VARIANTS[kind])} ==", flush=True)
        summary.append(ab_summary(kind, flow_ab(kind, args.ab_steps, args.ab_preset), args.ab_steps))
    print(f"\nsummary: {'; '.join(summary)}; losses {'match' if all_ok else 'DIFFER'} (see above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
