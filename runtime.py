"""The machine a model runs on: a quiet Keras start, the backend, devices, precision and tf.distribute strategies.

Import this module before Keras (generator.py, gan.py and the command lines do): TensorFlow's C++ start-up lines
("oneDNN custom operations are on", "Could not find cuda drivers", "failed call to cuInit", absl's banner) are
written straight to the process's stderr and ignore TF_CPP_MIN_LOG_LEVEL in recent releases, so the first Keras
import and the first device query run with stderr held in a buffer. It is shown only if the import fails.

    import runtime                   # first
    import keras                     # quiet, whatever the caller's environment
    runtime.gpu_count(), runtime.native_bf16()
"""

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # the Python-side TensorFlow logs


@contextlib.contextmanager
def stderr_held():
    """Send file descriptor 2 (C/C++ libraries' stderr) to a buffer; replay it only if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            buffer.seek(0)
            sys.stderr.write(buffer.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


with stderr_held():
    import keras

    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
        tf.config.list_physical_devices("GPU")  # the CUDA probe, and its lines, happen here once


# ----------------------------------------------------------------------------- backend and devices
def backend():
    """The Keras backend's name: "tensorflow", "jax" or "torch"."""
    return keras.config.backend()


def use_tensorflow():
    """TensorFlow-only features (tf.data, tf.distribute, TensorBoard) apply: the backend is TF."""
    return backend() == "tensorflow"


def tensorboard_available():
    """TensorBoard logging needs the TensorFlow backend (tf.summary) and the tensorboard package."""
    import importlib.util

    return use_tensorflow() and importlib.util.find_spec("tensorboard") is not None


def gpu_count():
    """GPUs visible to the current backend."""
    if backend() == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))
    if backend() == "jax":
        import jax

        return sum(d.platform == "gpu" for d in jax.devices())
    if backend() == "torch":
        import torch

        return torch.cuda.device_count()
    return 0


def cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (empty set where there is none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def native_bf16():
    """True when bfloat16 math runs natively: a GPU, or a CPU with AVX512_BF16 or AMX."""
    return gpu_count() > 0 or bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def resolve_switch(value, auto):
    """An on/off/auto flag as a bool, `auto` deciding the last."""
    return {"on": True, "off": False, "auto": auto}[value]


def set_seed_and_precision(seed, mixed):
    """Seed every generator Keras uses; mixed precision (float16 on GPUs, bfloat16 on CPUs) or float32."""
    keras.utils.set_random_seed(seed)
    policy = "float32"
    if mixed:
        policy = "mixed_float16" if gpu_count() else "mixed_bfloat16"
    keras.config.set_dtype_policy(policy)
    return policy


# ----------------------------------------------------------------------------- tf.distribute
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
    """strategy.scope(), or a no-op outside TensorFlow."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_chief():
    """Whether this process owns the run folder (always, except non-chief multi-worker tasks)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {}))
