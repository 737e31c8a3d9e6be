"""Upscale images, animated GIFs and videos with a trained generator (tiled inference, any size).

    python upscale.py photo.jpg -o photo_x4.png                       # one image (format from the extension)
    python upscale.py photos/ -o photos_x4/                           # a folder, recursively (tree mirrored)
    python upscale.py anim.gif -o anim_x4.gif                         # every frame, timing, loop, transparency
    python upscale.py clip.mp4 -o clip_x4.mp4 --crf 18                # video: fps/timestamps kept, audio copied
    python upscale.py photo.jpg -o out.png --model runs/demo/generator.keras --compare

Big inputs are cut into overlapping tiles that go through the model in batches, and the tile outputs are
cross-faded with a raised-cosine window, so there are no seams and memory stays bounded whatever the image
size. `upscale_array(model, rgb)` is the library entry point (flow.py's evaluation uses it too).
"""

import argparse
import functools
import math
import sys
import time
import warnings
import weakref
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageSequence

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
DEFAULT_MODEL = Path(__file__).parent / "weights" / "srresnet_x4_psnr.keras"
OVERLAP_PER_RADIUS = 0.8  # default tile overlap: this fraction of the model's receptive radius (auto_overlap) ...
MIN_OVERLAP = 16  # ... in steps of 8, and at least this (measured with random weights: see auto_overlap)
BLEND_MARGIN = 0.375  # fraction of each overlap, at the tile's own edge, where its output is not used at all
MIN_TILE, TILE_STEP = 32, 16  # an explicit --tile shrinks in steps of TILE_STEP down to MIN_TILE on OOM
MAX_TILE = 512  # automatic tiles hold at most MAX_TILE**2 LR pixels (more memory goes into batches)
TILE_MEMORY_BUDGET = 512 * 2**20  # bytes of activations one model call may use (keeps a 960x540 x4 < 1.5 GB) ...
MEMORY_FRACTION = 0.5  # ... and at most this fraction of the memory still available
# Peak activation memory of an SRResNet forward pass, in bytes per output pixel and per filter of its trunk
# (17-18 measured for both presets at 128-384 px tiles, float32, TensorFlow 2.21 on CPU): sizes the tiles.
ACTIVATION_BYTES_PER_FILTER = 18
IMAGE_SUFFIXES = set(resizer.IMAGE_SUFFIXES)
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov"}
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}
FORMATS = ["png", "jpg", "webp", "gif", "mp4", "mkv", "webm", "mov"]  # --format choices
STILL_FORMATS = {"png", "jpg", "webp", "gif"}
ANIMATION_FORMATS = {"gif", "webp", "png", "mp4", "mkv", "webm", "mov"}  # png means APNG
VIDEO_FORMATS = {"mp4", "mkv", "webm", "mov"}
VIDEO_CODEC = {"webm": "libvpx-vp9"}  # default encoder per container; others get DEFAULT_VIDEO_CODEC
DEFAULT_VIDEO_CODEC = "libx264"
DEFAULT_CRF = 18  # visually near-lossless for x264
DEFAULT_PRESET = "medium"
DEFAULT_PIX_FMT = "yuv420p"  # what every player decodes; needs even width and height
CRF_CODECS = {"libx264", "libx265", "libvpx-vp9", "libsvtav1"}
PRESET_CODECS = {"libx264", "libx265"}
GIF_MIN_DELAY_MS = 20  # browsers show GIF frames with a shorter delay for 100 ms; so do videos made from them
GIF_DEFAULT_DELAY_MS = 100
FLATTEN_BACKGROUND = (255, 255, 255)  # transparency becomes this colour in JPEG and video outputs
COMPARE_CROP = 96  # LR pixels of the side-by-side crop (--compare)
COMPARE_SUFFIX = "_compare.png"
# -----------------------------------------------------------------------------


# --- the model --------------------------------------------------------------------------------------------


