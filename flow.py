"""Train an SRGAN on a DATASET folder, and measure generators the way SR papers do. Read top to bottom.

    python flow.py train --data data/samples --out runs/demo --pretrain-epochs 10 --gan-epochs 5
    python flow.py evaluate --model runs/demo/generator.keras --data data/benchmarks/set5
    python flow.py evaluate --model bicubic --data data/benchmarks/set5
    python flow.py evaluate-stream --model video --data data/benchmarks/set14 --crf clean,18,28,34
    python flow.py export video --format onnx                       # weights/video_x4.onnx, checked against Keras
    python flow.py export video --format openvino --int8 frames/    # int8 calibrated on your frames (deploy.py)

Phase 1 pretrains the generator with a pixel loss (SRResNet); phase 2 trains it against the discriminator
(SRGAN, Ledig et al. 2017). After every epoch the whole validation split is measured, PSNR and SSIM on the Y
channel with `scale` pixels of border cropped (metrics.py), for the model and for bicubic on the same images.

A run folder (runs/NAME/) holds:
    config.json            the resolved configuration; a rerun must match it (runtime keys aside)
    history.csv            one row per epoch of both phases: losses, val_psnr/val_ssim, bicubic_psnr/bicubic_ssim
    generator.keras        best generator of the latest phase by validation SSIM (what upscale.py loads; plain
                           Conv2D: a --reparam run's generators are exported fused)
    generator_pretrain.keras / generator_gan.keras   the best of each phase; best.json says which epoch
    generator_last.keras   the generator after the latest finished epoch
    samples/epoch-NNN.png  LR | bicubic | SR | HR for a few validation images, every epoch, labelled
    tensorboard/           scalars and the same image grids (TensorFlow backend)
    backup/PHASE/          the phase in progress: its last two training states (weights, optimizers, epoch, step)
    pretrain.done, gan.done   phase markers: a rerun of the same command skips what is finished
    speed.json             per phase: steps, step time, images/s, the share of step time spent waiting for input

Every file is written whole or not at all, so after a crash, kill -9 or power cut the same command continues at
the last finished epoch; Ctrl-C or SIGTERM stops after the current step, saves it, and the same command continues
from there. --time-budget MINUTES stops the same way when the minutes (counted from the command's start) are spent,
or earlier at an epoch's end when the next epoch would not fit, and exits 0: the exports are the finished epochs'.
Keras loads inside train() and evaluate(), so --help and argument errors answer at once.
"""

import argparse
import contextlib
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

import deploy
import presets
import resizer
from create_dataset import (
    check_dataset,
    check_patch_size,
    dataset_scale,
    has_scheme,
    load_split_arrays,
    scan_split,
)
from metrics import bicubic_upscale, calculate_niqe, calculate_psnr, calculate_ssim, grid_error

LOADED = time.time()  # --time-budget counts from here (the command's start, but for Python's own)

# ---------------------------------------------------------------- configuration: `flow.py train` defaults
pretrain_epochs = 10
gan_epochs = 10
batch_size = None  # global, split across replicas; None: BASE_BATCH, or GPU_BATCH where a GPU is found
steps_per_epoch = None  # None: one pass over the training split (len(train) // batch_size)
patch_size = None  # HR crop side in pixels; None: whole HR images
preset = None  # generator preset (presets.GENERATOR_PRESETS); None: the paper's 16x64 SRResNet
discriminator = "srgan"  # srgan (the paper's) | unet (Real-ESRGAN's per-pixel U-Net, spectral norm)
d_filters = 64  # discriminator width (the paper's 64 -> 512)
gan_loss = "vanilla"  # vanilla (the paper's) | ragan (ESRGAN's relativistic average)
feature_matching = 0.0  # weight of discriminator feature matching in the generator's loss
grid_weight = 0.0  # weight of gan.grid_loss (against a fixed pattern every `scale` pixels) in the generator's loss
ema = 0.0  # decay of the generator weights' moving average (0: off; ESRGAN's 0.999)
lr_g = None  # Adam, both phases; None: the paper's BASE_LR, times sqrt(batch / BASE_BATCH) above BASE_BATCH
lr_d = None
lr_schedule = "constant"  # constant | cosine (to 0 over each phase) | step (x0.1 half-way, as the paper's GAN)
pretrain_loss = "l1"  # phase 1 pixel loss: l1 or mse (L1 reaches higher PSNR in practice: Lim et al. 2017)
content_loss = "vgg54"  # phase 2 content loss: mse | l1 | vgg54 | vgg22
adversarial_weight = 1e-3  # perceptual = content + 1e-3 * adversarial
vgg_weights = None  # VGG19 ImageNet weights file; None: the Keras cache
seed = 0
strategy = "auto"  # auto | default | mirrored | multiworker
collective_timeout = 300  # multi-worker: seconds to wait for peers (start-up and each collective)
mixed_precision = "auto"  # auto (on with a GPU or a CPU with native bfloat16) | on (bfloat16; float16 on pre-Ampere GPUs) | off
jit = "auto"  # XLA: auto (on with a GPU or a non-TensorFlow backend; off on TF's CPU, where it measured slower) | on | off
input_pipeline = "auto"  # auto (tf.data on TF; device on a GPU with pairs of one size; else pydataset) | tfdata | pydataset | device
time_budget = None  # minutes of wall clock for the whole command (None: no limit)
epoch_seconds = None  # end each epoch after this many seconds of training (steps_per_epoch then a maximum)
sample_count = 4  # validation images in the per-epoch sample grids
val_limit = None  # validate on at most this many pairs of the split, evenly spread (None: all)
cache_fraction = 0.25  # cache decoded training images when they fit in this share of available memory

BASE_BATCH, BASE_LR = 16, 1e-4  # the paper's batch and Adam learning rate
# a small generator leaves a GPU idle at batch 16; the learning rate follows the square-root rule for Adam
# (Malladi et al. 2022, "On the SDEs and Scaling Rules for Adaptive Gradient Algorithms"): x4 at 256
GPU_BATCH = 256

# may change between resumes (a run started on a CPU can continue on a GPU; the VGG file is the same wherever it is)
RUNTIME_KEYS = ("strategy", "mixed_precision", "jit", "input_pipeline", "vgg_weights", "cache_fraction",
                "sample_count", "time_budget", "epoch_seconds")
NOT_COMPARED = ("versions", "runtime", "lr_rule")  # records of the machine a run last ran on; lr_rule: notes
PHASES = {"pretrain": "phase 1/2: generator pretraining (pixel loss)",
          "gan": "phase 2/2: adversarial training"}
EXIT_STOPPED = 130  # the exit status after Ctrl-C/SIGTERM (state saved), as shells report an interrupt


