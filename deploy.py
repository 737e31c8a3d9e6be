"""Run a generator outside Keras, and export it for phones and players: ONNX, OpenVINO (fp32, bf16, int8), LiteRT.

    runtime = deploy.load_runtime("video", runtime="openvino", precision="int8", calibration="frames/")
    sr = runtime.predict(batch)    # as model.predict_on_batch: (N, H, W, 3) float32 in [0, 1] (or uint8) in,
                                   # (N, s*H, s*W, 3) float32 out, not clipped
    report = deploy.export_model("video", "onnx", out="video_x4.onnx")      # what `flow.py export` runs

The optional runtimes come from requirements-runtimes.txt; check_installed says, before any work, which is
missing and how to install it (MissingRuntime). Every conversion is Keras' own `model.export(format=...)`.
int8 is OpenVINO's: NNCF's post-training quantisation with the user's frames for calibration, the model's fixed
interpolation convolutions kept in float (quantising them costs more than the whole budget, see
INTERPOLATION_IN_FLOAT), and it is refused (QualityError) when it loses more than INT8_TOLERANCE_DB of Y-PSNR
against Keras fp32 on frames held back from the calibration.
Fidelity, here and in exports: frames serve as HR references, are downscaled by the model's scale (bicubic,
antialiased, as the datasets are made), upscaled by both, and the Y-PSNR (border cropped) of each against the
HR frame is compared: `loss_db` is how much the candidate lost, `agreement_db` the PSNR between the two outputs.
An export is written under a temporary name, checked, and only then renamed into place: a failed check leaves
nothing behind.
"""

import collections
import contextlib
import importlib.util
import os
import secrets
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import resizer
from inference import load_model, model_scale, resolve_model_path, with_precision
from media import open_video, video_frames

# -----------------------------------------------------------------------------
# configuration
RUNTIMES = ("keras", "openvino", "onnx")  # load_runtime / upscale.py --runtime
PRECISIONS = ("fp32", "bf16", "int8")
RUNTIME_PRECISIONS = {"keras": ("fp32", "bf16"), "openvino": ("fp32", "bf16", "int8"), "onnx": ("fp32",)}
EXPORT_FORMATS = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite"}  # flow.py export --format: file suffix
INSTALL_HINT = "pip install -r requirements-runtimes.txt"
# the Python modules each runtime needs (found without importing them, so checking costs nothing)
NEEDS = {"keras": ("keras",), "onnx": ("onnxruntime", "tf2onnx", "onnx"), "openvino": ("openvino",),
         "int8": ("openvino", "nncf"), "litert": ("tensorflow",)}
EXPORT_TOLERANCE_DB = 0.05  # an exported float model may lose at most this much Y-PSNR against Keras fp32
INT8_TOLERANCE_DB = 0.1  # and an int8 one this much
CALIBRATION_FRAMES = 48  # at most this many frames calibrate int8 ...
HELD_BACK_FRAMES = 6  # ... and up to this many others, one in HELD_BACK_EVERY, check it
HELD_BACK_EVERY = 3
CALIBRATION_CROP = 256  # calibration frames are cropped to at most this square (ranges, not sizes, matter)
CHECK_CROP = 512  # fidelity frames (HR) are cropped to at most this square
SAMPLE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")  # when no frames are given
# Quantising the interpolation skip's fixed convolutions (the bicubic image itself, and the ones-convolution
# normalising its borders) puts int8 rounding straight into the output: the skip carries the whole picture,
# so keep them in float. Measured on the held-back skimage photos: video model 0.218 dB lost with them in int8
# against 0.033 in float; stream model 48.7 against 50.2 dB of agreement with Keras fp32.
INTERPOLATION_IN_FLOAT = True
IDENTICAL_DB = 100.0  # outputs this close (in uint8: identical) count as identical
OPENVINO_SHAPES = 8  # compiled OpenVINO models kept per runtime, one per input shape (least recently used out)
# -----------------------------------------------------------------------------


class MissingRuntime(RuntimeError):
    """An optional runtime is not installed; the message says how to install it (exit status 2)."""


class QualityError(RuntimeError):
    """A converted or quantised model lost more Y-PSNR against Keras fp32 than allowed (exit status 1)."""

    def __init__(self, message, fidelity):
        super().__init__(message)
        self.fidelity = fidelity


