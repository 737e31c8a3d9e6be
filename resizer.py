"""Image utilities on NumPy arrays: load any image file as uint8 RGB, crop, resize, degrade, save atomically.

Pixels are uint8 (H, W, 3) RGB arrays throughout; `to_float`/`to_uint8` convert to and from float32 in [0, 1],
the models' range. LR images are made from HR by Pillow's antialiased bicubic, which matches MATLAB's
`imresize` closely, so dataset pairs, bicubic baselines and published numbers agree.

    rgb = load_image("photo.jpg")                 # EXIF orientation applied, any mode -> uint8 RGB
    thumb = load_square("photo.jpg", 256)         # centre square at 256x256, fast on big JPEGs
    hr = resize(center_square(rgb), (128, 128))   # antialiased bicubic
    lr = lr_from_hr(hr, 4)                        # 32x32
    save_image("out/lr.png", lr)                  # atomic: no half-written file on a crash
"""

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

# -----------------------------------------------------------------------------
# configuration
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # Pillow's own warning threshold (~89.5 MP)
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
TEMP_MARK = ".tmp-"  # atomic_output's temporary files are named ".<name>.tmp-<random><suffix>"
DEFAULT_SAVE_OPTIONS = {"JPEG": {"quality": 95}, "WEBP": {"quality": 95}}
PALETTE_DITHERS = {"none": Image.Dither.NONE, "floyd": Image.Dither.FLOYDSTEINBERG}  # degrade(palette_dither=...)
# every still-image file suffix the project reads (fetcher, create_dataset, flow evaluate, upscale): one list
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".dib", ".gif", ".tif", ".tiff", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".tga", ".jp2", ".j2k", ".avif", ".heic", ".heif", ".ico")
# -----------------------------------------------------------------------------


class ImageLoadError(ValueError):
    """An image file that cannot be used: missing, empty, corrupt, truncated, not an image, or too large.

    The message starts with the file's path, so a batch can report it as is.
    """


def load_image(path, *, with_alpha=False, max_pixels=DEFAULT_MAX_PIXELS, draft_size=None):
    """Load an image file as a uint8 (H, W, 3) RGB array with its EXIF orientation applied.

    Every Pillow mode is converted: grey (L, 1, LA), palette (P, with or without transparency), RGBA, CMYK
    (through its ICC profile when it has one), 16-bit integer (I;16*, scaled to 8 bits), 32-bit integer (I)
    and float (F). Multi-frame files (GIF, TIFF) give their first frame.

    with_alpha: return (rgb, alpha) where alpha is a uint8 (H, W) array, or None when the file has none.
        Without it, the colour channels are returned as stored and the alpha channel is dropped.
    max_pixels: refuse images with more pixels than this (decompression bombs) with an ImageLoadError
        instead of running out of memory; None means no limit of our own. Pillow's hard limit
        (2 * PIL.Image.MAX_IMAGE_PIXELS) still applies.
    draft_size: JPEG only: let the decoder shrink the image by up to 8x (DCT scaling, much faster than a
        full decode) while its shorter side stays >= draft_size pixels. An int (shorter side) or a
        (width, height) tuple, both in the orientation after EXIF rotation. Other formats ignore it.

    Raises ImageLoadError (message starting with the path) for a missing, empty, corrupt, truncated,
    unreadable or oversized file.
    """
    path = Path(path)
    with _errors_named(path), _open_image(path) as im:
        orientation = _exif_orientation(im)
        if draft_size is not None and im.format in ("JPEG", "MPO"):
            _apply_draft(im, draft_size, orientation)
        _check_pixels(path, im.size, max_pixels)
        im.load()
        im = _apply_orientation(im, orientation)
        rgb, alpha = _to_rgb_and_alpha(path, im)
    return (rgb, alpha) if with_alpha else rgb