# ---------------------------------------------------------------- train: checks, config, then the two phases
def train(args, extra_callbacks=()):
    """`flow.py train`: checks, config, then phase 1 and phase 2 (each skipped when its marker says done).

    Returns the exit status: 0 done (or stopped by --time-budget after an exported epoch), 1 stopped on non-finite
    values or by a budget too small for one epoch, EXIT_STOPPED after a signal.
    """
    started = LOADED if __name__ == "__main__" else time.time()
    splits, scale = check_dataset(args.data)
    check_patch_size(splits, args.patch_size, scale)
    if args.pretrain_epochs + args.gan_epochs < 1:
        raise ValueError("nothing to train: --pretrain-epochs and --gan-epochs are both 0")
    if args.init_generator and not Path(args.init_generator).is_file():
        raise ValueError(f"--init-generator {args.init_generator}: no such file")

    import runtime  # first: Keras starts quietly

    # isort: split
    import keras

    strategy_name = runtime.resolve_strategy_name(args.strategy)
    run_path = worker_run_path(Path(args.out), strategy_name)
    gpu = runtime.gpu_count() > 0
    config = resolve_config(args, splits, scale, gpu=gpu, previous=read_config(run_path))
    if config["gan_epochs"] and config["content_loss"].startswith("vgg"):
        import gan

        gan.check_vgg_weights(config["content_loss"], config["vgg_weights"])  # a clear error before the run folder
    check_resume(run_path, config)
    pipeline = resolve_input_pipeline(args.input_pipeline, runtime.use_tensorflow(), gpu=gpu,
                                      one_size=splits["train"].lr_size is not None)
    if strategy_name == "multiworker" and pipeline != "tfdata":
        raise ValueError("--strategy multiworker needs the tf.data input (--input-pipeline tfdata or auto)")
    # bf16 on CPUs that compute it natively: `bench_train_step.py --ab-steps 300` gave the same validation PSNR
    # as float32 (+0.009 dB, video preset), and such a CPU ran phase 1 x1.99 faster (the same benchmark)
    mixed = runtime.resolve_switch(args.mixed_precision, gpu or runtime.native_bf16())
    # benchmarks/bench_train_step.py: XLA ran training at x0.77 (phase 1) and x0.82 (phase 2) of plain graph mode
    # on a 2-core CPU; JAX always wants jit.
    jit_compile = runtime.resolve_switch(args.jit, gpu or not runtime.use_tensorflow())

    strategy = start_strategy(strategy_name, args.collective_timeout)
    done = agreed_phases(strategy, {p: (run_path / f"{p}.done").is_file() or not config[f"{p}_epochs"]
                                    for p in PHASES})
    run_path.mkdir(parents=True, exist_ok=True)
    resizer.remove_temp_outputs(run_path)  # what a killed run was writing; its finished files are whole
    for phase in PHASES:  # a kill between a phase's marker and its backup's removal leaves a stale backup
        if (run_path / f"{phase}.done").is_file():
            shutil.rmtree(run_path / "backup" / phase, ignore_errors=True)
    details = runtime.gpu_details()
    resizer.write_json(run_path / "config.json", {
        **config, "versions": {"keras": keras.__version__, "backend": runtime.backend()},
        "runtime": {"device": details[0] if details else "cpu", "precision": runtime.precision_policy(mixed),
                    "jit": jit_compile, "input_pipeline": pipeline}})
    if all(done.values()):
        print(f"{run_path}: all phases are finished; nothing to do")
        print(summarize(run_path, None))
        return 0

    policy = runtime.set_seed_and_precision(config["seed"], mixed)
    replicas = runtime.replica_count(strategy)
    if config["batch_size"] % replicas:
        raise ValueError(f"--batch-size {config['batch_size']} must divide among {replicas} replicas")
    print(f"{run_path}: backend {runtime.backend()}, strategy {strategy_name} ({replicas} replica(s)), "
          f"precision {policy}, XLA {'on' if jit_compile else 'off'}, input {pipeline}, scale x{scale}, "
          f"{len(splits['train'])} train / {len(splits['val'])} val images, "
          f"{config['steps_per_epoch']} steps of {config['batch_size']} per epoch", flush=True)

    with runtime.strategy_scope(strategy):
        content = None
        if not done["gan"]:  # built first: a missing VGG file fails now, not after phase 1
            import gan

            content = gan.ContentLoss(config["content_loss"], vgg_weights=config["vgg_weights"])
        generator = build_run_generator(config)
    val_lr, val_hr, val_names = validation_subset(*load_split_arrays(splits["val"]), splits["val"].hr_paths,
                                                  config["val_limit"])
    deadline = started + 60 * args.time_budget if args.time_budget else None
    run = Run(run_path, config, splits, val_lr, val_hr, strategy, jit_compile, pipeline,
              extra_callbacks=tuple(extra_callbacks), verbose=args.verbose, deadline=deadline, val_names=val_names)

    if not done["pretrain"]:
        if config["init_generator"] and not has_state(run, "pretrain"):
            load_generator_weights(generator, config["init_generator"])
        status = pretrain(run, generator)
        if status or run.budget_spent:
            return status
    if not done["gan"]:
        start = phase1_weights(run)
        if start and not has_state(run, "gan"):
            load_generator_weights(generator, start)
        status = adversarial(run, generator, content)
        if status or run.budget_spent:
            return status
    print(summarize(run_path, started) if runtime.writes_run_folder()
          else f"{runtime.task_name()}: done; the chief writes the run folder ({args.out} on its machine)")
    return 0


@dataclass
class Run:
    """What both phases share: the run folder, its config, the data and the runtime."""

    path: Path
    config: dict
    splits: dict
    val_lr: list
    val_hr: list
    strategy: object
    jit: object
    input_pipeline: str
    train_arrays: tuple | None = None
    extra_callbacks: tuple = ()
    verbose: object = "auto"
    deadline: float | None = None  # time.time() at which --time-budget is spent
    device_arrays: tuple | None = None  # the train split in the accelerator's memory (--input-pipeline device)
    budget_spent: bool = False
    val_names: list = ()  # the validation pairs' HR paths, for the sample grids' labels (empty for TFRecords)


# ---------------------------------------------------------------- the two phases
def pretrain(run, generator):
    """Phase 1: the generator alone, pixel loss, plain Keras compile/fit."""
    import gan
    import runtime

    cfg = run.config
    total = cfg["pretrain_epochs"] * cfg["steps_per_epoch"]
    with runtime.strategy_scope(run.strategy):
        optimizer = adam(cfg["lr_g"], cfg["lr_schedule"], total, cfg["ema"])
        generator.compile(optimizer, loss=gan.ContentLoss(cfg["pretrain_loss"]), jit_compile=run.jit)
    return fit_phase(run, "pretrain", generator, generator, 0, cfg["pretrain_epochs"], optimizer)


def adversarial(run, generator, content):
    """Phase 2: generator and discriminator against each other, from the pretrained generator."""
    import gan
    import runtime
    from discriminator import build_discriminator

    cfg = run.config
    total = cfg["gan_epochs"] * cfg["steps_per_epoch"]
    with runtime.strategy_scope(run.strategy):
        d = cfg["discriminator"]
        discriminator = build_discriminator(hr_size=d["hr_size"], filters=d["filters"], kind=d["kind"])
        srgan = gan.SRGAN(generator, discriminator)
        g_optimizer = adam(cfg["lr_g"], cfg["lr_schedule"], total, cfg["ema"])
        srgan.compile(g_optimizer=g_optimizer, d_optimizer=adam(cfg["lr_d"], cfg["lr_schedule"], total),
                      content_loss=content, adversarial_weight=cfg["adversarial_weight"], gan_loss=cfg["gan_loss"],
                      feature_matching_weight=cfg["feature_matching_weight"], grid_weight=cfg["grid_weight"],
                      jit_compile=run.jit)
    first = cfg["pretrain_epochs"]
    return fit_phase(run, "gan", srgan, generator, first, first + cfg["gan_epochs"], g_optimizer)


