"""Inference: load a generator, pick its fastest precision and runtime, and upscale images of any size.

    model = load_model("stream")                     # a shipped name, a .keras path, or None for the default
    sr = upscale_array(model, rgb_uint8)             # one image, any size: tiled, cross-faded, no seams
    srs = upscale_batch(model, crops)                # many small images, several per model call

Big images are cut into overlapping tiles that go through the model in batches, and the tile outputs are
cross-faded with a raised-cosine window, so there are no seams and memory stays bounded whatever the image
size. The tiles are sized from the memory the model's widest feature map needs, and a model that runs out
of memory is retried with smaller batches and tiles, remembered per model. For videos and animations
load_fastest times the candidate precisions (fp32, bf16) and XLA on and off on a few frames and keeps the
fastest. For a luma-first model (the stream preset) upscale_planes makes what the YUV video path
(media.Yuv420Frames) writes: the output's luma without its RGB, chroma planes interpolated as the model
interpolates chroma, both as uint8 at a video's levels, in one graph call a frame where it can
(planes_model). TensorFlow is imported only when a model is loaded.
"""

import functools
import json
import math
import os
import re
import time
import warnings
import weakref
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import presets
import resizer
from resizer import to_float

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
RUNTIME_TRIALS = 2  # --compile/--precision auto: timed frames per candidate, in interleaved rounds, after a warm-up
BT709_LUMA = (0.2126, 0.7152, 0.0722)  # Kr, Kg, Kb: the luma load_fastest times the YUV path with
CPU_BF16_VARIABLE = "SR_CPU_BF16"  # on/off: override cpu_has_native_bf16's detection (tests run both paths on any CPU)
# -----------------------------------------------------------------------------


# --- the model -----------------------------------------------------------------------------------------


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


def load_fastest(path, precision="auto", compile_choice="auto", frame_size=None, progress=None, luma=False):
    """The model to upscale with, and a note for the summary (None when nothing was timed).

    frame_size: (width, height) of the frames of the videos or animations to upscale, None when there are
    only still images. With frames and --precision or --compile auto, the candidates (fp32, and bf16 where
    the hardware computes it natively; XLA off and on) are timed on frames of that size (fastest) and the
    fastest runs: which one wins depends on the CPU, the model and the frame size (bf16 with XLA ran 1.7x
    slower than bf16 without it for the video model on a busy AVX-512/AMX CPU: benchmarks/bench_upscale.py).
    Otherwise resolve_precision's and wants_compile's rules decide. progress: False for no progress bar.
    luma: time what the YUV path runs (upscale_luma: the network and the luma only), not the RGB output."""
    size = frame_size
    precisions = [precision] if precision != "auto" else ["fp32"] + (["bf16"] if resolve_precision() == "bf16" else [])
    compiles = [compile_choice == "on"] if compile_choice != "auto" else [False, True]
    import runtime  # noqa: F401  (before Keras: TensorFlow's C++ start-up lines held back)

    # isort: split
    import keras

    if keras.backend.backend() != "tensorflow":
        compiles = [False]  # compile_model changes nothing there
    if size is None or len(precisions) * len(compiles) == 1:
        model = load_model(path, precision)
        return (compile_model(model) if wants_compile(compile_choice, size is not None) else model), None
    models = {}
    for name in precisions:
        for xla in compiles:
            model = load_model(path, name)
            models[name + (" XLA" if xla else "")] = compile_model(model) if xla else model
    frame = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    started = time.perf_counter()
    bar = progress_bar(progress, len(models) * (1 + RUNTIME_TRIALS), "timing the runtimes")
    bar.unit = "call"

    def timed(model):
        def run():
            if luma:
                upscale_luma(model, frame, BT709_LUMA)
            else:
                upscale_array(model, frame)
            bar.update()

        return run

    best, seconds = fastest({name: timed(model) for name, model in models.items()})
    bar.close()
    timings = ", ".join(f"{name} {1 / t:.2f}" for name, t in seconds.items())
    path = "the YUV path's luma" if luma else "the RGB path"
    return models[best], (f"ran {best}, the fastest for {path} on {size[0]}x{size[1]} frames here (frames/s: {timings}; "
                          f"timed in {time.perf_counter() - started:.0f} s)")