def load_square(path, size, *, filter="bicubic", draft=True, max_pixels=DEFAULT_MAX_PIXELS):
    """The centre square of an image file, EXIF orientation applied, resized to a uint8 (size, size, 3) array.

    The same pixels as resize(center_square(load_image(path)), (size, size), filter), computed faster: RGB and
    grey images are cropped and resized inside Pillow, so a large photo is never copied into NumPy whole, and
    with draft=True a JPEG at least 4x larger than `size` is decoded at reduced size (>= 2x size, DCT
    scaling) first, which changes the result by far less than a grey level on average (PSNR > 40 dB).
    Errors as load_image.
    """
    path = Path(path)
    with _errors_named(path), _open_image(path) as im:
        orientation = _exif_orientation(im)
        if draft and im.format in ("JPEG", "MPO"):
            _apply_draft(im, 2 * size, orientation)
        _check_pixels(path, im.size, max_pixels)
        im.load()
        im = _apply_orientation(im, orientation)
        if im.mode not in ("RGB", "L"):  # palettes, alpha, CMYK, 16-bit, float: the general conversion
            rgb, _ = _to_rgb_and_alpha(path, im)
            return resize(center_square(rgb), (size, size), filter)
        width, height = im.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        if filter not in FILTERS:
            raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
        square = im.crop((left, top, left + side, top + side)).resize((size, size), FILTERS[filter])
        pixels = np.asarray(square, dtype=np.uint8)
    return _grey_to_rgb(pixels) if pixels.ndim == 2 else pixels.copy()


def image_size(path, *, max_pixels=DEFAULT_MAX_PIXELS):
    """(width, height) of an image file as displayed (EXIF orientation applied), read from its header only.

    A cheap first check before decoding: raises ImageLoadError for a missing, empty, unreadable or oversized
    file like load_image does; damage further into the file (truncation) is only found by load_image.
    """
    path = Path(path)
    with _errors_named(path), _open_image(path) as im:
        _check_pixels(path, im.size, max_pixels)
        width, height = im.size
        return (height, width) if _exif_orientation(im) in (5, 6, 7, 8) else (width, height)


@contextlib.contextmanager
def _errors_named(path):
    """Turn whatever Pillow or the OS raises for a bad file into one ImageLoadError that names the file."""
    try:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file (0 bytes)")
        yield
    except (ImageLoadError, MemoryError):
        raise
    except FileNotFoundError as e:
        raise ImageLoadError(f"{path}: no such file") from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"{path}: is a folder, not an image") from e
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError(f"{path}: not an image file that Pillow can read") from e
    except Image.DecompressionBombError as e:
        raise ImageLoadError(f"{path}: refused as a possible decompression bomb ({e})") from e
    except Exception as e:  # Pillow's decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageLoadError(f"{path}: cannot decode ({type(e).__name__}: {_describe(e)})") from e