def fit_phase(run, phase, model, generator, first_epoch, last_epoch, g_optimizer):
    """model.fit over global epochs [first_epoch, last_epoch), resuming from the phase's saved state.
    g_optimizer: the generator's optimizer (its moving average, with --ema, is what validation and exports see).

    A state saved mid-epoch (after Ctrl-C) first finishes that epoch's remaining steps. Returns the exit status
    (0 when the phase is done). Epochs count globally across both phases.
    """
    import training

    backup = backup_folder(run, phase)
    epoch, step = training.restore_state(model, backup)
    epoch = max(first_epoch, epoch)
    resumed = f", resuming at epoch {epoch + 1}" + (f" step {step + 1}" if step else "") + f" from {backup}"
    print(f"\n{PHASES[phase]}: epochs {first_epoch + 1}-{last_epoch}" + (resumed if epoch > first_epoch or step else ""),
          flush=True)
    training.truncate_history(run.path / "history.csv", epoch)
    steps = run.config["steps_per_epoch"]
    meter = training.Throughput(run.path / "speed.json", phase, run.config["batch_size"])
    cycle = 0.0  # seconds the next fit() should take: with a time budget, one epoch, its validation and exports
    while epoch < last_epoch:
        if run.deadline is not None and time.time() + cycle > run.deadline:
            return budget_spent(run, phase, epoch, 0, backup)
        guard = training.Guard(save_to=backup, steps_done=step, deadline=run.deadline,
                               epoch_seconds=run.config["epoch_seconds"])
        # a part-done epoch runs alone, then the rest together; with a time budget or timed epochs, one per fit()
        until = epoch + 1 if step or run.deadline is not None or run.config["epoch_seconds"] else last_epoch
        meter.source = training_input(run, epoch - first_epoch, step)
        fit_started = time.time()
        model.fit(meter.source, epochs=until, initial_epoch=epoch, steps_per_epoch=steps - step,
                  callbacks=phase_callbacks(run, phase, generator, guard, g_optimizer) + [meter],
                  verbose=run.verbose, shuffle=False)  # the input shuffles itself (seeded)
        cycle = time.time() - fit_started - meter.first_step_seconds  # the next fit's first step: compiled
        if guard.signalled is not None and guard.signalled[0] == training.BUDGET:
            return budget_spent(run, phase, *guard.signalled[1:], backup)
        if not guard.epoch_is_good():
            return stopped(run, phase, guard, backup)
        epoch, step = until, 0
    return finish_phase(run, phase)


def budget_spent(run, phase, epoch, step, backup):
    """--time-budget is spent: say where the run stopped and how to go on; 0, or 1 when not one epoch of the
    run has finished (nothing exported: the budget was too small)."""
    run.budget_spent = True
    if step or has_state(run, phase):
        where = f"in epoch {epoch + 1} after step {step}" if step else f"after epoch {epoch}"
        print(f"\ntime budget of {run.config['time_budget']:g} min spent: {phase} stopped {where}; the training state "
              f"is saved in {backup}. Run the same command again (with more minutes) to continue.", flush=True)
    if not (run.path / "best.json").is_file():
        print(f"error: --time-budget {run.config['time_budget']:g} min ended before the first epoch's validation; no "
              "generator was exported: give more minutes or fewer --steps-per-epoch", file=sys.stderr, flush=True)
        return 1
    print(summarize(run.path, None), flush=True)
    return 0


def phase_callbacks(run, phase, generator, guard, g_optimizer):
    """Order matters: the metrics enter the logs before the export, the CSV and TensorBoard read them; the
    state comes last, so a kill between them redoes the epoch rather than skipping its export. With --ema the
    moving average is swapped in for the metrics and exports, and the raw weights back before the state."""
    import runtime
    import training

    tensorboard = runtime.tensorboard_available()
    average = training.MovingAverageSwap(g_optimizer) if run.config["ema"] else None
    cbs = [guard, *([average.swap_in] if average else []),
           training.ValidationMetrics(generator, run.val_lr, run.val_hr, run.config["scale"], run.path, guard,
                                      count=run.config["sample_count"], names=run.val_names or None,
                                      tensorboard=tensorboard, niqe=phase == "gan"),
           training.ExportBest(generator, lambda g, path: export_generator(g, run.config, path), run.path, phase,
                               guard),
           training.HistoryCSV(run.path / "history.csv", phase, guard)]
    if tensorboard:
        import keras

        cbs.append(keras.callbacks.TensorBoard(str(run.path / "tensorboard"), write_graph=False))
    if average:
        cbs.append(average.swap_out)
    cbs.append(training.StateBackup(backup_folder(run, phase), guard))
    return cbs + list(run.extra_callbacks)


def training_input(run, epochs_done, steps_done=0):
    """tf.data, PyDataset or device-cut training batches, fast-forwarded past epochs_done epochs and steps_done
    steps."""
    import training

    cfg = run.config
    if run.input_pipeline == "device":
        if run.device_arrays is None:  # uploaded once, kept for every epoch of the command
            run.device_arrays = training.device_arrays(*load_split_arrays(run.splits["train"],
                                                                          desc="loading train split"))
        return training.DevicePairBatches(run.device_arrays, batch_size=cfg["batch_size"],
                                          steps=cfg["steps_per_epoch"], scale=cfg["scale"],
                                          patch_size=cfg["patch_size"], seed=cfg["seed"],
                                          start_epoch=epochs_done, first_step=steps_done)
    if run.input_pipeline == "tfdata":
        return training.tf_pair_dataset(run.splits["train"], batch_size=cfg["batch_size"], scale=cfg["scale"],
                                        patch_size=cfg["patch_size"], seed=cfg["seed"],
                                        skip_batches=epochs_done * cfg["steps_per_epoch"] + steps_done,
                                        cache_fraction=cfg["cache_fraction"], strategy=run.strategy)
    if run.train_arrays is None:
        run.train_arrays = load_split_arrays(run.splits["train"], desc="loading train split")
    return training.PairBatches(*run.train_arrays, batch_size=cfg["batch_size"], steps=cfg["steps_per_epoch"],
                                scale=cfg["scale"], patch_size=cfg["patch_size"], seed=cfg["seed"],
                                start_epoch=epochs_done, first_step=steps_done, workers=min(4, os.cpu_count() or 1))


def stopped(run, phase, guard, backup):
    """Explain why a phase stopped early; the exit status."""
    if guard.signalled is not None:
        name, epoch, step = guard.signalled
        print(f"\n{name}: stopped in epoch {epoch + 1} after step {step}; the training state is saved in {backup}. "
              "Run the same command again to continue from there.", file=sys.stderr)
        return EXIT_STOPPED
    epoch, batch, what = guard.tripped
    where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
    best = run.path / "generator.keras"
    print(f"\nstopped: non-finite values ({what}) in {where} of {phase}; the last good checkpoint is kept "
          f"({best if best.exists() else 'none yet'}; the state of the previous epoch in {backup}). "
          "Lower the learning rate, or start a new run with --init-generator.", file=sys.stderr)
    return 1