@dataclass
class Fidelity:
    """A candidate against Keras fp32 on the same frames (see the module docstring)."""

    loss_db: float  # mean Y-PSNR (vs HR) of Keras fp32 minus the candidate's: what the candidate lost
    agreement_db: float  # mean Y-PSNR of the candidate's output against Keras fp32's
    frames: int

    def __str__(self):
        apart = "identical outputs" if self.agreement_db >= IDENTICAL_DB else f"outputs {self.agreement_db:.1f} dB apart"
        return f"loses {decibels(self.loss_db)} dB Y-PSNR vs Keras fp32 ({apart}, {self.frames} frames)"


def decibels(value):
    """A dB figure to 3 decimals, without the "-0.000" of a float a hair under zero."""
    return f"{round(value, 3) + 0.0:.3f}"


def check_installed(runtime, precision="fp32"):
    """Raise MissingRuntime (one line, with the install command) unless `runtime` (a RUNTIMES name or an
    EXPORT_FORMATS one) can run `precision` here; ValueError for a name or precision it does not have.
    Imports nothing: for argument checking before any work."""
    if runtime not in RUNTIMES and runtime not in EXPORT_FORMATS:
        raise ValueError(f"unknown runtime {runtime!r}; choose from {', '.join(sorted({*RUNTIMES, *EXPORT_FORMATS}))}")
    allowed = RUNTIME_PRECISIONS.get(runtime, ("fp32",))
    if precision not in allowed:
        raise ValueError(f"{runtime} runs {' or '.join(allowed)} here, not {precision}"
                         + ("; int8 is OpenVINO's (--format openvino)" if precision == "int8" else ""))
    needed = NEEDS["int8"] if precision == "int8" else NEEDS[runtime]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingRuntime(f"{runtime}{' int8' if precision == 'int8' else ''} needs {', '.join(missing)}, "
                             f"not installed: {INSTALL_HINT}")
    if runtime == "litert" and not _has_litert_interpreter():
        raise MissingRuntime("litert needs a LiteRT interpreter (TensorFlow's tf.lite, or ai-edge-litert): "
                             "pip install ai-edge-litert")


# --- runtimes -----------------------------------------------------------------------------------------------


def load_runtime(model=None, runtime="keras", precision="fp32", calibration=None, *,
                 int8_tolerance_db=INT8_TOLERANCE_DB, luma_weights=None):
    """A Runtime running the generator `model` (a shipped name, a .keras path, None for the default, or a
    loaded Keras model) on `runtime` in `precision`. int8 (OpenVINO only) needs calibration: a folder of
    frames, a video file or a list of uint8 RGB arrays (read_frames); it raises QualityError when the
    quantised model loses more than int8_tolerance_db against Keras fp32 on the held-back frames.
    MissingRuntime when the runtime is not installed (checked before anything loads).
    luma_weights: `model` is the YUV path's network of a luma-first model (inference.luma_model: RGB in, the
    luma made with these weights out), and int8's fidelity is measured on that luma."""
    check_installed(runtime, precision)
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration frames (a folder of frames, a video or arrays)")
    keras_model = load_keras(model)
    if runtime == "keras":
        return KerasRuntime(keras_model, precision)
    if runtime == "onnx":
        with tempfile.TemporaryDirectory() as tmp:
            return OnnxRuntime(keras_model, export_keras(keras_model, "onnx", Path(tmp) / "model.onnx"))
    if precision != "int8":
        return OpenVinoRuntime(keras_model, openvino_model(keras_model), precision)
    calibrate, held_back = split_calibration(read_frames(calibration))
    quantised = OpenVinoRuntime(keras_model, quantise_int8(keras_model, calibrate), "int8")
    fidelity = measure_fidelity(keras_model, quantised.predict, held_back, luma_weights)
    if fidelity.loss_db > int8_tolerance_db:
        raise QualityError(f"int8 loses {decibels(fidelity.loss_db)} dB Y-PSNR against Keras fp32 on {fidelity.frames} "
                           f"held-back frames (allowed {int8_tolerance_db:g})", fidelity)
    quantised.fidelity = fidelity
    return quantised