def load_model(path=None):
    """Load a generator saved as .keras (safe mode), with a clear error when the file is not there."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        hint = (
            "no trained model yet: train one with `python flow.py train ...` and copy its runs/NAME/generator.keras "
            f"to {DEFAULT_MODEL}, or pass --model FILE"
            if path == DEFAULT_MODEL
            else "pass the path of a generator .keras file (e.g. runs/NAME/generator.keras)"
        )
        raise FileNotFoundError(f"{path}: model file not found; {hint}")
    from generator import load_generator

    return load_generator(path)


def model_scale(model):
    """The model's integer upscaling factor."""
    from generator import generator_scale

    return generator_scale(model)


def model_filters(model):
    """Width of the model's trunk: the filters of its first convolution (64 for SRResNet)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            return int(layer.filters)
    return 64


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


def activation_bytes_per_pixel(model, scale=None):
    """Estimated peak activation memory of one forward pass, in bytes per input (LR) pixel."""
    scale = model_scale(model) if scale is None else scale
    return ACTIVATION_BYTES_PER_FILTER * model_filters(model) * scale * scale


def receptive_radius(model):
    """How far (LR pixels) an output pixel sees into the input along the model's longest path: each
    convolution's radius, divided by the upsampling done before it."""
    import keras

    radius, factor = 0.0, 1
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            radius += (layer.kernel_size[0] - 1) / 2 * layer.dilation_rate[0] / factor
        elif type(layer).__name__ == "PixelShuffle":
            factor *= layer.scale
    return radius


def auto_overlap(model):
    """Tile overlap for a model: OVERLAP_PER_RADIUS of its receptive radius, in steps of 8 (SRResNet: 32,
    the fast preset: 24). Output within about half the radius of a tile edge is spoilt by the tile's zero
    padding; the cross-fade sits in the middle of the overlap, beyond that."""
    return max(MIN_OVERLAP, math.ceil(OVERLAP_PER_RADIUS * receptive_radius(model) / 8) * 8)


