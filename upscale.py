"""Upscale images, animated GIFs and videos with a trained generator (tiled inference, any size).

    python upscale.py photo.jpg -o photo_x4.png                       # one image (format from the extension)
    python upscale.py photos/ -o photos_x4/                           # a folder, recursively (tree mirrored)
    python upscale.py anim.gif -o anim_x4.gif                         # every frame, timing, loop, transparency
    python upscale.py clip.mp4 -o clip_x4.mp4 --crf 18                # video: fps/timestamps kept, audio copied
    python upscale.py clip.mp4 -o part.mp4 --start 1:30 --max-frames 48   # a preview from 1 min 30 s on
    python upscale.py photo.jpg -o out.png --model gan --compare      # shipped models: psnr (default), gan
    python upscale.py https://host/live.m3u8 -o - --model video | mpv -   # a URL (HTTP, HLS) as YUV4MPEG2 to a player
    python upscale.py clip.mp4 -o - --realtime | ffplay -              # at the source's pace, dropping frames when behind

Big inputs are cut into overlapping tiles that go through the model in batches, and the tile outputs are
cross-faded with a raised-cosine window, so there are no seams and memory stays bounded whatever the image
size. Videos and animations stream through three threads (decode, model, encode) linked by bounded queues;
for them --compile/--precision auto time the candidate runtimes on a few frames and run the fastest.
Library entry points: `upscale_array(model, rgb)` for one image of any size, `upscale_batch(model, images)`
for many small ones (flow.py's evaluation), `upscale_float` for float/16-bit data. TensorFlow is imported
only when a model is loaded, so `--help` and usage errors answer at once.
"""

import argparse
import collections
import contextlib
import functools
import itertools
import json
import math
import os
import queue
import re
import sys
import threading
import time
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, ImageSequence

import presets
import resizer
from resizer import (
    ImageLoadError,
    atomic_output,
    is_temp_output,
    load_image,
    resize,
    save_image,
    to_float,
    to_uint8,
)

# -----------------------------------------------------------------------------
# configuration
MODEL_NAMES = presets.SHIPPED_MODELS  # --model NAME: the shipped generators
DEFAULT_MODEL = MODEL_NAMES[presets.DEFAULT_MODEL]
PRECISIONS = ("auto", "fp32", "bf16")  # --precision: auto is bf16 where the hardware computes it natively
OVERLAP_PER_RADIUS = 0.8  # default tile overlap: this fraction of the model's receptive radius (auto_overlap) ...
MIN_OVERLAP = 16  # ... in steps of 8, and at least this (measured with random weights: see auto_overlap)
BLEND_MARGIN = 0.375  # fraction of each overlap, at the tile's own edge, where its output is not used at all
MIN_TILE, TILE_STEP = 32, 16  # an explicit --tile shrinks in steps of TILE_STEP down to MIN_TILE on OOM
MAX_TILE = 512  # automatic tiles hold at most MAX_TILE**2 LR pixels (more memory goes into batches)
TILE_MEMORY_BUDGET = 512 * 2**20  # bytes of activations one model call may use (keeps a 960x540 x4 < 1.5 GB) ...
MEMORY_FRACTION = 0.5  # ... and at most this fraction of the memory still available
# Peak activation memory of a forward pass, in bytes per value of its widest feature map per LR pixel
# (widest_map; 17-18 measured for SRResNet and the fast preset at 128-384 px tiles, float32, TensorFlow 2.21 on
# CPU): sizes the tiles.
ACTIVATION_BYTES_PER_VALUE = 18
MAX_FRAME_BATCH = 8  # frames per model call when whole frames fit in one call (small GIFs)
QUEUE_FRAMES = 4  # frames (or batches) waiting between decoder, model and encoder: memory stays flat
QUEUE_ITEMS = 64  # decoded items (frames and audio packets) waiting for the model
IMAGE_SUFFIXES = set(resizer.IMAGE_SUFFIXES)
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}  # PyAV muxer names
VIDEO_SUFFIXES = set(CONTAINER_FORMATS)
ANIMATED_SUFFIXES = {".gif", ".webp", ".png"}  # GIF, animated WebP, APNG
VIDEO_FORMATS = {suffix[1:] for suffix in VIDEO_SUFFIXES}
STILL_FORMATS = {"png", "jpg", "webp", "gif"}
ANIMATION_FORMATS = {suffix[1:] for suffix in ANIMATED_SUFFIXES} | VIDEO_FORMATS  # png means APNG
FORMATS = sorted(STILL_FORMATS | VIDEO_FORMATS)  # --format choices
DEEP_SUFFIXES = {".png", ".tif", ".tiff"}  # outputs that hold 16-bit grey
DEEP_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}  # 16-bit grey inputs (PNG, TIFF)
VIDEO_CODEC = {"webm": "libvpx-vp9"}  # default encoder per container; others get DEFAULT_VIDEO_CODEC
DEFAULT_VIDEO_CODEC = "libx264"
DEFAULT_CRF = 18  # visually near-lossless for x264
DEFAULT_PRESET = "veryfast"  # x264 at 2560x1440 keeps up with the model; crf 18 keeps the quality
DEFAULT_PIX_FMT = "yuv420p"  # what every player decodes; needs even width and height
CRF_CODECS = {"libx264", "libx265", "libvpx-vp9", "libsvtav1"}
PRESET_CODECS = {"libx264", "libx265"}
GIF_MIN_DELAY_MS = 20  # browsers show GIF frames with a shorter delay for 100 ms; so do videos made from them
GIF_DEFAULT_DELAY_MS = 100
GIF_PALETTE_FRAMES = 8  # the shared GIF palette is built from the first frames ...
GIF_PALETTE_SAMPLES = 4_000_000  # ... from at most about this many of their pixels
GIF_PALETTE_TOLERANCE = 1.25  # ... and a frame it suits worse than this x its own palette gets its own
FLATTEN_BACKGROUND = (255, 255, 255)  # transparency becomes this colour in JPEG and video outputs
COMPARE_CROP = 96  # LR pixels of the side-by-side crop (--compare)
COMPARE_SUFFIX = "_compare.png"
PIPE = "-"  # -o -: YUV4MPEG2 to stdout, for a player (upscale.py URL -o - | mpv -)
URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # an input PyAV opens itself: http(s), an HLS playlist
STREAM_OPEN_TIMEOUT = 20.0  # seconds a URL may take to answer ...
STREAM_READ_TIMEOUT = 10.0  # ... and to send the next packet before the stream counts as stalled
STREAM_GAP_SECONDS = 0.5  # a URL's frame times jumping by more than this and STREAM_GAP_FRAMES frames: data
STREAM_GAP_FRAMES = 5  # was lost (HLS skips a segment it cannot fetch or parse and says nothing)
STREAM_SHORT_SECONDS = 0.5  # a URL ending this much before the duration its header states ended early
RUNTIME_TRIALS = 2  # --compile/--precision auto: timed frames per candidate, in interleaved rounds, after a warm-up
# -----------------------------------------------------------------------------


# --- the model --------------------------------------------------------------------------------------------


class UsageError(ValueError):
    """A command-line setting that cannot work (found before any model is loaded): exit status 2."""


def resolve_model_path(model=None):
    """The generator file for --model: a name from MODEL_NAMES, a path, or None for DEFAULT_MODEL.

    Raises FileNotFoundError with a hint on how to get the file when it is not there."""
    if model is None or str(model) == str(DEFAULT_MODEL):
        path = DEFAULT_MODEL
        hint = ("no trained model yet: train one with `python flow.py train ...` and copy its runs/NAME/generator.keras "
                f"to {DEFAULT_MODEL}, or pass --model FILE")
    elif str(model) in MODEL_NAMES:
        path = MODEL_NAMES[str(model)]
        hint = (f"--model {model} names {path.name}, which is not shipped with this copy; put a generator .keras "
                f"file there or pass --model FILE")
    else:
        path = Path(model)
        hint = "pass a model name (" + ", ".join(MODEL_NAMES) + ") or the path of a generator .keras file"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file not found; {hint}")
    return path


def load_model(path=None, precision="fp32"):
    """Load a generator saved as .keras (safe mode): a MODEL_NAMES name, a path, or None for DEFAULT_MODEL.

    precision: "fp32", "bf16" or "auto" (see resolve_precision); bf16 gives a bfloat16 copy (with_precision).
    A missing file raises FileNotFoundError with a hint on how to get one."""
    path = resolve_model_path(path)
    from generator import load_generator

    return with_precision(load_generator(path), precision)


def model_scale(model):
    """The model's integer upscaling factor."""
    from generator import generator_scale

    return generator_scale(model)


def widest_map(model):
    """Values per LR pixel of the model's widest feature map: each convolution's filters times the upsampling
    done before it, squared (SRResNet x4: its last x2 stage, 256 filters at 2x = 1024 = 64 filters x 16; the
    video preset, all at LR: its 48-channel output conv), and the output's 3 x scale^2."""
    import keras

    widest, factor = 3 * model_scale(model) ** 2, 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            widest = max(widest, int(layer.filters) * factor * factor)
        elif type(layer).__name__ == "PixelShuffle":
            factor *= layer.scale
    return widest


CPU_BF16_VARIABLE = "SR_CPU_BF16"  # on/off: override the detection below (tests run both paths on any CPU)


def cpu_has_native_bf16(cpuinfo="/proc/cpuinfo"):
    """True when this CPU computes bfloat16 natively (AVX512_BF16 or AMX), from /proc/cpuinfo's flags, unless
    the environment variable SR_CPU_BF16 says on or off. The one CPU check of --precision and
    --mixed-precision auto (runtime.native_bf16 asks it too)."""
    forced = os.environ.get(CPU_BF16_VARIABLE, "auto").lower()
    if forced not in presets.SWITCHES:
        raise ValueError(f"{CPU_BF16_VARIABLE}={forced!r}: use one of {', '.join(presets.SWITCHES)}")
    if forced != "auto":
        return forced == "on"
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = set(re.findall(r"^flags\s*:(.*)$", text, re.M)[0].split()) if "flags" in text else set()
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def has_gpu():
    """True when the Keras backend (TensorFlow, JAX or torch) sees a GPU; needs no TensorFlow elsewhere."""
    import runtime

    return runtime.gpu_count() > 0


def resolve_precision(precision="auto"):
    """"fp32" or "bf16": auto is bf16 on a GPU or a CPU with native bfloat16 (elsewhere bfloat16 is emulated,
    slower than float32), else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    return "bf16" if cpu_has_native_bf16() or has_gpu() else "fp32"


def with_precision(model, precision="fp32"):
    """The model itself (fp32), or a copy computing in bfloat16 (bf16: Keras' mixed_bfloat16 policy, same
    weights). The input interpolation (the image itself, in residual generators) and the output layers stay
    float32, so the result is float32 and only the learnt residual is rounded to bfloat16."""
    precision = resolve_precision(precision)
    if precision == "fp32":
        return model
    import keras

    keep = {id(t._keras_history[0]) for t in model.outputs}

    def clone_layer(layer):
        config = layer.get_config()
        if id(layer) not in keep and type(layer).__name__ != "InterpolationUpsample":
            config["dtype"] = "mixed_bfloat16"
        return type(layer).from_config(config)

    clone = keras.models.clone_model(model, clone_function=clone_layer)
    clone.set_weights(model.get_weights())
    return clone


def _receptive_radius(layers):
    """Receptive radius (LR pixels) of a chain of (kind, kernel, dilation, scale) layers: each convolution's
    radius divided by the upsampling done before it."""
    radius, factor = 0.0, 1
    for kind, kernel, dilation, scale in layers:
        if kind == "conv":
            radius += (kernel - 1) / 2 * dilation / factor
        elif kind == "shuffle":
            factor *= scale
    return radius


def receptive_radius(model):
    """How far (LR pixels) an output pixel sees into the input along the model's longest path: each
    convolution's radius, divided by the upsampling done before it."""
    import keras

    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layers.append(("conv", layer.kernel_size[0], layer.dilation_rate[0], 1))
        elif type(layer).__name__ == "PixelShuffle":
            layers.append(("shuffle", 1, 1, layer.scale))
    return _receptive_radius(layers)


