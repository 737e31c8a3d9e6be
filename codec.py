"""Streams as a viewer receives them: short clips with motion over a photo, downscaled, encoded with a real
codec and decoded again through PyAV. create_dataset.py (--codec) makes training pairs from such clips and
flow.py's stream benchmark scores models on them; both take the clip, downscale and codec logic from here.

    boxes = camera_path((w, h), (512, 288), 8, rng)                  # a pan, zoom or shake over a w x h photo
    hr = render_frames(photo, boxes, (512, 288))                      # 8 HR frames of 512x288
    lr = downscale_frames(hr, 4, "bicubic")                           # 8 LR frames of 128x72 (antialiased)
    decoded, stream = encode_decode(lr, "libx264", crf=28, preset="medium")   # what the viewer decodes
    stream["kbps"], stream["frame_types"]                             # e.g. 96.3, "IBBBPBBP"

    settings = draw_clip_settings(spec, rng)                          # create_dataset: codec, CRF, preset, ...
    lr, stream = degrade_clip(hr, 4, settings, seed)                  # blur, noise, downscale, codec

Frames are uint8 RGB; the encoder sees yuv420p (BT.601, limited range, as FFmpeg's default conversion both
ways), so chroma subsampling is part of the loss, as in any stream. Encoders run on one thread, so the same
frames and settings give the same bytes on every run, which the datasets' "same seed, same pairs" promise
needs. libx264 also runs without its assembly (asm=0): with it, one thread (thread_count = 1, and x264's own
threads=1:lookahead-threads=1) still gave up to 4 different sizes in 60 encodes of the same 96x64 clip
whenever other encodes had run in the process before (libx264 through PyAV 18.1 on this AVX-512 CPU; an
uninitialised read, by its dependence on the process's history); without the assembly, every one of 60
settings (5 presets x 2 profiles x 2 CRFs x 3 sizes) gave 1 size in 40 encodes, at 1.3x the time at 96x64
and 2-13x at 256x144 (0.14-0.36 s for 8 frames at preset medium).
One thread per clip costs nothing: the dataset's workers run clips in parallel.
"""

import math
from fractions import Fraction

import numpy as np
from PIL import Image

import resizer

# -----------------------------------------------------------------------------
# configuration
FPS = 25  # frame rate the clips are encoded at (it sets the bitrate a clip's bytes mean)
PIX_FMT = "yuv420p"
X264_PRESETS = ("veryfast", "faster", "fast", "medium", "slow")  # drawn per clip (streams use many)
# Encoders the project knows how to drive: decoder, CRF range (None: bitrate only), presets and profiles
# drawn per clip (the option each is passed as), and fixed options (one thread: deterministic output).
CODECS = {
    "libx264": {"decoder": "h264", "crf": (0, 51), "preset_option": "preset", "presets": X264_PRESETS,
                "profiles": ("baseline", "main", "high"), "options": {"x264-params": "threads=1:lookahead-threads=1:asm=0"}},  # see the docstring
    "libx265": {"decoder": "hevc", "crf": (0, 51), "preset_option": "preset", "presets": X264_PRESETS,
                "profiles": (), "options": {"x265-params": "log-level=error:pools=none:frame-threads=1"}},
    "libvpx-vp9": {"decoder": "vp9", "crf": (0, 63), "preset_option": "cpu-used", "presets": ("1", "2", "3", "4", "5"),
                   "profiles": (), "options": {"row-mt": "0"}},
    "mpeg4": {"decoder": "mpeg4", "crf": None, "preset_option": None, "presets": (), "profiles": (), "options": {}},
}
DEFAULT_CODEC = "libx264"
DEFAULT_CRF = (18, 35)  # AnimeSR's range for libx264
BITRATE_LIMITS = (1, 100_000)  # kbit/s a --bitrate range may span (RealBasicVSR draws 10-100)
DOWNSCALERS = ("box", "bilinear", "bicubic", "lanczos")  # Pillow's, antialiased; box is OpenCV's "area"
CLIP_FRAMES = 8
CLIP_WINDOW = (512, 288)  # HR window (width, height) the camera sees: 128x72 LR at x4
PAN_PER_FRAME = 0.02  # a pan moves at most this fraction of the window width per frame
ZOOM_SHARE, ZOOM_MAX = 0.3, 1.25  # share of clips that zoom, between 1x and this much wider a view
SHAKE_SHARE, SHAKE_SIGMA = 0.3, 0.005  # share of clips that shake, jitter up to this fraction of the width
# the stream benchmark (flow.py evaluate-stream): as issue 20 measured it
BENCH_WINDOW = (1024, 576)  # HR window: 256x144 LR at x4 ...
BENCH_ROOM = 0.75  # ... or at most this share of a smaller photo's sides, leaving the pan room
BENCH_FRAMES = 8
BENCH_PRESET = "medium"
# -----------------------------------------------------------------------------