def _open_image(path):
    """Image.open without Pillow's bomb warning (our max_pixels check gives the clear error) or its warnings
    about broken EXIF blocks (the pixels are still fine; the orientation falls back to 1)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message=r".*[Cc]orrupt EXIF", category=UserWarning)
        return Image.open(path)


def _describe(e):
    text = str(e)
    if "truncated" in text:
        return text
    if isinstance(e, EOFError):
        return f"file is truncated ({text})" if text else "file is truncated"
    return text or "corrupt data"


def _check_pixels(path, size, max_pixels):
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageLoadError(
            f"{path}: refused as a possible decompression bomb: {width}x{height} = {width * height:,} pixels "
            f"is more than the limit of {max_pixels:,} (raise max_pixels if the file is genuine)"
        )


def _exif_orientation(im):
    """The EXIF orientation tag (1..8), or 1 when absent or unreadable (a broken EXIF block is no reason to
    reject the pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data" and carries on
            orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return 1
    return orientation if orientation in range(1, 9) else 1


_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_orientation(im, orientation):
    return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im


def _apply_draft(im, draft_size, orientation):
    """Ask the JPEG decoder for a reduced size whose sides stay at or above the requested minimum."""
    width, height = im.size
    if isinstance(draft_size, int):
        scale = draft_size / min(width, height)
        wanted = (max(1, int(np.ceil(width * scale))), max(1, int(np.ceil(height * scale))))
    else:
        wanted = tuple(int(v) for v in draft_size)
        if orientation in (5, 6, 7, 8):  # the request is in displayed orientation; the decoder's is stored
            wanted = wanted[::-1]
    if wanted[0] < width and wanted[1] < height:
        im.draft(None, wanted)


def _to_rgb_and_alpha(path, im):
    """Convert any Pillow mode to (uint8 RGB array, uint8 alpha array or None)."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "CMYK":
        im = _cmyk_to_rgb(im)
    elif mode in ("RGBa", "La"):  # premultiplied alpha: undo it
        im = im.convert("RGBA")
    mode = im.mode

    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy(), None
    if mode == "RGBA":
        rgba = np.asarray(im, dtype=np.uint8)
        return rgba[..., :3].copy(), rgba[..., 3].copy()
    if mode == "LA":
        la = np.asarray(im, dtype=np.uint8)
        return _grey_to_rgb(la[..., 0]), la[..., 1].copy()
    if mode in ("L", "1"):
        return _grey_to_rgb(np.asarray(im.convert("L"), dtype=np.uint8)), None
    if mode.startswith("I;16") or mode == "I":
        return _grey_to_rgb(_int_to_uint8(np.asarray(im))), None
    if mode == "F":
        return _grey_to_rgb(_float_to_uint8(np.asarray(im, dtype=np.float32))), None
    try:  # YCbCr, HSV and the rest Pillow knows how to convert
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy(), None
    except ValueError as e:
        raise ImageLoadError(f"{path}: unsupported image mode {mode!r}") from e


def _cmyk_to_rgb(im):
    """CMYK through the embedded ICC profile to sRGB when there is one (print files), else Pillow's formula."""
    profile = im.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken profile: fall back to the plain conversion below
            pass
    return im.convert("RGB")


def _grey_to_rgb(grey):
    return np.repeat(grey[..., None], 3, axis=2)


def _int_to_uint8(values):
    """16-bit (or 32-bit integer holding 16-bit) grey to 8 bits: 65535 -> 255, exactly as x / 257 rounded."""
    values = values.astype(np.int64)
    lo, hi = int(values.min()), int(values.max())
    if lo >= 0 and hi <= 65535:
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    return _stretch(values.astype(np.float64), lo, hi)  # other 32-bit ranges: map min..max to 0..255


def _float_to_uint8(values):
    """32-bit float grey to 8 bits: [0, 1] data is scaled by 255, [0, 255] data kept, other ranges stretched."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if lo >= 0.0 and hi <= 1.0:
        return to_uint8(values)
    if lo >= 0.0 and hi <= 255.0:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return _stretch(values, lo, hi)


def _stretch(values, lo, hi):
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.rint((values - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def to_float(img):
    """uint8 image -> float32 in [0, 1] (float input is returned as float32 unchanged)."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float32, copy=False)
    raise TypeError(f"to_float expects a uint8 or float image, got {img.dtype}")


def to_uint8(x):
    """Float image in [0, 1] -> uint8, rounded to nearest and clipped (NaN -> 0); uint8 input is returned as is."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise TypeError(f"to_uint8 expects a float image in [0, 1], got {x.dtype}")
    scaled = np.nan_to_num(x.astype(np.float32) * np.float32(255.0), nan=0.0, posinf=255.0, neginf=0.0)
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def resize(img, size, filter="bicubic"):
    """Resize an (H, W), (H, W, 3) or (H, W, 4) image to size = (width, height) with a named filter.

    Pillow's filters are antialiased when shrinking (the kernel widens with the scale), like MATLAB's
    imresize. uint8 input gives uint8 output; float input is resized per channel in float32.
    """
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"resize to {width}x{height}: sizes must be positive")
    img = np.asarray(img)
    resample = FILTERS[filter]
    if img.dtype == np.uint8 and (img.ndim == 2 or img.shape[2] in (3, 4)):
        if img.shape[1::-1] == (width, height):
            return img.copy()
        return np.asarray(Image.fromarray(img).resize((width, height), resample))
    if np.issubdtype(img.dtype, np.floating):
        channels = img[..., None] if img.ndim == 2 else img
        out = np.stack(
            [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c], np.float32), mode="F")
                        .resize((width, height), resample)) for c in range(channels.shape[2])],
            axis=2,
        )
        return out[..., 0] if img.ndim == 2 else out
    raise TypeError(f"resize expects uint8 (H,W[,3|4]) or float images, got {img.dtype} {img.shape}")


def lr_from_hr(hr, scale, filter="bicubic"):
    """The low-resolution image for an HR image: antialiased `filter` downscale by `scale` (Pillow's bicubic
    matches MATLAB's imresize, which made the SR literature's data, closely).

    HR sides must be multiples of scale (use mod_crop first), so LR and HR line up pixel for pixel.
    """
    scale = int(scale)
    height, width = np.asarray(hr).shape[:2]
    if scale < 1 or height % scale or width % scale:
        raise ValueError(f"HR size {width}x{height} is not a multiple of scale {scale}; mod_crop it first")
    return resize(hr, (width // scale, height // scale), filter)


def mod_crop(img, scale):
    """Crop the bottom/right edges so height and width are multiples of scale (as BasicSR and MATLAB do)."""
    img = np.asarray(img)
    height, width = img.shape[:2]
    return img[: height - height % scale, : width - width % scale]


def center_square(img):
    """The largest centred square crop."""
    img = np.asarray(img)
    height, width = img.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return img[top : top + side, left : left + side]


def random_square(img, size, rng=None):
    """A size x size crop at a random position; rng is a numpy Generator or a seed."""
    img = np.asarray(img)
    height, width = img.shape[:2]
    if size > height or size > width:
        raise ValueError(f"cannot crop {size}x{size} from a {width}x{height} image")
    rng = np.random.default_rng(rng)
    top = int(rng.integers(0, height - size + 1))
    left = int(rng.integers(0, width - size + 1))
    return img[top : top + size, left : left + size]


def degrade(img, *, blur_sigma=0, noise_sigma=0, jpeg_quality=None, palette_colors=None, palette_dither="none",
            seed=None):
    """Classical degradations on a uint8 RGB (or grey) image, in this order: Gaussian blur (sigma in pixels),
    additive Gaussian noise (sigma in 0..255 units, drawn from `seed`), JPEG re-compression at `jpeg_quality`,
    and last a colour palette of `palette_colors` (2..256) colours, as saving a GIF does: Pillow's median-cut
    palette of the image, each pixel mapped to its nearest palette colour (palette_dither "none") or with
    Floyd-Steinberg error diffusion ("floyd").

    With the defaults the image is returned unchanged. The same seed gives the same noise.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"degrade expects a uint8 image, got {img.dtype}")
    out = img
    if blur_sigma and blur_sigma > 0:
        from scipy.ndimage import gaussian_filter  # scikit-image's own dependency

        sigma = (blur_sigma, blur_sigma, 0) if out.ndim == 3 else blur_sigma
        out = to_uint8(gaussian_filter(out.astype(np.float32) / 255.0, sigma=sigma, mode="reflect"))
    if noise_sigma and noise_sigma > 0:
        noise = np.random.default_rng(seed).normal(0.0, noise_sigma, out.shape)
        out = np.clip(np.rint(out.astype(np.float64) + noise), 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(jpeg_quality))
        out = np.asarray(Image.open(buffer).convert("RGB" if out.ndim == 3 else "L"))
    if palette_colors is not None:
        out = palettize(out, palette_colors, palette_dither)
    return out if out is not img else img.copy()


