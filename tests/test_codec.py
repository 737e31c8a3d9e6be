"""codec.py and create_dataset.py --codec: clips with motion, a real codec through PyAV, pairs cut from the
decoded frames (aligned, degraded, recorded, reproducible), bad codecs and rates, a failing clip."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import codec
import create_dataset
import resizer
from create_dataset import DatasetError, build_dataset, main
from metrics import rgb_to_y

SAMPLES = Path(__import__("skimage.data").data.data_dir)
ROOT = Path(__file__).resolve().parents[1]
SMALL_STREAM = {"codec": "libx264", "window": (96, 64), "frames": 4, "pairs_per_frame": 1}
SMALL = {"hr_size": 32, "scale": 4, "workers": 1, "progress": False, "mode": "patches", "patches": 8}


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


@pytest.fixture(scope="module")
def photo():
    return resizer.load_image(SAMPLES / "astronaut.png")


@pytest.fixture
def photos(tmp_path):
    """6 photos of 160-200 px: crops of scikit-image's colour photos."""
    folder = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for i, name in enumerate(("astronaut.png", "coffee.png", "chelsea.png") * 2):
        img = resizer.load_image(SAMPLES / name)
        h, w = (int(v) for v in rng.integers(160, 200, 2))
        top, left = int(rng.integers(0, img.shape[0] - h)), int(rng.integers(0, img.shape[1] - w))
        resizer.save_image(folder / f"p{i}.png", img[top : top + h, left : left + w])
    return folder