class CodecError(ValueError):
    """A codec, CRF or bitrate that cannot be used, or an encode/decode that failed (one line, names the cause)."""


def available_codecs():
    """The CODECS this PyAV build can both encode and decode, in CODECS order."""
    import av

    names = av.codecs_available
    return [name for name, spec in CODECS.items() if name in names and spec["decoder"] in names
            and _has_encoder(name)]


def _has_encoder(name):
    import av

    try:
        av.Codec(name, "w")
    except Exception:  # av raises UnknownCodecError (a ValueError) or a plain FFmpeg error by version
        return False
    return True


def check_codec(name):
    """Raise CodecError naming the codec and the available ones when PyAV cannot encode and decode `name`."""
    available = available_codecs()
    if name not in available:
        known = "" if name in CODECS else " (not one this project drives)"
        raise CodecError(f"codec {name!r} is not available{known}; available: {', '.join(available) or 'none'}")


def check_rate(codec, crf=None, bitrate_kbps=None):
    """Raise CodecError for a CRF range outside the codec's, a bitrate range outside BITRATE_LIMITS, a codec
    without CRF and no bitrate, or a range whose low end is above its high end. Ranges are (lo, hi)."""
    if bitrate_kbps is not None:
        lo, hi = bitrate_kbps
        if not BITRATE_LIMITS[0] <= lo <= hi <= BITRATE_LIMITS[1]:
            raise CodecError(f"bitrate range {lo}-{hi} kbit/s must lie within {BITRATE_LIMITS[0]}-"
                             f"{BITRATE_LIMITS[1]}, low end first")
        return
    limits = CODECS.get(codec, {}).get("crf")
    if limits is None:
        raise CodecError(f"{codec} has no CRF: give a bitrate range (kbit/s) instead")
    lo, hi = crf
    if not limits[0] <= lo <= hi <= limits[1]:
        raise CodecError(f"CRF range {lo}-{hi} must lie within {codec}'s {limits[0]}-{limits[1]}, low end first")


# ----------------------------------------------------------------------------- clips with motion


def camera_path(canvas, window, frames, rng):
    """Boxes (left, top, width, height) in canvas pixels, one per frame, of a camera moving over a canvas of
    size (width, height) and seeing `window` (width, height) per frame: a pan (random direction and speed up
    to PAN_PER_FRAME of the width per frame), a zoom (ZOOM_SHARE of clips, between 1x and ZOOM_MAX x wider a
    view, never narrower, so HR frames are never upsampled) and a shake (SHAKE_SHARE of clips, Gaussian
    jitter). Every box lies inside the canvas; with no room to move, the camera stands still.
    A box of the window's own size has integer corners (a plain crop); zoomed boxes are fractional.
    """
    cw, ch = canvas
    w, h = window
    if w > cw or h > ch:
        raise ValueError(f"window {w}x{h} does not fit the canvas {cw}x{ch}")
    t = np.linspace(0.0, 1.0, frames)
    room = min(cw / w, ch / h)
    zooms = np.ones(frames)
    if rng.random() < ZOOM_SHARE and room > 1.01:
        ends = rng.uniform(1.0, min(ZOOM_MAX, room), 2)
        zooms = ends[0] + (ends[1] - ends[0]) * t
    angle, speed = rng.uniform(0, 2 * math.pi), rng.uniform(0, PAN_PER_FRAME * w)
    dx, dy = (frames - 1) * speed * math.cos(angle) * t, (frames - 1) * speed * math.sin(angle) * t
    if rng.random() < SHAKE_SHARE:
        sigma = rng.uniform(0.2, 1.0) * SHAKE_SIGMA * w
        dx, dy = dx + rng.normal(0, sigma, frames), dy + rng.normal(0, sigma, frames)
    widths, heights = w * zooms, h * zooms
    # centres relative to the first; shrink the motion until the whole path fits, then place it at random
    for _ in range(8):
        lefts, tops = dx - widths / 2, dy - heights / 2
        span_x = (lefts + widths).max() - lefts.min()
        span_y = (tops + heights).max() - tops.min()
        if span_x <= cw and span_y <= ch:
            break
        dx, dy = dx * 0.7, dy * 0.7
    else:
        dx, dy = np.zeros(frames), np.zeros(frames)
        lefts, tops = -widths / 2, -heights / 2
        span_x, span_y = widths.max(), heights.max()
    x0 = rng.uniform(0, cw - span_x) - lefts.min()
    y0 = rng.uniform(0, ch - span_y) - tops.min()
    boxes = []
    for i in range(frames):
        left, top = x0 + lefts[i], y0 + tops[i]
        if zooms[i] == 1.0:
            left, top = min(max(round(left), 0), cw - w), min(max(round(top), 0), ch - h)
        boxes.append((float(left), float(top), float(widths[i]), float(heights[i])))
    return boxes