def finish_phase(run, phase):
    """Write the phase marker, then drop the phase's saved states (a kill in between is cleaned up by the
    next run: train() removes the state of a phase whose marker exists). Returns 0."""
    resizer.write_json(run.path / f"{phase}.done", {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    shutil.rmtree(backup_folder(run, phase), ignore_errors=True)
    if not any(backup_folder(run, p).exists() for p in PHASES):
        shutil.rmtree(backup_folder(run, phase).parent, ignore_errors=True)
    return 0


def adam(base, schedule, total_steps, ema_decay=0.0):
    """Adam with the paper's beta_1 = 0.9, its learning rate constant or a schedule over one phase's steps;
    ema_decay > 0 keeps a moving average of the weights (Keras' use_ema) with that momentum."""
    import keras

    learning_rate = base
    if schedule == "cosine" and total_steps > 1:
        learning_rate = keras.optimizers.schedules.CosineDecay(base, decay_steps=total_steps)
    elif schedule == "step" and total_steps > 1:
        learning_rate = keras.optimizers.schedules.PiecewiseConstantDecay([total_steps // 2], [base, base * 0.1])
    if ema_decay > 0:
        return keras.optimizers.Adam(learning_rate, beta_1=0.9, use_ema=True, ema_momentum=ema_decay)
    return keras.optimizers.Adam(learning_rate, beta_1=0.9)


def backup_folder(run, phase):
    """Where a phase keeps its training state while it runs."""
    return run.path / "backup" / phase


def has_state(run, phase):
    """Whether the phase has saved training state to resume from (then its start weights come from there)."""
    import training

    return bool(training.list_states(backup_folder(run, phase)))


def phase1_weights(run):
    """Where phase 2 starts: phase 1's best generator, else --init-generator, else fresh weights."""
    best = run.path / "generator_pretrain.keras"
    if best.is_file():
        return best
    return run.config["init_generator"]


def summarize(run, started):
    """One line: best epoch, val PSNR/SSIM against bicubic, where generator.keras is."""
    best_path = run / "best.json"
    if not best_path.is_file():
        return f"no generator exported in {run}"
    best = json.loads(best_path.read_text())
    b = best[best["latest"]]
    took = f" in {time.time() - started:.0f} s" if started else ""
    return (f"done{took}: best epoch {b['epoch']} ({best['latest']}): val PSNR {b['val_psnr']:.2f} dB / SSIM "
            f"{b['val_ssim']:.4f} vs bicubic {b['bicubic_psnr']:.2f} dB / {b['bicubic_ssim']:.4f}; "
            f"generator: {run / 'generator.keras'}")


# ---------------------------------------------------------------- the configuration of a run
def validation_subset(val_lr, val_hr, names, limit):
    """(lr, hr, names) of at most `limit` validation pairs, evenly spread over the split (every one when limit is
    None): the validation after every epoch runs on the CPU while the accelerator waits. names may be empty."""
    if limit is None or limit >= len(val_lr):
        return val_lr, val_hr, list(names)
    keep = np.linspace(0, len(val_lr) - 1, limit).round().astype(int)
    return [val_lr[i] for i in keep], [val_hr[i] for i in keep], [names[i] for i in keep] if names else []


def read_config(run):
    """A run folder's config.json as a dict; None when there is none."""
    path = Path(run) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def batch_and_rates(args, gpu=False, previous=None):
    """(batch size, lr_g, lr_d, how they were chosen): the options given, else what the run being resumed used
    (previous config), else the defaults: BASE_BATCH (GPU_BATCH with a GPU) and BASE_LR, times sqrt(batch /
    BASE_BATCH) for a batch larger than BASE_BATCH (the square-root rule for Adam)."""
    previous = previous or {}
    batch = args.batch_size or previous.get("batch_size") or (GPU_BATCH if gpu else BASE_BATCH)
    default_rate = BASE_LR * math.sqrt(max(batch, BASE_BATCH) / BASE_BATCH)
    rates = [given if given is not None else previous.get(key, default_rate)
             for given, key in ((args.lr_g, "lr_g"), (args.lr_d, "lr_d"))]
    rule = f"those not given: {BASE_LR:g} x sqrt(max(batch {batch}, {BASE_BATCH}) / {BASE_BATCH})"
    rule = "given" if args.lr_g is not None and args.lr_d is not None else previous.get("lr_rule", rule)
    return batch, rates[0], rates[1], rule


def resolve_config(args, splits, scale, gpu=False, previous=None):
    """The run's full configuration as plain JSON values (what config.json holds). gpu: a GPU was found (larger
    default batch); previous: the config.json of the run being resumed, whose defaults it keeps."""
    train_split = splits["train"]
    batch, lr_g_value, lr_d_value, rule = batch_and_rates(args, gpu, previous)
    steps = args.steps_per_epoch or max(1, len(train_split) // batch)
    lr_w, lr_h = train_split.lr_size or (0, 0)
    # the discriminator's input side: the patch, or the whole HR image when square (else size-agnostic: None)
    hr_size = args.patch_size or (lr_w * scale if lr_w == lr_h else None)
    arch = presets.resolve_architecture(args.preset, filters=args.filters, blocks=args.blocks,
                                        batch_norm=args.batch_norm, interpolation_skip=args.interpolation_skip,
                                        reparam=args.reparam)
    init = str(Path(args.init_generator).resolve()) if args.init_generator else None
    return {
        "data": args.data if has_scheme(args.data) else str(Path(args.data).resolve()), "scale": scale,
        "train_images": len(train_split),
        "val_images": len(splits["val"]), "patch_size": args.patch_size, "hr_size": hr_size,
        "pretrain_epochs": args.pretrain_epochs, "gan_epochs": args.gan_epochs, "batch_size": batch,
        "steps_per_epoch": steps, "preset": args.preset, "generator": arch,
        "discriminator": {"kind": args.discriminator, "filters": args.d_filters, "hr_size": hr_size},
        "gan_loss": args.gan_loss, "feature_matching_weight": args.feature_matching, "ema": args.ema,
        "grid_weight": args.grid_weight,
        "lr_g": lr_g_value, "lr_d": lr_d_value, "lr_rule": rule, "lr_schedule": args.lr_schedule,
        "pretrain_loss": args.pretrain_loss,
        "content_loss": args.content_loss, "adversarial_weight": args.adversarial_weight,
        "vgg_weights": str(Path(args.vgg_weights).resolve()) if args.vgg_weights else None,
        "init_generator": init, "seed": args.seed,
        "strategy": args.strategy, "mixed_precision": args.mixed_precision, "jit": args.jit,
        "input_pipeline": args.input_pipeline, "cache_fraction": args.cache_fraction,
        "sample_count": args.sample_count, "time_budget": args.time_budget, "val_limit": args.val_limit,
        "epoch_seconds": args.epoch_seconds,
    }


# settings added after run folders were made, with the value that such a run trained with, so it still resumes
LATER_SETTINGS = {"ema": 0.0, "grid_weight": 0.0, "val_limit": None}
LATER_GENERATOR_SETTINGS = {"block": "residual", "output": "rgb", "reparam": False}


def config_differences(old, new):
    """'key: old -> new' for every key that defines the training (runtime keys aside). An old config.json that
    predates a setting is read with the value it trained with (LATER_SETTINGS)."""
    old = {**LATER_SETTINGS, **old}
    if isinstance(old.get("generator"), dict):
        old["generator"] = {**LATER_GENERATOR_SETTINGS, **old["generator"]}
    keys = sorted((set(old) | set(new)) - set(RUNTIME_KEYS) - set(NOT_COMPARED))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def check_resume(run, config):
    """A rerun into an existing run folder must ask for the same training; otherwise a clear error."""
    path = run / "config.json"
    if path.is_file():
        differences = config_differences(json.loads(path.read_text()), config)
        if differences:
            raise ValueError(f"{run} was made with a different configuration, so it cannot be resumed; "
                             f"differing: {'; '.join(differences)}. Use a new --out (with --init-generator "
                             f"{run / 'generator.keras'} to start from its weights) or the original options.")
    elif run.is_dir() and any(run.iterdir()):
        raise ValueError(f"{run} exists, is not empty and holds no config.json: not a run folder; choose another --out")


def resolve_input_pipeline(requested, tensorflow_backend, gpu=False, one_size=True):
    """auto: tf.data on the TensorFlow backend; elsewhere crops cut on the GPU from the split held in its memory
    (device) when there is one and the pairs have one size, else a PyDataset."""
    if requested == "auto":
        return "tfdata" if tensorflow_backend else "device" if gpu and one_size else "pydataset"
    if requested == "tfdata" and not tensorflow_backend:
        raise ValueError("--input-pipeline tfdata needs the TensorFlow backend; use pydataset")
    if requested == "device" and not one_size:
        raise ValueError("--input-pipeline device needs training pairs of one size (create_dataset.py --mode "
                         "patches or square); use pydataset")
    return requested


def worker_run_path(run, strategy_name):
    """Multi-worker: every task trains and saves in step, but only the chief writes runs/NAME; the others keep
    their own state in a folder of their own outside it (so each resumes at the same epoch), named after the run."""
    import runtime

    if strategy_name != "multiworker" or runtime.is_chief():
        return run
    import hashlib

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    resolved = str(Path(run).resolve())  # the same folder for the same --out, run after run
    tag = f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:8]}"
    return Path(tempfile.gettempdir()) / "srgan-workers" / tag / f"{task['type']}-{task['index']}"


def start_strategy(strategy_name, collective_timeout):
    """The strategy; a multi-worker one waits (at most collective_timeout seconds) for every worker, and from
    then on SIGINT/SIGTERM end the process at once, even while it waits in a collective (see runtime)."""
    import runtime

    if strategy_name == "multiworker":
        runtime.exit_on_signals(EXIT_STOPPED, "the run continues from its last finished epoch when every worker "
                                "runs the same command again")
        print(f"multi-worker: {runtime.task_name()} of {len(runtime.cluster_addresses())}, waiting up to "
              f"{collective_timeout:g} s for the others", flush=True)
    return runtime.make_strategy(strategy_name, collective_timeout)


def agreed_phases(strategy, done):
    """Which phases are finished: the chief's markers decide for every worker of a multi-worker run."""
    import runtime

    if not runtime.is_multi_worker(strategy):
        return done
    agreed = runtime.chief_values(strategy, [int(v) for v in done.values()])
    return {p: bool(v) for p, v in zip(done, agreed, strict=True)}


def build_run_generator(config):
    """The generator config.json describes (fresh weights)."""
    from generator import build_generator

    return build_generator(config["scale"], **config["generator"])


def export_generator(generator, config, path):
    """Save a float32 copy of the generator (whatever the policy or strategy it trains under), atomically; a
    re-parameterized one (--reparam) fused into the plain model, which is what every generator*.keras of a run
    holds (the training states keep the branches, so a run resumes with them)."""
    import keras

    from generator import fuse_reparameterized

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = build_run_generator(config)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(generator.get_weights())
    if config["generator"]["reparam"]:
        clone = fuse_reparameterized(clone)
    with resizer.atomic_output(path) as tmp:
        clone.save(tmp)


def load_generator_weights(generator, path):
    """Weights of a saved generator into `generator` (a plain one into a --reparam one too: its 3x3 branches,
    so training starts at the saved model's output); a clear error when the architectures differ."""
    from generator import load_generator, set_generator_weights

    try:
        set_generator_weights(generator, load_generator(path))
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: cannot start from this generator: it does not match the one built from "
                         f"--preset/--filters/--blocks/--interpolation-skip ({err})") from err


# ---------------------------------------------------------------- evaluate: model vs bicubic on a test set
def evaluate(model_arg, data, scale=None, out=None, per_image=False):
    """Per-image PSNR/SSIM (Y, border = scale) of a model and bicubic, and NIQE (no reference; lower = more
    natural) of the model, bicubic and the originals; the per-image table is written (CSV, md) and printed only
    with per_image, the means per method (summary_table) always. model_grid is the
    largest mean error (grey levels) at one of the scale x scale sub-pixel positions (metrics.grid_error): per
    image in its row, and in the mean row that of the set's mean grid, which is what shows a fixed pattern.

    Returns (rows, failed): rows of dicts with the mean last; failed lists (name, reason).
    """
    import upscale  # no Keras yet: that comes with the model

    model, model_path, scale = load_eval_model(model_arg, scale)
    pairs, scale = evaluation_pairs(data, scale)
    rows, failed, grids = [], [], []
    for name, lr_path, hr_path in tqdm(pairs, desc=f"evaluate x{scale}", unit="img"):
        try:
            lr, hr = load_eval_pair(lr_path, hr_path, scale)
        except (ValueError, OSError) as err:
            failed.append((name, str(err)))
            continue
        bicubic = bicubic_upscale(lr, scale)
        row = {"image": name, "size": f"{hr.shape[1]}x{hr.shape[0]}", "hr_niqe": niqe_or_nan(hr, scale),
               "bicubic_psnr": calculate_psnr(bicubic, hr, scale), "bicubic_ssim": calculate_ssim(bicubic, hr, scale),
               "bicubic_niqe": niqe_or_nan(bicubic, scale)}
        if model is not None:
            sr = upscale.upscale_array(model, lr)
            row.update(model_psnr=calculate_psnr(sr, hr, scale), model_ssim=calculate_ssim(sr, hr, scale),
                       model_niqe=niqe_or_nan(sr, scale))
            grids.append(grid_error(sr, hr, scale, crop_border=scale))
            row["model_grid"] = float(np.abs(grids[-1]).max())
        rows.append(row)
    if not rows:
        raise ValueError(f"{data}: no image could be evaluated ({'; '.join(r for _, r in failed)})")
    numeric = [k for k in rows[0] if k not in ("image", "size")]
    rows.append({"image": "mean", "size": "", **{k: nanmean([r[k] for r in rows]) for k in numeric}})
    if grids:
        set_grid = np.mean(grids, axis=0)
        rows[-1]["model_grid"] = float(np.abs(set_grid).max())
    label = model_label(model_arg, model_path)
    out = Path(out or "out/eval")
    stem = out / f"{label}_{Path(data).resolve().name}_x{scale}"
    table = write_tables(stem, rows, f"{model_arg} on {data}, x{scale}, Y channel, border {scale}")
    print(table if per_image else summary_table(rows[-1]))
    for name, reason in failed:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    mean = rows[-1]
    summary = (f"bicubic {mean['bicubic_psnr']:.2f} dB / {mean['bicubic_ssim']:.4f} / {mean['bicubic_niqe']:.2f}, "
               f"originals' NIQE {mean['hr_niqe']:.2f}")
    if model is not None:
        summary = (f"model {mean['model_psnr']:.2f} dB / {mean['model_ssim']:.4f} / {mean['model_niqe']:.2f} "
                   f"(mean error per {scale}x{scale} sub-pixel position {set_grid.min():+.2f} to "
                   f"{set_grid.max():+.2f} grey levels) vs " + summary)
    print(f"{len(rows) - 1} image(s) x{scale}: {summary} (mean PSNR/SSIM/NIQE, NIQE lower = more natural); "
          f"{len(failed)} failed; table: {stem}.csv, {stem}.md")
    return rows, failed


def load_eval_model(model_arg, scale=None):
    """(generator or None for bicubic, its path or None, scale): the model of --model, checked against --scale."""
    if model_arg == "bicubic":
        return None, None, scale
    from generator import generator_scale, load_generator

    model_path = resolve_model_path(model_arg)
    model = load_generator(model_path)
    if scale is not None and scale != generator_scale(model):
        raise ValueError(f"--scale {scale} but {model_path} upscales x{generator_scale(model)}")
    return model, model_path, generator_scale(model)


def model_label(model_arg, model_path):
    """The name evaluation tables are filed under: bicubic, or the model file's folder and stem."""
    return "bicubic" if model_path is None else f"{model_path.resolve().parent.name}-{model_path.stem}"


def resolve_model_path(model_arg):
    """A generator file from --model: a shipped model's short name, a .keras file, or a run folder."""
    import upscale

    path = Path(model_arg)
    try:
        return upscale.resolve_model_path(path / "generator.keras" if path.is_dir() else model_arg)
    except FileNotFoundError as err:
        raise ValueError(f"--model {model_arg}: {err} (or give a run folder, or bicubic)") from err


def evaluation_pairs(data, scale):
    """([(name, lr path or None, hr path)], scale): a DATASET's test split (its own LR), or a folder of HR
    images (mod-cropped by scale, LR by resizer.lr_from_hr)."""
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such folder")
    if (data / "test" / "hr").is_dir():
        split, found_scale = scan_split(data, "test", dataset_scale(data))
        if scale is not None and scale != found_scale:
            raise ValueError(f"{data} is a x{found_scale} DATASET, but the model (or --scale) is x{scale}")
        return [(hp.name, lp, hp) for lp, hp in zip(split.lr_paths, split.hr_paths, strict=True)], found_scale
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in resizer.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--data {data}: no images ({', '.join(resizer.IMAGE_SUFFIXES)}) and no test/hr split")
    return [(p.name, None, p) for p in files], scale or 4


def load_eval_pair(lr_path, hr_path, scale):
    """(lr, hr) uint8 arrays: the DATASET's own LR, or LR made from the mod-cropped HR."""
    hr = resizer.load_image(hr_path)
    if lr_path is not None:
        return resizer.load_image(lr_path), hr
    hr = resizer.mod_crop(hr, scale)
    return resizer.lr_from_hr(hr, scale), hr


def niqe_or_nan(img, scale):
    """NIQE (metrics.calculate_niqe, border = scale), or NaN where it is undefined (too small or flat)."""
    try:
        return calculate_niqe(img, scale)
    except ValueError:
        return float("nan")


def nanmean(values):
    """The mean of the defined values (NaN when there is none)."""
    values = np.asarray(values, np.float64)
    return float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else float("nan")


def markdown_table(rows):
    """A markdown table of evaluate's rows, numbers at 2 (PSNR, gains in dB), 3 (NIQE, grid error) or 4 (SSIM)
    decimals, bitrates (kbps) at 1, counts as they are."""
    keys = list(rows[0])

    def fmt(k, v):
        if isinstance(v, str | int):
            return str(v)
        if k in ("kbps", "gain_db"):
            return f"{v:.1f}" if k == "kbps" else f"{v:+.2f}"
        return f"{v:.2f}" if k.endswith("psnr") else f"{v:.3f}" if k.endswith(("niqe", "grid")) else f"{v:.4f}"

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(k, r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def summary_table(mean):
    """A markdown table of evaluate's mean row, one line per method (originals, bicubic, model)."""
    methods = [m for m in ("hr", "bicubic", "model") if any(k.startswith(m + "_") for k in mean)]
    keys = [k for k in ("psnr", "ssim", "niqe", "grid") if any(f"{m}_{k}" in mean for m in methods)]
    rows = [{"method": "originals" if m == "hr" else m,
             **{k: mean.get(f"{m}_{k}", "") for k in keys}} for m in methods]
    return markdown_table(rows)


def write_csv(path, rows):
    """Rows of dicts as a CSV file, written atomically."""
    with resizer.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_tables(stem, rows, heading):
    """An evaluation's rows as stem.csv and as stem.md (the heading, then the markdown table), each written
    atomically; returns the markdown table."""
    table = markdown_table(rows)
    write_csv(stem.with_suffix(".csv"), rows)
    with resizer.atomic_output(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(f"{heading}\n\n{table}\n")
    return table


# ---------------------------------------------------------------- evaluate-stream: models on streamed video
STREAM_CONDITIONS = ("clean", 18, 28, 34)  # `evaluate-stream --crf`: as issue 20 measured the video model
STREAM_VIDEO_CLIPS = 12  # clips of consecutive frames taken from an HR video at most


def evaluate_stream(model_arg, data, conditions=STREAM_CONDITIONS, *, codec_name=None, preset=None, frames=None,
                    window=None, out=None):
    """Score a model (or bicubic) on video as a viewer receives it (codec.py): for each HR photo a window pans
    over it for `frames` frames, each frame is downscaled by the model's scale (antialiased bicubic), and the
    LR clip goes through `codec_name` at each CRF of `conditions` ("clean": no codec), yuv420p, one preset.
    The decoded frames are upscaled by the model and by bicubic, and measured against the HR frames (Y-PSNR and
    SSIM per frame, metrics.py's protocol, border = scale); NIQE on each clip's last frame (an inter frame).
    data: a folder of HR photos, a DATASET (the photos of its test split) or an HR video (clips of its frames).

    Returns rows, one per condition: condition, kbps (mean over clips, at codec.FPS), frames, bicubic and
    model PSNR/SSIM/NIQE and the gain (model - bicubic, dB); printed as a table and written (CSV, md).
    """
    import codec
    import upscale  # no Keras yet: that comes with the model

    codec_name, preset = codec_name or codec.DEFAULT_CODEC, preset or codec.BENCH_PRESET
    frames, window = frames or codec.BENCH_FRAMES, tuple(window or codec.BENCH_WINDOW)
    model, model_path, scale = load_eval_model(model_arg)
    scale = scale or 4
    clips = stream_clips(data, scale, window, frames)
    measured = {c: {"kbps": [], "psnr": [], "ssim": [], "niqe": []} for c in conditions}
    for condition in conditions:
        measured[condition] |= {f"bicubic_{k}": [] for k in ("psnr", "ssim", "niqe")}
    failed = []
    for name, clip in tqdm(clips, desc=f"stream x{scale}", unit="clip"):
        try:
            hr_frames = clip()
        except (ValueError, OSError) as err:
            failed.append((name, str(err)))
            continue
        lr = codec.downscale_frames(hr_frames, scale, "bicubic")
        for condition in conditions:
            decoded, stream = lr, {}
            if condition != "clean":
                decoded, stream = codec.encode_decode(lr, codec_name, crf=condition, preset=preset)
            outputs = {"bicubic_": [bicubic_upscale(f, scale) for f in decoded]}
            if model is not None:
                outputs[""] = list(upscale.upscale_batch(model, decoded))
            into = measured[condition]
            into["kbps"].append(stream.get("kbps", float("nan")))
            for prefix, upscaled in outputs.items():
                into[prefix + "psnr"] += [calculate_psnr(u, h, scale) for u, h in zip(upscaled, hr_frames, strict=True)]
                into[prefix + "ssim"] += [calculate_ssim(u, h, scale) for u, h in zip(upscaled, hr_frames, strict=True)]
                into[prefix + "niqe"].append(niqe_or_nan(upscaled[-1], scale))
    if not measured[conditions[0]]["bicubic_psnr"]:
        raise ValueError(f"{data}: no clip could be made ({'; '.join(r for _, r in failed)})")
    rows = [stream_row(condition, measured[condition], model is not None) for condition in conditions]
    label = model_label(model_arg, model_path)
    source = Path(data).resolve()
    stem = Path(out or "out/eval") / f"{label}_{source.stem if source.is_file() else source.name}_x{scale}_stream"
    what = (f"{model_arg} on {data}, x{scale}: {len(clips) - len(failed)} clips of {frames} frames, {codec_name} "
            f"preset {preset} yuv420p at {codec.FPS} fps; Y channel, border {scale}; NIQE of each clip's last frame")
    print(write_tables(stem, rows, what))
    for name, reason in failed:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    scores = ", ".join(f"{r['condition']} {r['gain_db']:+.2f} dB" if model is not None
                       else f"{r['condition']} {r['bicubic_psnr']:.2f} dB" for r in rows)
    print(f"{what}; {'gain over bicubic of the decoded frames' if model is not None else 'bicubic'}: {scores}; "
          f"{len(failed)} failed; table: {stem}.csv, {stem}.md")
    return rows, failed


def stream_row(condition, values, with_model):
    """One condition's row of evaluate_stream's table from its per-frame (and per-clip) values."""
    row = {"condition": "clean" if condition == "clean" else f"crf {condition}",
           "kbps": "lossless" if condition == "clean" else nanmean(values["kbps"]), "frames": len(values["bicubic_psnr"])}
    if with_model:
        row |= {"model_psnr": nanmean(values["psnr"]), "model_ssim": nanmean(values["ssim"])}
    row |= {"bicubic_psnr": nanmean(values["bicubic_psnr"]), "bicubic_ssim": nanmean(values["bicubic_ssim"])}
    if with_model:
        row |= {"gain_db": row["model_psnr"] - row["bicubic_psnr"], "model_niqe": nanmean(values["niqe"])}
    row["bicubic_niqe"] = nanmean(values["bicubic_niqe"])
    return row


def stream_clips(data, scale, window, frames):
    """[(name, a function giving the clip's HR frames)] for evaluate_stream (frames made when asked for, so one
    bad file fails its clip only): a pan over each photo of a folder or of a DATASET's test split, or runs of
    `frames` consecutive frames of an HR video (at most STREAM_VIDEO_CLIPS, centre-cropped to the window)."""
    import codec
    import upscale

    data = Path(data)
    if data.is_file() and upscale.media_kind(data) == "video":
        return video_clips(data, scale, window, frames)
    photos = stream_photos(data)
    return [(p.name, lambda p=p: codec.benchmark_clip(resizer.load_image(p), scale, window, frames)) for p in photos]


def stream_photos(data):
    """The photos the stream benchmark films: a DATASET's test split (from its manifest), else a folder's images.
    ValueError when there are none."""
    import create_dataset

    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such folder or video")
    manifest = create_dataset.read_manifest(data) if (data / "test").is_dir() else None
    if manifest and manifest.get("sources"):
        photos = [create_dataset.source_file(s["path"]) for s in manifest["sources"] if s["split"] == "test"]
    else:
        photos = sorted(p for p in data.iterdir() if p.suffix.lower() in resizer.IMAGE_SUFFIXES)
    if not photos:
        raise ValueError(f"--data {data}: no photos (nor a DATASET with a test split, nor a video)")
    return photos


def video_clips(path, scale, window, frames):
    """Runs of `frames` consecutive frames of an HR video, centre-cropped to the window (sides multiples of
    2 x scale), at most STREAM_VIDEO_CLIPS of them."""
    import codec
    import upscale

    with contextlib.closing(upscale.open_video(path)) as inp:
        decoded = [f.rgb for f in upscale.video_frames(inp, path, max_frames=frames * STREAM_VIDEO_CLIPS)]
    if len(decoded) < frames:
        raise ValueError(f"{path}: {len(decoded)} frames, fewer than one clip of {frames}")
    height, width = decoded[0].shape[:2]
    w, h = codec.fit_window((width, height), window, 2 * scale)
    top, left = (height - h) // 2, (width - w) // 2
    crops = [np.ascontiguousarray(f[top : top + h, left : left + w]) for f in decoded]
    return [(f"{path.name}@{i}", lambda i=i: crops[i : i + frames]) for i in range(0, len(crops) - frames + 1, frames)]


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    """The command line of `flow.py train` and `flow.py evaluate` (no Keras needed to answer it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a generator (phase 1) and the GAN (phase 2) on a DATASET")
    t.add_argument("--data", required=True, help="DATASET: a folder of {train,val,test}/{lr,hr}/NAME.png, or "
                                                 "sharded TFRecords (create_dataset.py --format tfrecord; also gs://)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/demo (rerun to resume)")
    t.add_argument("--pretrain-epochs", type=int, default=pretrain_epochs)
    t.add_argument("--gan-epochs", type=int, default=gan_epochs)
    t.add_argument("--batch-size", type=int, default=batch_size,
                   help=f"global batch size (default {BASE_BATCH}, or {GPU_BATCH} where a GPU is found)")
    t.add_argument("--steps-per-epoch", type=int, default=steps_per_epoch, help="default: len(train) // batch")
    t.add_argument("--patch-size", type=int, default=patch_size, help="HR crop size; default: whole HR images")
    t.add_argument("--preset", default=preset, choices=list(presets.GENERATOR_PRESETS),
                   help=f"generator preset (default {presets.DEFAULT_PRESET}, the paper's)")
    arch = presets.GENERATOR_PRESETS[presets.DEFAULT_PRESET]
    t.add_argument("--filters", type=int, help=f"generator width (default: the preset's; {arch['filters']})")
    t.add_argument("--blocks", type=int, help=f"residual blocks (default: the preset's; {arch['blocks']})")
    t.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None,
                   help="batch norm in the residual blocks (default: the preset's)")
    t.add_argument("--interpolation-skip", choices=("none", *presets.INTERPOLATIONS),
                   help="add an interpolated copy of the input to the output (default: the preset's)")
    t.add_argument("--reparam", action=argparse.BooleanOptionalAction, default=None,
                   help="train every 3x3 conv of a residual generator as a sum of linear branches (3x3, 1x1, "
                        "1x1-3x3, Sobel/Laplacian, identity) collapsed into one kernel; the exported generators "
                        "are fused: plain, at the preset's cost. With --init-generator a plain model starts it "
                        "exactly (default: off)")
    t.add_argument("--discriminator", choices=presets.DISCRIMINATORS, default=discriminator,
                   help="srgan: the paper's classifier; unet: Real-ESRGAN's per-pixel U-Net with spectral norm")
    t.add_argument("--d-filters", type=int, default=d_filters, help="discriminator width")
    t.add_argument("--gan-loss", choices=presets.GAN_LOSSES, default=gan_loss,
                   help="vanilla: the paper's; ragan: ESRGAN's relativistic average loss")
    t.add_argument("--feature-matching", type=float, default=feature_matching,
                   help="weight of an L1 loss between the discriminator's features of HR and SR (needs no "
                        "pretrained network)")
    t.add_argument("--grid-weight", type=float, default=grid_weight,
                   help="weight of a loss on the mean error at each sub-pixel position, against the fixed pattern "
                        "every `scale` pixels that a discriminator teaches (checked by evaluate's model_grid)")
    t.add_argument("--ema", type=float, default=ema, metavar="DECAY",
                   help="validate and export a moving average of the generator's weights with this decay per step "
                        "(e.g. 0.999, as ESRGAN; 0: off); training goes on with the raw weights")
    t.add_argument("--lr-g", type=float, default=lr_g,
                   help=f"generator's Adam learning rate (default {BASE_LR:g}, x sqrt(batch / {BASE_BATCH}) for "
                        f"batches over {BASE_BATCH})")
    t.add_argument("--lr-d", type=float, default=lr_d, help="discriminator's (default: as --lr-g's)")
    t.add_argument("--lr-schedule", choices=presets.LR_SCHEDULES, default=lr_schedule)
    t.add_argument("--pretrain-loss", choices=presets.PIXEL_LOSSES, default=pretrain_loss)
    t.add_argument("--content-loss", choices=presets.CONTENT_LOSSES, default=content_loss)
    t.add_argument("--vgg-weights", default=vgg_weights, help="VGG19 ImageNet weights file (vgg losses)")
    t.add_argument("--adversarial-weight", type=float, default=adversarial_weight)
    t.add_argument("--init-generator", help="start from this saved generator (.keras)")
    t.add_argument("--seed", type=int, default=seed)
    t.add_argument("--strategy", choices=("auto", "default", "mirrored", "multiworker"), default=strategy)
    t.add_argument("--collective-timeout", type=float, default=collective_timeout, metavar="SECONDS",
                   help="multi-worker: how long a worker waits for the others (at start, and in each step)")
    t.add_argument("--mixed-precision", choices=presets.SWITCHES, default=mixed_precision,
                   help="auto: on with a GPU or a CPU with native bfloat16 (AVX512_BF16/AMX); on means bfloat16 "
                        "(float16 on GPUs older than Ampere)")
    t.add_argument("--jit", choices=presets.SWITCHES, default=jit, help="XLA compilation")
    t.add_argument("--input-pipeline", choices=("auto", "tfdata", "pydataset", "device"), default=input_pipeline,
                   help="auto: tfdata on TensorFlow; device (crops cut on the GPU from the split in its memory) on a "
                        "GPU when the pairs have one size; else pydataset")
    t.add_argument("--time-budget", type=float, default=time_budget, metavar="MINUTES",
                   help="stop when these minutes (from the command's start) are spent, or at the last epoch end "
                        "before: the state is saved and the same command continues; exit 0")
    t.add_argument("--epoch-seconds", type=float, default=epoch_seconds, metavar="SECONDS",
                   help="end each epoch (validation, exports, state) after this much training; --steps-per-epoch is "
                        "then a maximum")
    t.add_argument("--cache-fraction", type=float, default=cache_fraction,
                   help="tf.data caches decoded training images when they fit in this share of free memory")
    t.add_argument("--sample-count", type=int, default=sample_count, help="validation images in the sample grids")
    t.add_argument("--val-limit", type=int, default=val_limit, metavar="N",
                   help="validate on at most N pairs of the validation split, evenly spread (default: all)")
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras fit verbosity")
    e = sub.add_parser("evaluate", help="PSNR/SSIM of a generator (or bicubic) on a DATASET's test split or a folder")
    e.add_argument("--model", required=True,
                   help=f"generator .keras file, run folder, {' or '.join(presets.SHIPPED_MODELS)} (shipped), or bicubic")
    e.add_argument("--data", required=True, help="DATASET (its test split) or a folder of HR images")
    e.add_argument("--scale", type=int, choices=presets.SCALES, help="default: the model's (4 for bicubic on a folder)")
    e.add_argument("--out", help="folder for the CSV and markdown tables (default out/eval)")
    e.add_argument("-v", "--per-image", action="store_true",
                   help="print the per-image table too (it is always written to --out)")
    v = sub.add_parser("evaluate-stream", help="a generator (or bicubic) on streamed video: clips panning over "
                                               "photos, downscaled, encoded and decoded at several CRFs")
    v.add_argument("--model", required=True,
                   help=f"generator .keras file, run folder, {' or '.join(presets.SHIPPED_MODELS)} (shipped), or bicubic")
    v.add_argument("--data", required=True, help="folder of HR photos, DATASET (its test split's photos) or HR video")
    v.add_argument("--crf", type=stream_conditions, default=STREAM_CONDITIONS, metavar="clean,18,28,34",
                   help="conditions: clean (no codec) and CRFs (default clean,18,28,34)")
    v.add_argument("--codec", help="encoder (default libx264)")
    v.add_argument("--preset", help="encoder preset (default medium)")
    v.add_argument("--frames", type=int, help="frames per clip (default 8)")
    v.add_argument("--window", type=int, nargs=2, metavar=("W", "H"),
                   help="HR window panning over each photo (default 1024 576; at most 3/4 of a smaller photo)")
    v.add_argument("--out", help="folder for the CSV and markdown tables (default out/eval)")
    x = sub.add_parser("export", help="write a generator for an on-device runtime (ONNX, OpenVINO, LiteRT) and check "
                                      "it against Keras in the same command")
    x.add_argument("model", help=f"generator .keras file, run folder, or {', '.join(presets.SHIPPED_MODELS)} (shipped)")
    x.add_argument("--format", required=True, choices=list(deploy.EXPORT_FORMATS),
                   help="onnx (ONNX Runtime, players), openvino (.xml + .bin), litert (.tflite, phones)")
    x.add_argument("--int8", metavar="CALIBRATION", type=Path,
                   help="quantise to int8 (OpenVINO, NNCF) calibrated on this folder of frames or video; kept only if "
                        f"it loses <= {deploy.INT8_TOLERANCE_DB:g} dB Y-PSNR against Keras fp32 on frames held back")
    x.add_argument("--out", type=Path, help="output file (default: beside the model, e.g. weights/video_x4.onnx)")
    args = parser.parse_args(argv)
    if args.command == "train":
        check_train_args(parser, args)
    if args.command == "evaluate-stream":
        check_stream_args(parser, args)
    if args.command == "export":
        check_export_args(parser, args)
    return args


def stream_conditions(text):
    """--crf of evaluate-stream: "clean" and integers, comma-separated (argparse type)."""
    conditions = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item != "clean" and not item.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r} is neither clean nor a CRF")
        conditions.append(item if item == "clean" else int(item))
    if not conditions:
        raise argparse.ArgumentTypeError("no condition given")
    return tuple(conditions)


def check_stream_args(parser, args):
    """evaluate-stream's codec, CRFs and sizes, checked before anything is read (exit 2)."""
    import codec

    name = args.codec or codec.DEFAULT_CODEC
    try:
        codec.check_codec(name)
        for crf in (c for c in args.crf if c != "clean"):
            codec.check_rate(name, (crf, crf))
    except codec.CodecError as err:
        parser.error(str(err))
    if args.preset is not None and args.preset not in codec.CODECS[name]["presets"]:
        parser.error(f"--preset {args.preset!r} is not one of {name}'s: {', '.join(codec.CODECS[name]['presets'])}")
    if args.frames is not None and args.frames < 1:
        parser.error("--frames must be >= 1")
    if args.window is not None and min(args.window) < 16:
        parser.error("--window sides must be >= 16")


def check_export_args(parser, args):
    """export's runtime installed (with the install command if not), --int8 only for OpenVINO and an existing
    calibration source, --out's suffix: exit 2 before any model loads."""
    try:
        deploy.check_installed(args.format, "int8" if args.int8 is not None else "fp32")
    except (deploy.MissingRuntime, ValueError) as err:
        parser.error(f"--format {args.format}: {err}")
    if args.int8 is not None and not args.int8.exists():
        parser.error(f"--int8 {args.int8}: no such folder or video of calibration frames")
    suffix = deploy.EXPORT_FORMATS[args.format]
    if args.out is not None and args.out.suffix != suffix:
        parser.error(f"--out {args.out}: a {args.format} export ends with {suffix}")


def export(model_arg, fmt, calibration=None, out=None):
    """`flow.py export`: write the model for `fmt`, check it against Keras fp32, print a one-line summary.
    Returns the exit status: 1 when the export lost more than allowed (nothing is left behind)."""
    try:
        report = deploy.export_model(resolve_model_path(model_arg), fmt, out, calibration)
    except deploy.QualityError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def check_train_args(parser, args):
    """Usage errors argparse cannot see by itself (exit 2 before anything loads)."""
    for name in ("pretrain_epochs", "gan_epochs"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    for name in ("batch_size", "steps_per_epoch", "patch_size", "filters", "blocks", "d_filters", "sample_count",
                 "val_limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.reparam and presets.GENERATOR_PRESETS[args.preset or presets.DEFAULT_PRESET]["block"] != "residual":
        parser.error("--reparam applies to the residual presets, not to imdn's distillation blocks")
    if args.feature_matching < 0 or args.grid_weight < 0:
        parser.error("--feature-matching and --grid-weight must be >= 0")
    if not 0 <= args.ema < 1:
        parser.error("--ema must be in [0, 1)")
    if not 0 <= args.cache_fraction <= 1:
        parser.error("--cache-fraction must be in [0, 1]")
    if args.collective_timeout <= 0:
        parser.error("--collective-timeout must be > 0")
    for name in ("lr_g", "lr_d", "time_budget", "epoch_seconds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            parser.error(f"--{name.replace('_', '-')} must be > 0")


def main(argv=None):
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        if args.command == "export":
            return export(args.model, args.format, args.int8, args.out)
        if args.command == "evaluate-stream":
            _, failed = evaluate_stream(args.model, args.data, args.crf, codec_name=args.codec, preset=args.preset,
                                        frames=args.frames, window=args.window, out=args.out)
            return 1 if failed else 0
        _, failed = evaluate(args.model, args.data, args.scale, args.out, args.per_image)
        return 1 if failed else 0
    except (ValueError, FileNotFoundError) as err:  # DatasetError, ImageLoadError and StateError are ValueErrors
        return report_error(err, args, 2)
    except TimeoutError as err:  # multi-worker peers that never came
        return report_error(err, args, 1)
    except Exception as err:
        if not type(err).__module__.startswith("tensorflow"):
            raise
        return report_error(err, args, 1, traceback_with_verbose_2=True)  # e.g. a multi-worker peer gone


def report_error(err, args, status, traceback_with_verbose_2=False):
    """One line on stderr (a framework message may hold a tensor's values; its traceback comes with --verbose 2);
    returns status. A multi-worker process leaves at once: TensorFlow's teardown would wait for lost peers."""
    import traceback

    runtime = sys.modules.get("runtime")  # loaded with Keras; an error found before that needs neither
    if traceback_with_verbose_2 and getattr(args, "verbose", 1) == 2:
        traceback.print_exception(err)
    print(f"error: {runtime.describe_error(err) if runtime else err}", file=sys.stderr, flush=True)
    if os.environ.get("TF_CONFIG") and getattr(args, "command", "") == "train":
        sys.stdout.flush()
        os._exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