def palettize(img, colors, dither="none"):
    """A uint8 RGB (or grey) image reduced to at most `colors` (2..256) colours: Pillow's median-cut palette,
    then each pixel mapped to it without dithering ("none") or with Floyd-Steinberg dithering ("floyd")."""
    if not 2 <= int(colors) <= 256:
        raise ValueError(f"palette colours must be 2..256, got {colors}")
    if dither not in PALETTE_DITHERS:
        raise ValueError(f"unknown palette dither {dither!r}; choose one of {', '.join(PALETTE_DITHERS)}")
    img = np.asarray(img)
    rgb = Image.fromarray(img).convert("RGB")
    palette = rgb.quantize(int(colors), method=Image.Quantize.MEDIANCUT)
    # Pillow dithers only when mapping onto a given palette, so the palette is built first, then applied
    mapped = rgb.quantize(palette=palette, dither=PALETTE_DITHERS[dither]).convert("RGB")
    return np.asarray(mapped.convert("L") if img.ndim == 2 else mapped).copy()


@contextlib.contextmanager
def atomic_output(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same folder, same suffix); on success flush it to disk (fsync) and
    rename it onto `path`; on any exception delete it. After a crash at any instant `path` is whole or absent.

        with atomic_output("model.keras") as tmp:
            model.save(tmp)

    The parent folder is created if needed. Temporary names start with "." and contain TEMP_MARK, so a
    leftover from a killed process is easy to recognise and clean up.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)  # the rename itself survives a power cut only once its folder is flushed
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def fsync_path(path):
    """Flush a file's (or a folder's) data to disk; a no-op where the platform cannot open folders."""
    with contextlib.suppress(IsADirectoryError, PermissionError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path, data, *, indent=2):
    """JSON written atomically (a reader never sees half a file), UTF-8, with a final newline."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")
    return Path(path)


def available_memory_bytes():
    """Bytes this process may still allocate: the kernel's MemAvailable, capped by a cgroup (v1 or v2) limit."""
    available = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 * 2**30  # unknown platform: assume a small machine rather than none
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 2**60:
                available = min(available, int(limit) - int(Path(usage_file).read_text()))
        except (OSError, ValueError):
            continue
    return max(available, 0)


