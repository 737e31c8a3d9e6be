"""Crash safety of a training run: kill -9 at the instant a file is being written, a corrupt newest state,
SIGINT/SIGTERM stopping after the current step. Every resumed run must end with each epoch once in history.csv
and a generator that loads.

The kill instants are made deterministic by a wrapper around resizer.fsync_path, which every write of a run goes
through just before its rename: the wrapper cuts the file it was about to flush in half and SIGKILLs the process.
`pytest -m soak` tries every kind of instant in both phases; `make test` runs one of each phase.
"""

import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import EAGER_FLOW
from test_flow import ROOT, env_for_subprocess, history, train_args

import training
from generator import load_generator

# the subprocess: train, but SIGKILL at the n-th flush of a path whose name contains `pattern`
KILLER = """
import os, signal, sys
from pathlib import Path
import runtime, resizer, flow, warnings
import tensorflow as tf

tf.config.run_functions_eagerly(True)  # wiring, not numbers: no tracing (conftest's EAGER_FLOW)
warnings.filterwarnings("ignore", "Even though", UserWarning)

pattern, nth = sys.argv[1], int(sys.argv[2])
real_fsync, seen = resizer.fsync_path, [0]

def fsync_then_die(path):
    path = Path(path)
    if pattern in str(path):
        seen[0] += 1
        if seen[0] == nth:
            if path.is_file():  # torn: the bytes that were not yet on disk are lost
                with open(path, "r+b") as f:
                    f.truncate(path.stat().st_size // 2)
            print("KILLING at", path, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    real_fsync(path)

resizer.fsync_path = fsync_then_die
sys.exit(flow.main(sys.argv[3:]))
"""

# (what is being written, pattern of the flushed path, which occurrence): 2 pretrain + 2 GAN epochs, one
# state, one history.csv and one generator_last.keras per epoch
INSTANTS = {
    "state file half-written": (training.STATE_FILE, {"pretrain": 2, "gan": 3}),
    "state folder complete, not yet renamed": (".epoch-", {"pretrain": 2, "gan": 3}),
    "history.csv half-written": (".history.csv", {"pretrain": 2, "gan": 3}),
    "generator_last.keras half-written": (".generator_last.keras", {"pretrain": 2, "gan": 3}),
    "best.json half-written": (".best.json", {"pretrain": 1, "gan": 3}),
    "phase marker half-written": (".pretrain.done", {"pretrain": 1}),
}


