"""flow.py: training runs end to end (both phases), resume after kill -9, errors before training, NaN stop,
MirroredStrategy on two logical CPUs, the PyDataset input path, and evaluate's tables.

Models are tiny (8 filters, 1 block); runs are a few steps of batch 2 on 32x32 HR / 8x8 LR pairs.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import EAGER_FLOW, TINY_TRAIN, write_tiny_dataset
from PIL import Image

import create_dataset
import flow
import metrics
import resizer
import runtime
import training
from generator import build_generator, load_generator

ROOT = Path(__file__).resolve().parents[1]
TINY = TINY_TRAIN  # float32 on every CPU (see conftest)


def train_args(data, out, pretrain=1, gan=1, *extra):
    return ["train", "--data", str(data), "--out", str(out), "--pretrain-epochs", str(pretrain),
            "--gan-epochs", str(gan), *TINY, *extra]


def history(run):
    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def env_for_subprocess():
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow", "PYTHONUNBUFFERED": "1"}


# ---------------------------------------------------------------- a whole run, both phases
@pytest.mark.slow
def test_train_both_phases_writes_every_run_artefact(tiny_run, capsys):
    tiny_dataset, run, out = tiny_run  # train_args(dataset, run, 2, 1, "--grid-weight", "0.5")
    assert "done" in out and "best epoch" in out and str(run / "generator.keras") in out

    config = json.loads((run / "config.json").read_text())
    assert config["scale"] == 4 and config["hr_size"] == 32 and config["steps_per_epoch"] == 2
    assert config["generator"] == {"filters": 8, "blocks": 1, "batch_norm": True, "interpolation_skip": None,
                                   "upsampler": "stages", "head_kernel": 9, "block": "residual", "output": "rgb",
                                   "reparam": False}
    assert config["pretrain_epochs"] == 2 and config["gan_epochs"] == 1 and config["grid_weight"] == 0.5

    rows = history(run)
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(1, "pretrain"), (2, "pretrain"), (3, "gan")]
    for column in ("loss", "g_loss", "d_loss", "d_real", "d_fake", "val_psnr", "val_ssim", "bicubic_psnr",
                   "bicubic_ssim", "learning_rate"):
        assert column in rows[0], column
    assert rows[0]["loss"] and not rows[0]["g_loss"] and rows[2]["g_loss"] and not rows[2]["loss"]
    assert 0 < float(rows[2]["d_real"]) < 1 and 0 < float(rows[2]["d_fake"]) < 1
    assert float(rows[2]["grid_loss"]) > 0 and not rows[0]["grid_loss"]  # the GAN phase's loss against a 4x4 pattern

    # bicubic and model figures are the per-image means of the protocol on the whole validation split
    splits, _ = create_dataset.check_dataset(tiny_dataset, ("val",))
    val_lr, val_hr = create_dataset.load_split_arrays(splits["val"])
    bicubic = [resizer.resize(lr, (32, 32), "bicubic") for lr in val_lr]
    expected_psnr = np.mean([metrics.calculate_psnr(b, h, 4) for b, h in zip(bicubic, val_hr, strict=True)])
    assert float(rows[0]["bicubic_psnr"]) == pytest.approx(expected_psnr)
    best = json.loads((run / "best.json").read_text())
    assert best["latest"] == "gan" and best["gan"]["epoch"] == 3
    exported = load_generator(run / "generator.keras")  # safe mode
    sr = [resizer.to_uint8(exported.predict(lr[None] / 255.0, verbose=0)[0]) for lr in val_lr]
    assert np.mean([metrics.calculate_ssim(s, h, 4) for s, h in zip(sr, val_hr, strict=True)]) == pytest.approx(
        best["gan"]["val_ssim"], abs=1e-4)
    assert float(rows[2]["val_ssim"]) == pytest.approx(best["gan"]["val_ssim"])
    assert (run / "generator_pretrain.keras").is_file() and (run / "generator_gan.keras").is_file()
    last = load_generator(run / "generator_last.keras")  # the final epoch's weights, whatever its SSIM
    assert float(rows[-1]["val_ssim"]) == pytest.approx(np.mean([metrics.calculate_ssim(
        resizer.to_uint8(last.predict(lr[None] / 255.0, verbose=0)[0]), h, 4) for lr, h in zip(val_lr, val_hr, strict=True)]),
        abs=1e-4)
    assert best["pretrain"]["epoch"] in (1, 2)

    grids = sorted(p.name for p in (run / "samples").glob("*.png"))
    assert grids == ["epoch-001.png", "epoch-002.png", "epoch-003.png"]
    grid = np.asarray(Image.open(run / "samples" / "epoch-003.png"))
    # a header row, then two val images: LR | bicubic | SR | HR, each row named on the left
    header = training.GRID_HEADER
    assert grid.shape[0] == header + 2 * (32 + 2) and grid.shape[1] > 4 * 32 + 3 * 2
    body = grid[header:, -(4 * 32 + 3 * 2):]
    hr = resizer.load_image(sorted((tiny_dataset / "val" / "hr").glob("*.png"))[0])
    np.testing.assert_array_equal(body[:32, -32:], hr)  # the HR column, untouched by the labels
    assert (grid[:header] < 128).any() and (grid[header:, :-(4 * 32 + 3 * 2)] < 128).any()  # text drawn
    for sub in ("train", "validation", "samples"):
        assert list((run / "tensorboard" / sub).glob("events.out.tfevents.*")), sub
    assert (run / "pretrain.done").is_file() and (run / "gan.done").is_file()
    assert not (run / "backup").exists()
    assert not [p for p in run.rglob("*") if resizer.is_temp_output(p)]

    # the same command again: nothing is redone
    before = (run / "history.csv").read_text()
    assert flow.main(train_args(tiny_dataset, run, 2, 1, "--grid-weight", "0.5")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "history.csv").read_text() == before


# ---------------------------------------------------------------- resume after kill -9, in each phase
def wait_for(path, process, timeout=180):
    """Poll until `path` exists (a glob pattern may stand in its last part)."""
    deadline = time.time() + timeout
    while not (list(path.parent.glob(path.name)) if path.parent.is_dir() else []):
        if process.poll() is not None:
            raise AssertionError(f"training ended (status {process.returncode}) before {path} appeared")
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.02)


def kill_when(path, command, log):
    """Start `command`, kill -9 it as soon as `path` exists; return the backup epoch it was killed at."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env_for_subprocess(), stdout=out, stderr=subprocess.STDOUT)
        wait_for(path, process)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    return training.saved_epoch(path.parent)[0]