def is_temp_output(path):
    """True for a leftover temporary file of atomic_output (from a process that was killed mid-write)."""
    name = Path(path).name
    return name.startswith(".") and TEMP_MARK in name


def dead_temp_outputs(path):
    """The temporary files atomic_output left beside `path` for `path` itself (".NAME.tmp-PID-XXXX.ext") whose
    writing process is gone: a killed run's leftovers. A live process's (this one's too) are not listed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}{re.escape(TEMP_MARK)}(\d+)-[0-9a-f]+{re.escape(path.suffix)}")
    with contextlib.suppress(OSError):
        return sorted(p for p in path.parent.iterdir()
                      if (match := pattern.fullmatch(p.name)) and not process_alive(int(match[1])))
    return []


def process_alive(pid):
    """True while a process with this id exists (this process included; another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True


def remove_temp_outputs(folder):
    """Delete the leftover temporary files and folders of killed writers under folder; returns how many."""
    leftovers = [p for p in Path(folder).rglob(f"*{TEMP_MARK}*") if is_temp_output(p)]
    for path in leftovers:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(leftovers)


def save_image(path, img, alpha=None, **pil_kwargs):
    """Save a uint8 (H, W[, 3]) image atomically, the format chosen by the extension.

    alpha: optional uint8 (H, W) channel, saved as RGBA/LA (not possible for JPEG). pil_kwargs go to
    Pillow's save (e.g. quality=90, compress_level=1); JPEG and WebP default to quality 95.
    """
    path = Path(path)
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"save_image expects uint8 pixels (use to_uint8), got {img.dtype}")
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown image extension {path.suffix!r}")
    im = Image.fromarray(img)
    if alpha is not None:
        alpha = np.asarray(alpha, dtype=np.uint8)
        if alpha.shape != img.shape[:2]:
            raise ValueError(f"{path}: alpha {alpha.shape} does not match the image {img.shape[:2]}")
        if fmt == "JPEG":
            raise ValueError(f"{path}: JPEG cannot store an alpha channel; use .png or .webp")
        im = im.convert("RGBA" if im.mode == "RGB" else "LA")
        im.putalpha(Image.fromarray(alpha))
    options = {**DEFAULT_SAVE_OPTIONS.get(fmt, {}), **pil_kwargs}
    with atomic_output(path) as tmp:
        im.save(tmp, format=fmt, **options)
    return path
