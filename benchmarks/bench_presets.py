"""Generator presets at equal training time: which architecture gives the most quality per unit of compute.

    python benchmarks/bench_presets.py --data data/photos-x4 --eval SET5_HR_DIR SET14_HR_DIR --minutes 30
    python benchmarks/bench_presets.py      # scikit-image's samples, scored on their test split, 5 min each

Each preset is trained by `flow.py train` (phase 1 only) with one recipe: L1 loss, Adam at --lr with cosine decay,
the same batch, patches and seed. What differs is the number of steps: each preset's phase-1 step rate is
measured first in this run, on the same CPU, with nothing else training, and the steps are what fit in --minutes
at that rate. So a cheaper network gets more steps, as it would in a user's hour. The trained generators are
then scored by `flow.py evaluate` (Y-PSNR/SSIM, border = scale) on each --eval folder, beside bicubic.

srresnet is trained as the shipped PSNR model is (no batch norm, bicubic skip): the comparison is against the
architecture that ships, not against the paper's BN variant. The printed table gives, per preset: parameters,
GFLOP per 640x360 frame, measured ms per step, steps, the run's wall time (start-up and validation included) and
each eval set's mean PSNR/SSIM.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from peak import generator_flops  # noqa: E402

import flow  # noqa: E402  (Keras loads inside the functions that need it: --help answers at once)

# srresnet as the shipped PSNR model has it; the others as their presets define them
VARIANTS = {
    "srresnet": ["--preset", "srresnet", "--no-batch-norm", "--interpolation-skip", "bicubic"],
    "imdn": ["--preset", "imdn"],
    "fast": ["--preset", "fast"],
    "video": ["--preset", "video"],
}
BUILD_OVERRIDES = {"srresnet": dict(batch_norm=False, interpolation_skip="bicubic")}
EPOCHS = 2  # validation points per run (history.csv); each validates the whole val split, which costs minutes
WARMUP_STEPS, TIMED_STEPS = 3, 12


def fastest_step(model, batch_size, patch, scale):
    """Seconds of the fastest of TIMED_STEPS train_on_batch calls of a compiled model after a warm-up (the least
    disturbed by anything else on the machine), on one random in-memory batch: the input pipeline is measured
    elsewhere (bench_train_step.py)."""
    rng = np.random.default_rng(0)
    lr = rng.random((batch_size, patch // scale, patch // scale, 3), dtype=np.float32)
    hr = rng.random((batch_size, patch, patch, 3), dtype=np.float32)
    times = []
    for k in range(WARMUP_STEPS + TIMED_STEPS):
        start = time.perf_counter()
        model.train_on_batch(lr, hr)
        if k >= WARMUP_STEPS:
            times.append(time.perf_counter() - start)
    return min(times)


def step_seconds(name, batch_size, patch, scale):
    """(seconds per phase-1 training step, parameters, GFLOP per 640x360 frame) of a preset, compiled as flow.py
    compiles it (L1, Adam)."""
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines)

    # isort: split
    import keras

    import gan
    from generator import build_generator

    model = build_generator(scale, preset=name, **BUILD_OVERRIDES.get(name, {}))
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=gan.ContentLoss("l1"), jit_compile=False)
    return fastest_step(model, batch_size, patch, scale), model.count_params(), generator_flops(model, 360, 640) / 1e9


def run_flow_train(data, out, flags):
    """`flow.py train --data DATA --out OUT FLAGS...` in a child process; returns the wall time in seconds."""
    command = [sys.executable, str(ROOT / "flow.py"), "train", "--data", str(data), "--out", str(out), *flags,
               "--verbose", "2"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def train_phase1(data, out, epochs, steps_per_epoch, batch_size, flags):
    """`flow.py train` of phase 1 alone, L1 loss, with the given further flags (preset, learning rate, seed, ...);
    returns the wall time in seconds. bench_train_step.py's A/Bs run through here too."""
    return run_flow_train(data, out, ["--pretrain-epochs", str(epochs), "--gan-epochs", "0", "--steps-per-epoch",
                                      str(steps_per_epoch), "--batch-size", str(batch_size), "--pretrain-loss", "l1",
                                      *flags])