@pytest.mark.slow
def test_rerun_after_kill_continues_where_each_phase_stopped(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, *EAGER_FLOW, *train_args(tiny_dataset, run, 4, 3, "--jit", "off")]

    # 1. killed in phase 1, just after an epoch's backup
    killed_at = kill_when(run / "backup" / "pretrain" / "epoch-*", command, tmp_path / "a.log")
    assert 1 <= killed_at < 4 and not (run / "pretrain.done").exists()
    assert [int(r["epoch"]) for r in history(run)][:killed_at] == list(range(1, killed_at + 1))

    # 2. the same command resumes phase 1 at the next epoch; killed again in phase 2
    killed_gan = kill_when(run / "backup" / "gan" / "epoch-*", command, tmp_path / "b.log")
    second = (tmp_path / "b.log").read_text()
    assert f"resuming at epoch {killed_at + 1} from {run / 'backup' / 'pretrain'}" in second
    assert "Epoch 1/4" not in second and f"Epoch {killed_at + 1}/4" in second
    assert (run / "pretrain.done").exists() and not (run / "backup" / "pretrain").exists()
    assert 5 <= killed_gan < 7

    # 3. and again: phase 1 is not redone, phase 2 continues, and the run ends with all 7 epochs, once each
    done = subprocess.run(command, cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "phase 1/2" not in done.stdout
    assert f"resuming at epoch {killed_gan + 1} from {run / 'backup' / 'gan'}" in done.stdout
    assert "Epoch 5/7" not in done.stdout and "Epoch 7/7" in done.stdout
    rows = history(run)
    assert [(int(r["epoch"]), r["phase"]) for r in rows] == [(e, "pretrain") for e in range(1, 5)] + [
        (e, "gan") for e in range(5, 8)]
    assert (run / "gan.done").exists() and (run / "generator.keras").exists() and not (run / "backup").exists()


# ---------------------------------------------------------------- errors before any training
def test_resume_with_a_different_config_names_the_differing_keys(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    args = flow.parse_args(train_args(tiny_dataset, run, 2, 1))
    splits, scale = create_dataset.check_dataset(tiny_dataset)
    run.mkdir()
    resizer.write_json(run / "config.json", flow.resolve_config(args, splits, scale))
    for phase in flow.PHASES:
        resizer.write_json(run / f"{phase}.done", {})

    assert flow.main(train_args(tiny_dataset, run, 2, 1, "--lr-g", "0.001", "--blocks", "2")) == 2
    err = capsys.readouterr().err
    assert "different configuration" in err and "lr_g: 0.0001 -> 0.001" in err
    assert "generator:" in err and "'blocks': 1" in err and "batch_size" not in err
    # runtime-only options (strategy, XLA, mixed precision, input) may change between resumes
    assert flow.main(train_args(tiny_dataset, run, 2, 1, "--jit", "off", "--strategy", "default")) == 0
    assert "nothing to do" in capsys.readouterr().out
    # a config.json from before --ema, --grid-weight and the generator's "block" and "reparam" existed still resumes
    older = json.loads((run / "config.json").read_text())
    del older["ema"], older["grid_weight"], older["generator"]["block"], older["generator"]["reparam"]
    resizer.write_json(run / "config.json", older)
    assert flow.main(train_args(tiny_dataset, run, 2, 1)) == 0
    assert flow.main(train_args(tiny_dataset, run, 2, 1, "--ema", "0.9", "--grid-weight", "1")) == 2
    assert "ema: 0.0 -> 0.9" in capsys.readouterr().err

    stranger = tmp_path / "not-a-run"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    assert flow.main(train_args(tiny_dataset, stranger)) == 2
    assert "not a run folder" in capsys.readouterr().err


def break_unpaired(ds):
    (ds / "train" / "lr" / "img-000.png").unlink()


def break_size(ds):
    Image.new("RGB", (9, 8)).save(ds / "val" / "lr" / "img-001.png")


def break_scale(ds):
    for sub, size in (("lr", 10), ("hr", 30)):
        Image.new("RGB", (size, size)).save(ds / "train" / sub / "img-002.png")


def break_empty(ds):
    for p in (ds / "train" / "hr").glob("*.png"):
        p.unlink()
    for p in (ds / "train" / "lr").glob("*.png"):
        p.unlink()


def break_missing_split(ds):
    for p in sorted((ds / "val").rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    (ds / "val").rmdir()


def break_corrupt(ds):
    (ds / "train" / "hr" / "img-003.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")


@pytest.mark.parametrize(("breakage", "message"), [
    (None, "DATASET not found"),
    (break_missing_split, "val/lr is missing"),
    (break_empty, "holds no .png images"),
    (break_unpaired, "without a partner of the same name"),
    (break_size, "LR 9x8 and HR 32x32 are not x4 apart"),
    (break_scale, "LR 10x10 and HR 30x30 are not x4 apart"),
    (break_corrupt, "img-003.png"),
])
def test_bad_datasets_fail_clearly_before_training(tmp_path, capsys, breakage, message):
    ds = tmp_path / "ds"
    if breakage is not None:
        write_tiny_dataset(ds)
        breakage(ds)
    assert flow.main(train_args(ds, tmp_path / "run")) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_missing_vgg_weights_fail_before_the_run_folder_is_made(tiny_dataset, tmp_path, capsys, monkeypatch):
    """The VGG file is downloaded before the run folder is made; a download that fails is a clear error."""
    from fakeserver import FakeServer

    import gan

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = train_args(tiny_dataset, tmp_path / "run", 1, 1)
    args[args.index("--content-loss") + 1] = "vgg54"
    with FakeServer() as server:  # it has no such file: 404
        monkeypatch.setattr(gan, "VGG19_NOTOP_URL", server.url("/vgg19_notop.h5"))
        assert flow.main(args) == 2
    err = capsys.readouterr().err
    assert "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5" in err and "--vgg-weights" in err
    assert not (tmp_path / "run").exists()


def test_patch_size_must_fit_the_scale_and_the_images(tiny_dataset, tmp_path, capsys):
    assert flow.main(train_args(tiny_dataset, tmp_path / "run", 1, 0, "--patch-size", "18")) == 2
    assert "multiple of the scale 4" in capsys.readouterr().err
    assert flow.main(train_args(tiny_dataset, tmp_path / "run", 1, 0, "--patch-size", "64")) == 2
    assert "smaller than --patch-size 64" in capsys.readouterr().err


# ---------------------------------------------------------------- NaN stop
class PoisonAtEpoch(keras.callbacks.Callback):
    """Turns the model's weights to NaN when the given (0-based) epoch begins."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.model.set_weights([np.full_like(w, np.nan) for w in self.model.get_weights()])


@pytest.mark.slow
def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tiny_dataset, tmp_path, capsys, eager_functions):
    run = tmp_path / "run"
    args = flow.parse_args(train_args(tiny_dataset, run, 3, 1, "--jit", "off"))
    assert flow.train(args, extra_callbacks=[PoisonAtEpoch(1)]) == 1
    err = capsys.readouterr().err
    assert "non-finite values (loss) in epoch 2, batch 1 of pretrain" in err and "last good checkpoint" in err

    best = json.loads((run / "best.json").read_text())
    assert best["pretrain"]["epoch"] == 1
    kept = load_generator(run / "generator.keras")
    assert all(np.all(np.isfinite(w)) for w in kept.get_weights())
    assert training.saved_epoch(run / "backup" / "pretrain") == (1, 0)  # the bad epoch was not backed up
    assert not (run / "pretrain.done").exists() and not (run / "gan.done").exists()
    assert [r["phase"] for r in history(run)] == ["pretrain", "pretrain"]  # the NaN epoch is on record
    assert history(run)[1]["loss"] == "nan"


# ---------------------------------------------------------------- --ema: the moving average of the weights
class WeightsAtEpochEnd(keras.callbacks.Callback):
    """Records the generator's weights whenever an epoch ends (where it sits among the callbacks matters)."""

    def __init__(self, generator=None):
        super().__init__()
        self.generator, self.seen = generator, []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append([np.asarray(w).copy() for w in (self.generator or self.model).get_weights()])


def test_moving_average_swap_shows_the_average_and_keeps_training_on_the_raw_weights():
    keras.utils.set_random_seed(0)
    model = build_generator(4, filters=8, blocks=1, batch_norm=False)
    optimizer = keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5)
    model.compile(optimizer, loss="mae")
    swap, between, after = training.MovingAverageSwap(optimizer), WeightsAtEpochEnd(), WeightsAtEpochEnd()
    rng = np.random.default_rng(0)
    lr, hr = rng.random((4, 8, 8, 3), dtype=np.float32), rng.random((4, 32, 32, 3), dtype=np.float32)
    model.fit(lr, hr, batch_size=2, epochs=2, verbose=0, callbacks=[swap.swap_in, between, swap.swap_out, after])

    averages = [np.asarray(v) for v in optimizer._model_variables_moving_average]
    raw = [np.asarray(v) for v in optimizer._trainable_variables]
    trainable = [id(v) for v in model.trainable_variables]
    between_last = [w for w, v in zip(between.seen[-1], model.weights, strict=True) if id(v) in trainable]
    for seen, average in zip(between_last, averages, strict=True):
        np.testing.assert_array_equal(seen, average)  # the callbacks in between saw the average ...
    for now, before in zip(model.get_weights(), after.seen[-1], strict=True):
        np.testing.assert_array_equal(now, before)  # ... and fit()'s finalize did not leave the average in the model
    assert any(not np.array_equal(a, b) for a, b in zip(averages, raw, strict=True))


@pytest.mark.slow
def test_ema_run_exports_the_average_and_trains_as_one_without(tiny_dataset, tmp_path, eager_functions):
    """The same seeded run with and without --ema: identical raw weights after every phase-1 epoch (the average
    never feeds back into training; phase 2 starts from phase 1's best export, which with --ema is the average),
    and with --ema the exported generator is the average, not the raw weights."""
    raw_weights, exported = {}, {}
    for name, extra in (("plain", []), ("ema", ["--ema", "0.5"])):
        run = tmp_path / name
        args = flow.parse_args(train_args(tiny_dataset, run, 2, 1, "--jit", "off", *extra))
        recorder = WeightsAtEpochEnd()
        assert flow.train(args, extra_callbacks=[recorder]) == 0
        raw_weights[name] = recorder.seen
        exported[name] = load_generator(run / "generator_last.keras").get_weights()
        assert json.loads((run / "config.json").read_text())["ema"] == (0.5 if extra else 0.0)
    assert len(raw_weights["plain"]) == len(raw_weights["ema"]) == 3
    for plain, ema in zip(raw_weights["plain"][:2], raw_weights["ema"][:2], strict=True):
        for a, b in zip(plain, ema, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(exported["plain"], exported["ema"], strict=True))
    with pytest.raises(SystemExit):
        flow.parse_args(train_args(tiny_dataset, tmp_path / "x", 1, 0, "--ema", "1"))


# ---------------------------------------------------------------- MirroredStrategy on two logical CPUs
@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpu_devices(tiny_dataset, tmp_path):
    code = (
        "import sys, tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "import flow\n"
        "sys.exit(flow.main(sys.argv[1:]))\n"
    )
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", code, *train_args(tiny_dataset, run, 1, 1, "--strategy", "mirrored",
                                                                      "--jit", "off")],
                          cwd=ROOT, env=env_for_subprocess(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "strategy mirrored (2 replica(s))" in done.stdout
    rows = history(run)
    assert [r["phase"] for r in rows] == ["pretrain", "gan"]
    assert all(np.isfinite(float(rows[1][k])) for k in ("g_loss", "d_loss", "val_psnr", "val_ssim"))
    assert load_generator(run / "generator.keras").count_params() > 0


def test_strategy_choice():
    assert runtime.resolve_strategy_name("mirrored") == "mirrored"
    assert runtime.resolve_strategy_name("auto") == "default"  # no GPU here
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": ["localhost:1", "localhost:2"]},
                                          "task": {"type": "worker", "index": 1}})
    try:
        assert runtime.resolve_strategy_name("auto") == "multiworker"
        assert not runtime.is_chief()
        worker_path = flow.worker_run_path(Path("runs/x"), "multiworker")
        assert worker_path.name == "worker-1" and Path("runs/x").resolve() not in worker_path.resolve().parents
    finally:
        del os.environ["TF_CONFIG"]
    assert runtime.is_chief() and flow.worker_run_path(Path("runs/x"), "default") == Path("runs/x")