def auto_tile_pixels(model, *, budget=None, scale=None):
    """LR pixels one model call may take: the memory budget (default memory_budget()) over the estimated
    activation bytes per pixel."""
    budget = memory_budget() if budget is None else budget
    return int(budget // activation_bytes_per_pixel(model, scale))


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
    reduced: dict = field(default_factory=dict)  # (tile, overlap, batch) asked -> (tile, pixels, batch) that fit


_STATES = weakref.WeakKeyDictionary()


def _state(model):
    state = _STATES.get(model)
    if state is None:
        state = _STATES[model] = _ModelState(scale=model_scale(model), overlap=auto_overlap(model))
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
    state = _state(model)
    overlap = state.overlap if overlap is None else int(overlap)
    if overlap < 0 or (batch_size is not None and batch_size < 1):
        raise ValueError(f"overlap must be >= 0 and batch_size >= 1, got {overlap} and {batch_size}")
    height, width = rgb.shape[:2]
    asked = (tile, overlap, batch_size)
    pixels = auto_tile_pixels(model, scale=state.scale)  # what one call may hold
    tile, pixels, batch_size = state.reduced.get(asked, (tile, pixels, batch_size))
    x = to_float(rgb)
    while True:
        if tile is not None and tile <= 2 * overlap and tile < max(height, width):
            raise ValueError(f"tile {tile} is too small for overlap {overlap}: use a tile of at least "
                             f"{2 * overlap + 1}")
        area = tile * tile if tile is not None else min(pixels, MAX_TILE * MAX_TILE)
        shape = plan_tiles(height, width, area, overlap)
        batch = batch_size or max(1, pixels // (shape[0] * shape[1]))
        try:
            sr = tiled_upscale(model.predict_on_batch, x, state.scale, tile=shape, overlap=overlap,
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
    return _to_uint8_in_bands(sr)


def _to_uint8_in_bands(x, rows=256):
    """to_uint8 a band of rows at a time, so its float temporaries stay small for a 4K output."""
    out = np.empty(x.shape, np.uint8)
    for top in range(0, x.shape[0], rows):
        out[top : top + rows] = to_uint8(x[top : top + rows])
    return out


# --- still images ----------------------------------------------------------------------------------------


GREY_MODES = {"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"}
RGB_MODES = {"RGB", "RGBA", "RGBa", "P", "PA"}
ICC_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"}


def source_info(path):
    """(Pillow mode, frame count, ICC profile or None) read from the file's header, or None if Pillow
    cannot open it (the loader then gives the clear error)."""
    try:
        with Image.open(path) as im:
            return im.mode, getattr(im, "n_frames", 1), im.info.get("icc_profile")
    except Exception:
        return None


def upscale_image_file(model, src, dst, *, upscale, compare=False, label="model"):
    """Upscale one still image file to dst (format from dst's extension), keeping alpha and greyscale."""
    info = source_info(src)
    rgb, alpha = load_image(src, with_alpha=True)
    scale = _state(model).scale
    sr = upscale(rgb)
    size = (sr.shape[1], sr.shape[0])
    alpha_sr = resize(alpha, size, "bicubic") if alpha is not None else None
    grey = info is not None and info[0] in GREY_MODES
    out = np.rint(sr.astype(np.float32).mean(axis=2)).astype(np.uint8) if grey else sr
    options = {}
    if info is not None and info[2] and info[0] in RGB_MODES and dst.suffix.lower() in ICC_SUFFIXES:
        options["icc_profile"] = info[2]  # colours mean what they meant in the input (an RGB profile only)
    if alpha_sr is not None and dst.suffix.lower() in {".jpg", ".jpeg"}:
        out, alpha_sr = flatten(out, alpha_sr), None  # JPEG has no alpha: composite onto the background
    save_image(dst, out, alpha=alpha_sr, **options)
    if compare:
        write_compare(compare_path(dst), rgb, sr, scale, label)


def flatten(img, alpha, background=FLATTEN_BACKGROUND):
    """Composite an image (grey or RGB) with its alpha onto a plain background colour."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    img3 = img[..., None] if img.ndim == 2 else img
    bg = np.asarray(background, np.float32)[: img3.shape[2]] if img.ndim == 3 else np.float32(np.mean(background))
    out = img3.astype(np.float32) * a + bg * (1.0 - a)
    out = np.rint(out).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out


# --- animations (GIF, animated WebP, APNG) ----------------------------------------------------------------


@dataclass
class Frame:
    """One composited animation frame: RGB, alpha (None when opaque) and how it is shown."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    duration: int  # ms
    disposal: int


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


def animation_info(path):
    """(frame count, loop or None, GIF transparency index or None) of an animated image file."""
    try:
        with Image.open(path) as im:
            return getattr(im, "n_frames", 1), im.info.get("loop"), im.info.get("transparency")
    except Exception as e:
        raise ImageLoadError(f"{path}: cannot read the animation ({type(e).__name__}: {e})") from e


def quantize_frame(rgb, opaque, transparency=None):
    """A palette image for one GIF frame: an adaptive palette of this frame's upscaled colours (median cut,
    Floyd-Steinberg dithering); with transparency, one palette slot (the source's index where it had one)
    is kept for the transparent pixels. opaque: bool (H, W) mask, or None when the frame is fully opaque."""
    colours = 256 if opaque is None else 255
    pal_im = Image.fromarray(rgb).quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                           dither=Image.Dither.FLOYDSTEINBERG)
    if opaque is None:
        return pal_im
    index = np.asarray(pal_im).astype(np.int32)
    palette = np.asarray(pal_im.getpalette()[: 3 * 255], np.uint8).reshape(-1, 3)
    palette = np.concatenate([palette, np.zeros((255 - len(palette), 3), np.uint8)])  # exactly 255 colours
    t = int(transparency) if transparency is not None and 0 <= int(transparency) <= 255 else 255
    index = np.where(index >= t, index + 1, index)  # make room for the transparent slot at t
    index[~opaque] = t
    palette = np.insert(palette, t, 0, axis=0)
    out = Image.fromarray(index.astype(np.uint8), mode="P")
    out.putpalette(palette.reshape(-1).tolist())
    out.info["transparency"] = t
    return out


def upscale_animation_file(model, src, dst, *, upscale, video_options, compare=False, label="model",
                           progress=None):
    """Upscale every frame of an animated GIF/WebP/PNG into dst: .gif (per-frame palettes), .webp, .png
    (APNG) or a video container (mp4, mkv, webm, mov: frames flattened, variable timing kept)."""
    suffix = dst.suffix.lower()
    if suffix not in {".gif", ".webp", ".png"} | VIDEO_SUFFIXES:
        raise ValueError(f"{dst}: an animation can be written as .gif, .webp, .png (APNG) or a video "
                         f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    n_frames, loop, transparency = animation_info(src)
    scale = _state(model).scale
    bar = _progress(progress, n_frames, src.name)

    def upscaled_frames():
        for k, frame in enumerate(read_animation(src)):
            sr = upscale(frame.rgb)
            if k == 0 and compare:
                write_compare(compare_path(dst), frame.rgb, sr, scale, label)
            yield frame, sr
            bar.update()

    if suffix in VIDEO_SUFFIXES:
        _write_animation_video(upscaled_frames(), src, dst, video_options)
    else:
        _write_animated_image(upscaled_frames(), src, dst, loop, transparency)
    bar.close()


def _write_animation_video(frames, src, dst, video_options):
    """Encode (frame, upscaled RGB) pairs as a video, each frame shown for its own duration."""
    writer, pts = None, 0
    with atomic_output(dst) as tmp, _open_output_video(tmp, dst) as out:
        for frame, sr in frames:
            if writer is None:
                writer = VideoWriter(out, sr.shape[1], sr.shape[0], rate=None, time_base=Fraction(1, 1000),
                                     **video_options)
            if frame.alpha is not None:  # video has no transparency
                sr = flatten(sr, _upscale_alpha(frame.alpha, sr.shape, binary=False))
            writer.write(sr, pts)
            pts += frame.duration if frame.duration >= GIF_MIN_DELAY_MS else GIF_DEFAULT_DELAY_MS
        if writer is None:
            raise ValueError(f"{src}: the animation has no frames")
        writer.finish()


def _write_animated_image(frames, src, dst, loop, transparency):
    """Save (frame, upscaled RGB) pairs as an animated GIF, WebP or APNG with the source's timing and loop."""
    suffix = dst.suffix.lower()
    images, durations, disposals = [], [], []
    for frame, sr in frames:
        alpha = None if frame.alpha is None else _upscale_alpha(frame.alpha, sr.shape, binary=suffix == ".gif")
        if suffix == ".gif":
            images.append(quantize_frame(sr, None if alpha is None else alpha >= 128, transparency))
        else:
            images.append(Image.fromarray(sr) if alpha is None else Image.fromarray(np.dstack([sr, alpha])))
        durations.append(frame.duration)
        disposals.append(frame.disposal)
    if not images:
        raise ValueError(f"{src}: the animation has no frames")
    if len(images) == 1:  # Pillow wants plain values, not lists, for a single frame
        durations, disposals = durations[0], disposals[0]
    options = {"save_all": True, "append_images": images[1:], "duration": durations}
    if suffix == ".gif":
        # every frame is a whole composited canvas, so the source's disposal methods show it the same way;
        # optimize=False keeps each frame's palette (and its transparency index) as made above
        options.update(disposal=disposals, optimize=False)
        if loop is not None:  # no loop count in the source: it plays once, and so does the output
            options["loop"] = loop
    elif suffix == ".webp":
        options.update(loop=loop or 0, quality=95, method=4)
    else:
        options.update(loop=loop or 0, disposal=0, blend=0)  # APNG: each frame replaces the canvas
    with atomic_output(dst) as tmp:
        images[0].save(tmp, format=Image.registered_extensions()[suffix], **options)


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


def upscale_video_file(model, src, dst, *, upscale, video_options, compare=False, label="model",
                       max_frames=None, progress=None):
    """Upscale a video frame by frame (decode -> upscale -> encode, streamed: memory does not grow with
    length), keeping every frame's timestamp (variable frame rate too) and copying the audio streams'
    packets unchanged. max_frames: stop after that many frames (the audio is cut at the same time)."""
    import av

    scale = _state(model).scale
    try:
        inp = av.open(str(src))
    except av.error.EOFError as e:
        raise VideoError(f"{src}: the video has no frames (the file ends after its header)") from e
    except (av.error.FFmpegError, OSError) as e:
        raise VideoError(f"{src}: cannot open as a video ({e})") from e
    with inp:
        if not inp.streams.video:
            raise VideoError(f"{src}: has no video stream")
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"
        audio = list(inp.streams.audio)
        bar = _progress(progress, _expected_frames(inp, vin, max_frames), src.name)
        with atomic_output(dst) as tmp, _open_output_video(tmp, dst) as out:
            # every stream must exist before the first packet is written (that writes the header)
            writer = VideoWriter(out, vin.codec_context.width * scale, vin.codec_context.height * scale,
                                 rate=vin.average_rate, time_base=vin.time_base, **video_options)
            if vin.sample_aspect_ratio:
                writer.stream.codec_context.sample_aspect_ratio = vin.sample_aspect_ratio
            audio_out = {a.index: _copy_stream(out, a, dst) for a in audio}
            last_pts, step, end_time = None, _frame_step(vin), None
            # audio packets wait here until the first frame is decoded (its rotation goes into the header,
            # which the first packet written writes) and, with max_frames, until the cut is known
            held, audio_done = [], set()

            def audio_waits():
                return writer.frames == 0 or (max_frames is not None and end_time is None)

            def release_held():
                for held_packet in held:
                    if end_time is None or _seconds(held_packet) < end_time:
                        _mux(out, held_packet, audio_out, dst)
                held.clear()

            for packet in _demux(inp, [vin, *audio], src):
                if packet.stream.type == "audio":
                    if packet.dts is None:  # the demuxer's end-of-stream marker
                        continue
                    if audio_waits():
                        held.append(packet)
                    elif end_time is None or _seconds(packet) < end_time:
                        _mux(out, packet, audio_out, dst)
                    else:
                        audio_done.add(packet.stream.index)
                        if len(audio_done) == len(audio):
                            break  # past the cut on every stream: the rest of the file is not needed
                    continue
                if end_time is not None:
                    if not audio:
                        break
                    continue
                for frame in _decode(packet, src):
                    if writer.frames == 0:
                        _copy_rotation(frame, writer.stream)
                    pts = frame.pts if frame.pts is not None else (0 if last_pts is None else last_pts + step)
                    if last_pts is not None and pts <= last_pts:  # encoders need increasing timestamps
                        pts = last_pts + 1
                    rgb = frame_to_rgb(frame)
                    sr = upscale(rgb)
                    if compare and writer.frames == 0:
                        write_compare(compare_path(dst), rgb, sr, scale, label)
                    writer.write(sr, pts)
                    last_pts = pts
                    bar.update()
                    if max_frames is not None and writer.frames >= max_frames:
                        end_time = (pts + step) * vin.time_base
                    if held and not audio_waits():
                        release_held()
                    if end_time is not None:
                        break
            release_held()  # the end of the file came first: what is left of the audio goes in
            if writer.frames == 0:
                raise VideoError(f"{src}: the video has no frames")
            writer.finish()
        bar.close()


def _expected_frames(inp, stream, max_frames):
    """Frame count for the progress bar: from the header, or duration x frame rate, capped by max_frames."""
    total = stream.frames or None
    if total is None and inp.duration and stream.average_rate:
        total = round(inp.duration / 1e6 * float(stream.average_rate))
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


def _copy_rotation(frame, stream):
    """Keep a phone video's display rotation (its display matrix), so the output plays upright too."""
    rotation = getattr(frame, "rotation", 0)
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


# --- --compare --------------------------------------------------------------------------------------------


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


def write_compare(path, lr_rgb, sr_rgb, scale, label="model"):
    """Write a labelled side-by-side PNG: bicubic | model, for the most detailed crop of the input."""
    height, width = lr_rgb.shape[:2]
    crop_h, crop_w = min(COMPARE_CROP, height), min(COMPARE_CROP, width)
    top, left = detail_crop(lr_rgb, min(crop_h, crop_w)) if crop_h == crop_w else (0, 0)
    lr = lr_rgb[top : top + crop_h, left : left + crop_w]
    bicubic = resize(lr, (crop_w * scale, crop_h * scale), "bicubic")
    model_crop = sr_rgb[top * scale : (top + crop_h) * scale, left * scale : (left + crop_w) * scale]
    gap, band = 8, 28
    canvas = Image.new("RGB", (2 * crop_w * scale + gap, crop_h * scale + band), (255, 255, 255))
    canvas.paste(Image.fromarray(bicubic), (0, band))
    canvas.paste(Image.fromarray(model_crop), (crop_w * scale + gap, band))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=18)
    draw.text((4, 4), f"bicubic x{scale}", fill=(0, 0, 0), font=font)
    draw.text((crop_w * scale + gap + 4, 4), f"{label} x{scale}", fill=(0, 0, 0), font=font)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="PNG")


# --- the command line -------------------------------------------------------------------------------------


@dataclass
class Job:
    """One input file and the output it becomes."""

    src: Path
    dst: Path
    kind: str  # "image", "animation" or "video"


def media_kind(path):
    """"video" by extension, "animation" for a multi-frame GIF/WebP/PNG, else "image"."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in {".gif", ".webp", ".png"}:
        info = source_info(path)
        if info is not None and info[1] > 1:
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
    """Pair every input file with its output path. Returns (jobs, problems): problems are (path, reason)
    for inputs that do not exist or have nothing to upscale."""
    output = Path(output)
    inputs = [Path(p) for p in inputs]
    single_file = len(inputs) == 1 and inputs[0].is_file() and output.suffix and not output.is_dir()
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
        elif src.is_file():
            kind = media_kind(src)
            jobs.append(Job(src, (output / src.name).with_suffix(output_suffix(src, kind, fmt)), kind))
        else:
            problems.append((src, "no such file or folder"))
    return jobs, problems


def _progress(bar, total, name):
    """A tqdm bar (frames, with fps and ETA), or a silent stand-in when progress is off."""
    if bar is False:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=name, leave=False, dynamic_ncols=True)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Upscale images, animated GIFs and videos with a trained SRGAN/SRResNet generator.",
        epilog="Examples: upscale.py photo.jpg -o photo_x4.png | upscale.py photos/ -o out/ --format png | "
               "upscale.py anim.gif -o anim_x4.gif | upscale.py clip.mp4 -o clip_x4.mp4 --crf 20",
    )
    p.add_argument("inputs", nargs="+", type=Path, help="image, GIF or video files, or folders (recursive)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output file (one input) or folder (several inputs or a folder; the tree is mirrored)")
    p.add_argument("--model", type=Path, default=None, help=f"generator .keras file (default {DEFAULT_MODEL})")
    p.add_argument("--tile", type=int, default=None,
                   help="tiles hold at most TILE x TILE LR pixels, shaped to the image (default: from free memory)")
    p.add_argument("--overlap", type=int, default=None,
                   help="LR pixels shared by neighbouring tiles (default: from the model's receptive field)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per model call (default: as many as fit)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format for folder outputs (images: png/jpg/webp/gif; animations: gif/webp/png/"
                        "video; videos: mp4/mkv/webm/mov); inputs it does not suit keep their own")
    p.add_argument("--codec", default=None, help=f"video encoder (default {DEFAULT_VIDEO_CODEC}; libvpx-vp9 for webm)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF, help="constant-quality factor (lower is better)")
    p.add_argument("--preset", default=DEFAULT_PRESET, help="x264/x265 speed preset (ultrafast ... veryslow)")
    p.add_argument("--pix-fmt", default=DEFAULT_PIX_FMT, help="video pixel format")
    p.add_argument("--max-frames", type=int, default=None, help="videos: stop after this many frames (a preview)")
    p.add_argument("--compare", action="store_true", help="also write OUT_compare.png: bicubic | model on a crop")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def check_job(job, inputs, overwrite, compare):
    """None when the job may run, else ("skipped"|"failed", reason)."""
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
    return None


def run_job(model, job, args, progress):
    """Upscale one input into its output."""
    def upscale(rgb):
        return upscale_array(model, rgb, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size)

    label = args.model.stem if args.model else DEFAULT_MODEL.stem
    video_options = dict(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
    if job.kind == "video":
        upscale_video_file(model, job.src, job.dst, upscale=upscale, video_options=video_options,
                           compare=args.compare, label=label, max_frames=args.max_frames, progress=progress)
    elif job.kind == "animation" and (job.dst.suffix.lower() == ".gif" or animation_info(job.src)[0] > 1):
        upscale_animation_file(model, job.src, job.dst, upscale=upscale, video_options=video_options,
                               compare=args.compare, label=label, progress=progress)
    else:  # a still image, or a one-frame animation written in a still format
        upscale_image_file(model, job.src, job.dst, upscale=upscale, compare=args.compare, label=label)


def main(argv=None):
    """Upscale every input; print a summary; exit 0 when nothing failed, 1 otherwise, 2 for bad usage."""
    args = parse_args(argv)
    started = time.perf_counter()
    try:
        jobs, problems = plan_jobs(args.inputs, args.output, args.format)
    except ValueError as e:
        print(f"upscale: {e}", file=sys.stderr)
        return 2
    if args.tile is not None and args.overlap is not None and args.tile < 2 * args.overlap + 1:
        print(f"upscale: --tile {args.tile} is too small for --overlap {args.overlap}", file=sys.stderr)
        return 2
    for name in ("tile", "batch_size", "max_frames"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"upscale: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    inputs = {job.src.resolve() for job in jobs}
    done, skipped, failed = [], [], list(problems)
    seen, model = set(), None
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
            if model is None:
                try:
                    model = load_model(args.model)
                except Exception as e:  # missing, corrupt, or not a generator: nothing can run
                    print(f"upscale: {e}" if isinstance(e, FileNotFoundError) else
                          f"upscale: cannot load the model {args.model}: {type(e).__name__}: {e}", file=sys.stderr)
                    return 2
            try:
                run_job(model, job, args, progress)
                done.append(job)
            except KeyboardInterrupt:
                print(f"\nupscale: interrupted during {job.src}; no partial output was left", file=sys.stderr)
                return 130
            except Exception as e:  # one bad file must not stop the batch; it is reported below
                failed.append((job.src, str(e) if str(e).startswith(str(job.src)) else f"{type(e).__name__}: {e}"))
        if outer is not None:
            outer.update()
    if outer is not None:
        outer.close()
    for src, reason in skipped:
        print(f"skipped {src}: {reason}")
    for src, reason in failed:
        print(f"FAILED  {src}: {reason}", file=sys.stderr)
    print(f"upscale: {len(done)} done, {len(skipped)} skipped, {len(failed)} failed "
          f"in {time.perf_counter() - started:.1f} s" + (f" -> {args.output}" if done else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
