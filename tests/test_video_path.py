"""The YUV video path (--video-path): a luma-first model on decoded planes against the RGB path.

The RGB path decodes frames to RGB, upscales RGB and converts it back to YUV; the YUV path makes the output's
luma directly (the network's residual plus the interpolated luma) and interpolates the source's chroma planes.
Both must give the same pictures: Y-PSNR against the original frames within 0.05 dB, on a generated clip and
on the Big Buck Bunny excerpt in ../shared/data/clips (skipped when absent).
"""

import argparse
import importlib.util
import io
import re
from fractions import Fraction
from pathlib import Path

import av
import keras
import numpy as np
import pytest
from keras import ops
from skimage import data

import inference
import media
import upscale
from generator import ChromaUpsample, LumaUpsample, build_generator
from resizer import resize

SCALE = 4
CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "clips" / "big_buck_bunny.mp4"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.fixture(scope="module")
def stream_model():
    """The stream preset with random weights, its last conv damped (as a briefly trained one: near bicubic,
    with a residual that matters), so the two paths have a network output to disagree on."""
    keras.utils.set_random_seed(1)
    model = build_generator(scale=SCALE, preset="stream")
    last = model.get_layer("out_conv")
    kernel, bias = last.get_weights()
    last.set_weights([np.random.default_rng(2).normal(0, 0.02, kernel.shape).astype(np.float32), bias])
    return model