# ---------------------------------------------------------------- input pipelines
def nearest_pairs(n=5, lr_size=(6, 5), scale=4, seed=0):
    """LR noise and its nearest-neighbour HR: any aligned crop/flip/turn keeps HR[::s, ::s] == LR."""
    rng = np.random.default_rng(seed)
    lrs = [rng.integers(0, 256, (lr_size[1], lr_size[0], 3), dtype=np.uint8) for _ in range(n)]
    return lrs, [np.repeat(np.repeat(lr, scale, 0), scale, 1) for lr in lrs]


def assert_aligned(lr_batch, hr_batch, scale=4):
    np.testing.assert_array_equal(np.asarray(hr_batch)[:, ::scale, ::scale], np.asarray(lr_batch))


def test_pydataset_batches_are_aligned_seeded_and_vary_by_epoch():
    lrs, hrs = nearest_pairs()
    batches = training.PairBatches(lrs, hrs, batch_size=3, steps=4, scale=4, patch_size=16, seed=7, workers=1)
    assert len(batches) == 4
    lr, hr = batches[2]
    assert lr.shape == (3, 4, 4, 3) and hr.shape == (3, 16, 16, 3) and lr.dtype == np.float32
    assert_aligned(lr, hr)
    again = training.PairBatches(lrs, hrs, batch_size=3, steps=4, scale=4, patch_size=16, seed=7, workers=1)
    np.testing.assert_array_equal(again[2][1], hr)
    batches.on_epoch_end()
    assert not np.array_equal(batches[2][1], hr)
    resumed = training.PairBatches(lrs, hrs, batch_size=3, steps=4, scale=4, patch_size=16, seed=7, start_epoch=1,
                               workers=1)
    np.testing.assert_array_equal(resumed[2][1], batches[2][1])
    # whole non-square images: only half turns, so shapes stay batchable
    whole = training.PairBatches(lrs, hrs, batch_size=5, steps=3, scale=4, seed=1, workers=1)
    for i in range(3):
        lr, hr = whole[i]
        assert lr.shape == (5, 5, 6, 3)
        assert_aligned(lr, hr)


