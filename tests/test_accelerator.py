"""The prepared GPU run (accelerator.py, `make accelerator`) and what it stands on: its tiny configuration end to end
under JAX with TensorFlow unimportable, its one-line errors before anything runs, flow.py's --time-budget, the
device-resident input, the offline vgg16 content loss, and upscale's GPU probe without TensorFlow.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import accelerator
import flow
import gan
import training

ROOT = Path(__file__).resolve().parents[1]
# a sitecustomize that makes `import tensorflow` fail, as on a machine without it
BLOCK_TENSORFLOW = '''import sys


class BlockTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None


sys.meta_path.insert(0, BlockTensorFlow())
'''
TINY_FLOW = ["--filters", "8", "--blocks", "1", "--batch-size", "2", "--steps-per-epoch", "2", "--verbose", "2",
             "--mixed-precision", "off"]


def without_tensorflow(tmp_path, **extra):
    """The environment of a subprocess that runs on JAX and cannot import TensorFlow."""
    blocker = tmp_path / "no-tensorflow"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(BLOCK_TENSORFLOW)
    return {**os.environ, "PYTHONPATH": str(blocker), "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1", **extra}


# ---------------------------------------------------------------- the whole run, tiny, on JAX without TensorFlow
@pytest.mark.slow
def test_tiny_accelerator_run_writes_every_promised_file_and_figure(tmp_path, pytestconfig):
    """The device command in its --tiny form: dataset from the samples, stream and PSNR runs side by side, the GAN
    from the PSNR model, then at most 8 files back: 3 generators, 3 histories, figures.json, accelerator.log."""
    out = tmp_path / "out"
    cache = pytestconfig.cache.mkdir("accelerator-xla-cache")  # XLA compilations kept between test sessions
    env = without_tensorflow(tmp_path, JAX_COMPILATION_CACHE_DIR=str(cache))
    done = subprocess.run([sys.executable, "accelerator.py", "--tiny", "--out", str(out), "--runs",
                           str(tmp_path / "runs"), "--data", str(tmp_path / "data"), "--stream-data",
                           str(tmp_path / "stream-data")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    names = {"stream_x4.keras", "psnr_x4.keras", "gan_x4.keras", "stream_x4_history.csv", "psnr_x4_history.csv",
             "gan_x4_history.csv", "figures.json", "accelerator.log"}
    assert {p.name for p in out.iterdir()} == names  # what comes back from the device: at most 8 files
    assert "No module named 'tensorflow'" not in (out / "accelerator.log").read_text()
    figures = json.loads((out / "figures.json").read_text())
    assert figures["device"] and figures["parallel"] and figures["clean_dataset_pairs"]["train"] > 0
    assert figures["stream_dataset_pairs"]["train"] > 0  # the stream model's pairs: cut from libx264 streams
    stream_manifest = json.loads((tmp_path / "stream-data" / "manifest.json").read_text())
    assert stream_manifest["parameters"]["codec"]["codec"] == "libx264"
    assert json.loads((tmp_path / "runs" / "stream" / "config.json").read_text())["data"] == str(tmp_path / "stream-data")
    for name in ("stream", "psnr", "gan"):
        model = figures["models"][name]
        assert model["exit_status"] == 0 and model["epochs"] >= 1 and model["best"]["val_psnr"] > 0
        assert model["steps"] >= 3 and model["step_time_ms"] > 0 and model["images_per_s"] > 0
        assert 0 <= model["input_wait_share"] < 1 and model["input"] in ("PairBatches", "DevicePairBatches")
        assert model["flops_per_step"] > 0 and model["tflops_per_s"] > 0 and "peak_bf16_share" in model
        assert model["settings"]["runtime"]["precision"] == "float32"
        assert model["settings"]["lr_rule"].startswith("those not given")  # scaled for the batch, on record
    assert figures["models"]["gan"]["settings"]["content_loss"] == "vgg16"
    history = (out / "gan_x4_history.csv").read_text().splitlines()
    assert "val_niqe" in history[0] and len(history) >= 2


# ---------------------------------------------------------------- one-line errors before anything runs
def test_bad_input_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "manifest.jsonl").write_text("{}\n")
    (photos / "big.jpg").write_bytes(b"\0" * 2 * 2**20)
    base = ["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--stream-data", str(tmp_path / "stream-data")]

    monkeypatch.setattr(accelerator, "PHOTOS_LIMIT_MIB", 1)
    assert accelerator.main([*base, "--photos", str(photos)]) == 2
    assert "2.0 MiB of photos, over the 1 MiB" in capsys.readouterr().err
    monkeypatch.setattr(accelerator, "PHOTOS_LIMIT_MIB", 40)

    assert accelerator.main([*base, "--photos", str(tmp_path / "none")]) == 2
    assert "no packed photos" in capsys.readouterr().err

    assert accelerator.main([*base, "--photos", str(photos), "--minutes", "2"]) == 2
    err = capsys.readouterr().err
    assert "a run needs at least" in err and "give more --minutes" in err and len(err.strip().splitlines()) == 1

    monkeypatch.setattr(accelerator, "PACKAGES", ("keras", "no_such_package_here"))
    assert accelerator.main([*base, "--photos", str(photos)]) == 2
    assert "no_such_package_here: not importable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_every_recipe_is_a_flow_command(tmp_path):
    for name in accelerator.RECIPES:
        init = tmp_path / "psnr" / "generator.keras" if name == "gan" else None
        command = accelerator.flow_command(name, tmp_path / "data", tmp_path / name, 2.5, 192, init=init)
        args = flow.parse_args(command[2:])
        assert args.time_budget == 2.5 and args.epoch_seconds == accelerator.EPOCH_SECONDS and args.val_limit == 192
        assert (args.gan_epochs > 0) == (name == "gan") and args.init_generator == (str(init) if init else None)
    assert args.content_loss == "vgg16" and args.discriminator == "unet" and args.preset == accelerator.PSNR_PRESET


def test_budgets_split_the_minutes_left(monkeypatch):
    parallel = accelerator.plan_budgets(6.0, True, 1.0)
    assert parallel["stream"] == 6.0 and parallel["psnr"] + parallel["gan"] == pytest.approx(6.0)
    one_after_another = accelerator.plan_budgets(6.0, False, 1.0)
    assert sum(one_after_another.values()) == pytest.approx(6.0)


def test_pack_script_names_the_missing_packages(tmp_path):
    done = subprocess.run(["bash", "weights/pack_photos.sh"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DEBS": str(tmp_path), "PACK": str(tmp_path / "pack")}, timeout=60)
    assert done.returncode == 2 and "mate-backgrounds_*.deb not found" in done.stderr


# ---------------------------------------------------------------- flow.py --time-budget
@pytest.mark.slow
def test_time_budget_stops_at_an_epoch_end_exports_and_resumes(tiny_dataset, tmp_path, capsys):
    """Timed epochs (--epoch-seconds, the steps per epoch only a maximum) inside a time budget."""
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_dataset), "--out", str(run), "--pretrain-epochs", "1000", "--gan-epochs", "0",
            "--time-budget", "0.2", "--input-pipeline", "pydataset", *TINY_FLOW, "--steps-per-epoch", "100000",
            "--epoch-seconds", "1"]
    assert flow.main(args) == 0
    out = capsys.readouterr().out
    assert "time budget of 0.2 min spent: pretrain stopped" in out and "done: best epoch" in out
    assert (run / "generator.keras").is_file() and not (run / "pretrain.done").exists()
    speed = json.loads((run / "speed.json").read_text())["pretrain"]
    assert speed["steps"] >= 2 and speed["step_time_s"] > 0 and 0 <= speed["input_wait_share"] < 1
    config = json.loads((run / "config.json").read_text())
    assert config["time_budget"] == 0.2 and config["runtime"]["input_pipeline"] == "pydataset"
    epochs = len((run / "history.csv").read_text().splitlines()) - 1
    assert epochs >= 2  # each epoch ended after 1 s of its 100000 steps
    assert flow.main(args) == 0  # the same command continues where the budget stopped it
    assert len((run / "history.csv").read_text().splitlines()) - 1 > epochs


def test_a_budget_too_small_for_one_validation_says_so(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert flow.main(["train", "--data", str(tiny_dataset), "--out", str(run), "--pretrain-epochs", "5",
                      "--gan-epochs", "0", "--time-budget", "0.0001", *TINY_FLOW]) == 1
    err = capsys.readouterr().err
    assert "ended before the first epoch's validation; no generator was exported" in err
    assert not (run / "generator.keras").exists()


def test_defaults_scale_the_batch_and_learning_rate_for_a_gpu():
    args = flow.parse_args(["train", "--data", "d", "--out", "o"])
    assert flow.batch_and_rates(args, gpu=False)[:3] == (16, 1e-4, 1e-4)
    small = flow.parse_args(["train", "--data", "d", "--out", "o", "--batch-size", "2"])
    assert flow.batch_and_rates(small)[:3] == (2, 1e-4, 1e-4)  # scaled up for large batches only
    batch, lr_g, lr_d, rule = flow.batch_and_rates(args, gpu=True)
    assert (batch, lr_g, lr_d) == (256, pytest.approx(4e-4), pytest.approx(4e-4)) and "sqrt" in rule
    resumed = flow.batch_and_rates(args, gpu=True, previous={"batch_size": 16, "lr_g": 1e-4, "lr_d": 1e-4})
    assert resumed[:3] == (16, 1e-4, 1e-4)  # a run begun on a CPU continues with its own settings
    given = flow.parse_args(["train", "--data", "d", "--out", "o", "--batch-size", "64", "--lr-g", "3e-4"])
    assert flow.batch_and_rates(given, gpu=True)[:3] == (64, 3e-4, pytest.approx(2e-4))


# ---------------------------------------------------------------- the device-resident input
def coordinate_pairs(count=5, side=6, scale=4):
    """LR images whose pixels name (image, row, column) and their nearest-neighbour HR."""
    lrs = []
    for n in range(count):
        rows, cols = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        lrs.append(np.stack([np.full_like(rows, n), rows * 10, cols * 10], -1).astype(np.uint8))
    return lrs, [np.repeat(np.repeat(lr, scale, 0), scale, 1) for lr in lrs]


def dihedral(image):
    """The 8 flips and turns of a square image."""
    turns = [np.rot90(image, k) for k in range(4)]
    return turns + [t[:, ::-1] for t in turns]


def test_device_batches_are_aligned_crops_under_every_turn_and_seeded():
    lrs, hrs = coordinate_pairs()
    arrays = training.device_arrays(lrs, hrs)
    batches = training.DevicePairBatches(arrays, batch_size=8, steps=6, scale=4, patch_size=12, seed=3)
    seen = set()
    for index in range(len(batches)):
        lr, hr = (np.asarray(a) for a in batches[index])
        assert lr.shape == (8, 3, 3, 3) and hr.shape == (8, 12, 12, 3) and lr.dtype == np.float32
        np.testing.assert_array_equal(hr[:, ::4, ::4], lr)  # LR and HR crops of one pair stay aligned
        for crop in np.rint(lr * 255).astype(np.uint8):
            source = lrs[crop[0, 0, 0]]
            matches = [k for k, turned in enumerate(dihedral(source)) for y in range(4) for x in range(4)
                       if np.array_equal(turned[y:y + 3, x:x + 3], crop)]
            assert matches, "a crop is no flip or turn of a window of its image"
            seen.update(matches)
    assert seen == set(range(8))  # every flip and turn is drawn
    again = training.DevicePairBatches(arrays, batch_size=8, steps=6, scale=4, patch_size=12, seed=3)
    np.testing.assert_array_equal(np.asarray(again[4][1]), np.asarray(batches[4][1]))
    assert batches.wait_seconds > 0 and batches.batches_served == 7


def test_device_input_needs_pairs_of_one_size():
    lrs, hrs = coordinate_pairs(2)
    lrs[1], hrs[1] = lrs[1][:5], hrs[1][:20]
    with pytest.raises(ValueError, match="pairs of one size"):
        training.device_arrays(lrs, hrs)
    with pytest.raises(ValueError, match="pairs of one size"):
        flow.resolve_input_pipeline("device", False, gpu=True, one_size=False)
    assert flow.resolve_input_pipeline("auto", False, gpu=True, one_size=True) == "device"
    assert flow.resolve_input_pipeline("auto", False, gpu=False) == "pydataset"
    assert flow.resolve_input_pipeline("auto", True, gpu=True) == "tfdata"


# ---------------------------------------------------------------- the offline perceptual loss
def test_vgg16_content_loss_needs_no_download_and_measures_features(monkeypatch):
    monkeypatch.setattr(gan, "VGG19_NOTOP_URL", "http://127.0.0.1:9/unreachable")  # any download would fail
    loss = gan.ContentLoss("vgg16")
    assert [layer.name for layer in loss.vgg.layers if "conv" in layer.name][-1] == "block4_conv3"
    rng = np.random.default_rng(0)
    hr = rng.random((2, 32, 32, 3)).astype(np.float32)
    noisy = np.clip(hr + rng.normal(0, 0.1, hr.shape), 0, 1).astype(np.float32)
    same = np.asarray(loss.call(hr, hr))
    apart = np.asarray(loss.call(hr, noisy))
    assert same.shape == (2,) and np.allclose(same, 0) and np.all(apart > 0.01)


def test_missing_vgg16_weights_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="vgg16 content loss's weights file is missing"):
        gan.check_vgg_weights("vgg16", tmp_path / "nothing.npz")


# ---------------------------------------------------------------- no TensorFlow on upscale's default path
def test_upscale_default_precision_needs_no_tensorflow(tmp_path):
    code = ("import sys, upscale\n"
            "print(upscale.has_gpu(), upscale.resolve_precision('auto'), 'tensorflow' in sys.modules)\n")
    env = without_tensorflow(tmp_path)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    has_gpu, precision, tensorflow_loaded = done.stdout.split()
    assert has_gpu == "False" and precision in ("bf16", "fp32") and tensorflow_loaded == "False"
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    done = subprocess.run([sys.executable, "upscale.py", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)  # default options
    assert done.returncode == 0, done.stderr[-2000:]
    assert Image.open(tmp_path / "out.png").size == (128, 96)