@pytest.fixture(scope="module")
def stream_path(stream_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "stream_x4.keras"
    stream_model.save(path)
    return path


@pytest.fixture(scope="module")
def rgb_model_path(tmp_path_factory):
    """A model that predicts RGB (the video preset)."""
    path = tmp_path_factory.mktemp("models") / "video_x4.keras"
    build_generator(scale=SCALE, preset="video").save(path)
    return path


def moving_frames(count, size):
    """HR frames: a window moving over skimage's astronaut (detail, skin, flat areas), size (width, height)."""
    photo = data.astronaut()
    width, height = size
    return [np.ascontiguousarray(photo[40 + 3 * k : 40 + 3 * k + height, 60 + 5 * k : 60 + 5 * k + width])
            for k in range(count)]


def encode_lossless(path, frames, codec="libx264", fps=24, pix_fmt="yuv420p", colorspace=None):
    """4:2:0 video of uint8 RGB frames, lossless in YUV (x264 qp 0, or FFV1 for odd sizes); colorspace: an
    AVCOL_SPC code to convert with and tag (None: untagged, BT.601 as FFmpeg converts it)."""
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        v = out.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = width, height, pix_fmt
        v.options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {}
        v.codec_context.time_base = Fraction(1, fps)
        if colorspace is not None:
            v.codec_context.colorspace = colorspace
        for k, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if colorspace is not None:
                frame = frame.reformat(format=pix_fmt, dst_colorspace=colorspace)
                frame.colorspace = colorspace
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
    return path


def y4m_frames(data):
    """The (Y, U, V) planes of every frame of a YUV4MPEG2 4:2:0 stream."""
    header, rest = data.split(b"\n", 1)
    fields = {f[:1]: f[1:] for f in header.split()[1:]}
    width, height = int(fields[b"W"]), int(fields[b"H"])
    size, frames = width * height * 3 // 2, []
    while rest:
        assert rest.startswith(b"FRAME\n")
        plane = np.frombuffer(rest[6 : 6 + size], np.uint8)
        rest = rest[6 + size :]
        y, u = plane[: width * height].reshape(height, width), plane[width * height : width * height * 5 // 4]
        frames.append((y, u.reshape(height // 2, width // 2), plane[width * height * 5 // 4 :].reshape(height // 2, -1)))
    return frames


def upscale_to_y4m(model, clip, path, **kwargs):
    stats, pipe = media.StreamStats(), io.BytesIO()
    media.upscale_video_file(inference.Inference(model), clip, "-", video_options={}, progress=False, pipe=pipe,
                             stats=stats, video_path=path, **kwargs)
    assert stats.video_path == path
    return y4m_frames(pipe.getvalue())


def y_psnr(y, reference_rgb, colorspace):
    """PSNR (dB) of a limited-range Y plane against the Y of an RGB frame in the same matrix."""
    reference = 16 + 219 * (reference_rgb.astype(np.float64) / 255) @ media.yuv_matrix(colorspace)[0]
    return 10 * np.log10(255**2 / np.mean((y.astype(np.float64) - reference) ** 2))


def compare_paths(model, clip, hr_frames, **kwargs):
    """(mean Y-PSNR of the rgb path, of the yuv path, against hr_frames; Y-PSNR between the two paths);
    asserts that their chroma planes agree (PSNR > 45 dB: a matrix converted wrongly gives about 40)."""
    rgb, yuv = upscale_to_y4m(model, clip, "rgb", **kwargs), upscale_to_y4m(model, clip, "yuv", **kwargs)
    assert len(rgb) == len(yuv) == len(hr_frames)
    colorspace = 1 if hr_frames[0].shape[0] > 576 else 5  # what Y4MWriter converts with
    height, width = hr_frames[0].shape[:2]
    ours = [np.mean([y_psnr(f[0][:height, :width], hr, colorspace) for f, hr in zip(out, hr_frames, strict=True)])
            for out in (rgb, yuv)]
    def psnr(plane):
        return np.mean([10 * np.log10(255**2 / np.mean((a[plane].astype(float) - b[plane]) ** 2))
                        for a, b in zip(rgb, yuv, strict=True)])

    assert psnr(1) > 45 and psnr(2) > 45, (psnr(1), psnr(2))
    return ours[0], ours[1], psnr(0)


# --- the layer: one interpolation for luma, RGB and chroma ---------------------------------------------------


def luma_upsample_before(layer, lr, residual):
    """LumaUpsample.call as it was before its interpolation was shared with ChromaUpsample (3 channels)."""
    r, phases = layer.scale, layer._phases  # (5, 5, r*r) taps, float64, as the layer made them before
    depthwise = np.repeat(phases[:, :, None, :], 3, axis=2).astype(np.float32)
    pad = ((0, 0), (2, 2), (2, 2), (0, 0))
    weighted = ops.depthwise_conv(ops.pad(lr, pad), ops.convert_to_tensor(depthwise), padding="valid")
    ones = ops.pad(ops.ones_like(lr[..., :1]), pad)
    weights = ops.conv(ones, ops.convert_to_tensor(phases[:, :, None, :].astype(np.float32)), padding="valid")
    n, h, w = lr.shape[0], lr.shape[1], lr.shape[2]
    x = ops.reshape(weighted, (n, h, w, 3, r * r)) / ops.expand_dims(weights, 3)
    x = x + ops.expand_dims(ops.cast(residual, x.dtype), 3)
    x = ops.transpose(ops.reshape(x, (n, h, w, 3, r, r)), (0, 1, 4, 2, 5, 3))
    return ops.reshape(x, (n, h * r, w * r, 3))


@pytest.mark.skipif(not (WEIGHTS / "stream_x4.keras").is_file(), reason="weights/stream_x4.keras is not shipped here")
def test_shared_interpolation_leaves_the_shipped_stream_model_bit_identical():
    model = inference.load_model(WEIGHTS / "stream_x4.keras", "fp32")
    layer = inference.luma_upsample(model)
    parts = keras.Model(model.inputs, layer.input)  # the image and the network's residual
    x = np.random.default_rng(0).random((2, 29, 43, 3), dtype=np.float32)
    lr, residual = parts.predict_on_batch(x)
    before = np.asarray(luma_upsample_before(layer, ops.convert_to_tensor(lr), ops.convert_to_tensor(residual)))
    assert np.array_equal(np.asarray(model.predict_on_batch(x)), before)


def test_chroma_upsample_is_luma_upsample_without_a_residual():
    x = np.random.default_rng(0).random((1, 13, 17, 2), dtype=np.float32)
    chroma = np.asarray(ChromaUpsample(SCALE)(x))
    luma_first = np.asarray(LumaUpsample(SCALE)([x, np.zeros((1, 13, 17, SCALE * SCALE), np.float32)]))
    assert chroma.shape == (1, 13 * SCALE, 17 * SCALE, 2) and np.array_equal(chroma, luma_first)


def test_luma_model_gives_the_luma_of_the_rgb_output(stream_model):
    rgb = moving_frames(1, (40, 30))[0]
    weights = media.yuv_matrix(1)[0]
    rgb_sr = inference.upscale_float(stream_model, rgb.astype(np.float32) / 255)
    luma = inference.upscale_luma(stream_model, rgb, weights)
    assert luma.shape == (30 * SCALE, 40 * SCALE)
    assert np.abs(rgb_sr @ weights.astype(np.float32) - luma).max() < 1e-5
    tiled = inference.upscale_luma(stream_model, rgb, weights, tile=25, overlap=8)  # tiles cross-faded alike
    tiled_rgb = inference.upscale_float(stream_model, rgb.astype(np.float32) / 255, tile=25, overlap=8)
    assert np.abs(tiled_rgb @ weights.astype(np.float32) - tiled).max() < 1e-5


def test_luma_model_runs_compiled_and_in_bf16_as_the_model_does(stream_model):
    rgb = moving_frames(1, (40, 30))[0]
    weights = media.yuv_matrix(1)[0]
    fp32 = inference.upscale_luma(stream_model, rgb, weights)
    copy = keras.models.clone_model(stream_model)
    copy.set_weights(stream_model.get_weights())
    for model in (inference.compile_model(copy), inference.with_precision(stream_model, "bf16")):
        compiled = inference._state(model).compiled is not None
        assert (inference._state(inference.luma_model(model, weights)).compiled is not None) == compiled
        assert np.abs(inference.upscale_luma(model, rgb, weights) - fp32).max() < 0.01


def frame_with_chroma():
    """(uint8 RGB frame, centred chroma planes, BT.709 luma weights): a YUV path frame with odd sides, so the
    output's chroma is cut to size."""
    rgb = moving_frames(1, (41, 31))[0]
    chroma = np.random.default_rng(3).uniform(-0.45, 0.45, (16, 21, 2)).astype(np.float32)
    return rgb, chroma, media.yuv_matrix(1)[0]


def assert_planes_agree(planes, expected):
    """uint8 (Y, chroma) planes as expected, but for values at .5 that rounded the other way."""
    for got, want in zip(planes, expected, strict=True):
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.abs(got.astype(int) - want).max() <= 1 and (got != want).mean() < 0.001


def planes_in_steps(model, rgb, chroma, weights, full_range):
    """The output planes made as the tiled and runtime case makes them: float luma and chroma, then NumPy."""
    height, width = rgb.shape[0] * SCALE, rgb.shape[1] * SCALE
    y = inference.to_uint8_in_bands(inference.upscale_luma(model, rgb, weights),
                                    **inference.video_levels(full_range, chroma=False))
    uv = np.asarray(ChromaUpsample(SCALE)(chroma[None]))[0, : (height + 1) // 2, : (width + 1) // 2]
    return y, inference.to_uint8_in_bands(uv, **inference.video_levels(full_range, chroma=True))


@pytest.mark.parametrize("full_range", [False, True], ids=["limited", "full"])
def test_one_graph_makes_the_planes_the_steps_make(stream_model, full_range):
    rgb, chroma, weights = frame_with_chroma()
    expected = planes_in_steps(stream_model, rgb, chroma, weights, full_range)
    copy = keras.models.clone_model(stream_model)
    copy.set_weights(stream_model.get_weights())
    for model in (stream_model, inference.compile_model(copy)):
        y, uv = inference.upscale_planes(model, rgb, chroma, weights, full_range=full_range)
        assert y.dtype == uv.dtype == np.uint8 and y.shape == (124, 164) and uv.shape == (62, 82, 2)
        assert_planes_agree((y, uv), expected)
        made = len(inference._state(model).planes)
        inference.upscale_planes(model, rgb, chroma, weights, full_range=full_range)
        assert made >= 1 and len(inference._state(model).planes) == made  # made once per range
    low, high = (0, 255) if full_range else (16, 235)
    assert y.min() >= low and y.max() <= high
    tiled = inference.upscale_planes(stream_model, rgb, chroma, weights, full_range=full_range, tile=25, overlap=8)
    steps_tiled = inference.to_uint8_in_bands(inference.upscale_luma(stream_model, rgb, weights, tile=25, overlap=8),
                                              **inference.video_levels(full_range, chroma=False))
    assert_planes_agree(tiled, (steps_tiled, expected[1]))  # tiles: luma, then finish_model


def test_chroma_converts_between_matrices_at_chroma_resolution():
    rgb = np.random.default_rng(0).random((100, 3))
    for source, target in ((5, 1), (1, 5), (9, 1)):
        converted = (rgb @ media.yuv_matrix(source)[1:].T) @ media.chroma_conversion(source, target).T
        assert np.allclose(converted, rgb @ media.yuv_matrix(target)[1:].T)


# --- the two paths give the same frames ------------------------------------------------------------------


@pytest.mark.parametrize(("pix_fmt", "colorspace"), [("yuv420p", None), ("yuvj420p", None), ("yuv420p", 1)],
                         ids=["untagged", "full-range", "bt709"])
def test_yuv_path_matches_rgb_path_on_a_generated_clip(stream_model, tmp_path, pix_fmt, colorspace):
    hr = moving_frames(4, (192, 128))
    clip = encode_lossless(tmp_path / "lr.mkv", [resize(f, (48, 32), "bicubic") for f in hr], pix_fmt=pix_fmt,
                           colorspace=colorspace)
    with av.open(str(clip)) as inp:  # the source is what the case says
        frame = next(inp.decode(video=0))
        assert media.frame_colour(frame) == ({None: 2}.get(colorspace, colorspace), pix_fmt == "yuvj420p")
    rgb_psnr, yuv_psnr, between = compare_paths(stream_model, clip, hr)
    assert abs(yuv_psnr - rgb_psnr) < 0.05 and between > 45, (rgb_psnr, yuv_psnr, between)


@pytest.mark.skipif(not CLIP.is_file(), reason=f"{CLIP} is absent (the shared benchmark clips)")
@pytest.mark.skipif(not (WEIGHTS / "stream_x4.keras").is_file(), reason="weights/stream_x4.keras is not shipped here")
def test_yuv_path_matches_rgb_path_on_the_shared_clip(tmp_path):
    with av.open(str(CLIP)) as inp:
        inp.seek(30 * av.time_base)  # detail: the first seconds are nearly flat (PSNR 50 dB, all rounding)
        hr = [media.frame_to_rgb(f) for f, _ in zip(inp.decode(video=0), range(4), strict=False)]
    clip = encode_lossless(tmp_path / "lr.mkv", [resize(f, (160, 90), "bicubic") for f in hr])
    rgb_psnr, yuv_psnr, between = compare_paths(inference.load_model(WEIGHTS / "stream_x4.keras", "fp32"), clip, hr)
    assert abs(yuv_psnr - rgb_psnr) < 0.05 and between > 45, (rgb_psnr, yuv_psnr, between)


def test_odd_sizes_give_the_whole_frame(stream_model, tmp_path):
    hr = moving_frames(2, (132, 100))
    clip = encode_lossless(tmp_path / "odd.mkv", [resize(f, (33, 25), "bicubic") for f in hr], codec="ffv1")
    rgb_psnr, yuv_psnr, between = compare_paths(stream_model, clip, hr)
    frames = upscale_to_y4m(stream_model, clip, "yuv")
    assert frames[0][0].shape == (100, 132) and frames[0][1].shape == (50, 66)
    assert abs(yuv_psnr - rgb_psnr) < 0.05 and between > 40, (rgb_psnr, yuv_psnr, between)


def test_yuv_path_writes_a_tagged_x264_file_like_the_rgb_path(stream_model, tmp_path):
    hr = moving_frames(3, (160, 128))
    clip = encode_lossless(tmp_path / "lr.mkv", [resize(f, (40, 32), "bicubic") for f in hr])
    planes = {}
    for path in ("rgb", "yuv"):
        dst = tmp_path / f"{path}.mp4"
        stats = media.StreamStats()
        assert media.upscale_video_file(inference.Inference(stream_model), clip, dst, video_options={"crf": 0},
                                        progress=False, stats=stats, video_path=path) == 3  # crf 0: lossless
        with av.open(str(dst)) as out:
            stream = out.streams.video[0]
            assert (stream.width, stream.height, stream.codec_context.colorspace) == (160, 128, 1)  # BT.709
            planes[path] = [f.to_ndarray(format="yuv420p") for f in out.decode(video=0)]  # Y, then U and V
    assert len(planes["yuv"]) == 3
    for a, b in zip(planes["rgb"], planes["yuv"], strict=True):  # BT.601 in, BT.709 out: converted alike
        for part in (slice(0, 128), slice(128, None)):
            assert 10 * np.log10(255**2 / np.mean((a[part].astype(float) - b[part]) ** 2)) > 45


# --- which path runs ---------------------------------------------------------------------------------------


def test_auto_takes_yuv_for_a_luma_first_model_writing_yuv420p_and_rgb_otherwise(stream_model, rgb_model_path):
    video = inference.load_model(rgb_model_path)
    assert media.choose_video_path("auto", stream_model, "yuv420p", "yuv420p") == "yuv"
    assert media.choose_video_path("auto", video, "yuv420p", "yuv420p") == "rgb"  # it predicts RGB
    assert media.choose_video_path("auto", stream_model, "yuv444p", "yuv420p") == "rgb"
    assert media.choose_video_path("auto", stream_model, "yuv420p", "yuv422p") == "rgb"
    assert media.choose_video_path("rgb", stream_model, "yuv420p", "yuv420p") == "rgb"
    keras.utils.set_random_seed(0)
    assert media.choose_video_path("auto", build_generator(scale=3, preset="stream"), "yuv420p", None) == "rgb"
    with pytest.raises(media.VideoError, match="predicts RGB"):
        media.choose_video_path("yuv", video, "yuv420p", "yuv420p")


def test_the_summary_names_the_path_and_a_yuv_path_that_cannot_run_is_a_usage_error(
        stream_path, rgb_model_path, tmp_path, capsys):
    clip = encode_lossless(tmp_path / "lr.mkv", [resize(f, (24, 16), "bicubic") for f in moving_frames(2, (96, 64))])
    run = ["--no-progress", "--precision", "fp32", "--compile", "off"]
    assert upscale.main([str(clip), "-o", str(tmp_path / "a.mp4"), "--model", str(stream_path), "--compare", *run]) == 0
    assert "YUV path" in capsys.readouterr().out
    assert (tmp_path / "a_compare.png").is_file()  # the first frame's RGB, made for the comparison alone
    assert upscale.main([str(clip), "-o", str(tmp_path / "b.mp4"), "--model", str(rgb_model_path), *run]) == 0
    assert "RGB path" in capsys.readouterr().out
    assert upscale.main([str(clip), "-o", str(tmp_path / "c.mp4"), "--model", str(stream_path), "--pix-fmt",
                         "yuv444p", *run]) == 0
    assert "RGB path" in capsys.readouterr().out
    for model, extra, says in ((rgb_model_path, [], "predicts RGB"), (stream_path, ["--pix-fmt", "yuv444p"], "yuv444p")):
        assert upscale.main([str(clip), "-o", str(tmp_path / "d.mp4"), "--model", str(model), "--video-path", "yuv",
                             *extra, *run]) == 2
        err = capsys.readouterr().err
        assert "--video-path yuv cannot run" in err and says in err
    assert not (tmp_path / "d.mp4").exists()


# --- the YUV path on an optional runtime -------------------------------------------------------------------


def on_runtime(path, runtime):
    """The model at path as `upscale.py --runtime RUNTIME --precision fp32` loads it for the YUV path."""
    settings = argparse.Namespace(int8=None, runtime=runtime, precision="fp32", luma_path=True)
    return upscale.load_on_runtime(str(path), settings, jobs=[])[0]


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs openvino (pip install -r "
                    "requirements-runtimes.txt)")
def test_openvino_makes_the_planes_in_the_lumas_graph(stream_model, stream_path):
    rgb, chroma, weights = frame_with_chroma()
    model = on_runtime(stream_path, "openvino")
    planes = inference.upscale_planes(model, rgb, chroma, weights)
    graph = inference.planes_model(model, weights)
    assert graph is not None and inference._state(graph).runs_on == "runtime"  # one OpenVINO call a frame
    assert_planes_agree(planes, inference.upscale_planes(stream_model, rgb, chroma, weights))  # Keras's


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("tf2onnx") is None,
                    reason="needs onnxruntime and tf2onnx (pip install -r requirements-runtimes.txt)")
def test_a_runtime_without_the_planes_graph_finishes_its_luma_on_keras(stream_model, stream_path):
    rgb, chroma, weights = frame_with_chroma()
    model = on_runtime(stream_path, "onnx")
    planes = inference.upscale_planes(model, rgb, chroma, weights)
    assert inference.planes_model(model, weights) is None
    assert inference._state(inference.luma_model(model, weights)).runs_on == "runtime"
    assert_planes_agree(planes, inference.upscale_planes(stream_model, rgb, chroma, weights))


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None,
                    reason="needs openvino and nncf (pip install -r requirements-runtimes.txt)")
def test_an_optional_runtime_runs_the_yuv_paths_luma(stream_path, tmp_path, capsys):
    clip = encode_lossless(tmp_path / "in.mp4", [resize(f, (40, 32), "bicubic")
                                                 for f in moving_frames(4, (160, 128))])
    planes = {}
    for name, extra in (("keras", ["--precision", "fp32", "--compile", "off"]),
                        ("openvino", ["--runtime", "openvino", "--precision", "fp32"]), ("int8", ["--int8"])):
        dst = tmp_path / f"{name}.mp4"
        assert upscale.main([str(clip), "-o", str(dst), "--model", str(stream_path), "--crf", "0", "--no-progress",
                             *extra]) == 0
        out = capsys.readouterr().out
        assert "YUV path" in out
        with av.open(str(dst)) as video:
            planes[name] = [f.to_ndarray(format="yuv420p") for f in video.decode(video=0)]
        assert len(planes[name]) == 4
    summary = out.strip().splitlines()[-1]
    loss = re.search(r"ran openvino int8 for the YUV path's luma \(loses (-?[\d.]+) dB on", summary)
    assert loss and float(loss[1]) <= 0.1, summary  # calibrated on the clip, checked on frames held back
    assert "; ran openvino" not in summary.split("luma (")[1]  # the RGB model was never needed, so never converted
    for a, b in zip(planes["keras"], planes["openvino"], strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1  # the same network, rounding apart
    for a, b in zip(planes["keras"], planes["int8"], strict=True):
        assert 10 * np.log10(255**2 / np.mean((a[:128].astype(float) - b[:128]) ** 2)) > 40
