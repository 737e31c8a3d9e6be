"""Turn photos on disk into LR/HR training pairs: DATASET/{train,val,test}/{hr,lr}/NAME.png + manifest.json.

    python create_dataset.py --samples --out data/samples                 # scikit-image's colour photos
    python create_dataset.py ~/Pictures RAW --out data/photos --workers 2  # folders (recursive) and fetcher RAW
    python create_dataset.py RAW/manifest.jsonl --out data/x2 --scale 2 --mode patches --patches 32

Modes:
  square   (default) each photo's centre square, resized to hr_size (antialiased bicubic); one pair a photo.
           Large JPEGs are decoded at reduced size (Pillow's draft mode, >= 2x hr_size) first: several
           times faster, and within 40 dB PSNR of a full decode after the final resize (--no-draft: exact).
  patches  up to --patches crops of hr_size at native resolution from a half-overlapping grid, in a seeded
           random order, skipping flat ones (luma variance below --min-variance).
With only --samples as a source the default mode is patches: the 8 sample photos give hundreds of pairs
that way, instead of 8 squares.

Each source photo lands in exactly one split, chosen from its sha256 (photos sorted by hash, cut at the split
fractions; every split with a non-zero fraction gets at least one photo), so crops of one photo never sit on
both sides of the train/test line. LR = resizer.lr_from_hr(HR) then optional degradations (blur, noise,
JPEG; in LR pixels). Bad or too-small files are skipped and listed with their reason in manifest.json.
Re-running into the same folder reuses finished photos; the folder always mirrors manifest.json (pairs of
photos no longer among the sources are removed). Writes are atomic, so an interrupted run leaves no
half-written PNG; run the same command again to finish it.
"""

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

import resizer

# -----------------------------------------------------------------------------
# configuration (the defaults of the command-line flags)
MODE = "square"  # square | patches ("patches" when --samples is the only source)
SCALE = 4  # 2, 3, 4 or 8
HR_SIZE = 128  # HR side; LR side = HR_SIZE // SCALE
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
SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"
SHOW_SKIPPED = 20  # skipped files printed by the command line; manifest.json lists them all
JOURNAL = ".progress.jsonl"  # photos finished by an unfinished run, one JSON line each
# parameters that change the pixels of a pair: a folder built with other values cannot be reused
PIXEL_PARAMETERS = ("mode", "scale", "hr_size", "filter", "degradations", "seed", "patches", "min_variance",
                    "draft")
THREADED_LIBRARIES = ("tensorflow", "keras", "torch", "jax")  # loaded: workers start by forkserver, not fork
# -----------------------------------------------------------------------------


class DatasetError(ValueError):
    """A DATASET that cannot be made or read: bad arguments, a folder that is not a dataset, unpaired files, ..."""


