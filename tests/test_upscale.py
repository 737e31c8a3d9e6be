"""upscale.py: tiled inference maths, images, GIFs and videos through the CLI, and the failure cases.

A tiny generator (scale 4, 8 filters, 1 block, random weights) stands in for a trained one: these tests
check geometry, timing, metadata and safety, not picture quality.
"""

import os
import threading
from fractions import Fraction
from pathlib import Path

import av
import keras
import numpy as np
import pytest
import skimage
from conftest import with_fixed_runtime
from PIL import Image, ImageSequence
from skimage import data

import inference
import presets
import resizer
import upscale
from generator import build_generator
from resizer import resize

SCALE = 4
SKIMAGE_GIF = Path(skimage.__file__).parent / "data" / "no_time_for_that_tiny.gif"


@pytest.fixture(scope="module")
def model():
    """Random weights, no shortcut: every output pixel depends on the input up to its receptive radius, which
    is what tiling has to get right. Seeded: the seam bounds below hold for typical random weights, and a
    fixed draw keeps the test from depending on luck."""
    keras.utils.set_random_seed(0)
    return build_generator(scale=SCALE, filters=8, blocks=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A saved tiny generator whose output looks like its input: bicubic skip plus a damped random residual
    (as a briefly trained one would be), so the I/O tests can check orientation, grey levels and frames."""
    path = tmp_path_factory.mktemp("model") / "tiny_x4.keras"
    generator = build_generator(scale=SCALE, filters=8, blocks=1, interpolation_skip="bicubic")
    last_conv = [layer for layer in generator.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    kernel, bias = last_conv.get_weights()
    last_conv.set_weights([kernel * 0.05, bias * 0])
    generator.save(path)
    return path


def run_cli(*args):
    """upscale.py's main in this process, float32 without XLA unless args say otherwise (conftest.FIXED_RUNTIME)."""
    return upscale.main(with_fixed_runtime(args) + ["--no-progress"])


def leftovers(folder):
    """atomic_output's temporary files left anywhere under folder."""
    return [p for p in Path(folder).rglob("*") if ".tmp-" in p.name]


# --- tiling maths -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,tile,overlap", [(10, 32, 8), (32, 32, 8), (33, 32, 8), (100, 32, 8), (517, 64, 16)])
def test_tiles_cover_the_axis_with_at_least_the_overlap(length, tile, overlap):
    starts = upscale.tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, length) == max(length, min(tile, length))
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:], strict=False))
    assert all(b > a for a, b in zip(starts, starts[1:], strict=False))


def test_blend_windows_sum_to_one_everywhere():
    """Neighbours' ramps are complementary, so the accumulated weight is 1 and the normalisation a no-op."""
    for length, tile, overlap in [(100, 32, 8), (517, 64, 16), (70, 40, 16)]:
        starts = upscale.tile_starts(length, tile, overlap)
        total = np.zeros(length * 2)
        for start, w in zip(starts, upscale.axis_windows(starts, tile, 2), strict=True):
            total[start * 2 : (start + tile) * 2] += w
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    ramp = upscale.blend_ramp(40)
    np.testing.assert_allclose(ramp + ramp[::-1], 1.0, atol=1e-12)
    assert ramp[: int(40 * upscale.BLEND_MARGIN)].max() == 0.0  # a tile's spoilt edge is not used at all


def test_tiled_inference_matches_whole_image_without_seams(model):
    img = data.astronaut()[100:220, 150:250]  # 120 x 100, varied detail
    overlap = upscale.auto_overlap(model)
    assert overlap == 16  # MIN_OVERLAP: more than 0.8 x the tiny model's receptive radius of 9.5 LR pixels
    whole = upscale.upscale_array(model, img, tile=1000).astype(int)
    tiled = upscale.upscale_array(model, img, tile=48, batch_size=3).astype(int)
    assert tiled.shape == whole.shape == (480, 400, 3)
    diff = np.abs(tiled - whole)
    assert diff.max() <= 2 and diff.mean() < 0.05
    # no step where tiles meet: across every overlap band, the tiled image's pixel-to-pixel differences are
    # the whole image's, to a grey level or two
    shape = upscale.plan_tiles(120, 100, 48 * 48, overlap)
    for axis, length in ((0, 120), (1, 100)):
        side = shape[axis]
        starts = upscale.tile_starts(length, side, overlap)
        assert len(starts) > 1
        step_tiled, step_whole = np.diff(tiled, axis=axis), np.diff(whole, axis=axis)
        for prev, start in zip(starts, starts[1:], strict=False):
            band = np.arange(start * SCALE, (prev + side) * SCALE - 1)
            assert np.abs(np.take(step_tiled, band, axis=axis) - np.take(step_whole, band, axis=axis)).max() <= 3
    # an image that fits in one tile goes through whole: exactly the model's own output
    raw = np.clip(np.asarray(model.predict_on_batch(img[None].astype(np.float32) / 255.0))[0], 0, 1)
    assert np.array_equal(np.rint(raw * 255).astype(int), whole)


def test_batching_and_odd_sizes_give_the_same_pixels(model):
    img = data.coffee()[:37, :53]  # odd sides
    a = upscale.upscale_array(model, img, tile=32, overlap=8, batch_size=1)
    b = upscale.upscale_array(model, img, tile=32, overlap=8, batch_size=5)
    assert a.shape == (37 * SCALE, 53 * SCALE, 3) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= 1
    tiny = upscale.upscale_array(model, data.coffee()[:3, :5], tile=32)  # smaller than the overlap
    assert tiny.shape == (12, 20, 3)


