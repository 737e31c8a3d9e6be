"""One prepared GPU run: every shipped model trained on a wall-clock budget, its figures in one JSON.

    make accelerator OUT=out/accelerator                  # = python accelerator.py --out out/accelerator
    python accelerator.py --out /tmp/acc --tiny           # the same steps on a CPU in about a minute (tests)

Made for a lent GPU machine that has minutes, no network and no TensorFlow (docs/accelerator.md gives the
command line to paste). Every step is a command line of this project, run as a subprocess under
KERAS_BACKEND=jax:

 1. the DATASETs, from the packed photos (weights/pack_photos.sh) and scikit-image's samples:
    create_dataset.py PHOTOS --samples --mode patches --patches 300 (weights/DATA.md's data/photos2-x4), and for
    the stream model the same with STREAM_CODEC (pairs cut from libx264 streams, as weights/train.sh step 8);
 2. the runs, each `flow.py train --time-budget MINUTES`, which stops at its budget with its state saved and its
    best epoch exported: the stream model beside the PSNR model, then the GAN from the PSNR model's generator
    (PARALLEL: two processes share the GPU, each with XLA_PYTHON_CLIENT_MEM_FRACTION of its memory, so one
    computes while the other validates on the CPU; else one after another);
 3. into OUT, at most 8 files: each model's generator (.keras) and history.csv, figures.json and accelerator.log.

figures.json holds, per model: steps done, median step time, images/s, the share of step time spent waiting for
input (flow's speed.json), the FLOPs of a step (convolutions counted by benchmarks/peak.generator_flops), the
FLOP/s that makes and its share of the GPU's dense bf16 peak, epochs, the best validation scores and the resolved
settings of the run's config.json. Bad input (photos over the size limit, a missing package, too few minutes for
a run to validate once) stops it with one line before anything runs.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import presets
import resizer

# ---------------------------------------------------------------- the run, as plain values
MINUTES = 7.5  # the whole command, dataset included: inside 9 minutes, and a 15-minute lease with the start
STREAM_PRESET = "stream"  # the stream model's preset: luma-first, within the on-device budget
PSNR_PRESET = "imdn"  # the PSNR model: best PSNR per FLOP of the presets at equal training time (model card)
PARALLEL = True  # the stream run beside the PSNR -> GAN runs (two processes on one GPU)
MEM_FRACTION = 0.45  # of the GPU's memory per process when PARALLEL (JAX preallocates it)
PHOTOS = Path("data/accel-photos")  # weights/pack_photos.sh makes it; the device run carries it
PHOTOS_LIMIT_MIB = 40
DATASET = Path("data/accel-x4")
STREAM_DATASET = Path("data/accel-stream-x4")
STREAM_CODEC = ["--codec", "libx264", "--crf", "18", "35", "--clean-share", "0.2"]  # as weights/train.sh step 8
RUNS = Path("runs/accelerator")
PATCHES = 300  # per photo, as weights/DATA.md's datasets
VAL_LIMIT = 192  # validation pairs per epoch (of 903): validation runs on the CPU while the GPU waits
DATASET_ALLOWANCE_MIN = 1.0  # minutes each dataset may take when it must be made (57 photos, 16 cores)
RESERVE_MIN = 0.4  # after the runs: copies, FLOP counts, the JSON
MIN_RUN_MIN = 1.2  # below this a run cannot start, compile, train one epoch and validate it on the GPU
PSNR_SHARE = 0.55  # of the PSNR -> GAN minutes, the PSNR run's
SEQUENTIAL_SHARES = {"stream": 0.3, "psnr": 0.38, "gan": 0.32}
# Dense bf16 tensor-core peak in FLOP/s by device name: NVIDIA's H200 SXM datasheet gives 1,979 TFLOPS bf16 with
# sparsity, i.e. 989 dense (the same as the H100 SXM's)
PEAK_BF16 = {"NVIDIA H200": 989e12, "NVIDIA H100 80GB HBM3": 989e12}
PEAK_SOURCE = "NVIDIA H200 Tensor Core GPU datasheet: BF16 Tensor Core 1,979 TFLOPS with sparsity = 989 dense"
PACKAGES = ("keras", "namex", "optree", "jax", "numpy", "PIL", "skimage", "scipy", "tqdm", "h5py", "ml_dtypes",
            "absl", "rich")
# The recipes: flow.py options besides --data, --out and --time-budget. Epochs are timed (--epoch-seconds), so
# however fast the GPU turns out, every run validates and exports every EPOCH_SECONDS; MAX_STEPS only caps them.
EPOCH_SECONDS = 40
MAX_STEPS = 100_000
RECIPES = {
    "stream": ["--preset", STREAM_PRESET, "--pretrain-epochs", "100000", "--gan-epochs", "0", "--batch-size", "1024",
               "--pretrain-loss", "l1", "--seed", "1"],
    "psnr": ["--preset", PSNR_PRESET, "--pretrain-epochs", "100000", "--gan-epochs", "0", "--batch-size", "256",
             "--pretrain-loss", "l1", "--seed", "1"],
    # ESRGAN's recipe on the U-Net discriminator (Real-ESRGAN): perceptual (offline VGG16) + 5e-3 RaGAN
    "gan": ["--preset", PSNR_PRESET, "--pretrain-epochs", "0", "--gan-epochs", "100000", "--batch-size", "64",
            "--discriminator", "unet", "--gan-loss", "ragan", "--content-loss", "vgg16", "--adversarial-weight",
            "5e-3", "--seed", "3"],
}
# --tiny: the same steps on a CPU (tests): scikit-image's samples, 8-filter models, 32 px crops, an epoch or two
# per run (each ends when done, its budget a ceiling), and XLA's quick code generation: on a CPU each weight
# initialiser's shape and the GAN's step compile for seconds to a minute otherwise
TINY = {"minutes": 3.0, "xla_flags": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
        "dataset_allowance": 0.1, "reserve": 0.2, "min_run": 0.5, "patches": 12, "val_limit": 8,
        "psnr_share": 0.35,
        "extra": ["--filters", "8", "--blocks", "1", "--batch-size", "4", "--patch-size", "32", "--d-filters", "8",
                  "--mixed-precision", "off", "--steps-per-epoch", "3"],
        "epochs": {"stream": ["--pretrain-epochs", "2"], "psnr": ["--pretrain-epochs", "1"],
                   "gan": ["--gan-epochs", "1"]}}
OUTPUT_NAMES = {"stream": "stream_x4", "psnr": "psnr_x4", "gan": "gan_x4"}


# ---------------------------------------------------------------- checks before anything runs
def check_packages():
    """A one-line ValueError naming the PACKAGES this Python cannot import (wheels to carry: make
    accelerator-wheels); TensorFlow is not needed."""
    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"{', '.join(missing)}: not importable by {sys.executable}; carry their wheels "
                         "(make accelerator-wheels, then install .whl/*.whl as docs/accelerator.md shows)")


def check_photos(photos):
    """The packed photos: a RAW folder with a manifest, at most PHOTOS_LIMIT_MIB (what may travel)."""
    limit_mib = PHOTOS_LIMIT_MIB
    photos = Path(photos)
    if not (photos / "manifest.jsonl").is_file():
        raise ValueError(f"{photos}: no packed photos (manifest.jsonl); run make accelerator-pack and carry it")
    size = sum(p.stat().st_size for p in photos.rglob("*") if p.is_file())
    if size > limit_mib * 2**20:
        raise ValueError(f"{photos}: {size / 2**20:.1f} MiB of photos, over the {limit_mib} MiB that may travel")


def plan_budgets(minutes_left, parallel, min_run, psnr_share=PSNR_SHARE):
    """{run: minutes} for the stream, PSNR and GAN runs out of minutes_left; a one-line ValueError when one would
    get less than min_run (too little to compile, train an epoch and validate it)."""
    if parallel:
        budgets = {"stream": minutes_left, "psnr": minutes_left * psnr_share, "gan": minutes_left * (1 - psnr_share)}
    else:
        budgets = {name: minutes_left * share for name, share in SEQUENTIAL_SHARES.items()}
    short = {name: minutes for name, minutes in budgets.items() if minutes < min_run}
    if short:
        raise ValueError(f"--minutes leaves {', '.join(f'{k} {v:.2f}' for k, v in short.items())} min: a run needs "
                         f"at least {min_run:g} min to train and validate one epoch; give more --minutes")
    return budgets


# ---------------------------------------------------------------- the runs
def child_env(parallel, runs):
    """The environment of every step: JAX, no TensorFlow needed, unbuffered output, a share of the GPU's memory,
    and one XLA compilation cache for all runs (the GAN run compiles much of what the PSNR run did; on a CPU each
    weight initialiser's shape compiles for seconds), unless JAX_COMPILATION_CACHE_DIR names one already."""
    env = {"JAX_COMPILATION_CACHE_DIR": str(Path(runs).resolve() / "xla-cache"), **os.environ,
           "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3",
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    if parallel:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{MEM_FRACTION:g}"
    return env


def make_dataset(photos, dataset, patches, log, env, extra=()):
    """create_dataset.py over the packed photos (none with --tiny) and the samples, with extra options (the
    stream model's codec); returns the seconds taken."""
    started = time.time()
    sources = [str(photos)] if photos else []
    command = [sys.executable, "create_dataset.py", *sources, "--samples", "--mode", "patches", "--patches",
               str(patches), "--out", str(dataset), "--quiet", *extra]
    with open(log, "w") as out:
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if status:
        raise RuntimeError(f"create_dataset.py exited {status}; see {log}")
    return time.time() - started


def flow_command(name, dataset, run, minutes, val_limit, extra=(), init=None):
    """The flow.py train command line of one run (extra options last: they override the recipe's)."""
    command = [sys.executable, "flow.py", "train", "--data", str(dataset), "--out", str(run), *RECIPES[name],
               "--steps-per-epoch", str(MAX_STEPS), "--epoch-seconds", str(EPOCH_SECONDS), "--val-limit",
               str(val_limit), "--time-budget", f"{minutes:.3f}", "--verbose", "2", *extra]
    return command + (["--init-generator", str(init)] if init else [])


class Child:
    """One flow.py run as a subprocess, its output in a log file; stopped (SIGTERM, then SIGKILL) if it overruns."""

    def __init__(self, name, command, log, env, minutes):
        self.name, self.log, self.minutes, self.started = name, Path(log), minutes, time.time()
        self.file = open(self.log, "w")  # noqa: SIM115 (closed in wait)
        self.file.write(" ".join(command) + "\n")
        self.file.flush()
        self.process = subprocess.Popen(command, stdout=self.file, stderr=subprocess.STDOUT, env=env)
        print(f"[accelerator] {name}: started, budget {minutes:.2f} min", flush=True)

    def wait(self, grace=30):
        """The exit status; past its budget and the grace seconds the run is asked to stop (it saves its state)."""
        limit = self.started + 60 * self.minutes + grace
        while self.process.poll() is None:
            if time.time() > limit:
                self.process.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=15)
                if self.process.poll() is None:
                    self.process.kill()
                break
            time.sleep(0.5)
        status = self.process.wait()
        self.file.close()
        self.seconds = time.time() - self.started
        print(f"[accelerator] {self.name}: exit {status} after {self.seconds / 60:.2f} min", flush=True)
        return status


# ---------------------------------------------------------------- figures
def step_flops(name, config, count_flops):
    """(FLOPs of one training step, what was counted): forward passes x batch. A pixel-loss step is ~3 forward
    passes of the generator (forward, and the backward pass's two products); the GAN step (gan.py's JAX step: one
    forward pass, two pullbacks) ~3 of the generator, 8 of the discriminator (HR and SR forward, their backward
    passes for the discriminator's gradient, SR's again for the generator's) and 4 of the VGG (HR and SR forward,
    SR backward)."""
    lr_side = (config["patch_size"] or config["hr_size"]) // config["scale"]
    hr_side = lr_side * config["scale"]
    g = count_flops("generator", lr_side)
    if name != "gan":
        return 3 * g * config["batch_size"], "3 x generator forward"
    d = count_flops("discriminator", hr_side)
    vgg = count_flops("vgg", hr_side)
    return (3 * g + 8 * d + 4 * vgg) * config["batch_size"], "3 x generator + 8 x discriminator + 4 x VGG16 forward"


def network_counter(run, config):
    """count(network, side) -> forward FLOPs of one side x side image through the run's generator, discriminator or
    the vgg16 loss's VGG (benchmarks/peak.generator_flops)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "benchmarks"))
    import peak

    from generator import load_generator

    def count(network, side):
        if network == "generator":
            model = load_generator(run / "generator.keras")
        elif network == "discriminator":
            from discriminator import build_discriminator

            d = config["discriminator"]
            model = build_discriminator(hr_size=d["hr_size"], filters=d["filters"], kind=d["kind"])
        else:
            import gan

            model = gan.build_vgg16_features(config["vgg_weights"])
        return peak.generator_flops(model, side, side)

    return count


def model_figures(name, run, status, budget, seconds, peak):
    """figures.json's entry for one run (None values where the run left nothing to read)."""
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    phase = "gan" if name == "gan" else "pretrain"
    speed = json.loads((run / "speed.json").read_text()).get(phase, {}) if (run / "speed.json").is_file() else {}
    best = json.loads((run / "best.json").read_text()).get(phase) if (run / "best.json").is_file() else None
    rows = [r for r in read_history(run / "history.csv") if r.get("phase") == phase]
    figures = {"exit_status": status, "budget_min": round(budget, 3), "took_min": round(seconds / 60, 3),
               "steps": speed.get("steps"), "timed_steps": speed.get("timed_steps"),
               "step_time_ms": 1e3 * speed["step_time_s"] if speed.get("step_time_s") else None,
               "images_per_s": speed.get("images_per_s"), "input_wait_share": speed.get("input_wait_share"),
               "input": speed.get("input"), "epochs": len(rows), "best": best}
    if config:
        figures["settings"] = {k: config.get(k) for k in ("preset", "batch_size", "steps_per_epoch", "patch_size",
                                                          "lr_g", "lr_d", "lr_rule", "lr_schedule", "content_loss",
                                                          "discriminator", "gan_loss", "adversarial_weight",
                                                          "time_budget", "val_limit", "runtime")}
    if config and (run / "generator.keras").is_file() and speed.get("step_time_s"):
        flops, counted = step_flops(name, config, network_counter(run, config))
        achieved = flops / speed["step_time_s"]
        figures.update(flops_per_step=flops, flops_counted=counted, tflops_per_s=achieved / 1e12,
                       peak_bf16_share=achieved / peak if peak else None)
    return figures


def read_history(path):
    """history.csv rows (empty when there is none); csv only, so no Keras is loaded for it."""
    import csv

    if not Path(path).is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the command
def run_all(args):
    """Checks, dataset, runs, outputs; returns the exit status (0: every model exported)."""
    started = time.time()
    tiny = TINY if args.tiny else None
    minutes = args.minutes or (tiny["minutes"] if tiny else MINUTES)
    min_run = tiny["min_run"] if tiny else MIN_RUN_MIN
    reserve = tiny["reserve"] if tiny else RESERVE_MIN
    out, runs = Path(args.out), Path(args.runs)
    datasets = {"clean": Path(args.data), "stream": Path(args.stream_data)}
    check_packages()
    unknown = {STREAM_PRESET, PSNR_PRESET} - set(presets.GENERATOR_PRESETS)
    if unknown:
        raise ValueError(f"accelerator.py names unknown presets: {', '.join(sorted(unknown))}")
    photos = None if tiny else Path(args.photos)
    if photos is not None:
        check_photos(photos)
    make = [kind for kind, folder in datasets.items() if not (folder / "manifest.json").is_file()]
    allowance = (tiny["dataset_allowance"] if tiny else DATASET_ALLOWANCE_MIN) * len(make)
    psnr_share = tiny["psnr_share"] if tiny else PSNR_SHARE
    plan_budgets(minutes - allowance - reserve, args.parallel, min_run, psnr_share)  # too few minutes: say so now
    for folder in (out, runs):
        if folder.exists() and any(folder.iterdir()) and not args.overwrite:
            raise ValueError(f"{folder} is not empty: give another folder, or --overwrite")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)

    if tiny:  # the children's and this process's own (FLOP counting)
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {tiny['xla_flags']}".strip()
    env = child_env(args.parallel, runs)
    figures = {"minutes": minutes, "parallel": args.parallel, "tiny": bool(tiny),
               "dataset": str(datasets["clean"]), "stream_dataset": str(datasets["stream"])}
    for kind in make:
        extra = STREAM_CODEC if kind == "stream" else []
        seconds = make_dataset(photos, datasets[kind], tiny["patches"] if tiny else PATCHES,
                               runs / f"dataset-{kind}.log", env, extra)
        figures[f"{kind}_dataset_seconds"] = round(seconds, 1)
        print(f"[accelerator] dataset {datasets[kind]} made in {seconds:.0f} s", flush=True)
    for kind, folder in datasets.items():
        figures[f"{kind}_dataset_pairs"] = json.loads((folder / "manifest.json").read_text()).get("counts")
    budgets = plan_budgets(minutes - (time.time() - started) / 60 - reserve, args.parallel, min_run, psnr_share)
    val_limit = tiny["val_limit"] if tiny else VAL_LIMIT

    def start(name, minutes_given, init=None):
        extra = [*tiny["extra"], *tiny["epochs"][name]] if tiny else []
        data = datasets["stream" if name == "stream" else "clean"]
        command = flow_command(name, data, runs / name, minutes_given, val_limit, extra, init)
        return Child(name, command, runs / f"{name}.log", env, minutes_given)

    results = {}
    deadline = started + 60 * (minutes - reserve)
    # the stream model goes on from the shipped one (the tiny models' shapes differ: they start from scratch)
    stream_init = None if tiny else presets.SHIPPED_MODELS["stream"]
    children = [start("stream", budgets["stream"], stream_init)] if args.parallel else []
    if not args.parallel:
        results["stream"] = finish(start("stream", budgets["stream"], stream_init))
    psnr = start("psnr", budgets["psnr"])
    results["psnr"] = finish(psnr)
    gan_minutes = (deadline - time.time()) / 60 if args.parallel else budgets["gan"]
    if not (runs / "psnr" / "generator.keras").is_file():
        print("[accelerator] gan: not started: the PSNR run exported no generator", flush=True)
        results["gan"] = (None, 0.0, 0.0)
    elif gan_minutes < min_run:
        print(f"[accelerator] gan: not started: {gan_minutes:.2f} min left, under {min_run:g}", flush=True)
        results["gan"] = (None, gan_minutes, 0.0)
    else:
        results["gan"] = finish(start("gan", gan_minutes, init=runs / "psnr" / "generator.keras"))
    for child in children:
        results[child.name] = finish(child)
    return write_outputs(out, runs, figures, results, time.time() - started)


