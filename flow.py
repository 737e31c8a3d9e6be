"""Train an SRGAN on a DATASET folder, and measure generators the way SR papers do. Read top to bottom.

    python flow.py train --data data/samples --out runs/demo --pretrain-epochs 10 --gan-epochs 5
    python flow.py evaluate --model runs/demo/generator.keras --data ../shared/data/benchmarks/Set5
    python flow.py evaluate --model bicubic --data ../shared/data/benchmarks/Set5

Phase 1 pretrains the generator with a pixel loss (SRResNet); phase 2 trains it against the discriminator
(SRGAN, Ledig et al. 2017). After every epoch the whole validation split is measured, PSNR and SSIM on the Y
channel with `scale` pixels of border cropped (DESIGN.md), for the model and for bicubic on the same images.

A run folder (runs/NAME/) holds:
    config.json            the resolved configuration; a rerun must match it (runtime keys aside)
    history.csv            one row per epoch of both phases: losses, val_psnr/val_ssim, bicubic_psnr/bicubic_ssim
    generator.keras        best generator of the latest phase by validation SSIM (what upscale.py loads)
    generator_pretrain.keras / generator_gan.keras   the best of each phase; best.json says which epoch
    samples/epoch-NNN.png  LR | bicubic | SR | HR for a few validation images, every epoch
    tensorboard/           scalars and the same image grids (when TensorFlow is installed)
    backup/                BackupAndRestore state of the phase in progress (weights, optimizer, epoch)
    pretrain.done, gan.done   phase markers: a rerun of the same command skips what is finished

Rerunning the same command after a crash or kill -9 continues at the epoch where it stopped, with optimizer state.
TensorFlow is imported only where it is needed: phase 1 also runs on Keras 3 + JAX (input through a PyDataset).
"""

import argparse
import contextlib
import csv
import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from tqdm import tqdm

import resizer
from create_dataset import (
    check_dataset,
    check_patch_size,
    dataset_scale,
    load_split_arrays,
    scan_split,
)
from generator import build_generator, generator_scale, load_generator
from metrics import bicubic_upscale, calculate_psnr, calculate_ssim, measure_pairs

# ---------------------------------------------------------------- configuration: `flow.py train` defaults
pretrain_epochs = 10
gan_epochs = 10
batch_size = 16  # global: split across replicas by tf.distribute
steps_per_epoch = None  # None: one pass over the training split (len(train) // batch_size)
patch_size = None  # HR crop side in pixels; None: whole HR images
preset = None  # generator preset (generator.PRESETS); None: the paper's 16x64 SRResNet
filters, blocks, batch_norm, interpolation_skip = 64, 16, True, None  # used where no preset says otherwise
d_filters = 64  # discriminator width (the paper's 64 -> 512)
lr_g = 1e-4  # Adam, both phases (the paper's 1e-4)
lr_d = 1e-4
lr_schedule = "constant"  # constant | cosine (to 0 over each phase) | step (x0.1 half-way, as the paper's GAN)
pretrain_loss = "l1"  # phase 1 pixel loss: l1 or mse (L1 reaches higher PSNR in practice: Lim et al. 2017)
content_loss = "vgg54"  # phase 2 content loss: mse | l1 | vgg54 | vgg22
adversarial_weight = 1e-3  # perceptual = content + 1e-3 * adversarial
vgg_weights = None  # VGG19 ImageNet weights file; None: the Keras cache
seed = 0
strategy = "auto"  # auto | default | mirrored | multiworker
mixed_precision = "auto"  # auto (on when a GPU is visible) | on | off
jit = "auto"  # XLA: auto (on with a GPU or a non-TensorFlow backend; off on TF's CPU, where it measured slower) | on | off
input_pipeline = "auto"  # auto (tf.data when TensorFlow is importable) | tfdata | pydataset
sample_count = 4  # validation images in the per-epoch sample grids
cache_fraction = 0.25  # cache decoded training images when they fit in this share of available memory

# may change between resumes (a run started on a CPU can continue on a GPU; the VGG file is the same wherever it is)
RUNTIME_KEYS = ("strategy", "mixed_precision", "jit", "input_pipeline", "vgg_weights")
PHASES = {"pretrain": "phase 1/2: generator pretraining (pixel loss)",
          "gan": "phase 2/2: adversarial training"}


# ---------------------------------------------------------------- input pipelines (identical augmentation)
def random_pair_transform(lr, hr, scale, lr_patch, rng):
    """Numpy: the same random aligned crop (lr_patch LR pixels, or whole), flip and 90-degree turn of LR and HR."""
    if lr_patch:
        y, x = rng.integers(0, lr.shape[0] - lr_patch + 1), rng.integers(0, lr.shape[1] - lr_patch + 1)
        lr = lr[y:y + lr_patch, x:x + lr_patch]
        hr = hr[y * scale:(y + lr_patch) * scale, x * scale:(x + lr_patch) * scale]
    turns = int(rng.integers(0, 4)) if lr.shape[0] == lr.shape[1] else 2 * int(rng.integers(0, 2))
    lr, hr = np.rot90(lr, turns), np.rot90(hr, turns)
    if rng.integers(0, 2):
        lr, hr = lr[:, ::-1], hr[:, ::-1]
    return lr, hr