def test_automatic_tile_overlap_and_batch_follow_the_model_and_memory(model):
    small = upscale.auto_tile_pixels(model, budget=64 * 2**20)
    assert upscale.auto_tile_pixels(model, budget=1024 * 2**20) == pytest.approx(16 * small, rel=1e-3)
    srresnet = build_generator(scale=4, preset="srresnet")  # 64 filters: 8x the activations of 8
    fast = build_generator(scale=4, preset="fast")
    assert upscale.activation_bytes_per_pixel(srresnet) == 8 * upscale.activation_bytes_per_pixel(model)
    assert upscale.auto_tile_pixels(srresnet, budget=64 * 2**20) == pytest.approx(small / 8, rel=1e-3)
    video = build_generator(scale=4, preset="video")  # every conv at LR: its widest map is the 48-channel output
    assert upscale.widest_map(video) == 48 and upscale.widest_map(srresnet) == 64 * 16
    assert upscale.auto_tile_pixels(video) >= 640 * 360 or upscale.memory_budget() < 256 * 2**20  # whole frames
    assert (upscale.receptive_radius(srresnet), upscale.auto_overlap(srresnet)) == (39.5, 32)
    assert (upscale.receptive_radius(fast), upscale.auto_overlap(fast)) == (23.5, 24)
    assert resizer.available_memory_bytes() > 0 and 0 < upscale.memory_budget() <= upscale.TILE_MEMORY_BUDGET
    auto = upscale.upscale_array(model, data.coffee()[:40, :40])  # all automatic
    assert auto.shape == (160, 160, 3)


@pytest.mark.parametrize("height,width,pixels,overlap", [(270, 480, 29_000, 32), (540, 960, 29_000, 32),
                                                         (360, 640, 58_000, 24), (100, 3000, 5_000, 16),
                                                         (50, 50, 10_000, 16), (200, 200, 100, 16)])
def test_tile_plans_fit_the_budget_and_waste_little(height, width, pixels, overlap):
    tile_h, tile_w = upscale.plan_tiles(height, width, pixels, overlap)
    if height * width <= pixels:
        assert (tile_h, tile_w) == (height, width)  # fits whole
        return
    if pixels < (2 * overlap + 1) ** 2:
        assert (tile_h, tile_w) == (2 * overlap + 1, 2 * overlap + 1)  # as small as the overlap allows
        return
    assert tile_h * tile_w <= pixels
    rows = len(upscale.tile_starts(height, tile_h, overlap))
    cols = len(upscale.tile_starts(width, tile_w, overlap))
    computed = rows * cols * tile_h * tile_w
    side = int(pixels**0.5)  # squares of the same area, spread evenly, compute more
    squares = len(upscale.tile_starts(height, side, overlap)) * len(upscale.tile_starts(width, side, overlap))
    assert computed <= squares * min(side, height) * min(side, width)
    if (height, width, pixels) == (270, 480, 29_000):
        assert (tile_h, tile_w, rows, cols) == (151, 182, 2, 3)  # the example in plan_tiles' docstring


def test_out_of_memory_is_retried_with_smaller_tiles_and_remembered(model_path, monkeypatch):
    import tensorflow as tf

    model = upscale.load_model(model_path)  # its own copy: the retry state is remembered per model
    real = model.predict_on_batch
    calls = []

    def fake_predict(batch):
        calls.append(batch.shape)
        if batch.shape[0] * batch.shape[1] * batch.shape[2] > 40 * 40:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real(batch)

    img = data.astronaut()[:90, :90]
    expected = upscale.upscale_array(model, img, tile=32, overlap=8, batch_size=1)
    monkeypatch.setattr(model, "predict_on_batch", fake_predict)
    with pytest.warns(ResourceWarning, match="out of memory"):
        out = upscale.upscale_array(model, img, tile=64, overlap=8, batch_size=4)
    assert calls[0][0] == 4 and calls[-1][0] == 1  # halved the batch, then shrank the tile (64 -> 48 -> 32)
    assert calls[-1][1] * calls[-1][2] <= 32 * 32
    assert np.array_equal(out, expected)
    calls.clear()
    upscale.upscale_array(model, img, tile=64, overlap=8, batch_size=4)  # no warning now: the fitting size is remembered
    assert calls and all(shape[0] == 1 and shape[1] * shape[2] <= 32 * 32 for shape in calls)

    def always_oom(batch):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM")

    monkeypatch.setattr(model, "predict_on_batch", always_oom)
    with pytest.raises(MemoryError, match="out of memory"), pytest.warns(ResourceWarning):
        upscale.upscale_array(model, img, tile=128, overlap=8, batch_size=2)
    assert upscale.is_out_of_memory(MemoryError()) and not upscale.is_out_of_memory(ValueError("shape"))


