"""Multi-worker training with real processes: two `flow.py train` workers on 127.0.0.1 (MultiWorkerMirroredStrategy),
in either start order; a worker killed mid-run (the survivor stops, both restarted finish without repeating an
epoch); a worker alone (its wait is bounded, SIGTERM ends it); JAX data parallelism over two CPU devices.
The chief-first order, a TFRecord DATASET sharded by file and the kill test are `soak` tests (pytest -m soak): each
starts two or four TensorFlow processes.

Models are the tiny ones of test_flow.py (8 filters, 1 block), on 32x32 HR / 8x8 LR pairs.
"""

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_TRAIN

import flow
import runtime
from generator import load_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN  # float32 on every CPU (see conftest)


def free_ports(count):
    """Ports nothing listens on now (bound to port 0, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def tf_config(ports, index):
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                       "task": {"type": "worker", "index": index}})


def start_worker(index, ports, args, log):
    """One `flow.py train` worker process; its output goes to log, its temporary folder beside it (TMPDIR)."""
    temp = Path(log).parent / "tmp"
    temp.mkdir(exist_ok=True)
    env = {**os.environ, "TF_CONFIG": tf_config(ports, index), "KERAS_BACKEND": "tensorflow", "TMPDIR": str(temp),
           "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, str(ROOT / "flow.py"), *args], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def run_workers(args, logs, first=0, delay=3.0, timeout=400):
    """Both workers, `first` started `delay` seconds before the other; (exit statuses, outputs)."""
    ports = free_ports(2)
    processes = {first: start_worker(first, ports, args, logs[first])}
    time.sleep(delay)
    processes[1 - first] = start_worker(1 - first, ports, args, logs[1 - first])
    try:
        statuses = [processes[i].wait(timeout) for i in (0, 1)]
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
    return statuses, [Path(log).read_text() for log in logs]


def worker_folder(run, index=1):
    """Where worker `index` of a run in tmp_path/runs/ keeps its own files: its TMPDIR (tmp_path/tmp), not the run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TF_CONFIG", tf_config([1, 2], index))
        folder = flow.worker_run_path(run, "multiworker")
    return run.parents[1] / "tmp" / folder.relative_to(tempfile.gettempdir())


def history_epochs(run):
    with open(run / "history.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def assert_same_trained_weights(a, b):
    """The trainable weights of two saved generators are equal. (Batch norm's moving statistics are not
    trained: each worker averages those of its own batches, as each GPU does under MirroredStrategy.)"""
    a, b = load_generator(a), load_generator(b)
    assert a.trainable_weights
    for x, y in zip(a.trainable_weights, b.trainable_weights, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6, err_msg=x.path)


# ---------------------------------------------------------------- both phases, in either start order
@pytest.mark.slow
@pytest.mark.parametrize("first, data", [pytest.param(0, "png", marks=pytest.mark.soak), (1, "png"),
                                         pytest.param(1, "tfrecord", marks=pytest.mark.soak)],
                         ids=["chief-first", "worker-first", "tfrecord-shards"])
def test_two_workers_train_both_phases_in_step(tiny_dataset, png_and_tfrecord_datasets, tmp_path, first, data):
    run = tmp_path / "runs" / "mw"
    dataset = png_and_tfrecord_datasets[1] if data == "tfrecord" else tiny_dataset
    args = ["train", "--data", str(dataset), "--out", str(run), "--pretrain-epochs", "1", "--gan-epochs", "1",
            *TINY]
    statuses, (chief, worker) = run_workers(args, [tmp_path / "w0.log", tmp_path / "w1.log"], first=first)
    assert statuses == [0, 0], chief[-3000:] + worker[-3000:]
    assert "strategy multiworker (2 replica(s))" in chief and "PerReplica" not in chief + worker

    # the chief wrote the run folder, once; the worker wrote nothing into it
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["best.json", "config.json", "gan.done", "generator.keras", "generator_gan.keras", "generator_last.keras",
         "generator_pretrain.keras", "history.csv", "pretrain.done", "samples", "speed.json", "tensorboard"])
    assert history_epochs(run) == [1, 2]
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch-001.png", "epoch-002.png"]
    assert "worker 1 (127.0.0.1:" in worker and "done; the chief writes the run folder" in worker

    # both trained the same weights: the worker's own copy of the last generator equals the chief's
    mine = worker_folder(run)
    assert run.resolve() not in mine.resolve().parents
    assert_same_trained_weights(run / "generator_last.keras", mine / "generator_last.keras")