def panning_clip(photo, frames=8, window=(256, 144), step=6):
    boxes = [(float(20 + step * i), float(30 + step // 2 * i), *map(float, window)) for i in range(frames)]
    return codec.render_frames(photo, boxes, window)


# ----------------------------------------------------------------------------- codec.py


def test_encode_decode_makes_inter_frames_deterministically_and_loses_more_at_higher_crf(photo):
    lr = codec.downscale_frames(panning_clip(photo), 4, "bicubic")
    low, stream_low = codec.encode_decode(lr, "libx264", crf=18, preset="medium")
    again, stream_again = codec.encode_decode(lr, "libx264", crf=18, preset="medium")
    high, stream_high = codec.encode_decode(lr, "libx264", crf=40, preset="medium")
    assert len(low) == len(lr) and low[0].shape == lr[0].shape and low[0].dtype == np.uint8
    assert stream_low["frame_types"][0] == "I" and set(stream_low["frame_types"][1:]) & {"P", "B"}
    assert stream_again == stream_low and all((a == b).all() for a, b in zip(low, again, strict=True))
    assert stream_high["bytes"] < stream_low["bytes"] and stream_high["kbps"] < stream_low["kbps"]
    quality = [np.mean([psnr(d, f) for d, f in zip(dec, lr, strict=True)]) for dec in (low, high)]
    assert 30 < quality[0] < 60 and quality[1] < quality[0] - 3


def test_encode_decode_with_a_bitrate_and_other_codecs(photo):
    lr = codec.downscale_frames(panning_clip(photo, frames=4), 4, "lanczos")
    for name, kwargs in (("mpeg4", {"bitrate_kbps": 60}), ("libx265", {"crf": 30}), ("libvpx-vp9", {"crf": 40})):
        if name not in codec.available_codecs():
            continue
        decoded, stream = codec.encode_decode(lr, name, **kwargs)
        assert len(decoded) == 4 and stream["bytes"] > 0, name
        assert 20 < np.mean([psnr(d, f) for d, f in zip(decoded, lr, strict=True)]) < 60, name


def test_camera_paths_stay_inside_the_canvas_and_move(photo):
    canvas, window = (300, 200), (160, 96)
    moved = 0
    for seed in range(40):
        boxes = codec.camera_path(canvas, window, 8, np.random.default_rng(seed))
        assert len(boxes) == 8
        for left, top, w, h in boxes:
            assert left >= -1e-6 and top >= -1e-6 and left + w <= canvas[0] + 1e-6 and top + h <= canvas[1] + 1e-6
            assert w >= window[0] - 1e-6 and h >= window[1] - 1e-6  # never zoomed in past the window: no upsampling
        moved += len({b for b in boxes}) > 1
        frames = codec.render_frames(photo[:200, :300], boxes, window)
        assert all(f.shape == (96, 160, 3) for f in frames)
    assert moved >= 30
    assert codec.camera_path((160, 96), window, 8, np.random.default_rng(0)) == [(0.0, 0.0, 160.0, 96.0)] * 8
    assert codec.pan_path((400, 300), (200, 100), 3, step=1.0) == [
        (0.0, 0.0, 200.0, 100.0), (100.0, 100.0, 200.0, 100.0), (200.0, 200.0, 200.0, 100.0)]  # room-limited
    assert codec.pan_path((400, 300), (200, 100), 3, step=0.1) == [
        (80.0, 90.0, 200.0, 100.0), (100.0, 100.0, 200.0, 100.0), (120.0, 110.0, 200.0, 100.0)]  # centred
    frames = codec.benchmark_clip(photo, 4)  # 512x512: a 384x384 window
    assert len(frames) == codec.BENCH_FRAMES and frames[0].shape == (384, 384, 3)
    assert not (frames[0] == frames[-1]).all()
    assert codec.fit_window((300, 150), (512, 288), 8) == (296, 144)


def test_the_frame_oracle_aligns_the_previous_frame_and_measures_what_it_adds(photo, photos, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_stream_frames

    boxes, window = codec.benchmark_camera((photo.shape[1], photo.shape[0]), 4)
    lr = [rgb_to_y(f) for f in codec.downscale_frames(codec.render_frames(photo, boxes, window), 4)]
    align = bench_stream_frames.aligner(boxes[0], boxes[1], 4)
    aligned = np.mean(bench_stream_frames.cropped(align(lr[0]) - lr[1]) ** 2)
    assert aligned < np.mean(bench_stream_frames.cropped(lr[0] - lr[1]) ** 2) / 4  # the shift's sign and size

    rows, types = bench_stream_frames.clip_errors(photo, 34)
    assert len(rows) == codec.BENCH_FRAMES - 1 and types[0] == "I" and set(types[1:]) <= {"P", "B"}
    single, average, alignment, best_two, best_all, correlation = (np.array(c) for c in zip(*rows, strict=True))
    assert (alignment < single).all() and np.isfinite(average).all()  # the codec loses more than the shift
    assert (np.abs(correlation) <= 1).all() and correlation.mean() > 0.5  # references' errors carried
    assert (best_all <= best_two * (1 + 1e-9)).all() and (best_two <= single * (1 + 1e-9)).all()  # more frames, less
    rng = np.random.default_rng(0)
    independent = [rng.normal(size=(64, 64)) for _ in range(4)]
    assert bench_stream_frames.best_weighting_mse(independent) == pytest.approx(0.25, rel=0.1)  # a quarter of the power
    weighted = bench_stream_frames.best_weighting_mse([independent[0], 10 * independent[1]])
    assert weighted == pytest.approx(1 / 1.01, rel=0.1)  # the noisier frame gets little weight
    assert bench_stream_frames.best_weighting_mse([independent[0]] * 2) == pytest.approx(1.0, rel=0.1)  # nothing new

    bench_stream_frames.main(["--data", str(photos), "--crf", "28"])
    out = capsys.readouterr().out
    assert "6 photos" in out and "| 28 | 42 |" in out  # 6 photos x 7 frames after the first
    for flags, message in ((["--data", str(photos), "--crf", "60"], "CRF range 60-60"),
                           (["--data", str(photos / "none")], "no such folder")):
        with pytest.raises(SystemExit) as exit_code:
            bench_stream_frames.main(flags)
        assert exit_code.value.code == 2 and message in capsys.readouterr().err


def test_bad_codecs_and_rates_are_named():
    with pytest.raises(codec.CodecError, match=r"'libnope' is not available.*available: libx264"):
        codec.check_codec("libnope")
    with pytest.raises(codec.CodecError, match="0-51"):
        codec.check_rate("libx264", crf=(18, 52))
    with pytest.raises(codec.CodecError, match="low end first"):
        codec.check_rate("libx264", crf=(30, 20))
    with pytest.raises(codec.CodecError, match="no CRF"):
        codec.check_rate("mpeg4", crf=(18, 35))
    with pytest.raises(codec.CodecError, match="bitrate"):
        codec.check_rate("libx264", bitrate_kbps=(0, 50))
    with pytest.raises(codec.CodecError, match="preset 'placebo2'"):
        codec.stream_spec(presets=("placebo2",))
    with pytest.raises(codec.CodecError, match="downscalers"):
        codec.stream_spec(downscalers=("nearest",))


# ----------------------------------------------------------------------------- create_dataset.py --codec


def stream_pairs(out):
    """[(name, lr, hr)] of every split of a png DATASET."""
    pairs = []
    for split in create_dataset.SPLITS:
        for hr_path in sorted((out / split / "hr").glob("*.png")):
            pairs.append((hr_path.name, resizer.load_image(out / split / "lr" / hr_path.name),
                          resizer.load_image(hr_path)))
    return pairs


def test_stream_pairs_are_aligned_degraded_and_recorded(photos, tmp_path):
    manifest = build_dataset([photos], tmp_path / "d", stream={**SMALL_STREAM, "crf": (30, 30)}, **SMALL)
    params = manifest["parameters"]
    assert params["codec"]["codec"] == "libx264" and params["codec"]["crf"] == [30, 30] and params["filter"] is None
    pairs = stream_pairs(tmp_path / "d")
    assert len(pairs) == sum(manifest["counts"].values()) >= 30
    for name, lr, hr in pairs:
        assert hr.shape == (32, 32, 3) and lr.shape == (8, 8, 3), name
    clips = [c for s in manifest["sources"] for c in s["clips"]]
    for clip in clips:
        assert {"codec", "crf", "preset", "profile", "downscaler", "blur", "noise", "kbps", "frame_types",
                "camera", "pair_frames"} <= set(clip)
        assert clip["crf"] == 30 and clip["downscaler"] in codec.DOWNSCALERS and clip["kbps"] > 0
        assert len(clip["frame_types"]) == 4 and len(clip["pair_frames"]) == clip["pairs"]
    assert any(set(c["frame_types"]) & {"P", "B"} for c in clips)
    # aligned: each LR is close to its HR downscaled, closer than to the HR shifted by one LR pixel (exact
    # alignment without the codec: test_higher_crf_degrades_more_and_clean_clips_match_their_downscaler)
    aligned = [psnr(resizer.lr_from_hr(hr, 4)[:, 1:], lr[:, 1:]) for _, lr, hr in pairs]
    shifted = [psnr(resizer.lr_from_hr(np.roll(hr, 4, axis=1), 4)[:, 1:], lr[:, 1:]) for _, lr, hr in pairs]
    assert np.mean(aligned) > 24 and np.mean(aligned) > np.mean(shifted) + 1.5


def test_higher_crf_degrades_more_and_clean_clips_match_their_downscaler(photos, tmp_path):
    def mean_psnr(stream):
        out = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        build_dataset([photos], out, stream={**SMALL_STREAM, **stream}, **SMALL)
        manifest = json.loads((out / "manifest.json").read_text())
        filters = {f"{s['name']}-{i:03d}.png": c["downscaler"] for s in manifest["sources"] for c in s["clips"]
                   for i in range(c["first_pair"], c["first_pair"] + c["pairs"])}
        return np.mean([psnr(resizer.lr_from_hr(hr, 4, filters[name]), lr) for name, lr, hr in stream_pairs(out)])

    clean, low, high = mean_psnr({"clean_share": 1.0}), mean_psnr({"crf": (18, 18)}), mean_psnr({"crf": (40, 40)})
    assert clean > 60  # no codec: exactly the drawn downscaler of the HR crop (up to the crop's edge)
    assert clean > low + 5 and low > high + 3


def test_same_seed_same_dataset_other_seed_other_clips(photos, tmp_path):
    stream = {**SMALL_STREAM, "blur": (0.0, 1.0), "noise": (0.0, 4.0)}
    first = build_dataset([photos], tmp_path / "a", stream=stream, seed=3, **SMALL)
    second = build_dataset([photos], tmp_path / "b", stream=stream, seed=3, **{**SMALL, "workers": 2})
    other = build_dataset([photos], tmp_path / "c", stream=stream, seed=4, **SMALL)
    assert first["sources"] == second["sources"] and first["sources"] != other["sources"]
    for (name, lr, hr), (name2, lr2, hr2) in zip(stream_pairs(tmp_path / "a"), stream_pairs(tmp_path / "b"),
                                                 strict=True):
        assert name == name2 and (lr == lr2).all() and (hr == hr2).all()
    assert any(c["blur"] > 0 and c["noise"] > 0 for s in first["sources"] for c in s["clips"])


def test_a_failing_clip_is_skipped_with_its_reason_and_a_rerun_reuses_the_work(photos, tmp_path, monkeypatch):
    real, calls = codec.encode_decode, []

    def flaky(frames, *args, **kwargs):
        calls.append(1)
        if len(calls) % 3 == 2:
            raise codec.CodecError("libx264 failed on 4 frames of 24x16: simulated")
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(codec, "encode_decode", flaky)
    out = tmp_path / "d"
    manifest = build_dataset([photos], out, stream=SMALL_STREAM, **SMALL)
    clips = [c for s in manifest["sources"] for c in s["clips"]]
    failed = [c for c in clips if "reason" in c]
    assert failed and all("simulated" in c["reason"] and "pairs" not in c for c in failed)
    assert len(failed) < len(clips) and sum(manifest["counts"].values()) == len(stream_pairs(out))
    assert "failed" in create_dataset.summary(manifest, out)

    def broken(*args, **kwargs):
        raise AssertionError("a rerun must not encode again")

    monkeypatch.setattr(codec, "encode_decode", broken)
    again = build_dataset([photos], out, stream=SMALL_STREAM, **SMALL)
    assert again["run"]["photos_reused"] == len(manifest["sources"]) and again["sources"] == manifest["sources"]
    with pytest.raises(DatasetError, match="other parameters.*codec"):  # other stream settings: other pixels
        build_dataset([photos], out, stream={**SMALL_STREAM, "crf": (20, 20)}, **SMALL)


def test_every_clip_failing_skips_the_photo(photos, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise codec.CodecError("simulated")

    monkeypatch.setattr(codec, "encode_decode", broken)
    with pytest.raises(create_dataset.NoPairsError, match="every clip failed"):
        build_dataset([photos], tmp_path / "d", stream=SMALL_STREAM, **SMALL)
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("flags, message", [
    (["--codec", "libnope"], "'libnope' is not available (not one this project drives); available: libx264"),
    (["--codec", "libx264", "--crf", "18", "60"], "0-51"),
    (["--codec", "mpeg4"], "no CRF"),
    (["--codec", "libx264", "--bitrate", "0", "100"], "bitrate range"),
    (["--crf", "18", "30"], "--crf need"),
    (["--codec", "libx264", "--crf", "18", "30", "--bitrate", "10", "100"], "not both"),
    (["--codec", "libx264", "--jpeg", "50"], "own degradations"),
    (["--codec", "libx264", "--clip-size", "64", "64"], "at least hr_size"),
])
def test_bad_stream_flags_are_usage_errors_before_anything_is_read(tmp_path, capsys, flags, message):
    missing = tmp_path / "no-such-folder"  # never read: the error comes first
    try:
        status = main([str(missing), "--out", str(tmp_path / "d"), *flags])
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- flow.py evaluate-stream


def write_video(path, frames, fps=25):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.options = {"crf": "10"}
        for rgb in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        out.mux(stream.encode(None))


def read_rows(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_stream_scores_bicubic_on_photos_a_dataset_and_a_video(photos, tmp_path, capsys):
    import flow

    out = tmp_path / "eval"
    args = ["--crf", "clean,20,40", "--frames", "4", "--out", str(out)]
    assert flow.main(["evaluate-stream", "--model", "bicubic", "--data", str(photos), *args]) == 0
    rows = read_rows(out / "bicubic_photos_x4_stream.csv")
    assert [r["condition"] for r in rows] == ["clean", "crf 20", "crf 40"]
    assert rows[0]["kbps"] == "lossless" and float(rows[1]["kbps"]) > float(rows[2]["kbps"]) > 0
    psnr = [float(r["bicubic_psnr"]) for r in rows]
    assert psnr[0] > psnr[1] > psnr[2] + 2 and all(int(r["frames"]) == 6 * 4 for r in rows)
    assert "crf 40" in (out / "bicubic_photos_x4_stream.md").read_text()
    assert "6 clips of 4 frames" in capsys.readouterr().out

    dataset = tmp_path / "dataset"
    build_dataset([photos], dataset, hr_size=32, scale=4, workers=1, progress=False)
    test_photos = [s for s in json.loads((dataset / "manifest.json").read_text())["sources"] if s["split"] == "test"]
    assert flow.main(["evaluate-stream", "--model", "bicubic", "--data", str(dataset), *args]) == 0
    assert int(read_rows(out / "bicubic_dataset_x4_stream.csv")[0]["frames"]) == 4 * len(test_photos)

    photo = resizer.load_image(SAMPLES / "astronaut.png")
    write_video(tmp_path / "hr.mp4", panning_clip(photo, frames=10, window=(128, 96)))
    assert flow.main(["evaluate-stream", "--model", "bicubic", "--data", str(tmp_path / "hr.mp4"), *args]) == 0
    assert int(read_rows(out / "bicubic_hr_x4_stream.csv")[0]["frames"]) == 8  # 2 clips of 4 of its 10 frames


def test_evaluate_stream_scores_a_shipped_model_beside_bicubic(photos, tmp_path):
    import flow

    rows, failed = flow.evaluate_stream("video", photos, ("clean", 40), frames=3, out=tmp_path)
    assert not failed and [r["condition"] for r in rows] == ["clean", "crf 40"]
    clean, worst = rows
    assert clean["model_psnr"] > clean["bicubic_psnr"] + 0.5  # the model helps on clean input ...
    assert clean["gain_db"] == pytest.approx(clean["model_psnr"] - clean["bicubic_psnr"])
    assert worst["gain_db"] < clean["gain_db"]  # ... and less on a heavily compressed stream
    assert np.isfinite(clean["model_niqe"]) and 0 < worst["model_ssim"] < clean["model_ssim"] < 1


@pytest.mark.parametrize("flags, message", [
    (["--crf", "clean,18,60"], "0-51"),
    (["--crf", "clean,high"], "neither clean nor a CRF"),
    (["--codec", "libnope"], "available: libx264"),
    (["--preset", "warp"], "--preset 'warp'"),
])
def test_evaluate_stream_usage_errors_exit_2_before_reading(tmp_path, capsys, flags, message):
    import flow

    with pytest.raises(SystemExit) as exit_info:
        flow.main(["evaluate-stream", "--model", "bicubic", "--data", str(tmp_path / "missing"), *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