def test_tf_data_batches_are_aligned_seeded_and_resumable(tmp_path):
    ds = write_tiny_dataset(tmp_path / "ds", hr_size=24, counts=(4, 1, 1))
    lrs, hrs = nearest_pairs(4, (6, 6))
    for i, (lr, hr) in enumerate(zip(lrs, hrs, strict=True)):
        Image.fromarray(lr).save(ds / "train" / "lr" / f"img-{i:03d}.png")
        Image.fromarray(hr).save(ds / "train" / "hr" / f"img-{i:03d}.png")
    splits, scale = create_dataset.check_dataset(ds)
    for cache in (True, False):
        data = training.tf_pair_dataset(splits["train"], batch_size=3, scale=4, patch_size=16, seed=3, cache=cache)
        batches = [(lr.numpy(), hr.numpy()) for lr, hr in data.take(4)]
        for lr, hr in batches:
            assert lr.shape == (3, 4, 4, 3) and hr.shape == (3, 16, 16, 3)
            assert_aligned(np.round(lr * 255), np.round(hr * 255))
        again = [hr.numpy() for _, hr in training.tf_pair_dataset(splits["train"], batch_size=3, scale=4, patch_size=16,
                                                              seed=3, cache=cache).take(4)]
        np.testing.assert_array_equal(again[3], batches[3][1])
        skipped = training.tf_pair_dataset(splits["train"], batch_size=3, scale=4, patch_size=16, seed=3, cache=cache,
                                       skip_batches=2)
        np.testing.assert_array_equal(next(iter(skipped))[1].numpy(), batches[2][1])
    whole = next(iter(training.tf_pair_dataset(splits["train"], batch_size=2, scale=4)))
    assert whole[0].shape == (2, 6, 6, 3) and whole[1].shape == (2, 24, 24, 3)