def test_upscale_array_rejects_what_it_cannot_upscale(model):
    with pytest.raises(ValueError, match="uint8"):
        upscale.upscale_array(model, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        upscale.upscale_array(model, np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="too small"):
        upscale.upscale_array(model, np.zeros((64, 64, 3), np.uint8), tile=16, overlap=16)
    with pytest.raises(ValueError, match="overlap"):
        upscale.upscale_array(model, np.zeros((64, 64, 3), np.uint8), overlap=-1)


# --- still images -----------------------------------------------------------------------------------------


def write_image_tree(root):
    """RGBA, grey, 16-bit grey and EXIF-rotated JPEG inputs in a small folder tree."""
    (root / "sub").mkdir(parents=True)
    rgb = data.astronaut()[::8, ::8]  # 64 x 64
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    Image.fromarray(np.dstack([rgb, alpha])).save(root / "rgba.png")
    Image.fromarray(data.camera()[::16, ::16]).save(root / "sub" / "grey.png")  # 32 x 32, mode L
    deep = (np.linspace(0, 65535, 24 * 20).reshape(24, 20)).astype(np.uint16)
    Image.fromarray(deep).save(root / "sub" / "deep16.png")  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    Image.fromarray(data.chelsea()[::8, ::8]).save(root / "rotated.jpg", exif=exif, quality=95)  # 57 x 38
    return alpha


def test_folder_of_images_keeps_alpha_grey_16bit_and_exif(model_path, tmp_path):
    alpha = write_image_tree(tmp_path / "in")
    out = tmp_path / "out"
    # float32, as the references below: the bf16 path has its own test (test_precision_auto_follows_the_cpu)
    assert run_cli(tmp_path / "in", "-o", out, "--model", model_path, "--precision", "fp32") == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.*")) == [
        "rgba.png", "rotated.jpg", "sub/deep16.png", "sub/grey.png"]  # the tree is mirrored
    with Image.open(out / "rgba.png") as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
        up_alpha = np.asarray(im)[..., 3].astype(int)
    assert np.abs(up_alpha - resize(alpha, (256, 256), "bicubic")).max() <= 1
    with Image.open(out / "sub" / "grey.png") as im:
        assert im.mode == "L" and im.size == (128, 128)
    model = upscale.load_model(model_path)
    with Image.open(out / "sub" / "deep16.png") as im:
        assert im.mode == "I;16" and im.size == (80, 96)  # 16-bit in, 16-bit out
        grey = np.asarray(im).astype(np.float64)
    deep = np.asarray(Image.open(tmp_path / "in" / "sub" / "deep16.png")).astype(np.int64)
    eight = np.repeat(((deep * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)  # 16 -> 8 bits
    expected = upscale.upscale_array(model, eight).astype(np.float32).mean(axis=2)
    assert np.abs(grey / 257 - expected).max() <= 2  # the model's output, as one grey channel
    exact = upscale.upscale_float(model, np.repeat(deep[..., None], 3, axis=2) / 65535.0).mean(axis=2)
    assert np.abs(grey - np.clip(exact, 0, 1) * 65535).max() <= 1  # upscaled from the 16-bit values
    assert len(np.unique(grey)) > 4 * len(np.unique(expected))  # more levels than 8 bits have
    with Image.open(out / "rotated.jpg") as im:
        assert im.size == (38 * SCALE, 57 * SCALE)  # EXIF orientation applied: stored 57x38, shown 38x57
        assert im.getexif().get(0x0112, 1) == 1  # and not applied twice by viewers
        rotated = np.asarray(im).astype(int)
    with Image.open(tmp_path / "in" / "rotated.jpg") as im:
        right = np.asarray(im.transpose(Image.Transpose.ROTATE_270))  # what orientation 6 displays
        wrong = np.asarray(im.transpose(Image.Transpose.ROTATE_90))

    def error(lr):
        return np.abs(rotated - upscale.upscale_array(model, np.ascontiguousarray(lr))).mean()

    assert error(right) < 0.5 * error(wrong)  # the right way round (the rest is JPEG noise)


def test_single_image_formats_and_compare(model_path, tmp_path):
    src = tmp_path / "rocket.png"
    Image.fromarray(data.rocket()[::6, ::6]).save(src)  # 107 x 72
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([data.coffee()[:40, :40], np.full((40, 40), 128, np.uint8)])).save(rgba)
    assert run_cli(src, "-o", tmp_path / "out" / "rocket_x4.webp", "--model", model_path, "--compare") == 0
    with Image.open(tmp_path / "out" / "rocket_x4.webp") as im:
        assert im.format == "WEBP" and im.size == (428, 288)
    with Image.open(tmp_path / "out" / "rocket_x4_compare.png") as im:  # bicubic | model, labelled
        assert im.width > 2 * im.height // 2 and im.height > 96 * SCALE // 2
        side = np.asarray(im.convert("RGB"))
    assert (side[:20] < 128).any()  # the labels are drawn in the band on top
    # --compare-with adds a third panel: that model's output on the same crop (here the same model: the same pixels)
    assert run_cli(src, "-o", tmp_path / "out" / "three.png", "--model", model_path, "--compare-with", model_path) == 0
    with Image.open(tmp_path / "out" / "three_compare.png") as im:  # bicubic | model | the other model
        three = np.asarray(im.convert("RGB")).astype(int)
    width, gap, band = upscale.COMPARE_CROP * SCALE, 8, 28  # the crop: 96 LR px wide, the image's 72 high
    assert three.shape == (band + 72 * SCALE, 3 * width + 2 * gap, 3)
    second, third = (three[band:, k * (width + gap) : k * (width + gap) + width] for k in (1, 2))
    assert np.abs(second - third).max() <= 1 and np.abs(second - three[band:, :width]).max() > 5  # not bicubic
    assert upscale.model_label(model_path) == f"{model_path.parent.name}/tiny_x4"
    assert upscale.model_label(upscale.MODEL_NAMES["psnr"]) == "shipped psnr"
    build_generator(scale=2, filters=8, blocks=1).save(tmp_path / "x2.keras")  # another scale cannot sit beside
    assert run_cli(src, "-o", tmp_path / "out" / "x.png", "--model", model_path, "--compare-with", tmp_path / "x2.keras") == 2
    assert run_cli(rgba, "-o", tmp_path / "out" / "flat.jpg", "--model", model_path) == 0
    with Image.open(tmp_path / "out" / "flat.jpg") as im:  # JPEG has no alpha: flattened onto white
        assert im.mode == "RGB" and im.size == (160, 160)


# --- safety -----------------------------------------------------------------------------------------------


def test_existing_outputs_and_inputs_are_not_overwritten(model_path, tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(data.coffee()[:24, :24]).save(src)
    before = src.read_bytes()
    assert run_cli(src, "-o", src, "--model", model_path, "--overwrite") == 1  # never the input
    assert src.read_bytes() == before
    dst = tmp_path / "out.png"
    dst.write_bytes(b"keep me")
    assert run_cli(src, "-o", dst, "--model", model_path) == 0  # skipped, reported
    assert dst.read_bytes() == b"keep me"
    assert run_cli(src, "-o", dst, "--model", model_path, "--overwrite") == 0
    with Image.open(dst) as im:
        assert im.size == (96, 96)


def test_corrupt_input_is_reported_and_the_rest_still_runs(model_path, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(data.coffee()[:24, :24]).save(folder / "a_good.png")
    (folder / "b_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (folder / "c_empty.jpg").write_bytes(b"")
    Image.fromarray(data.chelsea()[:20, :20]).save(folder / "d_good.jpg")
    (folder / "e_broken.mp4").write_bytes(os.urandom(500))
    out = tmp_path / "out"
    assert run_cli(folder, "-o", out, "--model", model_path) == 1
    assert sorted(p.name for p in out.iterdir()) == ["a_good.png", "d_good.jpg"]
    captured = capsys.readouterr()
    for name in ("b_corrupt.png", "c_empty.jpg", "e_broken.mp4"):
        assert name in captured.err
    assert "2 done, 0 skipped, 3 failed" in captured.out
    assert not leftovers(tmp_path)


def test_a_failure_midway_leaves_no_partial_output(model_path, tmp_path, monkeypatch):
    video = make_video(tmp_path / "clip.mp4", frames=6)
    real = upscale.upscale_batch
    calls = []  # one entry per frame: frames may reach the model several at a time

    def fails_on_frame_4(model, frames, **kwargs):
        calls.extend(range(len(frames)))
        if len(calls) >= 4:
            raise RuntimeError("disk on fire")
        return real(model, frames, **kwargs)

    monkeypatch.setattr(inference, "upscale_batch", fails_on_frame_4)  # what Inference.frames calls
    assert run_cli(video, "-o", tmp_path / "out" / "clip.mp4", "--model", model_path) == 1
    assert not (tmp_path / "out" / "clip.mp4").exists() and not leftovers(tmp_path)
    calls.clear()
    assert run_cli(SKIMAGE_GIF, "-o", tmp_path / "out" / "anim.gif", "--model", model_path) == 1
    assert not (tmp_path / "out" / "anim.gif").exists() and not leftovers(tmp_path)

    def interrupted_on_frame_3(model, frames, **kwargs):  # Ctrl-C in the middle of a video
        calls.extend(range(len(frames)))
        if len(calls) >= 3:
            raise KeyboardInterrupt
        return real(model, frames, **kwargs)

    calls.clear()
    monkeypatch.setattr(inference, "upscale_batch", interrupted_on_frame_3)
    assert run_cli(video, "-o", tmp_path / "out" / "clip.mp4", "--model", model_path) == 130
    assert not (tmp_path / "out" / "clip.mp4").exists() and not leftovers(tmp_path)
    assert not [t for t in threading.enumerate() if t.name.startswith("upscale-")]  # the pipeline's threads ended


SLOW_MODEL = """
import sys, time
import upscale
real = upscale.upscale_batch
def slow(model, frames, **kwargs):  # a long video's pace, so that the kill lands mid-video
    time.sleep(0.1 * len(frames))
    return real(model, frames, **kwargs)
upscale.upscale_batch = slow
sys.exit(upscale.main(sys.argv[1:]))
"""


@pytest.mark.slow  # a second process that imports TensorFlow
def test_a_rerun_removes_what_a_killed_run_left(model_path, tmp_path, capsys):
    import subprocess
    import sys
    import time

    video = make_video(tmp_path / "clip.mp4", frames=60, audio=False)
    out = tmp_path / "out" / "clip_x4.mp4"
    root = Path(upscale.__file__).parent
    killed = subprocess.Popen([sys.executable, "-c", SLOW_MODEL, str(video), "-o", str(out), "--model", str(model_path),
                               "--compile", "off", "--no-progress"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not [p for p in leftovers(tmp_path) if p.stat().st_size] and time.monotonic() < deadline:
        time.sleep(0.2)
    killed.kill()  # SIGKILL: no clean-up of its own
    killed.wait()
    left = leftovers(tmp_path)
    assert [p.name.startswith(f".clip_x4.mp4.tmp-{killed.pid}-") for p in left] == [True] and not out.exists()
    assert run_cli(video, "-o", out, "--model", model_path, "--compile", "off") == 0
    assert "removed 1 temporary file(s) a killed earlier run left" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["clip_x4.mp4"]  # only the finished file
    assert len(probe(out)[2]) == 60


def test_bad_model_and_bad_output_are_usage_errors(model_path, tmp_path, capsys):
    src = tmp_path / "in.png"
    Image.fromarray(data.coffee()[:16, :16]).save(src)
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a zip file")
    assert run_cli(src, "-o", tmp_path / "out.png", "--model", broken) == 2
    assert "cannot load the model" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert run_cli(tmp_path / "folder", "-o", src, "--model", model_path) == 2  # a folder into a file
    assert "is a file" in capsys.readouterr().err
    assert run_cli(src, "-o", tmp_path / "out.png", "--model", model_path, "--tile", "0") == 2
    assert not (tmp_path / "out.png").exists()


def test_missing_default_model_says_how_to_get_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inference, "DEFAULT_MODEL", tmp_path / "weights" / "srresnet_x4_psnr.keras")
    src = tmp_path / "in.png"
    Image.fromarray(data.coffee()[:16, :16]).save(src)
    assert run_cli(src, "-o", tmp_path / "out.png") == 2
    err = capsys.readouterr().err
    assert "srresnet_x4_psnr.keras" in err and "flow.py train" in err and "--model" in err


# --- animated GIFs ----------------------------------------------------------------------------------------


def gif_frames(path):
    with Image.open(path) as im:
        frames = [(np.asarray(f.convert("RGBA")), f.info.get("duration"), getattr(f, "disposal_method", None))
                  for f in ImageSequence.Iterator(im)]
        return frames, im.info.get("loop")


def test_gif_keeps_frames_durations_loop_and_disposal(model_path, tmp_path):
    out = tmp_path / "anim_x4.gif"
    assert run_cli(SKIMAGE_GIF, "-o", out, "--model", model_path) == 0
    src_frames, src_loop = gif_frames(SKIMAGE_GIF)
    out_frames, out_loop = gif_frames(out)
    assert len(out_frames) == len(src_frames) == 24
    assert [d for _, d, _ in out_frames] == [d for _, d, _ in src_frames]
    assert [m for _, _, m in out_frames] == [m for _, _, m in src_frames]
    assert out_loop == src_loop == 0
    assert out_frames[0][0].shape == (25 * SCALE, 14 * SCALE, 4)
    # the palette is good: the quantised frames stay close to the upscaled RGB
    rgb = src_frames[5][0][..., :3]
    expected = upscale.upscale_array(upscale.load_model(model_path), np.ascontiguousarray(rgb))
    assert np.abs(out_frames[5][0][..., :3].astype(int) - expected).mean() < 6


def make_transparent_gif(path, n=5):
    """A bouncing square on a transparent background: disposal 2, varied durations, loop 3."""
    frames = []
    for k in range(n):
        rgb = np.zeros((20, 24, 3), np.uint8)
        rgb[..., 0] = 40 * k
        rgb[..., 2] = np.linspace(0, 255, 24).astype(np.uint8)
        alpha = np.zeros((20, 24), np.uint8)
        alpha[4 + k : 12 + k, 3 * k : 3 * k + 10] = 255
        frames.append(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"))
    durations = [50, 120, 80, 200, 60][:n]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=3, disposal=2)
    return durations


def test_gif_transparency_and_one_frame_gif(model_path, tmp_path):
    src = tmp_path / "bounce.gif"
    durations = make_transparent_gif(src)
    out = tmp_path / "out" / "bounce.gif"
    assert run_cli(src, "-o", out, "--model", model_path) == 0
    src_frames, _ = gif_frames(src)
    out_frames, loop = gif_frames(out)
    assert loop == 3 and [d for _, d, _ in out_frames] == durations
    assert [m for _, _, m in out_frames] == [2] * 5
    for (a, _, _), (b, _, _) in zip(src_frames, out_frames, strict=True):
        expected = np.repeat(np.repeat(a[..., 3] > 0, SCALE, 0), SCALE, 1)
        agree = (b[..., 3] > 0) == expected
        assert agree.mean() > 0.97  # transparent where the source was (edges may move by a pixel)
        assert (b[..., 3] == 0).any() and (b[..., 3] == 255).any()

    one = tmp_path / "one.gif"
    make_transparent_gif(one, n=1)
    assert run_cli(one, "-o", tmp_path / "out" / "one.gif", "--model", model_path) == 0
    with Image.open(tmp_path / "out" / "one.gif") as im:
        assert getattr(im, "n_frames", 1) == 1 and im.size == (96, 80) and "transparency" in im.info
    assert run_cli(one, "-o", tmp_path / "out" / "one.png", "--model", model_path) == 0  # as a still image
    with Image.open(tmp_path / "out" / "one.png") as im:
        assert im.mode == "RGBA" and im.size == (96, 80)


def test_gif_to_mp4_and_webp_on_request(model_path, tmp_path):
    src = tmp_path / "bounce.gif"
    durations = make_transparent_gif(src)
    assert run_cli(src, SKIMAGE_GIF, "-o", tmp_path / "out", "--format", "mp4", "--model", model_path) == 0
    with av.open(str(tmp_path / "out" / "bounce.mp4")) as c:
        v = c.streams.video[0]
        times = [float(f.pts * f.time_base) for f in c.decode(v)]
        assert (v.codec_context.width, v.codec_context.height) == (96, 80)
    assert len(times) == 5
    np.testing.assert_allclose(times, np.cumsum([0, *durations[:-1]]) / 1000, atol=1e-3)  # variable timing
    assert (tmp_path / "out" / "no_time_for_that_tiny.mp4").is_file()
    webp = tmp_path / "out" / "bounce.webp"
    assert run_cli(src, "-o", webp, "--model", model_path) == 0
    with Image.open(webp) as im:
        assert im.n_frames == 5 and im.size == (96, 80)
        got = []
        for f in ImageSequence.Iterator(im):
            f.load()  # WebP frames get their duration when decoded
            got.append(f.info["duration"])
            assert f.convert("RGBA").getextrema()[3][0] == 0  # still transparent in places
    assert got == durations


# --- videos -----------------------------------------------------------------------------------------------


def make_video(path, *, frames=12, size=(48, 32), fps=24, audio=True, pts=None, rotation=0):
    """Encode a short test clip with PyAV: moving gradient frames, optionally a 440 Hz AAC track; pts (in
    1/1000 s) for a variable frame rate; rotation (degrees) as a phone's display matrix."""
    width, height = size
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        v.options = {"crf": "20", "preset": "ultrafast"}
        tb = Fraction(1, 1000) if pts is not None else Fraction(1, fps)
        v.codec_context.time_base = tb
        if rotation:
            v.set_display_rotation(rotation)
        a = None
        if audio:
            a = out.add_stream("aac", rate=44100)
            a.layout = "mono"
        yy, xx = np.mgrid[0:height, 0:width]
        for k in range(frames):
            img = np.dstack([(xx * 5 + k * 9) % 256, (yy * 7) % 256, np.full_like(xx, 30 * k % 256)]).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = (pts[k] if pts is not None else k), tb
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        if a is not None:
            seconds = frames / fps if pts is None else (pts[-1] + 40) / 1000
            n = int(44100 * seconds)
            t = np.arange(n) / 44100
            samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            for start in range(0, n, 1024):
                af = av.AudioFrame.from_ndarray(samples[:, start : start + 1024], format="fltp", layout="mono")
                af.sample_rate, af.pts = 44100, start
                out.mux(a.encode(af))
            out.mux(a.encode(None))
    return path


def probe(path):
    """Video size, rate, frame times (s), and the audio packets (time in s, bytes)."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        size, rate = (v.codec_context.width, v.codec_context.height), v.average_rate
        times = [float(f.pts * f.time_base) for f in c.decode(v)]
    with av.open(str(path)) as c:
        audio = [(round(float(p.pts * p.time_base), 4), bytes(p)) for p in c.demux(audio=0) if p.dts is not None] \
            if c.streams.audio else None
    return size, rate, times, audio


def test_video_keeps_frames_rate_timestamps_and_audio(model_path, tmp_path):
    src = make_video(tmp_path / "clip.mp4", rotation=90)
    out = tmp_path / "out" / "clip_x4.mp4"
    assert run_cli(src, "-o", out, "--model", model_path, "--compare", "--preset", "ultrafast",
                   "--crf", "0", "--pix-fmt", "yuv444p") == 0  # lossless, so the pixels can be checked
    size, rate, times, audio = probe(src)
    out_size, out_rate, out_times, out_audio = probe(out)
    assert out_size == (size[0] * SCALE, size[1] * SCALE)
    assert out_rate == rate == 24 and len(out_times) == len(times) == 12
    np.testing.assert_allclose(out_times, times, atol=1e-3)
    assert out_audio and out_audio == audio  # the audio packets, copied unchanged
    assert (tmp_path / "out" / "clip_x4_compare.png").is_file()
    # the frames are the model's: the first one is upscale_array's output for it (to RGB <-> YUV rounding)
    with av.open(str(src)) as c:
        first_in = next(c.decode(video=0)).to_ndarray(format="rgb24")
    with av.open(str(out)) as c:
        first_out = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    expected = upscale.upscale_array(upscale.load_model(model_path), first_in)
    assert np.abs(first_out - expected).mean() < 1.5
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.pix_fmt == "yuv444p"
        assert c.streams.video[0].codec_context.colorspace == 1  # tagged BT.709, as it was converted
        assert next(c.decode(video=0)).rotation == 90  # a phone video still plays upright


def test_variable_frame_rate_no_audio_and_max_frames(model_path, tmp_path):
    pts = [0, 40, 80, 200, 240, 400, 410, 500]
    src = make_video(tmp_path / "vfr.mkv", frames=len(pts), audio=False, pts=pts)
    out = tmp_path / "vfr_x4.mkv"
    assert run_cli(src, "-o", out, "--model", model_path, "--preset", "ultrafast") == 0
    _, _, times, audio = probe(out)
    assert audio is None
    np.testing.assert_allclose(times, np.array(pts) / 1000, atol=1e-3)

    clip = make_video(tmp_path / "long.mp4", frames=24)
    preview = tmp_path / "preview.mp4"
    assert run_cli(clip, "-o", preview, "--model", model_path, "--max-frames", "6", "--preset", "ultrafast") == 0
    _, _, times, audio = probe(preview)
    _, _, _, src_audio = probe(clip)
    assert len(times) == 6
    assert audio == [p for p in src_audio if p[0] < 6 / 24]  # the audio is cut where the video stops


def test_zero_frame_video_is_a_clear_error(model_path, tmp_path, capsys):
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as out:  # a header with a video stream, and no frames
        v = out.add_stream("libx264", rate=24)
        v.width, v.height, v.pix_fmt = 32, 32, "yuv420p"
        out.start_encoding()
    assert run_cli(empty, "-o", tmp_path / "empty_x4.mkv", "--model", model_path) == 1
    assert "no frames" in capsys.readouterr().err
    assert not (tmp_path / "empty_x4.mkv").exists() and not leftovers(tmp_path)


# --- usage checks before any model is loaded ------------------------------------------------------------------


@pytest.fixture
def no_model_load(monkeypatch):
    """Make loading a model fail the test: the checks under test must come before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(upscale, "load_model", refuse)  # --compare-with's model
    monkeypatch.setattr(inference, "load_model", refuse)  # load_fastest's


def test_arguments_are_checked_before_any_model_loads(model_path, tmp_path, capsys, no_model_load, monkeypatch):
    src = tmp_path / "in.png"
    Image.fromarray(data.coffee()[:16, :16]).save(src)
    out = tmp_path / "out.png"
    # the shipped model's overlap (32) comes from its file's config, without building it
    assert upscale.overlap_for_radius(upscale.file_receptive_radius(upscale.DEFAULT_MODEL)) == 32
    assert run_cli(src, "-o", out, "--tile", "48") == 2
    assert "--tile 65" in capsys.readouterr().err
    assert run_cli(src, "-o", out, "--model", model_path, "--tile", "32") == 2  # the tiny model's overlap is 16
    assert "--tile 33" in capsys.readouterr().err
    assert run_cli(src, "-o", out, "--model", model_path, "--tile", "40", "--overlap", "24") == 2
    for flag, value in (("--batch-size", "0"), ("--max-frames", "0"), ("--overlap", "-1")):
        assert run_cli(src, "-o", out, "--model", model_path, flag, value) == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        run_cli(src, "-o", out, "--start", "1:75")
    assert exit_.value.code == 2
    monkeypatch.setitem(upscale.MODEL_NAMES, "video", tmp_path / "absent_x4.keras")  # a copy without that file
    assert run_cli(src, "-o", out, "--model", "video") == 2
    assert "absent_x4.keras" in capsys.readouterr().err
    assert run_cli(src, "-o", out, "--model", tmp_path / "nosuch.keras") == 2
    capsys.readouterr()
    for inputs in ([tmp_path / "nosuch.png"], [src, tmp_path / "nosuch.png"]):  # a missing input: nothing runs
        assert run_cli(*inputs, "-o", tmp_path / "outs", "--model", model_path) == 2
        assert "nosuch.png: no such file or folder" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "outs").exists()


def test_receptive_field_from_the_file_matches_the_built_model(model_path):
    assert upscale.file_receptive_radius(model_path) == upscale.receptive_radius(upscale.load_model(model_path))
    assert upscale.file_receptive_radius(upscale.MODEL_NAMES["gan"]) == 39.5


def test_a_failed_file_is_named_once_and_found_before_loading(tmp_path, capsys, no_model_load):
    fake = tmp_path / "fake.jpg"
    fake.write_text("not an image at all\n")
    assert run_cli(fake, "-o", tmp_path / "fake_x4.png") == 1
    err = capsys.readouterr().err
    assert err.count("fake.jpg") == 1 and "FAILED" in err
    assert upscale.failure_reason(fake, ValueError(f"{fake}: broken")) == "broken"


def test_model_names_and_a_fast_help():
    assert upscale.resolve_model_path("psnr") == presets.WEIGHTS / "srresnet_x4_psnr.keras"
    assert upscale.resolve_model_path("gan") == presets.WEIGHTS / "srgan_x4.keras"
    assert upscale.resolve_model_path(None) == upscale.DEFAULT_MODEL
    import subprocess
    import sys
    import time

    script = Path(upscale.__file__)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    for name in ("psnr", "gan", "video", "--precision", "--start", "--x264-preset"):
        assert name in result.stdout
    check = "import sys, upscale; assert not {'keras', 'tensorflow'} & set(sys.modules), 'imported at import time'"
    subprocess.run([sys.executable, "-c", check], cwd=script.parent, check=True)
    assert seconds < 5  # no TensorFlow import (that alone takes several seconds)


def test_parse_time():
    assert upscale.parse_time("12.5") == 12.5
    assert upscale.parse_time("1:02.5") == 62.5
    assert upscale.parse_time("01:02:03.25") == 3723.25
    for bad in ("", "abc", "1:60", "-3", "1::2"):
        with pytest.raises(Exception, match="not a time"):
            upscale.parse_time(bad)


# --- animations: --max-frames, --start, the shared GIF palette -------------------------------------------------


def make_animation(path, n=8, durations=None):
    """An opaque animation (GIF, WebP or APNG by suffix) of n frames, a bright bar moving across."""
    durations = durations or [100] * n
    frames = []
    for k in range(n):
        rgb = np.zeros((16, 20, 3), np.uint8)
        rgb[..., 2] = np.linspace(0, 255, 20).astype(np.uint8)
        rgb[:, 2 * k : 2 * k + 3, 0] = 255
        frames.append(Image.fromarray(rgb))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return durations


def animation_durations(path):
    with Image.open(path) as im:
        out = []
        for frame in ImageSequence.Iterator(im):
            frame.load()
            out.append(frame.info.get("duration"))
        return out


@pytest.mark.parametrize("suffix", [".gif", ".webp", ".png"])
def test_max_frames_and_start_for_animations(model_path, tmp_path, suffix):
    src = tmp_path / f"anim{suffix}"
    make_animation(src, durations=[100, 200, 100, 100, 300, 100, 100, 100])
    out = tmp_path / f"preview{suffix}"
    assert run_cli(src, "-o", out, "--model", model_path, "--max-frames", "3") == 0
    assert animation_durations(out) == [100, 200, 100]
    later = tmp_path / f"later{suffix}"
    # 0.25 s falls in the second frame (0.1-0.3 s): it comes first with its remaining 50 ms
    assert run_cli(src, "-o", later, "--model", model_path, "--start", "0.25", "--max-frames", "3") == 0
    assert animation_durations(later) == [50, 100, 100]
    with Image.open(later) as im:
        assert im.size == (20 * SCALE, 16 * SCALE)
        im.seek(1)
        bar = np.asarray(im.convert("RGB"))[..., 0].mean(axis=0)
    assert 4 * SCALE <= int(np.argmax(bar)) < 7 * SCALE  # the third source frame: its bar at x = 4..6


def test_start_past_the_end_is_a_clear_error(model_path, tmp_path, capsys):
    src = tmp_path / "anim.gif"
    make_animation(src, n=3)
    assert run_cli(src, "-o", tmp_path / "late.gif", "--model", model_path, "--start", "5") == 1
    assert "no frames from --start 5 s on" in capsys.readouterr().err


def test_shared_gif_palette_holds_still_and_yields_to_new_scenes():
    rng = np.random.default_rng(0)
    base = resize(data.astronaut()[::8, ::8], (64, 64))
    frames = [np.clip(base.astype(int) + rng.integers(-3, 4, base.shape), 0, 255).astype(np.uint8) for _ in range(9)]
    frames.append(np.full_like(base, (20, 200, 30)))  # a new scene: one colour the shared palette lacks
    palette = upscale.GifPalette()
    images = [im for rgb in frames for im in palette.add(rgb, None)] + palette.finish()
    assert len(images) == 10 and (palette.shared, palette.own) == (9, 1)
    assert len({bytes(im.getpalette()) for im in images[:9]}) == 1  # one palette: colours hold still
    for rgb, im in zip(frames, images, strict=True):
        assert np.abs(np.asarray(im.convert("RGB")).astype(int) - rgb).mean() < 8


# --- 16-bit, batches, precision --------------------------------------------------------------------------------


def test_16bit_round_trip_and_the_8bit_note(model_path, tmp_path, capsys):
    deep = (np.add.outer(np.arange(24), np.arange(20)) * 123 + 1000).astype(np.uint16)
    for suffix in (".png", ".tif"):
        src = tmp_path / f"deep{suffix}"
        Image.fromarray(deep).save(src)
        out = tmp_path / f"deep_x4{suffix}"
        assert run_cli(src, "-o", out, "--model", model_path) == 0
        with Image.open(out) as im:
            assert im.mode.startswith("I;16") and im.size == (80, 96)
            values = np.asarray(im).astype(np.float64)
        assert values.max() > 255 * 20  # really 16-bit values, not 8-bit ones
        bicubic = resize(deep.astype(np.float32) / 65535, (80, 96), "bicubic") * 65535
        assert np.abs(values - bicubic).mean() < 0.02 * 65535  # the tiny model is bicubic plus a small residual
    assert "16-bit" not in capsys.readouterr().out
    assert run_cli(tmp_path / "deep.png", "-o", tmp_path / "deep_x4.jpg", "--model", model_path) == 0
    assert "16-bit input written as 8-bit" in capsys.readouterr().out
    colour = tmp_path / "colour16.png"
    write_png16_rgb(colour, np.stack([deep, deep[::-1], deep[:, ::-1]], axis=2))
    assert run_cli(colour, "-o", tmp_path / "colour_x4.png", "--model", model_path) == 0
    assert "16-bit colour input read and written as 8-bit" in capsys.readouterr().out


def write_png16_rgb(path, rgb):
    """A 48-bit RGB PNG, written by hand (Pillow cannot write one)."""
    import struct
    import zlib

    height, width, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


def test_upscale_batch_is_upscale_array_for_each_image(model):
    crops = np.stack([data.astronaut()[i * 40 : i * 40 + 24, 100:124] for i in range(5)])
    batch = upscale.upscale_batch(model, crops, batch_size=2)
    assert batch.shape == (5, 96, 96, 3) and batch.dtype == np.uint8
    for crop, sr in zip(crops, batch, strict=True):
        assert np.abs(sr.astype(int) - upscale.upscale_array(model, crop)).max() <= 1
    mixed = upscale.upscale_batch(model, [crops[0], crops[1][:20]])
    assert [m.shape for m in mixed] == [(96, 96, 3), (80, 96, 3)]


def test_bf16_copy_and_precision_choice(model, tmp_path, monkeypatch):
    bf16 = upscale.with_precision(model, "bf16")
    assert bf16 is not model and upscale.with_precision(model, "fp32") is model
    assert {layer.dtype_policy.name for layer in bf16.layers} >= {"mixed_bfloat16", "float32"}
    img = data.astronaut()[100:140, 150:190]
    a, b = upscale.upscale_array(model, img).astype(int), upscale.upscale_array(bf16, img).astype(int)
    assert np.abs(a - b).mean() < 2  # the same weights, rounded to bfloat16
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.delenv("SR_CPU_BF16", raising=False)  # the flags decide (the suite may run with it set)
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    assert upscale.cpu_has_native_bf16(cpuinfo)
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert not upscale.cpu_has_native_bf16(cpuinfo)
    monkeypatch.setenv("SR_CPU_BF16", "off")  # the switch the suite runs both ways with overrides the flags
    assert upscale.cpu_has_native_bf16(tmp_path / "absent") is False
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16\n")
    assert not upscale.cpu_has_native_bf16(cpuinfo)
    monkeypatch.setenv("SR_CPU_BF16", "on")
    assert upscale.cpu_has_native_bf16(tmp_path / "absent")
    monkeypatch.setenv("SR_CPU_BF16", "maybe")
    with pytest.raises(ValueError, match="SR_CPU_BF16"):
        upscale.cpu_has_native_bf16()
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: True)
    assert upscale.resolve_precision("auto") == "bf16" and upscale.resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(inference, "has_gpu", lambda: False)
    assert upscale.resolve_precision("auto") == "fp32"


def test_precision_auto_follows_the_cpu(model_path, tmp_path, cpu_bf16):
    """--precision auto computes in bfloat16 where the CPU does natively (forced both ways by the fixture):
    float32 gives the float32 model's pixels, bfloat16 the bfloat16 copy's, within a grey level of each."""
    src = tmp_path / "in.png"
    Image.fromarray(data.astronaut()[100:160, 150:200]).save(src)
    import runtime

    assert upscale.resolve_precision("auto") == ("bf16" if cpu_bf16 else "fp32")
    assert runtime.native_bf16() == cpu_bf16  # what flow.py's --mixed-precision auto asks (no GPU in the tests)
    assert run_cli(src, "-o", tmp_path / "out.png", "--model", model_path, "--precision", "auto") == 0
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(int)
    expected = upscale.upscale_array(upscale.load_model(model_path, "bf16" if cpu_bf16 else "fp32"),
                                     data.astronaut()[100:160, 150:200]).astype(int)
    assert np.abs(got - expected).max() <= 1


# --- the threaded video pipeline -------------------------------------------------------------------------------


def decoded(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_threaded_pipeline_gives_the_sequential_frames_and_keeps_audio(model_path, tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=10)
    inference = upscale.Inference(upscale.load_model(model_path))
    options = dict(codec=None, crf=0, preset="ultrafast", pix_fmt="yuv444p")
    for threaded in (False, True):
        assert upscale.upscale_video_file(inference, src, tmp_path / f"{threaded}.mp4", video_options=options,
                                          progress=False, threaded=threaded) == 10
    sequential, threaded = decoded(tmp_path / "False.mp4"), decoded(tmp_path / "True.mp4")
    assert len(sequential) == len(threaded) == 10
    assert all(np.array_equal(a, b) for a, b in zip(sequential, threaded, strict=True))
    assert probe(tmp_path / "True.mp4")[3] == probe(src)[3]  # every audio packet, unchanged


def test_video_start_seeks_and_retimes_video_and_audio(model_path, tmp_path):
    src = make_video(tmp_path / "clip.mp4", frames=24)
    out = tmp_path / "later.mp4"
    assert run_cli(src, "-o", out, "--model", model_path, "--start", "0.5", "--max-frames", "4",
                   "--preset", "ultrafast", "--crf", "0", "--pix-fmt", "yuv444p") == 0
    _, _, times, audio = probe(out)
    np.testing.assert_allclose(times, np.arange(4) / 24, atol=1e-3)  # from 0, one frame each 1/24 s
    frames_in = decoded(src)
    first = decoded(out)[0].astype(int)
    expected = upscale.upscale_array(upscale.load_model(model_path), frames_in[12])  # the frame at 0.5 s
    assert np.abs(first - expected).mean() < 1.5
    _, _, _, src_audio = probe(src)
    shifted = [(round(t - 0.5, 4), b) for t, b in src_audio if 0.5 <= t < 0.5 + 4 / 24]
    assert [b for _, b in audio] == [b for _, b in shifted]  # the audio of those frames, unchanged
    np.testing.assert_allclose([t for t, _ in audio], [t for t, _ in shifted], atol=1e-3)


def test_pipeline_queues_are_bounded_and_errors_stop_every_stage():
    produced, consumed, ahead = [], [], []

    class Item:
        def __init__(self, k):
            self.rgb, self.k = np.zeros((2, 2, 3), np.uint8), k

    def source():
        for k in range(300):
            produced.append(k)
            yield Item(k)

    def slow_sink(item):
        import time

        time.sleep(0.001)
        consumed.append(item.k)
        ahead.append(len(produced) - len(consumed))

    upscale.run_frames(source(), lambda rgbs: [r + 1 for r in rgbs], slow_sink, frames_per_batch=2)
    assert consumed == list(range(300))
    assert max(ahead) <= upscale.QUEUE_ITEMS + upscale.QUEUE_FRAMES + 8  # memory does not grow with length

    def failing_sink(item):
        if item.k == 50:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        upscale.run_frames(source(), lambda rgbs: rgbs, failing_sink)
    assert not [t for t in threading.enumerate() if t.name.startswith("upscale-")]


def test_compile_auto_is_on_for_frames_and_off_for_still_images():
    still, anim = upscale.Job(Path("a.png"), Path("b.png"), "image"), upscale.Job(SKIMAGE_GIF, Path("b.gif"), "animation")
    assert upscale.first_frame_size([still]) is None
    assert upscale.first_frame_size([still, anim]) == Image.open(SKIMAGE_GIF).size  # what the runtimes are timed on
    assert not inference.wants_compile("auto", None) and inference.wants_compile("auto", (32, 24))
    assert inference.wants_compile("on", None) and not inference.wants_compile("off", (32, 24))
    assert upscale.parse_args(["x.png", "-o", "y.png", "--compile"]).compile == "on"
    assert upscale.parse_args(["x.png", "-o", "y.png"]).compile == "auto"


def test_compiled_inference_gives_the_same_pixels(model_path, tmp_path):
    model = upscale.load_model(model_path)
    img = data.astronaut()[100:150, 150:210]
    plain = upscale.upscale_array(model, img, tile=40).astype(int)
    upscale.compile_model(model)
    assert np.abs(upscale.upscale_array(model, img, tile=40).astype(int) - plain).max() <= 1
    src = tmp_path / "anim.gif"
    make_animation(src, n=3)
    assert run_cli(src, "-o", tmp_path / "anim_x4.webp", "--model", model_path, "--compile") == 0
    with Image.open(tmp_path / "anim_x4.webp") as im:
        assert im.n_frames == 3 and im.size == (80, 64)
