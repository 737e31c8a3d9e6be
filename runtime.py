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

import numpy as np

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


def gpu_details():
    """(name, (major, minor) compute capability) of the first GPU the backend sees; None without one. Either part
    is None where the backend does not report it."""
    if not gpu_count():
        return None
    if backend() == "jax":
        import jax

        gpu = next(d for d in jax.devices() if d.platform == "gpu")
        capability = getattr(gpu, "compute_capability", None)
        return gpu.device_kind, tuple(int(v) for v in capability.split(".")) if capability else None
    if backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))
    import tensorflow as tf

    details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
    return details.get("device_name"), details.get("compute_capability")


def gpu_bf16():
    """Whether the GPU computes bfloat16 on its tensor cores (compute capability 8.0, Ampere, and later)."""
    details = gpu_details()
    return bool(details and details[1] and tuple(details[1]) >= (8, 0))


def native_bf16():
    """True when bfloat16 math runs natively: a GPU, or a CPU with AVX512_BF16 or AMX (upscale.cpu_has_native_bf16,
    which the environment variable SR_CPU_BF16=on|off overrides)."""
    import upscale

    return gpu_count() > 0 or upscale.cpu_has_native_bf16()


def resolve_switch(value, auto):
    """An on/off/auto flag as a bool, `auto` deciding the last."""
    return {"on": True, "off": False, "auto": auto}[value]


def set_seed_and_precision(seed, mixed):
    """Seed every generator Keras uses; mixed precision or float32. Mixed is bfloat16 on CPUs and on GPUs from
    Ampere on (same range as float32: no loss scaling), float16 on older GPUs."""
    keras.utils.set_random_seed(seed)
    policy = precision_policy(mixed)
    keras.config.set_dtype_policy(policy)
    return policy


def precision_policy(mixed):
    """The Keras dtype policy set_seed_and_precision sets: float32, mixed_bfloat16 or (older GPUs) mixed_float16."""
    if not mixed:
        return "float32"
    return "mixed_float16" if gpu_count() and not gpu_bf16() else "mixed_bfloat16"


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


HEARTBEAT_TIMEOUT = 30  # seconds without a heartbeat before a worker process counts as gone


def make_strategy(name, collective_timeout):
    """The tf.distribute strategy (None on other backends). Mirrored uses all GPUs, or all logical CPUs.

    multiworker: every collective (and the wait for the peers at start-up) gives up after collective_timeout
    seconds, and a peer whose process is gone is noticed by the coordination service's heartbeat within
    HEARTBEAT_TIMEOUT seconds, so the surviving workers stop instead of waiting forever.
    """
    if not use_tensorflow():
        if backend() == "jax":
            jax_data_parallel()
        return None
    import tensorflow as tf

    if name == "multiworker":
        patch_keras_distributed_build()
        wait_for_peers(collective_timeout)
        configure_coordination(collective_timeout)
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout)
        # TensorFlow's connect holds the GIL (no Python handler can run) and catches SIGTERM only to record it;
        # wait_for_peers made it short, and Ctrl-C ends it outright
        with default_signal_actions():
            return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "mirrored":
        devices = None if gpu_count() else [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    return tf.distribute.get_strategy()


def jax_data_parallel():
    """JAX with several local devices: keras.distribution.DataParallel over all of them (weights replicated,
    each batch split along its first axis), set for every model built from now on. None with one device."""
    devices = keras.distribution.list_devices()
    if len(devices) < 2:
        return None
    distribution = keras.distribution.DataParallel(devices=devices)
    keras.distribution.set_distribution(distribution)
    return distribution


def replica_count(strategy):
    """Devices a global batch is split across: the tf.distribute replicas, or the JAX data-parallel devices."""
    if strategy is not None:
        return strategy.num_replicas_in_sync
    distribution = keras.distribution.distribution() if backend() == "jax" else None
    return len(distribution.device_mesh.devices.reshape(-1)) if distribution is not None else 1


def strategy_scope(strategy):
    """strategy.scope(), or a no-op outside TensorFlow."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def is_chief():
    """Whether this process owns the run folder (always, except non-chief multi-worker tasks)."""
    tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = tf_config.get("task", {})
    kind, index = task.get("type", "chief"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in tf_config.get("cluster", {}))


def writes_run_folder():
    """Whether this process writes the run's outputs (metrics, samples, exports, history): all but the
    non-chief tasks of a multi-worker run, which train in step and keep only their own training state."""
    return not os.environ.get("TF_CONFIG") or is_chief()


# ----------------------------------------------------------------------------- multi-worker
def cluster_addresses():
    """{(job, index): "host:port"} of the chief and worker tasks in TF_CONFIG."""
    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    return {(job, i): address for job in ("chief", "worker") for i, address in enumerate(cluster.get(job, []))}


def own_task():
    """(job, index) of this process in TF_CONFIG ("worker", 0 without one)."""
    task = json.loads(os.environ.get("TF_CONFIG") or "{}").get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0))


def task_name(job=None, index=None):
    """'worker 1 (host:port)': a task of TF_CONFIG's cluster, this process's by default."""
    if job is None:
        job, index = own_task()
    address = cluster_addresses().get((job, int(index)))
    return f"{job} {index}" + (f" ({address})" if address else "")


NOISE_LINES = ("Graph execution error", "Detected at node", "File ", "The error could be", "Additional GRPC",
               ":UNKNOWN", "Traceback", "Stack trace")


def describe_error(err):
    """An exception as one short line. A framework error gives the line that says what happened (not the graph
    node, traceback or tensor values its message carries) and names the cluster task it is about, if any;
    other errors keep their message, unless it prints tensors' values."""
    import re

    text = str(err)
    if "PerReplica:{" in text or "<tf.Tensor" in text:
        text = text.split("(PerReplica:{")[0].split("<tf.Tensor")[0].strip() + " (values elided)"
    if not type(err).__module__.startswith("tensorflow"):
        return text
    text = re.sub(r"\{\{function_node [^}]*\}\}", "", text)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line[:1].isspace()]
    lines = [line for line in lines if not line.startswith(NOISE_LINES)] or [""]
    text = f"{type(err).__name__}: {lines[0][:400]}".rstrip(": ")
    peer = re.search(r"/job:(\w+)/replica:\d+/task:(\d+)", str(err))
    if peer and (peer[1], int(peer[2])) != own_task():
        return f"multi-worker training stopped, {task_name(peer[1], peer[2])} is gone or failed: {text}"
    others = [task_name(*task) for task in cluster_addresses() if task != own_task()]
    if others:  # a collective timed out: TensorFlow does not say on whom it waited
        return f"multi-worker training stopped waiting for {', '.join(others)}: {text}"
    return text