def pan_path(canvas, window, frames, step=PAN_PER_FRAME):
    """Boxes of a steady pan right and down, centred on the canvas (the benchmark's camera, no randomness):
    each frame moves `step` x the window's width along x and `step` x its height along y, less where the
    canvas leaves less room; integer positions, the window's own size."""
    cw, ch = canvas
    w, h = window
    if w > cw or h > ch:
        raise ValueError(f"window {w}x{h} does not fit the canvas {cw}x{ch}")
    moves = max(frames - 1, 1)
    sx, sy = min((cw - w) / moves, step * w), min((ch - h) / moves, step * h)
    x0, y0 = (cw - w - sx * moves) / 2, (ch - h - sy * moves) / 2
    return [(float(round(x0 + sx * i)), float(round(y0 + sy * i)), float(w), float(h)) for i in range(frames)]


def benchmark_clip(photo, scale, window=BENCH_WINDOW, frames=BENCH_FRAMES):
    """The stream benchmark's HR frames of a photo: a window (at most `window`, and at most BENCH_ROOM of
    the photo's sides so the camera can move; sides multiples of 2 x scale) panning over it (pan_path)."""
    boxes, fitted = benchmark_camera((photo.shape[1], photo.shape[0]), scale, window, frames)
    return render_frames(photo, boxes, fitted)


def benchmark_camera(size, scale, window=BENCH_WINDOW, frames=BENCH_FRAMES):
    """The stream benchmark's camera over a photo of size (width, height): (pan_path's boxes, the fitted
    window (width, height)), as benchmark_clip films it."""
    fitted = fit_window([v * BENCH_ROOM for v in size], window, 2 * scale)
    if min(fitted) < 2 * scale:
        raise ValueError(f"{size[0]}x{size[1]} is too small for a x{scale} stream")
    return pan_path(size, fitted, frames), fitted


def fit_window(canvas, window, multiple):
    """The largest window (width, height) no larger than `window` nor the canvas, sides multiples of `multiple`
    (2 x scale: even LR sides for yuv420p); a side of 0 means the canvas is too small."""
    return tuple(min(int(want), int(have)) // multiple * multiple for want, have in zip(window, canvas, strict=True))


def render_frames(canvas, boxes, window):
    """HR frames (uint8, window height x width) seen through each box: a crop where the box is the window's
    size at integer corners, else the box resampled to the window (antialiased bicubic)."""
    w, h = window
    image = None
    frames = []
    for left, top, bw, bh in boxes:
        if (bw, bh) == (w, h) and float(left).is_integer() and float(top).is_integer():
            x, y = int(left), int(top)
            frames.append(np.ascontiguousarray(canvas[y : y + h, x : x + w]))
            continue
        if image is None:
            image = Image.fromarray(canvas)
        frames.append(np.asarray(image.resize((w, h), Image.Resampling.BICUBIC, box=(left, top, left + bw, top + bh))))
    return frames


def downscale_frames(frames, scale, downscaler="bicubic"):
    """Each frame downscaled by `scale` with one of resizer's (antialiased) filters."""
    return [resizer.lr_from_hr(frame, scale, downscaler) for frame in frames]


# ----------------------------------------------------------------------------- codec


def encode_decode(frames, codec=DEFAULT_CODEC, *, crf=None, bitrate_kbps=None, preset=None, profile=None, fps=FPS):
    """Encode uint8 RGB frames (even sides) as one yuv420p stream and decode it again: what a viewer gets.

    crf: constant quality (libx264/libx265/libvpx-vp9), or bitrate_kbps: a target rate (any codec); preset
    and profile as CODECS names them (None: the encoder's default). Returns (decoded frames, stream) with
    stream = {"bytes", "kbps" (at fps), "frame_types" (one letter a frame in display order: I, P, B, or ?
    where the decoder does not say, as VP9's)}. Raises CodecError when the encoder or decoder fails.
    """
    import av

    spec = CODECS.get(codec)
    if spec is None:
        raise CodecError(f"codec {codec!r} is not one of {', '.join(CODECS)}")
    height, width = frames[0].shape[:2]
    try:
        encoder = av.CodecContext.create(codec, "w")
        encoder.width, encoder.height, encoder.pix_fmt = width, height, PIX_FMT
        encoder.time_base, encoder.framerate = Fraction(1, fps), Fraction(fps)
        encoder.thread_count = 1
        encoder.options = _encoder_options(spec, crf, bitrate_kbps, preset, profile)
        if bitrate_kbps is not None:
            encoder.bit_rate = int(bitrate_kbps * 1000)
        packets = []
        for index, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=PIX_FMT)
            frame.pts = index
            packets += encoder.encode(frame)
        packets += encoder.encode(None)
        decoder = av.CodecContext.create(spec["decoder"], "r")
        decoder.thread_count = 1
        decoded = []
        for packet in [*packets, None]:
            decoded += decoder.decode(packet)
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise CodecError(f"{codec} failed on {len(frames)} frames of {width}x{height}: {e}") from e
    if len(decoded) != len(frames):
        raise CodecError(f"{codec}: {len(frames)} frames encoded but {len(decoded)} decoded")
    size = sum(p.size for p in packets)
    stream = {"bytes": size, "kbps": round(size * 8 * fps / len(frames) / 1000, 2),
              "frame_types": "".join(_frame_type(f) for f in decoded)}
    return [f.to_ndarray(format="rgb24") for f in decoded], stream


def _encoder_options(spec, crf, bitrate_kbps, preset, profile):
    options = dict(spec["options"])
    if bitrate_kbps is None:
        if spec["crf"] is None:
            raise CodecError("this codec has no CRF: give a bitrate")
        options["crf"] = str(crf)
        if spec["decoder"] == "vp9":
            options["b"] = "0"  # VP9's constant-quality mode
    if preset is not None and spec["preset_option"]:
        options[spec["preset_option"]] = str(preset)
    if profile is not None:
        options["profile"] = str(profile)
    return options


def _frame_type(frame):
    return {1: "I", 2: "P", 3: "B"}.get(int(frame.pict_type), "?")


# ----------------------------------------------------------------------------- random stream conditions


def stream_spec(codec=DEFAULT_CODEC, *, crf=DEFAULT_CRF, bitrate_kbps=None, presets=None, profiles=None,
                downscalers=DOWNSCALERS, blur=None, noise=None, clean_share=0.0, frames=CLIP_FRAMES,
                window=CLIP_WINDOW, pairs_per_frame=2):
    """Check the stream conditions a dataset draws its clips from and gather them as one JSON-able dict
    (create_dataset's parameters.codec). Raises CodecError for a codec PyAV lacks (naming those it has),
    a CRF or bitrate out of range, or other bad values. Ranges are (lo, hi); blur sigma in HR pixels,
    noise sigma in 0..255 units, both applied before the downscale (Real-ESRGAN's first order)."""
    check_codec(codec)
    spec = CODECS[codec]
    crf = None if bitrate_kbps is not None else tuple(int(v) for v in crf)
    bitrate = None if bitrate_kbps is None else tuple(float(v) for v in bitrate_kbps)
    check_rate(codec, crf, bitrate)
    presets = tuple(spec["presets"] if presets is None else presets)
    profiles = tuple(spec["profiles"] if profiles is None else profiles)
    for kind, chosen, known in (("preset", presets, spec["presets"]), ("profile", profiles, spec["profiles"])):
        unknown = [p for p in chosen if p not in known]
        if unknown:
            raise CodecError(f"{codec} {kind} {unknown[0]!r} is not one of: {', '.join(known) or 'none'}")
    unknown = [d for d in downscalers if d not in DOWNSCALERS]
    if unknown or not downscalers:
        raise CodecError(f"downscalers must be among {', '.join(DOWNSCALERS)}, not {', '.join(unknown) or 'none'}")
    for name, rng in (("blur", blur), ("noise", noise)):
        if rng is not None and not 0 <= rng[0] <= rng[1]:
            raise CodecError(f"{name} range {rng[0]}-{rng[1]} must be >= 0, low end first")
    if not 0 <= clean_share <= 1:
        raise CodecError(f"clean share must be in [0, 1], not {clean_share}")
    if frames < 1 or pairs_per_frame < 1:
        raise CodecError("clips need at least 1 frame and 1 pair a frame")
    return {"codec": codec, "crf": list(crf) if crf else None, "bitrate_kbps": list(bitrate) if bitrate else None,
            "presets": list(presets), "profiles": list(profiles), "downscalers": list(downscalers),
            "blur": None if blur is None else [float(v) for v in blur],
            "noise": None if noise is None else [float(v) for v in noise],
            "clean_share": float(clean_share), "frames": int(frames), "window": [int(v) for v in window],
            "pairs_per_frame": int(pairs_per_frame), "fps": FPS}


def draw_clip_settings(spec, rng):
    """One clip's stream conditions drawn from a stream_spec: {"codec" ("none" for a clean clip), "crf" or
    "bitrate_kbps", "preset", "profile", "downscaler", "blur", "noise"} (blur/noise 0 when off)."""
    settings = {"downscaler": str(rng.choice(spec["downscalers"]))}
    clean = rng.random() < spec["clean_share"]
    blur = _uniform(rng, spec["blur"])
    noise = _uniform(rng, spec["noise"])
    if clean:
        return {"codec": "none", **settings, "blur": 0.0, "noise": 0.0}
    if spec["bitrate_kbps"]:
        lo, hi = spec["bitrate_kbps"]
        settings["bitrate_kbps"] = round(float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), 1)  # log-uniform
    else:
        settings["crf"] = int(rng.integers(spec["crf"][0], spec["crf"][1] + 1))
    settings["preset"] = str(rng.choice(spec["presets"])) if spec["presets"] else None
    settings["profile"] = str(rng.choice(spec["profiles"])) if spec["profiles"] else None
    return {"codec": spec["codec"], **settings, "blur": blur, "noise": noise}


def _uniform(rng, bounds):
    return 0.0 if bounds is None else round(float(rng.uniform(*bounds)), 3)


def degrade_clip(hr_frames, scale, settings, seed):
    """LR frames of a clip as a stream delivers them: blur and noise (fresh noise each frame, from `seed`) on
    the HR frames, the settings' downscaler, then the codec (none for a clean clip). Returns (lr frames,
    stream info: {"bytes", "kbps", "frame_types"}, or {} for a clean clip). Raises CodecError."""
    seeds = np.random.SeedSequence(seed).generate_state(len(hr_frames))
    frames = hr_frames
    if settings["blur"] or settings["noise"]:
        frames = [resizer.degrade(f, blur_sigma=settings["blur"], noise_sigma=settings["noise"], seed=int(s))
                  for f, s in zip(frames, seeds, strict=True)]
    lr = downscale_frames(frames, scale, settings["downscaler"])
    if settings["codec"] == "none":
        return lr, {}
    return encode_decode(lr, settings["codec"], crf=settings.get("crf"), bitrate_kbps=settings.get("bitrate_kbps"),
                         preset=settings.get("preset"), profile=settings.get("profile"))