class Runtime:
    """What upscale.py needs of a model: predict (model.predict_on_batch's contract) and the Keras model the
    tiling reads its scale and receptive field from."""

    name = "?"
    fidelity = None  # a Fidelity, where one was measured (int8)

    def __init__(self, keras_model, precision):
        self.model, self.precision = keras_model, precision
        self.scale = model_scale(keras_model)

    def predict(self, batch):
        """(N, H, W, 3) float32 in [0, 1] (uint8 is converted) -> (N, s*H, s*W, C) float32, not clipped (C: 3,
        or 1 for a luma model)."""
        return np.asarray(self._run(as_float_batch(batch)), dtype=np.float32)

    def with_finish(self, finish):
        """This luma model (inference.luma_model on this runtime) and the YUV path's last steps (`finish`:
        inference.finish_model, Keras) as one runtime whose predict takes [RGB, chroma] and returns the uint8
        planes, as inference.planes_model; None where the runtime cannot join them (its luma then goes through
        `finish` on Keras)."""
        return None

    def __repr__(self):
        return f"{self.name} {self.precision}"


class KerasRuntime(Runtime):
    """The model itself (fp32) or its bfloat16 copy, through predict_on_batch as upscale.py runs it."""

    name = "keras"

    def __init__(self, keras_model, precision):
        super().__init__(keras_model, precision)
        self.compute = with_precision(keras_model, precision)

    def _run(self, x):
        return self.compute.predict_on_batch(x)


class OnnxRuntime(Runtime):
    """ONNX Runtime on the CPU, fp32, any input size (one session)."""

    name = "onnx"

    def __init__(self, keras_model, onnx_path):
        super().__init__(keras_model, "fp32")
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self.session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, x):
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoRuntime(Runtime):
    """OpenVINO on the CPU. fp32 computes in f32 (which must be asked for: OpenVINO's default on a CPU with
    native bf16 is bf16), bf16 in bfloat16; int8 computes its float parts at OpenVINO's default, bf16 where the
    CPU has it (faster for both shipped models: stream 1.37x Keras fp32 against 1.03x with f32, video 2.07x
    against 1.84x, losing 0.049 and 0.033 dB on the held-back photos), which the int8 check then measures.
    One compiled model per input shape: a model compiled for static shapes runs faster than a dynamic one (one
    640x360 frame, fp32, busy CPU: stream model 324 against 341 ms, video model 492 against 650 ms), and a
    video's frames or tiles have few shapes."""

    name = "openvino"

    def __init__(self, keras_model, ov_model, precision):
        super().__init__(keras_model, precision)
        import openvino

        self.core, self.ov_model = openvino.Core(), ov_model
        self.config = {"PERFORMANCE_HINT": "LATENCY"}
        if precision != "int8":  # int8 leaves its float parts to OpenVINO: bf16 where the CPU has it (checked)
            self.config["INFERENCE_PRECISION_HINT"] = "bf16" if precision == "bf16" else "f32"
        self.compiled = collections.OrderedDict()

    def compiled_for(self, *shapes):
        """The model compiled for these input shapes, one per input (cached, least recently used dropped)."""
        if shapes in self.compiled:
            self.compiled.move_to_end(shapes)
            return self.compiled[shapes]
        model = self.ov_model.clone()
        model.reshape({port: list(shape) for port, shape in zip(model.inputs, shapes, strict=True)})
        compiled = self.compiled[shapes] = self.core.compile_model(model, "CPU", self.config)
        if len(self.compiled) > OPENVINO_SHAPES:
            self.compiled.popitem(last=False)
        return compiled

    def _run(self, x):
        compiled = self.compiled_for(tuple(x.shape))
        return compiled(x)[compiled.output(0)]  # output 0: some exports add a second, stray one

    def with_finish(self, finish):
        """Runtime.with_finish in one OpenVINO graph (luma_with_finish): a 640x360 frame's planes, stream model,
        int8, in 24 ms against 28 with the finish on Keras (20.5 for the luma alone). Its float parts compute
        at this runtime's precision: in bf16 (int8's default where the CPU has it) up to 4% of the chroma
        values land one level off the float32 ones."""
        planes = OpenVinoPlanes(self.model, luma_with_finish(self.ov_model, finish), self.precision)
        planes.config, planes.fidelity = self.config, self.fidelity  # int8: the luma's own, already checked
        return planes


class OpenVinoPlanes(OpenVinoRuntime):
    """An OpenVinoRuntime of luma_with_finish's graph: predict([RGB, chroma]) -> [Y, chroma] uint8 planes."""

    def predict(self, inputs):
        """[RGB (N, H, W, 3) in [0, 1] (uint8 is converted), chroma (N, h, w, 2) centred] -> [Y (N, s*H, s*W, 1),
        chroma (N, s*h, s*w, 2)] uint8 at a video's levels (inference.planes_model's contract)."""
        rgb, chroma = as_float_batch(inputs[0]), np.ascontiguousarray(inputs[1], dtype=np.float32)
        compiled = self.compiled_for(tuple(rgb.shape), tuple(chroma.shape))
        out = compiled([rgb, chroma])
        return [out[port] for port in compiled.outputs]


def pixel_shuffles_to_depth_to_space(model):
    """Rewrite each PixelShuffle of an openvino.Model, a reshape to 6-D, a 6-D transpose and a reshape back, as
    OpenVINO's DepthToSpace (blocks_first: tf.nn.depth_to_space's order) between two 4-D transposes, in place;
    returns how many. The same values, faster: one 640x360 frame, video model, fp32 381 -> 319 ms, int8
    163 -> 125 ms; PSNR model (160x90) fp32 951 -> 882, int8 243 -> 240. The luma-first tail (LumaUpsample,
    channel-major) is left alone: rewritten the same way (depth_first) it ran slower (stream model fp32
    208 -> 225 ms, int8 91 -> 109), its other transposes staying."""
    from openvino import opset13 as ov_ops

    count = 0
    for transpose in model.get_ordered_ops():
        if transpose.get_type_name() != "Transpose" or transpose.get_output_partial_shape(0).rank.get_length() != 6:
            continue
        before, order = (transpose.input(i).get_source_output().get_node() for i in (0, 1))
        after = [target.get_node() for target in transpose.output(0).get_target_inputs()]
        if (order.get_type_name() != "Constant" or tuple(order.get_vector()) != (0, 1, 3, 2, 4, 5)
                or before.get_type_name() != "Reshape" or len(after) != 1 or after[0].get_type_name() != "Reshape"):
            continue
        shape = before.get_output_partial_shape(0)  # (n, h, w, i, j, c): r, r and c are known
        r, c = shape[3].get_length(), shape[5].get_length()
        channels = np.array([0, 0, 0, r * r * c])  # 0: the input's n, h, w (special_zero), any frame size
        x = ov_ops.reshape(before.input(0).get_source_output(), ov_ops.constant(channels), special_zero=True)
        x = ov_ops.transpose(x, ov_ops.constant(np.array([0, 3, 1, 2])))
        x = ov_ops.depth_to_space(x, "blocks_first", r)
        after[0].output(0).replace(ov_ops.transpose(x, ov_ops.constant(np.array([0, 2, 3, 1]))).output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def as_float_batch(batch):
    """(N, H, W, 3) float32 in [0, 1], contiguous: uint8 is divided by 255."""
    x = np.asarray(batch)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"predict expects an (N, H, W, 3) batch, got {x.dtype} {x.shape}")
    return np.ascontiguousarray(resizer.to_float(x) if x.dtype == np.uint8 else x, dtype=np.float32)


# --- conversion ----------------------------------------------------------------------------------------------