class PairBatches(keras.utils.PyDataset):
    """Training batches from a split held in memory, without TensorFlow (for the JAX backend).

    Batch `index` of epoch `e` depends only on (seed, e, index): the same seed gives the same batches, and a
    resumed run (start_epoch) sees what an uninterrupted one would have.
    """

    def __init__(self, lr_images, hr_images, *, batch_size, steps, scale, patch_size=None, seed=0,
                 start_epoch=0, workers=2):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=8)
        self.lr_images, self.hr_images = lr_images, hr_images
        self.batch_size, self.steps, self.scale, self.seed = batch_size, steps, scale, seed
        self.lr_patch = patch_size // scale if patch_size else None
        self.epoch = start_epoch

    def __len__(self):
        return self.steps

    def _epoch_order(self, epoch):
        """Image indices for the whole epoch: fresh permutations of the split, end to end."""
        n, needed = len(self.lr_images), self.steps * self.batch_size
        perms = [np.random.default_rng([self.seed, epoch, k]).permutation(n) for k in range(-(-needed // n))]
        return np.concatenate(perms)

    def __getitem__(self, index):
        epoch = self.epoch
        order = self._epoch_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, epoch, 1_000_003, index])
        pairs = [random_pair_transform(self.lr_images[i], self.hr_images[i], self.scale, self.lr_patch, rng)
                 for i in order]
        lr = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
        hr = np.stack([p[1] for p in pairs]).astype(np.float32) / 255.0
        return lr, hr

    def on_epoch_end(self):
        self.epoch += 1


def tf_pair_dataset(split, *, batch_size, scale, patch_size=None, seed=0, skip_batches=0, cache=None):
    """tf.data training input: PNG decode, (cache), seeded shuffle, repeat, aligned random crop, flips and
    turns, batch (drop_remainder: static shapes for XLA and replicas), prefetch.

    Randomness is stateless, keyed on (seed, element index), so it is the same for the same seed whatever the
    parallelism; skip_batches fast-forwards a resumed run to where the interrupted one was.
    """
    import tensorflow as tf

    n, autotune = len(split), tf.data.AUTOTUNE
    if cache is None:
        cache = split.decoded_bytes <= cache_fraction * resizer.available_memory_bytes()
    lr_patch = patch_size // scale if patch_size else None
    if lr_patch:
        lr_shape, hr_shape = (lr_patch, lr_patch, 3), (lr_patch * scale, lr_patch * scale, 3)
    else:
        w, h = split.lr_size
        lr_shape, hr_shape = (h, w, 3), (h * scale, w * scale, 3)
    square = lr_shape[0] == lr_shape[1]

    def decode(lr_path, hr_path):
        lr = tf.io.decode_png(tf.io.read_file(lr_path), channels=3)
        hr = tf.io.decode_png(tf.io.read_file(hr_path), channels=3)
        return lr, hr

    def augment(index, lr, hr):
        r = tf.random.stateless_uniform([4], seed=tf.stack([tf.constant(seed, tf.int64), index]),
                                        minval=0, maxval=2**31 - 1, dtype=tf.int64)
        if lr_patch:
            shape = tf.shape(lr, out_type=tf.int64)
            y, x = r[0] % (shape[0] - lr_patch + 1), r[1] % (shape[1] - lr_patch + 1)
            lr = lr[y:y + lr_patch, x:x + lr_patch]
            hr = hr[y * scale:(y + lr_patch) * scale, x * scale:(x + lr_patch) * scale]
        turns = tf.cast(r[2] % 4 if square else 2 * (r[2] % 2), tf.int32)
        lr, hr = tf.image.rot90(lr, turns), tf.image.rot90(hr, turns)
        flip = r[3] % 2 == 1
        lr = tf.cond(flip, lambda: tf.reverse(lr, [1]), lambda: lr)
        hr = tf.cond(flip, lambda: tf.reverse(hr, [1]), lambda: hr)
        lr, hr = tf.ensure_shape(lr, lr_shape), tf.ensure_shape(hr, hr_shape)
        return tf.cast(lr, tf.float32) / 255.0, tf.cast(hr, tf.float32) / 255.0

    paths = tf.data.Dataset.from_tensor_slices(([str(p) for p in split.lr_paths], [str(p) for p in split.hr_paths]))
    if cache:  # decode once, then shuffle decoded images
        ds = paths.map(decode, num_parallel_calls=autotune).cache()
        ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()
        ds = ds.skip(skip_batches * batch_size).map(lambda i, p: augment(i, *p), num_parallel_calls=autotune)
    else:  # shuffle paths, decode in parallel as they come
        ds = paths.shuffle(n, seed=seed, reshuffle_each_iteration=True).repeat().enumerate()
        ds = ds.skip(skip_batches * batch_size)
        ds = ds.map(lambda i, p: augment(i, *decode(*p)), num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(autotune)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


# ---------------------------------------------------------------- runtime: backend, devices, strategy
def tensorflow_available():
    """Whether TensorFlow can be imported (the lead's GPU machine has Keras 3 + JAX only)."""
    return importlib.util.find_spec("tensorflow") is not None


def tensorboard_available():
    """TensorBoard logging needs both TensorFlow (tf.summary) and the tensorboard package."""
    return tensorflow_available() and importlib.util.find_spec("tensorboard") is not None


def use_tensorflow():
    """TensorFlow-only features (tf.data, tf.distribute, TensorBoard) apply: the backend is TF."""
    return keras.config.backend() == "tensorflow"


def gpu_count():
    """GPUs visible to the current backend."""
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if keras.config.backend() == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    return 0


def resolve_strategy_name(requested):
    """auto: multiworker with TF_CONFIG, mirrored with several GPUs, else default."""
    if requested != "auto":
        if requested != "default" and not use_tensorflow():
            raise ValueError(f"--strategy {requested} needs the TensorFlow backend (KERAS_BACKEND=tensorflow)")
        return requested
    if not use_tensorflow():
        return "default"
    if os.environ.get("TF_CONFIG"):
        return "multiworker"
    return "mirrored" if gpu_count() > 1 else "default"


def make_strategy(name):
    """The tf.distribute strategy (None on other backends). Mirrored uses all GPUs, or all logical CPUs."""
    if not use_tensorflow():
        return None
    import tensorflow as tf

    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        devices = None if gpu_count() else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def strategy_scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_chief():
    """Whether this process owns the run folder (always, except non-chief multi-worker tasks)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {}))


def worker_run_path(run, strategy_name):
    """Multi-worker: every task trains and saves in step, but only the chief writes runs/NAME; the others keep
    their own copy (backup included, so each resumes at the same epoch) under runs/NAME/workers/."""
    if strategy_name != "multiworker" or is_chief():
        return run
    task = json.loads(os.environ["TF_CONFIG"])["task"]
    return run / "workers" / f"{task['type']}-{task['index']}"


def resolve_switch(value, auto):
    return {"on": True, "off": False, "auto": auto}[value]


# ---------------------------------------------------------------- configuration of a run
def generator_architecture(cfg_preset, overrides):
    """Filters, blocks, batch_norm, interpolation_skip: the preset's (or the defaults), then explicit flags."""
    from generator import PRESETS

    if cfg_preset is not None and cfg_preset not in PRESETS:
        raise ValueError(f"unknown --preset {cfg_preset!r}; choose from {sorted(PRESETS)}")
    arch = dict(PRESETS[cfg_preset]) if cfg_preset else dict(filters=filters, blocks=blocks, batch_norm=batch_norm,
                                                              interpolation_skip=interpolation_skip)
    arch.update({k: v for k, v in overrides.items() if v is not None})
    if arch["interpolation_skip"] == "none":
        arch["interpolation_skip"] = None
    return arch


def resolve_config(args, splits, scale):
    """The run's full configuration as plain JSON values (what config.json holds)."""
    train = splits["train"]
    steps = args.steps_per_epoch or max(1, len(train) // args.batch_size)
    lr_w, lr_h = train.lr_size or (0, 0)
    # the discriminator's input side: the patch, or the whole HR image when square (else size-agnostic: None)
    hr_size = args.patch_size or (lr_w * scale if lr_w == lr_h else None)
    arch = generator_architecture(args.preset, dict(filters=args.filters, blocks=args.blocks,
                                                    batch_norm=args.batch_norm,
                                                    interpolation_skip=args.interpolation_skip))
    init = str(Path(args.init_generator).resolve()) if args.init_generator else None
    return {
        "data": str(Path(args.data).resolve()), "scale": scale, "train_images": len(train),
        "val_images": len(splits["val"]), "patch_size": args.patch_size, "hr_size": hr_size,
        "pretrain_epochs": args.pretrain_epochs, "gan_epochs": args.gan_epochs, "batch_size": args.batch_size,
        "steps_per_epoch": steps, "preset": args.preset, "generator": arch,
        "discriminator": {"filters": args.d_filters, "hr_size": hr_size},
        "lr_g": args.lr_g, "lr_d": args.lr_d, "lr_schedule": args.lr_schedule, "pretrain_loss": args.pretrain_loss,
        "content_loss": args.content_loss, "adversarial_weight": args.adversarial_weight,
        "vgg_weights": str(Path(args.vgg_weights).resolve()) if args.vgg_weights else None,
        "init_generator": init, "seed": args.seed,
        "strategy": args.strategy, "mixed_precision": args.mixed_precision, "jit": args.jit,
        "input_pipeline": args.input_pipeline,
    }


def config_differences(old, new):
    """'key: old -> new' for every key that defines the training (runtime keys aside)."""
    keys = sorted((set(old) | set(new)) - set(RUNTIME_KEYS) - {"versions"})
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


def make_learning_rate(base, schedule, total_steps):
    """A float or a keras schedule over one phase's steps."""
    if schedule == "constant" or total_steps < 2:
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, decay_steps=total_steps)
    if schedule == "step":
        return keras.optimizers.schedules.PiecewiseConstantDecay([total_steps // 2], [base, base * 0.1])
    raise ValueError(f"unknown --lr-schedule {schedule!r}")


def build_run_generator(config):
    """The generator config.json describes (fresh weights)."""
    return build_generator(config["scale"], **config["generator"])


def export_generator(generator, config, path):
    """Save a float32 copy of the generator (whatever the policy or strategy it trains under), atomically."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clone = build_run_generator(config)
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(generator.get_weights())
    with resizer.atomic_output(path) as tmp:
        clone.save(tmp)


def load_generator_weights(generator, path):
    """Weights of a saved generator into `generator`; a clear error when the architectures differ."""
    try:
        saved = load_generator(path)
        generator.set_weights(saved.get_weights())
    except (ValueError, OSError) as err:
        raise ValueError(f"{path}: cannot start from this generator: it does not match the one built from "
                         f"--preset/--filters/--blocks/--interpolation-skip ({err})") from err


# ---------------------------------------------------------------- callbacks
class StopOnNaN(keras.callbacks.Callback):
    """TerminateOnNaN that also keeps the bad epoch out of the backup and the best checkpoint.

    Checks the losses after every batch and the weights after every epoch (an update can turn weights
    non-finite while its own loss was still finite).
    """

    def __init__(self):
        super().__init__()
        self.tripped = None  # (epoch, batch, what) once non-finite values were seen
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
        if bad and self.tripped is None:
            self.tripped = (self._epoch, batch, ", ".join(bad))
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.tripped is None and not all(np.all(np.isfinite(w)) for w in self.model.get_weights()):
            self.tripped = (epoch, None, "weights")
            self.model.stop_training = True


class RunBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore (weights, optimizer state, epoch) that skips an epoch which went non-finite, and keeps
    its files when fit ends (the phase marker, written after the export, decides that a phase is done)."""

    def __init__(self, backup_dir, nan_guard):
        super().__init__(str(backup_dir), double_checkpoint=True, delete_checkpoint=False)
        self.nan_guard = nan_guard

    def on_epoch_end(self, epoch, logs=None):
        if self.nan_guard.tripped is None:
            super().on_epoch_end(epoch, logs)


def backup_epoch(backup_dir):
    """The epoch a BackupAndRestore folder resumes at (0 when there is none)."""
    meta = Path(backup_dir) / "training_metadata.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        return int(json.loads(meta.read_text())["epoch"])
    return 0


def predict_images(generator, lr_images, batch=16):
    """uint8 SR images for a list of uint8 LR images: batches of same-sized images, made uint8 batch by batch
    (a large validation split never sits in memory as float SR)."""
    out = [None] * len(lr_images)
    by_shape = {}
    for i, im in enumerate(lr_images):
        by_shape.setdefault(im.shape, []).append(i)
    for indices in by_shape.values():
        for start in range(0, len(indices), batch):
            chunk = indices[start:start + batch]
            x = np.stack([lr_images[i] for i in chunk]).astype(np.float32) / 255.0
            sr = resizer.to_uint8(np.asarray(generator.predict(x, batch_size=batch, verbose=0), np.float32))
            for i, image in zip(chunk, sr, strict=True):
                out[i] = image
    return out


def sample_grid(lr, bicubic, sr, hr):
    """Rows of LR (nearest, at HR size) | bicubic | SR | HR, with 2-pixel white gutters."""
    rows = []
    for lo, bi, s, h in zip(lr, bicubic, sr, hr, strict=True):
        scale = h.shape[0] // lo.shape[0]
        nearest = np.repeat(np.repeat(lo, scale, axis=0), scale, axis=1)
        gutter = np.full((h.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([nearest, gutter, bi, gutter, s, gutter, h], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return np.concatenate(rows, axis=0)


class ValidationMetrics(keras.callbacks.Callback):
    """Every epoch: PSNR/SSIM (Y, border = scale) of the generator on the whole validation split and of bicubic
    on the same images, into the logs (progress bar, history.csv, TensorBoard); sample grids to PNG and TB."""

    def __init__(self, generator, val_lr, val_hr, scale, run, count=sample_count, tensorboard=False):
        super().__init__()
        self.generator, self.val_lr, self.val_hr, self.scale = generator, val_lr, val_hr, scale
        self.run, self.count = Path(run), count
        self.bicubic = [bicubic_upscale(lr, scale) for lr in val_lr]
        psnr, ssim = measure_pairs(self.bicubic, val_hr, scale)
        self.bicubic_psnr, self.bicubic_ssim = float(psnr.mean()), float(ssim.mean())
        self.writer = None
        if tensorboard:
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(str(self.run / "tensorboard" / "samples"))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        sr = predict_images(self.generator, self.val_lr)
        psnr, ssim = measure_pairs(sr, self.val_hr, self.scale)
        logs.update(val_psnr=float(psnr.mean()), val_ssim=float(ssim.mean()),
                    bicubic_psnr=self.bicubic_psnr, bicubic_ssim=self.bicubic_ssim)
        with contextlib.suppress(AttributeError, TypeError):
            logs["learning_rate"] = float(np.asarray(self._optimizer().learning_rate))
        k = self.count
        grid = sample_grid(self.val_lr[:k], self.bicubic[:k], sr[:k], self.val_hr[:k])
        (self.run / "samples").mkdir(parents=True, exist_ok=True)
        resizer.save_image(self.run / "samples" / f"epoch-{epoch + 1:03d}.png", grid)
        if self.writer is not None:
            import tensorflow as tf

            with self.writer.as_default():
                tf.summary.image("LR | bicubic | SR | HR", grid[None], step=epoch)  # as Keras' scalars
            self.writer.flush()

    def _optimizer(self):
        return getattr(self.model, "g_optimizer", None) or self.model.optimizer


class ExportBest(keras.callbacks.Callback):
    """The best generator of a phase by val_ssim as generator_<phase>.keras and generator.keras (atomic), and
    the latest finite one as generator_last.keras (for a GAN, the best-SSIM epoch is often its least adversarial).

    The best score survives restarts in best.json, so a resumed run keeps comparing against it.
    """

    def __init__(self, generator, config, run, phase, nan_guard):
        super().__init__()
        self.generator, self.config, self.run, self.phase, self.nan_guard = generator, config, Path(run), phase, nan_guard
        self.path = self.run / "best.json"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get("val_ssim")
        if self.nan_guard.tripped is not None or score is None or not np.isfinite(score):
            return
        export_generator(self.generator, self.config, self.run / "generator_last.keras")
        best = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if score <= best.get(self.phase, {}).get("val_ssim", -np.inf):
            return
        phase_file = self.run / f"generator_{self.phase}.keras"
        export_generator(self.generator, self.config, phase_file)
        with resizer.atomic_output(self.run / "generator.keras") as tmp:
            shutil.copyfile(phase_file, tmp)
        best[self.phase] = {"epoch": epoch + 1, **{k: float(logs[k]) for k in
                                                    ("val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim")}}
        best["latest"] = self.phase
        resizer.write_json(self.path, best)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv with one row per epoch (1-based) of both phases, rewritten atomically.

    Why not keras.callbacks.CSVLogger: in append mode it repeats a row when an epoch is redone after a kill,
    and it cannot add the GAN's columns to the header it wrote in phase 1.
    """

    def __init__(self, path, phase):
        super().__init__()
        self.path, self.phase = Path(path), phase

    def on_epoch_end(self, epoch, logs=None):
        rows = read_history(self.path)
        rows = [r for r in rows if int(r["epoch"]) != epoch + 1]
        rows.append({"epoch": epoch + 1, "phase": self.phase,
                     **{k: float(np.asarray(v)) for k, v in (logs or {}).items()}})
        rows.sort(key=lambda r: int(r["epoch"]))
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with resizer.atomic_output(self.path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)


def read_history(path):
    """history.csv rows as dicts (empty list when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the two phases
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


def training_input(run, start_epoch):
    """tf.data or PyDataset training batches, fast-forwarded to start_epoch."""
    cfg = run.config
    if run.input_pipeline == "tfdata":
        return tf_pair_dataset(run.splits["train"], batch_size=cfg["batch_size"], scale=cfg["scale"],
                               patch_size=cfg["patch_size"], seed=cfg["seed"],
                               skip_batches=start_epoch * cfg["steps_per_epoch"])
    if run.train_arrays is None:
        run.train_arrays = load_split_arrays(run.splits["train"], desc="loading train split")
    return PairBatches(*run.train_arrays, batch_size=cfg["batch_size"], steps=cfg["steps_per_epoch"],
                       scale=cfg["scale"], patch_size=cfg["patch_size"], seed=cfg["seed"], start_epoch=start_epoch,
                       workers=min(4, os.cpu_count() or 1))


def phase_callbacks(run, phase, generator, nan_guard):
    """Order matters: the metrics enter the logs before the export, the CSV and TensorBoard read them; the
    backup comes last, so a kill between them redoes the epoch rather than skipping its export."""
    cbs = [nan_guard,
           ValidationMetrics(generator, run.val_lr, run.val_hr, run.config["scale"], run.path,
                             tensorboard=tensorboard_available()),
           ExportBest(generator, run.config, run.path, phase, nan_guard),
           HistoryCSV(run.path / "history.csv", phase)]
    if tensorboard_available():
        cbs.append(keras.callbacks.TensorBoard(str(run.path / "tensorboard"), write_graph=False))
    cbs.append(RunBackup(run.path / "backup" / phase, nan_guard))
    return cbs + list(run.extra_callbacks)


def fit_phase(run, phase, model, generator, first_epoch, last_epoch):
    """model.fit over global epochs [first_epoch, last_epoch), resuming from the phase's backup.

    Returns the StopOnNaN guard (tripped or not). The backup's epoch counts globally across both phases.
    """
    backup = run.path / "backup" / phase
    start = max(first_epoch, backup_epoch(backup))
    print(f"\n{PHASES[phase]}: epochs {first_epoch + 1}-{last_epoch}"
          + (f", resuming at epoch {start + 1} from {backup}" if start > first_epoch else ""), flush=True)
    nan_guard = StopOnNaN()
    model.fit(training_input(run, start - first_epoch), epochs=last_epoch, initial_epoch=first_epoch,
              steps_per_epoch=run.config["steps_per_epoch"], callbacks=phase_callbacks(run, phase, generator, nan_guard),
              verbose=run.verbose, shuffle=False)  # the input shuffles itself (seeded)
    return nan_guard


def finish_phase(run, phase, nan_guard):
    """Write the phase marker and drop its backup, or explain the NaN stop. True when the phase is done."""
    if nan_guard.tripped is not None:
        epoch, batch, what = nan_guard.tripped
        where = f"epoch {epoch + 1}" + (f", batch {batch + 1}" if batch is not None else "")
        best = run.path / "generator.keras"
        print(f"\nstopped: non-finite values ({what}) in {where} of {phase}; the last good checkpoint is kept "
              f"({best if best.exists() else 'none yet'}; backup at the previous epoch in {run.path / 'backup'}). "
              "Lower the learning rate, or start a new run with --init-generator.", file=sys.stderr)
        return False
    resizer.write_json(run.path / f"{phase}.done", {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    shutil.rmtree(run.path / "backup" / phase, ignore_errors=True)
    with contextlib.suppress(OSError):  # the backup folder itself, once no phase has state in it
        (run.path / "backup").rmdir()
    return True


def optimizer(learning_rate):
    """Adam with the paper's beta_1 = 0.9."""
    return keras.optimizers.Adam(learning_rate, beta_1=0.9)


def pretrain(run, generator):
    """Phase 1: the generator alone, pixel loss, plain Keras compile/fit."""
    import gan

    cfg = run.config
    total = cfg["pretrain_epochs"] * cfg["steps_per_epoch"]
    with strategy_scope(run.strategy):
        generator.compile(optimizer(make_learning_rate(cfg["lr_g"], cfg["lr_schedule"], total)),
                          loss=gan.make_content_loss(cfg["pretrain_loss"]), jit_compile=run.jit)
    guard = fit_phase(run, "pretrain", generator, generator, 0, cfg["pretrain_epochs"])
    return finish_phase(run, "pretrain", guard)


def adversarial(run, generator, content):
    """Phase 2: generator and discriminator against each other, from the pretrained generator."""
    import gan
    from discriminator import build_discriminator

    cfg = run.config
    total = cfg["gan_epochs"] * cfg["steps_per_epoch"]
    hr = cfg["hr_size"]
    with strategy_scope(run.strategy):
        discriminator = build_discriminator(hr_size=hr, filters=cfg["discriminator"]["filters"])
        srgan = gan.SRGAN(generator, discriminator)
        srgan.compile(g_optimizer=optimizer(make_learning_rate(cfg["lr_g"], cfg["lr_schedule"], total)),
                      d_optimizer=optimizer(make_learning_rate(cfg["lr_d"], cfg["lr_schedule"], total)),
                      content_loss=content, adversarial_weight=cfg["adversarial_weight"], jit_compile=run.jit)
        build_for_restore(srgan, generator, discriminator, cfg["scale"], hr)
    first = cfg["pretrain_epochs"]
    guard = fit_phase(run, "gan", srgan, generator, first, first + cfg["gan_epochs"])
    return finish_phase(run, "gan", guard)


def build_for_restore(srgan, generator, discriminator, scale, hr_size):
    """BackupAndRestore needs the model and both optimizers built before fit to load their state into."""
    if not srgan.built:
        srgan.build((None, hr_size // scale, hr_size // scale, 3))
    for opt, net in ((srgan.g_optimizer, generator), (srgan.d_optimizer, discriminator)):
        if not opt.built:
            opt.build(net.trainable_variables)


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


def train(args, extra_callbacks=()):
    """`flow.py train`: checks, config, then phase 1 and phase 2 (each skipped when its marker says done)."""
    started = time.time()
    splits, scale = check_dataset(args.data)
    check_patch_size(splits, args.patch_size, scale)
    config = resolve_config(args, splits, scale)
    if config["pretrain_epochs"] + config["gan_epochs"] < 1:
        raise ValueError("nothing to train: --pretrain-epochs and --gan-epochs are both 0")
    if args.init_generator and not Path(args.init_generator).is_file():
        raise ValueError(f"--init-generator {args.init_generator}: no such file")
    if config["gan_epochs"] and not use_tensorflow():
        raise ValueError(f"phase 2 (--gan-epochs) needs the TensorFlow backend; backend is {keras.config.backend()}")
    if config["gan_epochs"] and config["content_loss"].startswith("vgg"):
        import gan

        gan.find_vgg_weights(config["vgg_weights"])  # offline without the file: its name and where to get it
    strategy_name = resolve_strategy_name(args.strategy)
    run_path = worker_run_path(Path(args.out), strategy_name)
    check_resume(run_path, config)

    pipeline = args.input_pipeline
    if pipeline == "auto":
        pipeline = "tfdata" if use_tensorflow() else "pydataset"
    if pipeline == "tfdata" and not use_tensorflow():
        raise ValueError("--input-pipeline tfdata needs the TensorFlow backend; use pydataset")
    mixed = resolve_switch(args.mixed_precision, gpu_count() > 0)
    # benchmarks/bench_train_step.py: XLA ran training at x0.77 (phase 1) and x0.82 (phase 2) of plain graph mode
    # on the 2-core CPU; JAX always wants jit.
    jit_compile = resolve_switch(args.jit, gpu_count() > 0 or keras.backend.backend() != "tensorflow")

    done = {p: (run_path / f"{p}.done").is_file() or not config[f"{p}_epochs"] for p in PHASES}
    run_path.mkdir(parents=True, exist_ok=True)
    for phase in PHASES:  # a kill between a phase's marker and its backup's removal leaves a stale backup
        if (run_path / f"{phase}.done").is_file():
            shutil.rmtree(run_path / "backup" / phase, ignore_errors=True)
    resizer.write_json(run_path / "config.json", {**config, "versions": {"keras": keras.__version__,
                                                                 "backend": keras.config.backend()}})
    if all(done.values()):
        print(f"{run_path}: all phases are finished; nothing to do")
        print(summarize(run_path, None))
        return 0

    keras.utils.set_random_seed(config["seed"])
    strategy = make_strategy(strategy_name)
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if config["batch_size"] % replicas:
        raise ValueError(f"--batch-size {config['batch_size']} must divide among {replicas} replicas")
    print(f"{run_path}: backend {keras.config.backend()}, strategy {strategy_name} ({replicas} replica(s)), "
          f"mixed precision {'on' if mixed else 'off'}, XLA {'on' if jit_compile else 'off'}, input {pipeline}, scale x{scale}, "
          f"{len(splits['train'])} train / {len(splits['val'])} val images, "
          f"{config['steps_per_epoch']} steps of {config['batch_size']} per epoch", flush=True)

    with strategy_scope(strategy):
        content = None
        if not done["gan"]:  # built first: a missing VGG file fails now, not after phase 1
            import gan

            content = gan.make_content_loss(config["content_loss"], vgg_weights=config["vgg_weights"])
        generator = build_run_generator(config)
    val_lr, val_hr = load_split_arrays(splits["val"])
    run = Run(run_path, config, splits, val_lr, val_hr, strategy, jit_compile, pipeline,
              extra_callbacks=tuple(extra_callbacks), verbose=args.verbose)

    if not done["pretrain"]:
        if config["init_generator"] and backup_epoch(run_path / "backup" / "pretrain") == 0:
            load_generator_weights(generator, config["init_generator"])
        if not pretrain(run, generator):
            return 1
    if not done["gan"]:
        start = phase1_weights(run)
        if start and backup_epoch(run_path / "backup" / "gan") == 0:
            load_generator_weights(generator, start)
        if not adversarial(run, generator, content):
            return 1
    print(summarize(run_path, started))
    return 0


# ---------------------------------------------------------------- evaluate: model vs bicubic on a test set
def evaluation_pairs(data, scale):
    """[(name, lr, hr)] and the scale: a DATASET's test split (its own LR), or a folder of HR images
    (mod-cropped by scale, LR by resizer.lr_from_hr). Unreadable images are returned in `failed`."""
    data = Path(data)
    if not data.is_dir():
        raise ValueError(f"--data {data}: no such folder")
    failed, pairs = [], []
    if (data / "test" / "hr").is_dir():
        split, found_scale = scan_split(data, "test", dataset_scale(data))
        if scale is not None and scale != found_scale:
            raise ValueError(f"--scale {scale} but {data} is a x{found_scale} DATASET")
        for lp, hp in zip(split.lr_paths, split.hr_paths, strict=True):
            pairs.append((hp.name, lp, hp))
        return pairs, found_scale, failed
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in resizer.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"--data {data}: no images ({', '.join(resizer.IMAGE_SUFFIXES)}) and no test/hr split")
    return [(p.name, None, p) for p in files], scale or 4, failed


def load_eval_pair(lr_path, hr_path, scale):
    """(lr, hr) uint8 arrays: the DATASET's own LR, or LR made from the mod-cropped HR."""
    hr = resizer.load_image(hr_path)
    if lr_path is not None:
        return resizer.load_image(lr_path), hr
    hr = resizer.mod_crop(hr, scale)
    return resizer.lr_from_hr(hr, scale), hr


def model_upscaler(model):
    """upscale.upscale_array (tiled inference) when upscale.py is there; otherwise whole-image predict."""
    try:
        import upscale
    except ImportError:
        print("warning: upscale.py not found, so evaluate runs whole-image inference (memory grows with size)",
              file=sys.stderr)

        def whole(lr):
            return resizer.to_uint8(np.asarray(model.predict(lr[None].astype(np.float32) / 255.0, verbose=0)[0]))

        return whole
    return lambda lr: upscale.upscale_array(model, lr)


def evaluate(model_arg, data, scale=None, out=None):
    """Per-image PSNR/SSIM (Y, border = scale) of a model and bicubic; table printed and written (CSV, md).

    Returns (rows, failed): rows of dicts with the mean last; failed lists (name, reason).
    """
    model = None
    if model_arg != "bicubic":
        model_path = Path(model_arg)
        if model_path.is_dir():
            model_path = model_path / "generator.keras"
        if not model_path.is_file():
            raise ValueError(f"--model {model_arg}: no such file (give a .keras generator, a run folder or bicubic)")
        model = load_generator(model_path)
        model_scale = generator_scale(model)
        if scale is not None and scale != model_scale:
            raise ValueError(f"--scale {scale} but {model_path} upscales x{model_scale}")
        scale = model_scale
    pairs, scale, failed = evaluation_pairs(data, scale)
    if model is not None and scale != generator_scale(model):
        raise ValueError(f"{data} is x{scale} but the model upscales x{generator_scale(model)}")
    upscaler = model_upscaler(model) if model is not None else None
    rows = []
    for name, lr_path, hr_path in tqdm(pairs, desc=f"evaluate x{scale}", unit="img"):
        try:
            lr, hr = load_eval_pair(lr_path, hr_path, scale)
        except (ValueError, OSError) as err:
            failed.append((name, str(err)))
            continue
        bicubic = bicubic_upscale(lr, scale)
        row = {"image": name, "size": f"{hr.shape[1]}x{hr.shape[0]}",
               "bicubic_psnr": calculate_psnr(bicubic, hr, scale), "bicubic_ssim": calculate_ssim(bicubic, hr, scale)}
        if upscaler is not None:
            sr = upscaler(lr)
            row.update(model_psnr=calculate_psnr(sr, hr, scale), model_ssim=calculate_ssim(sr, hr, scale))
        rows.append(row)
    if not rows:
        raise ValueError(f"{data}: no image could be evaluated ({'; '.join(r for _, r in failed)})")
    numeric = [k for k in rows[0] if k not in ("image", "size")]
    rows.append({"image": "mean", "size": "", **{k: float(np.mean([r[k] for r in rows])) for k in numeric}})
    label = "bicubic" if model is None else f"{model_path.resolve().parent.name}-{model_path.stem}"
    out = Path(out or "out/eval")
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{label}_{Path(data).resolve().name}_x{scale}"
    table = markdown_table(rows)
    print(table)
    write_csv(stem.with_suffix(".csv"), rows)
    with resizer.atomic_output(stem.with_suffix(".md")) as tmp:
        Path(tmp).write_text(f"{model_arg} on {data}, x{scale}, Y channel, border {scale}\n\n{table}\n")
    for name, reason in failed:
        print(f"failed: {name}: {reason}", file=sys.stderr)
    mean = rows[-1]
    summary = f"bicubic {mean['bicubic_psnr']:.2f} dB / {mean['bicubic_ssim']:.4f}"
    if model is not None:
        summary = f"model {mean['model_psnr']:.2f} dB / {mean['model_ssim']:.4f} vs " + summary
    print(f"{len(rows) - 1} image(s) x{scale}: {summary} (mean PSNR/SSIM); {len(failed)} failed; "
          f"table: {stem}.csv, {stem}.md")
    return rows, failed


def markdown_table(rows):
    """A markdown table of evaluate's rows, numbers at 2 (PSNR) or 4 (SSIM) decimals."""
    keys = list(rows[0])

    def fmt(k, v):
        return v if isinstance(v, str) else (f"{v:.2f}" if k.endswith("psnr") else f"{v:.4f}")

    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(fmt(k, r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path, rows):
    with resizer.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


# ---------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a generator (phase 1) and the GAN (phase 2) on a DATASET")
    t.add_argument("--data", required=True, help="DATASET folder ({train,val,test}/{lr,hr}/NAME.png)")
    t.add_argument("--out", required=True, help="run folder, e.g. runs/demo (rerun to resume)")
    t.add_argument("--pretrain-epochs", type=int, default=pretrain_epochs)
    t.add_argument("--gan-epochs", type=int, default=gan_epochs)
    t.add_argument("--batch-size", type=int, default=batch_size, help="global batch size")
    t.add_argument("--steps-per-epoch", type=int, default=steps_per_epoch, help="default: len(train) // batch")
    t.add_argument("--patch-size", type=int, default=patch_size, help="HR crop size; default: whole HR images")
    t.add_argument("--preset", default=preset, help="generator preset: srresnet, fast")
    t.add_argument("--filters", type=int, help=f"generator width (default {filters} or the preset's)")
    t.add_argument("--blocks", type=int, help=f"residual blocks (default {blocks} or the preset's)")
    t.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None)
    t.add_argument("--interpolation-skip", choices=("none", "bilinear", "bicubic"))
    t.add_argument("--d-filters", type=int, default=d_filters, help="discriminator width")
    t.add_argument("--lr-g", type=float, default=lr_g)
    t.add_argument("--lr-d", type=float, default=lr_d)
    t.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default=lr_schedule)
    t.add_argument("--pretrain-loss", choices=("l1", "mse"), default=pretrain_loss)
    t.add_argument("--content-loss", choices=("mse", "l1", "vgg54", "vgg22"), default=content_loss)
    t.add_argument("--vgg-weights", default=vgg_weights, help="VGG19 ImageNet weights file (vgg losses)")
    t.add_argument("--adversarial-weight", type=float, default=adversarial_weight)
    t.add_argument("--init-generator", help="start from this saved generator (.keras)")
    t.add_argument("--seed", type=int, default=seed)
    t.add_argument("--strategy", choices=("auto", "default", "mirrored", "multiworker"), default=strategy)
    t.add_argument("--mixed-precision", choices=("auto", "on", "off"), default=mixed_precision)
    t.add_argument("--jit", choices=("auto", "on", "off"), default=jit)
    t.add_argument("--input-pipeline", choices=("auto", "tfdata", "pydataset"),
                   default=os.environ.get("SRGAN_INPUT_PIPELINE", input_pipeline))
    t.add_argument("--verbose", type=int, choices=(0, 1, 2), default=1, help="Keras fit verbosity")
    e = sub.add_parser("evaluate", help="PSNR/SSIM of a generator (or bicubic) on a DATASET's test split or a folder")
    e.add_argument("--model", required=True, help="generator .keras file, run folder, or 'bicubic'")
    e.add_argument("--data", required=True, help="DATASET (its test split) or a folder of HR images")
    e.add_argument("--scale", type=int, help="default: the model's (4 for bicubic on a folder)")
    e.add_argument("--out", help="folder for the CSV and markdown tables (default out/eval)")
    return parser.parse_args(argv)


def main(argv=None):
    """Entry point; returns the exit status."""
    args = parse_args(argv)
    try:
        if args.command == "train":
            return train(args)
        _, failed = evaluate(args.model, args.data, args.scale, args.out)
        return 1 if failed else 0
    except (ValueError, FileNotFoundError) as err:  # DatasetError and ImageLoadError are ValueErrors
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