def finish(child):
    """(exit status, budget minutes, seconds) of a run, once it has ended."""
    status = child.wait()
    return status, child.minutes, child.seconds


def write_outputs(out, runs, figures, results, seconds):
    """Copy each model's generator and history into out, write figures.json and accelerator.log; the status."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # FLOP counting after the runs needs no GPU
    device = next((json.loads((runs / n / "config.json").read_text()).get("runtime", {}).get("device")
                   for n in RECIPES if (runs / n / "config.json").is_file()), None)
    peak = PEAK_BF16.get(device)
    figures.update(device=device, peak_bf16_tflops=peak / 1e12 if peak else None,
                   peak_source=PEAK_SOURCE if peak else "no bf16 peak known for this device", models={})
    missing = []
    for name in RECIPES:
        status, budget, took = results[name]
        run = runs / name
        figures["models"][name] = model_figures(name, run, status, budget, took, peak)
        for source, target in ((run / "generator.keras", f"{OUTPUT_NAMES[name]}.keras"),
                               (run / "history.csv", f"{OUTPUT_NAMES[name]}_history.csv")):
            if source.is_file():
                shutil.copyfile(source, out / target)
            else:
                missing.append(f"{name}: {source.name}")
    figures["seconds"] = round(seconds, 1)
    resizer.write_json(out / "figures.json", figures)
    with open(out / "accelerator.log", "w") as log:
        for path in sorted(runs.glob("*.log")):
            log.write(f"===== {path.name}\n{path.read_text(errors='replace')}\n")
    summary = ", ".join(f"{n} {m['images_per_s'] or 0:.0f} img/s, wait {100 * (m['input_wait_share'] or 0):.1f}%, "
                        f"{m['steps'] or 0} steps" for n, m in figures["models"].items())
    print(f"[accelerator] done in {seconds / 60:.2f} min: {summary}; {out}/figures.json"
          + (f"; missing: {'; '.join(missing)}" if missing else ""), flush=True)
    if missing:
        print(f"error: not every model was exported ({'; '.join(missing)}); see {out}/accelerator.log",
              file=sys.stderr)
    return 1 if missing else 0


def parse_args(argv=None):
    """The command line (no Keras needed to answer it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the 8 files that come back")
    parser.add_argument("--photos", default=str(PHOTOS), help="packed photos (weights/pack_photos.sh)")
    parser.add_argument("--data", default=str(DATASET), help="DATASET folder: made from the photos unless it exists")
    parser.add_argument("--stream-data", default=str(STREAM_DATASET),
                        help="the stream model's DATASET (libx264 streams): made from the photos unless it exists")
    parser.add_argument("--runs", default=str(RUNS), help="the run folders (they stay here)")
    parser.add_argument("--minutes", type=float, help=f"the whole command's wall clock (default {MINUTES:g})")
    parser.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=PARALLEL,
                        help="stream run beside the PSNR -> GAN runs (default) or all one after another")
    parser.add_argument("--tiny", action="store_true", help="tiny models, samples only, seconds of budget (CPU)")
    parser.add_argument("--overwrite", action="store_true", help="empty --out and --runs first")
    args = parser.parse_args(argv)
    if args.minutes is not None and args.minutes <= 0:
        parser.error("--minutes must be > 0")
    return args


def main(argv=None):
    """Entry point; returns the exit status (2: bad input, before anything ran)."""
    args = parse_args(argv)
    try:
        return run_all(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
