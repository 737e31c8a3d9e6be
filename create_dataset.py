"""Turn photos on disk into LR/HR training pairs: DATASET/{train,val,test}/{hr,lr}/NAME.png + manifest.json.

    python create_dataset.py --samples --out data/samples                 # scikit-image's colour photos
    python create_dataset.py ~/Pictures RAW --out data/photos --workers 2  # folders (recursive) and fetcher RAW
    python create_dataset.py RAW/manifest.jsonl --out data/x2 --scale 2 --mode patches --patches 32
    python create_dataset.py RAW --out data/gif --palette 32 --palette-dither floyd   # LR as a GIF would be
    python create_dataset.py RAW --out gs://bucket/ds --format tfrecord              # sharded TFRecords
    python create_dataset.py RAW --out data/stream --mode patches --codec libx264 --crf 18 35   # LR as streamed

Modes:
  square   (default) each photo's centre square, resized to hr_size (antialiased bicubic); one pair a photo.
           Large JPEGs are decoded at reduced size (Pillow's draft mode, >= 2x hr_size) first: several
           times faster, and within 40 dB PSNR of a full decode after the final resize (--no-draft: exact).
  patches  up to --patches crops of hr_size at native resolution from a half-overlapping grid, in a seeded
           random order, skipping flat ones (luma variance below --min-variance).
With only --samples as a source the default mode is patches: the 8 sample photos give hundreds of pairs
that way, instead of 8 squares.

The DATASET (what this writes, and what flow.py, the notebooks and the readers below read):
  DATASET/manifest.json
      parameters  scale, hr_size, lr_size (= hr_size / scale), mode, filter (the LR resampling filter),
                  degradations (the resizer.degrade arguments used, {} for none), seed, format, split
                  fractions, and the mode's settings (patches, min_variance, draft, min_size, max_images)
      counts      pairs per split {train, val, test}; photos: source photos per split
      sources     one entry per source photo used: path ("skimage:NAME" for a sample photo), sha256, bytes,
                  width, height, split, name (its pair-name prefix), pairs, provenance (fetcher attribution)
      skipped     every file left out, with its reason (unreadable, too small, duplicate, all patches flat)
      shards      tfrecord format only: per split, [{file, records, bytes}]
  png format (default): DATASET/{train,val,test}/{hr,lr}/NAME.png, HR hr_size x hr_size, LR lr_size, same
      NAME in hr/ and lr/. NAME = source file stem + first 8 hex digits of its sha256 + 3-digit crop index,
      e.g. astronaut-a1b2c3d4-007.png (the index is 000 in square mode).
  tfrecord format: DATASET/{train,val,test}-NNNNN-of-MMMMM.tfrecord, shards of about --shard-mb MB; each
      record holds name (NAME without .png), lr_png and hr_png (PNG bytes), lr_height, lr_width, hr_height,
      hr_width. Read with tfrecord_files(DATASET, split) and tfrecord_pair_dataset(files) (TensorFlow is
      imported only for this format). DATASET may be any path TensorFlow writes (gs://, s3://, ...).
  A source photo belongs to exactly one split, so crops of one photo never sit on both sides of the
  train/test line.

Splits: a photo's split follows from its sha256 and --seed alone (assign_splits): a key in [0, 1) cut at
the split fractions, so adding or removing other photos does not move it. Small sets are topped up: val
and test hold at least 2 photos each from 6 photos on (1 from 3 on), taken from the photos whose keys lie
nearest (the only photos that may move when others are added).

LR = resizer.lr_from_hr(HR) then optional degradations in LR pixels (blur, noise, JPEG, colour palette).

Streams (--codec NAME): LR as a video stream delivers it, made by codec.py. Each clip is --clip-frames frames
(default 8) of a --clip-size window (default 512x288 HR; at most 0.85 of the photo's sides, as room to move)
that pans, zooms or shakes over the photo, so the codec makes P and B frames, not only I frames; per clip a
downscaler is drawn (--downscalers: box/area, bilinear, bicubic, lanczos, all antialiased), and optionally
Real-ESRGAN's first-order blur and noise (--codec-blur, --codec-noise: ranges, applied to the HR frames before
the downscale); the LR clip is encoded in yuv420p at a CRF drawn from --crf LO HI (default 18 35) or a bitrate
from --bitrate LO HI kbit/s (log-uniform; mpeg4 needs it), with a random preset and profile (--codec-presets,
--codec-profiles), and decoded. --clip-pairs aligned crops per decoded frame (LR at p, HR at scale x p) become
pairs; --clean-share of the clips skip blur, noise and codec. Patches mode: clips over the photo at native
resolution, enough for --patches pairs; square mode: one clip over the whole photo, scaled so its shorter side
is 1.5x the window's. Each source's "clips" in manifest.json give every clip's codec, crf or bitrate, preset,
profile, downscaler, blur, noise, camera boxes, measured kbps and frame types (I/P/B), and which pairs came
from which frame (first_pair, pairs, pair_frames). A clip whose encode or decode fails is listed there with
its reason and left out; the photo's other clips still make pairs. --filter is not used (parameters.filter is
null): the downscaler is the clip's. The other LR degradations (--blur, --noise, --jpeg, --palette) cannot be
combined with a stream.

Bad or too-small files are skipped and listed with their reason in manifest.json; when no pair can be made
(no image files, or every one skipped) the command says why, exits with status 1 and leaves no dataset
behind. Re-running into the same folder reuses finished photos; a png folder always mirrors manifest.json
(pairs of photos no longer among the sources are removed). Writes are atomic (temporary name, then
rename), so an interrupted run leaves no half-written file; run the same command again to finish it
(the tfrecord format rewrites its shards then, and reuses a finished dataset whose photos are unchanged).
"""

import argparse
import contextlib
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import re
import secrets
import shutil
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

import codec
import resizer

# -----------------------------------------------------------------------------
# configuration (the defaults of the command-line flags)
MODE = "square"  # square | patches ("patches" when --samples is the only source)
SCALE = 4  # 2, 3, 4 or 8
LR_SIZE = 32  # LR side (the design's 32 x 32); the HR side defaults to LR_SIZE * scale (hr_size_for)
HR_SIZE = LR_SIZE * SCALE
PATCHES = 64  # patches mode: crops per photo at most
MIN_VARIANCE = 25.0  # patches mode: luma variance (0..255 units) below which a patch is flat and skipped
FILTER = "bicubic"  # LR filter (resizer.FILTERS)
SPLIT = (0.8, 0.1, 0.1)  # train, val, test fractions of the source photos
SEED = 0
DRAFT = True  # square mode: decode large JPEGs at >= 2x hr_size with Pillow's draft mode
PNG_OPTIONS = {"compress_level": 1}  # 128 px sample patches: 2.3 ms and 29 KB each vs 6.0 ms, 27 KB at 6
# scikit-image's colour photographs. Left out: the grey ones, synthetic images (chessboard, colour wheel,
# phantom, logo, horse silhouette) and motorcycle_right.png, the stereo twin of motorcycle_left.png, which
# could otherwise land in another split than its near-copy.
SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
                 "motorcycle_left.png", "retina.jpg", "rocket.jpg")
SAMPLE_PREFIX = "skimage:"  # manifest.json names a sample photo "skimage:astronaut.png", not a venv path
SPLITS = ("train", "val", "test")
HELD_OUT_MINIMUM = 2  # val and test each hold at least this many photos once there are 3x as many in all
FORMATS = ("png", "tfrecord")
# tfrecord shards, finished (train-00000-of-00003.tfrecord) or still being written (temporary, hidden)
SHARD_NAME = re.compile(r"^\.?(train|val|test)-\d{5}(-of-\d{5})?\.tfrecord(\.tmp-.*)?$")
SHARD_MB = 200  # tfrecord format: a shard is closed once it holds this many MB of records
MANIFEST = "manifest.json"
SHOW_SKIPPED = 20  # skipped files printed by the command line; manifest.json lists them all
SHOW_REASONS = 3  # skipped files named in the error when every file was skipped
SHOW_SUFFIXES = 6  # file kinds named in the error for a folder without images
JOURNAL = ".progress.jsonl"  # photos finished by an unfinished run, one JSON line each
# parameters that change the pixels of a pair: a folder built with other values cannot be reused
PIXEL_PARAMETERS = ("mode", "scale", "hr_size", "filter", "degradations", "seed", "patches", "min_variance",
                    "draft", "format", "codec")
PARAMETER_DEFAULTS = {"format": "png", "codec": None}  # what a manifest written before a parameter existed meant by its absence
STREAM_CANVAS = 1.5  # --codec, square mode: the photo's shorter side is scaled to this x the window's
STREAM_ROOM = 0.85  # --codec: the window takes at most this share of the photo's sides, so the camera can move
STREAM_CROP_TRIES = 4  # --codec, patches mode: random positions tried per pair before a frame gives fewer
THREADED_LIBRARIES = ("tensorflow", "keras", "torch", "jax")  # loaded: workers start by forkserver, not fork
# -----------------------------------------------------------------------------


class DatasetError(ValueError):
    """A DATASET that cannot be made or read: bad arguments, a folder that is not a dataset, unpaired files, ..."""