def dihedral_key(img):
    """The same bytes for an image whatever flip or quarter turn the training input gave it."""
    turns = [np.rot90(img, k) for k in range(4)]
    return min(t.tobytes() + bytes(t.shape) for t in turns + [np.fliplr(t) for t in turns])


def test_tfrecord_dataset_feeds_training_as_the_png_one_does(png_and_tfrecord_datasets):
    png, tfr = png_and_tfrecord_datasets
    png_splits, png_scale = create_dataset.check_dataset(png)
    splits, scale = create_dataset.check_dataset(tfr)
    train = splits["train"]
    assert scale == png_scale == 4 and len(train) == len(png_splits["train"]) and len(train.shards) >= 2
    assert train.lr_size == (8, 8) and not train.lr_paths
    create_dataset.check_patch_size(splits, 16, 4)
    with pytest.raises(create_dataset.DatasetError, match="train: LR 8x8 is smaller than --patch-size 64"):
        create_dataset.check_patch_size(splits, 64, 4)
    png_hr = sorted(dihedral_key(hr) for hr in create_dataset.load_split_arrays(png_splits["train"])[1])
    assert sorted(dihedral_key(hr) for hr in create_dataset.load_split_arrays(train)[1]) == png_hr
    n = len(train)
    for cache in (True, False):
        data = training.tf_pair_dataset(train, batch_size=1, scale=4, seed=3, cache=cache)
        epochs = [hr.numpy()[0] for _, hr in data.take(2 * n)]
        for epoch in (epochs[:n], epochs[n:]):  # every pair once per epoch, in a new order
            assert sorted(dihedral_key(np.round(hr * 255).astype(np.uint8)) for hr in epoch) == png_hr
        assert not all(np.array_equal(a, b) for a, b in zip(epochs[:n], epochs[n:], strict=True))
        resumed = training.tf_pair_dataset(train, batch_size=1, scale=4, seed=3, cache=cache, skip_batches=n + 1)
        np.testing.assert_array_equal(next(iter(resumed))[1].numpy()[0], epochs[n + 1])