def wants_compile(choice, frames):
    """--compile on/off, or auto: on when there are frames to upscale (videos, animations: many frames of
    one shape amortise the compile; a still image would mostly wait for it)."""
    if choice != "auto":
        return choice == "on"
    return bool(frames)


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

    def luma_frames(self, rgbs, luma_weights):
        """The YUV video path: the luma (float (s*H, s*W)) of each uint8 RGB frame upscaled (upscale_luma)."""
        return [upscale_luma(self.model, rgb, luma_weights, tile=self.tile, overlap=self.overlap,
                             batch_size=self.batch_size) for rgb in rgbs]

    def planes(self, rgb, chroma, luma_weights, full_range):
        """The YUV video path: one frame's uint8 (Y, chroma) planes at a video's levels (upscale_planes)."""
        return upscale_planes(self.model, rgb, chroma, luma_weights, full_range=full_range, tile=self.tile,
                              overlap=self.overlap, batch_size=self.batch_size)

    def frames_per_batch(self, width, height):
        """How many frames of this size go to the model together: as many whole frames as one call holds."""
        if self.tile is not None and width * height > self.tile * self.tile:
            return 1
        return int(np.clip(auto_tile_pixels(self.model) // max(1, width * height), 1, MAX_FRAME_BATCH))


# --- upscaling -----------------------------------------------------------------------------------------


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
    return to_uint8_in_bands(upscale_float(model, to_float(rgb), tile=tile, overlap=overlap, batch_size=batch_size))


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
        area = call_area(tile, pixels)
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
    whole_area = call_area(tile, pixels)
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
        out.extend(to_uint8_in_bands(frame) for frame in sr)
    return np.stack(out)


def to_uint8_in_bands(x, rows=64, *, scale=255.0, offset=0.0, low=0.0, high=255.0):
    """to_uint8 (the same steps, so the same values) a band of rows at a time, in place in one temporary:
    it stays in cache and memory stays small for a 4K output (a frame's float RGB is 44 MB at 2560x1440).
    scale, offset, low, high: x * scale + offset, clipped to [low, high] (limited-range video luma: 219, 16,
    16, 235)."""
    out = np.empty(x.shape, np.uint8)
    for top in range(0, x.shape[0], rows):
        band = np.multiply(x[top : top + rows], np.float32(scale), dtype=np.float32)
        if offset:
            band += np.float32(offset)
        np.nan_to_num(band, copy=False, nan=low, posinf=high, neginf=low)
        np.rint(np.clip(band, low, high, out=band), out=band)
        out[top : top + rows] = band
    return out


# --- the YUV video path: luma through the network, chroma interpolated -----------------------------------


def upscale_luma(model, rgb_uint8, luma_weights, *, tile=None, overlap=None, batch_size=None):
    """The luma (Y, float32 (s*H, s*W) in [0, 1], not clipped) of what a luma-first model (see luma_upsample)
    makes of a uint8 (H, W, 3) RGB image, without making its RGB: the network runs on the image as it does
    for upscale_array, and its luma residual is added to the interpolated luma of the image. luma_weights:
    (Kr, Kg, Kb) of the output's colour matrix (BT.709: 0.2126, 0.7152, 0.0722). Adding the residual to
    R, G and B alike adds it to luma whatever the matrix, so this is, to float rounding, the luma of
    upscale_array's output before it is clipped and rounded. Tiled as upscale_array; the model (fp32 or
    bf16, XLA or not) is the one given."""
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"upscale_luma expects a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
    luma = luma_model(model, luma_weights)
    return upscale_float(luma, to_float(rgb), tile=tile, overlap=overlap, batch_size=batch_size)[..., 0]


def upscale_planes(model, rgb_uint8, chroma, luma_weights, *, full_range=False, tile=None, overlap=None,
                   batch_size=None):
    """The YUV video path's output planes of one frame, uint8 at a video's levels (video_levels): Y
    (s*H, s*W) and chroma (ceil(s*H/2), ceil(s*W/2), 2). chroma: the source's 4:2:0 chroma planes (h, w, 2),
    float, centred ([-0.5, 0.5]) and already in the output's colour matrix; luma_weights: the output
    matrix's (Kr, Kg, Kb). Where the frame goes through the model in one call on Keras (XLA or not), one
    graph makes all of it (planes_model: the luma, the chroma interpolation, the levels; a frame's planes
    cost 36 against 44 ms made in three steps, stream model, bf16, 640x360), and so on an optional runtime
    that can run that graph (OpenVINO); else (tiles, ONNX Runtime) upscale_luma's luma goes through the rest
    of it (finish_model) on Keras. The options are upscale_array's."""
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"upscale_planes expects a uint8 (H, W, 3) RGB array, got {rgb.dtype} {rgb.shape}")
    chroma = np.asarray(chroma, np.float32)
    scale = _state(model).scale
    height, width = rgb.shape[0] * scale, rgb.shape[1] * scale
    # an odd source's last chroma sample covers half a pixel past its edge: cut to the output's chroma size
    chroma_size = ((height + 1) // 2, (width + 1) // 2)
    one_graph = (planes_model(model, luma_weights, full_range)
                 if _fits_one_call(model, rgb.shape[0], rgb.shape[1], tile, overlap, batch_size) else None)
    if one_graph is not None:
        try:
            return _cut_planes(_forward(one_graph)([to_float(rgb)[None], chroma[None]]), chroma_size)
        except Exception as e:  # out of memory in one call: the tiled path below adapts
            if not is_out_of_memory(e):
                raise
    luma = upscale_luma(model, rgb, luma_weights, tile=tile, overlap=overlap, batch_size=batch_size)
    return _cut_planes(finish_model(model, full_range).predict_on_batch([luma[None, ..., None], chroma[None]]),
                       chroma_size)


def _cut_planes(planes, chroma_size):
    """(Y (H, W), chroma (h, w, 2)) of a planes or finish model's batch of one, chroma cut to chroma_size."""
    y, uv = (np.asarray(plane)[0] for plane in planes)
    return y[..., 0], uv[: chroma_size[0], : chroma_size[1]]


def video_levels(full_range, *, chroma):
    """to_uint8_in_bands' (and generator.VideoLevels') scale, offset and clip for luma ([0, 1]) or centred
    chroma ([-0.5, 0.5]) in full or limited range (luma 16-235, chroma 16-240, as an RGB image converts)."""
    if full_range:
        return dict(scale=255.0, offset=128.0 if chroma else 0.0, low=0.0, high=255.0)
    return dict(scale=224.0, offset=128.0, low=16.0, high=240.0) if chroma else \
        dict(scale=219.0, offset=16.0, low=16.0, high=235.0)


def _fits_one_call(model, height, width, tile, overlap, batch_size):
    """Whether upscale_float would take a frame of this size in one call."""
    state = _state(model)
    overlap = state.overlap if overlap is None else int(overlap)
    tile, pixels, _ = state.reduced.get((tile, overlap, batch_size), (tile, auto_tile_pixels(model), batch_size))
    return height * width <= call_area(tile, pixels)


def luma_upsample(model):
    """The LumaUpsample layer a luma-first generator (the stream preset) ends in, or None: its network predicts
    a luma residual and its chroma is interpolated."""
    from generator import LumaUpsample

    return next((layer for layer in model.layers if isinstance(layer, LumaUpsample)), None)


def luma_model(model, luma_weights):
    """A model (uint8-range RGB in [0, 1] (N, H, W, 3) -> luma (N, s*H, s*W, 1)) sharing the luma-first
    model's layers and weights: the network up to its LumaUpsample, whose residual is added to the
    interpolated luma (a fixed 1x1 convolution with luma_weights) instead of to R, G and B. Made once per
    model and weights; XLA-compiled when the model is (compile_model)."""
    state = _state(model)
    weights = tuple(float(w) for w in luma_weights)
    if weights not in state.luma:
        import keras

        from generator import LumaUpsample

        layer = luma_upsample(model)
        if layer is None:
            raise ValueError(f"{model.name} predicts RGB: only a luma-first model (preset stream) has a luma path")
        image, residual = layer.input
        to_luma = keras.layers.Conv2D(1, 1, use_bias=False, trainable=False, dtype="float32", name="to_luma")
        luma = to_luma(image)
        to_luma.set_weights([np.asarray(weights, np.float32).reshape(1, 1, 3, 1)])
        sr = LumaUpsample(layer.scale, layer.interpolation, dtype="float32", name="sr_luma")([luma, residual])
        state.luma[weights] = keras.Model(model.input, sr, name=f"{model.name}_luma")
    luma = state.luma[weights]
    if state.derive is not None and _state(luma).compiled is None:
        state.derive(luma, weights)  # it runs as the model runs: XLA-compiled, or on the model's runtime
    return luma


def planes_model(model, luma_weights, full_range=False):
    """A model ([RGB (N, H, W, 3) in [0, 1], chroma (N, h, w, 2) centred] -> [Y (N, s*H, s*W, 1), chroma
    (N, s*h, s*w, 2)], uint8 at video_levels) sharing the luma-first model's layers and weights: luma_model
    and finish_model in one graph. Made once per model, weights and range; XLA-compiled when the model is
    (compile_model); on the model's optional runtime when it runs on one (run_forward_on's planes_forward),
    or None where that runtime cannot run the graph."""
    state = _state(model)
    key = (tuple(float(w) for w in luma_weights), bool(full_range))
    if key not in state.planes:
        import keras

        luma, finish = luma_model(model, luma_weights), finish_model(model, full_range)
        chroma = keras.Input((None, None, 2), dtype="float32", name="chroma")
        planes = keras.Model([luma.input, chroma], finish([luma.output, chroma]), name=f"{model.name}_planes")
        if state.runs_on == "xla":
            compile_model(planes)
        elif state.runs_on == "runtime":
            forward = state.derive_planes(key[0], finish) if state.derive_planes else None
            planes = run_forward_on(planes, forward) if forward else None
        state.planes[key] = planes
    return state.planes[key]


def finish_model(model, full_range=False):
    """The YUV path's last steps as a model: [luma (N, s*H, s*W, 1) float, chroma (N, h, w, 2) centred] ->
    [Y, chroma (N, s*h, s*w, 2)] uint8 at video_levels: the chroma interpolated as the luma-first model
    interpolates it (generator.ChromaUpsample), both planes to a video's levels (generator.VideoLevels)."""
    state = _state(model)
    if full_range not in state.finish:
        import keras

        from generator import ChromaUpsample, VideoLevels

        layer = luma_upsample(model)
        luma = keras.Input((None, None, 1), dtype="float32", name="luma")
        chroma = keras.Input((None, None, 2), dtype="float32", name="chroma")
        upsampled = ChromaUpsample(layer.scale, layer.interpolation, dtype="float32", name="chroma_upsample")(chroma)
        y = VideoLevels(**video_levels(full_range, chroma=False), dtype="float32", name="y_levels")(luma)
        uv = VideoLevels(**video_levels(full_range, chroma=True), dtype="float32", name="chroma_levels")(upsampled)
        state.finish[full_range] = keras.Model([luma, chroma], [y, uv], name=f"{model.name}_finish")
    return state.finish[full_range]


# --- what is remembered per model ----------------------------------------------------------------------


@dataclass
class _ModelState:
    """What upscale_array remembers per model: scale, overlap, and the settings that ran out of memory."""

    scale: int
    overlap: int
    bytes_per_pixel: int  # activation_bytes_per_pixel
    reduced: dict = field(default_factory=dict)  # (tile, overlap, batch) asked -> (tile, pixels, batch) that fit
    compiled: object = None  # an XLA-compiled forward (compile_model), a runtime's (run_forward_on), or None
    derive: object = None  # (luma_model of this model, its luma weights) -> None: make it run as this model does
    derive_planes: object = None  # (luma weights, finish_model) -> planes_model's forward on the runtime, or None
    runs_on: str = "keras"  # "xla" (compile_model) or "runtime" (run_forward_on: an optional runtime's)
    luma: dict = field(default_factory=dict)  # luma weights -> luma_model (the YUV video path)
    planes: dict = field(default_factory=dict)  # (luma weights, full range) -> planes_model
    finish: dict = field(default_factory=dict)  # full range -> finish_model


_STATES = weakref.WeakKeyDictionary()


def _state(model):
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = _ModelState(scale=model_scale(model), overlap=auto_overlap(model),
                                             bytes_per_pixel=activation_bytes_per_pixel(model))
    return state


def _forward(model):
    """What runs a batch through the model: the compiled function, or predict_on_batch."""
    return _state(model).compiled or model.predict_on_batch


def run_forward_on(model, forward, luma_forward=None, planes_forward=None):
    """Make upscale_array/upscale_batch run the model's batches through forward (predict_on_batch's contract:
    an optional runtime's predict, deploy.load_runtime); tiling still reads the model's scale and field.
    luma_forward: for a luma-first model, (its luma_model, the luma weights) -> that model's forward on the
    same runtime, called when the YUV path first needs a luma model (without it, that one runs on Keras).
    planes_forward: (the luma weights, finish_model) -> the forward of planes_model on the same runtime (the
    luma network luma_forward made, then finish_model), or None where the runtime cannot run it; without it,
    the runtime's luma goes through finish_model on Keras. Returns the model."""
    state = _state(model)
    state.compiled, state.runs_on = forward, "runtime"
    state.derive = None if luma_forward is None else (
        lambda luma, weights: run_forward_on(luma, luma_forward(luma, weights)))
    state.derive_planes = planes_forward
    return model


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

    def run(batch):  # a batch, or a list of them for a model with several inputs (planes_model)
        return keras.tree.map_structure(lambda t: t.numpy(), forward(keras.tree.map_structure(tf.constant, batch)))

    state = _state(model)
    state.compiled, state.runs_on = run, "xla"
    state.derive = lambda luma, weights: compile_model(luma)
    return model


# --- precision -----------------------------------------------------------------------------------------


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


# --- the model's shape: scale, receptive field, memory -------------------------------------------------


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

    def chain():
        for name, cfg in _file_layers(path):
            if name == "Conv2D":
                yield "conv", int(cfg["kernel_size"][0]), int(cfg.get("dilation_rate", [1])[0]), 1
            elif name == "PixelShuffle":
                yield "shuffle", 1, 1, int(cfg["scale"])

    return _receptive_radius(chain())


def file_luma_first_scale(path):
    """The scale of a saved luma-first model's LumaUpsample (what the YUV video path needs), or None when the
    model predicts RGB; read from the file like file_receptive_radius."""
    return next((int(cfg["scale"]) for name, cfg in _file_layers(path) if name == "LumaUpsample"), None)


def _file_layers(path):
    """(class name, config) of every layer of a saved .keras model, nested models' included, from the
    config.json inside the file (a zip). Raises ValueError when the file is not a Keras model."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"not a .keras model file ({type(e).__name__}: {e})") from e

    def walk(entry):
        for layer in entry.get("config", {}).get("layers", []):
            cfg = layer.get("config", {})
            yield layer.get("class_name"), cfg
            if "layers" in cfg:  # a nested model
                yield from walk(layer)

    return list(walk(config))


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


def auto_overlap(model):
    """Tile overlap for a model: OVERLAP_PER_RADIUS of its receptive radius, in steps of 8 (SRResNet: 32,
    the fast preset: 24). Output within about half the radius of a tile edge is spoilt by the tile's zero
    padding; the cross-fade sits in the middle of the overlap, beyond that."""
    return overlap_for_radius(receptive_radius(model))


def overlap_for_radius(radius):
    """The automatic tile overlap for a receptive radius (see auto_overlap)."""
    return max(MIN_OVERLAP, math.ceil(OVERLAP_PER_RADIUS * radius / 8) * 8)


def auto_tile_pixels(model, *, budget=None):
    """LR pixels one model call may take: the memory budget (default memory_budget()) over the estimated
    activation bytes per pixel (worked out once per model)."""
    budget = memory_budget() if budget is None else budget
    return int(budget // _state(model).bytes_per_pixel)


def memory_budget():
    """Bytes of activations one model call may use: TILE_MEMORY_BUDGET, or less when memory is short."""
    return min(TILE_MEMORY_BUDGET, MEMORY_FRACTION * resizer.available_memory_bytes())


def activation_bytes_per_pixel(model):
    """Estimated peak activation memory of one forward pass, in bytes per input (LR) pixel."""
    return ACTIVATION_BYTES_PER_VALUE * widest_map(model)


def is_out_of_memory(error):
    """True for the errors a backend raises when a tensor does not fit (TensorFlow, JAX, PyTorch, NumPy)."""
    if isinstance(error, MemoryError):
        return True
    names = {cls.__name__ for cls in type(error).__mro__}
    if names & {"ResourceExhaustedError", "OutOfMemoryError"}:
        return True
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


# --- tiles ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def call_area(tile, pixels):
    """The LR pixels one tile may hold: tile x tile for an explicit --tile, else what the memory budget allows
    (pixels, auto_tile_pixels) up to MAX_TILE x MAX_TILE."""
    return tile * tile if tile is not None else min(pixels, MAX_TILE * MAX_TILE)


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


def tiled_upscale(forward, x, scale, *, tile, overlap, batch_size=1):
    """Upscale float32 (H, W, 3) `x` with `forward` (float32 (N, h, w, 3) -> (N, s*h, s*w, C)) tile by tile.

    tile: a side (square tiles) or a (height, width) shape, cut to the image's size. Tiles are laid flush
    with the image edges (none reaches past them), so pixels at the image border see exactly what
    whole-image inference shows them, and nothing needs padding. Every tile has the same shape and every
    call to forward the same batch size, so a compiled function traces once per image size.
    Returns float32 (s*H, s*W, C), not clipped (C: 3, or 1 for luma_model).
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

    out, weight = None, np.zeros((height * scale, width * scale, 1), np.float32)
    for first in range(0, len(boxes), per_call):
        chunk = boxes[first : first + per_call]
        batch = np.stack([x[ys[i] : ys[i] + tile_h, xs[j] : xs[j] + tile_w] for i, j in chunk])
        if len(chunk) < per_call:
            batch = np.concatenate([batch, np.repeat(batch[-1:], per_call - len(chunk), axis=0)])
        result = np.asarray(forward(batch), dtype=np.float32)
        if out is None:
            out = np.zeros((height * scale, width * scale, result.shape[-1]), np.float32)
        for (i, j), sr in zip(chunk, result, strict=False):
            w = (wys[i][:, None] * wxs[j][None, :])[..., None]
            top, left = ys[i] * scale, xs[j] * scale
            out[top : top + tile_h * scale, left : left + tile_w * scale] += sr * w
            weight[top : top + tile_h * scale, left : left + tile_w * scale] += w
    out /= np.maximum(weight, 1e-8)
    return out


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of size `tile` covering [0, length), neighbours overlapping by >= overlap.

    The tiles are spread evenly and the last one ends at `length`, so no tile reaches past the edge.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


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


def blend_ramp(width):
    """Weights rising from 0 to 1 over `width` output pixels: zero over the first BLEND_MARGIN of it (where
    the tile's own zero padding spoils the output), then a raised cosine. ramp + ramp[::-1] == 1, so two
    tiles sharing the overlap cross-fade exactly."""
    t = (np.arange(width, dtype=np.float64) + 0.5) / max(width, 1)
    u = np.clip((t - BLEND_MARGIN) / (1.0 - 2.0 * BLEND_MARGIN), 0.0, 1.0)
    return np.sin(0.5 * np.pi * u) ** 2


# --- progress bars -------------------------------------------------------------------------------------


def progress_bar(bar, total, name):
    """A tqdm bar (frames, with frames/s and ETA), or a silent stand-in when progress is off."""
    if bar is False:
        return NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=name, leave=False, dynamic_ncols=True)


class NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass
