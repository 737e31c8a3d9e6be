"""Media in and out: still images, animations (GIF, WebP, APNG), video files and URLs, YUV4MPEG2 to a pipe.

    upscale_image_file(inference, "photo.jpg", Path("photo_x4.png"))
    upscale_animation_file(inference, Path("anim.gif"), Path("anim_x4.gif"), video_options={})
    upscale_video_file(inference, "clip.mp4", Path("clip_x4.mp4"), video_options={})   # or a URL, or dst "-"

`inference` is an inference.Inference: the model and its tiling options. Videos and animations stream
through three threads (decode, model, encode) linked by bounded queues (run_frames), so memory stays flat
however long the clip; every frame keeps its timestamp, the audio is copied, and outputs are written
atomically (a temporary name, then a rename). A URL that breaks off midway keeps what was written. A
luma-first model's video takes the YUV path (choose_video_path, Yuv420Frames): planes in, planes out.
"""

import collections
import contextlib
import itertools
import math
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, ImageSequence

import resizer
from inference import (
    auto_overlap,
    luma_upsample,
    model_scale,
    progress_bar,
    upscale_array,
)
from resizer import ImageLoadError, atomic_output, load_image, resize, save_image, to_uint8

# -----------------------------------------------------------------------------
# configuration
CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}  # PyAV muxer names
VIDEO_SUFFIXES = set(CONTAINER_FORMATS)
ANIMATED_SUFFIXES = {".gif", ".webp", ".png"}  # GIF, animated WebP, APNG
DEEP_SUFFIXES = {".png", ".tif", ".tiff"}  # outputs that hold 16-bit grey
DEEP_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}  # 16-bit grey inputs (PNG, TIFF)
VIDEO_CODEC = {"webm": "libvpx-vp9"}  # default encoder per container; others get DEFAULT_VIDEO_CODEC
DEFAULT_VIDEO_CODEC = "libx264"
DEFAULT_CRF = 18  # visually near-lossless for x264
DEFAULT_PRESET = "veryfast"  # x264 at 2560x1440 keeps up with the model; crf 18 keeps the quality
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
DEFAULT_PIX_FMT = "yuv420p"  # what every player decodes; needs even width and height
YUV420_FORMATS = {"yuv420p", "yuvj420p"}  # 8-bit 4:2:0, limited and full range: what the YUV path reads and writes
VIDEO_PATHS = ("auto", "yuv", "rgb")  # --video-path (see choose_video_path)
# (Kr, Kb) of the YUV matrices by AVCOL_SPC code: BT.709, FCC, BT.601 (470BG, 170M), SMPTE 240M, BT.2020;
# unspecified and others are BT.601, as swscale converts them
KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 6: (0.299, 0.114), 7: (0.212, 0.087),
         9: (0.2627, 0.0593), 10: (0.2627, 0.0593)}
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
QUEUE_FRAMES = 4  # frames (or batches) waiting between decoder, model and encoder: memory stays flat
QUEUE_ITEMS = 64  # decoded items (frames and audio packets) waiting for the model
PIPE = "-"  # -o -: YUV4MPEG2 to stdout, for a player (upscale.py URL -o - | mpv -)
URL_PATTERN = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")  # an input PyAV opens itself: http(s), an HLS playlist
STREAM_OPEN_TIMEOUT = 20.0  # seconds a URL may take to answer ...
STREAM_READ_TIMEOUT = 10.0  # ... and to send the next packet before the stream counts as stalled
STREAM_GAP_SECONDS = 0.5  # a URL's frame times jumping by more than this and STREAM_GAP_FRAMES frames: data
STREAM_GAP_FRAMES = 5  # was lost (HLS skips a segment it cannot fetch or parse and says nothing)
STREAM_SHORT_SECONDS = 0.5  # a URL ending this much before the duration its header states ended early
# -----------------------------------------------------------------------------


# --- still images --------------------------------------------------------------------------------------


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


def flatten(img, alpha, background=FLATTEN_BACKGROUND):
    """Composite an image (grey or RGB) with its alpha onto a plain background colour."""
    a = alpha.astype(np.float32)[..., None] / 255.0
    img3 = img[..., None] if img.ndim == 2 else img
    bg = np.asarray(background, np.float32)[: img3.shape[2]] if img.ndim == 3 else np.float32(np.mean(background))
    out = img3.astype(np.float32) * a + bg * (1.0 - a)
    out = np.rint(out).astype(np.uint8)
    return out[..., 0] if img.ndim == 2 else out


# --- animations (GIF, animated WebP, APNG) -------------------------------------------------------------


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
    bar = progress_bar(progress, n_frames if max_frames is None else min(n_frames, max_frames), src.name)
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


# --- videos --------------------------------------------------------------------------------------------


def upscale_video_file(inference, src, dst, *, video_options, compare=False, start=0.0, max_frames=None,
                       progress=None, threaded=True, realtime=False, stats=None, pipe=None, video_path="auto"):
    """Upscale a video file or URL (from `start` seconds on, at most max_frames frames) into dst: decode ->
    upscale -> encode, streamed (threaded: the three overlap, see run_frames), keeping every frame's
    timestamp (variable frame rate too), its rotation, and the audio streams' packets unchanged (cut with
    the video). Returns the number of frames written.

    dst PIPE ("-"): YUV4MPEG2 video (no audio) to `pipe` (default: stdout's bytes), for a player; a reader
    that closes the pipe ends the run quietly (stats.reader_closed).
    realtime: keep pace with the source's clock and drop the frames the model has no time for (see
    RealtimeInbox); stats (a StreamStats) counts the frames shown and dropped.
    A URL that breaks off midway (StreamError) keeps what was written: the file is closed and kept, a pipe
    stops after a whole frame; the error is raised after that, saying so.
    video_path: "yuv", "rgb" or "auto" (see choose_video_path); stats.video_path says which ran."""
    to_pipe = is_pipe(dst)
    stats = StreamStats() if stats is None else stats
    stats.realtime = realtime
    with open_video(src) as inp, (open_video(src) if inp.streams.audio and not to_pipe
                                  else contextlib.nullcontext()) as audio_inp:
        vin = inp.streams.video[0]
        width, height = vin.codec_context.width, vin.codec_context.height
        stats.video_path = choose_video_path(video_path, inference.model, DEFAULT_PIX_FMT if to_pipe else
                                             video_options.get("pix_fmt", DEFAULT_PIX_FMT), vin.codec_context.format)
        bar = progress_bar(progress, _expected_frames(inp, vin, start, max_frames), source_name(src))
        items = video_items(inp, src, audio_inp=audio_inp, start=start, max_frames=max_frames,
                            chroma=stats.video_path == "yuv")
        compare_to = None if not compare or to_pipe else compare_path(dst)
        batch = inference.frames_per_batch(width, height)

        def run(write, colour):
            upscale_frames, model_input = inference.frames, rgb_of
            if stats.video_path == "yuv":  # the model thread makes the output's planes, the encoder writes them
                yuv = Yuv420Frames(inference, colour)
                upscale_frames, model_input = yuv.upscale, yuv.model_input
            sink = FrameSink(write, bar, compare_to, inference, stats)
            try:
                if realtime:  # the decoder keeps the source's pace; the model takes the newest frame
                    run_frames(paced(items, stats), upscale_frames, sink, inbox=RealtimeInbox(stats),
                               model_input=model_input)
                else:
                    run_frames(items, upscale_frames, sink, frames_per_batch=batch, threaded=threaded,
                               model_input=model_input)
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
                frames, broken = run(writer, writer.colour)
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
                frames, broken = run(VideoSink(out, writer, audio_out, dst), writer.colour)
                writer.finish()
        bar.close()
    if broken is not None:
        kept = "the output stops" if to_pipe else f"{dst} is kept,"
        raise StreamError(f"{broken}; {kept} with the {frames} frames before it") from broken
    return frames


class VideoError(ValueError):
    """A video that cannot be upscaled: no video stream, no frames, an unwritable combination."""


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


@dataclass
class DecodedFrame:
    """One decoded video frame: RGB, its output timestamp (stream time base), its time in the source
    (seconds) and its display rotation."""

    rgb: np.ndarray
    pts: int
    time: float
    rotation: int = 0
    sr: np.ndarray | None = None  # the upscaled RGB (the YUV path: luma, then Yuv420), once the model has seen it
    index: int = 0  # frames decoded before this one (--realtime: the y4m output repeats a frame for those dropped)
    chroma: np.ndarray | None = None  # the YUV path: the source's U and V planes, uint8 (ceil(H/2), ceil(W/2), 2)
    colour: tuple = (2, False)  # the YUV path: the source's (AVCOL_SPC colour space, full range)


@dataclass
class AudioPacket:
    """An audio packet copied to the output unchanged (retimed by --start)."""

    packet: object


def video_items(inp, src, *, audio_inp=None, start=0.0, max_frames=None, chroma=False):
    """What a video becomes, in order: its DecodedFrames (video_frames) and, between them, its audio
    packets (AudioPacket) up to each frame's time, retimed like the frames. The first item is a frame (its
    rotation goes into the output's header, which the first packet written writes). With a start, audio
    from before the first frame is left out; with max_frames reached, audio after the last frame's end.
    audio_inp: a second open input of the same file, for the audio (its own demuxer: the video's decoding
    stays the plain video_frames), or None for no audio. chroma: see video_frames."""
    vin = inp.streams.video[0]
    frame_seconds = float(_frame_step(vin) * vin.time_base)
    frames = video_frames(inp, src, start=start, max_frames=max_frames, chroma=chroma)
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


def video_frames(inp, src, *, start=0.0, max_frames=None, chroma=False):
    """Decode the first video stream of an open input into DecodedFrames from `start` seconds on (a seek,
    then the frames shown before it dropped), at most max_frames of them, with increasing timestamps
    (missing ones filled in, repeated ones bumped: encoders need them increasing). With a start, the
    output timestamps count from the first frame kept, so the output starts at 0. chroma: also keep each
    frame's U and V planes and its colour space (the YUV path; 4:2:0 sources only)."""
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
            decoded = DecodedFrame(frame_to_rgb(frame), pts - offset, float(pts * tb),
                                   getattr(frame, "rotation", 0) or 0, index=count)
            if chroma:
                decoded.chroma, decoded.colour = chroma_planes(frame), frame_colour(frame)
            yield decoded
            count += 1
            if max_frames is not None and count >= max_frames:
                return


def frame_to_rgb(frame):
    """A decoded video frame as uint8 RGB, converted with its own tagged matrix and range (full-range phone
    video included); untagged frames get FFmpeg's default (BT.601, limited range)."""
    return frame.reformat(format="rgb24", src_color_range=frame.color_range or None).to_ndarray()


def chroma_planes(frame):
    """A decoded 4:2:0 frame's U and V planes as uint8 (ceil(H/2), ceil(W/2), 2)."""
    if frame.format.name not in YUV420_FORMATS:
        raise VideoError(f"the YUV path reads 8-bit 4:2:0 video, not {frame.format.name}; use --video-path rgb")
    planes = [np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
              for plane in frame.planes[1:3]]
    return np.stack(planes, axis=-1)


def frame_colour(frame):
    """(AVCOL_SPC colour space, full range) of a decoded frame, as frame_to_rgb converts it."""
    return int(frame.colorspace), int(frame.color_range) == 2 or frame.format.name.startswith("yuvj")


def audio_packets(inp, src, start=0.0):
    """(time in seconds, packet) for every audio packet of an open input in file order, from about `start`
    on (a seek). The input must stay open until the packets are written."""
    import av

    if start > 0:
        inp.seek(int(start * av.time_base), backward=True)
    for packet in _demux(inp, list(inp.streams.audio), src):
        if packet.dts is not None:  # None: the demuxer's end-of-stream marker
            yield float(_seconds(packet)), packet


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
        """Encode one uint8 (H, W, 3) frame, or Yuv420 planes in the stream's format, shown at pts (in
        time_base units)."""
        import av

        if isinstance(rgb, Yuv420):
            if rgb.y.shape != (self.height, self.width):
                raise VideoError(f"frame size changed mid-stream: {rgb.y.shape[1]}x{rgb.y.shape[0]} after "
                                 f"{self.width}x{self.height}")
            self._encode(rgb.frame(self.stream.pix_fmt), pts)
            return
        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            if not (0 <= self.height - rgb.shape[0] <= 1 and 0 <= self.width - rgb.shape[1] <= 1):
                raise VideoError(f"frame size changed mid-stream: {rgb.shape[1]}x{rgb.shape[0]} after "
                                 f"{self.width}x{self.height}")
            rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self.colour is not None:  # convert with the matrix the stream is tagged with
            frame = frame.reformat(format=self.stream.pix_fmt, dst_colorspace=self.colour[0],
                                   dst_color_range=self.colour[1])
        self._encode(frame, pts)

    def _encode(self, frame, pts):
        frame.pts, frame.time_base = int(pts), self.time_base
        self.out.mux(self.stream.encode(frame))
        self.frames += 1

    def finish(self):
        """Flush the encoder."""
        self.out.mux(self.stream.encode(None))


def _open_output_video(tmp, dst):
    import av

    return av.open(str(tmp), mode="w", format=CONTAINER_FORMATS.get(dst.suffix.lower()))


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


# --- the YUV path: video planes in and out, luma through the network -----------------------------------


def choose_video_path(choice, model, pix_fmt, source_format):
    """--video-path: "yuv" or "rgb". rgb decodes frames to RGB, upscales RGB and converts it back to YUV for
    the encoder. yuv (a luma-first model with an even scale, 8-bit 4:2:0 in and out: see Yuv420Frames) makes
    no RGB image at the output's size: the network's luma plus the interpolated luma, and the source's
    chroma planes interpolated. auto: yuv where it can run, else rgb; yuv where it cannot is a VideoError.
    pix_fmt: the output's pixel format; source_format: the decoder's (a name or av VideoFormat, None when
    unknown)."""
    if choice not in VIDEO_PATHS:
        raise ValueError(f"video path must be one of {VIDEO_PATHS}, got {choice!r}")
    if choice == "rgb":
        return "rgb"
    layer = luma_upsample(model)
    obstacles = yuv_path_obstacles(None if layer is None else model_scale(model), pix_fmt,
                                   getattr(source_format, "name", source_format))
    if obstacles and choice == "yuv":
        raise VideoError("--video-path yuv cannot run: " + "; ".join(obstacles))
    return "rgb" if obstacles else "yuv"


def yuv_path_obstacles(luma_scale, pix_fmt, source_format=None):
    """Why the YUV path cannot run (an empty list when it can). luma_scale: the scale of a luma-first model,
    None for a model that predicts RGB."""
    obstacles = []
    if luma_scale is None:
        obstacles.append("the model predicts RGB (only a luma-first model, such as stream, has a luma path)")
    elif luma_scale % 2:
        obstacles.append(f"its scale x{luma_scale} is odd (4:2:0 chroma needs an even one)")
    if pix_fmt not in YUV420_FORMATS:
        obstacles.append(f"the output pixel format is {pix_fmt}, not yuv420p")
    if source_format is not None and source_format not in YUV420_FORMATS:
        obstacles.append(f"the source is {source_format}, not 8-bit 4:2:0")
    return obstacles


class Yuv420(NamedTuple):
    """The planes of a 4:2:0 frame: Y (H, W), U and V (H/2, W/2), uint8."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray

    def frame(self, pix_fmt="yuv420p"):
        """An av.VideoFrame of these planes."""
        import av

        width = self.y.shape[1]
        packed = np.concatenate([self.y.reshape(-1), self.u.reshape(-1), self.v.reshape(-1)])
        return av.VideoFrame.from_ndarray(packed.reshape(-1, width), format=pix_fmt)


class Yuv420Frames:
    """The YUV path of a luma-first model (the stream preset: the network predicts a luma residual, chroma is
    interpolated). The network sees each frame's RGB at the source's size, as in the RGB path, and the
    output's luma is made directly: the interpolated luma plus the network's residual, in the output's
    matrix. Its chroma is the source's 4:2:0 planes converted to the output's matrix and interpolated as the
    model interpolates chroma. The model thread makes the output's uint8 planes (inference's upscale_planes:
    on Keras, one graph call a frame) and the encoder thread only writes them. No RGB image is made at the
    output's size, and nothing is converted there by swscale. colour: the output's (Colorspace, ColorRange),
    as its writer converts frames."""

    def __init__(self, inference, colour):
        self.inference = inference
        self.matrix, self.full = int(colour[0]), int(colour[1]) == 2
        self.luma_weights = tuple(float(k) for k in yuv_matrix(self.matrix)[0])

    @staticmethod
    def model_input(item):
        """What the model thread needs of a decoded frame (run_frames' model_input)."""
        return item.rgb, item.chroma, item.colour

    def upscale(self, frames):
        """Yuv420 planes of each (uint8 RGB, the source's chroma planes, the source's colour) (model_input)."""
        return [self.planes(rgb, chroma, colour) for rgb, chroma, colour in frames]

    def planes(self, rgb, chroma, source_colour):
        """Yuv420 planes of one frame: its uint8 RGB and the source's chroma planes ((h, w, 2) uint8 in the
        source's (colour space, full range))."""
        centred = (chroma.astype(np.float32) - 128) / np.float32(255 if source_colour[1] else 224)
        conversion = chroma_conversion(source_colour[0], self.matrix)
        if not np.allclose(conversion, np.eye(2)):
            centred = centred @ conversion.T.astype(np.float32)
        y, uv = self.inference.planes(rgb, centred, self.luma_weights, self.full)
        return Yuv420(y, np.ascontiguousarray(uv[..., 0]), np.ascontiguousarray(uv[..., 1]))


def yuv_matrix(colorspace):
    """The RGB -> (Y, Cb, Cr) matrix of an AVCOL_SPC colour space (RGB and Y in [0, 1], Cb and Cr in
    [-0.5, 0.5]); unspecified and unknown ones are BT.601's, as swscale converts them."""
    kr, kb = KR_KB.get(int(colorspace), KR_KB[5])
    kg = 1.0 - kr - kb
    return np.array([[kr, kg, kb],
                     [-kr / (2 * (1 - kb)), -kg / (2 * (1 - kb)), 0.5],
                     [0.5, -kg / (2 * (1 - kr)), -kb / (2 * (1 - kr))]])


def chroma_conversion(source, target):
    """The 2x2 matrix taking (Cb, Cr) of one colour space to another's. Grey has no chroma in either, so the
    target's chroma depends on the source's chroma alone: chroma converts at chroma resolution."""
    return (yuv_matrix(target) @ np.linalg.inv(yuv_matrix(source)))[1:, 1:]


# --- streams: URLs in, YUV4MPEG2 out, real time --------------------------------------------------------


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
    ffplay and VLC play from a pipe. Each frame's buffers go out together, so the stream ends at a frame
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
        the last frame, so the stream keeps the source's clock. Frames dropped before the first one shown (the
        model not yet ready for the first) have no last frame: the first one stands in for them."""
        if self.last is not None:
            for _ in range(item.index - self.next_index):
                self._write(self.last)
        self.last = self._yuv(item.sr)
        for _ in range(1 if self.frames else item.index - self.next_index + 1):
            self._write(self.last)
        self.next_index = item.index + 1

    def finish(self, total=None):
        """Repeat the last frame for the frames dropped at the end (total: the frames the source had), flush."""
        if self.last is not None and total is not None:
            for _ in range(total - self.next_index):
                self._write(self.last)
        self._write(())

    def _yuv(self, rgb):
        """A frame's bytes as the buffers written one after another (no copy joins the planes)."""
        import av

        if isinstance(rgb, Yuv420):  # the YUV path's planes, made in this writer's colour (self.colour)
            return (b"FRAME\n", *(np.ascontiguousarray(plane).data for plane in rgb))
        rgb = np.pad(rgb, ((0, self.height - rgb.shape[0]), (0, self.width - rgb.shape[1]), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        yuv = frame.reformat(format="yuv420p", dst_colorspace=self.colour[0], dst_color_range=self.colour[1])
        return (b"FRAME\n", yuv.to_ndarray().data)  # the Y, U and V planes, back to back

    def _write(self, parts):
        """Write one frame's buffers (none: just flush). They go out in one call's writes, in the writer thread,
        so a run stopped by ctrl-C or a failure elsewhere still ends the stream at a frame boundary."""
        try:
            if self.frames == 0 and parts:
                self.stream.write(self.header)
            for part in parts:
                self.stream.write(part)
            self.stream.flush()
        except (BrokenPipeError, ConnectionResetError) as e:
            _silence(self.stream)
            raise PipeClosed() from e
        self.frames += bool(parts)


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
    video_path: str = "rgb"  # "yuv" or "rgb" (choose_video_path)
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


# --- the frame pipeline: decode -> upscale -> encode ---------------------------------------------------


def rgb_of(item):
    """A decoded frame's RGB: what the model gets of it on the RGB path (run_frames' model_input)."""
    return item.rgb


def run_frames(items, upscale_frames, sink, *, frames_per_batch=1, threaded=True, inbox=None, model_input=rgb_of):
    """Upscale the frames among items (objects with .rgb; they get .sr) and hand every item, in order,
    to sink; items without .rgb (audio packets) pass through untouched. upscale_frames gets a list of
    model_input(frame) (default: the frames' RGB) and returns one output per frame.

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
            for item in _upscale_group(group, upscale_frames, model_input):
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
            if not _put(outbox, _upscale_group(group, upscale_frames, model_input), stop):
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
                sr = self.inference.image(item.rgb) if isinstance(item.sr, Yuv420) else item.sr  # the YUV path's
                write_compare(self.compare_to, item.rgb, sr, self.inference.scale, self.inference.label,
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


def _upscale_group(group, upscale_frames, model_input=rgb_of):
    """Set .sr on every frame of the group, with one upscale_frames call for all of them."""
    frames = [item for item in group if _is_frame(item)]
    if frames:
        for frame, sr in zip(frames, upscale_frames([model_input(frame) for frame in frames]), strict=True):
            frame.sr = sr
    return group


def _until_failure(items, failures):
    """The items up to an error (appended to failures), so what came before it can still be used."""
    try:
        yield from items
    except Exception as e:
        failures.append(e)


# --- --compare -----------------------------------------------------------------------------------------


def compare_path(dst):
    """Where --compare writes its side-by-side image: beside the output, <stem>_compare.png."""
    return dst.with_name(dst.stem + COMPARE_SUFFIX)


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


# --- outputs and errors --------------------------------------------------------------------------------


def remove_dead_temp_outputs(dst, compare):
    """Delete the temporary outputs that a killed earlier run left for dst (and its compare image); a live
    process's are left alone. Returns how many were removed."""
    leftovers = [p for out in ([dst, compare_path(dst)] if compare else [dst]) for p in resizer.dead_temp_outputs(out)]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return len(leftovers)


def failure_reason(src, error):
    """The error's message without the file name in front (the report names the file once)."""
    text = str(error)
    for name in (str(src), str(Path(src).resolve())):
        if text.startswith(name + ": "):
            return text[len(name) + 2 :]
    if isinstance(error, ValueError | OSError | MemoryError) and text:
        return text
    return f"{type(error).__name__}: {text}"