def run_killed_then_resumed(tiny_dataset, tmp_path, pattern, nth):
    """Kill a 2+2-epoch run at the instant, rerun the same command; return (run folder, rerun output)."""
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run, 2, 2, "--jit", "off")
    killed = subprocess.run([sys.executable, "-c", KILLER, pattern, str(nth), *args], cwd=ROOT,
                            env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "KILLING at" in killed.stdout
    resumed = subprocess.run([sys.executable, *EAGER_FLOW, *args], cwd=ROOT, env=env_for_subprocess(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return run, resumed.stdout + resumed.stderr


def check_finished_run(run):
    """Every epoch once, in order, in the right phase; the generators load; no state or temporary file left."""
    assert [(int(r["epoch"]), r["phase"]) for r in history(run)] == [
        (1, "pretrain"), (2, "pretrain"), (3, "gan"), (4, "gan")]
    for name in ("generator.keras", "generator_last.keras", "generator_pretrain.keras"):
        assert load_generator(run / name).count_params() > 0
    assert (run / "pretrain.done").is_file() and (run / "gan.done").is_file() and not (run / "backup").exists()
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.parametrize("instant,phase", [("state file half-written", "pretrain"),
                                           ("state folder complete, not yet renamed", "gan")])
def test_kill_while_a_checkpoint_is_written_then_resume(tiny_dataset, tmp_path, instant, phase):
    pattern, nth = INSTANTS[instant]
    run, _ = run_killed_then_resumed(tiny_dataset, tmp_path, pattern, nth[phase])
    check_finished_run(run)


@pytest.mark.soak
@pytest.mark.parametrize("instant,phase", [(i, p) for i, (_, nth) in INSTANTS.items() for p in nth])
def test_kill_at_every_kind_of_write_then_resume(tiny_dataset, tmp_path, instant, phase):
    pattern, nth = INSTANTS[instant]
    run, _ = run_killed_then_resumed(tiny_dataset, tmp_path, pattern, nth[phase])
    check_finished_run(run)


# ---------------------------------------------------------------- the last two states, and the fallback
def tiny_compiled_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(keras.optimizers.Adam(1e-2), "mse")
    return model


def trained_step(model, seed):
    rng = np.random.default_rng(seed)
    model.train_on_batch(rng.normal(size=(8, 4)), rng.normal(size=(8, 2)))
    return [w.copy() for w in model.get_weights()]


def test_states_keep_the_last_two_and_fall_back_from_a_corrupt_newest(tmp_path, capsys):
    model, folder = tiny_compiled_model(), tmp_path / "backup"
    saved = {}
    for epoch in (1, 2, 3):
        saved[epoch] = trained_step(model, epoch)
        training.save_state(model, folder, epoch)
    assert [p.name for p in training.list_states(folder)] == ["epoch-0003", "epoch-0002"]
    optimizer_steps = int(model.optimizer.iterations.numpy())

    fresh = tiny_compiled_model()
    assert training.restore_state(fresh, folder) == (3, 0)
    for a, b in zip(fresh.get_weights(), saved[3], strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(fresh.optimizer.iterations.numpy()) == optimizer_steps  # the optimizer's state came back too

    newest = folder / "epoch-0003" / training.STATE_FILE
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 3])  # cut short on disk
    fresh = tiny_compiled_model()
    assert training.restore_state(fresh, folder) == (2, 0)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "epoch-0003 is unreadable" in err and "trying the one before" in err
    for a, b in zip(fresh.get_weights(), saved[2], strict=True):
        np.testing.assert_array_equal(a, b)

    (folder / "epoch-0002" / training.STATE_FILE).write_bytes(b"garbage")
    with pytest.raises(training.StateError, match=f"{folder}: none of its 2 saved training states can be read"):
        training.restore_state(tiny_compiled_model(), folder)


@pytest.mark.slow
def test_a_corrupt_newest_state_of_a_run_falls_back_and_the_run_finishes(tiny_dataset, tmp_path):
    """A run stopped by SIGTERM keeps its state; the newest one is then damaged; the rerun resumes before it."""
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run, 3, 0, "--jit", "off", "--steps-per-epoch", "40")
    process = subprocess.Popen([sys.executable, "flow.py", *args], cwd=ROOT, env=env_for_subprocess(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    backup = run / "backup" / "pretrain"
    deadline = time.time() + 240
    while len(training.list_states(backup)) < 2 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert "SIGTERM: stopped in epoch" in out and "Run the same command again to continue" in out
    newest = training.list_states(backup)[0]
    (newest / training.STATE_FILE).write_bytes(b"\x89HDF\r\n" + b"\0" * 64)  # an h5 header, then nothing
    resumed = subprocess.run([sys.executable, "flow.py", *args], cwd=ROOT, env=env_for_subprocess(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"training state {newest} is unreadable" in resumed.stderr and "Traceback" not in resumed.stderr
    assert [int(r["epoch"]) for r in history(run)] == [1, 2, 3]


@pytest.mark.slow
def test_sigint_stops_after_the_current_step_and_the_rerun_continues_from_it(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    args = train_args(tiny_dataset, run, 2, 0, "--jit", "off", "--steps-per-epoch", "200")
    process = subprocess.Popen([sys.executable, "flow.py", *args], cwd=ROOT, env=env_for_subprocess(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # wait for training to be under way (the first batch logs "1/200"), then Ctrl-C
    started = time.time()
    line = ""
    while "Epoch 1/2" not in line and time.time() - started < 240:
        line = process.stdout.readline() or line
        if process.poll() is not None:
            break
    time.sleep(2)
    os.kill(process.pid, signal.SIGINT)
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 130, out
    assert "SIGINT: stopping after the current step" in out
    (state,) = training.list_states(run / "backup" / "pretrain")
    epoch, step = training.saved_epoch(state.parent)
    assert epoch == 0 and 0 < step < 200 and state.name == f"epoch-0000-step-{step:06d}"
    assert not (run / "history.csv").exists()  # the part-done epoch has no row yet

    resumed = subprocess.run([sys.executable, "flow.py", *args], cwd=ROOT, env=env_for_subprocess(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resuming at epoch 1 step {step + 1}" in resumed.stdout
    assert f"{200 - step}/{200 - step}" in resumed.stdout  # only the remaining steps of epoch 1 were run
    assert [int(r["epoch"]) for r in history(run)] == [1, 2]