def build_dataset(sources, out, *, samples=False, mode=None, scale=SCALE, hr_size=HR_SIZE, patches=PATCHES,
                  min_variance=MIN_VARIANCE, filter=FILTER, blur_sigma=0.0, noise_sigma=0.0, jpeg_quality=None,
                  split=SPLIT, seed=SEED, min_size=None, max_images=None, workers=None, draft=DRAFT,
                  overwrite=False, progress=True):
    """Build (or finish, or update) the DATASET folder `out` from image sources; return its manifest dict.

    sources: folders (searched recursively; a folder holding a fetcher manifest.jsonl is read through it),
        manifest.jsonl files, or image files. samples=True adds scikit-image's colour photos.
    mode: "square" or "patches"; None means square, or patches when samples are the only source.
    min_size: shorter side a photo needs (default, and at least, hr_size). max_images: use at most this
        many source images (a seeded random choice). workers: processes (default: all cores; 1 = in this
        process). overwrite: delete an existing dataset in `out` built with other parameters first.
    Raises DatasetError for bad arguments or an `out` that holds something else; bad images are skipped.
    """
    started = time.perf_counter()
    out = Path(out)
    sources = [Path(s) for s in sources]
    if mode is None:
        mode = "patches" if samples and not sources else MODE
    params = _parameters(mode, scale, hr_size, patches, min_variance, filter, blur_sigma, noise_sigma,
                         jpeg_quality, split, seed, min_size, max_images, draft)
    if not sources and not samples:
        raise DatasetError("no sources: give folders, manifest.jsonl files or images, or --samples")

    candidates = _discover(sources, samples, out)
    candidates = _choose_at_most(candidates, max_images, seed)
    previous = _open_output(out, params, overwrite)
    workers = _worker_count(workers)

    with _Pool(workers) as pool:
        scanned = pool.map(_scan, [(c, previous["by_path"].get(c["path"]), params) for c in candidates],
                           "checking", progress)
        photos, skipped = _unique_photos(scanned)
        _assign_splits(photos, params["split"])
        jobs, reused = _plan(photos, previous["by_sha"], out)
        results = pool.map(_make_pairs, [(job, params, str(out)) for job in jobs], "making pairs", progress,
                           on_result=lambda record: _journal_append(out, record))

    done = reused + [r for r in results if "reason" not in r]
    skipped += [{"path": r["path"], "reason": r["reason"]} for r in results if "reason" in r]
    removed = _remove_stale_files(out, done)
    manifest = _manifest(params, done, skipped, written=len(done) - len(reused), reused=len(reused),
                         removed=removed, seconds=time.perf_counter() - started)
    with resizer.atomic_output(out / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    (out / JOURNAL).unlink(missing_ok=True)
    return manifest


# ----------------------------------------------------------------------------- parameters


def _parameters(mode, scale, hr_size, patches, min_variance, filter, blur_sigma, noise_sigma, jpeg_quality,
                split, seed, min_size, max_images, draft):
    """Check the arguments and gather them as manifest.json's "parameters"."""
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
    fractions = [float(f) for f in split]
    if len(fractions) != 3 or min(fractions) < 0 or sum(fractions) <= 0:
        raise DatasetError(f"split needs three fractions (train val test), none negative: {split}")
    total = sum(fractions)
    degradations = {k: v for k, v in (("blur_sigma", float(blur_sigma)), ("noise_sigma", float(noise_sigma)),
                                      ("jpeg_quality", jpeg_quality)) if v}
    return {
        "scale": scale, "hr_size": hr_size, "lr_size": hr_size // scale, "mode": mode, "filter": filter,
        "degradations": degradations, "seed": seed,
        "patches": patches if mode == "patches" else None,
        "min_variance": float(min_variance) if mode == "patches" else None,
        "draft": bool(draft) if mode == "square" else False,
        "split": dict(zip(SPLITS, (round(f / total, 6) for f in fractions), strict=True)),
        "min_size": max(int(min_size or 0), hr_size), "max_images": max_images,
    }


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


def _discover(sources, samples, out):
    """All candidate images as dicts {path, provenance?}: each file once, in the order given."""
    candidates = []
    out_resolved = out.resolve()
    for source in sources:
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
    if samples:
        photos = sample_photos()
        if not photos:
            raise DatasetError("scikit-image's sample photos are missing from this install")
        candidates += [{"path": str(p), "provenance": {"source": "scikit-image sample data"}} for p in photos]
    unique = {}
    for c in candidates:  # the same file named twice (a folder and its manifest, ...) counts once
        unique.setdefault(str(Path(c["path"]).resolve()), c)
    return list(unique.values())


def _images_under(folder, out_resolved):
    """Image files below folder, sorted; hidden files and folders and the output folder are left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != out_resolved)
        found += [Path(root, f) for f in sorted(files)
                  if not f.startswith(".") and Path(f).suffix.lower() in resizer.IMAGE_SUFFIXES]
    return found


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
    if out.is_dir() and any(out.iterdir()) and not manifest_path.exists() and not journal_path.exists():
        raise DatasetError(f"{out} is not empty and holds no {MANIFEST}: choose a new or empty folder")
    if overwrite:  # only ever in a folder that is a dataset (checked above): its splits and records go
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
        manifest_path.unlink(missing_ok=True)
        journal_path.unlink(missing_ok=True)

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
    return {"by_sha": {r["sha256"]: r for r in records}, "by_path": {r["path"]: r for r in records}}


def _json_or_none(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def _check_same_pixels(out, old, new):
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
    path = Path(candidate["path"])
    try:
        stat = path.stat()
        if known and known.get("bytes") == stat.st_size and known.get("mtime_ns") == stat.st_mtime_ns:
            width, height, sha = known["width"], known["height"], known["sha256"]
        else:
            width, height = resizer.image_size(path)
            sha = None
        if min(width, height) < params["min_size"]:
            return {"path": str(path), "reason": f"too small: {width}x{height}, the shorter side must be at "
                                                 f"least {params['min_size']} px"}
        if sha is None:
            with open(path, "rb") as f:
                sha = hashlib.file_digest(f, "sha256").hexdigest()
    except resizer.ImageLoadError as e:
        return {"path": str(path), "reason": str(e).removeprefix(f"{path}: ")}
    except FileNotFoundError:
        return {"path": str(path), "reason": "no such file"}
    except OSError as e:
        return {"path": str(path), "reason": f"cannot read ({e.strerror or e})"}
    expected = candidate.get("provenance", {}).get("sha256")
    if expected and expected != sha:
        return {"path": str(path), "reason": "sha256 differs from the fetcher's manifest (changed or corrupted "
                                             "since it was fetched)"}
    photo = {"path": str(path), "sha256": sha, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
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


def split_counts(n, fractions):
    """How many of n photos go to each split: largest remainders, and at least one for every split with a
    non-zero fraction when there are enough photos (so a small set still has val and test images)."""
    fractions = np.asarray(fractions, float) / np.sum(fractions)
    counts = np.floor(fractions * n).astype(int)
    remainders = fractions * n - counts
    for i in np.argsort(-remainders, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    wanted = fractions > 0
    if n >= wanted.sum():
        for i in np.flatnonzero(wanted & (counts == 0)):
            counts[int(np.argmax(counts))] -= 1
            counts[i] += 1
    return [int(c) for c in counts]


def _assign_splits(photos, split):
    """Give each photo a split from its sha256: sorted by hash, cut at the fractions (train, val, test)."""
    ordered = sorted(photos, key=lambda p: p["sha256"])
    counts = split_counts(len(ordered), [split[s] for s in SPLITS])
    bounds = np.cumsum(counts)
    for rank, photo in enumerate(ordered):
        photo["split"] = SPLITS[int(np.searchsorted(bounds, rank, side="right"))]
        photo["name"] = f"{_safe_stem(photo['path'])}-{photo['sha256'][:8]}"


def _safe_stem(path):
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", Path(path).stem).strip("._") or "image"
    return stem[:60]


def _plan(photos, previous, out):
    """Photos still to process, and records of those already done in this split (files all present)."""
    jobs, reused = [], []
    for photo in photos:
        old = previous.get(photo["sha256"])
        if old and old.get("split") == photo["split"] and old.get("name") == photo["name"] \
                and _pairs_exist(out, old):
            reused.append({**photo, "pairs": old["pairs"]})
        else:
            jobs.append(photo)
    return jobs, reused


# ----------------------------------------------------------------------------- making pairs


def _make_pairs(task):
    """Worker: decode one photo, cut its HR crops, write HR and LR PNGs; the record or a skip reason."""
    photo, params, out = task
    path = Path(photo["path"])
    try:
        crops = _hr_crops(path, photo, params)
    except resizer.ImageLoadError as e:
        return {"path": str(path), "reason": str(e).removeprefix(f"{path}: ")}
    if not crops:
        return {"path": str(path), "reason": f"no patch passed the flatness check (luma variance >= "
                                             f"{params['min_variance']})"}
    folder = Path(out) / photo["split"]
    for index, hr in enumerate(crops):
        name = f"{photo['name']}-{index:03d}.png"
        lr = resizer.lr_from_hr(hr, params["scale"], params["filter"])
        if params["degradations"]:
            lr = resizer.degrade(lr, **params["degradations"], seed=_pair_seed(params["seed"], photo, index))
        resizer.save_image(folder / "lr" / name, lr, **PNG_OPTIONS)
        resizer.save_image(folder / "hr" / name, hr, **PNG_OPTIONS)
    return {**photo, "pairs": len(crops)}


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
        luma = crop[..., 0] * 0.299 + crop[..., 1] * 0.587 + crop[..., 2] * 0.114
        if luma.var() >= min_variance:
            crops.append(np.ascontiguousarray(crop))
            if len(crops) == count:
                break
    return crops


def _pair_seed(seed, photo, index):
    return int(np.random.SeedSequence([seed, int(photo["sha256"][:16], 16), index]).generate_state(1)[0])


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

    def map(self, function, tasks, description, progress, on_result=None):
        results = []
        if len(tasks) > 1 and self.workers > 1 and self.pool is None:
            method = _start_method()
            context = mp.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["resizer", "create_dataset"])
            self.pool = context.Pool(self.workers)
        if self.pool is not None and len(tasks) > 1:
            iterator = self.pool.imap_unordered(function, tasks)
        else:
            iterator = map(function, tasks)
        for result in tqdm(iterator, total=len(tasks), desc=description, unit="img", disable=not progress,
                           leave=False, dynamic_ncols=True):
            if on_result:
                on_result(result)
            results.append(result)
        return sorted(results, key=lambda r: r["path"])


# ----------------------------------------------------------------------------- reading a DATASET (flow.py, notebooks)
@dataclass
class Split:
    """One split's pairs: LR and HR paths by NAME, the common LR size (w, h) or None, decoded bytes."""

    name: str
    lr_paths: list
    hr_paths: list
    lr_size: tuple | None
    decoded_bytes: int

    def __len__(self):
        return len(self.lr_paths)


def _png_names(folder):
    return {p.name: p for p in folder.glob("*.png")}


def _image_size(path):
    """(width, height) from the file's header, as a DatasetError when the file is unreadable."""
    try:
        return resizer.image_size(path)
    except resizer.ImageLoadError as err:
        raise DatasetError(str(err)) from err


def dataset_scale(dataset):
    """The scale recorded in DATASET/manifest.json, or None when there is no manifest."""
    manifest = Path(dataset) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return int(json.loads(manifest.read_text())["parameters"]["scale"])
    except (ValueError, KeyError, TypeError) as err:
        raise DatasetError(f"{manifest}: no readable parameters.scale ({err})") from err


def scan_split(dataset, split, scale=None):
    """Check DATASET/split/{lr,hr} and list its pairs: same names, HR exactly `scale` times LR.

    scale None: taken from the first pair (and then required of all). Returns (Split, scale).
    """
    root = Path(dataset) / split
    for sub in ("lr", "hr"):
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
    """Every split checked (clear DatasetError otherwise); returns ({split: Split}, scale)."""
    dataset = Path(dataset)
    if not dataset.is_dir():
        raise DatasetError(f"DATASET not found: {dataset}")
    scale, found = dataset_scale(dataset), {}
    for split in splits:
        found[split], scale = scan_split(dataset, split, scale)
    return found, scale


def check_patch_size(splits, patch, scale):
    """patch None needs one image size per split (to batch); a patch must divide by scale and fit every image."""
    for split in splits.values():
        if patch is None and split.lr_size is None:
            raise DatasetError(f"{split.name}: images of several sizes cannot be batched whole; pass --patch-size")
    if patch is None:
        return
    if patch % scale or patch < scale:
        raise DatasetError(f"--patch-size {patch} must be a positive multiple of the scale {scale}")
    for path in splits["train"].lr_paths:
        w, h = _image_size(path)
        if min(w, h) * scale < patch:
            raise DatasetError(f"{path}: LR {w}x{h} is smaller than --patch-size {patch} / scale {scale}")


def load_split_arrays(split, desc=None):
    """(lr list, hr list) of uint8 RGB arrays, decoded once into memory."""
    pairs = [(resizer.load_image(lp), resizer.load_image(hp))
             for lp, hp in tqdm(list(zip(split.lr_paths, split.hr_paths, strict=True)), desc=desc,
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
    return (f"{counts['train']} train / {counts['val']} val / {counts['test']} test pairs "
            f"({manifest['parameters']['hr_size']} px HR, x{manifest['parameters']['scale']}) from {photos} "
            f"photos{reused}; {len(manifest['skipped'])} skipped; {run['seconds']:.1f} s -> {out}")


def main(argv=None):
    """Command line: build a dataset, print skipped files and a one-line summary; 0 when pairs exist."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("sources", nargs="*", type=Path,
                        help="folders (recursive), fetcher RAW folders or manifest.jsonl files, image files")
    parser.add_argument("--samples", action="store_true", help="add scikit-image's colour sample photos")
    parser.add_argument("--out", type=Path, required=True, help="DATASET folder to create or update")
    parser.add_argument("--mode", choices=("square", "patches"),
                        help="square (default) or patches (default when --samples is the only source)")
    parser.add_argument("--scale", type=int, default=SCALE, choices=(2, 3, 4, 8))
    parser.add_argument("--hr-size", type=int, default=HR_SIZE, help=f"HR side in pixels (default {HR_SIZE})")
    parser.add_argument("--patches", type=int, default=PATCHES, help=f"patches mode: crops per photo "
                                                                      f"(default {PATCHES})")
    parser.add_argument("--min-variance", type=float, default=MIN_VARIANCE,
                        help=f"patches mode: skip crops with a lower luma variance (default {MIN_VARIANCE})")
    parser.add_argument("--filter", default=FILTER, choices=tuple(resizer.FILTERS), help="LR filter")
    parser.add_argument("--blur", type=float, default=0.0, help="LR Gaussian blur sigma, LR pixels")
    parser.add_argument("--noise", type=float, default=0.0, help="LR Gaussian noise sigma, 0..255 units")
    parser.add_argument("--jpeg", type=int, default=None, help="LR JPEG re-compression quality 1..100")
    parser.add_argument("--split", type=float, nargs=3, default=SPLIT, metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of the photos per split (default 0.8 0.1 0.1)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--min-size", type=int, default=None, help="shorter side a photo needs (default hr-size)")
    parser.add_argument("--max-images", type=int, default=None, help="use at most N photos (seeded choice)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--no-draft", dest="draft", action="store_false",
                        help="square mode: always decode JPEGs at full size")
    parser.add_argument("--overwrite", action="store_true", help="rebuild a dataset made with other parameters")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        manifest = build_dataset(
            args.sources, args.out, samples=args.samples, mode=args.mode, scale=args.scale,
            hr_size=args.hr_size, patches=args.patches, min_variance=args.min_variance, filter=args.filter,
            blur_sigma=args.blur, noise_sigma=args.noise, jpeg_quality=args.jpeg, split=args.split,
            seed=args.seed, min_size=args.min_size, max_images=args.max_images, workers=args.workers,
            draft=args.draft, overwrite=args.overwrite, progress=not args.quiet)
    except DatasetError as e:
        print(f"create_dataset.py: error: {e}", file=sys.stderr)
        return 2
    skipped = manifest["skipped"]
    for item in skipped[:SHOW_SKIPPED]:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if len(skipped) > SHOW_SKIPPED:
        print(f"... and {len(skipped) - SHOW_SKIPPED} more skipped files, listed in {args.out / MANIFEST}",
              file=sys.stderr)
    print(summary(manifest, args.out))
    if not sum(manifest["counts"].values()):
        print("create_dataset.py: no pairs were made; see the skipped files above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
