"""What Keras calls during a flow.py training run: the input batches, the callbacks, and the crash-safe state.

Input: `tf_pair_dataset` (tf.data over a split's PNG files), `PairBatches` (a PyDataset over images held in
memory, for the JAX and PyTorch backends) or `DevicePairBatches` (the whole split in the accelerator's memory,
crops cut there). All draw the same kind of aligned random crops, flips and turns, keyed on (seed, position), so a
resumed run sees the batches an uninterrupted one would have. The two PyDatasets count the seconds the training
loop waits for them (`wait_seconds`), which `Throughput` turns into a share of the step time.

Callbacks, in the order a run uses them (flow.phase_callbacks):
    Guard               stops on non-finite losses or weights, and after the current step on SIGINT/SIGTERM or
                        when the time budget is spent
    MovingAverageSwap   (--ema) its swap_in puts the weights' moving average in the generator for what follows ...
    ValidationMetrics   PSNR/SSIM of the whole validation split, and of bicubic, into the logs; sample grids
    ExportBest          generator_<phase>.keras / generator.keras (best val SSIM), generator_last.keras
    HistoryCSV          history.csv, one whole row per epoch
                        (TensorBoard, and MovingAverageSwap's swap_out: the raw weights back for training and state)
    StateBackup         the training state (weights, both optimizers, epoch, step) after every epoch
    Throughput          step time, images/s and the share of it spent waiting for input, into speed.json

Every file is written to a temporary name, flushed to disk and renamed (resizer.atomic_output), so a crash at any
instant leaves each file whole or absent. The state keeps its last two versions: an unreadable newest one falls
back to the one before.
"""

import contextlib
import csv
import json
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import runtime  # first: Keras starts without TensorFlow's C++ log lines

# isort: split
import keras
import numpy as np
from PIL import Image, ImageDraw

import create_dataset
import resizer
import upscale
from metrics import bicubic_upscale, calculate_niqe, measure_pairs

STATE_FILE = "state.weights.h5"  # model weights and both optimizers' variables
STATE_META = "state.json"  # {"epoch": finished epochs (global), "step": steps done in the next epoch}
STATES_KEPT = 2  # the newest state and the one before it, to fall back on
GRID_COLUMNS = ("LR (nearest)", "bicubic", "SR", "HR")
GRID_HEADER = 14  # pixels of the sample grids' title row
# uncached TFRecord input: a shuffle buffer of this many encoded records (the shards are also read in a new file
# order each epoch, so the buffer only has to mix neighbouring records; a PNG split shuffles all its paths)
RECORD_SHUFFLE = 20_000


