"""flow.py export and deploy.py: each format written atomically and checked against Keras, int8 kept or refused,
missing runtimes refused before any work. LiteRT needs only TensorFlow, so its tests run everywhere; ONNX and
OpenVINO tests skip where requirements-runtimes.txt is not installed."""

import importlib.util

import numpy as np
import pytest
from PIL import Image

import deploy
import flow

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def needs(*modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (pip install -r "
                                                    "requirements-runtimes.txt)")


needs_onnx = needs("onnxruntime", "tf2onnx", "onnx")
needs_openvino = needs("openvino")
needs_nncf = needs("openvino", "nncf")


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """A small video-preset generator (8 filters, 1 block) with random output weights, saved as .keras: it
    predicts more than its bicubic skip, so conversions and quantisation have something to get wrong."""
    import keras

    from generator import build_generator

    keras.utils.set_random_seed(0)  # the same model every run: how much int8 loses depends on the weights
    model = build_generator(scale=4, preset="video", filters=8, blocks=1)
    out_conv = model.get_layer("out_conv")
    rng = np.random.default_rng(0)
    out_conv.set_weights([0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in out_conv.get_weights()])
    path = tmp_path_factory.mktemp("model") / "tiny_x4.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory):
    """Calibration frames: 9 crops of scikit-image's photos, 96x96."""
    folder = tmp_path_factory.mktemp("frames")
    for i, photo in enumerate(deploy.read_frames(None)[:3]):
        for j, (top, left) in enumerate(((0, 0), (150, 200), (280, 300))):
            Image.fromarray(photo[top : top + 96, left : left + 96]).save(folder / f"{i}-{j}.png")
    return folder


def leftovers(folder):
    """Files in folder other than the model, as names (temporaries start with '.')."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".keras")


def run_export(*argv):
    return flow.main(["export", *map(str, argv)])


def test_litert_export_is_written_and_matches_keras(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "tiny.tflite"
    assert run_export(tiny_model_file, "--format", "litert", "--out", out) == 0
    assert leftovers(tmp_path) == ["tiny.tflite"]
    summary = capsys.readouterr().out
    assert "tiny.tflite" in summary and "loses 0.0" in summary
    x = deploy.as_float_batch(deploy.read_frames(None)[0][:40, :56][None])
    keras_model = deploy.load_keras(tiny_model_file)
    exported = deploy.load_exported(out, "litert", keras_model).predict(x)
    assert exported.shape == (1, 160, 224, 3)
    np.testing.assert_allclose(exported, keras_model.predict_on_batch(x), atol=1e-4)


def test_an_export_that_loses_too_much_exits_1_and_leaves_nothing(tiny_model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(deploy, "EXPORT_TOLERANCE_DB", -1.0)  # even an exact copy fails now
    out = tmp_path / "sub" / "tiny.tflite"
    assert run_export(tiny_model_file, "--format", "litert", "--out", out) == 1
    assert "loses 0.000 dB" in capsys.readouterr().err
    assert leftovers(out.parent) == []


def test_existing_file_survives_a_failed_export(tmp_path):
    out = tmp_path / "m.xml"
    out.write_text("old")
    with pytest.raises(RuntimeError), deploy.staged_export(out) as tmp:
        tmp.write_text("new")
        tmp.with_suffix(".bin").write_bytes(b"weights")
        raise RuntimeError("the check failed")
    assert out.read_text() == "old" and leftovers(tmp_path) == ["m.xml"]
    with deploy.staged_export(out) as tmp:
        tmp.write_text("new")
        tmp.with_suffix(".bin").write_bytes(b"weights")
    assert out.read_text() == "new" and out.with_suffix(".bin").read_bytes() == b"weights"
    assert leftovers(tmp_path) == ["m.bin", "m.xml"]


def test_a_missing_runtime_exits_2_with_the_install_hint_before_any_work(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(deploy.importlib.util, "find_spec", lambda name: None if name == "openvino" else real(name))
    monkeypatch.setattr(deploy, "load_keras", lambda model: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        run_export("stream", "--format", "openvino")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "openvino" in err and "pip install -r requirements-runtimes.txt" in err
    with pytest.raises(deploy.MissingRuntime, match="requirements-runtimes.txt"):
        deploy.load_runtime("stream", "openvino")


@pytest.mark.parametrize("argv, message", [
    (["--format", "onnx", "--int8", "."], "int8 is OpenVINO's"),
    (["--format", "litert", "--out", "m.onnx"], "ends with .tflite"),
    pytest.param(["--format", "openvino", "--int8", "no/such/frames"], "no such folder", marks=needs_nncf),
])
def test_export_usage_errors_exit_2(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(deploy, "load_keras", lambda model: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        run_export("stream", *argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_check_installed_names_what_each_runtime_runs():
    with pytest.raises(ValueError, match="int8 is OpenVINO's"):
        deploy.check_installed("onnx", "int8")
    with pytest.raises(ValueError, match="unknown runtime"):
        deploy.check_installed("tensorrt")
    deploy.check_installed("keras", "bf16")


def test_calibration_split_holds_frames_back_evenly():
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(9)]
    calibrate, held = deploy.split_calibration(frames)
    assert [int(f[0, 0, 0]) for f in held] == [2, 4, 6]  # one in HELD_BACK_EVERY (3), spread out
    assert [int(f[0, 0, 0]) for f in calibrate] == [0, 1, 3, 5, 7, 8]
    with pytest.raises(ValueError, match="at least 2"):
        deploy.split_calibration(frames[:1])


def test_calibration_frames_from_a_video_are_spread_over_its_length(tmp_path):
    import av

    path = tmp_path / "ramp.mp4"
    with av.open(str(path), "w") as out:  # 48 frames, 2 s, from black to white
        stream = out.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(48):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 5, np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    frames = deploy.read_frames(path)
    assert len(frames) == deploy.CALIBRATION_FRAMES + deploy.HELD_BACK_FRAMES and frames[0].shape == (48, 64, 3)
    levels = [float(f.mean()) for f in frames]
    assert levels[0] < 20 and levels[-1] > 200 and levels == sorted(levels)  # the whole ramp, in order


@needs_onnx
def test_onnx_export_matches_keras(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "tiny.onnx"
    assert run_export(tiny_model_file, "--format", "onnx", "--out", out) == 0
    assert leftovers(tmp_path) == ["tiny.onnx"] and "loses 0.0" in capsys.readouterr().out


@needs_openvino
def test_openvino_export_writes_xml_and_bin(tiny_model_file, tmp_path, capsys):
    out = tmp_path / "tiny.xml"
    assert run_export(tiny_model_file, "--format", "openvino", "--out", out) == 0
    assert leftovers(tmp_path) == ["tiny.bin", "tiny.xml"]
    assert "tiny.xml and its .bin" in capsys.readouterr().out


@needs_onnx
@needs_openvino
def test_runtimes_match_keras_and_openvino_compiles_once_per_shape(tiny_model_file):
    keras_model = deploy.load_keras(tiny_model_file)
    photo = deploy.read_frames(None)[0]
    for runtime in ("onnx", "openvino"):
        rt = deploy.load_runtime(keras_model, runtime, "fp32")
        for h, w in ((24, 32), (40, 24), (24, 32)):
            x = photo[:h, :w][None]  # uint8 is accepted too
            np.testing.assert_allclose(rt.predict(x), keras_model.predict_on_batch(deploy.as_float_batch(x)),
                                       atol=1e-4)
    assert len(rt.compiled) == 2  # OpenVINO: two shapes, two compiled models
    compiled = next(iter(rt.compiled.values()))
    layers = {op.get_rt_info()["layerType"].astype(str) for op in compiled.get_runtime_model().get_ops()}
    assert "DepthToSpace" in layers  # the PixelShuffle, rewritten (pixel_shuffles_to_depth_to_space)


@needs_nncf
def test_int8_export_is_kept_within_the_budget(tiny_model_file, frames_dir, tmp_path, capsys):
    out = tmp_path / "tiny_int8.xml"
    assert run_export(tiny_model_file, "--format", "openvino", "--int8", frames_dir, "--out", out) == 0
    summary = capsys.readouterr().out
    assert "(int8" in summary and leftovers(tmp_path) == ["tiny_int8.bin", "tiny_int8.xml"]
    loss = float(summary.split("loses ")[1].split(" dB")[0])
    assert loss <= deploy.INT8_TOLERANCE_DB


@needs_nncf
def test_int8_that_loses_too_much_is_refused(tiny_model_file, frames_dir, tmp_path, monkeypatch, capsys):
    with pytest.raises(deploy.QualityError) as error:
        deploy.load_runtime(tiny_model_file, "openvino", "int8", frames_dir, int8_tolerance_db=-1.0)
    assert error.value.fidelity.frames == 3 and "held-back" in str(error.value)
    monkeypatch.setattr(deploy, "INT8_TOLERANCE_DB", -1.0)
    assert run_export(tiny_model_file, "--format", "openvino", "--int8", frames_dir, "--out",
                      tmp_path / "tiny_int8.xml") == 1
    assert "int8 export loses" in capsys.readouterr().err and leftovers(tmp_path) == []


# --- upscale.py --runtime / --int8 ------------------------------------------------------------------------------


def run_upscale(*argv):
    import upscale

    return upscale.main([*map(str, argv), "--no-progress"])


@pytest.mark.parametrize("extra, expected", [
    (["--runtime", "openvino"], "pip install -r requirements-runtimes.txt"),
    (["--int8"], "pip install -r requirements-runtimes.txt"),
    (["--runtime", "onnx", "--int8"], "--int8 runs on OpenVINO"),
    (["--runtime", "openvino", "--compile", "on"], "compiles the model itself"),
    (["--runtime", "onnx", "--precision", "bf16"], "onnx runs fp32"),
])
def test_runtime_settings_that_cannot_work_exit_2_before_any_work(tiny_model_file, tmp_path, monkeypatch, capsys,
                                                                  extra, expected):
    monkeypatch.setattr(deploy, "NEEDS", {**deploy.NEEDS, "openvino": ("no_such_runtime_module",),
                                          "int8": ("no_such_runtime_module",)})
    monkeypatch.setattr(deploy, "load_runtime", lambda *a, **k: pytest.fail("a runtime was loaded"))
    photo = tmp_path / "in.png"
    Image.fromarray(deploy.read_frames(None)[0][:24, :24]).save(photo)
    assert run_upscale(photo, "-o", tmp_path / "out.png", "--model", tiny_model_file, *extra) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "out.png").exists()


@needs_openvino
def test_upscale_on_openvino_matches_keras_and_says_what_ran(tiny_model_file, tmp_path, capsys):
    photo = tmp_path / "in.png"
    Image.fromarray(deploy.read_frames(None)[0][:40, :56]).save(photo)
    assert run_upscale(photo, "-o", tmp_path / "keras.png", "--model", tiny_model_file, "--precision", "fp32",
                       "--compile", "off") == 0
    assert run_upscale(photo, "-o", tmp_path / "ov.png", "--model", tiny_model_file, "--runtime", "openvino",
                       "--precision", "fp32") == 0
    assert "; ran openvino fp32" in capsys.readouterr().out.strip().splitlines()[-1]
    keras_out, ov_out = (np.asarray(Image.open(tmp_path / name), np.int16) for name in ("keras.png", "ov.png"))
    assert np.abs(keras_out - ov_out).max() <= 1  # the same network, rounding apart


@needs_nncf
def test_int8_is_calibrated_on_the_inputs_and_refused_when_it_loses_too_much(tiny_model_file, frames_dir, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "out"
    assert run_upscale(frames_dir, "-o", out, "--model", tiny_model_file, "--int8") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "upscale: 9 done" in summary and "; ran openvino int8 (loses 0.0" in summary
    real = deploy.load_runtime
    monkeypatch.setattr(deploy, "load_runtime", lambda *a, **k: real(*a, **k, int8_tolerance_db=-1.0)
                        if a[2] == "int8" else real(*a, **k))
    assert run_upscale(frames_dir, "-o", tmp_path / "refused", "--model", tiny_model_file, "--int8",
                       "--precision", "fp32") == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "int8 refused (int8 loses 0.0" in summary and "ran openvino fp32" in summary
    assert len(list((tmp_path / "refused").iterdir())) == 9