def exit_on_signals(status, hint):
    """From now on SIGINT/SIGTERM end the process at once with `status`, printing one line with `hint`.

    A multi-worker step cannot stop halfway on one worker alone (the others would wait for it in the next
    collective), and a process blocked in a collective never returns to Python to run a signal handler: so
    the signal is read by a thread, through the wakeup file descriptor CPython's C-level handler writes to.
    """
    import signal
    import threading

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: None)  # a Python handler makes CPython write the wakeup fd
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)

    def watch():
        while True:
            for number in os.read(read_fd, 64):
                if number in (signal.SIGINT, signal.SIGTERM):
                    name = signal.Signals(number).name
                    os.write(2, f"\n{name}: {task_name()} stops now; {hint}\n".encode())
                    os._exit(status)

    threading.Thread(target=watch, name="exit-on-signal", daemon=True).start()


def wait_for_peers(timeout):
    """Wait, in Python, until every other task's address accepts connections; TimeoutError after `timeout` s.

    TensorFlow's own wait for the peers (inside the strategy's constructor) holds the GIL and installs a SIGTERM
    handler that only records the signal, so a worker waiting there ignores SIGTERM. Here signals still work.
    Meanwhile this task's own address answers from a plain listening socket, so the others see it too.
    """
    import socket
    import time

    own = own_task()
    addresses = cluster_addresses()
    listener = None
    with contextlib.suppress(OSError):
        host, port = addresses[own].rsplit(":", 1)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("" if host not in ("127.0.0.1", "localhost") else host, int(port)))
        listener.listen(16)
    waiting = {task: address for task, address in addresses.items() if task != own}
    deadline = time.monotonic() + timeout
    try:
        while waiting:
            for task, address in list(waiting.items()):
                host, port = address.rsplit(":", 1)
                with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                    del waiting[task]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(task_name(*task) for task in waiting)
                raise TimeoutError(f"{names} did not start within --collective-timeout {timeout:g} s")
            time.sleep(0.2 if waiting else 0)
    finally:
        if listener is not None:
            listener.close()