@pytest.mark.slow
def test_train_from_a_tfrecord_dataset(png_and_tfrecord_datasets, tmp_path, capsys, eager_functions):
    png, tfr = png_and_tfrecord_datasets
    run = tmp_path / "run"
    assert flow.main(train_args(tfr, run, 1, 1)) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"] == str(tfr.resolve()) and config["train_images"] == len(
        create_dataset.check_dataset(tfr)[0]["train"])
    assert [row["phase"] for row in history(run)] == ["pretrain", "gan"]
    val_lr, val_hr = create_dataset.load_split_arrays(create_dataset.check_dataset(png)[0]["val"])
    bicubic = metrics.measure_pairs([metrics.bicubic_upscale(lr, 4) for lr in val_lr], val_hr, 4)[0].mean()
    for row in history(run):  # the validation split came from the records whole
        assert float(row["bicubic_psnr"]) == pytest.approx(bicubic, abs=1e-3)
        assert np.isfinite(float(row["val_psnr"]))
    assert load_generator(run / "generator.keras") is not None
    assert f"{config['train_images']} train / " in capsys.readouterr().out


@pytest.mark.slow
def test_without_tensorflow_phase_1_runs_on_the_pydataset_path(tiny_dataset, tmp_path, capsys, monkeypatch,
                                                                eager_functions):
    """Other backends have no tf.data, tf.distribute or TensorBoard: flow behaves as if the backend were not TF."""
    monkeypatch.setattr(runtime, "use_tensorflow", lambda: False)
    monkeypatch.setattr(runtime, "tensorboard_available", lambda: False)
    run = tmp_path / "run"
    assert flow.main(train_args(tiny_dataset, run, 2, 0)) == 0
    out = capsys.readouterr().out
    assert "strategy default (1 replica(s))" in out and "input pydataset" in out
    assert [(r["epoch"], r["phase"]) for r in history(run)] == [("1", "pretrain"), ("2", "pretrain")]
    assert (run / "pretrain.done").exists() and (run / "generator.keras").exists()
    assert not (run / "gan.done").exists() and not (run / "tensorboard").exists()
    assert len(list((run / "samples").glob("*.png"))) == 2

    for extra, message in ((("--strategy", "mirrored"), "--strategy mirrored needs the TensorFlow backend"),
                           (("--input-pipeline", "tfdata"), "tfdata needs the TensorFlow backend")):
        assert flow.main(train_args(tiny_dataset, tmp_path / "other", 1, 0, *extra)) == 2
        assert message in capsys.readouterr().err