def export_keras(keras_model, fmt, path):
    """Keras' own export of the fp32 model for any input size (N, H, W, C) (each input's C, as the model's);
    returns path. OpenVINO writes the .bin of the weights beside the .xml."""
    import keras

    specs = [keras.InputSpec(shape=(None, None, None, x.shape[-1]), dtype="float32") for x in keras_model.inputs]
    with _quiet_tensorflow(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # tf2onnx's probe of np.object
        keras_model.export(str(path), format=fmt, input_signature=specs if len(specs) == 1 else [specs],
                           verbose=False)
    return Path(path)


def openvino_model(keras_model):
    """The fp32 model as an openvino.Model: Keras' export, read back into memory, its pixel shuffles made
    DepthToSpace ops (pixel_shuffles_to_depth_to_space)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = read_openvino(export_keras(keras_model, "openvino", Path(tmp) / "model.xml"))
    pixel_shuffles_to_depth_to_space(model)
    return model


def read_openvino(path):
    """An .xml (and its .bin) read into memory, not memory-mapped: the files may be renamed or deleted after."""
    import openvino

    core = openvino.Core()
    core.set_property({"ENABLE_MMAP": False})
    return core.read_model(path)


def luma_with_finish(luma, finish):
    """One openvino.Model [RGB, chroma] -> [Y, chroma] uint8: `luma` (an openvino.Model of inference.luma_model,
    float or quantised; not changed) with its output fed to the luma input of `finish` (inference.finish_model,
    a Keras model: the chroma interpolated, both planes to a video's levels), so a frame's planes take one call."""
    import openvino

    network, rest = luma.clone(), openvino_model(finish)
    luma_in, chroma_in = sorted(rest.get_parameters(), key=lambda p: p.get_partial_shape()[3].get_length())
    luma_out = network.get_results()[0].input_value(0)  # result 0: some exports add a second, stray one
    for target in list(luma_in.output(0).get_target_inputs()):
        target.replace_source_output(luma_out)
    return openvino.Model(rest.get_results(), [network.get_parameters()[0], chroma_in], "planes")


def interpolation_convolutions(keras_model, ov_model):
    """Names of the OpenVINO convolutions that are not the model's own learnt Conv2D layers: the fixed kernels of
    the interpolation skip (and its border normalisation; in a luma model, also the fixed RGB -> luma one).
    Matched by weight shape, as the export keeps no layer names on convolutions."""
    import keras

    own = set()
    for layer in _all_layers(keras_model):
        if isinstance(layer, keras.layers.Conv2D) and layer.trainable:
            kh, kw, cin, cout = layer.kernel.shape
            own.add((int(cout), int(cin), int(kh), int(kw)))
    names = []
    for op in ov_model.get_ordered_ops():
        if op.get_type_name() in ("Convolution", "GroupConvolution"):
            shape = tuple(int(d) for d in op.input(1).get_partial_shape().to_shape())
            if shape not in own:
                names.append(op.get_friendly_name())
    return names


def quantise_int8(keras_model, frames, *, interpolation_in_float=INTERPOLATION_IN_FLOAT):
    """NNCF post-training int8 quantisation of the OpenVINO model, activation ranges from `frames` (uint8 RGB,
    the model's inputs), the interpolation skip's convolutions kept in float unless asked otherwise."""
    import nncf

    model = openvino_model(keras_model)
    ignored = interpolation_convolutions(keras_model, model) if interpolation_in_float else []
    crops = [as_float_batch(crop(f, CALIBRATION_CROP)[None]) for f in frames]
    with _quiet_nncf():
        return nncf.quantize(model, nncf.Dataset(crops), subset_size=len(crops), fast_bias_correction=True,
                             ignored_scope=nncf.IgnoredScope(names=ignored, validate=False))


# --- fidelity -------------------------------------------------------------------------------------------------


def measure_fidelity(keras_model, predict, frames, luma_weights=None):
    """Fidelity of `predict` against the Keras fp32 model on `frames` (uint8 RGB, used as HR references).
    luma_weights: the models output luma made with these weights (a luma model), compared with the HR's."""
    import metrics

    scale = model_scale(keras_model)
    losses, agreements = [], []
    for hr in frames:
        hr = crop(hr, CHECK_CROP, multiple=scale)
        lr = resizer.resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale), "bicubic")
        if luma_weights is not None:
            hr = resizer.to_uint8(resizer.to_float(hr) @ np.asarray(luma_weights, np.float32))[..., None]
        x = as_float_batch(lr[None])
        reference = resizer.to_uint8(np.asarray(keras_model.predict_on_batch(x))[0])
        candidate = resizer.to_uint8(np.asarray(predict(x))[0])
        losses.append(metrics.calculate_psnr(reference, hr, scale) - metrics.calculate_psnr(candidate, hr, scale))
        agreements.append(min(metrics.calculate_psnr(candidate, reference, scale), IDENTICAL_DB))  # identical: inf
    return Fidelity(float(np.mean(losses)), float(np.mean(agreements)), len(frames))


def crop(img, size, multiple=1):
    """The centre of img, at most size x size, each side a multiple of `multiple`."""
    h, w = (min(side, size) // multiple * multiple for side in img.shape[:2])
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return np.ascontiguousarray(img[top : top + h, left : left + w])


# --- frames ----------------------------------------------------------------------------------------------------


def read_frames(source=None):
    """uint8 RGB frames: a folder of images (sorted by name, recursively), a video file (frames evenly spread
    over it), a list of arrays, or None for scikit-image's sample photos."""
    if source is None:
        from skimage import data

        return [getattr(data, name)() for name in SAMPLE_PHOTOS]
    if not isinstance(source, (str, os.PathLike)):
        return [np.asarray(f, dtype=np.uint8) for f in source]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in resizer.IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise ValueError(f"{path}: no image files to calibrate with")
        step = max(1, len(files) // (CALIBRATION_FRAMES + HELD_BACK_FRAMES))
        return [resizer.load_image(p) for p in files[::step]]
    if path.is_file():
        return read_video(path, CALIBRATION_FRAMES + HELD_BACK_FRAMES)
    raise FileNotFoundError(f"{path}: no such folder or video of calibration frames")


def split_calibration(frames):
    """(calibration frames, held-back frames): one frame in HELD_BACK_EVERY (at least one, at most
    HELD_BACK_FRAMES), evenly spread over the source, is held back from the calibration to check the result."""
    if len(frames) < 2:
        raise ValueError(f"{len(frames)} calibration frame(s): int8 needs at least 2 (one is held back to check it)")
    count = min(HELD_BACK_FRAMES, max(1, len(frames) // HELD_BACK_EVERY))
    held = {int(round(i)) for i in np.linspace(0, len(frames) - 1, count + 2)[1:-1]}
    calibrate = [f for i, f in enumerate(frames) if i not in held][:CALIBRATION_FRAMES]
    return calibrate, [frames[i] for i in sorted(held)]


# --- export (flow.py export) -----------------------------------------------------------------------------------


@dataclass
class ExportReport:
    """What an export wrote and how it compares with Keras fp32."""

    files: list  # the written paths (OpenVINO: .xml then .bin)
    bytes: int
    fidelity: Fidelity
    precision: str

    def summary(self):
        companion = f" and its {self.files[1].suffix}" if len(self.files) > 1 else ""
        return f"wrote {self.files[0]}{companion} ({self.precision}, {self.bytes / 1e6:.2f} MB): {self.fidelity}"


def export_model(model, fmt, out=None, calibration=None, *, check_frames=None, tolerance_db=None):
    """Export the generator `model` (name, path or None) as `fmt` (EXPORT_FORMATS) to `out` (default: the
    model's file with the format's suffix, "_int8" added for int8), int8 (OpenVINO only) when calibration
    frames are given. The file is written under a temporary name, loaded back in its runtime and checked
    against Keras fp32 on check_frames (default: the held-back calibration frames, else a few sample photos):
    a loss over tolerance_db (EXPORT_TOLERANCE_DB, INT8_TOLERANCE_DB for int8) raises QualityError and
    leaves nothing behind; else the files are renamed into place. Returns an ExportReport."""
    precision = "int8" if calibration is not None else "fp32"
    check_installed(fmt, precision)
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out) if out is not None else default_export_path(model, fmt, precision)
    if out.suffix != EXPORT_FORMATS[fmt]:
        raise ValueError(f"{out}: a {fmt} export must end with {EXPORT_FORMATS[fmt]}")
    tolerance_db = tolerance_db if tolerance_db is not None else (
        INT8_TOLERANCE_DB if precision == "int8" else EXPORT_TOLERANCE_DB)
    keras_model = load_keras(model)
    if precision == "int8":
        calibrate, held_back = split_calibration(read_frames(calibration))
        check_frames = held_back if check_frames is None else check_frames
    else:
        check_frames = [crop(f, CHECK_CROP) for f in read_frames(check_frames)[:4]]
    with staged_export(out) as tmp:
        if fmt == "openvino":  # Keras' export, its pixel shuffles rewritten, and quantised for int8
            import openvino

            model = quantise_int8(keras_model, calibrate) if precision == "int8" else openvino_model(keras_model)
            openvino.save_model(model, tmp, compress_to_fp16=False)
        else:
            export_keras(keras_model, fmt, tmp)
        fidelity = measure_fidelity(keras_model, load_exported(tmp, fmt, keras_model, precision).predict,
                                    check_frames)
        if fidelity.loss_db > tolerance_db:
            raise QualityError(f"{out.name}: the {fmt} {precision} export loses {decibels(fidelity.loss_db)} dB Y-PSNR "
                               f"against Keras fp32 (allowed {tolerance_db:g}); nothing written", fidelity)
    files = [out] + ([out.with_suffix(".bin")] if fmt == "openvino" else [])
    return ExportReport(files, sum(p.stat().st_size for p in files), fidelity, precision)


def default_export_path(model, fmt, precision):
    """The model's .keras path with the format's suffix (video_x4.onnx, video_x4_int8.xml)."""
    path = resolve_model_path(model) if not hasattr(model, "predict_on_batch") else Path(f"{model.name}.keras")
    stem = path.stem + ("_int8" if precision == "int8" else "")
    return path.with_name(stem + EXPORT_FORMATS[fmt])


@contextlib.contextmanager
def staged_export(out):
    """Yield a temporary path beside `out` (its .bin companion beside it for OpenVINO); on success rename both
    into place (.bin first, so an .xml is never there without its weights) and flush; on any error delete them.
    Temporary names follow resizer.atomic_output's, so a leftover of a killed process is recognisable."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}{resizer.TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{out.suffix}")
    pairs = [(tmp.with_suffix(".bin"), out.with_suffix(".bin"))] if out.suffix == ".xml" else []
    pairs.append((tmp, out))
    try:
        yield tmp
        for src, dst in pairs:
            resizer.fsync_path(src)
            os.replace(src, dst)
        resizer.fsync_path(out.parent)
    except BaseException:
        for src, _ in pairs:
            with contextlib.suppress(FileNotFoundError):
                src.unlink()
        raise


def load_exported(path, fmt, keras_model, precision="fp32"):
    """A Runtime running an exported file, for checking it: fp32 computes in f32, an int8 OpenVINO model runs
    as OpenVinoRuntime runs int8 (its float parts at OpenVINO's default)."""
    path = Path(path)
    if fmt == "onnx":
        return OnnxRuntime(keras_model, path)
    if fmt == "litert":
        return LiteRtRuntime(keras_model, path)
    return OpenVinoRuntime(keras_model, read_openvino(path), precision)


class LiteRtRuntime(Runtime):
    """A .tflite file in the LiteRT interpreter (ai-edge-litert where installed, else TensorFlow's tf.lite):
    the tensors are resized to each new input shape."""

    name = "litert"

    def __init__(self, keras_model, path):
        super().__init__(keras_model, "fp32")
        self.interpreter, self.shape = _litert_interpreter(path), None

    def _run(self, x):
        it = self.interpreter
        index = it.get_input_details()[0]["index"]
        if self.shape != x.shape:
            it.resize_tensor_input(index, x.shape)
            it.allocate_tensors()
            self.shape = x.shape
        it.set_tensor(index, x)
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"]).copy()


def _has_litert_interpreter():
    """ai-edge-litert, or the tf.lite interpreter TensorFlow still carries (found without importing either)."""
    if importlib.util.find_spec("ai_edge_litert") is not None:
        return True
    spec = importlib.util.find_spec("tensorflow")
    return spec is not None and (Path(spec.origin).parent / "lite" / "python" / "interpreter.py").is_file()


def _litert_interpreter(path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806 - deprecated in TF 2.20 but still there in 2.21
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deprecation notice
        return Interpreter(model_path=str(path))


# --- helpers -----------------------------------------------------------------------------------------------------


def load_keras(model):
    """The fp32 Keras generator: `model` itself when it is one, else loaded as upscale.py loads it."""
    if hasattr(model, "predict_on_batch"):
        return model
    return load_model(model, "fp32")


def read_video(path, count):
    """`count` frames evenly spread over a video file (opened anew for each seek), uint8 RGB, by upscale.py's
    decoder."""
    with open_video(path) as inp:
        stream = inp.streams.video[0]
        seconds = float(stream.duration * stream.time_base) if stream.duration else (inp.duration or 0) / 1e6
        if seconds <= 0:  # no duration to spread over: the first frames
            return [f.rgb for f in video_frames(inp, path, max_frames=count)]
    frames = []
    for start in np.arange(count) * seconds / count:
        with open_video(path) as inp:
            frames.extend(f.rgb for f in video_frames(inp, path, start=float(start), max_frames=1))
    return frames


def _all_layers(keras_model):
    from generator import _all_layers

    return _all_layers(keras_model)


# --- quiet conversions ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_tensorflow():
    """Keras' exports print TensorFlow's and tf2onnx's progress: keep the command's output to its summary."""
    import logging

    loggers = [logging.getLogger(name) for name in ("tf2onnx", "tensorflow", "absl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with _silenced_stdout():
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _quiet_nncf():
    import logging

    import nncf

    nncf.set_log_level(logging.ERROR)
    with _silenced_stdout():
        yield


@contextlib.contextmanager
def _silenced_stdout():
    """File descriptor 1 to /dev/null for the duration (native libraries print past sys.stdout)."""
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