@contextlib.contextmanager
def default_signal_actions():
    """SIGINT and SIGTERM terminate the process outright (the kernel's default action) inside the block."""
    import signal

    previous = {sig: signal.signal(sig, signal.SIG_DFL) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def configure_coordination(timeout):
    """Set the coordination service (which MultiWorkerMirroredStrategy uses to start, and to notice dead peers)
    before the strategy does, with bounded waits: peers must register within `timeout` seconds, and a task
    silent for HEARTBEAT_TIMEOUT seconds is declared gone, which aborts the collectives of the others."""
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.collective_all_reduce_strategy import coordination_config_pb2
    from tensorflow.python.eager import context

    cluster = json.loads(os.environ["TF_CONFIG"])["cluster"]
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=len(cluster[job]))
            for job in ("chief", "worker") if job in cluster]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(timeout * 1000),
        heartbeat_timeout_in_ms=HEARTBEAT_TIMEOUT * 1000, shutdown_barrier_timeout_in_ms=int(timeout * 1000))


def is_multi_worker(strategy):
    """Whether strategy spans several processes (MultiWorkerMirroredStrategy with a cluster)."""
    if strategy is None or not use_tensorflow():
        return False
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._num_workers > 1


def chief_values(strategy, values):
    """The chief's copy of a list of numbers, on every worker (an all-reduce where the others add zeros).

    Whatever the other workers hold (a lost temporary folder, a state one epoch behind), they continue from
    what the chief, which owns the run folder, says."""
    import tensorflow as tf

    local = tf.constant(np.asarray(values, np.float64).reshape(-1))
    total = broadcast_from_first_replica(strategy, local)
    return [type(v)(x) for v, x in zip(values, total.numpy().tolist(), strict=True)]


def broadcast_from_first_replica(strategy, tensor):
    """tensor as the first replica (the chief's first device) holds it, on every replica: one all-reduce."""
    import tensorflow as tf

    def contribution():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, tensor, tf.zeros_like(tensor))

    return strategy.reduce("SUM", strategy.run(contribution), axis=None)


def sync_from_chief(strategy, variables):
    """Give every worker the chief's values of `variables` (model weights and optimizer state), in one
    collective: float64 carries float32 weights and int64 step counters exactly."""
    import tensorflow as tf

    variables = list(variables)
    if not variables:
        return
    flat = tf.concat([tf.reshape(tf.cast(v.value, tf.float64), [-1]) for v in variables], axis=0)
    flat = broadcast_from_first_replica(strategy, flat)
    offset = 0
    for v in variables:
        size = int(np.prod(v.shape))
        v.assign(tf.cast(tf.reshape(flat[offset:offset + size], v.shape), v.dtype))
        offset += size


def patch_keras_distributed_build():
    """Two fixes that let Keras 3's fit() train under MultiWorkerMirroredStrategy (applied once, for that
    strategy alone: single-process runs use Keras untouched). They replace two functions of Keras' TensorFlow
    trainer, which is not public API: a Keras release that renames them is refused with a clear error here.

    1. Before training, the TensorFlow trainer builds the model from a first input batch, which it reduces
       across replicas with strategy.reduce(MEAN, (x, y)); MultiWorkerMirroredStrategy cannot reduce a tuple
       and fails with "Attempt to convert a value (PerReplica:{...})" followed by the whole batch. The build
       needs only shapes and dtypes: the input's element_spec gives them without reading any data.
    2. After every step it averages the replicas' logs with strategy.reduce(MEAN, v, axis=0), which fails on
       the scalar losses and metrics ("Invalid reduction dimension 0 for input with 0 dimensions"). Replicas
       hold equal batches, so the mean over replicas (axis=None) is the global batch's mean.
    """
    try:
        from keras.src.backend.tensorflow import trainer

        original_build = trainer.TensorFlowTrainer._maybe_symbolic_build
        original_reduce = trainer.reduce_per_replica
    except (ImportError, AttributeError) as err:
        raise RuntimeError(f"multi-worker training needs Keras' TensorFlow trainer as Keras 3.15 has it "
                           f"(keras {keras.__version__}: {err})") from err
    if getattr(original_build, "builds_from_spec", False):
        return

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None and data_batch is None and self._distribute_strategy is not None:
            dataset = getattr(iterator, "_distributed_dataset", None)  # what fit() iterates over
            if dataset is None:
                dataset = iterator.data_adapter.get_tf_dataset()
            data_batch = batch_spec(dataset.element_spec)
            iterator = None
        return original_build(self, iterator=iterator, data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and is_multi_worker(strategy):
            return keras.tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    maybe_symbolic_build.builds_from_spec = True
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica


def batch_spec(element_spec):
    """One replica's tf.TensorSpec for every tensor of a (distributed) dataset's element_spec."""
    import tensorflow as tf

    def one(spec):
        spec = spec._value_specs[0] if hasattr(spec, "_value_specs") else spec  # PerReplicaSpec
        return tf.TensorSpec([None, *spec.shape[1:]], spec.dtype)

    return tf.nest.map_structure(one, element_spec)