@pytest.mark.slow
def test_the_pydataset_input_can_be_forced_on_tensorflow(tiny_dataset, tmp_path, monkeypatch, capsys):
    made = []

    class CountedPairBatches(training.PairBatches):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(training, "PairBatches", CountedPairBatches)
    args = flow.parse_args(train_args(tiny_dataset, tmp_path / "run", 1, 0, "--input-pipeline", "pydataset"))
    assert flow.train(args) == 0
    assert "input pydataset" in capsys.readouterr().out
    assert len(made) == 1  # the run was fed by it


def test_help_and_usage_errors_answer_without_keras():
    """`flow.py --help` and a bad argument are answered before Keras (and TensorFlow) are imported."""
    code = ("import sys, flow\n"
            "for argv in (['--help'], ['train', '--data', 'd', '--out', 'o', '--batch-size', '0']):\n"
            "    try:\n"
            "        flow.parse_args(argv)\n"
            "    except SystemExit as e:\n"
            "        print('exit', e.code)\n"
            "print('loaded:', sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout and "exit 2" in done.stdout and "loaded: []" in done.stdout
    assert "--batch-size must be >= 1" in done.stderr


# ---------------------------------------------------------------- evaluate
def write_photos(folder, sizes):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for i, (w, h) in enumerate(sizes):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BICUBIC).save(folder / f"photo{i}.png")
    return folder


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_a_folder_model_against_bicubic(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos", [(50, 45), (40, 40)])
    (photos / "broken.png").write_bytes(b"not a png")
    model_path = tmp_path / "run" / "generator.keras"
    model_path.parent.mkdir()
    model = build_generator(4, filters=8, blocks=1, interpolation_skip="bilinear")
    model.save(model_path)

    assert flow.main(["evaluate", "--model", str(model_path), "--data", str(photos), "--out", str(tmp_path / "eval")]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "1 failed" in captured.out
    rows = read_csv(tmp_path / "eval" / "run-generator_photos_x4.csv")
    assert [r["image"] for r in rows] == ["photo0.png", "photo1.png", "mean"]
    assert rows[0]["size"] == "48x44"  # mod-cropped by the scale
    hr = resizer.mod_crop(resizer.load_image(photos / "photo0.png"), 4)
    lr = resizer.lr_from_hr(hr, 4)
    import upscale

    sr = upscale.upscale_array(load_generator(model_path), lr)
    assert float(rows[0]["model_psnr"]) == pytest.approx(metrics.calculate_psnr(sr, hr, 4))
    assert float(rows[0]["bicubic_ssim"]) == pytest.approx(metrics.calculate_ssim(metrics.bicubic_upscale(lr, 4), hr, 4))
    assert float(rows[2]["model_ssim"]) == pytest.approx(np.mean([float(r["model_ssim"]) for r in rows[:2]]))
    md = (tmp_path / "eval" / "run-generator_photos_x4.md").read_text()
    assert ("| image | size | hr_niqe | bicubic_psnr | bicubic_ssim | bicubic_niqe | model_psnr | model_ssim | "
            "model_niqe | model_grid |") in md and "| mean |" in md
    assert rows[0]["model_niqe"] == "nan"  # 48 px images hold no 96 px NIQE block: undefined, not an error
    grids = [metrics.grid_error(sr, hr, 4, crop_border=4)]  # the set's grid error is that of the mean grid
    assert float(rows[0]["model_grid"]) == pytest.approx(np.abs(grids[0]).max())
    hr1 = resizer.mod_crop(resizer.load_image(photos / "photo1.png"), 4)
    grids.append(metrics.grid_error(upscale.upscale_array(load_generator(model_path), resizer.lr_from_hr(hr1, 4)),
                                    hr1, 4, crop_border=4))
    assert float(rows[2]["model_grid"]) == pytest.approx(np.abs(np.mean(grids, axis=0)).max())
    assert "sub-pixel position" in captured.out

    # a run folder stands for its generator.keras; a scale that contradicts the model is refused
    assert flow.main(["evaluate", "--model", str(model_path.parent), "--data", str(photos), "--out",
                      str(tmp_path / "eval2")]) == 1
    assert flow.main(["evaluate", "--model", str(model_path), "--data", str(photos), "--scale", "2"]) == 2
    assert "upscales x4" in capsys.readouterr().err


def test_evaluate_a_dataset_test_split_with_its_own_lr(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    assert flow.main(["evaluate", "--model", "bicubic", "--data", str(tiny_dataset), "--out", str(out)]) == 0
    rows = read_csv(out / "bicubic_dataset_x4.csv")
    assert [r["image"] for r in rows] == ["img-000.png", "img-001.png", "mean"]
    assert "model_psnr" not in rows[0]
    printed = capsys.readouterr().out  # the means per method; the per-image rows only in the files ...
    assert "| method | psnr | ssim | niqe |" in printed and "| bicubic |" in printed and "img-000" not in printed
    assert flow.main(["evaluate", "--model", "bicubic", "--data", str(tiny_dataset), "--out", str(out), "-v"]) == 0
    assert "| img-000.png |" in capsys.readouterr().out  # ... unless asked for
    lr = resizer.load_image(tiny_dataset / "test" / "lr" / "img-000.png")  # the DATASET's own LR
    hr = resizer.load_image(tiny_dataset / "test" / "hr" / "img-000.png")
    assert float(rows[0]["bicubic_psnr"]) == pytest.approx(metrics.calculate_psnr(metrics.bicubic_upscale(lr, 4), hr, 4))

    # a model on a DATASET's test split upscales the DATASET's own LR images
    model_path = tmp_path / "g.keras"
    model = build_generator(4, filters=8, blocks=1)
    model.save(model_path)
    assert flow.main(["evaluate", "--model", str(model_path), "--data", str(tiny_dataset), "--out", str(out)]) == 0
    rows = read_csv(out / f"{tmp_path.name}-g_dataset_x4.csv")
    import upscale

    sr = upscale.upscale_array(load_generator(model_path), lr)
    assert float(rows[0]["model_psnr"]) == pytest.approx(metrics.calculate_psnr(sr, hr, 4))
    assert flow.main(["evaluate", "--model", "bicubic", "--data", str(tiny_dataset), "--scale", "2"]) == 2


def test_evaluate_bicubic_on_set5_gives_the_published_protocol_figure(shared_data, tmp_path, capsys):
    assert flow.main(["evaluate", "--model", "bicubic", "--data", str(shared_data / "benchmarks" / "Set5"),
                      "--out", str(tmp_path)]) == 0
    mean = read_csv(tmp_path / "bicubic_Set5_x4.csv")[-1]
    assert float(mean["bicubic_psnr"]) == pytest.approx(28.43, abs=0.005)
    assert 3 < float(mean["hr_niqe"]) < float(mean["bicubic_niqe"])  # bicubic blur reads as less natural
    assert "5 image(s) x4: bicubic 28.43 dB" in capsys.readouterr().out