def train(name, data, out, steps, args):
    """A preset trained with the shared recipe; returns (wall time in seconds, steps trained)."""
    per_epoch = max(1, steps // EPOCHS)
    wall = train_phase1(data, out, EPOCHS, per_epoch, args.batch_size,
                        [*VARIANTS[name], "--patch-size", str(args.patch_size), "--lr-g", str(args.lr),
                         "--lr-schedule", "cosine", "--seed", str(args.seed), "--mixed-precision",
                         args.mixed_precision, "--jit", "off"])
    return wall, per_epoch * EPOCHS


def score(model, folders, out):
    """{folder name: flow.evaluate's mean row (model_psnr, model_ssim, model_niqe, model_grid, bicubic_psnr, ...)}
    of a generator file on each folder."""
    return {Path(folder).name: flow.evaluate(str(model), str(folder), out=str(out))[0][-1] for folder in folders}


def sample_dataset(root, hr_size=128):
    """A DATASET of scikit-image's sample photos as patches of hr_size px (what the project brings), in root."""
    data = Path(root) / "samples"
    subprocess.run([sys.executable, str(ROOT / "create_dataset.py"), "--samples", "--mode", "patches", "--patches",
                    "60", "--hr-size", str(hr_size), "--out", str(data), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return data


def chosen_names(parser, text, known, what):
    """The names of a comma-separated option, each one of `known` (else a usage error naming `what`)."""
    names = [n for n in text.split(",") if n]
    unknown = set(names) - set(known)
    if unknown:
        parser.error(f"unknown {what} {sorted(unknown)}; choose from {tuple(known)}")
    return names


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="DATASET to train on (default: scikit-image's samples as patches)")
    parser.add_argument("--eval", nargs="+",
                        help="folders of HR images (e.g. Set5) or DATASETs (their test split) to score on "
                             "(default: --data)")
    parser.add_argument("--presets", default="srresnet,imdn", help=f"comma-separated subset of {tuple(VARIANTS)}")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time per preset")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--patch-size", type=int, default=128, help="HR patch side")
    parser.add_argument("--lr", type=float, default=2e-4, help="Adam's initial learning rate (cosine decay)")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = chosen_names(parser, args.presets, VARIANTS, "presets")
    import runtime  # first: Keras starts without TensorFlow's C++ log lines

    # isort: split
    import keras

    print(f"Keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs; {args.minutes:g} min per "
          f"preset, batch {args.batch_size}, HR patch {args.patch_size}, L1, lr {args.lr:g} cosine", flush=True)

    if runtime.resolve_switch(args.mixed_precision, runtime.native_bf16()):
        keras.mixed_precision.set_global_policy("mixed_bfloat16")  # the rate of what flow.py will train in
    rates = {}
    for name in names:  # all step rates first, while nothing else runs
        rates[name] = step_seconds(name, args.batch_size, args.patch_size, scale=4)
        seconds, params, gflop = rates[name]
        print(f"  {name}: {params:,} parameters, {gflop:.0f} GFLOP per 640x360 frame, {1000 * seconds:.0f} ms/step",
              flush=True)

    keep = tempfile.TemporaryDirectory() if args.out is None else None
    out = Path(args.out or keep.name)
    args.data = args.data or sample_dataset(out)
    args.eval = args.eval or [args.data]
    rows = []
    for name in names:
        seconds, params, gflop = rates[name]
        steps = max(EPOCHS, int(args.minutes * 60 / seconds))
        print(f"== {name}: {steps} steps ==", flush=True)
        wall, steps = train(name, args.data, out / name, steps, args)
        scores = {k: (m["model_psnr"], m["model_ssim"], m["bicubic_psnr"])
                  for k, m in score(out / name / "generator.keras", args.eval, out / "eval").items()}
        rows.append((name, params, gflop, seconds, steps, wall, scores))
        print(f"  {name}: trained {steps} steps in {wall / 60:.1f} min; " + ", ".join(
            f"{k} {p:.2f} dB / {s:.4f} (bicubic {b:.2f})" for k, (p, s, b) in scores.items()), flush=True)

    sets = list(rows[0][6])
    print("\n| preset | parameters | GFLOP/frame | ms/step | steps | run min | "
          + " | ".join(f"{k} PSNR / SSIM" for k in sets) + " |")
    print("|---" * (6 + len(sets)) + "|")
    for name, params, gflop, seconds, steps, wall, scores in rows:
        print(f"| {name} | {params:,} | {gflop:.0f} | {1000 * seconds:.0f} | {steps} | {wall / 60:.1f} | "
              + " | ".join(f"{scores[k][0]:.2f} / {scores[k][1]:.4f}" for k in sets) + " |")
    best = max(rows, key=lambda r: np.mean([r[6][k][0] for k in sets]))
    print(f"\nsummary: at {args.minutes:g} min each, {best[0]} scores best (mean over {', '.join(sets)}: "
          + ", ".join(f"{r[0]} {np.mean([r[6][k][0] for k in sets]):.2f} dB" for r in rows) + ")")
    if keep:
        keep.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