# ----------------------------------------------------------------------------- input
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
    """Training batches from a split held in memory, without TensorFlow (for the JAX and PyTorch backends).

    Batch `index` of epoch `e` depends only on (seed, e, index): the same seed gives the same batches, and a
    resumed run (start_epoch, first_step) sees what an uninterrupted one would have. `workers` threads make the
    next batches ahead; Keras asks for each batch from the training loop itself, so the time it blocks here is
    the loop's wait for input (wait_seconds).
    """

    def __init__(self, lr_images, hr_images, *, batch_size, steps, scale, patch_size=None, seed=0,
                 start_epoch=0, first_step=0, workers=2):
        super().__init__(workers=1, use_multiprocessing=False)  # 1: no Keras enqueuer, __getitem__ in the loop
        self.lr_images, self.hr_images = lr_images, hr_images
        self.batch_size, self.steps, self.scale, self.seed = batch_size, steps, scale, seed
        self.lr_patch = patch_size // scale if patch_size else None
        self.epoch, self.first_step = start_epoch, first_step
        self.threads, self.ahead, self.pending = max(1, workers), 2 * max(1, workers), {}
        self.pool = None
        self.wait_seconds, self.batches_served = 0.0, 0

    def __len__(self):
        return self.steps - self.first_step

    def _epoch_order(self, epoch, start, stop):
        """Image indices [start, stop) of the epoch's order: fresh permutations of the split, end to end (only the
        permutations that slice touches are drawn, so a long epoch costs no more per batch)."""
        n = len(self.lr_images)
        perms = [np.random.default_rng([self.seed, epoch, k]).permutation(n) for k in range(start // n, -(-stop // n))]
        offset = (start // n) * n
        return np.concatenate(perms)[start - offset:stop - offset]

    def _batch_draws(self, epoch, index):
        """(image indices, numpy Generator) of batch `index` (counted from the epoch's start) of `epoch`."""
        order = self._epoch_order(epoch, index * self.batch_size, (index + 1) * self.batch_size)
        return order, np.random.default_rng([self.seed, epoch, 1_000_003, index])

    def make_batch(self, epoch, index):
        """Batch `index` (from the epoch's start) of `epoch` as float32 [0, 1] arrays (lr, hr)."""
        order, rng = self._batch_draws(epoch, index)
        pairs = [random_pair_transform(self.lr_images[i], self.hr_images[i], self.scale, self.lr_patch, rng)
                 for i in order]
        lr = np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0
        hr = np.stack([p[1] for p in pairs]).astype(np.float32) / 255.0
        return lr, hr

    def __getitem__(self, index):
        started = time.perf_counter()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pair-batches")
        for k in range(index, min(index + self.ahead, len(self))):  # keep `ahead` batches in the making
            if k not in self.pending:
                self.pending[k] = self.pool.submit(self.make_batch, self.epoch, k + self.first_step)
        batch = self.pending.pop(index).result()
        self.wait_seconds += time.perf_counter() - started
        self.batches_served += 1
        return batch

    def on_epoch_end(self):
        if self.pool is not None:  # a new pool each epoch: flow.py may make a new PairBatches for every epoch
            self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool, self.pending = None, {}
        self.epoch += 1
        self.first_step = 0


class DevicePairBatches(PairBatches):
    """PairBatches cut on the accelerator: the whole split sits in its memory as two uint8 arrays (device_arrays),
    and each batch is one gather that crops, flips and turns every pair at once (keras.ops, jit-compiled on JAX).
    The host only draws the batch's random numbers (the same draws as PairBatches) and dispatches the gather, so
    a small model on a large GPU is not held up by a Python loop over images. Pairs must all have one size
    (create_dataset.py --mode patches or square)."""

    def __init__(self, device_arrays, *, batch_size, steps, scale, patch_size=None, seed=0, start_epoch=0,
                 first_step=0):
        lr_all, hr_all = device_arrays
        count = int(lr_all.shape[0])
        super().__init__(range(count), range(count), batch_size=batch_size, steps=steps, scale=scale,
                         patch_size=patch_size, seed=seed, start_epoch=start_epoch, first_step=first_step)
        self.lr_all, self.hr_all = lr_all, hr_all
        _, height, width, _ = lr_all.shape
        self.crop = (self.lr_patch, self.lr_patch) if self.lr_patch else (int(height), int(width))
        self.size = (int(height), int(width))

    def __getitem__(self, index):
        started = time.perf_counter()
        order, rng = self._batch_draws(self.epoch, index + self.first_step)
        (crop_h, crop_w), (height, width) = self.crop, self.size
        y = rng.integers(0, height - crop_h + 1, len(order))
        x = rng.integers(0, width - crop_w + 1, len(order))
        # the dihedral transforms: bit 0 flips left-right, bit 1 upside down, bit 2 transposes (square crops only)
        turn = rng.integers(0, 8 if crop_h == crop_w else 4, len(order))
        draws = (np.asarray(v, np.int32) for v in (order, y, x, turn))
        batch = _compiled(cut_pairs)(self.lr_all, self.hr_all, *draws, crop=self.crop, scale=self.scale)
        self.wait_seconds += time.perf_counter() - started
        self.batches_served += 1
        return batch


def cut_pairs(lr_all, hr_all, order, y, x, turn, *, crop, scale):
    """(lr, hr) float32 batches: LR crops of crop = (h, w) pixels at (y, x) and the HR crops they came from."""
    (crop_h, crop_w) = crop
    lr = gather_crops(lr_all, order, y, x, turn, crop_h, crop_w)
    hr = gather_crops(hr_all, order, y * scale, x * scale, turn, crop_h * scale, crop_w * scale)
    return lr, hr


def device_arrays(lr_images, hr_images):
    """A split's LR and HR images stacked into two uint8 tensors in the accelerator's memory (the backend's default
    device); a clear error when the pairs differ in size or the flat pixel index would overflow int32."""
    sizes = {image.shape for image in lr_images} | {("hr", *image.shape) for image in hr_images}
    if len(sizes) != 2:
        raise ValueError("--input-pipeline device needs training pairs of one size (create_dataset.py --mode "
                         "patches or square); this split's sizes vary")
    if len(hr_images) * hr_images[0].shape[0] * hr_images[0].shape[1] >= 2**31:
        raise ValueError(f"--input-pipeline device: {len(hr_images)} HR images are too many pixels for one int32 "
                         "index; use --input-pipeline pydataset")
    return keras.ops.convert_to_tensor(np.stack(lr_images)), keras.ops.convert_to_tensor(np.stack(hr_images))


def gather_crops(images, order, y, x, turn, crop_h, crop_w):
    """float32 [0, 1] crops (N, crop_h, crop_w, C) of uint8 images (M, H, W, C): crop k is image order[k] from
    (y[k], x[k]), turned by turn[k] (bit 0: left-right flip, 1: upside-down flip, 2: transpose), in one gather
    of flat pixel indices. The transform acts on the crop's own coordinates, so LR and HR crops of one pair
    (offsets and sides times the scale) stay aligned."""
    from keras import ops

    _, height, width, channels = images.shape
    rows = ops.reshape(ops.arange(crop_h, dtype="int32"), (1, crop_h, 1))
    cols = ops.reshape(ops.arange(crop_w, dtype="int32"), (1, 1, crop_w))
    turn = ops.reshape(turn, (-1, 1, 1))
    transpose, upside_down, mirrored = (turn // 4) % 2 == 1, (turn // 2) % 2 == 1, turn % 2 == 1
    src_rows, src_cols = ops.where(transpose, cols, rows), ops.where(transpose, rows, cols)  # (N, h, w) each
    src_rows = ops.where(upside_down, crop_h - 1 - src_rows, src_rows)
    src_cols = ops.where(mirrored, crop_w - 1 - src_cols, src_cols)
    flat = ((ops.reshape(order, (-1, 1, 1)) * height + ops.reshape(y, (-1, 1, 1)) + src_rows) * width
            + ops.reshape(x, (-1, 1, 1)) + src_cols)
    pixels = ops.take(ops.reshape(images, (-1, channels)), ops.reshape(flat, (-1,)), axis=0)
    return ops.cast(ops.reshape(pixels, (-1, crop_h, crop_w, channels)), "float32") / 255.0


_COMPILED = {}


def _compiled(function):
    """function compiled once with jax.jit on the JAX backend (one dispatch per call; keyword arguments static),
    the function itself elsewhere."""
    if runtime.backend() != "jax":
        return function
    if function not in _COMPILED:
        import inspect

        import jax

        static = [name for name, p in inspect.signature(function).parameters.items() if p.kind == p.KEYWORD_ONLY]
        _COMPILED[function] = jax.jit(function, static_argnames=static)
    return _COMPILED[function]


def tf_pair_dataset(split, *, batch_size, scale, patch_size=None, seed=0, skip_batches=0, cache=None,
                    cache_fraction=0.25, strategy=None):
    """tf.data training input: PNG files or TFRecord shards, decode, (cache), seeded shuffle, repeat, aligned
    random crop, flips and turns, batch (drop_remainder: static shapes for XLA and replicas), prefetch.

    Randomness is stateless, keyed on (seed, element index), so it is the same for the same seed whatever the
    parallelism; skip_batches fast-forwards a resumed run to where the interrupted one was. cache None: decoded
    images are cached when they fit in cache_fraction of the memory available.

    Under a multi-worker strategy the result is a distributed dataset: each worker reads only its own share of
    the files (the path list, or the TFRecord shards, by worker index) and batches batch_size / replicas per
    replica. Sharded by hand rather than by tf.data's auto-sharding: FILE cannot see files behind an in-memory
    path list, and DATA makes every worker read, decode and crop every image only to keep 1/N.
    """
    if runtime.is_multi_worker(strategy):
        workers = strategy.extended._num_workers
        if split.shards and len(split.shards) < workers:
            raise ValueError(f"{len(split.shards)} TFRecord shard(s) cannot be shared among {workers} workers by "
                             "file: rewrite the DATASET with smaller shards (create_dataset.py --shard-mb)")
        if len(split) < workers:
            raise ValueError(f"{len(split)} training image(s) cannot be shared among {workers} workers")

        def worker_input(context):
            return _pair_pipeline(split, context.get_per_replica_batch_size(batch_size), scale, patch_size, seed,
                                  skip_batches, cache, cache_fraction,
                                  shard=(context.input_pipeline_id, context.num_input_pipelines))

        return strategy.distribute_datasets_from_function(worker_input)
    return _pair_pipeline(split, batch_size, scale, patch_size, seed, skip_batches, cache, cache_fraction)


def _pair_pipeline(split, batch_size, scale, patch_size, seed, skip_batches, cache, cache_fraction, shard=None):
    """tf_pair_dataset's pipeline, over the whole split or over shard = (index, count) of its files."""
    import tensorflow as tf

    worker, workers = shard or (0, 1)
    if shard is not None:
        seed = seed * workers + worker  # each worker its own crops and order
    n, autotune = -(-len(split) // workers), tf.data.AUTOTUNE  # this worker's share (the largest)
    if cache is None:
        cache = split.decoded_bytes * n / len(split) <= cache_fraction * resizer.available_memory_bytes()
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

    # source: the worker's pairs in a seeded new order each epoch; load: what decodes one of its elements.
    # Uncached, decoding comes after skip(), so a resumed run does not decode what it skips.
    if split.shards:  # TFRecords: this worker's shards; records shuffled while still encoded (small)
        items = create_dataset.tfrecord_pair_dataset(split.shards, num_workers=workers, worker_index=worker,
                                                     shuffle_files=True, seed=seed, decode=False)
        load, buffer = create_dataset.decode_tfrecord_pair, min(n, RECORD_SHUFFLE)
    else:  # PNG files: this worker's path pairs
        items = tf.data.Dataset.from_tensor_slices(([str(p) for p in split.lr_paths][worker::workers],
                                                    [str(p) for p in split.hr_paths][worker::workers]))
        load, buffer = decode, n
    if cache:  # decode once, then shuffle decoded images
        source = items.map(load, num_parallel_calls=autotune).cache()
        source = source.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        load = None
    else:
        source = items.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = source.repeat().enumerate().skip(skip_batches * batch_size)
    ds = ds.map(lambda i, item: augment(i, *(_apply(load, item) if load else item)), num_parallel_calls=autotune)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(autotune)
    options = tf.data.Options()
    # sharded above when there are several workers; a single worker's replicas split each batch (DATA)
    options.experimental_distribute.auto_shard_policy = (tf.data.experimental.AutoShardPolicy.OFF if shard
                                                         else tf.data.experimental.AutoShardPolicy.DATA)
    return ds.with_options(options)


def _apply(function, element):
    """function on a tf.data element as Dataset.map would call it: a tuple's parts as separate arguments."""
    return function(*element) if isinstance(element, tuple) else function(element)


# ----------------------------------------------------------------------------- crash-safe training state
class StateError(ValueError):
    """No readable training state in a backup folder that has some."""


def build_for_state(model):
    """Create every optimizer variable the state file holds, so loading restores them all (Keras builds
    optimizers lazily, at the first step). SRGAN builds its two in compile."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built:
        with runtime.strategy_scope(getattr(model, "distribute_strategy", None)):  # where its variables live
            optimizer.build(model.trainable_variables)


def save_state(model, folder, epoch, step=0):
    """Write the model's training state (weights and optimizer variables) as folder/epoch-EEEE[-step-SSSSSS]/.

    The state is written into a hidden temporary folder, flushed to disk and renamed into place, so a crash at
    any instant leaves it whole or absent; then all but the newest STATES_KEPT states are removed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{epoch:04d}" + (f"-step-{step:06d}" if step else "")
    tmp = folder / f".{name}{resizer.TEMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_weights(tmp / STATE_FILE)
    resizer.fsync_path(tmp / STATE_FILE)
    resizer.write_json(tmp / STATE_META, {"epoch": epoch, "step": step})
    resizer.fsync_path(tmp)
    final = folder / name
    if final.exists():  # the same point reached again (a redone epoch): the older copy goes
        shutil.rmtree(final)
    os.replace(tmp, final)
    resizer.fsync_path(folder)
    for old in list_states(folder)[STATES_KEPT:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_states(folder):
    """The complete states in a backup folder, newest first (temporary leftovers of a crash are not listed)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    states = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith("epoch-")]
    return sorted(states, key=lambda p: p.name, reverse=True)


def restore_state(model, folder):
    """Load the newest readable state of folder into model; (epoch, step) to resume at, (0, 0) when none.

    An unreadable state (cut short, corrupt) is reported in one line and the previous one is tried; when none
    can be read, StateError says what to do. In a multi-worker run the chief's state is everyone's
    (restore_from_chief).
    """
    strategy = getattr(model, "distribute_strategy", None)
    if runtime.is_multi_worker(strategy):
        return restore_from_chief(model, folder, strategy)
    return _restore_newest(model, folder)


def restore_from_chief(model, folder, strategy):
    """Multi-worker: the chief restores its newest state, then every worker takes the chief's weights,
    optimizer variables and (epoch, step) in one collective. A worker's own state is never needed, so workers
    may start on a fresh machine, or behind or ahead of the chief after a crash."""
    build_for_state(model)
    epoch, step = 0, 0
    failed = ""
    if runtime.is_chief():
        try:
            epoch, step = _restore_newest(model, folder)
        except StateError as err:  # the others must still hear about it, or they would wait for the chief
            epoch, failed = -1, str(err)
    epoch, step = runtime.chief_values(strategy, [epoch, step])
    if epoch < 0:
        raise StateError(failed or "the chief cannot read its saved training state; see the chief's output")
    runtime.sync_from_chief(strategy, state_variables(model))
    return epoch, step


def state_variables(model):
    """Every variable of the training state: the model's weights and its optimizers' variables."""
    optimizers = [getattr(model, name, None) for name in ("optimizer", "g_optimizer", "d_optimizer")]
    variables, seen = [], set()
    for v in list(model.weights) + [v for o in optimizers if o is not None for v in o.variables]:
        if id(v) not in seen:
            seen.add(id(v))
            variables.append(v)
    return variables


def _restore_newest(model, folder):
    """restore_state on one process: the newest readable state of folder, (0, 0) when there is none."""
    states = list_states(folder)
    for path in states:
        try:
            meta = json.loads((path / STATE_META).read_text())
            build_for_state(model)
            model.load_weights(path / STATE_FILE)
            return int(meta["epoch"]), int(meta["step"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            reason = " ".join(str(err).split())[:160]
            print(f"warning: training state {path} is unreadable ({type(err).__name__}: {reason}); "
                  "trying the one before", file=sys.stderr)
    if states:
        raise StateError(f"{folder}: none of its {len(states)} saved training states can be read. Delete that "
                         "folder to redo this phase from its start (finished phases and exported generators "
                         "are kept), or start a new run with --init-generator.")
    return 0, 0


def saved_epoch(folder):
    """The (epoch, step) of the newest state in folder, without loading it; (0, 0) when there is none."""
    for path in list_states(folder):
        with contextlib.suppress(OSError, ValueError, KeyError):
            meta = json.loads((path / STATE_META).read_text())
            return int(meta["epoch"]), int(meta["step"])
    return 0, 0


# ----------------------------------------------------------------------------- callbacks
class Guard(keras.callbacks.Callback):
    """Stops a run cleanly, without letting a bad or partial epoch into the exports, history or state:

    - non-finite losses (checked after every batch) or weights (after every epoch): TerminateOnNaN that also
      keeps the bad epoch out;
    - SIGINT (Ctrl-C) or SIGTERM: stop after the current step and save the state there (save_to), so the same
      command continues from that step. A second signal interrupts at once.
    - deadline (time.time() seconds): the same stop after the first step that ends past it (signalled names
      BUDGET then).
    - epoch_seconds: an epoch ends, as a finished one, after the first step that ends this long after its start
      (fit() then returns: flow.py calls it for one epoch at a time with this).
    The epoch-end callbacks ask `epoch_is_good()` before they write anything.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, save_to=None, steps_done=0, deadline=None, epoch_seconds=None):
        super().__init__()
        self.save_to, self.steps_done = save_to, steps_done  # steps of the current epoch done before this fit
        self.deadline, self.epoch_seconds, self._epoch_ends = deadline, epoch_seconds, None
        self.tripped = None  # (epoch, batch, what) once non-finite values were seen
        self.signalled = None  # (signal name, epoch, step) once a stop was asked for
        self._epoch, self._previous = 0, {}

    def epoch_is_good(self):
        """False once the run has been stopped inside the epoch (a bad value, or a signal)."""
        return self.tripped is None and self.signalled is None

    def on_train_begin(self, logs=None):
        self._pending = None
        # multi-worker: runtime.exit_on_signals ends the process (one worker cannot stop mid-epoch alone)
        if self.save_to is not None and _in_main_thread() and not runtime.is_multi_worker(
                getattr(self.model, "distribute_strategy", None)):
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def on_train_end(self, logs=None):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame):
        self._pending = signal.Signals(signum).name
        for sig, handler in self._previous.items():  # a second signal acts at once
            signal.signal(sig, handler)
        print(f"\n{self._pending}: stopping after the current step (send it again to stop at once)",
              file=sys.stderr, flush=True)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._epoch_ends = time.time() + self.epoch_seconds if self.epoch_seconds else None

    def on_train_batch_end(self, batch, logs=None):
        bad = [k for k, v in (logs or {}).items() if not np.all(np.isfinite(np.asarray(v, np.float64)))]
        if bad and self.tripped is None:
            self.tripped = (self._epoch, batch, ", ".join(bad))
            self.model.stop_training = True
        elif self.signalled is None and (self._pending or self._past_deadline()):
            step = self.steps_done + batch + 1
            save_state(self.model, self.save_to, self._epoch, step)
            self.signalled = (self._pending or BUDGET, self._epoch, step)
            self.model.stop_training = True
        elif self._epoch_ends is not None and time.time() >= self._epoch_ends:
            self.model.stop_training = True  # the epoch is over: its end callbacks validate, export and save

    def _past_deadline(self):
        return self.deadline is not None and time.time() >= self.deadline

    def on_epoch_end(self, epoch, logs=None):
        self.steps_done = 0
        if self.epoch_is_good() and not all(np.all(np.isfinite(w)) for w in self.model.get_weights()):
            self.tripped = (epoch, None, "weights")
            self.model.stop_training = True


BUDGET = "time budget"  # Guard.signalled's name for a stop at the deadline


def _in_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


class StateBackup(keras.callbacks.Callback):
    """The training state after every good epoch (save_state), for a rerun of the same command to resume."""

    def __init__(self, folder, guard):
        super().__init__()
        self.folder, self.guard = Path(folder), guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.epoch_is_good():
            save_state(self.model, self.folder, epoch + 1)


class Throughput(keras.callbacks.Callback):
    """Wall time per training step, images/s and the share of step time the loop spent waiting for its input,
    written to `path` (speed.json, one entry per phase) at every epoch's end and when training ends.

    A step's time runs from one batch's end to the next (Guard, earlier in the list, has read the step's
    losses, so the device has finished it). The first step of every fit() (compilation) and of every epoch
    (after validation) is not timed. The wait is what the input's wait_seconds grew by in between (the
    PyDatasets count it; tf.data runs inside the compiled step, so with it the share is null). Reuse one
    instance for all fit() calls of a phase: the counts add up."""

    def __init__(self, path, phase, batch_size, source=None):
        super().__init__()
        self.path, self.phase, self.batch_size, self.source = Path(path), phase, batch_size, source
        self.step_seconds, self.wait_seconds, self.steps = [], [], 0
        self.first_step_seconds = 0.0  # of the latest fit(): its first step compiles
        self._last, self._fit_began = None, None

    def on_train_begin(self, logs=None):
        self._fit_began = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._last = None

    def on_train_batch_end(self, batch, logs=None):
        now, waited = time.perf_counter(), getattr(self.source, "wait_seconds", None)
        if self._fit_began is not None:
            self.first_step_seconds, self._fit_began = now - self._fit_began, None
        if self._last is not None:
            self.step_seconds.append(now - self._last[0])
            self.wait_seconds.append(None if waited is None or self._last[1] is None else waited - self._last[1])
        self._last = (now, waited)
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        self.write()

    def on_train_end(self, logs=None):
        self.write()

    def figures(self):
        """{"steps", "timed_steps", "step_time_s" (median), "images_per_s", "input_wait_share", "batch_size"}."""
        timed = np.asarray(self.step_seconds, np.float64)
        waits = self.wait_seconds
        share = (float(np.sum(waits) / timed.sum()) if timed.size and all(w is not None for w in waits)
                 else None)
        median = float(np.median(timed)) if timed.size else None
        return {"steps": self.steps, "timed_steps": int(timed.size), "step_time_s": median,
                "images_per_s": self.batch_size / median if median else None, "input_wait_share": share,
                "batch_size": self.batch_size, "input": type(self.source).__name__ if self.source is not None
                else None}

    def write(self):
        if not runtime.writes_run_folder():
            return
        figures = json.loads(self.path.read_text()) if self.path.is_file() else {}
        figures[self.phase] = self.figures()
        resizer.write_json(self.path, figures)


def sample_grid(lr, bicubic, sr, hr, names=None):
    """A labelled grid: a header row naming the columns (LR nearest | bicubic | SR | HR), then one row per
    image, its name on the left; 2-pixel white gutters."""
    rows = []
    for lo, bi, s, h in zip(lr, bicubic, sr, hr, strict=True):
        scale = h.shape[0] // lo.shape[0]
        nearest = np.repeat(np.repeat(lo, scale, axis=0), scale, axis=1)
        gutter = np.full((h.shape[0], 2, 3), 255, np.uint8)
        rows.append(np.concatenate([nearest, gutter, bi, gutter, s, gutter, h], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 2), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    body = np.concatenate(rows, axis=0)
    names = list(names) if names is not None else [""] * len(rows)
    label_width = 8 + 6 * max((len(n) for n in names), default=0) if any(names) else 0
    canvas = Image.new("RGB", (label_width + body.shape[1], GRID_HEADER + body.shape[0]), "white")
    canvas.paste(Image.fromarray(body), (label_width, GRID_HEADER))
    draw = ImageDraw.Draw(canvas)
    column = hr[0].shape[1] + 2
    for k, title in enumerate(GRID_COLUMNS):
        draw.text((label_width + k * column + 2, 2), title, fill="black")
    top = GRID_HEADER
    for name, row in zip(names, rows, strict=True):
        draw.text((2, top + row.shape[0] // 2 - 5), name, fill="black")
        top += row.shape[0]
    return np.asarray(canvas)


def mean_niqe(images, scale):
    """Mean NIQE of the images where it is defined (at least one 96 px block of texture); NaN if nowhere."""
    scores = []
    for image in images:
        with contextlib.suppress(ValueError):
            scores.append(calculate_niqe(image, scale))
    return float(np.mean(scores)) if scores else float("nan")


class ValidationMetrics(keras.callbacks.Callback):
    """Every epoch: PSNR/SSIM (Y, border = scale) of the generator on the whole validation split and of bicubic
    on the same images, into the logs (progress bar, history.csv, TensorBoard); sample grids to PNG and TB.
    niqe=True (the GAN phase) adds val_niqe, the SR images' mean NIQE: the texture the adversarial loss is for."""

    def __init__(self, generator, val_lr, val_hr, scale, run, guard, count=4, names=None, tensorboard=False,
                 niqe=False):
        super().__init__()
        self.generator, self.val_lr, self.val_hr, self.scale, self.niqe = generator, val_lr, val_hr, scale, niqe
        self.run, self.guard, self.count = Path(run), guard, count
        self.names = [Path(n).stem for n in names[:count]] if names is not None else None
        self.bicubic = [bicubic_upscale(lr, scale) for lr in val_lr]
        psnr, ssim = measure_pairs(self.bicubic, val_hr, scale)
        self.bicubic_psnr, self.bicubic_ssim = float(psnr.mean()), float(ssim.mean())
        strategy = getattr(generator, "distribute_strategy", None)
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            # predict_on_batch would split the images among the replicas (with collectives, which under
            # multi-worker only the chief calls here): upscale_batch runs a local compiled forward pass instead
            upscale.compile_model(generator)
        self.writer = None
        if tensorboard and runtime.writes_run_folder():
            import tensorflow as tf

            self.writer = tf.summary.create_file_writer(str(self.run / "tensorboard" / "samples"))

    def on_epoch_end(self, epoch, logs=None):
        if not self.guard.epoch_is_good() or not runtime.writes_run_folder():
            return
        logs = logs if logs is not None else {}
        sr = upscale.upscale_batch(self.generator, self.val_lr)
        psnr, ssim = measure_pairs(sr, self.val_hr, self.scale)
        logs.update(val_psnr=float(psnr.mean()), val_ssim=float(ssim.mean()),
                    bicubic_psnr=self.bicubic_psnr, bicubic_ssim=self.bicubic_ssim)
        if self.niqe:
            logs["val_niqe"] = mean_niqe(sr, self.scale)
        with contextlib.suppress(AttributeError, TypeError):
            logs["learning_rate"] = float(np.asarray(self._optimizer().learning_rate))
        k = self.count
        grid = sample_grid(self.val_lr[:k], self.bicubic[:k], sr[:k], self.val_hr[:k], self.names)
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
    the latest good one as generator_last.keras (for a GAN, the best-SSIM epoch is often its least adversarial).

    The best score survives restarts in best.json, so a resumed run keeps comparing against it.
    """

    def __init__(self, generator, export, run, phase, guard):
        super().__init__()
        self.generator, self.export, self.run, self.phase, self.guard = generator, export, Path(run), phase, guard
        self.path = self.run / "best.json"

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        score = logs.get("val_ssim")
        if not self.guard.epoch_is_good():
            return
        if not runtime.writes_run_folder():  # a multi-worker task's own copy, outside the run folder
            self.export(self.generator, self.run / "generator_last.keras")
            return
        if score is None or not np.isfinite(score):
            return
        self.export(self.generator, self.run / "generator_last.keras")
        best = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if score <= best.get(self.phase, {}).get("val_ssim", -np.inf):
            return
        phase_file = self.run / f"generator_{self.phase}.keras"
        self.export(self.generator, phase_file)
        with resizer.atomic_output(self.run / "generator.keras") as tmp:
            shutil.copyfile(phase_file, tmp)
        best[self.phase] = {"epoch": epoch + 1, **{k: float(logs[k]) for k in
                                                    ("val_psnr", "val_ssim", "bicubic_psnr", "bicubic_ssim")}}
        best["latest"] = self.phase
        resizer.write_json(self.path, best)


def swap_moving_average(optimizer):
    """Exchange the values of the weights an optimizer with use_ema=True trains and their moving averages (as
    keras.callbacks.SwapEMAWeights does, through the same attributes, on any backend); returns the values taken
    out of the weights, as numpy arrays."""
    taken = []
    for var, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True):
        taken.append(keras.ops.convert_to_numpy(var))
        var.assign(average)
        average.assign(taken[-1])
    return taken


class MovingAverageSwap:
    """Two epoch-end callbacks around the ones that should see the moving average of the weights (validation,
    exports, history): `swap_in` puts the average in the model, `swap_out` puts the raw weights back, so training
    goes on from them and the saved training state holds both as they are.

    keras.callbacks.SwapEMAWeights does not fit here: it swaps for evaluate(), which validation does not use, and
    with swap_on_epoch leaves the average in the model for every callback after it, the state backup included.
    Also, fit() ends with optimizer.finalize_variable_values, which overwrites the raw weights with the average;
    flow.py calls fit() again after a resumed part-epoch, so swap_out restores the raw weights when fit() ends
    (those swap_in took out at the last epoch's end: nothing trains between the two).
    """

    def __init__(self, optimizer):
        self.optimizer, self.raw = optimizer, None
        self.swap_in = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: self._swap_in())
        self.swap_out = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: swap_moving_average(optimizer),
                                                       on_train_end=lambda logs: self._restore_raw())

    def _swap_in(self):
        self.raw = swap_moving_average(self.optimizer)

    def _restore_raw(self):
        if self.raw is not None:
            for var, value in zip(self.optimizer._trainable_variables, self.raw, strict=True):
                var.assign(value)


class HistoryCSV(keras.callbacks.Callback):
    """history.csv with one row per epoch (1-based) of both phases, rewritten atomically. An epoch stopped on
    non-finite values is on record (with its nan); one stopped by a signal is not, until it is finished.

    Why not keras.callbacks.CSVLogger: in append mode it repeats a row when an epoch is redone after a kill,
    and it cannot add the GAN's columns to the header it wrote in phase 1.
    """

    def __init__(self, path, phase, guard):
        super().__init__()
        self.path, self.phase, self.guard = Path(path), phase, guard

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.signalled is not None or not runtime.writes_run_folder():  # part-done epoch: row comes later
            return
        rows = [r for r in read_history(self.path) if int(r["epoch"]) != epoch + 1]
        rows.append({"epoch": epoch + 1, "phase": self.phase,
                     **{k: float(np.asarray(v)) for k, v in (logs or {}).items()}})
        write_history(self.path, rows)


def read_history(path):
    """history.csv rows as dicts (empty list when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_history(path, rows):
    """history.csv from rows, sorted by epoch, written atomically."""
    rows = sorted(rows, key=lambda r: int(r["epoch"]))
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["epoch", "phase"]
    with resizer.atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def truncate_history(path, last_epoch):
    """Drop the rows after last_epoch: a resumed run redoes those epochs and writes their rows again."""
    rows = read_history(path)
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) != len(rows):
        write_history(path, kept)