def file_receptive_radius(path):
    """receptive_radius of a saved .keras model, read from the config.json inside the file (a zip) without
    building the model or importing the backend. Raises ValueError when the file is not a Keras model."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"not a .keras model file ({type(e).__name__}: {e})") from e

    def walk(entry):
        for layer in entry.get("config", {}).get("layers", []):
            cfg = layer.get("config", {})
            if layer.get("class_name") == "Conv2D":
                yield "conv", int(cfg["kernel_size"][0]), int(cfg.get("dilation_rate", [1])[0]), 1
            elif layer.get("class_name") == "PixelShuffle":
                yield "shuffle", 1, 1, int(cfg["scale"])
            elif "layers" in cfg:  # a nested model
                yield from walk(layer)

    return _receptive_radius(walk(config))


def overlap_for_radius(radius):
    """The automatic tile overlap for a receptive radius (see auto_overlap)."""
    return max(MIN_OVERLAP, math.ceil(OVERLAP_PER_RADIUS * radius / 8) * 8)


# --- tiled inference -------------------------------------------------------------------------------------


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of size `tile` covering [0, length), neighbours overlapping by >= overlap.

    The tiles are spread evenly and the last one ends at `length`, so no tile reaches past the edge.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def blend_ramp(width):
    """Weights rising from 0 to 1 over `width` output pixels: zero over the first BLEND_MARGIN of it (where
    the tile's own zero padding spoils the output), then a raised cosine. ramp + ramp[::-1] == 1, so two
    tiles sharing the overlap cross-fade exactly."""
    t = (np.arange(width, dtype=np.float64) + 0.5) / max(width, 1)
    u = np.clip((t - BLEND_MARGIN) / (1.0 - 2.0 * BLEND_MARGIN), 0.0, 1.0)
    return np.sin(0.5 * np.pi * u) ** 2


def axis_windows(starts, tile, scale):
    """Per tile, its 1-D output weights along one axis: ramps where it overlaps a neighbour, 1 elsewhere."""
    windows = []
    for i, start in enumerate(starts):
        w = np.ones(tile * scale, np.float64)
        if i > 0:  # overlap with the previous tile
            width = (starts[i - 1] + tile - start) * scale
            w[:width] *= blend_ramp(width)
        if i + 1 < len(starts):
            width = (start + tile - starts[i + 1]) * scale
            w[tile * scale - width :] *= blend_ramp(width)[::-1]
        windows.append(w.astype(np.float32))
    return windows


def tiled_upscale(forward, x, scale, *, tile, overlap, batch_size=1):
    """Upscale float32 (H, W, 3) `x` with `forward` (float32 (N, h, w, 3) -> (N, s*h, s*w, 3)) tile by tile.

    tile: a side (square tiles) or a (height, width) shape, cut to the image's size. Tiles are laid flush
    with the image edges (none reaches past them), so pixels at the image border see exactly what
    whole-image inference shows them, and nothing needs padding. Every tile has the same shape and every
    call to forward the same batch size, so a compiled function traces once per image size.
    Returns float32 (s*H, s*W, 3), not clipped.
    """
    height, width = x.shape[:2]
    tile_h, tile_w = (tile, tile) if np.isscalar(tile) else tile
    tile_h, tile_w = min(int(tile_h), height), min(int(tile_w), width)
    for side, length in ((tile_h, height), (tile_w, width)):
        if side < length and side <= 2 * overlap:
            raise ValueError(f"tile {side} is too small for overlap {overlap}: use a tile of at least "
                             f"{2 * overlap + 1}")
    if (tile_h, tile_w) == (height, width):  # one tile: the model's output as it is (no blending passes)
        return np.asarray(forward(x[None]), dtype=np.float32)[0]
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    wys, wxs = axis_windows(ys, tile_h, scale), axis_windows(xs, tile_w, scale)
    boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    # the fewest calls of batch_size tiles at most, all of one size (the last one padded with copies)
    calls = math.ceil(len(boxes) / batch_size)
    per_call = math.ceil(len(boxes) / calls)

    out = np.zeros((height * scale, width * scale, 3), np.float32)
    weight = np.zeros((height * scale, width * scale, 1), np.float32)
    for first in range(0, len(boxes), per_call):
        chunk = boxes[first : first + per_call]
        batch = np.stack([x[ys[i] : ys[i] + tile_h, xs[j] : xs[j] + tile_w] for i, j in chunk])
        if len(chunk) < per_call:
            batch = np.concatenate([batch, np.repeat(batch[-1:], per_call - len(chunk), axis=0)])
        result = np.asarray(forward(batch), dtype=np.float32)
        for (i, j), sr in zip(chunk, result, strict=False):
            w = (wys[i][:, None] * wxs[j][None, :])[..., None]
            top, left = ys[i] * scale, xs[j] * scale
            out[top : top + tile_h * scale, left : left + tile_w * scale] += sr * w
            weight[top : top + tile_h * scale, left : left + tile_w * scale] += w
    out /= np.maximum(weight, 1e-8)
    return out


def is_out_of_memory(error):
    """True for the errors a backend raises when a tensor does not fit (TensorFlow, JAX, PyTorch, NumPy)."""
    if isinstance(error, MemoryError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ResourceExhaustedError", "OutOfMemoryError"}:
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def memory_budget():
    """Bytes of activations one model call may use: TILE_MEMORY_BUDGET, or less when memory is short."""
    return min(TILE_MEMORY_BUDGET, MEMORY_FRACTION * resizer.available_memory_bytes())


def activation_bytes_per_pixel(model):
    """Estimated peak activation memory of one forward pass, in bytes per input (LR) pixel."""
    return ACTIVATION_BYTES_PER_VALUE * widest_map(model)


def auto_overlap(model):
    """Tile overlap for a model: OVERLAP_PER_RADIUS of its receptive radius, in steps of 8 (SRResNet: 32,
    the fast preset: 24). Output within about half the radius of a tile edge is spoilt by the tile's zero
    padding; the cross-fade sits in the middle of the overlap, beyond that."""
    return overlap_for_radius(receptive_radius(model))


def auto_tile_pixels(model, *, budget=None):
    """LR pixels one model call may take: the memory budget (default memory_budget()) over the estimated
    activation bytes per pixel (worked out once per model)."""
    budget = memory_budget() if budget is None else budget
    return int(budget // _state(model).bytes_per_pixel)


def _tile_side(length, count, overlap):
    """The side of `count` tiles that cover `length` with `overlap`, or None when that is too thin."""
    if count == 1:
        return length
    side = math.ceil((length + (count - 1) * overlap) / count)
    return side if side > 2 * overlap else None


def _tile_count(length, max_side, overlap):
    """The fewest tiles no longer than max_side that cover `length` with `overlap` (None: impossible)."""
    if max_side >= length:
        return 1
    if max_side <= 2 * overlap:
        return None
    return math.ceil((length - overlap) / (max_side - overlap))


@functools.lru_cache(maxsize=256)
def plan_tiles(height, width, pixels, overlap):
    """(tile_h, tile_w): the tile shape, at most `pixels` in area, that covers the image with the fewest
    LR pixels computed. Tiles cut to the image waste much less on overlaps than squares spread over it
    (480x270 with 29k-pixel tiles and overlap 32: 3x2 tiles of 151x182, 27% recomputed, instead of 4x2
    squares of 160, 58%). When no shape is small enough, the smallest that still holds the overlap."""
    if height * width <= pixels:
        return height, width
    best = None
    for rows in range(1, height + 1):
        tile_h = _tile_side(height, rows, overlap)
        if tile_h is None:
            break
        cols = _tile_count(width, pixels // tile_h, overlap)
        tile_w = None if cols is None else _tile_side(width, cols, overlap)
        if tile_w is not None and tile_h * tile_w <= pixels:
            cost = (rows * cols * tile_h * tile_w, rows * cols)
            if best is None or cost < best[0]:
                best = (cost, (tile_h, tile_w))
    if best is None:
        side = 2 * overlap + 1
        return min(height, side), min(width, side)
    return best[1]


@dataclass
class _ModelState:
    """What upscale_array remembers per model: scale, overlap, and the settings that ran out of memory."""

    scale: int
    overlap: int
    bytes_per_pixel: int  # activation_bytes_per_pixel
    reduced: dict = field(default_factory=dict)  # (tile, overlap, batch) asked -> (tile, pixels, batch) that fit
    compiled: object = None  # an XLA-compiled forward (compile_model), or None for model.predict_on_batch


def compile_model(model):
    """Make upscale_array/upscale_batch run the model through an XLA-compiled function (jit_compile):
    faster on some CPUs, but each new tile shape compiles anew (seconds), so it suits videos and
    animations, whose frames all have one size. Returns the model. On JAX and torch it changes nothing:
    Keras already runs predict_on_batch jit-compiled on JAX."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return model
    import tensorflow as tf

    @tf.function(jit_compile=True, autograph=False)
    def forward(x):
        return model(x, training=False)

    _state(model).compiled = lambda batch: forward(tf.constant(batch)).numpy()
    return model


def wants_compile(choice, jobs):
    """--compile on/off, or auto: on when some job is a video or an animation (many frames of one shape
    amortise the compile; a still image would mostly wait for it)."""
    if choice != "auto":
        return choice == "on"
    return any(job.kind != "image" for job in jobs)


def fastest(candidates, trials=RUNTIME_TRIALS):
    """(name of the fastest candidate, {name: seconds per call}). candidates: {name: function doing one call}.
    Each is called once to warm up (XLA compiles then), then once per round in `trials` interleaved rounds, so
    a change in the machine's load hits them alike; the median time counts."""
    for run in candidates.values():
        run()
    times = {name: [] for name in candidates}
    for _ in range(trials):
        for name, run in candidates.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    return min(seconds, key=seconds.get), seconds


def load_fastest(path, precision="auto", compile_choice="auto", jobs=(), progress=None):
    """The model to upscale jobs with, and a note for the summary (None when nothing was timed).

    With videos or animations among the jobs and --precision or --compile auto, the candidates (fp32, and
    bf16 where the hardware computes it natively; XLA off and on) are timed on frames of the first one's
    size (fastest) and the fastest runs: which one wins depends on the CPU, the model and the frame size
    (bf16 with XLA ran 1.7x slower than bf16 without it for the video model on a busy AVX-512/AMX CPU:
    benchmarks/bench_upscale.py). Otherwise resolve_precision's and wants_compile's rules decide.
    progress: False for no progress bar."""
    size = next((s for s in map(_frame_size, jobs) if s is not None), None)
    precisions = [precision] if precision != "auto" else ["fp32"] + (["bf16"] if resolve_precision() == "bf16" else [])
    compiles = [compile_choice == "on"] if compile_choice != "auto" else [False, True]
    import keras

    if keras.backend.backend() != "tensorflow":
        compiles = [False]  # compile_model changes nothing there
    if size is None or len(precisions) * len(compiles) == 1:
        model = load_model(path, precision)
        return (compile_model(model) if wants_compile(compile_choice, jobs) else model), None
    models = {}
    for name in precisions:
        for xla in compiles:
            model = load_model(path, name)
            models[name + (" XLA" if xla else "")] = compile_model(model) if xla else model
    frame = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    started = time.perf_counter()
    bar = _progress(progress, len(models) * (1 + RUNTIME_TRIALS), "timing the runtimes")
    bar.unit = "call"

    def timed(model):
        def run():
            upscale_array(model, frame)
            bar.update()

        return run

    best, seconds = fastest({name: timed(model) for name, model in models.items()})
    bar.close()
    timings = ", ".join(f"{name} {1 / t:.2f}" for name, t in seconds.items())
    return models[best], (f"ran {best}, the fastest on {size[0]}x{size[1]} frames here (frames/s: {timings}; "
                          f"timed in {time.perf_counter() - started:.0f} s)")


def _frame_size(job):
    """(width, height) of a video's or an animation's frames, or None (a still image, or unreadable)."""
    try:
        if job.kind == "video":
            with open_video(job.src) as inp:
                codec = inp.streams.video[0].codec_context
                return codec.width, codec.height
        if job.kind == "animation":
            with Image.open(job.src) as im:
                return im.size
    except Exception:  # the job itself reports it
        return None
    return None


def _forward(model):
    """What runs a batch through the model: the compiled function, or predict_on_batch."""
    return _state(model).compiled or model.predict_on_batch


_STATES = weakref.WeakKeyDictionary()


def _state(model):
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = _ModelState(scale=model_scale(model), overlap=auto_overlap(model),
                                             bytes_per_pixel=activation_bytes_per_pixel(model))
    return state


def upscale_array(model, rgb_uint8, *, tile=None, overlap=None, batch_size=None):
    """Upscale a uint8 (H, W, 3) RGB image with a generator; returns uint8 (s*H, s*W, 3).

    tile: tiles hold at most tile x tile LR pixels, shaped to the image (see plan_tiles); None: as many
        pixels as the memory budget allows (see auto_tile_pixels). An image that fits in one tile goes
        through whole, exactly as the model alone would upscale it.
    overlap: LR pixels shared by neighbouring tiles, where their outputs are cross-faded (None: from the
        model's receptive field, see auto_overlap): no seams, and within a grey level or two of
        whole-image inference.
    batch_size: tiles per model call (None: as many as fit the budget, usually 1 on a CPU), all of one
        shape, so the compiled predict function traces once per image size.
    When the backend runs out of memory, the batch and then the tile are made smaller and the image is
    retried (with a warning); the model remembers the setting that fitted for the next images or frames.
    """
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"upscale_array expects a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
    return _to_uint8_in_bands(upscale_float(model, to_float(rgb), tile=tile, overlap=overlap, batch_size=batch_size))


def upscale_float(model, x, *, tile=None, overlap=None, batch_size=None):
    """upscale_array for a float32 (H, W, 3) image in [0, 1] (16-bit sources keep their precision);
    returns float32 (s*H, s*W, 3), not clipped. The options are upscale_array's."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"upscale_float expects a float (H, W, 3) RGB array, got {x.dtype} {x.shape}")
    state = _state(model)
    overlap = state.overlap if overlap is None else int(overlap)
    if overlap < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"overlap must be >= 0 and batch_size >= 1, got {overlap} and {batch_size}")
    height, width = x.shape[:2]
    asked = (tile, overlap, batch_size)
    pixels = auto_tile_pixels(model)  # what one call may hold
    tile, pixels, batch_size = state.reduced.get(asked, (tile, pixels, batch_size))
    while True:
        if tile is not None and tile <= 2 * overlap and tile < max(height, width):
            raise ValueError(f"tile {tile} is too small for overlap {overlap}: use a tile of at least "
                             f"{2 * overlap + 1}")
        area = tile * tile if tile is not None else min(pixels, MAX_TILE * MAX_TILE)
        shape = plan_tiles(height, width, area, overlap)
        batch = batch_size or max(1, pixels // (shape[0] * shape[1]))
        try:
            sr = tiled_upscale(_forward(model), x, state.scale, tile=shape, overlap=overlap,
                               batch_size=batch)
            break
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            was = f"{batch} tile(s) of {shape[1]}x{shape[0]}"
            if batch > 1:
                batch_size = batch // 2
            elif tile is not None and tile > MIN_TILE and tile * 3 // 4 > 2 * overlap:
                tile = max(MIN_TILE, tile * 3 // 4 // TILE_STEP * TILE_STEP)
            elif tile is None and shape[0] * shape[1] > (2 * overlap + 1) ** 2:
                pixels = shape[0] * shape[1] // 2
            else:
                raise MemoryError(f"out of memory even with one tile of {shape[1]}x{shape[0]} at a time ({e})") from e
            warnings.warn(f"out of memory with {was}; retrying with smaller tiles or batches",
                          ResourceWarning, stacklevel=2)
            state.reduced[asked] = (tile, pixels, batch_size)
    return sr


def upscale_batch(model, lr_uint8_batch, *, batch_size=None, tile=None, overlap=None):
    """Upscale a batch of uint8 RGB images ((N, H, W, 3) array or a list of (H, W, 3) arrays); returns a
    uint8 (N, s*H, s*W, 3) array (a list when the images differ in size).

    Images small enough to go through whole (see upscale_array's tile) are stacked, batch_size at a time
    (None: as many as the memory budget holds), into one model call: evaluation crops, small GIF frames.
    Bigger ones go through upscale_array one by one, tiled. Either way each image gets exactly what
    upscale_array would give it.
    """
    images = [np.asarray(img) for img in lr_uint8_batch]
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8)
    for img in images:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"upscale_batch expects uint8 (H, W, 3) RGB images, got {img.dtype} {img.shape}")
    same = len({img.shape for img in images}) == 1
    height, width = images[0].shape[:2]
    pixels = auto_tile_pixels(model)
    whole_area = tile * tile if tile is not None else min(pixels, MAX_TILE * MAX_TILE)
    per_call = batch_size or max(1, pixels // (height * width))
    if not (same and height * width <= whole_area and per_call > 1):
        out = [upscale_array(model, img, tile=tile, overlap=overlap) for img in images]
        return np.stack(out) if same else out
    out = []
    for first in range(0, len(images), per_call):
        chunk = np.stack(images[first : first + per_call])
        try:
            sr = np.asarray(_forward(model)(to_float(chunk)), dtype=np.float32)
        except Exception as e:
            if not is_out_of_memory(e):
                raise
            sr = np.stack([upscale_float(model, to_float(img), tile=tile, overlap=overlap) for img in chunk])
        out.extend(_to_uint8_in_bands(frame) for frame in sr)
    return np.stack(out)


def _to_uint8_in_bands(x, rows=64):
    """to_uint8 (the same steps, so the same values) a band of rows at a time, in place in one temporary:
    it stays in cache and memory stays small for a 4K output (a frame's float RGB is 44 MB at 2560x1440)."""
    out = np.empty(x.shape, np.uint8)
    for top in range(0, x.shape[0], rows):
        band = np.multiply(x[top : top + rows], np.float32(255.0), dtype=np.float32)
        np.nan_to_num(band, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.rint(np.clip(band, 0.0, 255.0, out=band), out=band)
        out[top : top + rows] = band
    return out


# --- still images ----------------------------------------------------------------------------------------


GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
RGB_MODES = {"RGB", "RGBA", "RGBa", "P", "PA"}
ICC_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}


class SourceInfo(NamedTuple):
    """What the header of an image file says."""

    mode: str  # Pillow mode
    frames: int
    icc_profile: bytes | None
    deep_colour: bool  # 16 bits per colour channel, which Pillow reads as 8


def source_info(path):
    """The file's SourceInfo read from its header, or None if Pillow cannot open it (the loader then gives
    the clear error)."""
    try:
        with Image.open(path) as im:
            deep_colour = im.mode not in DEEP_MODES and any(";16" in str(tile.args) for tile in im.tile)
            return SourceInfo(im.mode, getattr(im, "n_frames", 1), im.info.get("icc_profile"), deep_colour)
    except Exception:
        return None


def load_deep_grey(path):
    """A 16-bit grey image (DEEP_MODES) as float32 (H, W) in [0, 1], EXIF orientation applied."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        values = np.asarray(im).astype(np.float32)
    return np.clip(values, 0, 65535) / np.float32(65535)


def save_deep_grey(path, grey):
    """Save float (H, W) grey in [0, 1] as a 16-bit PNG or TIFF, atomically."""
    values = np.rint(np.clip(grey, 0.0, 1.0) * 65535).astype(np.uint16)
    with atomic_output(path) as tmp:
        Image.fromarray(values).save(tmp, format=Image.registered_extensions()[Path(path).suffix.lower()])


def upscale_image_file(inference, src, dst, *, compare=False):
    """Upscale one still image file to dst (format from dst's extension), keeping alpha, greyscale and
    16-bit grey (in PNG/TIFF outputs; upscaled from the 16-bit values). Returns a note for the summary
    (a 16-bit input written as 8 bits), or None."""
    info = source_info(src)
    if info is not None and info.mode in DEEP_MODES and info.frames == 1:
        if dst.suffix.lower() in DEEP_SUFFIXES:
            grey = load_deep_grey(src)
            sr = inference.image_float(np.repeat(grey[..., None], 3, axis=2))
            save_deep_grey(dst, sr.mean(axis=2))
            if compare:
                write_compare(compare_path(dst), to_uint8(np.repeat(grey[..., None], 3, axis=2)),
                              to_uint8(np.clip(sr, 0, 1)), inference.scale, inference.label, inference.others)
            return None
        note = f"16-bit input written as 8-bit ({dst.suffix} holds 8 bits; use .png or .tif for 16)"
    elif info is not None and info.deep_colour:
        note = "16-bit colour input read and written as 8-bit (16-bit output is for grey images)"
    else:
        note = None
    rgb, alpha = load_image(src, with_alpha=True)
    sr = inference.image(rgb)
    size = (sr.shape[1], sr.shape[0])
    alpha_sr = resize(alpha, size, "bicubic") if alpha is not None else None
    grey = info is not None and info.mode in GREY_MODES
    out = np.rint(sr.astype(np.float32).mean(axis=2)).astype(np.uint8) if grey else sr
    options = {}
    if info is not None and info.icc_profile and info.mode in RGB_MODES and dst.suffix.lower() in ICC_SUFFIXES:
        options["icc_profile"] = info.icc_profile  # colours mean what they meant in the input (an RGB profile only)
    if alpha_sr is not None and dst.suffix.lower() in {".jpg", ".jpeg"}:
        out, alpha_sr = flatten(out, alpha_sr), None  # JPEG has no alpha: composite onto the background
    save_image(dst, out, alpha=alpha_sr, **options)
    if compare:
        write_compare(compare_path(dst), rgb, sr, inference.scale, inference.label, inference.others)
    return note


def flatten(img, alpha, background=FLATTEN_BACKGROUND):
    """Composite an image (grey or RGB) with its alpha onto a plain background colour."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    img3 = img[..., None] if img.ndim == 2 else img
    bg = np.asarray(background, np.float32)[: img3.shape[2]] if img.ndim == 3 else np.float32(np.mean(background))
    out = img3.astype(np.float32) * a + bg * (1.0 - a)
    out = np.rint(out).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out


# --- the frame pipeline: decode -> upscale -> encode ------------------------------------------------------


@dataclass
class Inference:
    """How frames and images are upscaled: the model and upscale_array's tiling options."""

    model: object
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    label: str = "model"
    others: tuple = ()  # (label, model) pairs whose outputs --compare shows beside the model's (--compare-with)

    @property
    def scale(self):
        return _state(self.model).scale

    def image(self, rgb):
        """One uint8 RGB image, upscaled (upscale_array)."""
        return upscale_array(self.model, rgb, tile=self.tile, overlap=self.overlap, batch_size=self.batch_size)

    def image_float(self, x):
        """One float RGB image in [0, 1], upscaled in float (upscale_float)."""
        return upscale_float(self.model, x, tile=self.tile, overlap=self.overlap, batch_size=self.batch_size)

    def frames(self, rgbs):
        """A list of uint8 RGB frames, upscaled (upscale_batch: small frames share model calls)."""
        return list(upscale_batch(self.model, rgbs, tile=self.tile, overlap=self.overlap))

    def frames_per_batch(self, width, height):
        """How many frames of this size go to the model together: as many whole frames as one call holds."""
        if self.tile is not None and width * height > self.tile * self.tile:
            return 1
        return int(np.clip(auto_tile_pixels(self.model) // max(1, width * height), 1, MAX_FRAME_BATCH))


class _Failed:
    """An exception raised in a pipeline thread, handed on to the thread that waits for its output."""

    def __init__(self, error):
        self.error = error


_END = object()  # the end of a pipeline queue


def _put(q, item, stop):
    """Put item on a bounded queue, giving up (False) when the pipeline is stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _received(q, stop):
    """The items of a queue up to _END (or until the pipeline stops); a producer's error is raised here."""
    while not stop.is_set():
        try:
            item = q.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return
        if isinstance(item, _Failed):
            raise item.error
        yield item


def _feed(items, q, stop):
    """Thread: iterate items (decoding happens here) into q."""
    try:
        for item in items:
            if not _put(q, item, stop):
                break
        else:
            _put(q, _END, stop)
    except BaseException as e:  # handed to the model thread, which raises it
        _put(q, _Failed(e), stop)
    finally:
        getattr(items, "close", lambda: None)()  # a generator ends (closing its files) in its own thread


def _drain(q, sink, stop, errors):
    """Thread: hand every item of every group in q to sink (encoding happens here)."""
    try:
        for group in _received(q, stop):
            for item in group:
                sink(item)
    except BaseException as e:
        errors.append(e)
        stop.set()


def _is_frame(item):
    return getattr(item, "rgb", None) is not None


def _groups(items, frames_per_group):
    """Consecutive items in lists holding frames_per_group frames each (other items ride along in order)."""
    group, frames = [], 0
    for item in items:
        group.append(item)
        frames += _is_frame(item)
        if frames >= frames_per_group:
            yield group
            group, frames = [], 0
    if group:
        yield group


def _upscale_group(group, upscale_frames):
    """Set .sr on every frame of the group, with one upscale_frames call for all of them."""
    frames = [item for item in group if _is_frame(item)]
    if frames:
        for frame, sr in zip(frames, upscale_frames([frame.rgb for frame in frames]), strict=True):
            frame.sr = sr
    return group


def run_frames(items, upscale_frames, sink, *, frames_per_batch=1, threaded=True, inbox=None):
    """Upscale the frames among items (objects with .rgb; they get .sr) and hand every item, in order,
    to sink; items without .rgb (audio packets) pass through untouched.

    threaded: items are produced (decoded) in one thread and sunk (encoded) in another, linked to this one
    (the model's) by bounded queues: the model does not wait for I/O, and memory stays flat however long
    the clip. An error or Ctrl-C in any stage stops all three and is raised here; after an error in the
    items (a stream that broke off) the frames decoded before it are upscaled and sunk first.
    frames_per_batch: frames per upscale_frames call.
    inbox: the queue between decoder and model (default: a bounded queue.Queue; --realtime: a RealtimeInbox).
    """
    failures = []
    if not threaded:
        for group in _groups(_until_failure(items, failures), frames_per_batch):
            for item in _upscale_group(group, upscale_frames):
                sink(item)
        if failures:
            raise failures[0]
        return
    stop, errors = threading.Event(), []
    inbox = queue.Queue(QUEUE_ITEMS) if inbox is None else inbox
    outbox = queue.Queue(max(1, QUEUE_FRAMES // frames_per_batch))
    reader = threading.Thread(target=_feed, args=(items, inbox, stop), name="upscale-decode", daemon=True)
    writer = threading.Thread(target=_drain, args=(outbox, sink, stop, errors), name="upscale-encode", daemon=True)
    reader.start()
    writer.start()
    try:
        for group in _groups(_until_failure(_received(inbox, stop), failures), frames_per_batch):
            if not _put(outbox, _upscale_group(group, upscale_frames), stop):
                break
        else:
            _put(outbox, _END, stop)
            writer.join()
    finally:
        stop.set()
        reader.join()
        writer.join()
    if errors or failures:
        raise (errors or failures)[0]


def _until_failure(items, failures):
    """The items up to an error (appended to failures), so what came before it can still be used."""
    try:
        yield from items
    except Exception as e:
        failures.append(e)


class FrameSink:
    """Counts the frames written, updates the progress bar (with the frames dropped and the rate shown under
    --realtime) and writes the --compare image of the first."""

    def __init__(self, write, bar, compare_to=None, inference=None, stats=None):
        self.write, self.bar, self.compare_to, self.inference = write, bar, compare_to, inference
        self.stats = stats
        self.frames = 0

    def __call__(self, item):
        self.write(item)
        if _is_frame(item):
            if self.frames == 0 and self.compare_to is not None:
                write_compare(self.compare_to, item.rgb, item.sr, self.inference.scale, self.inference.label,
                              self.inference.others)
            self.frames += 1
            if self.stats is not None:
                self.stats.shown += 1
                if self.stats.started is None:
                    self.stats.started = time.perf_counter()
                if self.stats.realtime:
                    self.bar.set_postfix_str(f"dropped {self.stats.dropped}, {self.stats.rate():.1f} shown/s",
                                             refresh=False)
            self.bar.update()


# --- animations (GIF, animated WebP, APNG) ----------------------------------------------------------------


@dataclass
class Frame:
    """One composited animation frame: RGB, alpha (None when opaque) and how it is shown."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    duration: int  # ms
    disposal: int
    sr: np.ndarray | None = None  # the upscaled RGB, once the model has seen it


def read_animation(path):
    """Yield the frames of an animated image (Pillow composites GIF/WebP/APNG frames onto the canvas),
    and return nothing; use animation_info for loop and frame count."""
    with Image.open(path) as im:
        for frame in ImageSequence.Iterator(im):
            rgba = np.asarray(frame.convert("RGBA"))
            alpha = rgba[..., 3]
            yield Frame(
                rgb=rgba[..., :3].copy(),
                alpha=None if alpha.min() == 255 else alpha.copy(),
                duration=int(frame.info.get("duration") or 0),
                disposal=int(getattr(frame, "disposal_method", 0) or 0),
            )


def shown_ms(duration):
    """How long players show a frame of this duration (ms): very short GIF delays are shown as 100 ms."""
    return duration if duration >= GIF_MIN_DELAY_MS else GIF_DEFAULT_DELAY_MS


def animation_frames(path, *, start=0.0, max_frames=None):
    """read_animation's frames from `start` seconds on, at most max_frames of them. The frame showing at
    `start` comes first, its duration cut to the time it has left, so the rest keep their times."""
    start_ms, elapsed, count = round(start * 1000), 0, 0
    for frame in read_animation(path):
        if max_frames is not None and count >= max_frames:
            return
        shown = shown_ms(frame.duration)
        if elapsed + shown <= start_ms:
            elapsed += shown
            continue
        if elapsed < start_ms:
            frame.duration = elapsed + shown - start_ms
        elapsed += shown
        count += 1
        yield frame


def animation_info(path):
    """(frame count, loop or None, GIF transparency index or None) of an animated image file."""
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1), im.info.get("loop"), im.info.get("transparency")
    except Exception as e:
        raise ImageLoadError(f"{path}: cannot read the animation ({type(e).__name__}: {e})") from e


def adaptive_palette(pixels, colours):
    """(n, 3) uint8 palette of at most `colours` colours for an (N, 3) array of pixels: median cut, refined
    by two k-means passes (a closer fit: less error and less grain than median cut alone)."""
    pixels = np.asarray(pixels, np.uint8).reshape(-1, 3)
    if len(pixels) == 0:
        pixels = np.zeros((1, 3), np.uint8)
    pal_im = Image.fromarray(pixels[:, None, :]).quantize(colors=colours, method=Image.Quantize.MEDIANCUT, kmeans=2)
    used = min(colours, len(pal_im.getpalette()) // 3)
    return np.asarray(pal_im.getpalette()[: 3 * used], np.uint8).reshape(-1, 3)


def nearest_colours(rgb, palette_rgb):
    """(index of the nearest palette colour, distance in grey levels) for every pixel of an (..., 3) array.
    Exact (a k-d tree): Pillow's own mapping to a given palette is coarser and adds visible error."""
    from scipy.spatial import cKDTree

    distance, index = cKDTree(palette_rgb.astype(np.float32)).query(rgb.reshape(-1, 3).astype(np.float32))
    return index.reshape(rgb.shape[:-1]), distance.reshape(rgb.shape[:-1])


def quantize_frame(rgb, opaque, transparency=None, palette_rgb=None):
    """A palette image for one GIF frame, each pixel the nearest palette colour (no dithering: it adds
    grain that shimmers from frame to frame). palette_rgb: (n, 3) colours to use (GifPalette's shared
    ones: 255 at most when the frame has transparency), or None for an adaptive palette of this frame's
    colours. With transparency, one palette slot (the source's index where it had one) is kept for the
    transparent pixels. opaque: bool (H, W) mask, or None when the frame is fully opaque."""
    colours = 256 if opaque is None else 255
    if palette_rgb is None:
        palette_rgb = adaptive_palette(rgb.reshape(-1, 3) if opaque is None else rgb[opaque], colours)
    palette_rgb = palette_rgb[:colours]
    index = nearest_colours(rgb, palette_rgb)[0].astype(np.int32)
    if opaque is not None:
        t = int(transparency) if transparency is not None and 0 <= int(transparency) <= 255 else 255
        palette_rgb = np.concatenate([palette_rgb, np.zeros((255 - len(palette_rgb), 3), np.uint8)])  # 255 colours
        index = np.where(index >= t, index + 1, index)  # make room for the transparent slot at t
        index[~opaque] = t
        palette_rgb = np.insert(palette_rgb, t, 0, axis=0)
    out = Image.fromarray(index.astype(np.uint8), mode="P")
    out.putpalette(palette_rgb.reshape(-1).tolist())
    if opaque is not None:
        out.info["transparency"] = t
    return out


def palette_error(rgb, palette_rgb, mask=None, step=4):
    """Mean distance (grey levels) from a sample of the frame's pixels (every step-th row and column, those
    in mask) to their nearest palette colour: how well a palette suits a frame."""
    pixels = rgb[::step, ::step]
    pixels = pixels[mask[::step, ::step]] if mask is not None else pixels.reshape(-1, 3)
    if len(pixels) == 0:
        return 0.0
    return float(nearest_colours(pixels, palette_rgb)[1].mean())


class GifPalette:
    """GIF frames quantised to one palette shared by the frames where they allow it: it is built from the
    first GIF_PALETTE_FRAMES frames, so colours stay put from frame to frame instead of shimmering (each
    frame's own palette moves every colour a little). A frame the shared palette suits more than
    GIF_PALETTE_TOLERANCE times worse than the frames it was built from (a new scene) gets its own palette.
    Frames come out in order; add() may hold some back until the palette exists."""

    def __init__(self, transparency=None):
        self.transparency = transparency
        self.pending = []  # (rgb, opaque) waiting for the palette
        self.palette_rgb = None
        self.reference_error = None
        self.shared = self.own = 0  # frames quantised to the shared palette / their own

    def add(self, rgb, opaque):
        """Quantise one frame (opaque: bool mask or None); returns the palette images now ready, in order."""
        if self.palette_rgb is not None:
            return [self._quantize(rgb, opaque)]
        self.pending.append((rgb, opaque))
        return self._flush() if len(self.pending) >= GIF_PALETTE_FRAMES else []

    def finish(self):
        """The frames still held back (an animation shorter than GIF_PALETTE_FRAMES)."""
        return self._flush() if self.pending else []

    def _flush(self):
        frames, self.pending = self.pending, []
        total = sum(rgb.shape[0] * rgb.shape[1] for rgb, _ in frames)
        k = max(1, math.ceil(math.sqrt(total / GIF_PALETTE_SAMPLES)))  # every k-th row and column
        pixels = np.concatenate([rgb[::k, ::k].reshape(-1, 3) if opaque is None else rgb[::k, ::k][opaque[::k, ::k]]
                                 for rgb, opaque in frames])
        transparent = any(opaque is not None for _, opaque in frames)
        self.palette_rgb = adaptive_palette(pixels, 255 if transparent else 256)
        errors = [palette_error(rgb, self.palette_rgb, opaque) for rgb, opaque in frames]
        self.reference_error = max(float(np.mean(errors)), 1.0)
        return [self._quantize(rgb, opaque) for rgb, opaque in frames]

    def _quantize(self, rgb, opaque):
        if palette_error(rgb, self.palette_rgb, opaque) > GIF_PALETTE_TOLERANCE * self.reference_error:
            self.own += 1
            return quantize_frame(rgb, opaque, self.transparency)
        self.shared += 1
        return quantize_frame(rgb, opaque, self.transparency, palette_rgb=self.palette_rgb)


def upscale_animation_file(inference, src, dst, *, video_options, compare=False, start=0.0, max_frames=None,
                           progress=None, threaded=True):
    """Upscale the frames of an animated GIF/WebP/PNG (from `start` seconds on, at most max_frames) into
    dst: .gif (shared palette), .webp, .png (APNG) or a video container (mp4, mkv, webm, mov: frames
    flattened, variable timing kept)."""
    suffix = dst.suffix.lower()
    if suffix not in ANIMATED_SUFFIXES | VIDEO_SUFFIXES:
        raise ValueError(f"{dst}: an animation can be written as .gif, .webp, .png (APNG) or a video "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    n_frames, loop, transparency = animation_info(src)
    with Image.open(src) as im:
        width, height = im.size
    bar = _progress(progress, n_frames if max_frames is None else min(n_frames, max_frames), src.name)
    frames = animation_frames(src, start=start, max_frames=max_frames)
    batch = inference.frames_per_batch(width, height)
    compare_to = compare_path(dst) if compare else None
    if suffix in VIDEO_SUFFIXES:
        with atomic_output(dst) as tmp, _open_output_video(tmp, dst) as out:
            video = AnimationVideoSink(out, video_options)
            sink = FrameSink(video, bar, compare_to, inference)
            run_frames(frames, inference.frames, sink, frames_per_batch=batch, threaded=threaded)
            _check_frames(sink.frames, src, start)
            video.finish()
    else:
        images = AnimatedImageSink(suffix, transparency)
        sink = FrameSink(images, bar, compare_to, inference)
        run_frames(frames, inference.frames, sink, frames_per_batch=batch, threaded=threaded)
        _check_frames(sink.frames, src, start)
        images.save(dst, loop)
    bar.close()
    return sink.frames


def _check_frames(count, src, start):
    if count == 0:
        raise ValueError(f"{src}: no frames" + (f" from --start {start:g} s on" if start else ""))


class AnimationVideoSink:
    """Encodes upscaled animation frames as a video, each shown for its own duration (from 0)."""

    def __init__(self, out, video_options):
        self.out, self.video_options = out, video_options
        self.writer, self.pts = None, 0

    def __call__(self, frame):
        sr = frame.sr
        if self.writer is None:
            self.writer = VideoWriter(self.out, sr.shape[1], sr.shape[0], rate=None, time_base=Fraction(1, 1000),
                                      **self.video_options)
        if frame.alpha is not None:  # video has no transparency
            sr = flatten(sr, _upscale_alpha(frame.alpha, sr.shape, binary=False))
        self.writer.write(sr, self.pts)
        self.pts += shown_ms(frame.duration)

    def finish(self):
        self.writer.finish()


class AnimatedImageSink:
    """Collects upscaled frames for an animated GIF (quantised as they come), WebP or APNG, and saves them
    with the source's timing and loop."""

    def __init__(self, suffix, transparency):
        self.suffix = suffix
        self.palette = GifPalette(transparency) if suffix == ".gif" else None
        self.images, self.durations, self.disposals = [], [], []

    def __call__(self, frame):
        gif = self.suffix == ".gif"
        alpha = None if frame.alpha is None else _upscale_alpha(frame.alpha, frame.sr.shape, binary=gif)
        if gif:
            self.images.extend(self.palette.add(frame.sr, None if alpha is None else alpha >= 128))
        else:
            self.images.append(Image.fromarray(frame.sr) if alpha is None
                               else Image.fromarray(np.dstack([frame.sr, alpha])))
        self.durations.append(frame.duration)
        self.disposals.append(frame.disposal)

    def save(self, dst, loop):
        """Write the animation to dst, atomically."""
        if self.palette is not None:
            self.images.extend(self.palette.finish())
        durations, disposals = self.durations, self.disposals
        if len(self.images) == 1:  # Pillow wants plain values, not lists, for a single frame
            durations, disposals = durations[0], disposals[0]
        options = {"save_all": True, "append_images": self.images[1:], "duration": durations}
        if self.suffix == ".gif":
            # every frame is a whole composited canvas, so the source's disposal methods show it the same way;
            # optimize=False keeps each frame's palette (and its transparency index) as made above
            options.update(disposal=disposals, optimize=False)
            if loop is not None:  # no loop count in the source: it plays once, and so does the output
                options["loop"] = loop
        elif self.suffix == ".webp":
            options.update(loop=loop or 0, quality=95, method=4)
        else:
            options.update(loop=loop or 0, disposal=0, blend=0)  # APNG: each frame replaces the canvas
        with atomic_output(dst) as tmp:
            self.images[0].save(tmp, format=Image.registered_extensions()[self.suffix], **options)


def _upscale_alpha(alpha, shape, *, binary):
    """Alpha for an upscaled frame: bilinear for GIFs (positive weights, so a pixel transparent in every
    source frame stays transparent, as GIF disposal needs), bicubic otherwise."""
    return resize(alpha, (shape[1], shape[0]), "bilinear" if binary else "bicubic")


# --- videos ----------------------------------------------------------------------------------------------


class VideoError(ValueError):
    """A video that cannot be upscaled: no video stream, no frames, an unwritable combination."""


def _open_output_video(tmp, dst):
    import av

    return av.open(str(tmp), mode="w", format=CONTAINER_FORMATS.get(dst.suffix.lower()))


class VideoWriter:
    """Encode RGB frames into a video stream of an open PyAV output, with timestamps given by the caller."""

    def __init__(self, out, width, height, *, rate, time_base, codec=None, crf=DEFAULT_CRF, preset=DEFAULT_PRESET,
                 pix_fmt=DEFAULT_PIX_FMT):
        container = out.format.name.split(",")[0]  # "mp4", "mov", "matroska" or "webm"
        codec = codec or VIDEO_CODEC.get(container, DEFAULT_VIDEO_CODEC)
        if container == "webm" and codec not in {"libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1"}:
            raise VideoError(f"WebM holds VP8/VP9/AV1 video only, not {codec}; use --codec libvpx-vp9 or .mp4/.mkv")
        self.out = out
        # 4:2:0 and 4:2:2 subsample chroma by 2, so those need even sides: pad by one edge pixel where odd
        even = pix_fmt.startswith(("yuv420", "yuvj420", "nv12", "yuv422", "yuvj422"))
        self.width, self.height = (width + width % 2, height + height % 2) if even else (width, height)
        self.stream = out.add_stream(codec, rate=rate or 25)
        self.stream.width, self.stream.height = self.width, self.height
        self.stream.pix_fmt = pix_fmt
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        options = {}
        if crf is not None and codec in CRF_CODECS:
            options["crf"] = str(crf)
            if codec == "libvpx-vp9":
                options["b"] = "0"  # constant-quality mode
        if preset and codec in PRESET_CODECS:
            options["preset"] = preset
        if codec == "libx265":
            options["x265-params"] = "log-level=error"  # x265 otherwise prints a page of settings per file
        self.stream.options = options
        self.time_base = time_base
        self.frames = 0
        self.colour = None
        if pix_fmt.startswith(("yuv", "nv12")):
            self.colour = _tag_bt709(self.stream.codec_context, full_range=pix_fmt.startswith("yuvj"))

    def write(self, rgb, pts):
        """Encode one uint8 (H, W, 3) frame shown at pts (in time_base units)."""
        import av

        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            if not (0 <= self.height - rgb.shape[0] <= 1 and 0 <= self.width - rgb.shape[1] <= 1):
                raise VideoError(f"frame size changed mid-stream: {rgb.shape[1]}x{rgb.shape[0]} after "
                                 f"{self.width}x{self.height}")
            rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self.colour is not None:  # convert with the matrix the stream is tagged with
            frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace=self.colour[0],
                                   dst_color_range=self.colour[1])
        frame.pts, frame.time_base = int(pts), self.time_base
        self.out.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self):
        """Flush the encoder."""
        self.out.mux(self.stream.encode(None))


def _tag_bt709(codec_context, *, full_range=False):
    """Tag an output stream as BT.709 (what players assume for HD, which x4 outputs are) and return the
    (colorspace, range) its frames must be converted with; untagged, players would guess and shift colours."""
    from av.video.reformatter import ColorRange, Colorspace

    colour_range = ColorRange.JPEG if full_range else ColorRange.MPEG
    codec_context.colorspace = Colorspace.ITU709
    codec_context.color_range = colour_range
    codec_context.color_primaries = 1  # AVCOL_PRI_BT709
    codec_context.color_trc = 1  # AVCOL_TRC_BT709
    return Colorspace.ITU709, colour_range


def frame_to_rgb(frame):
    """A decoded video frame as uint8 RGB, converted with its own tagged matrix and range (full-range phone
    video included); untagged frames get FFmpeg's default (BT.601, limited range)."""
    return frame.reformat(format="rgb24", src_color_range=frame.color_range or None).to_ndarray()


@dataclass
class DecodedFrame:
    """One decoded video frame: RGB, its output timestamp (stream time base), its time in the source
    (seconds) and its display rotation."""

    rgb: np.ndarray
    pts: int
    time: float
    rotation: int = 0
    sr: np.ndarray | None = None  # the upscaled RGB, once the model has seen it
    index: int = 0  # frames decoded before this one (--realtime: the y4m output repeats a frame for those dropped)


@dataclass
class AudioPacket:
    """An audio packet copied to the output unchanged (retimed by --start)."""

    packet: object


def open_video(src):
    """av.open(src) for reading, with clear errors for what is not a video (or has no video stream). A URL
    gets timeouts (STREAM_OPEN_TIMEOUT to answer, STREAM_READ_TIMEOUT per packet), so a stall is an error."""
    import av

    timeout = (STREAM_OPEN_TIMEOUT, STREAM_READ_TIMEOUT) if is_url(src) else None
    try:
        inp = av.open(str(src), timeout=timeout)
    except av.error.EOFError as e:
        raise VideoError(f"{src}: the video has no frames (the file ends after its header)") from e
    except av.error.ExitError as e:  # the timeout's interrupt
        raise VideoError(f"{src}: cannot open: no answer within {STREAM_OPEN_TIMEOUT:g} s") from e
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{src}: cannot open as a video ({e})") from e
    if not inp.streams.video:
        inp.close()
        raise VideoError(f"{src}: has no video stream")
    return inp


def video_frames(inp, src, *, start=0.0, max_frames=None):
    """Decode the first video stream of an open input into DecodedFrames from `start` seconds on (a seek,
    then the frames shown before it dropped), at most max_frames of them, with increasing timestamps
    (missing ones filled in, repeated ones bumped: encoders need them increasing). With a start, the
    output timestamps count from the first frame kept, so the output starts at 0."""
    vin = inp.streams.video[0]
    vin.thread_type = "AUTO"
    step, tb = _frame_step(vin), vin.time_base
    if start > 0:
        inp.seek(int(start / tb), stream=vin, backward=True)
    last_pts, offset, count = None, 0, 0
    for packet in _demux(inp, [vin], src):
        for frame in _decode(packet, src):
            pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + step)
            if last_pts is None and start > 0:
                if (pts + step) * tb <= start:  # decoded from the keyframe before start, not shown
                    continue
                offset = pts
            if last_pts is not None and pts <= last_pts:
                pts = last_pts + 1
            last_pts = pts
            yield DecodedFrame(frame_to_rgb(frame), pts - offset, float(pts * tb), getattr(frame, "rotation", 0) or 0,
                               index=count)
            count += 1
            if max_frames is not None and count >= max_frames:
                return


def audio_packets(inp, src, start=0.0):
    """(time in seconds, packet) for every audio packet of an open input in file order, from about `start`
    on (a seek). The input must stay open until the packets are written."""
    import av

    if start > 0:
        inp.seek(int(start * av.time_base), backward=True)
    for packet in _demux(inp, list(inp.streams.audio), src):
        if packet.dts is not None:  # None: the demuxer's end-of-stream marker
            yield float(_seconds(packet)), packet


def video_items(inp, src, *, audio_inp=None, start=0.0, max_frames=None):
    """What a video becomes, in order: its DecodedFrames (video_frames) and, between them, its audio
    packets (AudioPacket) up to each frame's time, retimed like the frames. The first item is a frame (its
    rotation goes into the output's header, which the first packet written writes). With a start, audio
    from before the first frame is left out; with max_frames reached, audio after the last frame's end.
    audio_inp: a second open input of the same file, for the audio (its own demuxer: the video's decoding
    stays the plain video_frames), or None for no audio."""
    vin = inp.streams.video[0]
    frame_seconds = float(_frame_step(vin) * vin.time_base)
    frames = video_frames(inp, src, start=start, max_frames=max_frames)
    if is_url(src):
        frames = watched_stream(frames, inp, src, frame_seconds=frame_seconds, max_frames=max_frames)
    first = next(frames, None)
    if first is None:
        return
    shift = first.time if start > 0 else None
    has_audio = audio_inp is not None and audio_inp.streams.audio
    audio = _kept_audio(audio_packets(audio_inp, src, start), shift) if has_audio else iter(())
    try:
        pending, count, end = next(audio, None), 0, None
        for frame in itertools.chain([first], frames):
            yield frame
            count += 1
            end = frame.time + frame_seconds
            while pending is not None and pending[0] < frame.time:
                yield pending[1]
                pending = next(audio, None)
        limit = end if max_frames is not None and count >= max_frames else math.inf
        while pending is not None and pending[0] < limit:
            yield pending[1]
            pending = next(audio, None)
    finally:
        getattr(audio, "close", lambda: None)()


def _kept_audio(packets, shift):
    """(time, AudioPacket) for the (time, packet)s at or after `shift` seconds, moved that much earlier
    (shift None: all of them, unchanged)."""
    for time_s, packet in packets:
        if shift is None or time_s >= shift:
            yield time_s, AudioPacket(_retime(packet, shift))


def _retime(packet, shift):
    """The packet moved `shift` seconds earlier (None: unchanged)."""
    if shift:
        delta = round(Fraction(shift).limit_denominator(10**9) / packet.time_base)
        if packet.pts is not None:
            packet.pts -= delta
        if packet.dts is not None:
            packet.dts -= delta
    return packet


class VideoSink:
    """Writes the items of video_items, upscaled, into an open output: frames through a VideoWriter,
    audio packets copied."""

    def __init__(self, out, writer, audio_out, dst):
        self.out, self.writer, self.audio_out, self.dst = out, writer, audio_out, dst

    def __call__(self, item):
        if isinstance(item, AudioPacket):
            _mux(self.out, item.packet, self.audio_out, self.dst)
            return
        if self.writer.frames == 0:
            _copy_rotation(item.rotation, self.writer.stream)
        self.writer.write(item.sr, item.pts)


def upscale_video_file(inference, src, dst, *, video_options, compare=False, start=0.0, max_frames=None,
                       progress=None, threaded=True, realtime=False, stats=None, pipe=None):
    """Upscale a video file or URL (from `start` seconds on, at most max_frames frames) into dst: decode ->
    upscale -> encode, streamed (threaded: the three overlap, see run_frames), keeping every frame's
    timestamp (variable frame rate too), its rotation, and the audio streams' packets unchanged (cut with
    the video). Returns the number of frames written.

    dst PIPE ("-"): YUV4MPEG2 video (no audio) to `pipe` (default: stdout's bytes), for a player; a reader
    that closes the pipe ends the run quietly (stats.reader_closed).
    realtime: keep pace with the source's clock and drop the frames the model has no time for (see
    RealtimeInbox); stats (a StreamStats) counts the frames shown and dropped.
    A URL that breaks off midway (StreamError) keeps what was written: the file is closed and kept, a pipe
    stops after a whole frame; the error is raised after that, saying so."""
    to_pipe = is_pipe(dst)
    stats = StreamStats() if stats is None else stats
    stats.realtime = realtime
    with open_video(src) as inp, (open_video(src) if inp.streams.audio and not to_pipe
                                  else contextlib.nullcontext()) as audio_inp:
        vin = inp.streams.video[0]
        width, height = vin.codec_context.width, vin.codec_context.height
        bar = _progress(progress, _expected_frames(inp, vin, start, max_frames), source_name(src))
        items = video_items(inp, src, audio_inp=audio_inp, start=start, max_frames=max_frames)
        compare_to = None if not compare or to_pipe else compare_path(dst)
        batch = inference.frames_per_batch(width, height)

        def run(write):
            sink = FrameSink(write, bar, compare_to, inference, stats)
            try:
                if realtime:  # the decoder keeps the source's pace; the model takes the newest frame
                    run_frames(paced(items, stats), inference.frames, sink, inbox=RealtimeInbox(stats))
                else:
                    run_frames(items, inference.frames, sink, frames_per_batch=batch, threaded=threaded)
            except StreamError as e:
                if sink.frames == 0:
                    raise
                return sink.frames, e  # the frames before the break are kept
            if sink.frames == 0:
                raise VideoError(f"{src}: the video has no frames" + (f" from --start {start:g} s on" if start else ""))
            return sink.frames, None

        if to_pipe:
            writer = Y4MWriter(sys.stdout.buffer if pipe is None else pipe, width * inference.scale,
                               height * inference.scale, rate=vin.average_rate or vin.guessed_rate,
                               sample_aspect=vin.sample_aspect_ratio)
            try:
                frames, broken = run(writer)
                writer.finish(stats.decoded if realtime else None)
            except PipeClosed:
                frames, broken = stats.shown, None
                stats.reader_closed = True
        else:
            with atomic_output(dst) as tmp, _open_output_video(tmp, dst) as out:
                # every stream must exist before the first packet is written (that writes the header)
                writer = VideoWriter(out, width * inference.scale, height * inference.scale, rate=vin.average_rate,
                                     time_base=vin.time_base, **video_options)
                if vin.sample_aspect_ratio:
                    writer.stream.codec_context.sample_aspect_ratio = vin.sample_aspect_ratio
                audio_out = {a.index: _copy_stream(out, a, dst) for a in inp.streams.audio}
                frames, broken = run(VideoSink(out, writer, audio_out, dst))
                writer.finish()
        bar.close()
    if broken is not None:
        kept = "the output stops" if to_pipe else f"{dst} is kept,"
        raise StreamError(f"{broken}; {kept} with the {frames} frames before it") from broken
    return frames


def _expected_frames(inp, stream, start, max_frames):
    """Frame count for the progress bar: from the header, or duration x frame rate, less what --start
    skips, capped by max_frames."""
    total = stream.frames or None
    if total is None and inp.duration and stream.average_rate:
        total = round(inp.duration / 1e6 * float(stream.average_rate))
    if total and start and stream.average_rate:
        total = max(0, total - round(start * float(stream.average_rate)))
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    return total


def _copy_stream(out, stream, dst):
    """An output stream taking the input stream's packets as they are (no re-encoding)."""
    import av

    try:
        return out.add_stream_from_template(stream)
    except (ValueError, av.error.FFmpegError) as e:
        raise VideoError(f"{dst}: cannot copy the {stream.codec_context.name} audio into {dst.suffix} "
                         f"({e}); use .mkv or .mp4") from e


def _copy_rotation(rotation, stream):
    """Keep a phone video's display rotation (its display matrix), so the output plays upright too."""
    if rotation and hasattr(stream, "set_display_rotation"):
        stream.set_display_rotation(rotation)


def _frame_step(stream):
    """One frame's duration in the stream's time base (for frames without timestamps)."""
    rate = stream.average_rate or stream.guessed_rate or 25
    return max(1, round(1 / (Fraction(rate) * stream.time_base))) if stream.time_base else 1


def _demux(inp, streams, src):
    """inp.demux(*streams), ending quietly at an early end of file and naming the file on corrupt data."""
    import av

    packets = inp.demux(*streams)
    while True:
        try:
            packet = next(packets)
        except (StopIteration, av.error.EOFError):
            return
        except av.error.ExitError as e:  # open_video's read timeout
            raise VideoError(f"{src}: the stream stalled (no data for {STREAM_READ_TIMEOUT:g} s)") from e
        except av.error.FFmpegError as e:
            raise VideoError(f"{src}: corrupt video data ({e})") from e
        yield packet


def _decode(packet, src):
    import av

    try:
        return packet.decode()
    except av.error.FFmpegError as e:
        raise VideoError(f"{src}: corrupt video data ({e})") from e


def _seconds(packet):
    """A packet's presentation time in seconds (its decoding time when it has no pts)."""
    return (packet.pts if packet.pts is not None else packet.dts) * packet.time_base


def _mux(out, packet, audio_out, dst):
    """Write an input audio packet, unchanged, into its copy stream of the output."""
    import av

    packet.stream = audio_out[packet.stream.index]
    try:
        out.mux(packet)
    except av.error.FFmpegError as e:
        raise VideoError(f"{dst}: cannot write the audio packets ({e}); try an .mkv output") from e


# --- streams: URLs in, YUV4MPEG2 out, real time ----------------------------------------------------------


def is_url(src):
    """True for an input PyAV opens itself (http://, https://, an HLS .m3u8 playlist's URL), not a path."""
    return isinstance(src, str) and bool(URL_PATTERN.match(src))


def is_pipe(dst):
    """True for -o -: the video goes to stdout as YUV4MPEG2."""
    return str(dst) == PIPE


def source_name(src):
    """A short name for an input: the file's name, or the last part of a URL's path."""
    if not is_url(src):
        return Path(src).name
    from urllib.parse import urlsplit

    return Path(urlsplit(src).path).name or "stream"


class StreamError(VideoError):
    """A URL that broke off midway (stalled, lost a segment, ended early): the frames before it are kept."""


def watched_stream(frames, inp, src, *, frame_seconds, max_frames=None):
    """video_frames of a URL, watched for what a network stream does wrong, which FFmpeg mostly passes over
    in silence: a stall (open_video's read timeout), a broken or missing segment (HLS skips it: the frame
    times jump), a stream that ends before the duration its header states. Each raises a StreamError that
    names the URL and where it stopped (frames so far, seconds into the stream)."""
    origin = inp.start_time / 1e6 if inp.start_time is not None else 0.0
    stated = inp.duration / 1e6 if inp.duration else None  # None: a live stream
    count, last = 0, None

    def stopped(what):
        at = 0.0 if last is None else last - origin
        return StreamError(f"{src}: {what}; stopped after {count} frames, {at:.2f} s into the stream")

    try:
        for frame in frames:
            gap = None if last is None else frame.time - last
            if gap is not None and gap > max(STREAM_GAP_SECONDS, STREAM_GAP_FRAMES * frame_seconds):
                raise stopped(f"{gap:.2f} s of the stream are missing (a broken or missing segment)")
            yield frame
            count, last = count + 1, frame.time
    except StreamError:
        raise
    except VideoError as e:  # a stall or corrupt data: say where
        raise stopped(failure_reason(src, e)) from e
    ended = 0.0 if last is None else last + frame_seconds - origin
    if stated is not None and (max_frames is None or count < max_frames) and ended < stated - STREAM_SHORT_SECONDS:
        raise stopped(f"the stream ended early, at {ended:.2f} s of the {stated:.2f} s its header states")


class PipeClosed(Exception):
    """The reader of -o - (a player) closed the pipe: the run ends quietly."""


class Y4MWriter:
    """Writes upscaled frames to a binary stream as YUV4MPEG2 (4:2:0, 8 bits, limited range), which mpv,
    ffplay and VLC play from a pipe. Each frame goes out in one write, so the stream ends at a frame
    boundary whenever the run stops. y4m cannot name its colour matrix, so frames are converted with the
    one players guess from the size: BT.709 above 576 lines, BT.601 up to it."""

    def __init__(self, stream, width, height, *, rate, sample_aspect=None):
        from av.video.reformatter import ColorRange, Colorspace

        self.stream = stream
        self.width, self.height = width + width % 2, height + height % 2  # 4:2:0 needs even sides
        rate = Fraction(rate or 25).limit_denominator(1_000_000)
        aspect = Fraction(sample_aspect) if sample_aspect else Fraction(1)
        self.rate = rate
        self.header = (f"YUV4MPEG2 W{self.width} H{self.height} F{rate.numerator}:{rate.denominator} Ip "
                       f"A{aspect.numerator}:{aspect.denominator} C420jpeg XCOLORRANGE=LIMITED\n").encode()
        self.colour = (Colorspace.ITU709 if self.height > 576 else Colorspace.ITU601, ColorRange.MPEG)
        self.frames = 0  # frames written, repeats included
        self.next_index, self.last = 0, None

    def __call__(self, item):
        """Write one upscaled frame (item.sr); frames dropped since the last one (by item.index) first repeat
        the last frame, so the stream keeps the source's clock."""
        if self.last is not None:
            for _ in range(item.index - self.next_index):
                self._write(self.last)
        self.last = self._yuv(item.sr)
        self._write(self.last)
        self.next_index = item.index + 1

    def finish(self, total=None):
        """Repeat the last frame for the frames dropped at the end (total: the frames the source had), flush."""
        if self.last is not None and total is not None:
            for _ in range(total - self.next_index):
                self._write(self.last)
        self._write(b"")

    def _yuv(self, rgb):
        import av

        rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        yuv = frame.reformat(format="yuv420p", dst_colorspace=self.colour[0], dst_color_range=self.colour[1])
        return b"FRAME\n" + yuv.to_ndarray().tobytes()  # the Y, U and V planes, back to back

    def _write(self, data):
        try:
            if self.frames == 0 and data:
                data = self.header + data
            self.stream.write(data)
            self.stream.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            _silence(self.stream)
            raise PipeClosed() from e
        self.frames += bool(data)


def _silence(stream):
    """Point a closed pipe's file descriptor at /dev/null, so Python's flush at exit finds no broken pipe."""
    import os

    with contextlib.suppress(AttributeError, OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


@dataclass
class StreamStats:
    """What a video run did with the source's frames: all of them shown, or under --realtime some dropped."""

    realtime: bool = False
    decoded: int = 0  # frames the decoder released (--realtime)
    shown: int = 0  # frames upscaled and written
    dropped: int = 0  # frames replaced by a newer one before the model could take them (--realtime)
    reader_closed: bool = False  # -o -: the player quit
    started: float | None = None  # perf_counter at the first frame

    def rate(self):
        """Frames shown per second of wall time since the first frame."""
        elapsed = time.perf_counter() - self.started if self.started is not None else 0.0
        return self.shown / elapsed if elapsed > 0 else 0.0

    def describe(self):
        """The --realtime part of the summary."""
        return (f"{self.shown} frames shown, {self.dropped} dropped of {self.decoded} "
                f"({self.rate():.2f} frames/s shown)")


def paced(items, stats):
    """--realtime: items (decoding happens here) released no earlier than their frame's time on the source's
    clock, counted from the first frame, so a file plays as a live stream would; counts stats.decoded."""
    origin = None
    for item in items:
        if _is_frame(item):
            now = time.perf_counter()
            if origin is None:
                origin = (now, item.time)
                stats.started = now
            else:
                wait = origin[0] + (item.time - origin[1]) - now
                if wait > 0:
                    time.sleep(wait)
            stats.decoded += 1
        yield item


class RealtimeInbox:
    """The queue between decoder and model under --realtime: never full, so the decoder never waits for the
    model. A new frame replaces the frame still waiting (dropped: the model was too slow for it); other
    items (audio packets) wait in order. queue.Queue's put/get, as run_frames uses them."""

    def __init__(self, stats):
        self.stats, self.items, self.ready = stats, collections.deque(), threading.Condition()

    def put(self, item, timeout=None):
        with self.ready:
            if _is_frame(item):
                waiting = next((i for i, old in enumerate(self.items) if _is_frame(old)), None)
                if waiting is not None:
                    del self.items[waiting]
                    self.stats.dropped += 1
            self.items.append(item)
            self.ready.notify()

    def get(self, timeout=None):
        with self.ready:
            if not self.ready.wait_for(lambda: self.items, timeout):
                raise queue.Empty
            return self.items.popleft()


# --- --compare --------------------------------------------------------------------------------------------


def model_label(path):
    """How --compare names a model: a shipped one by its --model name ("shipped psnr"), any other by its folder
    and stem (runs/demo/generator.keras: "demo/generator")."""
    path = Path(path).resolve()
    shipped = [name for name, file in MODEL_NAMES.items() if Path(file).resolve() == path]
    return f"shipped {shipped[0]}" if shipped else f"{path.parent.name}/{path.stem}"


def compare_path(dst):
    """Where --compare writes its side-by-side image: beside the output, <stem>_compare.png."""
    return dst.with_name(dst.stem + COMPARE_SUFFIX)


def detail_crop(rgb, size):
    """(top, left) of the size x size crop with the most detail (largest mean gradient), on a coarse grid."""
    height, width = rgb.shape[:2]
    grey = rgb.astype(np.float32).mean(axis=2)
    energy = np.zeros_like(grey)
    energy[:, 1:] += np.abs(np.diff(grey, axis=1))
    energy[1:, :] += np.abs(np.diff(grey, axis=0))
    integral = np.pad(energy.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    best, best_pos = -1.0, (0, 0)
    step = max(1, size // 4)
    for top in range(0, height - size + 1, step):
        for left in range(0, width - size + 1, step):
            total = (integral[top + size, left + size] - integral[top, left + size]
                     - integral[top + size, left] + integral[top, left])
            if total > best:
                best, best_pos = total, (top, left)
    return best_pos


def write_compare(path, lr_rgb, sr_rgb, scale, label="model", others=()):
    """Write a labelled side-by-side PNG: bicubic | model (| each of others, (label, model) pairs, run on the crop
    with a margin of its overlap), for the most detailed crop of the input."""
    height, width = lr_rgb.shape[:2]
    crop_h, crop_w = min(COMPARE_CROP, height), min(COMPARE_CROP, width)
    top, left = detail_crop(lr_rgb, min(crop_h, crop_w)) if crop_h == crop_w else (0, 0)
    lr = lr_rgb[top : top + crop_h, left : left + crop_w]
    panels = [(f"bicubic x{scale}", resize(lr, (crop_w * scale, crop_h * scale), "bicubic")),
              (f"{label} x{scale}", sr_rgb[top * scale : (top + crop_h) * scale, left * scale : (left + crop_w) * scale])]
    for other_label, model in others:
        margin = auto_overlap(model)
        t0, l0 = max(0, top - margin), max(0, left - margin)
        out = upscale_array(model, lr_rgb[t0 : top + crop_h + margin, l0 : left + crop_w + margin])
        panels.append((f"{other_label} x{scale}", out[(top - t0) * scale : (top - t0 + crop_h) * scale,
                                                      (left - l0) * scale : (left - l0 + crop_w) * scale]))
    gap, band = 8, 28
    canvas = Image.new("RGB", (len(panels) * (crop_w * scale + gap) - gap, crop_h * scale + band), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    for i, (text, pixels) in enumerate(panels):
        canvas.paste(Image.fromarray(pixels), (i * (crop_w * scale + gap), band))
        draw.text((i * (crop_w * scale + gap) + 4, 4), text, fill=(0, 0, 0), font=font)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")


# --- the command line -------------------------------------------------------------------------------------


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


@dataclass
class Job:
    """One input file and the output it becomes."""

    src: Path | str  # a path, or a URL (is_url)
    dst: Path  # PIPE ("-"): stdout
    kind: str  # "image", "animation" or "video"


def media_kind(path):
    """"video" for a URL or by extension, "animation" for a multi-frame GIF/WebP/PNG, else "image"."""
    if is_url(path):
        return "video"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in ANIMATED_SUFFIXES:
        info = source_info(path)
        if info is not None and info.frames > 1:
            return "animation"
        if suffix == ".gif" and info is not None:
            return "animation"  # a one-frame GIF still goes out as a GIF with its palette and transparency
    return "image"


def output_suffix(src, kind, fmt):
    """The output extension: --format where it suits the kind of input, else the input's own."""
    allowed = {"image": STILL_FORMATS, "animation": ANIMATION_FORMATS, "video": VIDEO_FORMATS}[kind]
    if fmt is not None and fmt in allowed:
        return "." + fmt
    return src.suffix


def find_media(folder, exclude=None):
    """Image and video files under folder, recursively, sorted; hidden files, atomic_output leftovers and
    anything inside `exclude` (the output folder) are left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or is_temp_output(path) or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not path.name.endswith(COMPARE_SUFFIX):
            found.append(path)
    return found


def plan_jobs(inputs, output, fmt=None):
    """Pair every input file (or URL) with its output path. Returns (jobs, problems): problems are (path,
    reason) for folders with nothing to upscale. An input that does not exist raises UsageError. Output PIPE
    takes one video."""
    output = Path(output)
    inputs = [p if is_url(p) else Path(p) for p in inputs]
    if is_pipe(output):
        if len(inputs) != 1 or media_kind(inputs[0]) != "video":
            raise ValueError("-o - (YUV4MPEG2 to stdout, for a player) takes one video file or URL")
        if not is_url(inputs[0]) and not inputs[0].is_file():
            raise UsageError(f"{inputs[0]}: no such file or folder")
        return [Job(inputs[0], output, "video")], []
    single_file = (len(inputs) == 1 and (is_url(inputs[0]) or inputs[0].is_file()) and output.suffix
                   and not output.is_dir())
    if not single_file and output.exists() and not output.is_dir():
        raise ValueError(f"-o {output} is a file; several inputs or a folder need an output folder")
    jobs, problems = [], []
    if single_file:
        src = inputs[0]
        kind = media_kind(src)
        if fmt is not None and output.suffix.lower().lstrip(".") not in {fmt, "jpeg" if fmt == "jpg" else fmt}:
            raise ValueError(f"--format {fmt} disagrees with the output name {output}")
        return [Job(src, output, kind)], problems
    for src in inputs:
        if src.is_dir():
            base = output if len(inputs) == 1 else output / src.resolve().name
            files = find_media(src, exclude=output.resolve())
            if not files:
                problems.append((src, "no images or videos in this folder"))
            for path in files:
                kind = media_kind(path)
                jobs.append(Job(path, (base / path.relative_to(src)).with_suffix(output_suffix(path, kind, fmt)),
                                kind))
        elif is_url(src):
            suffix = "." + fmt if fmt in VIDEO_FORMATS else ".mp4"
            jobs.append(Job(src, (output / source_name(src)).with_suffix(suffix), "video"))
        elif src.is_file():
            kind = media_kind(src)
            jobs.append(Job(src, (output / src.name).with_suffix(output_suffix(src, kind, fmt)), kind))
        else:  # a missing input is a usage error: nothing runs (exit 2), as for any other bad argument
            raise UsageError(f"{src}: no such file or folder")
    return jobs, problems


def _progress(bar, total, name):
    """A tqdm bar (frames, with frames/s and ETA), or a silent stand-in when progress is off."""
    if bar is False:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=name, leave=False, dynamic_ncols=True)


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass


def parse_time(text):
    """Seconds from "12.5", "1:02.5" (MM:SS) or "01:02:03.5" (HH:MM:SS); for --start."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) > 3 or any(p == "" for p in parts):
            raise ValueError(text)
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use seconds (12.5) or HH:MM:SS[.ms]") from None
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    if seconds < 0 or not math.isfinite(seconds) or any(v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use seconds (12.5) or HH:MM:SS[.ms]")
    return seconds


def parse_args(argv=None):
    """The command line, parsed (argparse exits 2 on bad syntax)."""
    names = ", ".join(f"{name} ({path.name})" for name, path in MODEL_NAMES.items())
    p = argparse.ArgumentParser(
        description="Upscale images, animated GIFs and videos with a trained SRGAN/SRResNet generator.",
        epilog="Examples: upscale.py photo.jpg -o photo_x4.png | upscale.py photos/ -o out/ --format png | "
               "upscale.py anim.gif -o anim_x4.gif | upscale.py clip.mp4 -o clip_x4.mp4 --crf 20 | "
               "upscale.py clip.mp4 -o preview.mp4 --start 1:30 --max-frames 48 --model gan",
    )
    p.add_argument("inputs", nargs="+",
                   help="image, GIF or video files, folders (recursive), or video URLs (http/https, HLS .m3u8)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output file (one input) or folder (several inputs or a folder; the tree is mirrored); "
                        "- : one video as YUV4MPEG2 to stdout, for a player (upscale.py URL -o - | mpv -)")
    p.add_argument("--model", default=None,
                   help=f"a shipped model by name: {names}; or a generator .keras file (default: psnr)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute in float32 or bfloat16; auto (default): for videos and animations the faster of the "
                        "two, timed on a few frames at start-up (bf16 tried only on a GPU or a CPU with native "
                        "bfloat16, AVX512_BF16/AMX); for still images bf16 where native, else fp32")
    p.add_argument("--compile", nargs="?", choices=presets.SWITCHES, const="on", default="auto",
                   help="run the model XLA-compiled (one compile per tile shape, seconds each); auto (default): for "
                        "videos and animations, whichever is faster, timed on a few frames at start-up (the summary "
                        "says what ran); off for still images")
    p.add_argument("--tile", type=int, default=None,
                   help="tiles hold at most TILE x TILE LR pixels, shaped to the image (default: from free memory); "
                        "must exceed twice the overlap")
    p.add_argument("--overlap", type=int, default=None,
                   help="LR pixels shared by neighbouring tiles (default: from the model's receptive field)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per model call (default: as many as fit)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format for folder outputs (images: png/jpg/webp/gif; animations: gif/webp/png/"
                        "video; videos: mp4/mkv/webm/mov); inputs it does not suit keep their own")
    p.add_argument("--codec", default=None, help=f"video encoder (default {DEFAULT_VIDEO_CODEC}; libvpx-vp9 for webm)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF,
                   help=f"constant-quality factor, lower is better (default {DEFAULT_CRF}: visually near-lossless "
                        "for x264)")
    p.add_argument("--x264-preset", "--preset", dest="preset", choices=X264_PRESETS, default=DEFAULT_PRESET,
                   metavar="PRESET",
                   help=f"x264/x265 speed preset (default {DEFAULT_PRESET}: keeps up with the model; the quality "
                        "is set by --crf, slower presets only make the file smaller)")
    p.add_argument("--pix-fmt", default=DEFAULT_PIX_FMT, help="video pixel format")
    p.add_argument("--start", type=parse_time, default=0.0,
                   help="videos and animations: begin at this time, in seconds or HH:MM:SS[.ms]")
    p.add_argument("--max-frames", type=int, default=None,
                   help="videos and animations: stop after this many frames (a preview)")
    p.add_argument("--realtime", action="store_true",
                   help="videos: keep pace with the source's clock, dropping the frames the model has no time for "
                        "(a y4m output repeats the last frame for them); reports frames shown and dropped")
    p.add_argument("--compare", action="store_true", help="also write OUT_compare.png: bicubic | model on a crop")
    p.add_argument("--compare-with", metavar="MODEL", help=f"--compare, with a third panel: this model's output "
                                                            f"({', '.join(MODEL_NAMES)} or a .keras file)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_args(args):
    """Check the settings that need no model, and the model file (its receptive field, read from the file,
    gives the overlap a --tile must exceed). Returns the model's path; raises UsageError or
    FileNotFoundError."""
    for name in ("tile", "batch_size", "max_frames"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.overlap is not None and args.overlap < 0:
        raise UsageError("--overlap must be at least 0")
    path = resolve_model_path(args.model)
    if args.compare_with is not None:
        args.compare, args.compare_with = True, resolve_model_path(args.compare_with)
    try:
        radius = file_receptive_radius(path)
    except ValueError as e:
        raise UsageError(f"cannot load the model {path}: {e}") from e
    if args.tile is not None:
        overlap = args.overlap if args.overlap is not None else overlap_for_radius(radius)
        if args.tile <= 2 * overlap:
            source = "--overlap" if args.overlap is not None else f"the overlap {path.name} needs"
            raise UsageError(f"--tile {args.tile} is too small for {source} ({overlap}): use --tile "
                             f"{2 * overlap + 1} or more" + ("" if args.overlap is not None else
                                                              ", or a smaller --overlap"))
    return path


def check_job(job, inputs, overwrite, compare):
    """None when the job may run, else ("skipped"|"failed", reason)."""
    if is_pipe(job.dst):
        return check_input(job)
    dst = job.dst.resolve()
    outputs = [dst, compare_path(dst)] if compare else [dst]
    for out in outputs:
        if out in inputs:
            return "failed", f"refusing to overwrite the input {out}"
    if not overwrite:
        existing = [str(out) for out in outputs if out.exists()]
        if existing:
            return "skipped", f"{', '.join(existing)} exists (use --overwrite to replace it)"
    if job.kind == "image" and job.dst.suffix.lower() in VIDEO_SUFFIXES:
        return "failed", f"a still image cannot be written as a video ({job.dst.suffix})"
    if job.kind == "video" and job.dst.suffix.lower() not in VIDEO_SUFFIXES:
        return "failed", f"a video can be written as {', '.join(sorted(VIDEO_SUFFIXES))}, not {job.dst.suffix}"
    return check_input(job)


def check_input(job):
    """None when the input looks usable from its header, else ("failed", reason): a cheap look before any
    model is loaded (damage further into a file is found when it is decoded)."""
    try:
        if job.kind == "video":
            open_video(job.src).close()
        else:
            resizer.image_size(job.src)
    except (ImageLoadError, VideoError) as e:
        return "failed", failure_reason(job.src, e)
    return None


def failure_reason(src, error):
    """The error's message without the file name in front (the report names the file once)."""
    text = str(error)
    for name in (str(src), str(Path(src).resolve())):
        if text.startswith(name + ": "):
            return text[len(name) + 2 :]
    if isinstance(error, ValueError | OSError | MemoryError) and text:
        return text
    return f"{type(error).__name__}: {text}"


def run_job(inference, job, args, progress):
    """Upscale one input into its output; returns a note for the summary, or None."""
    video_options = dict(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
    timing = dict(start=args.start, max_frames=args.max_frames)
    started, stats = time.perf_counter(), StreamStats()
    if job.kind == "video":
        frames = upscale_video_file(inference, job.src, job.dst, video_options=video_options, compare=args.compare,
                                    progress=progress, realtime=args.realtime, stats=stats,
                                    pipe=getattr(args, "pipe", None), **timing)
    elif job.kind == "animation" and (job.dst.suffix.lower() == ".gif" or animation_info(job.src)[0] > 1):
        frames = upscale_animation_file(inference, job.src, job.dst, video_options=video_options,
                                        compare=args.compare, progress=progress, **timing)
    else:  # a still image, or a one-frame animation written in a still format
        return upscale_image_file(inference, job.src, job.dst, compare=args.compare)
    seconds = time.perf_counter() - started
    note = f"{frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)"
    if stats.realtime:
        note += f"; realtime: {stats.describe()}"
    if stats.reader_closed:
        note += "; the reader closed the pipe"
    return note


def main(argv=None):
    """Upscale every input; print a summary; exit 0 when nothing failed, 1 otherwise, 2 for bad usage.
    With -o - stdout carries the video, so the summary goes to stderr."""
    args = parse_args(argv)
    if not is_pipe(args.output):
        return upscale_all(args)
    args.pipe = sys.stdout.buffer
    with contextlib.redirect_stdout(sys.stderr):
        return upscale_all(args)


def upscale_all(args):
    """main's work, for parsed arguments."""
    started = time.perf_counter()
    try:
        model_path = check_args(args)
        jobs, problems = plan_jobs(args.inputs, args.output, args.format)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"upscale: {e}", file=sys.stderr)
        return 2
    inputs = {job.src.resolve() for job in jobs if not is_url(job.src)}
    done, skipped, failed, notes = [], [], list(problems), []
    seen, inference, runtime, leftovers = set(), None, None, 0
    progress = False if args.no_progress else None
    outer = None
    if len(jobs) > 1 and not args.no_progress:
        from tqdm import tqdm

        outer = tqdm(total=len(jobs), unit="file", desc="upscale", dynamic_ncols=True)
    for job in jobs:
        verdict = check_job(job, inputs, args.overwrite, args.compare)
        if verdict is None and job.dst.resolve() in seen:
            verdict = ("failed", f"another input also writes {job.dst}")
        seen.add(job.dst.resolve())
        if verdict is not None:
            (skipped if verdict[0] == "skipped" else failed).append((job.src, verdict[1]))
        else:
            if inference is None:
                try:
                    model, runtime = load_fastest(model_path, args.precision, args.compile, jobs, progress)
                    others = tuple((model_label(path), load_model(path, args.precision))
                                   for path in [args.compare_with] if path is not None)
                except Exception as e:  # corrupt, or not a generator: nothing can run
                    print(f"upscale: cannot load the model {model_path}"
                          + (f" or {args.compare_with}" if args.compare_with else "") + f": {type(e).__name__}: {e}",
                          file=sys.stderr)
                    return 2
                if any(model_scale(other) != model_scale(model) for _, other in others):
                    print(f"upscale: --compare-with {args.compare_with} does not upscale x{model_scale(model)} as "
                          f"{model_path} does", file=sys.stderr)
                    return 2
                inference = Inference(model, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                      label=model_label(model_path), others=others)
            if not is_pipe(job.dst):
                leftovers += remove_dead_temp_outputs(job.dst, args.compare)
            try:
                note = run_job(inference, job, args, progress)
                done.append(job)
                if note:
                    notes.append((job.src, note))
            except KeyboardInterrupt:
                print(f"\nupscale: interrupted during {job.src}; no partial output was left", file=sys.stderr)
                return 130
            except Exception as e:  # one bad file must not stop the batch; it is reported below
                failed.append((job.src, failure_reason(job.src, e)))
        if outer is not None:
            outer.update()
    if outer is not None:
        outer.close()
    for src, reason in skipped:
        print(f"skipped {src}: {reason}")
    for src, note in notes:
        print(f"note    {src}: {note}")
    for src, reason in failed:
        print(f"FAILED  {src}: {reason}", file=sys.stderr)
    print(f"upscale: {len(done)} done, {len(skipped)} skipped, {len(failed)} failed "
          f"in {time.perf_counter() - started:.1f} s" + (f" -> {args.output}" if done else "")
          + (f"; {runtime}" if runtime else "")
          + (f"; removed {leftovers} temporary file(s) a killed earlier run left" if leftovers else ""))
    return 1 if failed else 0


def remove_dead_temp_outputs(dst, compare):
    """Delete the temporary outputs that a killed earlier run left for dst (and its compare image); a live
    process's are left alone. Returns how many were removed."""
    leftovers = [p for out in ([dst, compare_path(dst)] if compare else [dst]) for p in resizer.dead_temp_outputs(out)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


if __name__ == "__main__":
    sys.exit(main())