class NoPairsError(DatasetError):
    """The sources gave no pair at all: no image files, or every one skipped. Nothing is left behind for it."""


def build_dataset(sources, out, *, samples=False, mode=None, scale=SCALE, hr_size=None, patches=PATCHES,
                  min_variance=MIN_VARIANCE, filter=FILTER, blur_sigma=0.0, noise_sigma=0.0, jpeg_quality=None,
                  palette_colors=None, palette_dither="none", split=SPLIT, seed=SEED, min_size=None,
                  max_images=None, workers=None, draft=DRAFT, format="png", shard_mb=SHARD_MB, stream=None,
                  overwrite=False, progress=True):
    """Build (or finish, or update) the DATASET folder `out` from image sources; return its manifest dict.

    sources: folders (searched recursively; a folder holding a fetcher manifest.jsonl is read through it),
        manifest.jsonl files, or image files. samples=True adds scikit-image's colour photos.
    mode: "square" or "patches"; None means square, or patches when samples are the only source.
    hr_size: HR side in pixels; None means LR_SIZE * scale (hr_size_for).
    min_size: shorter side a photo needs (default, and at least, hr_size). max_images: use at most this
        many source images (a seeded random choice). workers: processes (default: all cores; 1 = in this
        process). overwrite: delete an existing dataset in `out` built with other parameters first.
    palette_colors, palette_dither: reduce each LR image to that many colours (resizer.degrade).
    stream: LR as a stream delivers it: a dict of codec.stream_spec's keyword arguments (codec, crf or
        bitrate_kbps ranges, presets, profiles, downscalers, blur, noise, clean_share, frames, window,
        pairs_per_frame); pairs are then cut from clips with motion, encoded and decoded (see "Streams").
    format: "png" (a folder of PNG pairs) or "tfrecord" (sharded TFRecord files of about shard_mb MB per
        split; `out` may then be any path TensorFlow can write, such as gs://bucket/dataset).
    Raises DatasetError for bad arguments or an `out` that holds something else, and NoPairsError (leaving
    nothing behind in a new folder) when no pair could be made; bad images are skipped.
    """
    started = time.perf_counter()
    sources = [Path(s) for s in sources]
    if mode is None:
        mode = "patches" if samples and not sources else MODE
    params = _parameters(mode, scale, hr_size, patches, min_variance, filter, blur_sigma, noise_sigma,
                         jpeg_quality, palette_colors, palette_dither, split, seed, min_size, max_images, draft,
                         format, shard_mb, stream)
    if not sources and not samples:
        raise DatasetError("no sources: give folders, manifest.jsonl files or images, or --samples")
    if params["format"] == "png" and has_scheme(out):
        raise DatasetError(f"{out}: the png format writes a local folder; use --format tfrecord for {out}")

    candidates = _discover(sources, samples, None if has_scheme(out) else Path(out))
    candidates = _choose_at_most(candidates, max_images, seed)
    workers = _worker_count(workers)
    if params["format"] == "tfrecord":
        return _build_tfrecords(candidates, str(out), params, workers, overwrite, progress, started)

    out = Path(out)
    previous = _open_output(out, params, overwrite)
    with _Pool(workers) as pool:
        scanned = pool.map(_scan, [(c, previous["by_path"].get(c["path"]), params) for c in candidates],
                           "checking", progress)
        photos, skipped = _unique_photos(scanned)
        if not photos:
            _nothing_made(out, previous, skipped)
        assign_splits(photos, params["split"], params["seed"])
        jobs, reused = _plan(photos, previous["by_sha"], out)
        results = pool.map(_make_pairs, [(job, params, str(out)) for job in jobs], "making pairs", progress,
                           on_result=lambda record: _journal_append(out, record))

    done = reused + [r for r in results if "reason" not in r]
    skipped += [{"path": r["path"], "reason": r["reason"]} for r in results if "reason" in r]
    if not done:
        _nothing_made(out, previous, skipped)
    removed = _remove_stale_files(out, done)
    manifest = _manifest(params, done, skipped, written=len(done) - len(reused), reused=len(reused),
                         removed=removed, seconds=time.perf_counter() - started)
    resizer.write_json(out / MANIFEST, manifest, indent=1)
    (out / JOURNAL).unlink(missing_ok=True)
    return manifest


# ----------------------------------------------------------------------------- parameters
def hr_size_for(scale):
    """The default HR side at this scale: LR_SIZE x scale, so every scale gives LR_SIZE x LR_SIZE LR images."""
    return LR_SIZE * scale


def _parameters(mode, scale, hr_size, patches, min_variance, filter, blur_sigma, noise_sigma, jpeg_quality,
                palette_colors, palette_dither, split, seed, min_size, max_images, draft, format, shard_mb,
                stream=None):
    """Check the arguments and gather them as manifest.json's "parameters"."""
    hr_size = hr_size_for(scale) if hr_size is None else hr_size
    if mode not in ("square", "patches"):
        raise DatasetError(f"mode must be 'square' or 'patches', not {mode!r}")
    if scale not in (2, 3, 4, 8):
        raise DatasetError(f"scale must be 2, 3, 4 or 8, not {scale}")
    if hr_size < scale or hr_size % scale:
        raise DatasetError(f"hr_size {hr_size} must be a multiple of scale {scale} "
                           f"(e.g. {hr_size - hr_size % scale or scale} or {hr_size + scale - hr_size % scale})")
    if filter not in resizer.FILTERS:
        raise DatasetError(f"unknown filter {filter!r}; choose one of {', '.join(resizer.FILTERS)}")
    if mode == "patches" and not 1 <= patches <= 999:
        raise DatasetError(f"patches must be 1..999 (NAME has a 3-digit crop index), not {patches}")
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise DatasetError(f"jpeg quality must be 1..100, not {jpeg_quality}")
    if max_images is not None and max_images < 1:
        raise DatasetError(f"max_images must be at least 1, not {max_images}")
    if blur_sigma < 0 or noise_sigma < 0:
        raise DatasetError("blur and noise sigmas cannot be negative")
    if palette_colors is not None and not 2 <= palette_colors <= 256:
        raise DatasetError(f"palette colours must be 2..256, not {palette_colors}")
    if palette_colors is None and palette_dither != "none":
        raise DatasetError(f"palette dither {palette_dither!r} needs a palette size (--palette N)")
    if palette_dither not in resizer.PALETTE_DITHERS:
        raise DatasetError(f"palette dither must be one of {', '.join(resizer.PALETTE_DITHERS)}, "
                           f"not {palette_dither!r}")
    if format not in FORMATS:
        raise DatasetError(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    if format == "tfrecord" and not shard_mb > 0:
        raise DatasetError(f"shard size must be positive, not {shard_mb} MB")
    fractions = [float(f) for f in split]
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise DatasetError(f"split needs three fractions (train val test), none negative: {split}")
    total = sum(fractions)
    degradations = {k: v for k, v in (("blur_sigma", float(blur_sigma)), ("noise_sigma", float(noise_sigma)),
                                      ("jpeg_quality", jpeg_quality)) if v}
    if palette_colors is not None:  # the keyword arguments of resizer.degrade, as the other degradations
        degradations.update(palette_colors=int(palette_colors), palette_dither=palette_dither)
    stream = _stream_parameters(stream, degradations, hr_size)
    return {
        "scale": scale, "hr_size": hr_size, "lr_size": hr_size // scale, "mode": mode,
        "filter": None if stream else filter,  # a stream draws its downscaler per clip
        "degradations": degradations, "seed": seed,
        "patches": patches if mode == "patches" else None,
        "min_variance": float(min_variance) if mode == "patches" else None,
        "draft": bool(draft) if mode == "square" else False,
        "split": dict(zip(SPLITS, (round(f / total, 6) for f in fractions), strict=True)),
        "min_size": max(int(min_size or 0), hr_size), "max_images": max_images,
        "format": format, "shard_mb": float(shard_mb) if format == "tfrecord" else None,
        "codec": stream,
    }


def _stream_parameters(stream, degradations, hr_size):
    """codec.stream_spec of the stream keyword arguments (None without them), as DatasetErrors."""
    if stream is None:
        return None
    if degradations:
        raise DatasetError("a stream (--codec) brings its own degradations: use --codec-blur/--codec-noise "
                           "instead of --blur/--noise/--jpeg/--palette")
    try:
        spec = codec.stream_spec(**stream)
    except codec.CodecError as e:
        raise DatasetError(str(e)) from e
    if min(spec["window"]) < hr_size:
        raise DatasetError(f"clip window {spec['window'][0]}x{spec['window'][1]} must be at least hr_size "
                           f"{hr_size} on each side (pairs are cut from its frames)")
    return spec


def _worker_count(workers):
    if workers is None or workers <= 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1
    return workers


# ----------------------------------------------------------------------------- sources


def sample_photos():
    """Paths of scikit-image's bundled colour photographs (those of SAMPLE_PHOTOS this install has)."""
    from skimage import data

    folder = Path(data.data_dir)
    return [folder / name for name in SAMPLE_PHOTOS if (folder / name).is_file()]


def source_file(path):
    """The file behind a manifest.json source path: "skimage:NAME" is scikit-image's sample photo NAME."""
    path = str(path)
    if path.startswith(SAMPLE_PREFIX):
        from skimage import data

        return Path(data.data_dir) / path.removeprefix(SAMPLE_PREFIX)
    return Path(path)


def _discover(sources, samples, out):
    """All candidate images as dicts {path, provenance?}: each file once, in the order given.

    Raises NoPairsError, naming what the sources hold instead, when there is no image file at all.
    """
    candidates, empty = [], []
    out_resolved = out.resolve() if out is not None else None
    for source in sources:
        before = len(candidates)
        if source.is_dir() and (source / "manifest.jsonl").is_file():
            candidates += _read_fetcher_manifest(source / "manifest.jsonl")
        elif source.is_dir():
            candidates += [{"path": str(p)} for p in _images_under(source, out_resolved)]
        elif source.is_file() and source.suffix == ".jsonl":
            candidates += _read_fetcher_manifest(source)
        elif source.is_file():
            candidates.append({"path": str(source)})
        else:
            raise DatasetError(f"{source}: no such file or folder")
        if len(candidates) == before:
            empty.append(source)
    if samples:
        photos = sample_photos()
        if not photos:
            raise DatasetError("scikit-image's sample photos are missing from this install")
        candidates += [{"path": SAMPLE_PREFIX + p.name, "provenance": {"source": "scikit-image sample data"}}
                       for p in photos]
    if not candidates:
        raise NoPairsError("; ".join(_no_images(source, out_resolved) for source in empty))
    unique = {}
    for c in candidates:  # the same file named twice (a folder and its manifest, ...) counts once
        unique.setdefault(str(source_file(c["path"]).resolve()), c)
    return list(unique.values())


def _walk_visible(folder, out_resolved):
    """(folder, sorted file names) below folder, hidden files and folders and the output folder left out."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != out_resolved)
        yield root, sorted(f for f in files if not f.startswith("."))


def _images_under(folder, out_resolved):
    """Image files below folder, sorted; hidden files and folders and the output folder are left out."""
    return [Path(root, f) for root, files in _walk_visible(folder, out_resolved) for f in files
            if Path(f).suffix.lower() in resizer.IMAGE_SUFFIXES]


def _no_images(source, out_resolved):
    """Why a source gave no candidate: "no image files in DIR: 12 files: 7 .txt, 5 .json; 0 images"."""
    if source.is_file():
        return f"no image files in {source}: it lists none"
    kinds = Counter(Path(f).suffix.lower() or "(no suffix)"
                    for _, files in _walk_visible(source, out_resolved) for f in files)
    total = sum(kinds.values())
    shown = [f"{n} {kind}" for kind, n in kinds.most_common(SHOW_SUFFIXES)]
    if len(kinds) > SHOW_SUFFIXES:
        shown.append(f"{total - sum(n for _, n in kinds.most_common(SHOW_SUFFIXES))} other")
    listing = f"{total} file{'s' * (total != 1)}" + (f": {', '.join(shown)}" if shown else "")
    return f"no image files in {source}: {listing}; 0 images"


def _read_fetcher_manifest(manifest):
    """Candidates from a fetcher's RAW/manifest.jsonl (read by fetcher.py, which owns the format: the last
    line for a path wins, torn lines are ignored): paths relative to its folder, attribution kept."""
    if manifest.name != "manifest.jsonl":
        raise DatasetError(f"{manifest}: not a fetcher manifest (expected RAW/manifest.jsonl)")
    import fetcher  # only here: it brings requests along, which nothing else needs

    candidates = []
    for entry in fetcher.read_manifest(manifest.parent):
        provenance = {k: v for k, v in entry.items() if k not in ("path", "bytes", "width", "height")}
        provenance["manifest"] = str(manifest)
        candidates.append({"path": str(manifest.parent / entry["path"]), "provenance": provenance})
    return candidates


def _choose_at_most(candidates, max_images, seed):
    """A seeded random choice of max_images candidates, kept in their original order."""
    if max_images is None or len(candidates) <= max_images:
        return candidates
    keep = np.random.default_rng(seed).choice(len(candidates), size=max_images, replace=False)
    return [candidates[i] for i in sorted(keep)]


# ----------------------------------------------------------------------------- output folder and reruns


def _open_output(out, params, overwrite):
    """Check `out` is new, empty or a dataset built with the same pixel parameters; load its records."""
    manifest_path, journal_path = out / MANIFEST, out / JOURNAL
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out} is a file, not a folder")
    fresh = not out.is_dir() or not any(out.iterdir())
    if not fresh and not manifest_path.exists() and not journal_path.exists():
        raise DatasetError(f"{out} is not empty and holds no {MANIFEST}: choose a new or empty folder")
    state = {"created": not out.exists(), "fresh": fresh, "journal_existed": journal_path.exists()}
    if overwrite:  # only ever in a folder that is a dataset (checked above): its splits and records go
        _clear_local_dataset(out)

    records = []
    if manifest_path.exists():
        old = _json_or_none(manifest_path.read_text(encoding="utf-8", errors="replace"))
        if not isinstance(old, dict):
            raise DatasetError(f"{manifest_path} is unreadable: use --overwrite to rebuild the dataset")
        _check_same_pixels(out, old.get("parameters", {}), params)
        records += old.get("sources", [])
    if journal_path.exists():
        lines = journal_path.read_text().splitlines()
        header = _json_or_none(lines[0]) if lines else None
        if header and "parameters" in header:
            _check_same_pixels(out, header["parameters"], params)
            records += [r for r in map(_json_or_none, lines[1:]) if r and "sha256" in r]  # a torn last line
    out.mkdir(parents=True, exist_ok=True)
    journal_path.write_text(json.dumps({"parameters": params}) + "\n"
                            + "".join(json.dumps(r) + "\n" for r in records))
    return {**state, "by_sha": {r["sha256"]: r for r in records}, "by_path": {r["path"]: r for r in records}}


def _clear_local_dataset(out):
    """Delete a local dataset's pairs, shards, manifest and journal (nothing else that may be in the folder)."""
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    for path in out.iterdir() if out.is_dir() else ():
        if SHARD_NAME.match(path.name):
            path.unlink()
    (out / MANIFEST).unlink(missing_ok=True)
    (out / JOURNAL).unlink(missing_ok=True)


def _nothing_made(out, opened, skipped):
    """Undo what this run wrote (its journal, and the folders it made in a new output folder); raise NoPairsError.

    A dataset that was already there keeps its manifest and pairs untouched.
    """
    if not opened["journal_existed"]:
        (out / JOURNAL).unlink(missing_ok=True)
    if opened["fresh"]:
        for folder in [out / s / sub for s in SPLITS for sub in ("hr", "lr")] + [out / s for s in SPLITS]:
            with contextlib.suppress(OSError):  # only empty folders go
                folder.rmdir()
        if opened["created"]:
            with contextlib.suppress(OSError):
                out.rmdir()
    raise NoPairsError(_all_skipped(skipped))


def _all_skipped(skipped):
    shown = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:SHOW_REASONS])
    more = f"; and {len(skipped) - SHOW_REASONS} more" if len(skipped) > SHOW_REASONS else ""
    which = "the only image file was" if len(skipped) == 1 else f"all {len(skipped)} image files were"
    return f"no pairs were made: {which} skipped ({shown}{more})"


def _json_or_none(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _check_same_pixels(out, old, new):
    old = {**PARAMETER_DEFAULTS, **old}
    changed = [f"{k} {old.get(k)!r} -> {new[k]!r}" for k in PIXEL_PARAMETERS if old.get(k) != new[k]]
    if changed:
        raise DatasetError(f"{out} holds a dataset built with other parameters ({'; '.join(changed)}): "
                           "use another --out, or --overwrite to rebuild it")


def _journal_append(out, record):
    if "reason" not in record:
        with open(out / JOURNAL, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _pair_names(record):
    return [f"{record['name']}-{i:03d}.png" for i in range(record["pairs"])]


def _pairs_exist(out, record):
    folder = out / record["split"]
    return all((folder / "hr" / n).is_file() and (folder / "lr" / n).is_file() for n in _pair_names(record))


def _remove_stale_files(out, records):
    """Delete pair files no record accounts for (photos dropped or moved to another split, crashed writes)."""
    wanted = {(r["split"], n) for r in records for n in _pair_names(r)}
    removed = 0
    for split in SPLITS:
        for sub in ("hr", "lr"):
            folder = out / split / sub
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                if path.is_file() and (resizer.is_temp_output(path) or (split, path.name) not in wanted):
                    path.unlink()
                    removed += not resizer.is_temp_output(path)
    return removed


# ----------------------------------------------------------------------------- checking and splitting


def _scan(task):
    """Worker: header check, size check and sha256 of one candidate (reusing the hash of an unchanged file)."""
    candidate, known, params = task
    label, path = candidate["path"], source_file(candidate["path"])
    try:
        stat = path.stat()
        if known and known.get("bytes") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            width, height, sha = known["width"], known["height"], known["sha256"]
        else:
            width, height = resizer.image_size(path)
            sha = None
        if min(width, height) < params["min_size"]:
            return {"path": label, "reason": f"too small: {width}x{height}, the shorter side must be at "
                                                 f"least {params['min_size']} px"}
        if sha is None:
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
    except resizer.ImageLoadError as e:
        return {"path": label, "reason": str(e).removeprefix(f"{path}: ")}
    except FileNotFoundError:
        return {"path": label, "reason": "no such file"}
    except OSError as e:
        return {"path": label, "reason": f"cannot read ({e.strerror or e})"}
    expected = candidate.get("provenance", {}).get("sha256")
    if expected and expected != sha:
        return {"path": label, "reason": "sha256 differs from the fetcher's manifest (changed or corrupted "
                                             "since it was fetched)"}
    photo = {"path": label, "sha256": sha, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
             "width": width, "height": height}
    if candidate.get("provenance"):
        photo["provenance"] = {k: v for k, v in candidate["provenance"].items() if k != "sha256"}
    return photo


def _unique_photos(scanned):
    """Split scan results into usable photos (first of each sha256) and skipped entries."""
    photos, skipped, first = [], [], {}
    for item in scanned:
        if "reason" in item:
            skipped.append(item)
        elif item["sha256"] in first:
            skipped.append({"path": item["path"], "reason": f"duplicate of {first[item['sha256']]}"})
        else:
            first[item["sha256"]] = item["path"]
            photos.append(item)
    return photos, skipped


def split_key(sha256, seed):
    """A photo's place in [0, 1): from its content hash and the seed alone, whatever other photos there are."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_minimums(n, fractions):
    """Fewest of n photos each split (with a non-zero fraction) holds: train 1; val and test 2 each from
    3 x HELD_OUT_MINIMUM photos on, 1 each from 3 photos on, else none."""
    held_out = HELD_OUT_MINIMUM if n >= 3 * HELD_OUT_MINIMUM else 1 if n >= 3 else 0
    return {s: 0 if not fractions[s] else 1 if s == "train" else held_out for s in SPLITS}


def assign_splits(photos, fractions, seed):
    """Give each photo dict (with "sha256") a "split" and its pair-name prefix "name"; return {split: count}.

    The rule: a photo's key (split_key) falls in one interval of [0, 1) cut at the fractions (train, then
    val, then test), and that is its split. So a photo's split depends on its bytes and the seed only: adding
    or removing other photos never moves it. One exception keeps small sets usable: when a split holds
    fewer photos than split_minimums asks (val and test at least 2 each from 6 photos on), it takes the
    photos whose keys lie nearest its interval (on the circle [0, 1)) from splits that have more than their
    minimum, one at a time, neediest split first. A photo moved that way can move back when photos are
    added; beyond a few dozen photos the minimums are met without moving any.
    """
    total = sum(fractions[s] for s in SPLITS)
    cuts = np.cumsum([fractions[s] / total for s in SPLITS])
    intervals = {s: (float(cuts[i - 1]) if i else 0.0, float(cuts[i])) for i, s in enumerate(SPLITS)}
    last = max(i for i, s in enumerate(SPLITS) if fractions[s])
    intervals[SPLITS[last]] = (intervals[SPLITS[last]][0], 1.0)  # no rounding gap below 1
    key = {p["sha256"]: split_key(p["sha256"], seed) for p in photos}
    members = {s: [] for s in SPLITS}
    for photo in sorted(photos, key=lambda p: p["sha256"]):
        natural = next(s for s in SPLITS if fractions[s] and intervals[s][0] <= key[photo["sha256"]]
                       < intervals[s][1] or s == SPLITS[last])
        members[natural].append(photo)

    minimums = split_minimums(len(photos), fractions)
    while True:
        deficit, needy = max((minimums[s] - len(members[s]), -i) for i, s in enumerate(SPLITS))
        if deficit <= 0:
            break
        target = SPLITS[-needy]
        donors = [(p, s) for s in SPLITS if s != target and len(members[s]) > minimums[s] for p in members[s]]
        if not donors:
            break
        low, high = intervals[target]
        photo, donor = min(donors, key=lambda d: (min((low - key[d[0]["sha256"]]) % 1.0,
                                                       (key[d[0]["sha256"]] - high) % 1.0), d[0]["sha256"]))
        members[donor].remove(photo)
        members[target].append(photo)

    for split, chosen in members.items():
        for photo in chosen:
            photo["split"] = split
            photo["name"] = f"{_safe_stem(source_file(photo['path']))}-{photo['sha256'][:8]}"
    return {s: len(m) for s, m in members.items()}


def _safe_stem(path):
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(path).stem).strip("._") or "image"
    return stem[:60]


def _made(record):
    """What a finished record says about the pairs it made: their count, and its clips when it has any."""
    return {k: record[k] for k in ("pairs", "clips") if k in record}


def _plan(photos, previous, out):
    """Photos still to process, and records of those already done in this split (files all present)."""
    jobs, reused = [], []
    for photo in photos:
        old = previous.get(photo["sha256"])
        if old and old.get("split") == photo["split"] and old.get("name") == photo["name"] \
                and _pairs_exist(out, old):
            reused.append({**photo, **_made(old)})
        else:
            jobs.append(photo)
    return jobs, reused


# ----------------------------------------------------------------------------- making pairs


def _make_pairs(task):
    """Worker: decode one photo, cut its HR crops, write HR and LR PNGs; the record or a skip reason."""
    photo, params, out = task
    pairs = _photo_pairs(photo, params)
    if isinstance(pairs, str):
        return {"path": photo["path"], "reason": pairs}
    pairs, made = pairs
    folder = Path(out) / photo["split"]
    for name, lr, hr in pairs:
        resizer.save_image(folder / "lr" / name, lr, **PNG_OPTIONS)
        resizer.save_image(folder / "hr" / name, hr, **PNG_OPTIONS)
    return {**photo, **made, "pairs": len(pairs)}


def _encode_pairs(task):
    """Worker: one photo's pairs as PNG bytes {"encoded": [(name, lr_png, lr_shape, hr_png, hr_shape)]} with
    its record, or a skip reason (tfrecord format)."""
    photo, params = task
    pairs = _photo_pairs(photo, params)
    if isinstance(pairs, str):
        return {"path": photo["path"], "reason": pairs, "sha256": photo["sha256"]}
    pairs, made = pairs
    return {**photo, **made, "pairs": len(pairs),
            "encoded": [(name.removesuffix(".png"), _png_bytes(lr), lr.shape, _png_bytes(hr), hr.shape)
                        for name, lr, hr in pairs]}


def _png_bytes(img):
    buffer = io.BytesIO()
    Image.fromarray(img).save(buffer, format="PNG", **PNG_OPTIONS)
    return buffer.getvalue()


def _photo_pairs(photo, params):
    """One photo's pairs ([(NAME.png, lr, hr)] as uint8 arrays, {"clips": [...]} for a stream or {}), or the
    reason it gives none."""
    path = source_file(photo["path"])
    if params.get("codec"):
        return _stream_pairs(path, photo, params)
    try:
        crops = _hr_crops(path, photo, params)
    except resizer.ImageLoadError as e:
        return str(e).removeprefix(f"{path}: ")
    if not crops:
        return f"no patch passed the flatness check (luma variance >= {params['min_variance']})"
    pairs = []
    for index, hr in enumerate(crops):
        lr = resizer.lr_from_hr(hr, params["scale"], params["filter"])
        if params["degradations"]:
            lr = resizer.degrade(lr, **params["degradations"], seed=_pair_seed(params["seed"], photo, index))
        pairs.append((f"{photo['name']}-{index:03d}.png", lr, hr))
    return pairs, {}


def _hr_crops(path, photo, params):
    hr_size = params["hr_size"]
    if params["mode"] == "square":
        return [resizer.load_square(path, hr_size, draft=params["draft"])]
    rgb = resizer.load_image(path)
    rng = np.random.default_rng([params["seed"], int(photo["sha256"][:16], 16)])
    return patch_crops(rgb, hr_size, params["patches"], params["min_variance"], rng)


def patch_crops(rgb, size, count, min_variance, rng):
    """Up to `count` size x size crops from a half-overlapping grid (random origin, random order), skipping
    flat ones: luma (BT.601) variance below min_variance."""
    height, width = rgb.shape[:2]
    stride = max(size // 2, 1)
    top0 = int(rng.integers(0, (height - size) % stride + 1))
    left0 = int(rng.integers(0, (width - size) % stride + 1))
    positions = [(top, left) for top in range(top0, height - size + 1, stride)
                 for left in range(left0, width - size + 1, stride)]
    crops = []
    for i in rng.permutation(len(positions)):
        top, left = positions[i]
        crop = rgb[top : top + size, left : left + size]
        if _luma(crop).var() >= min_variance:
            crops.append(np.ascontiguousarray(crop))
            if len(crops) == count:
                break
    return crops


def _pair_seed(seed, photo, index):
    return int(np.random.SeedSequence([seed, int(photo["sha256"][:16], 16), index]).generate_state(1)[0])


# ----------------------------------------------------------------------------- streams (--codec)


def _stream_pairs(path, photo, params):
    """One photo's pairs cut from clips made as a stream is (codec.py), and a record of each clip; or the
    reason it gives none. Patches mode: clips over the photo at native resolution, enough of them for
    `patches` pairs; square mode: one clip over the whole photo scaled down (a scene filmed whole). A clip
    whose encode or decode fails is recorded with its reason and left out; the other clips still count."""
    spec, scale, hr_size = params["codec"], params["scale"], params["hr_size"]
    try:
        canvas = _stream_canvas(path, params)
    except resizer.ImageLoadError as e:
        return str(e).removeprefix(f"{path}: ")
    size = (canvas.shape[1], canvas.shape[0])
    window = codec.fit_window(size, spec["window"], 2 * scale)  # even LR sides: yuv420p
    roomy = codec.fit_window([v * STREAM_ROOM for v in size], spec["window"], 2 * scale)
    window = roomy if min(roomy) >= hr_size else window  # leave the camera room to move where it can
    if min(window) < hr_size:
        return f"too small for a clip: {size[0]}x{size[1]} leaves a {window[0]}x{window[1]} window, " \
               f"less than hr_size {hr_size}"
    per_clip = spec["frames"] * spec["pairs_per_frame"]
    wanted = params["patches"] if params["mode"] == "patches" else per_clip
    pairs, clips = [], []
    for index in range(math.ceil(wanted / per_clip)):
        rng = np.random.default_rng([params["seed"], int(photo["sha256"][:16], 16), index])
        boxes = codec.camera_path(size, window, spec["frames"], rng)
        settings = codec.draw_clip_settings(spec, rng)
        hr_frames = codec.render_frames(canvas, boxes, window)
        clip = {"clip": index, **settings, "window": list(window),
                "camera": [[round(v, 1) for v in box] for box in boxes]}
        try:
            lr_frames, stream = codec.degrade_clip(hr_frames, scale, settings, int(rng.integers(2**63)))
        except codec.CodecError as e:
            clips.append({**clip, "reason": str(e)})
            continue
        crops = _clip_crops(hr_frames, lr_frames, params, rng, wanted - len(pairs))
        clip.update(stream, first_pair=len(pairs), pairs=len(crops), pair_frames=[f for f, _, _ in crops])
        pairs += [(f"{photo['name']}-{len(pairs) + i:03d}.png", lr, hr) for i, (_, lr, hr) in enumerate(crops)]
        clips.append(clip)
    if not pairs:
        failed = [c for c in clips if "reason" in c]
        if failed:
            return f"every clip failed ({len(failed)}; first: {failed[0]['reason']})"
        return f"no patch passed the flatness check (luma variance >= {params['min_variance']})"
    return pairs, {"clips": clips}


def _stream_canvas(path, params):
    """What the camera films: the photo at native resolution (patches mode), or the whole photo scaled so
    its shorter side is STREAM_CANVAS x the window's shorter side (square mode; never enlarged)."""
    if params["mode"] == "patches":
        return resizer.load_image(path)
    short = math.ceil(STREAM_CANVAS * min(params["codec"]["window"]))
    rgb = resizer.load_image(path, draft_size=short if params["draft"] else None)
    height, width = rgb.shape[:2]
    if min(height, width) <= short:
        return rgb
    factor = short / min(height, width)
    return resizer.resize(rgb, (max(short, round(width * factor)), max(short, round(height * factor))))


def _clip_crops(hr_frames, lr_frames, params, rng, limit):
    """Up to pairs_per_frame aligned crops per frame [(frame index, lr crop, hr crop)], at most `limit` in
    all: LR at p, HR at scale x p. Patches mode skips flat crops (luma variance of the HR crop below
    min_variance; a few tries per pair)."""
    scale, hr_size = params["scale"], params["hr_size"]
    lr_size = hr_size // scale
    min_variance = params["min_variance"] or 0.0
    crops = []
    for index, (hr, lr) in enumerate(zip(hr_frames, lr_frames, strict=True)):
        found = 0
        for _ in range(STREAM_CROP_TRIES * params["codec"]["pairs_per_frame"]):
            if found == params["codec"]["pairs_per_frame"] or len(crops) == limit:
                break
            top = int(rng.integers(0, lr.shape[0] - lr_size + 1))
            left = int(rng.integers(0, lr.shape[1] - lr_size + 1))
            hr_crop = hr[top * scale : (top + lr_size) * scale, left * scale : (left + lr_size) * scale]
            if min_variance and _luma(hr_crop).var() < min_variance:
                continue
            crops.append((index, np.ascontiguousarray(lr[top : top + lr_size, left : left + lr_size]),
                          np.ascontiguousarray(hr_crop)))
            found += 1
    return crops


def _luma(rgb):
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


# ----------------------------------------------------------------------------- tfrecord format (writing)


def has_scheme(path):
    """True for a path on a filesystem TensorFlow reaches by scheme (gs://, s3://, hdfs://, ...)."""
    return "://" in str(path)


class _Folder:
    """The output folder of the tfrecord format: local (os, atomic writes with fsync) or any filesystem
    TensorFlow's tf.io.gfile knows (a path with a scheme; a rename there may be a copy)."""

    def __init__(self, path):
        self.path, self.remote = str(path), has_scheme(path)
        if self.remote:
            import tensorflow as tf  # only for paths with a scheme

            self.gfile = tf.io.gfile

    def join(self, name):
        return f"{self.path.rstrip('/')}/{name}" if self.remote else str(Path(self.path) / name)

    def exists(self, name=None):
        path = self.path if name is None else self.join(name)
        return self.gfile.exists(path) if self.remote else Path(path).exists()

    def names(self):
        if self.remote:
            return sorted(n.rstrip("/") for n in self.gfile.listdir(self.path)) if self.exists() else []
        if Path(self.path).exists() and not Path(self.path).is_dir():
            raise DatasetError(f"{self.path} is a file, not a folder")
        return sorted(p.name for p in Path(self.path).iterdir()) if Path(self.path).is_dir() else []

    def makedirs(self):
        self.gfile.makedirs(self.path) if self.remote else Path(self.path).mkdir(parents=True, exist_ok=True)

    def read_text(self, name):
        if self.remote:
            with self.gfile.GFile(self.join(name), "r") as f:
                return f.read()
        return Path(self.join(name)).read_text(encoding="utf-8", errors="replace")

    def write_json(self, name, data):
        """Whole or absent: a temporary name, then a rename."""
        if not self.remote:
            resizer.write_json(self.join(name), data, indent=1)
            return
        temp = self.join(f".{name}{resizer.TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        with self.gfile.GFile(temp, "w") as f:
            f.write(json.dumps(data, indent=1) + "\n")
        self.gfile.rename(temp, self.join(name), overwrite=True)

    def publish(self, temp, name):
        """Rename a finished temporary file to its final name (flushed to disk first when local)."""
        if self.remote:
            self.gfile.rename(self.join(temp), self.join(name), overwrite=True)
        else:
            resizer.fsync_path(self.join(temp))
            os.replace(self.join(temp), self.join(name))

    def remove(self, name):
        if self.remote:
            self.gfile.remove(self.join(name))
        else:
            Path(self.join(name)).unlink(missing_ok=True)

    def remove_if_empty(self):
        if self.exists() and not self.names():
            self.gfile.rmtree(self.path) if self.remote else Path(self.path).rmdir()


def _build_tfrecords(candidates, out, params, workers, overwrite, progress, started):
    """The tfrecord format: check, split, then write each split's shards and last the manifest.

    A finished dataset whose photos, splits and parameters are unchanged is reused as it is; anything else
    (other sources, an interrupted run) rewrites every shard. The manifest is removed first and written last,
    so a manifest never lists a shard that is missing or half-written.
    """
    folder = _Folder(out)
    created = not folder.exists()
    previous = _open_tfrecord_output(folder, params, overwrite)
    known = {r["path"]: r for r in previous.get("sources", [])}
    with _Pool(workers) as pool:
        scanned = pool.map(_scan, [(c, known.get(c["path"]), params) for c in candidates], "checking", progress)
        photos, skipped = _unique_photos(scanned)
        if not photos:
            raise NoPairsError(_all_skipped(skipped))  # nothing was written yet
        assign_splits(photos, params["split"], params["seed"])
        if _tfrecords_current(folder, previous, photos, params):
            done = [{**photo, **_made(known[photo["path"]])} for photo in photos
                    if photo["path"] in known]
            shas = {photo["sha256"] for photo in photos}
            skipped += [s for s in previous["skipped"] if s.get("sha256") in shas]
            return _finish_tfrecords(folder, params, done, skipped, previous["shards"], 0, len(done), started)

        _remove_tfrecord_dataset(folder)
        done, shards = [], {}
        for split in SPLITS:
            writer = _ShardWriter(folder, split, params["shard_mb"])
            jobs = [(photo, params) for photo in photos if photo["split"] == split]
            try:
                results = pool.map(_encode_pairs, jobs, f"writing {split}", progress, on_result=writer.add,
                                   ordered=True)  # records in the same order whatever the worker count
                shards[split] = writer.finish()
            except BaseException:
                writer.discard()
                raise
            done += [r for r in results if "reason" not in r]
            skipped += [r for r in results if "reason" in r]
    if not done:
        _remove_tfrecord_dataset(folder)
        if created:
            folder.remove_if_empty()
        raise NoPairsError(_all_skipped(skipped))
    return _finish_tfrecords(folder, params, done, skipped, shards, len(done), 0, started)


def _finish_tfrecords(folder, params, done, skipped, shards, written, reused, started):
    manifest = _manifest(params, done, skipped, written=written, reused=reused, removed=0,
                         seconds=time.perf_counter() - started)
    manifest["shards"] = shards
    folder.write_json(MANIFEST, manifest)
    return manifest


def _open_tfrecord_output(folder, params, overwrite):
    """Check the output folder is new, empty, left by an interrupted tfrecord run or a dataset built with the
    same pixel parameters; return its old manifest ({} when there is none or it is overwritten)."""
    names = folder.names()
    foreign = [n for n in names if n not in (MANIFEST, JOURNAL) and not SHARD_NAME.match(n)]
    if foreign and MANIFEST not in names:
        raise DatasetError(f"{folder.path} is not empty and holds no {MANIFEST}: choose a new or empty folder")
    if MANIFEST not in names:
        return {}
    if overwrite:
        if folder.remote:
            _remove_tfrecord_dataset(folder)
        else:
            _clear_local_dataset(Path(folder.path))
        return {}
    old = _json_or_none(folder.read_text(MANIFEST))
    if not isinstance(old, dict):
        raise DatasetError(f"{folder.join(MANIFEST)} is unreadable: use --overwrite to rebuild the dataset")
    _check_same_pixels(folder.path, old.get("parameters", {}), params)
    return old


def _tfrecords_current(folder, previous, photos, params):
    """True when the finished dataset `previous` holds exactly these photos in these splits, made with these
    parameters (shard size included), and all its shards are there."""
    if not previous or previous.get("parameters") != params or "shards" not in previous:
        return False
    made = {(r["sha256"], r["split"], r["name"]) for r in previous.get("sources", [])}
    failed = {s.get("sha256") for s in previous.get("skipped", [])}
    wanted = {(p["sha256"], p["split"], p["name"]) for p in photos if p["sha256"] not in failed}
    files = [shard["file"] for split in previous["shards"].values() for shard in split]
    return made == wanted and all(folder.exists(f) for f in files)


def _remove_tfrecord_dataset(folder):
    """The manifest first (no manifest may list a missing shard), then every shard and leftover temporary."""
    if folder.exists(MANIFEST):
        folder.remove(MANIFEST)
    for name in folder.names():
        if SHARD_NAME.match(name):
            folder.remove(name)


class _ShardWriter:
    """One split's records into shards of about shard_mb MB each, written under temporary names and renamed
    SPLIT-NNNNN-of-MMMMM.tfrecord once the split is complete (the count is known only then)."""

    def __init__(self, folder, split, shard_mb):
        import tensorflow as tf  # the tfrecord format only

        self.tf, self.folder, self.split, self.limit = tf, folder, split, shard_mb * 1e6
        self.finished, self.writer, self.temp, self.records, self.bytes = [], None, None, 0, 0

    def add(self, result):
        """on_result of the pool: write a photo's pairs as records; keep its record without the bytes."""
        for name, lr_png, lr_shape, hr_png, hr_shape in result.pop("encoded", ()):
            if self.writer is None:
                self._open()
            example = self.tf.train.Example(features=self.tf.train.Features(feature={
                "name": _bytes_feature(self.tf, name.encode()),
                "lr_png": _bytes_feature(self.tf, lr_png), "hr_png": _bytes_feature(self.tf, hr_png),
                "lr_height": _int_feature(self.tf, lr_shape[0]), "lr_width": _int_feature(self.tf, lr_shape[1]),
                "hr_height": _int_feature(self.tf, hr_shape[0]), "hr_width": _int_feature(self.tf, hr_shape[1]),
            }))
            data = example.SerializeToString()
            self.writer.write(data)
            self.records, self.bytes = self.records + 1, self.bytes + len(data) + 16  # + length and CRCs
            if self.bytes >= self.limit:
                self._close()
        return result

    def _open(self):
        self.folder.makedirs()
        self.temp = f".{self.split}-{len(self.finished):05d}.tfrecord{resizer.TEMP_MARK}{os.getpid()}-" \
                    f"{secrets.token_hex(4)}"
        self.writer = self.tf.io.TFRecordWriter(self.folder.join(self.temp))
        self.records, self.bytes = 0, 0

    def _close(self):
        self.writer.close()
        self.finished.append({"temp": self.temp, "records": self.records, "bytes": self.bytes})
        self.writer = None

    def finish(self):
        """Close the last shard and give every shard its final name; the manifest's list of them."""
        if self.writer is not None:
            self._close()
        shards = []
        for index, shard in enumerate(self.finished):
            name = f"{self.split}-{index:05d}-of-{len(self.finished):05d}.tfrecord"
            self.folder.publish(shard["temp"], name)
            shards.append({"file": name, "records": shard["records"], "bytes": shard["bytes"]})
        return shards

    def discard(self):
        """An interrupted split: its temporary shards go."""
        if self.writer is not None:
            self._close()
        for shard in self.finished:
            with contextlib.suppress(Exception):
                self.folder.remove(shard["temp"])


def _bytes_feature(tf, value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(tf, value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


# ----------------------------------------------------------------------------- workers


def _start_method():
    """fork where it is safe: it starts workers in milliseconds, as they inherit this process's imports.
    It is not safe in a process running other threads (a Jupyter kernel, TensorFlow's thread pools), where
    a lock held by another thread would stay locked in the child forever: there, forkserver (or spawn)."""
    methods = mp.get_all_start_methods()
    others = [t for t in threading.enumerate() if t is not threading.main_thread() and t.name != "tqdm_monitor"]
    threaded = bool(others) or any(m in sys.modules for m in THREADED_LIBRARIES)
    if "fork" in methods and not threaded and sys.platform == "linux":
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


class _Pool:
    """Worker processes (or this process when workers == 1) with a progress bar over unordered results."""

    def __init__(self, workers):
        self.workers = workers
        self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.terminate()  # also on Ctrl-C: workers stop; atomic writes leave no partial PNG
            self.pool.join()

    def map(self, function, tasks, description, progress, on_result=None, ordered=False):
        """function over tasks, results sorted by "path". on_result(result) sees each result as it comes (in
        task order when ordered) and may return a replacement to keep (to drop bulky data)."""
        results = []
        if len(tasks) > 1 and self.workers > 1 and self.pool is None:
            method = _start_method()
            context = mp.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["resizer", "create_dataset"])
            self.pool = context.Pool(self.workers)
        if self.pool is not None and len(tasks) > 1:
            iterator = (self.pool.imap if ordered else self.pool.imap_unordered)(function, tasks)
        else:
            iterator = map(function, tasks)
        for result in tqdm(iterator, total=len(tasks), desc=description, unit="img", disable=not progress,
                           leave=False, dynamic_ncols=True):
            if on_result:
                result = on_result(result) or result
            results.append(result)
        return sorted(results, key=lambda r: r["path"])


# ----------------------------------------------------------------------------- reading a DATASET (flow.py, notebooks)
@dataclass
class Split:
    """One split's pairs: LR and HR paths by NAME, the common LR size (w, h) or None, decoded bytes.

    A tfrecord DATASET's split has no paths: its pairs are records in `shards` (TFRecord files, local or
    gs://...), `pairs` of them, all of lr_size.
    """

    name: str
    lr_paths: list
    hr_paths: list
    lr_size: tuple | None
    decoded_bytes: int
    shards: tuple = ()
    pairs: int | None = None

    def __len__(self):
        return self.pairs if self.shards else len(self.lr_paths)


def _png_names(folder):
    return {p.name: p for p in folder.glob("*.png")}


def _image_size(path):
    """(width, height) from the file's header, as a DatasetError when the file is unreadable."""
    try:
        return resizer.image_size(path)
    except resizer.ImageLoadError as err:
        raise DatasetError(str(err)) from err


def dataset_scale(dataset, manifest=None):
    """The scale recorded in DATASET/manifest.json (read_manifest's, or the one given), or None when there is no
    manifest."""
    manifest = read_manifest(dataset) if manifest is None else manifest
    if manifest is None:
        return None
    try:
        return int(manifest["parameters"]["scale"])
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{_Folder(dataset).join(MANIFEST)}: no readable parameters.scale ({err})") from err


def scan_split(dataset, split, scale=None):
    """Check DATASET/split/{lr,hr} and list its pairs: same names, HR exactly `scale` times LR.

    scale None: taken from the first pair (and then required of all). Returns (Split, scale).
    """
    root = Path(dataset) / split
    for sub in ("lr", "hr"):
        if not (root / sub).is_dir() and dataset_format(dataset) == "tfrecord":
            raise DatasetError(f"{dataset} is a tfrecord DATASET (no PNG folders): read it with "
                               "create_dataset.tfrecord_files and tfrecord_pair_dataset")
        if not (root / sub).is_dir():
            raise DatasetError(f"{root / sub} is missing: a DATASET holds {{train,val,test}}/{{lr,hr}}/NAME.png "
                               "(python create_dataset.py writes one)")
    lr, hr = _png_names(root / "lr"), _png_names(root / "hr")
    if not hr:
        raise DatasetError(f"{root / 'hr'} holds no .png images: the {split} split is empty")
    unpaired = sorted(set(lr) ^ set(hr))
    if unpaired:
        raise DatasetError(f"{root}: {len(unpaired)} image(s) without a partner of the same name in lr/ and hr/, "
                           f"e.g. {unpaired[0]}")
    names = sorted(hr)
    sizes, decoded = set(), 0
    for name in names:
        (lw, lh), (hw, hh) = _image_size(lr[name]), _image_size(hr[name])
        if scale is None:
            scale = hw // lw if lw and hw % lw == 0 else 0
            if scale < 1:
                raise DatasetError(f"{hr[name]}: HR {hw}x{hh} is not an integer multiple of LR {lw}x{lh}")
        if (hw, hh) != (lw * scale, lh * scale):
            raise DatasetError(f"{root}/{{lr,hr}}/{name}: LR {lw}x{lh} and HR {hw}x{hh} are not x{scale} apart")
        sizes.add((lw, lh))
        decoded += 3 * (lw * lh + hw * hh)
    lr_size = sizes.pop() if len(sizes) == 1 else None
    return Split(split, [lr[n] for n in names], [hr[n] for n in names], lr_size, decoded), scale


def check_dataset(dataset, splits=("train", "val")):
    """Every split checked (clear DatasetError otherwise); returns ({split: Split}, scale).

    PNG DATASETs are local folders; a tfrecord DATASET may also be on any filesystem TensorFlow reads (gs://).
    """
    if not has_scheme(dataset) and not Path(dataset).is_dir():
        raise DatasetError(f"DATASET not found: {dataset}")
    manifest = read_manifest(dataset)  # once: on gs:// each read is a request
    scale = dataset_scale(dataset, manifest)
    if _format_of(manifest) == "tfrecord":
        return {split: tfrecord_split(dataset, split, manifest) for split in splits}, scale
    found = {}
    for split in splits:
        found[split], scale = scan_split(Path(dataset), split, scale)
    return found, scale


def tfrecord_split(dataset, split, manifest=None):
    """A tfrecord DATASET's split as a Split (shards, pair count, the one LR size), from its manifest alone
    (read_manifest's, or the one given)."""
    manifest = read_manifest(dataset) if manifest is None else manifest
    files = tfrecord_files(dataset, split, manifest)
    pairs = int(manifest.get("counts", {}).get(split, 0))
    if not files or not pairs:
        raise DatasetError(f"{dataset}: the {split} split holds no pairs")
    params = manifest["parameters"]
    hr, scale = int(params["hr_size"]), int(params["scale"])
    lr = hr // scale  # both modes write square hr_size crops
    return Split(split, [], [], (lr, lr), pairs * 3 * (lr * lr + hr * hr), shards=tuple(files), pairs=pairs)


def check_patch_size(splits, patch, scale):
    """patch None needs one image size per split (to batch); a patch must divide by scale and fit every image."""
    for split in splits.values():
        if patch is None and split.lr_size is None:
            raise DatasetError(f"{split.name}: images of several sizes cannot be batched whole; pass --patch-size")
    if patch is None:
        return
    if patch % scale or patch < scale:
        raise DatasetError(f"--patch-size {patch} must be a positive multiple of the scale {scale}")
    train = splits["train"]
    sizes = [(train.name, train.lr_size)] if train.shards else [(p, _image_size(p)) for p in train.lr_paths]
    for where, (w, h) in sizes:
        if min(w, h) * scale < patch:
            raise DatasetError(f"{where}: LR {w}x{h} is smaller than --patch-size {patch} / scale {scale}")


def load_split_arrays(split, desc=None):
    """(lr list, hr list) of uint8 RGB arrays, decoded once into memory (PNG files or TFRecord shards)."""
    if split.shards:
        return _tfrecord_arrays(split.shards, len(split), desc)
    from concurrent.futures import ThreadPoolExecutor

    paths = list(zip(split.lr_paths, split.hr_paths, strict=True))
    # threads: Pillow decodes without the GIL (7490 pairs: minutes on one core of a GPU machine's host otherwise)
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        pairs = list(tqdm(pool.map(lambda pair: (resizer.load_image(pair[0]), resizer.load_image(pair[1])), paths),
                          total=len(paths), desc=desc, disable=desc is None, leave=False))
    return [p[0] for p in pairs], [p[1] for p in pairs]



def read_manifest(dataset):
    """DATASET/manifest.json as a dict (local, or any path TensorFlow reads); None when there is none."""
    folder = _Folder(dataset)
    if not folder.exists(MANIFEST):
        return None
    manifest = _json_or_none(folder.read_text(MANIFEST))
    if not isinstance(manifest, dict):
        raise DatasetError(f"{folder.join(MANIFEST)} is unreadable (not a JSON object)")
    return manifest


def dataset_format(dataset):
    """"png" or "tfrecord", as DATASET/manifest.json says ("png" when it has no manifest or no format)."""
    return _format_of(read_manifest(dataset))


def _format_of(manifest):
    return manifest.get("parameters", {}).get("format", "png") if manifest else "png"


def tfrecord_files(dataset, split, manifest=None):
    """Paths of one split's TFRecord shards, in order, as DATASET/manifest.json lists them (checked present).

    dataset may be local or any path TensorFlow reads (gs://...). Raises DatasetError for a dataset that
    is not in the tfrecord format or a missing shard; an empty split gives []. The split's pair count is
    read_manifest(dataset)["counts"][split]. manifest: read_manifest(dataset) when already read.
    """
    folder = _Folder(dataset)
    manifest = read_manifest(dataset) if manifest is None else manifest
    if manifest is None:
        raise DatasetError(f"{folder.join(MANIFEST)} not found: not a DATASET (python create_dataset.py "
                           "--format tfrecord writes one)")
    if "shards" not in manifest:
        raise DatasetError(f"{folder.join(MANIFEST)}: not a tfrecord DATASET (no shard list); its pairs are "
                           "PNG files under {train,val,test}/{lr,hr}/")
    if split not in manifest["shards"]:
        raise DatasetError(f"{folder.join(MANIFEST)}: no split {split!r} (splits: {', '.join(manifest['shards'])})")
    files = [folder.join(shard["file"]) for shard in manifest["shards"][split]]
    missing = [f for f in files if not folder.exists(Path(f).name)]
    if missing:
        raise DatasetError(f"{missing[0]}: shard listed in {MANIFEST} is missing ({len(missing)} missing)")
    return files


def tfrecord_pair_dataset(files, *, num_workers=None, worker_index=0, shuffle_files=False, seed=0,
                          parallel_reads=4, decode=True):
    """tf.data.Dataset of (lr, hr) uint8 (H, W, 3) tensors decoded from TFRecord shards (tfrecord_files).

    Sharding is by file: with num_workers (and this worker's worker_index) each worker reads its own subset
    of the files (Dataset.shard on the file list; tf.distribute's auto-sharding is then off). Without it the
    dataset asks tf.distribute to shard by file (AutoShardPolicy.FILE), which needs at least as many files
    as workers. shuffle_files: a seeded new file order each epoch. parallel_reads: files read at once,
    interleaved record by record (deterministic order for a given file order). decode False: the serialized
    records, for decode_tfrecord_pair later (after a shuffle or skip of the small encoded records).
    """
    import tensorflow as tf

    files = [str(f) for f in files]
    if not files:
        raise DatasetError("no TFRecord files to read (an empty split?)")
    options = tf.data.Options()
    ds = tf.data.Dataset.from_tensor_slices(files)
    if num_workers is None:
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    else:
        if not 0 <= worker_index < num_workers:
            raise DatasetError(f"worker_index {worker_index} is not in 0..{num_workers - 1}")
        if len(files) < num_workers:
            raise DatasetError(f"{len(files)} TFRecord files cannot be shared among {num_workers} workers by "
                               "file: write smaller shards (create_dataset.py --shard-mb)")
        ds = ds.shard(num_workers, worker_index)
        if num_workers > 1:  # sharded here; one worker leaves the policy to its caller (DATA among replicas)
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(parallel_reads, len(files))),
                       num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.with_options(options)
    return ds.map(decode_tfrecord_pair, num_parallel_calls=tf.data.AUTOTUNE) if decode else ds


def decode_tfrecord_pair(record):
    """(lr, hr) uint8 (H, W, 3) tensors from one serialized pair record (inside a tf.data map)."""
    import tensorflow as tf

    spec = {key: tf.io.FixedLenFeature([], tf.string) for key in ("name", "lr_png", "hr_png")}
    spec |= {key: tf.io.FixedLenFeature([], tf.int64) for key in ("lr_height", "lr_width", "hr_height", "hr_width")}
    fields = tf.io.parse_single_example(record, spec)
    lr = tf.reshape(tf.io.decode_png(fields["lr_png"], channels=3), [fields["lr_height"], fields["lr_width"], 3])
    hr = tf.reshape(tf.io.decode_png(fields["hr_png"], channels=3), [fields["hr_height"], fields["hr_width"], 3])
    return lr, hr


def load_tfrecord_arrays(dataset, split, desc=None):
    """(lr list, hr list) of uint8 RGB arrays of one tfrecord split, in record order (as load_split_arrays)."""
    files = tfrecord_files(dataset, split)
    if not files:
        return [], []
    return _tfrecord_arrays(files, (read_manifest(dataset) or {}).get("counts", {}).get(split), desc)


def _tfrecord_arrays(files, total, desc):
    pairs = [(lr.numpy(), hr.numpy()) for lr, hr in tqdm(tfrecord_pair_dataset(files), total=total, desc=desc,
                                                         disable=desc is None, leave=False)]
    return [p[0] for p in pairs], [p[1] for p in pairs]



# ----------------------------------------------------------------------------- manifest and summary


def _manifest(params, records, skipped, *, written, reused, removed, seconds):
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": params,
        "counts": {s: sum(r["pairs"] for r in records if r["split"] == s) for s in SPLITS},
        "photos": {s: sum(r["split"] == s for r in records) for s in SPLITS},
        "sources": sorted(records, key=lambda r: r["path"]),
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "run": {"photos_processed": written, "photos_reused": reused, "stale_files_removed": removed,
                "seconds": round(seconds, 2)},
    }


def summary(manifest, out):
    """One line: pairs per split, photos, skipped, time and where the dataset is."""
    counts, run = manifest["counts"], manifest["run"]
    photos = sum(manifest["photos"].values())
    reused = f", {run['photos_reused']} reused from an earlier run" if run["photos_reused"] else ""
    shards = manifest.get("shards")
    where = f"{sum(map(len, shards.values()))} TFRecord shards in {out}" if shards else str(out)
    clips = [c for source in manifest["sources"] for c in source.get("clips", ())]
    failed = sum("reason" in c for c in clips)
    streamed = f" in {len(clips)} clips" + (f" ({failed} failed, reasons in {MANIFEST})" if failed else "") \
        if clips else ""
    return (f"{counts['train']} train / {counts['val']} val / {counts['test']} test pairs "
            f"({manifest['parameters']['hr_size']} px HR, x{manifest['parameters']['scale']}) from {photos} "
            f"photos{streamed}{reused}; {len(manifest['skipped'])} skipped; {run['seconds']:.1f} s -> {where}")


def main(argv=None):
    """Command line: build a dataset, print skipped files and a one-line summary.

    Exit status 0 when pairs exist, 1 when the sources gave none (nothing written), 2 for bad arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sources", nargs="*", type=Path,
                        help="folders (recursive), fetcher RAW folders or manifest.jsonl files, image files")
    parser.add_argument("--samples", action="store_true", help="add scikit-image's colour sample photos")
    parser.add_argument("--out", required=True,
                        help="DATASET folder to create or update (tfrecord format: also gs://... and the like)")
    parser.add_argument("--mode", choices=("square", "patches"),
                        help="square (default) or patches (default when --samples is the only source)")
    parser.add_argument("--scale", type=int, default=SCALE, choices=(2, 3, 4, 8))
    parser.add_argument("--hr-size", type=int, default=None,
                        help=f"HR side in pixels (default {LR_SIZE} x scale: {HR_SIZE} at x{SCALE})")
    parser.add_argument("--patches", type=int, default=PATCHES, help=f"patches mode: crops per photo "
                                                                      f"(default {PATCHES})")
    parser.add_argument("--min-variance", type=float, default=MIN_VARIANCE,
                        help=f"patches mode: skip crops with a lower luma variance (default {MIN_VARIANCE})")
    parser.add_argument("--filter", default=FILTER, choices=tuple(resizer.FILTERS), help="LR filter")
    parser.add_argument("--blur", type=float, default=0.0, help="LR Gaussian blur sigma, LR pixels")
    parser.add_argument("--noise", type=float, default=0.0, help="LR Gaussian noise sigma, 0..255 units")
    parser.add_argument("--jpeg", type=int, default=None, help="LR JPEG re-compression quality 1..100")
    parser.add_argument("--palette", type=int, default=None, metavar="N",
                        help="LR reduced to N colours (2..256), as a GIF is; applied after the others")
    parser.add_argument("--palette-dither", default="none", choices=tuple(resizer.PALETTE_DITHERS),
                        help="--palette: nearest colour (none, default) or Floyd-Steinberg dithering (floyd)")
    stream = parser.add_argument_group("streams", "LR as a video stream delivers it (see Streams below)")
    stream.add_argument("--codec", help=f"encode LR clips with this codec ({', '.join(codec.CODECS)}, where PyAV "
                                        "has it)")
    stream.add_argument("--crf", type=int, nargs=2, metavar=("LO", "HI"),
                        help=f"CRF range drawn per clip (default {codec.DEFAULT_CRF[0]} {codec.DEFAULT_CRF[1]})")
    stream.add_argument("--bitrate", type=float, nargs=2, metavar=("LO", "HI"),
                        help="target bitrate range in kbit/s, drawn log-uniformly per clip (instead of --crf)")
    stream.add_argument("--codec-presets", type=_names, metavar="A,B", help="presets drawn per clip "
                        "(default: libx264/libx265 veryfast..slow, libvpx-vp9 cpu-used 1..5)")
    stream.add_argument("--codec-profiles", type=_names, metavar="A,B",
                        help="profiles drawn per clip (default libx264: baseline,main,high)")
    stream.add_argument("--downscalers", type=_names, metavar="A,B",
                        help=f"downscalers drawn per clip (default {','.join(codec.DOWNSCALERS)})")
    stream.add_argument("--codec-blur", type=float, nargs=2, metavar=("LO", "HI"),
                        help="Gaussian blur sigma range (HR pixels) before the downscale")
    stream.add_argument("--codec-noise", type=float, nargs=2, metavar=("LO", "HI"),
                        help="Gaussian noise sigma range (0..255) before the downscale")
    stream.add_argument("--clean-share", type=float, help="share of clips without blur, noise and codec (default 0)")
    stream.add_argument("--clip-frames", type=int, help=f"frames per clip (default {codec.CLIP_FRAMES})")
    stream.add_argument("--clip-size", type=int, nargs=2, metavar=("W", "H"),
                        help=f"HR window the camera sees (default {codec.CLIP_WINDOW[0]} {codec.CLIP_WINDOW[1]})")
    stream.add_argument("--clip-pairs", type=int, help="pairs cut from each decoded frame (default 2)")
    parser.add_argument("--split", type=float, nargs=3, default=SPLIT, metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of the photos per split (default 0.8 0.1 0.1)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--min-size", type=int, default=None, help="shorter side a photo needs (default hr-size)")
    parser.add_argument("--max-images", type=int, default=None, help="use at most N photos (seeded choice)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--no-draft", dest="draft", action="store_false",
                        help="square mode: always decode JPEGs at full size")
    parser.add_argument("--format", default="png", choices=FORMATS,
                        help="png: {train,val,test}/{hr,lr}/NAME.png (default); tfrecord: sharded TFRecord files")
    parser.add_argument("--shard-mb", type=float, default=SHARD_MB,
                        help=f"tfrecord format: MB per shard (default {SHARD_MB})")
    parser.add_argument("--overwrite", action="store_true", help="rebuild a dataset made with other parameters")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    stream = _stream_arguments(parser, args)
    try:
        manifest = build_dataset(
            args.sources, args.out, samples=args.samples, mode=args.mode, scale=args.scale,
            hr_size=args.hr_size, patches=args.patches, min_variance=args.min_variance, filter=args.filter,
            blur_sigma=args.blur, noise_sigma=args.noise, jpeg_quality=args.jpeg, palette_colors=args.palette,
            palette_dither=args.palette_dither, split=args.split, seed=args.seed, min_size=args.min_size,
            max_images=args.max_images, workers=args.workers, draft=args.draft, format=args.format,
            shard_mb=args.shard_mb, stream=stream, overwrite=args.overwrite, progress=not args.quiet)
    except DatasetError as e:
        print(f"create_dataset.py: error: {e}", file=sys.stderr)
        return 1 if isinstance(e, NoPairsError) else 2
    skipped = manifest["skipped"]
    for item in skipped[:SHOW_SKIPPED]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(skipped) > SHOW_SKIPPED:
        print(f"... and {len(skipped) - SHOW_SKIPPED} more skipped files, listed in {args.out}/{MANIFEST}",
              file=sys.stderr)
    print(summary(manifest, args.out))
    return 0


STREAM_ARGUMENTS = {"crf": "crf", "bitrate": "bitrate_kbps", "codec_presets": "presets", "codec_profiles": "profiles",
                    "downscalers": "downscalers", "codec_blur": "blur", "codec_noise": "noise",
                    "clean_share": "clean_share", "clip_frames": "frames", "clip_size": "window",
                    "clip_pairs": "pairs_per_frame"}  # command-line dest -> codec.stream_spec keyword


def _names(text):
    """A comma-separated list of names (argparse type)."""
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _stream_arguments(parser, args):
    """codec.stream_spec keywords from the stream flags (None without --codec); a stream flag without
    --codec, or --crf with --bitrate, is a usage error."""
    given = {key: getattr(args, dest) for dest, key in STREAM_ARGUMENTS.items() if getattr(args, dest) is not None}
    if args.codec is None:
        if given:
            flags = ", ".join("--" + d.replace("_", "-") for d in STREAM_ARGUMENTS if getattr(args, d) is not None)
            parser.error(f"{flags} need(s) --codec")
        return None
    if "crf" in given and "bitrate_kbps" in given:
        parser.error("give --crf or --bitrate, not both")
    return {"codec": args.codec, **given}


if __name__ == "__main__":
    sys.exit(main())