# ---------------------------------------------------------------- a worker killed: bounded stop, clean resume
@pytest.mark.soak  # two runs of two workers: about 100 s on 2 cores; `pytest -m soak`
def test_a_killed_worker_stops_the_other_and_both_resume_without_repeating_an_epoch(tiny_dataset, tmp_path):
    run = tmp_path / "runs" / "mw"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--pretrain-epochs", "3", "--gan-epochs", "0",
            *TINY, "--steps-per-epoch", "100", "--collective-timeout", "60"]  # epochs of seconds, even at 19 ms/step
    ports = free_ports(2)
    logs = [tmp_path / "a0.log", tmp_path / "a1.log"]
    chief, worker = (start_worker(i, ports, args, logs[i]) for i in (0, 1))
    try:
        deadline = time.time() + 300
        while not (run / "history.csv").is_file() and time.time() < deadline and chief.poll() is None:
            time.sleep(0.2)
        assert (run / "history.csv").is_file(), logs[0].read_text()[-3000:]
        time.sleep(0.5)  # inside epoch 2
        worker.kill()
        killed = time.time()
        status = chief.wait(90)
        took = time.time() - killed
    finally:
        for p in (chief, worker):
            if p.poll() is None:
                p.kill()
    text = logs[0].read_text()
    assert status == 1 and took < 60, text[-3000:]
    error_lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "worker 1 (127.0.0.1:" in error_lines[0], text[-3000:]
    assert "numpy=" not in text
    done_epochs = history_epochs(run)
    assert done_epochs and done_epochs == list(range(1, len(done_epochs) + 1)) and len(done_epochs) < 3

    statuses, (chief_out, worker_out) = run_workers(args, [tmp_path / "b0.log", tmp_path / "b1.log"], delay=1.0)
    assert statuses == [0, 0], chief_out[-3000:] + worker_out[-3000:]
    assert f"resuming at epoch {done_epochs[-1] + 1}" in chief_out
    assert f"Epoch {done_epochs[-1]}/3" not in chief_out
    assert history_epochs(run) == [1, 2, 3]  # each epoch once
    assert_same_trained_weights(run / "generator_last.keras", worker_folder(run) / "generator_last.keras")


# ---------------------------------------------------------------- a worker alone: bounded wait, SIGTERM ends it
@pytest.mark.slow
def test_a_worker_alone_gives_up_after_the_timeout_and_exits_on_sigterm(tiny_dataset, tmp_path):
    args = ["train", "--data", str(tiny_dataset), "--pretrain-epochs", "1", "--gan-epochs", "0", *TINY]
    timed = start_worker(1, free_ports(2), [*args, "--out", str(tmp_path / "a"), "--collective-timeout", "5"],
                         tmp_path / "timed.log")
    termed = start_worker(1, free_ports(2), [*args, "--out", str(tmp_path / "b")], tmp_path / "termed.log")
    try:
        deadline = time.time() + 240
        while "waiting up to" not in (tmp_path / "termed.log").read_text() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # inside the wait for worker 0
        termed.send_signal(signal.SIGTERM)
        sent = time.time()
        assert termed.wait(30) == flow.EXIT_STOPPED
        assert time.time() - sent < 10
        assert timed.wait(240) != 0
    finally:
        for p in (timed, termed):
            if p.poll() is None:
                p.kill()
    timed_text = (tmp_path / "timed.log").read_text()
    error_lines = [line for line in timed_text.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and re.fullmatch(
        r"error: worker 0 \(127\.0\.0\.1:\d+\) did not start within --collective-timeout 5 s", error_lines[0])
    assert "SIGTERM: worker 1 (127.0.0.1:" in (tmp_path / "termed.log").read_text()


# ---------------------------------------------------------------- helpers that need no cluster
def test_framework_errors_become_one_line_naming_the_peer(monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv("TF_CONFIG", tf_config([1111, 2222], 0))
    message = ("Graph execution error:\n\nDetected at node Adam/update defined at (most recent call last):\n"
               '  File "flow.py", line 1, in <module>\n\nCollective ops is aborted by: recvmsg:Connection reset\n'
               "Additional GRPC error information from remote target /job:worker/replica:0/task:1 while calling\n")
    line = runtime.describe_error(tf.errors.UnavailableError(None, None, message))
    assert line == ("multi-worker training stopped, worker 1 (127.0.0.1:2222) is gone or failed: "
                    "UnavailableError: Collective ops is aborted by: recvmsg:Connection reset")
    values = ValueError("Attempt to convert a value (PerReplica:{\n  0: <tf.Tensor: shape=(2, 8, 8, 3), numpy=[[1]]")
    assert runtime.describe_error(values) == "Attempt to convert a value (values elided)"


def test_the_collective_timeout_flag_is_checked():
    with pytest.raises(SystemExit):
        flow.parse_args(["train", "--data", "d", "--out", "o", "--collective-timeout", "0"])
    assert flow.parse_args(["train", "--data", "d", "--out", "o"]).collective_timeout == flow.collective_timeout


# ---------------------------------------------------------------- JAX: data parallel over the local devices
@pytest.mark.slow
def test_jax_data_parallel_over_two_cpu_devices_matches_one_device(tiny_dataset, tmp_path):
    pytest.importorskip("jax")
    args = ["train", "--data", str(tiny_dataset), "--pretrain-epochs", "1", "--gan-epochs", "0", *TINY]
    processes = {}
    for devices in (1, 2):
        env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        env.pop("TF_CONFIG", None)
        processes[devices] = subprocess.Popen(
            [sys.executable, str(ROOT / "flow.py"), *args, "--out", str(tmp_path / f"d{devices}")], cwd=ROOT,
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    outputs = {d: p.communicate(timeout=400)[0] for d, p in processes.items()}
    assert [processes[d].returncode for d in (1, 2)] == [0, 0], outputs[2][-3000:]
    assert "backend jax, strategy default (1 replica(s))" in outputs[1]
    assert "backend jax, strategy default (2 replica(s))" in outputs[2]
    one, two = (load_generator(tmp_path / f"d{d}" / "generator_last.keras").get_weights() for d in (1, 2))
    for w, v in zip(one, two, strict=True):
        np.testing.assert_allclose(w, v, rtol=1e-4, atol=1e-5)
