"""Fetch lots of images into a RAW folder: Pixabay, URL lists, archives, a dataset registry, Debian packages,
local folders.

    python fetcher.py pixabay "mountain lake" --limit 300 --out data/raw      # key in PIXABAY_API_KEY
    python fetcher.py urls urls.txt --out data/raw
    python fetcher.py archive https://example.org/photos.tar.gz --sha256 HEX --out data/raw
    python fetcher.py dataset --list                                          # the registry, as a table
    python fetcher.py dataset set5 --out data/raw                             # then: flow.py evaluate --data data/raw/set5
    python fetcher.py debian mate-backgrounds --out data/raw --photos-only
    python fetcher.py local /usr/share/backgrounds --out data/raw

The RAW folder contract (create_dataset.py reads it):
  RAW/ holds the image files, in one sub-folder per source (urls/, pixabay/, local/NAME/, debian/PACKAGE/,
  a dataset's or archive's NAME/), and RAW/manifest.jsonl: one JSON object a line, one line per file, with
  path (relative to RAW, "/" separators), sha256, bytes, width, height, source (url, pixabay, archive,
  debian, local), url where the file was downloaded, and attribution and licence fields where the source
  gives them (pixabay: user, pageURL, license; debian: package, version, license, attribution; datasets:
  dataset, homepage, license). Files are checked to really be images, de-duplicated by sha256 and renamed
  into place atomically, so a file listed in the manifest is whole. Re-running a command skips what is
  already there and whole, so an interrupted fetch continues where it stopped.

Downloads run on concurrent workers with retries (exponential backoff with jitter, Retry-After honoured)
and resume partial files (NAME.part) with HTTP Range requests. Archives are extracted safely: absolute
paths, `..`, links and special files are refused, and oversized members are refused. Every function here
is usable from a notebook and returns a Summary.
"""

import argparse
import contextlib
import email.utils
import fnmatch
import hashlib
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image
from tqdm import tqdm

import resizer

# -----------------------------------------------------------------------------
# configuration
OUT_DIR = "data/raw"
WORKERS = 8  # concurrent downloads; the work is waiting on the network, not the CPU
RETRIES = 5  # further tries after the first, for 5xx, 429, timeouts and dropped connections
BACKOFF = 1.0  # seconds before the first retry; doubled each time, with jitter
BACKOFF_MAX = 60.0  # cap on one backoff delay
MAX_WAIT = 900.0  # longest Retry-After / rate-limit reset we agree to sleep through
TIMEOUT = (10.0, 60.0)  # connect, read (seconds between bytes)
CHUNK_BYTES = 1 << 16
USER_AGENT = "srgan-fetcher/1.0 (+python-requests)"
IMAGE_SUFFIXES = resizer.IMAGE_SUFFIXES
FORMAT_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif",
                 "MPO": ".jpg"}
NOT_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript")
MANIFEST = "manifest.jsonl"
DUPLICATES = ".duplicates.jsonl"  # keys of items whose bytes were already there, so re-runs skip them
DOWNLOADS = ".downloads"  # archives being downloaded / extracted, and their completion records
PART = ".part"

PIXABAY_API = "https://pixabay.com/api/"
PIXABAY_KEY_ENV = "PIXABAY_API_KEY"
PIXABAY_PER_PAGE = 200  # the API's maximum page size
PIXABAY_MAX_HITS = 500  # the API returns at most 500 hits per query
PIXABAY_CACHE_SECONDS = 24 * 3600  # Pixabay's terms: cache API responses for 24 hours
PIXABAY_CACHE = ".cache/pixabay"  # under RAW unless cache_dir is given
PIXABAY_LICENSE = "Pixabay Content License"
PIXABAY_LICENSE_URL = "https://pixabay.com/service/license-summary/"
PIXABAY_CATEGORIES = ("backgrounds", "fashion", "nature", "science", "education", "feelings", "health", "people",
                      "religion", "places", "animals", "industry", "computer", "food", "sports", "transportation",
                      "travel", "buildings", "business", "music")
PIXABAY_SIZES = {"web": "webformatURL", "large": "largeImageURL", "fullhd": "fullHDURL", "original": "imageURL"}

MAX_MEMBER_BYTES = 1 << 30  # an archive member larger than this is refused (no photo is 1 GiB; a bomb may be)
DISK_RESERVE_BYTES = 1 << 30  # extraction stops before the disk holding RAW has less than this left

# The dataset registry. `root`: only image members under it are kept, with the prefix removed, so
# RAW/NAME/ is a flat folder of the images where the archive has one ("" keeps every image member).
# Checksums: `sha256` (or `md5`) where a source publishes one, else None: the download is then not
# verified, and its computed sha256 is printed and kept in RAW/.downloads/NAME.done.json.
#   div2k, dtd, places365-val: sha256 and bytes from TensorFlow Datasets' url_checksums (div2k.txt,
#   dtd.txt, places365_small.txt); openimages-valid: from open_images_v4.txt (the same object over http).
#   places365-val also has the md5 of the Places download page (as torchvision's Places365 loader
#   quotes it); both are checked. urban100: the archive's md5 as published in deepinv's Urban100
#   examples. set5, set14, bsd100, flickr2k, bsds500: no published checksum found.
_HF_SR = "https://huggingface.co/datasets/eugenesiow/{0}/resolve/main/data/{0}_HR.tar.gz"
_SR_ABOUT = "HR PNGs of the {} super-resolution benchmark (the folder is flow.py evaluate --data input)"
DATASETS = {
    "div2k-train": dict(url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip", root="DIV2K_train_HR/",
                        sha256="9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
                        bytes=3530603713, images=800, homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
                        license="academic research use; cite Agustsson & Timofte, CVPRW 2017",
                        about="DIV2K training set, 2K-resolution HR PNGs"),
    "div2k-valid": dict(url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip", root="DIV2K_valid_HR/",
                        sha256="20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
                        bytes=448993893, images=100, homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
                        license="academic research use; cite Agustsson & Timofte, CVPRW 2017",
                        about="DIV2K validation set, 2K-resolution HR PNGs"),
    "flickr2k": dict(url="https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar", root="Flickr2K/Flickr2K_HR/",
                     sha256=None, bytes=None, images=2650, homepage="https://github.com/sanghyun-son/EDSR-PyTorch",
                     license="research use (Flickr photos); cite Lim et al., CVPRW 2017",
                     about="Flickr2K HR PNGs collected for EDSR (the LR folders are left out)"),
    "bsds500": dict(url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
                    root="BSR/BSDS500/data/images/", sha256=None, bytes=None, images=500,
                    homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
                    license="research use; cite Arbelaez et al., TPAMI 2011",
                    about="Berkeley segmentation dataset, 481x321 JPEGs (train/val/test folders)"),
    "dtd": dict(url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", root="dtd/images/",
                sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205", bytes=625239812,
                images=5640, homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
                license="research use; cite Cimpoi et al., CVPR 2014",
                about="Describable Textures Dataset, 47 texture categories"),
    "set5": dict(url=_HF_SR.format("Set5"), root="Set5_HR/", sha256=None, bytes=None, images=5,
                 homepage="http://people.rennes.inria.fr/Aline.Roumy/results/SR_BMVC12.html",
                 license="research use; cite Bevilacqua et al., BMVC 2012", about=_SR_ABOUT.format("Set5")),
    "set14": dict(url=_HF_SR.format("Set14"), root="Set14_HR/", sha256=None, bytes=None, images=14,
                  homepage="https://sites.google.com/site/romanzeyde/research-interests",
                  license="research use; cite Zeyde et al., Curves and Surfaces 2010",
                  about=_SR_ABOUT.format("Set14")),
    "bsd100": dict(url=_HF_SR.format("BSD100"), root="BSD100_HR/", sha256=None, bytes=None, images=100,
                   homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/bsds/",
                   license="research use; cite Martin et al., ICCV 2001", about=_SR_ABOUT.format("BSD100")),
    "urban100": dict(url=_HF_SR.format("Urban100"), root="Urban100_HR/", sha256=None,
                     md5="65d9d84a34b72c6f7ca1e26a12df1e4c", bytes=None, images=100,
                     homepage="https://github.com/jbhuang0604/SelfExSR",
                     license="research use; cite Huang et al., CVPR 2015", about=_SR_ABOUT.format("Urban100")),
    "openimages-valid": dict(url="https://open-images-dataset.s3.amazonaws.com/tar/validation.tar.gz", root="",
                             sha256="515fefdf310e17e204cfe84bb3d05e53d8a6b5465ef3b9a3164383082b506df3",
                             bytes=12844530798, images=41620,
                             homepage="https://storage.googleapis.com/openimages/web/index.html",
                             license="CC BY 2.0 per image (authors in the image list); "
                                     "cite Kuznetsova et al., IJCV 2020",
                             about="Open Images validation split (V4-V7 share these 41,620 images), JPEGs"),
    "places365-val": dict(url="http://data.csail.mit.edu/places/places365/val_256.tar", root="val_256/",
                          sha256="24b4e639ef12a0012af525bc4cb443e4ab4aaea8369a1fb009b70e4a4aad5d48",
                          md5="e27b17d8d44f4af9a78502beb927f808", bytes=525158400, images=36500, homepage="http://places2.csail.mit.edu/download.html",
                          license="non-commercial research and education; cite Zhou et al., TPAMI 2017",
                          about="Places365 validation images at 256x256 (Places205 has no validation archive "
                                "of its own)"),
}
# -----------------------------------------------------------------------------

log = logging.getLogger("fetcher")
_STOP = threading.Event()  # set on Ctrl-C so workers stop between chunks and leave their .part files
_SECRETS: set[str] = set()
_thread = threading.local()

# the outcome of one job, the same words for every source
FETCHED = "fetched"  # the file is in place and recorded
DUPLICATE = "duplicate"  # its bytes are already held by another file; not kept
LEFT_OUT = "left out"  # a readable image a filter does not want (e.g. a drawing with --photos-only)
REJECTED = "rejected"  # refused for good: unsafe member, not an image, HTTP 404, wrong sha256
FAILED = "failed"  # not finished this time (retries used up, interrupted, disk error): a re-run tries again


class FetchError(Exception):
    """A download, check or extraction failed; the message is a short reason with any API key redacted."""

    def __init__(self, reason: str):
        super().__init__(redact(str(reason)))


class TransientError(FetchError):
    """A failure worth retrying (5xx, 429, timeouts, dropped connections); `wait` is the server's own delay."""

    def __init__(self, reason: str, wait: float | None = None):
        super().__init__(reason)
        self.wait = wait


class GaveUp(FetchError):
    """Transient failures outlasted the retries; the partial file is kept so the next run resumes it."""


class Interrupted(FetchError):
    """Stopped by Ctrl-C between two chunks; the partial file is kept so the next run resumes it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: retries, exponential backoff with jitter, timeouts; tests shrink the delays."""

    retries: int = RETRIES
    backoff: float = BACKOFF
    backoff_max: float = BACKOFF_MAX
    max_wait: float = MAX_WAIT
    timeout: float | tuple[float, float] = TIMEOUT
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        """Backoff before retry number attempt+1: base * 2**attempt, capped, with 'equal jitter'."""
        cap = min(self.backoff_max, self.backoff * 2**attempt)
        return cap / 2 + random.uniform(0, cap / 2)


@dataclass
class Summary:
    """What a fetch did: counts, bytes written, and each failure with its reason."""

    fetched: int = 0
    skipped: int = 0
    duplicates: int = 0
    left_out: int = 0  # readable images a filter did not want
    failed: list[tuple[str, str]] = field(default_factory=list)  # (item, reason)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def add(self, other: "Summary") -> "Summary":
        """Fold another summary into this one (e.g. the archive download into its extraction)."""
        self.fetched += other.fetched
        self.skipped += other.skipped
        self.duplicates += other.duplicates
        self.left_out += other.left_out
        self.failed += other.failed
        self.bytes += other.bytes
        return self

    def line(self) -> str:
        """One line for the end of a run: fetched, skipped, duplicates, failed with reasons, time."""
        text = f"fetched {self.fetched} ({self.bytes / 1e6:.1f} MB), skipped {self.skipped}"
        text += f", duplicates {self.duplicates}"
        if self.left_out:
            text += f", left out {self.left_out}"
        text += f", failed {len(self.failed)}"
        if self.failed:
            kinds = Counter(_reason_kind(reason) for _, reason in self.failed)
            text += " (" + ", ".join(f"{kind}: {n}" for kind, n in kinds.most_common()) + ")"
        return text + f" in {self.seconds:.1f} s"


@dataclass
class Job:
    """One image to bring into RAW: downloaded from `url` or copied from `src`, written at `rel`."""

    rel: str  # destination, relative to RAW, posix separators
    key: str  # identity across runs (URL, pixabay:ID, source file, archive member)
    url: str | None = None
    src: Path | None = None
    size: int | None = None  # expected bytes (local files), to notice a changed source
    sha256: str | None = None  # expected content, when the source says
    meta: dict = field(default_factory=dict)  # extra manifest fields: source, url, attribution, ...

    @property
    def label(self) -> str:
        """How a person recognises this item in a failure report."""
        return redact(self.url) if self.url else str(self.src) if self.src else self.key


# -----------------------------------------------------------------------------
# secrets and error text


def register_secret(secret: str) -> None:
    """Remember a secret (an API key) so it is redacted from errors and from urllib3's debug log."""
    if secret:
        _SECRETS.add(secret)
        for name in ("urllib3.connectionpool", "urllib3", "requests", "fetcher"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, _RedactFilter) for f in logger.filters):
                logger.addFilter(_RedactFilter())


def redact(text: str) -> str:
    """Text with registered secrets and any `key=` URL parameter replaced by ***."""
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return re.sub(r"(?i)([?&;]key=)[^&\s#'\"]+", r"\1***", text)


class _RedactFilter(logging.Filter):
    """Rewrites log records so URLs carrying the API key never reach a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def _describe(exc: BaseException) -> str:
    """Short text for a requests/urllib3 exception: its class and first line, redacted."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {text}"[:300])


def _reason_kind(reason: str) -> str:
    """The leading words of a failure reason, for grouping in the summary line."""
    return re.split(r" \(|: ", reason, maxsplit=1)[0]


# -----------------------------------------------------------------------------
# files: hashing, image check, manifest


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_image(path: Path) -> tuple[str, int, int]:
    """Cheap check that a file really is a usable image: (format, width, height), else FetchError.

    resizer.image_size reads the header (refusing HTML pages saved as .jpg, empty files, decompression
    bombs, with the wording create_dataset.py uses); Pillow's verify() then checks the file's integrity
    (e.g. every PNG chunk's CRC) without decoding pixels. Full decoding stays resizer.load_image's job.
    """
    try:
        width, height = resizer.image_size(path)
        with Image.open(path) as im:  # oversized files were refused above, so no bomb warning here
            fmt = im.format
            im.verify()
    except resizer.ImageLoadError as exc:
        raise FetchError(f"not a usable image ({str(exc).removeprefix(f'{path}: ')})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise FetchError(f"not a usable image (damaged: {exc or type(exc).__name__})") from None
    return fmt or "?", width, height


def read_manifest(out_dir: str | Path) -> list[dict]:
    """Entries of RAW/manifest.jsonl, the last line for each path winning; a torn last line is ignored."""
    return list(Manifest(Path(out_dir)).entries.values())


class Manifest:
    """RAW/manifest.jsonl plus the duplicates record: loaded once, appended line by line, thread-safe."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.path = self.root / MANIFEST
        self.entries: dict[str, dict] = {}  # path -> entry
        self.by_sha: dict[str, str] = {}
        self.by_url: dict[str, str] = {}
        self.duplicates: dict[str, dict] = {}  # key -> {"sha256", "bytes", "duplicate_of"}
        self.lock = threading.RLock()
        entries, lines = _read_jsonl(self.path)
        for entry in entries:
            if isinstance(entry.get("path"), str) and isinstance(entry.get("sha256"), str):
                self._index(entry)
        # superseded or torn lines: tidy() rewrites the file with one line per path (readers take the first)
        self.untidy = len(self.entries) != lines
        for record in _read_jsonl(self.root / DUPLICATES)[0]:
            if isinstance(record.get("key"), str):
                self.duplicates[record["key"]] = record

    def _index(self, entry: dict) -> None:
        self.entries[entry["path"]] = entry
        self.by_sha.setdefault(entry["sha256"], entry["path"])
        if entry.get("url"):
            self.by_url[entry["url"]] = entry["path"]

    def is_whole(self, rel: str, *, size: int | None = None, verify: bool = False) -> bool:
        """True when rel is recorded and its file is there with the recorded size (and sha256 if verify)."""
        entry = self.entries.get(rel)
        if entry is None or (size is not None and entry.get("bytes") != size):
            return False
        path = self.root / rel
        try:
            if path.stat().st_size != entry.get("bytes"):
                return False
        except OSError:
            return False
        return not verify or file_sha256(path) == entry["sha256"]

    def is_done(self, job: Job, *, verify: bool = False) -> bool:
        """True when a job needs no work: its file is whole, or its bytes were a known duplicate."""
        if self.is_whole(job.rel, size=job.size, verify=verify):
            return True
        if job.url and job.url in self.by_url and self.is_whole(self.by_url[job.url], verify=verify):
            return True
        record = self.duplicates.get(job.key)
        return bool(record and (job.size is None or record.get("bytes") == job.size)
                    and self.is_whole(record.get("duplicate_of", ""), verify=verify))

    def holder(self, sha256: str, rel: str) -> str | None:
        """Another whole file already holding these bytes, or None."""
        other = self.by_sha.get(sha256)
        return other if other and other != rel and self.is_whole(other) else None

    def commit(self, tmp: Path, job: Job, sha256: str, info: tuple[str, int, int]) -> tuple[str, str]:
        """Move a finished temporary file into place and record it, unless its bytes are already here.

        Returns (FETCHED, rel) or (DUPLICATE, rel of the file that holds the same bytes).
        """
        size = tmp.stat().st_size
        rel = _with_image_suffix(job.rel, info[0])
        with self.lock:
            other = self.holder(sha256, rel)
            if other:
                tmp.unlink(missing_ok=True)
                return self.note_duplicate(job, sha256, job.size or size, other)
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            previous = self.entries.get(rel)
            entry = {"path": rel, "sha256": sha256, "bytes": size, **job.meta, "width": info[1], "height": info[2]}
            if previous is None or previous.get("sha256") != sha256 or previous.get("bytes") != size:
                _append_jsonl(self.path, entry)
                self.untidy |= previous is not None
            self._index(entry)
            return FETCHED, rel

    def tidy(self) -> None:
        """Rewrite manifest.jsonl (atomically) with one line per path when lines were superseded or torn."""
        with self.lock:
            if not self.untidy:
                return
            lines = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries.values())
            with resizer.atomic_output(self.path) as tmp:
                tmp.write_text(lines, encoding="utf-8")
            self.untidy = False

    def note_duplicate(self, job: Job, sha256: str, size: int, other: str) -> tuple[str, str]:
        """Record that a job's bytes are already held by `other`, so re-runs skip it; (DUPLICATE, other)."""
        record = {"key": job.key, "sha256": sha256, "bytes": size, "duplicate_of": other}
        with self.lock:
            _append_jsonl(self.root / DUPLICATES, record)
            self.duplicates[job.key] = record
        return DUPLICATE, other


def _read_jsonl(path: Path) -> tuple[list[dict], int]:
    """The objects of a JSON-lines file, and its number of non-blank lines; torn or foreign lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], 0
    objects, lines = [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        lines += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable line ignored (an interrupted write?)", path, number)
            continue
        if isinstance(obj, dict):
            objects.append(obj)
    return objects, lines


def _append_jsonl(path: Path, obj: dict) -> None:
    """Append one JSON line in a single write; a torn last line left by a crash is closed off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(obj, ensure_ascii=False) + "\n"
    with open(path, "a+b") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
        f.write(line.encode("utf-8"))


def _with_image_suffix(rel: str, fmt: str) -> str:
    """rel, with the suffix of its image format added when its own suffix is not an image suffix."""
    if rel.lower().endswith(IMAGE_SUFFIXES):
        return rel
    return rel + FORMAT_SUFFIX.get(fmt, "." + fmt.lower())


def _part_path(path: Path) -> Path:
    return path.with_name(path.name + PART)


# -----------------------------------------------------------------------------
# HTTP: sessions, retries, resumable downloads


def _session() -> requests.Session:
    """This thread's requests.Session (one per worker, so connections are reused but never shared)."""
    session = getattr(_thread, "session", None)
    if session is None:
        session = requests.Session()
        session.headers["User-Agent"] = USER_AGENT
        _thread.session = session
    return session


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After (or X-RateLimit-Reset) header: delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _raise_for_status(response: requests.Response, retry: RetryPolicy, *, with_body: bool = False) -> None:
    """TransientError for 408/429/5xx (with the server's requested wait), FetchError for other errors."""
    status = response.status_code
    if status < 400:
        return
    if status in (408, 429) or status >= 500:
        wait = parse_retry_after(response.headers.get("Retry-After"))
        if wait is None and status == 429:
            wait = parse_retry_after(response.headers.get("X-RateLimit-Reset"))
        if wait is not None and wait > retry.max_wait:
            raise FetchError(f"HTTP {status} (server asks to wait {wait:.0f} s, more than {retry.max_wait:.0f})")
        raise TransientError(f"HTTP {status}", wait=wait)
    body = f": {response.text.strip()[:200]}" if with_body and response.text.strip() else ""
    raise FetchError(f"HTTP {status} {response.reason or ''}".rstrip() + body)


def _with_retries(action: Callable[[], object], retry: RetryPolicy):
    """Run action, retrying TransientErrors with backoff (or the server's wait) up to retry.retries times."""
    for attempt in range(retry.retries + 1):
        try:
            return action()
        except TransientError as exc:
            if attempt == retry.retries or _STOP.is_set():
                tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
                raise GaveUp(f"{exc} (gave up after {tries})") from None
            wait = exc.wait if exc.wait is not None else retry.delay(attempt)
            log.debug("retrying in %.2f s after %s", wait, exc)
            retry.sleep(wait)
    raise AssertionError("unreachable")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from 'bytes START-END/TOTAL' or 'bytes */TOTAL'; None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _check_content_type(response: requests.Response) -> None:
    """Refuse bodies the server itself labels as text/HTML/JSON (error pages), before saving a byte."""
    ctype = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype.startswith(NOT_IMAGE_TYPES):
        raise FetchError(f"content type {ctype} (an error page, not an image)")


def download_file(url: str, part: Path, *, retry: RetryPolicy | None = None, session: requests.Session | None = None,
                  progress: Callable[[int], object] | None = None) -> int:
    """Download url into part, resuming the bytes part already holds; returns the size once complete.

    Retries 5xx, 429, timeouts and dropped connections. A resumed request sends `Range: bytes=N-` and
    appends only after a 206 whose Content-Range starts at N; a server that ignores Range gets a restart.
    """
    retry = retry or RetryPolicy()
    part.parent.mkdir(parents=True, exist_ok=True)
    return _with_retries(lambda: _download_once(session or _session(), url, part, retry, progress), retry)


def _download_once(session, url, part: Path, retry: RetryPolicy, progress) -> int:
    have = part.stat().st_size if part.exists() else 0
    headers = {"Accept-Encoding": "identity"}  # byte offsets must refer to the file itself, not a gzip stream
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        with session.get(url, headers=headers, stream=True, timeout=retry.timeout) as response:
            total = _start_body(response, part, have, retry)
            if total == have and response.status_code == 416:
                return have
            mode = "ab" if response.status_code == 206 else "wb"
            with open(part, mode) as f:
                for chunk in _body_chunks(response):
                    if _STOP.is_set():
                        raise Interrupted("interrupted (partial file kept for resuming)")
                    f.write(chunk)
                    if progress:
                        progress(len(chunk))
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise TransientError(_describe(exc)) from None
    size = part.stat().st_size
    if total is not None and size != total:
        raise TransientError(f"incomplete body ({size} of {total} bytes)")
    return size


def _body_chunks(response: requests.Response) -> Iterable[bytes]:
    """The body as it arrives. urllib3 2's read1 hands over every byte received before a dropped
    connection (read(n) would discard a partly filled chunk), so a resume loses nothing."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:  # urllib3 1.x
        yield from response.iter_content(CHUNK_BYTES)
        return
    while chunk := read1(CHUNK_BYTES):
        yield chunk


def _start_body(response: requests.Response, part: Path, have: int, retry: RetryPolicy) -> int | None:
    """Check the status line and headers of a (possibly ranged) response; returns the full size if known."""
    if response.status_code == 416 and have:
        _, total = _content_range(response.headers.get("Content-Range"))
        if total == have:  # the partial file was already complete (a crash before its rename)
            return total
        part.unlink(missing_ok=True)
        raise TransientError("range not satisfiable (stale partial file; restarting)", wait=0)
    _raise_for_status(response, retry)
    _check_content_type(response)
    if response.status_code == 206:
        start, total = _content_range(response.headers.get("Content-Range"))
        if start != have:
            part.unlink(missing_ok=True)
            raise TransientError(f"Content-Range starts at {start}, expected {have} (restarting)", wait=0)
        return total
    if have:
        log.debug("server ignored the Range request; downloading %s from the start", redact(response.url))
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


# -----------------------------------------------------------------------------
# running jobs: one runner for every source


class JobRunner:
    """Brings jobs into a RAW folder with one progress bar, one Summary and one set of statuses.

    Work functions return (status, detail): detail is the file's path in RAW for FETCHED, the path of the
    file holding the same bytes for DUPLICATE, and a reason otherwise. Used serially (archive members,
    which must be read in order) or on a thread pool (downloads, local copies).
    """

    def __init__(self, manifest: "Manifest", *, desc: str, total: int | None = None, progress: bool = True):
        self.manifest = manifest
        self.summary = Summary()
        self.files: list[str] = []  # RAW paths fetched or already whole
        self.rejected: list[tuple[str, str]] = []  # (item, reason) refused for good
        self.incomplete = False  # something FAILED: a completion record must not be written
        self.started = time.monotonic()
        self.bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
        _STOP.clear()

    def pending(self, jobs: list[Job], *, verify: bool = False) -> list[Job]:
        """The jobs that need work; the others (whole in the manifest, known duplicates) count as skipped."""
        todo = []
        for job in jobs:
            if self.manifest.is_done(job, verify=verify):
                self.skip(job.rel)
            else:
                todo.append(job)
        return todo

    def skip(self, rel: str) -> None:
        """Count a file that is already there and whole."""
        self.summary.skipped += 1
        self.files.append(rel)
        self.bar.update()

    def record(self, item: str, status: str, detail: str) -> None:
        """Count one finished item (item: how a person recognises it in a failure report)."""
        if status == FETCHED:
            self.summary.fetched += 1
            self.summary.bytes += self.manifest.entries[detail]["bytes"]
            self.files.append(detail)
        elif status == DUPLICATE:
            self.summary.duplicates += 1
            log.debug("%s: same bytes as %s; not kept", item, detail)
        elif status == LEFT_OUT:
            self.summary.left_out += 1
            log.debug("left out: %s: %s", item, detail)
        else:
            self.summary.failed.append((item, detail))
            if status == REJECTED:
                self.rejected.append((item, detail))
            else:
                self.incomplete = True
            log.debug("%s: %s: %s", status, item, detail)
        self.bar.update()

    def map(self, work: Callable[[Job], object], jobs: list[Job], workers: int) -> Iterable[tuple[Job, object]]:
        """(job, work(job)) in job order, the work done on a pool of workers; Ctrl-C stops them cleanly."""
        with _worker_pool(workers) as pool:
            yield from zip(jobs, pool.map(work, jobs), strict=True)

    def run(self, jobs: list[Job], work: Callable[[Job], tuple[str, str]], workers: int) -> None:
        """Do work(job) for every job on a pool of workers, recording each result as it finishes."""
        with _worker_pool(workers) as pool:
            futures = {pool.submit(work, job): job for job in jobs}
            for future in as_completed(futures):
                self.record(futures[future].label, *future.result())

    def finish(self) -> Summary:
        """Close the bar, tidy the manifest and return the Summary (with the time taken)."""
        self.bar.close()
        self.manifest.tidy()
        self.summary.seconds = time.monotonic() - self.started
        return self.summary


@contextlib.contextmanager
def _worker_pool(workers: int):
    """A thread pool; on Ctrl-C the workers stop between chunks (their .part files are resumed next time)."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch")
    try:
        yield pool
    except KeyboardInterrupt:
        _STOP.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def run_jobs(jobs: list[Job], out_dir: str | Path, *, workers: int = WORKERS, retry: RetryPolicy | None = None,
             progress: bool = True, verify: bool = False, desc: str = "fetch",
             manifest: "Manifest | None" = None) -> Summary:
    """Download every job's image into out_dir on a pool of workers; returns the Summary.

    Jobs already whole in the manifest (or known duplicates) are skipped without touching the network.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    retry = retry or RetryPolicy()
    manifest = manifest or Manifest(out)
    runner = JobRunner(manifest, desc=desc, total=len(jobs), progress=progress)
    try:
        runner.run(runner.pending(jobs, verify=verify), lambda job: _run_job(job, manifest, retry), workers)
    finally:
        summary = runner.finish()
    return summary


def _run_job(job: Job, manifest: Manifest, retry: RetryPolicy) -> tuple[str, str]:
    """Download one job on a worker thread, check it and move it into place."""
    dest = manifest.root / job.rel
    tmp = _part_path(dest)
    try:
        if dest.exists() and job.rel not in manifest.entries:
            tmp = dest  # written by a run that stopped before recording it: adopt it, don't download again
        else:
            download_file(job.url, tmp, retry=retry)
        return _check_and_commit(tmp, job, manifest)
    except (GaveUp, Interrupted) as exc:
        return FAILED, str(exc)  # the .part stays: the next run resumes it with a Range request
    except FetchError as exc:
        if tmp != dest:
            tmp.unlink(missing_ok=True)  # refused bytes (404 page, not an image, wrong sha256): start afresh
        return REJECTED, str(exc)
    except OSError as exc:
        return FAILED, redact(f"{type(exc).__name__}: {exc}")


def _check_and_commit(tmp: Path, job: Job, manifest: Manifest,
                      screen: Callable[[Path, tuple[str, int, int], Job], str | None] | None = None) -> tuple[str, str]:
    """Verify a finished temporary file (image? expected sha256? wanted by screen?) and move it into place.

    screen(tmp, (format, width, height), job) may add manifest fields to job.meta and returns a reason to
    leave the image out, or None to keep it.
    """
    info = verify_image(tmp)
    sha = file_sha256(tmp)
    if job.sha256 and sha != job.sha256:
        raise FetchError(f"sha256 mismatch (expected {job.sha256}, got {sha})")
    reason = screen(tmp, info, job) if screen else None
    if reason:
        tmp.unlink(missing_ok=True)
        return LEFT_OUT, reason
    return manifest.commit(tmp, job, sha, info)


# -----------------------------------------------------------------------------
# source: Pixabay


class RateLimit:
    """Pixabay's request budget (100 per 60 s), learned from X-RateLimit-Remaining / X-RateLimit-Reset."""

    def __init__(self):
        self.remaining: int | None = None
        self.reset_at = 0.0
        self.lock = threading.Lock()

    def wait(self, sleep: Callable[[float], None], max_wait: float) -> None:
        """Sleep until the window resets when the last response said no requests are left."""
        with self.lock:
            pause = self.reset_at - time.monotonic() if self.remaining == 0 else 0.0
        if pause > 0:
            log.info("Pixabay rate limit reached; waiting %.1f s for the window to reset", min(pause, max_wait))
            sleep(min(pause, max_wait))

    def update(self, headers) -> None:
        """Remember the budget the server reported."""
        remaining, reset = headers.get("X-RateLimit-Remaining"), parse_retry_after(headers.get("X-RateLimit-Reset"))
        with self.lock:
            if remaining is not None and remaining.strip().isdigit():
                self.remaining = int(remaining)
            if reset is not None:
                self.reset_at = time.monotonic() + reset


_RATE_LIMITS: dict[str, RateLimit] = {}


def pixabay_key(key: str | None = None, key_file: str | Path | None = None) -> str:
    """The Pixabay API key: given, else read from key_file, else from $PIXABAY_API_KEY (never printed)."""
    if not key and key_file:
        try:
            key = Path(key_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise FetchError(f"cannot read the Pixabay key file {key_file}: {exc.strerror}") from None
        if not key:
            raise FetchError(f"the Pixabay key file {key_file} is empty")
    key = key or os.environ.get(PIXABAY_KEY_ENV, "").strip()
    if not key:
        raise FetchError(f"no Pixabay API key: set {PIXABAY_KEY_ENV} or pass --key-file "
                         "(get a free key at https://pixabay.com/api/docs/)")
    register_secret(key)
    return key


def search_pixabay(query: str, key: str, *, limit: int = PIXABAY_MAX_HITS, image_type: str = "photo",
                   category: str | None = None, min_width: int = 0, min_height: int = 0, order: str = "popular",
                   safesearch: bool = False, editors_choice: bool = False, base_url: str = PIXABAY_API,
                   cache_dir: str | Path | None = None, retry: RetryPolicy | None = None) -> list[dict]:
    """Hits of a Pixabay image search, at most min(limit, 500), in pages of up to 200.

    API responses are cached on disk for 24 hours (keyed by the parameters without the key); the rate
    limit headers are followed and a 429 waits for the window to reset.
    """
    if len(query) > 100:
        raise FetchError("Pixabay queries are limited to 100 characters")
    if category and category not in PIXABAY_CATEGORIES:
        raise FetchError(f"unknown Pixabay category {category!r}; one of {', '.join(PIXABAY_CATEGORIES)}")
    retry = retry or RetryPolicy()
    wanted = max(0, min(limit, PIXABAY_MAX_HITS))
    per_page = min(PIXABAY_PER_PAGE, max(3, wanted))
    params = {"q": query, "image_type": image_type, "min_width": min_width, "min_height": min_height,
              "order": order, "safesearch": str(safesearch).lower(), "editors_choice": str(editors_choice).lower(),
              "per_page": per_page}
    if category:
        params["category"] = category
    hits: list[dict] = []
    for page in range(1, math.ceil(PIXABAY_MAX_HITS / per_page) + 1):
        if len(hits) >= wanted:
            break
        data = _pixabay_request(base_url, {**params, "page": page}, key, retry, cache_dir)
        page_hits = data.get("hits") or []
        hits += page_hits
        available = min(int(data.get("totalHits") or 0), PIXABAY_MAX_HITS)
        if not page_hits or page * per_page >= available:
            break
    return hits[:wanted]


def _pixabay_request(base_url: str, params: dict, key: str, retry: RetryPolicy, cache_dir) -> dict:
    """One API page: from the 24 h cache if fresh, else from the API (rate-limited, retried) into the cache."""
    cache_file = None
    if cache_dir is not None:
        name = hashlib.sha256(json.dumps([base_url, params], sort_keys=True).encode()).hexdigest()[:32]
        cache_file = Path(cache_dir) / f"{name}.json"
        cached = _read_cache(cache_file)
        if cached is not None:
            log.debug("Pixabay page %s from the cache", params.get("page"))
            return cached
    limiter = _RATE_LIMITS.setdefault(base_url, RateLimit())
    session = _session()

    def request_page() -> dict:
        limiter.wait(retry.sleep, retry.max_wait)
        try:
            with session.get(base_url, params={**params, "key": key}, timeout=retry.timeout) as response:
                limiter.update(response.headers)
                _raise_for_status(response, retry, with_body=True)
                return response.json()
        except requests.JSONDecodeError:
            raise FetchError("Pixabay API answered with something that is not JSON") from None
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TransientError(_describe(exc)) from None

    try:
        data = _with_retries(request_page, retry)
    except FetchError as exc:
        raise FetchError(f"Pixabay API: {exc}") from None
    if not isinstance(data, dict):
        raise FetchError("Pixabay API: unexpected response (not a JSON object)")
    if cache_file is not None:
        resizer.write_json(cache_file, {"fetched_at": time.time(), "params": params, "response": data})
    return data


def _read_cache(path: Path) -> dict | None:
    """A cached API response younger than 24 hours, else None."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    age = time.time() - float(record.get("fetched_at", 0))
    return record.get("response") if 0 <= age < PIXABAY_CACHE_SECONDS else None


def pixabay_jobs(hits: list[dict], query: str, size: str = "large") -> list[Job]:
    """Jobs for Pixabay hits: pixabay/ID.EXT, with the attribution the licence asks for in the manifest."""
    field_name = PIXABAY_SIZES[size]
    jobs = []
    for hit in hits:
        url = hit.get(field_name) or hit.get("largeImageURL") or hit.get("webformatURL")
        if not url or "id" not in hit:
            continue
        suffix = PurePosixPath(urlsplit(url).path).suffix.lower()
        suffix = suffix if suffix in IMAGE_SUFFIXES else ".jpg"
        meta = {"source": "pixabay", "url": url, "id": hit["id"], "user": hit.get("user"),
                "user_id": hit.get("user_id"), "pageURL": hit.get("pageURL"), "tags": hit.get("tags"),
                "license": PIXABAY_LICENSE, "license_url": PIXABAY_LICENSE_URL, "query": query}
        jobs.append(Job(rel=f"pixabay/{hit['id']}{suffix}", key=f"pixabay:{hit['id']}", url=url, meta=meta))
    if hits and field_name not in hits[0]:
        log.warning("Pixabay hits have no %s (needs full API access); using largeImageURL", field_name)
    return jobs


def fetch_pixabay(query: str, out_dir: str | Path = OUT_DIR, *, key: str | None = None,
                  key_file: str | Path | None = None, limit: int | None = None, image_type: str = "photo",
                  category: str | None = None, min_width: int = 0, min_height: int = 0, order: str = "popular",
                  size: str = "large", safesearch: bool = False, editors_choice: bool = False,
                  base_url: str | None = None, cache_dir: str | Path | None = None, workers: int = WORKERS,
                  retry: RetryPolicy | None = None, progress: bool = True, verify: bool = False) -> Summary:
    """Search Pixabay and download the hits into out_dir/pixabay/ (up to 500 per query, the API's cap)."""
    started = time.monotonic()
    key = pixabay_key(key, key_file)
    out = Path(out_dir)
    hits = search_pixabay(query, key, limit=PIXABAY_MAX_HITS if limit is None else limit, image_type=image_type,
                          category=category, min_width=min_width, min_height=min_height, order=order,
                          safesearch=safesearch, editors_choice=editors_choice, base_url=base_url or PIXABAY_API,
                          cache_dir=out / PIXABAY_CACHE if cache_dir is None else cache_dir, retry=retry)
    log.info("Pixabay: %d hits for %r", len(hits), query)
    summary = run_jobs(pixabay_jobs(hits, query, size), out, workers=workers, retry=retry, progress=progress,
                       verify=verify, desc="pixabay")
    summary.seconds = time.monotonic() - started
    return summary


# -----------------------------------------------------------------------------
# source: a list of URLs


def read_url_list(path: str | Path, base_url: str | None = None) -> list[tuple[str, str | None]]:
    """(url, sha256 or None) per line of a URL list: blank lines and # comments skipped, relative URLs
    resolved against base_url, an optional second column giving the expected sha256."""
    items = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):  # only whole-line comments: URLs may hold a '#'
            continue
        url = urljoin(base_url, words[0]) if base_url else words[0]
        sha = words[1].lower() if len(words) > 1 and re.fullmatch(r"[0-9a-fA-F]{64}", words[1]) else None
        items.append((url, sha))
    return items


def url_jobs(items: Iterable[tuple[str, str | None]], manifest: Manifest | None = None) -> list[Job]:
    """Jobs for URLs: urls/NAME from the URL's last path segment, a short hash added when names collide."""
    items = [(url, sha) for url, sha in dict(items).items()]  # one job per URL
    names = [_url_name(url) for url, _ in items]
    counts = Counter(names)
    jobs = []
    for (url, sha), name in zip(items, names, strict=True):
        rel = f"urls/{name}"
        if manifest and url in manifest.by_url:
            rel = manifest.by_url[url]
        elif counts[name] > 1 or (manifest and rel in manifest.entries):
            stem, dot, ext = name.rpartition(".")
            tag = hashlib.sha256(url.encode()).hexdigest()[:8]
            rel = f"urls/{stem}-{tag}.{ext}" if dot and stem else f"urls/{name}-{tag}"
        jobs.append(Job(rel=rel, key=url, url=url, sha256=sha, meta={"source": "url", "url": url}))
    return jobs


def _url_name(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"
    return name[:120]


def fetch_urls(urls: str | Path | Iterable[str], out_dir: str | Path = OUT_DIR, *, base_url: str | None = None,
               limit: int | None = None, workers: int = WORKERS, retry: RetryPolicy | None = None,
               progress: bool = True, verify: bool = False) -> Summary:
    """Download image URLs (a URL-list file, one URL, or an iterable of URLs) into out_dir/urls/."""
    if isinstance(urls, str) and re.match(r"(?i)https?://", urls):
        urls = [urls]
    if isinstance(urls, str | Path):
        items = read_url_list(urls, base_url)
    else:
        items = [(urljoin(base_url, u) if base_url else u, None) for u in urls]
    items = items[:limit] if limit is not None else items
    manifest = Manifest(Path(out_dir))
    return run_jobs(url_jobs(items, manifest), out_dir, workers=workers, retry=retry, progress=progress,
                    verify=verify, desc="urls", manifest=manifest)


# -----------------------------------------------------------------------------
# sources: archives and the dataset registry


def fetch_archive(url: str, out_dir: str | Path = OUT_DIR, *, sha256: str | None = None, md5: str | None = None,
                  name: str | None = None, root: str = "", limit: int | None = None, keep_archive: bool = False,
                  retry: RetryPolicy | None = None, progress: bool = True, verify: bool = False,
                  extra_meta: dict | None = None, max_member_bytes: int = MAX_MEMBER_BYTES) -> Summary:
    """Download a zip/tar archive (streamed, resumable, checksum-verified) and extract its images safely.

    Images land in out_dir/NAME/ (NAME: the archive's stem); members that are links, special files,
    larger than max_member_bytes or escape the folder (`..`, absolute paths) are refused and reported;
    non-image members are left out. The archive is checked against sha256 (else md5) when given; a
    mismatch deletes it. Without a checksum its computed sha256 is logged as not verified. A completion
    record in out_dir/.downloads/ lets a re-run skip the download; the archive itself is deleted after a
    complete extraction unless keep_archive (or a limit) says otherwise.
    """
    started = time.monotonic()
    out = Path(out_dir)
    filename = _url_name(url)
    name = name or _archive_stem(filename)
    archive = out / DOWNLOADS / filename
    record_path = out / DOWNLOADS / f"{filename}.done.json"
    summary = _summary_from_record(record_path, Manifest(out), url, limit, verify)
    if summary is None:
        summary = Summary()
        meta = {"source": "archive", "url": url, "archive": filename, **(extra_meta or {})}
        try:
            if not archive.exists():
                _download_archive(url, archive, retry or RetryPolicy(), progress)
            digest = check_archive(archive, sha256=sha256, md5=md5)
            result = extract_images(archive, out, name, root=root, limit=limit, meta=meta, progress=progress,
                                    max_member_bytes=max_member_bytes)
        except FetchError as exc:
            summary.failed.append((redact(url), str(exc)))
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
            summary.failed.append((redact(url), f"cannot read archive {filename} ({type(exc).__name__}: {exc})"))
        else:
            summary.add(result.summary)
            if result.complete:
                verified = "+".join(name for name, value in (("sha256", sha256), ("md5", md5)) if value) or None
                resizer.write_json(record_path, {"url": url, "sha256": digest, "verified_by": verified,
                                                 "limit": limit, "files": result.files,
                                                 "rejected": result.rejected})
                if not keep_archive and limit is None:
                    archive.unlink(missing_ok=True)
    summary.seconds = time.monotonic() - started
    return summary


def _archive_stem(filename: str) -> str:
    for suffix in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip"):
        if filename.lower().endswith(suffix):
            return filename[: -len(suffix)] or "archive"
    return Path(filename).stem or "archive"


def _summary_from_record(record_path: Path, manifest: Manifest, url: str, limit, verify) -> Summary | None:
    """Skips (and the members rejected then) when an earlier run extracted this archive and its files are whole."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("url") != url or record.get("limit") not in (None, limit):
        return None
    files = record.get("files", [])
    if not all(manifest.is_whole(rel, verify=verify) for rel in files):
        return None
    return Summary(skipped=len(files), failed=[tuple(item) for item in record.get("rejected", [])])


def _download_archive(url: str, archive: Path, retry: RetryPolicy, progress: bool) -> None:
    """Download an archive to archive via archive.part (resumable), renamed once complete."""
    part = _part_path(archive)
    have = part.stat().st_size if part.exists() else 0
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, initial=have, desc=archive.name,
              disable=not progress, dynamic_ncols=True) as bar:
        download_file(url, part, retry=retry, progress=bar.update)
    os.replace(part, archive)


def file_digests(path: Path, algorithms: Iterable[str]) -> dict[str, str]:
    """Hex digests of a file's bytes for several algorithms, reading the file once."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def check_archive(path: Path, *, sha256: str | None = None, md5: str | None = None) -> str:
    """The archive's sha256, after checking it against the expected sha256 and/or md5.

    A mismatch deletes the file (corrupt, or changed upstream: the next run starts afresh) and raises
    FetchError. With nothing to compare with, the computed sha256 is logged as not verified.
    """
    digests = file_digests(path, ("sha256", "md5") if md5 else ("sha256",))
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected and digests[algorithm] != expected.lower():
            path.unlink(missing_ok=True)
            raise FetchError(f"{algorithm} mismatch for {path.name} (expected {expected}, got "
                             f"{digests[algorithm]}); the download was deleted")
    if not sha256 and not md5:
        log.warning("%s: sha256 %s (not verified: no published checksum to compare it with)",
                    path.name, digests["sha256"])
    elif not sha256:
        log.info("%s: md5 verified; sha256 %s", path.name, digests["sha256"])
    return digests["sha256"]


@dataclass
class Extraction:
    """What extract_images did: its summary, the files written or already there, the members rejected
    for good (unsafe, too large, not an image), and whether it ran to the end without a read or write error."""

    summary: Summary
    files: list[str]
    rejected: list[tuple[str, str]]
    complete: bool


class DiskFull(FetchError):
    """The disk holding RAW is nearly full: extraction stops rather than fill it."""


def safe_member_path(name: str) -> PurePosixPath:
    """A member name as a safe relative path, or FetchError for absolute paths and `..` escapes."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise FetchError(f"unsafe member (absolute path): {name!r}")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise FetchError(f"unsafe member (escapes the target folder): {name!r}")
    if not parts:
        raise FetchError(f"unsafe member (empty name): {name!r}")
    return PurePosixPath(*parts)


def extract_images(archive: Path, out_dir: Path, name: str, *, root: str = "", limit: int | None = None,
                   meta: dict | None = None, progress: bool = True,
                   max_member_bytes: int = MAX_MEMBER_BYTES) -> Extraction:
    """Extract the image members of a zip or tar archive under root into out_dir/name/, recording each.

    Refuses (and reports) symlinks, hard links, special files, absolute paths, `..` members and members
    larger than max_member_bytes; stops when the disk would be left with less than DISK_RESERVE_BYTES;
    skips members already whole in the manifest; each image is verified, hashed and de-duplicated like
    a download.
    """
    meta = meta or {}
    manifest = Manifest(out_dir)
    target = (out_dir / name).resolve()
    root_path = PurePosixPath(root.strip("/")) if root.strip("/") else None
    runner = JobRunner(manifest, desc=f"extract {name}", progress=progress)
    taken = 0
    try:
        for member, kind, size, opener in _archive_members(archive):
            try:
                rel_member = safe_member_path(member)
                if kind in ("symlink", "hardlink", "special"):
                    raise FetchError(f"unsafe member ({kind} refused): {member!r}")
            except FetchError as exc:
                runner.record(member, REJECTED, str(exc))
                continue
            if kind != "file" or not _is_wanted_member(rel_member, root_path):
                continue
            if limit is not None and taken >= limit:
                break
            taken += 1
            rel = f"{name}/{(rel_member.relative_to(root_path) if root_path else rel_member).as_posix()}"
            if not (out_dir / rel).resolve().is_relative_to(target):  # e.g. a symlinked folder in the target
                runner.record(member, REJECTED, f"unsafe member (resolves outside {name}/): {member!r}")
            elif manifest.is_whole(rel):
                runner.skip(rel)
            else:
                job = Job(rel=rel, key=f"{meta.get('url', archive.name)}#{member}", size=size,
                          meta={**meta, "member": member})
                try:
                    runner.record(member, *_extract_one(opener, job, manifest, max_member_bytes))
                except DiskFull as exc:
                    runner.record(member, FAILED, str(exc))
                    break
    finally:
        summary = runner.finish()
    if taken == 0:
        log.warning("%s: no image members%s", archive.name, f" under {root}" if root else "")
    return Extraction(summary, runner.files, runner.rejected, not runner.incomplete)


def _is_wanted_member(path: PurePosixPath, root: PurePosixPath | None) -> bool:
    """Image members under root, leaving out macOS resource forks (__MACOSX/, ._name)."""
    if path.name.startswith("._") or "__MACOSX" in path.parts:
        return False
    if root is not None and not path.is_relative_to(root):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def _extract_one(opener: Callable, job: Job, manifest: Manifest, max_bytes: int = MAX_MEMBER_BYTES,
                 screen: Callable[[Path, tuple[str, int, int], Job], str | None] | None = None) -> tuple[str, str]:
    """Extract one member through NAME.part: FETCHED/DUPLICATE, LEFT_OUT (screened out), REJECTED (bad or
    oversized bytes) or FAILED (I/O). Raises DiskFull when the disk would be left nearly full."""
    if job.size is not None and job.size > max_bytes:
        return REJECTED, f"member too large ({job.size} bytes, the cap is {max_bytes})"
    free = shutil.disk_usage(manifest.root).free
    if free - (job.size or 0) < DISK_RESERVE_BYTES:
        raise DiskFull(f"disk nearly full ({free / 1e9:.1f} GB free, {DISK_RESERVE_BYTES / 1e9:.1f} GB kept free)")
    tmp = _part_path(manifest.root / job.rel)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(tmp, "wb") as dst:
            _copy_capped(src, dst, max_bytes)
        return _check_and_commit(tmp, job, manifest, screen)
    except FetchError as exc:
        tmp.unlink(missing_ok=True)
        return REJECTED, str(exc)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        tmp.unlink(missing_ok=True)
        return FAILED, f"cannot extract ({type(exc).__name__}: {exc})"


def _copy_capped(src, dst, max_bytes: int) -> None:
    """Copy a stream, refusing it once it passes max_bytes (a member may be bigger than its header says)."""
    copied = 0
    while chunk := src.read(CHUNK_BYTES):
        copied += len(chunk)
        if copied > max_bytes:
            raise FetchError(f"member too large (more than {max_bytes} bytes)")
        dst.write(chunk)


def _archive_members(archive: Path) -> Iterable[tuple[str, str, int | None, Callable]]:
    """(name, kind, size, opener) per member of a zip or tar; kind: file, dir, symlink, hardlink or special."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                file_type = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0  # Unix-made
                if info.is_dir() or file_type == stat.S_IFDIR:
                    kind = "dir"
                elif file_type == stat.S_IFLNK:
                    kind = "symlink"
                elif file_type in (0, stat.S_IFREG):  # many writers leave the type bits out
                    kind = "file"
                else:
                    kind = "special"
                yield info.filename, kind, info.file_size, (lambda info=info: zf.open(info))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            yield from _tar_members(tf)
    else:
        raise FetchError(f"{archive.name} is neither a zip nor a tar archive")


def _tar_members(tf: tarfile.TarFile) -> Iterable[tuple[str, str, int | None, Callable]]:
    """(name, kind, size, opener) per member of an open tar, in order (a compressed tar is read once)."""
    for member in tf:
        kind = ("file" if member.isfile() else "dir" if member.isdir() else
                "symlink" if member.issym() else "hardlink" if member.islnk() else "special")
        yield member.name, kind, member.size, (lambda member=member: tf.extractfile(member))


def fetch_dataset(name: str, out_dir: str | Path = OUT_DIR, *, base_url: str | None = None,
                  limit: int | None = None, keep_archive: bool = False, retry: RetryPolicy | None = None,
                  progress: bool = True, verify: bool = False) -> Summary:
    """Fetch a dataset from the registry (DATASETS) into out_dir/NAME/; base_url points at a mirror."""
    key = name.lower()
    if key not in DATASETS:
        raise FetchError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    entry = DATASETS[key]
    url = entry["url"]
    if base_url:  # a mirror holding the same file name
        url = urljoin(base_url.rstrip("/") + "/", PurePosixPath(urlsplit(url).path).name)
    meta = {"dataset": key, "homepage": entry.get("homepage"), "license": entry.get("license")}
    return fetch_archive(url, out_dir, sha256=entry.get("sha256"), md5=entry.get("md5"), name=key,
                         root=entry.get("root", ""), limit=limit, keep_archive=keep_archive, retry=retry,
                         progress=progress, verify=verify, extra_meta=meta)


def dataset_table() -> str:
    """The registry as a text table: name, images, archive size, checksum, licence / citation, URL."""
    rows = [("NAME", "IMAGES", "SIZE", "CHECKSUM", "LICENCE / CITATION", "URL")]
    for name, entry in DATASETS.items():
        check = "+".join(name for name in ("sha256", "md5") if entry.get(name)) or "none"
        rows.append((name, str(entry["images"]), _human_bytes(entry.get("bytes")), check,
                     entry.get("license", "?"), entry["url"]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.rjust(width) if i in (1, 2) else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=False))]
        lines.append("  ".join([*cells, row[-1]]))
    return "\n".join(lines)


def _human_bytes(size: int | None) -> str:
    if not size:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# -----------------------------------------------------------------------------
# source: Debian packages

DEBIAN_RESERVED = {"ukui-wallpapers": "reserved for evaluation"}  # refused without allow_eval
PHOTO_MIN_SIDE = 512  # --photos-only leaves out images with a shorter side than this
DRAWN_MAX_COLOUR_SHARE = 0.10  # unique colours per pixel of a 128 px thumbnail below this: flat, drawn
DRAWN_MAX_DETAIL = 1.5  # mean |Laplacian| (grey levels) of that thumbnail below this: smooth, rendered
VECTOR_SUFFIXES = (".svg", ".svgz")
APT_TIMEOUT = 600  # seconds for one `apt-get download`
_PACKAGE_NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?(?:=[A-Za-z0-9.+~:-]+)?")
_AR_MAGIC = b"!<arch>\n"


def fetch_debian(packages: Iterable[str] = (), out_dir: str | Path = OUT_DIR, *, debs: Iterable[str | Path] = (),
                 photos_only: bool = False, include: Iterable[str] = (), allow_eval: bool = False,
                 apt_get: Iterable[str] = ("apt-get",), min_side: int = PHOTO_MIN_SIDE, limit: int | None = None,
                 progress: bool = True, verify: bool = False) -> Summary:
    """Images from Debian packages into out_dir/debian/PACKAGE/, each with its package, version and licence.

    Packages are downloaded with `apt-get download` (apt_get: the command, e.g. for a test double) into a
    temporary folder; debs are .deb files already on disk. Only image members of data.tar are extracted
    (optionally only those matching an include glob); each gets the License: of the DEP-5 copyright
    paragraph that covers it (else the header's) and a "kind": photo or drawn. photos_only leaves out
    drawn images and images with a side shorter than min_side; vector images are always left out. A
    package without images, or whose licence cannot be stated, is reported and skipped before anything
    of it is written. Packages reserved for evaluation are refused unless allow_eval.
    """
    started = time.monotonic()
    packages, include = list(packages), list(include)
    for package in packages:
        _check_package_name(package)
        _check_allowed(package.split(":")[0].split("=")[0], allow_eval)
    out = Path(out_dir)
    (out / DOWNLOADS).mkdir(parents=True, exist_ok=True)
    summary = Summary()
    with tempfile.TemporaryDirectory(prefix="debian-", dir=out / DOWNLOADS) as tmp:
        deb_files = [Path(deb) for deb in debs]
        for package in packages:
            try:
                deb_files.append(apt_download(package, Path(tmp), apt_get))
            except FetchError as exc:
                summary.failed.append((package, str(exc)))
        for deb in deb_files:
            try:
                summary.add(extract_deb_images(deb, out, photos_only=photos_only, include=include,
                                               allow_eval=allow_eval, min_side=min_side, limit=limit,
                                               progress=progress, verify=verify, work_dir=Path(tmp)))
            except FetchError as exc:
                summary.failed.append((deb.name, str(exc)))  # reported; nothing of it was written
    summary.seconds = time.monotonic() - started
    return summary


def _check_package_name(package: str) -> None:
    """Refuse anything but a Debian package name (optionally :arch and =version): no options for apt-get."""
    if not _PACKAGE_NAME.fullmatch(package):
        raise FetchError(f"{package!r} is not a Debian package name")


def _check_allowed(package: str, allow_eval: bool) -> None:
    """Refuse a package reserved for evaluation unless allow_eval."""
    if package in DEBIAN_RESERVED and not allow_eval:
        raise FetchError(f"{package} is {DEBIAN_RESERVED[package]}: it is not fetched for training "
                         "(pass --allow-eval to fetch it for evaluation)")


def apt_download(package: str, folder: Path, apt_get: Iterable[str] = ("apt-get",)) -> Path:
    """Download PACKAGE's .deb with `apt-get download` into folder; its path, or FetchError."""
    _check_package_name(package)
    command = [*apt_get, "download", package]
    try:
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=APT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FetchError(f"apt-get download {package}: {exc}") from None
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines() or [f"exit status {result.returncode}"]
        raise FetchError(f"apt-get download {package} failed: {lines[-1]}")
    name = package.split(":")[0].split("=")[0]
    found = sorted(folder.glob(f"{name}_*.deb"))
    if not found:
        raise FetchError(f"apt-get download {package} left no {name}_*.deb")
    return found[-1]


def read_ar(path: Path) -> dict[str, tuple[int, int]]:
    """The members of an ar archive (a .deb): name -> (offset of its data, size)."""
    members = {}
    with open(path, "rb") as f:
        if f.read(len(_AR_MAGIC)) != _AR_MAGIC:
            raise FetchError(f"{path.name}: not a .deb (no ar archive header)")
        while header := f.read(60):
            if len(header) < 60 or header[58:60] != b"`\n":
                raise FetchError(f"{path.name}: damaged ar member header")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise FetchError(f"{path.name}: damaged ar member size") from None
            members[name] = (f.tell(), size)
            f.seek(size + size % 2, os.SEEK_CUR)  # members are aligned to even offsets
    if members.get("debian-binary") is None:
        raise FetchError(f"{path.name}: not a .deb (no debian-binary member)")
    return members


def _ar_member_to_file(deb: Path, members: dict[str, tuple[int, int]], name: str, dest: Path) -> Path:
    """Copy one member of an ar archive to dest."""
    offset, size = members[name]
    with open(deb, "rb") as src, open(dest, "wb") as dst:
        src.seek(offset)
        remaining = size
        while remaining and (chunk := src.read(min(CHUNK_BYTES, remaining))):
            dst.write(chunk)
            remaining -= len(chunk)
    if remaining:
        raise FetchError(f"{deb.name}: {name} is cut short")
    return dest


def _deb_tar(deb: Path, members: dict[str, tuple[int, int]], stem: str, work_dir: Path) -> Path:
    """control.tar.* or data.tar.* of a .deb as a file tarfile can read (zstd through dpkg-deb)."""
    name = next((n for n in members if n == stem or n.startswith(stem + ".")), None)
    if name is None:
        raise FetchError(f"{deb.name}: no {stem} member")
    dest = Path(tempfile.mkstemp(prefix=f"{stem}-", dir=work_dir)[1])
    if not name.endswith(".zst"):
        return _ar_member_to_file(deb, members, name, dest)
    if stem != "data.tar" or not shutil.which("dpkg-deb"):
        dest.unlink(missing_ok=True)
        raise FetchError(f"{deb.name}: {name} is zstd-compressed, which needs dpkg-deb")
    with open(dest, "wb") as f:
        result = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=f, stderr=subprocess.PIPE)
    if result.returncode != 0:
        dest.unlink(missing_ok=True)
        raise FetchError(f"{deb.name}: dpkg-deb --fsys-tarfile failed: {result.stderr.decode().strip()[:200]}")
    return dest


def _rfc822_paragraphs(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian control-style file: lower-cased field -> value (continuation lines joined)."""
    paragraphs, current, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t":
            if key:
                current[key] += "\n" + ("" if line.strip() == "." else line.strip())
        else:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                current[key] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


@dataclass
class Dep5:
    """A machine-readable (DEP-5) debian/copyright: the header and the Files paragraphs, in order."""

    header: dict[str, str]
    files: list[tuple[list[str], dict[str, str]]]

    @classmethod
    def parse(cls, text: str) -> "Dep5":
        """Parse a copyright file; FetchError when it is not in the machine-readable format."""
        paragraphs = _rfc822_paragraphs(text)
        if not paragraphs or "format" not in paragraphs[0] or "files" in paragraphs[0]:
            raise FetchError("the copyright file is not machine-readable (no DEP-5 Format: header)")
        files = [(p["files"].split(), p) for p in paragraphs[1:] if "files" in p]
        return cls(paragraphs[0], files)

    def licence_for(self, installed: str) -> tuple[str, str | None, str] | None:
        """(licence, copyright, "files" or "header") for an installed file, or None when nothing says.

        Files: patterns are relative to the source tree, so they are matched against every tail of the
        installed path (usr/share/backgrounds/x.jpg, share/backgrounds/x.jpg, backgrounds/x.jpg, x.jpg);
        as in DEP-5, the last paragraph that matches wins.
        """
        parts = PurePosixPath(installed).parts
        tails = ["/".join(parts[i:]) for i in range(len(parts))]
        for patterns, paragraph in reversed(self.files):
            if any(_dep5_match(pattern, tail) for pattern in patterns for tail in tails):
                licence = _short_licence(paragraph.get("license", ""))
                if licence:
                    return licence, paragraph.get("copyright"), "files"
                break
        licence = _short_licence(self.header.get("license", ""))
        return (licence, self.header.get("copyright"), "header") if licence else None


def _dep5_match(pattern: str, path: str) -> bool:
    """DEP-5 glob: * matches any characters (also /), ? one; nothing else is special."""
    regex = re.escape(pattern.removeprefix("./"))
    return re.fullmatch(regex.replace(r"\*", ".*").replace(r"\?", "."), path) is not None


def _short_licence(value: str) -> str:
    """The short licence name: the first line of a License: field."""
    return value.split("\n", 1)[0].strip()


def image_kind(path: Path) -> str:
    """"drawn" for flat or smooth images (few colours for its kind, or little fine detail, in a 128 px
    thumbnail: vector art, gradients, logos), else "photo". A heuristic: it reads the pixels only."""
    with Image.open(path) as im:
        im.draft("RGB", (256, 256))  # JPEGs decode at a fraction of their size
        if im.mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # as Pillow asks: straight to RGB it warns that the transparency is lost
        rgb = im.convert("RGB")
    size = (min(128, rgb.width), min(128, rgb.height))
    # colours of a nearest-neighbour sample: averaging would invent in-between shades at every edge
    sample = np.asarray(rgb.resize(size, Image.Resampling.NEAREST), dtype=np.int32)
    colours = np.unique((sample[..., 0] << 16) | (sample[..., 1] << 8) | sample[..., 2]).size
    is_grey = bool((sample[..., 0] == sample[..., 1]).all() and (sample[..., 1] == sample[..., 2]).all())
    possible = min(size[0] * size[1], 256 if is_grey else size[0] * size[1])  # grey: at most 256 levels
    rgb.thumbnail((128, 128))
    grey = np.asarray(rgb, dtype=np.float64).mean(axis=2)
    laplacian = 4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]
    detail = float(np.abs(laplacian).mean()) if laplacian.size else 0.0
    flat = colours / possible < DRAWN_MAX_COLOUR_SHARE or detail < DRAWN_MAX_DETAIL
    return "drawn" if flat else "photo"


def extract_deb_images(deb: str | Path, out_dir: str | Path, *, photos_only: bool = False,
                       include: Iterable[str] = (), allow_eval: bool = False, min_side: int = PHOTO_MIN_SIDE,
                       limit: int | None = None, progress: bool = True, verify: bool = False,
                       work_dir: Path | None = None) -> Summary:
    """Extract the images of one .deb into out_dir/debian/PACKAGE/ (see fetch_debian); FetchError when the
    package is refused (reserved, no images, no statable licence) before anything is written."""
    deb, out = Path(deb), Path(out_dir)
    members = read_ar(deb)
    with tempfile.TemporaryDirectory(prefix="deb-", dir=work_dir) as tmp:
        with tarfile.open(_deb_tar(deb, members, "control.tar", Path(tmp)), "r:*") as tf:
            control = _deb_control(tf, deb)
        package, version = control.get("package", ""), control.get("version", "")
        if not package:
            raise FetchError(f"{deb.name}: its control file names no Package")
        _check_allowed(package, allow_eval)
        data_tar = _deb_tar(deb, members, "data.tar", Path(tmp))
        with tarfile.open(data_tar, "r:*") as tf:
            copyright_text, wanted = _scan_data_tar(tf, package, list(include))
        if copyright_text is None:
            raise FetchError(f"licence cannot be stated (no usr/share/doc/{package}/copyright file)")
        try:
            licences = Dep5.parse(copyright_text)
        except FetchError as exc:
            raise FetchError(f"licence cannot be stated ({exc})") from None
        if not any(not n.lower().endswith(VECTOR_SUFFIXES) for n in wanted):
            raise FetchError("no raster images" + (" matching --include" if include else "") + f" in {package}")
        base = {"source": "debian", "package": package, "version": version, "deb": deb.name}
        if package in DEBIAN_RESERVED:
            base["reserved"] = DEBIAN_RESERVED[package]
        with tarfile.open(data_tar, "r:*") as tf:
            return _extract_deb_members(tf, wanted, out, package, base, licences, photos_only=photos_only,
                                        min_side=min_side, limit=limit, progress=progress, verify=verify)


def _deb_control(tf: tarfile.TarFile, deb: Path) -> dict[str, str]:
    """The fields of control.tar's control file (package, version, ...)."""
    for member in tf:
        if member.isfile() and member.name.removeprefix("./") == "control":
            text = tf.extractfile(member).read().decode("utf-8", "replace")
            return (_rfc822_paragraphs(text) or [{}])[0]
    raise FetchError(f"{deb.name}: no control file in control.tar")


def _scan_data_tar(tf: tarfile.TarFile, package: str, include: list[str]) -> tuple[str | None, set[str]]:
    """The package's copyright text (None if absent or a link) and the names of its image members."""
    copyright_path = f"usr/share/doc/{package}/copyright"
    copyright_text, wanted = None, set()
    for member in tf:
        path = member.name.removeprefix("./")
        if path == copyright_path and member.isfile():
            copyright_text = tf.extractfile(member).read().decode("utf-8", "replace")
        elif (member.isfile() and path.lower().endswith(IMAGE_SUFFIXES + VECTOR_SUFFIXES)
              and (not include or any(fnmatch.fnmatchcase(path, glob.lstrip("/")) for glob in include))):
            wanted.add(member.name)
    return copyright_text, wanted


def _extract_deb_members(tf: tarfile.TarFile, wanted: set[str], out: Path, package: str, base: dict,
                         licences: Dep5, *, photos_only: bool, min_side: int, limit: int | None, progress: bool,
                         verify: bool) -> Summary:
    """Extract the wanted image members of an open data.tar through the job runner."""
    manifest = Manifest(out)
    runner = JobRunner(manifest, desc=f"debian {package}", total=len(wanted), progress=progress)

    def screen(tmp: Path, info: tuple[str, int, int], job: Job) -> str | None:
        kind = job.meta["kind"] = image_kind(tmp)
        if photos_only and kind != "photo":
            return "drawn (few colours or little fine detail)"
        if photos_only and min(info[1], info[2]) < min_side:
            return f"small ({info[1]}x{info[2]}; photos need a {min_side} px short side)"
        return None

    taken = 0
    try:
        for name, _, size, opener in _tar_members(tf):
            if name not in wanted:
                continue
            if limit is not None and taken >= limit:
                break
            taken += 1
            try:
                rel_member = safe_member_path(name)
            except FetchError as exc:
                runner.record(name, REJECTED, str(exc))
                continue
            if name.lower().endswith(VECTOR_SUFFIXES):
                runner.record(name, LEFT_OUT, "vector image")
                continue
            rel = f"debian/{package}/{rel_member.as_posix()}"
            licence = licences.licence_for(rel_member.as_posix())
            if licence is None:
                runner.record(name, REJECTED, "licence cannot be stated (no copyright paragraph covers it)")
            elif manifest.is_whole(rel, verify=verify):
                runner.skip(rel)
            else:
                meta = {**base, "license": licence[0], "license_from": licence[2], "attribution": licence[1],
                        "member": rel_member.as_posix()}
                job = Job(rel=rel, key=f"debian:{package}={base['version']}:{name}", size=size, meta=meta)
                try:
                    runner.record(name, *_extract_one(opener, job, manifest, MAX_MEMBER_BYTES, screen))
                except DiskFull as exc:
                    runner.record(name, FAILED, str(exc))
                    break
    finally:
        summary = runner.finish()
    return summary


# -----------------------------------------------------------------------------
# source: a local folder


def local_jobs(src_dir: Path, out_dir: Path, name: str, limit: int | None = None) -> list[Job]:
    """Jobs for the image files under src_dir (recursively; hidden folders and out_dir itself left out)."""
    out_resolved = out_dir.resolve()
    jobs: list[Job] = []
    for folder, dirs, files in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")
                         and Path(folder, d).resolve() != out_resolved)
        for filename in sorted(files):
            if not filename.lower().endswith(IMAGE_SUFFIXES) or filename.startswith("._"):
                continue
            path = Path(folder, filename)
            try:
                size = path.stat().st_size
            except OSError:
                continue  # a dangling symlink
            rel_src = path.relative_to(src_dir).as_posix()
            jobs.append(Job(rel=f"local/{name}/{rel_src}", key=f"local:{path.resolve()}", src=path, size=size,
                            meta={"source": "local", "origin": str(path)}))
            if limit is not None and len(jobs) >= limit:
                return jobs
    return jobs


def fetch_local(src_dir: str | Path, out_dir: str | Path = OUT_DIR, *, name: str | None = None,
                limit: int | None = None, workers: int = WORKERS, progress: bool = True,
                verify: bool = False) -> Summary:
    """Copy the images under src_dir (recursively) into out_dir/local/NAME/, de-duplicated by sha256.

    Files are checked and hashed on worker threads, de-duplicated in folder order (so the same tree
    always keeps the same copy), then copied kernel-side. Files already copied and whole are skipped
    without being read.
    """
    src, out = Path(src_dir).expanduser(), Path(out_dir)
    if not src.is_dir():
        raise FetchError(f"{src}: not a folder")
    name = name or src.resolve().name or "root"
    jobs = local_jobs(src, out, name, limit)
    if not jobs:
        log.warning("%s: no image files (%s)", src, " ".join(IMAGE_SUFFIXES))
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    runner = JobRunner(manifest, desc=f"local {name}", total=len(jobs), progress=progress)
    try:
        todo = runner.pending(jobs, verify=verify)
        copies, claimed, infos = [], {}, {}
        for job, result in runner.map(_check_local, todo, workers):  # in folder order: the first copy is kept
            if isinstance(result[1], str):
                runner.record(job.label, *result)
                continue
            sha, info = result
            other = claimed.get(sha) or manifest.holder(sha, job.rel)
            if other:
                runner.record(job.label, *manifest.note_duplicate(job, sha, job.size, other))
            else:
                claimed[sha] = job.rel
                job.sha256, infos[job.key] = sha, info
                copies.append(job)
        runner.run(copies, lambda job: _copy_local(job, infos[job.key], manifest), workers)
    finally:
        summary = runner.finish()
    return summary


def _check_local(job: Job) -> tuple[str, tuple[str, int, int]] | tuple[str, str]:
    """(sha256, image info) of a local file, or (REJECTED / FAILED, the reason it is refused)."""
    try:
        info = verify_image(job.src)
        return file_sha256(job.src), info
    except FetchError as exc:
        return REJECTED, str(exc)
    except OSError as exc:
        return FAILED, f"{type(exc).__name__}: {exc}"


def _copy_local(job: Job, info: tuple[str, int, int], manifest: Manifest) -> tuple[str, str]:
    """Copy a checked local file (its sha256 in job.sha256) in through NAME.part and record it."""
    tmp = _part_path(manifest.root / job.rel)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.src, tmp)
        return manifest.commit(tmp, job, job.sha256, info)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return FAILED, f"{type(exc).__name__}: {exc}"


# -----------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one sub-command per source, common options after it."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path(OUT_DIR), help=f"RAW folder (default {OUT_DIR})")
    common.add_argument("--limit", type=int, help="at most this many images")
    common.add_argument("--workers", type=int, default=WORKERS, help=f"concurrent downloads (default {WORKERS})")
    common.add_argument("--base-url", help="API / mirror base URL (e.g. a local test server)")
    common.add_argument("--retries", type=int, default=RETRIES, help=f"retries per request (default {RETRIES})")
    common.add_argument("--timeout", type=float, default=TIMEOUT[1], help="read timeout in seconds")
    common.add_argument("--verify", action="store_true", help="re-hash existing files before skipping them")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("-v", "--verbose", action="store_true", help="log every retry and failure")

    parser = argparse.ArgumentParser(description=__doc__,
                                     epilog="Re-running a command skips what is already there and whole.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")

    px = sub.add_parser("pixabay", parents=[common], help="search the Pixabay API (key in $PIXABAY_API_KEY)")
    px.add_argument("query", help="search words (up to 100 characters)")
    px.add_argument("--key-file", type=Path, help=f"file holding the API key (else ${PIXABAY_KEY_ENV})")
    px.add_argument("--image-type", default="photo", choices=("photo", "illustration", "vector", "all"))
    px.add_argument("--category", choices=PIXABAY_CATEGORIES)
    px.add_argument("--min-width", type=int, default=0, help="minimum image width in pixels")
    px.add_argument("--min-height", type=int, default=0, help="minimum image height in pixels")
    px.add_argument("--order", default="popular", choices=("popular", "latest"))
    px.add_argument("--size", default="large", choices=tuple(PIXABAY_SIZES),
                    help="which rendition: web 640 px, large 1280 px, fullhd/original need full API access")
    px.add_argument("--safesearch", action="store_true")
    px.add_argument("--editors-choice", action="store_true")
    px.add_argument("--cache-dir", type=Path, help=f"API response cache (default RAW/{PIXABAY_CACHE})")

    ur = sub.add_parser("urls", parents=[common], help="download the image URLs listed in a file")
    ur.add_argument("file", type=Path, help="one URL a line (optional second column: sha256); # comments")

    ar = sub.add_parser("archive", parents=[common], help="download a zip/tar and extract its images")
    ar.add_argument("url")
    ar.add_argument("--sha256", help="expected sha256 of the archive")
    ar.add_argument("--md5", help="expected md5 of the archive (where that is all the source publishes)")
    ar.add_argument("--name", help="folder under RAW (default: the archive's stem)")
    ar.add_argument("--root", default="", help="keep only members under this folder of the archive")
    ar.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")

    ds = sub.add_parser("dataset", parents=[common], help="a dataset from the registry (--list: the registry)")
    ds.add_argument("name", nargs="?", help=", ".join(DATASETS))
    ds.add_argument("--list", action="store_true", help="print the registry: name, size, licence, URL")
    ds.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")

    db = sub.add_parser("debian", parents=[common], help="images of Debian packages (apt-get download), with "
                        "package, version and licence in the manifest")
    db.add_argument("packages", nargs="*", metavar="PACKAGE", help="package names for apt-get download")
    db.add_argument("--deb", type=Path, action="append", default=[], metavar="FILE",
                    help="a .deb file already on disk (repeatable; no apt, no network)")
    db.add_argument("--photos-only", action="store_true",
                    help=f"leave out drawn/rendered images and images under {PHOTO_MIN_SIDE} px on the short side")
    db.add_argument("--include", action="append", default=[], metavar="GLOB",
                    help="only members matching this glob, e.g. 'usr/share/backgrounds/*' (repeatable)")
    db.add_argument("--min-side", type=int, default=PHOTO_MIN_SIDE, help="short side a photo needs (--photos-only)")
    db.add_argument("--allow-eval", action="store_true",
                    help=f"allow packages reserved for evaluation ({', '.join(DEBIAN_RESERVED)})")
    db.add_argument("--apt-get", default="apt-get", help="the apt-get command to run (default apt-get)")

    lo = sub.add_parser("local", parents=[common], help="copy the images of a folder, recursively")
    lo.add_argument("dir", type=Path)
    lo.add_argument("--name", help="folder under RAW/local (default: the folder's name)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; exit status 0 when nothing failed, 1 when something did, 2 for usage errors."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not args.verbose:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
    if args.workers < 1 or (args.limit is not None and args.limit < 0):
        print("error: --workers must be >= 1 and --limit >= 0", file=sys.stderr)
        return 2
    retry = RetryPolicy(retries=args.retries, timeout=(TIMEOUT[0], args.timeout))
    common = dict(progress=not args.quiet, verify=args.verify, retry=retry)
    try:
        summary = _run_source(args, common)
    except FetchError as exc:
        log.error("error: %s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; run the same command again to continue")
        return 130
    if summary is None:
        return 0
    for item, reason in summary.failed[:20]:
        log.warning("failed: %s: %s", item, reason)
    if len(summary.failed) > 20:
        log.warning("... and %d more failures", len(summary.failed) - 20)
    print(summary.line())
    return 0 if summary.ok else 1


def _run_source(args, common: dict) -> Summary | None:
    if args.source == "pixabay":
        return fetch_pixabay(args.query, args.out, key_file=args.key_file, limit=args.limit,
                             image_type=args.image_type, category=args.category, min_width=args.min_width,
                             min_height=args.min_height, order=args.order, size=args.size,
                             safesearch=args.safesearch, editors_choice=args.editors_choice,
                             base_url=args.base_url, cache_dir=args.cache_dir, workers=args.workers, **common)
    if args.source == "urls":
        if not args.file.is_file():
            raise FetchError(f"{args.file}: no such file")
        return fetch_urls(args.file, args.out, base_url=args.base_url, limit=args.limit, workers=args.workers,
                          **common)
    if args.source == "archive":
        url = urljoin(args.base_url, args.url) if args.base_url else args.url
        return fetch_archive(url, args.out, sha256=args.sha256, md5=args.md5, name=args.name, root=args.root,
                             limit=args.limit, keep_archive=args.keep_archive, **common)
    if args.source == "dataset":
        if args.list or not args.name:
            print(dataset_table())
            return None
        return fetch_dataset(args.name, args.out, base_url=args.base_url, limit=args.limit,
                             keep_archive=args.keep_archive, **common)
    if args.source == "debian":
        if not args.packages and not args.deb:
            raise FetchError("debian: name at least one PACKAGE or --deb FILE")
        return fetch_debian(args.packages, args.out, debs=args.deb, photos_only=args.photos_only,
                            include=args.include, allow_eval=args.allow_eval, apt_get=shlex.split(args.apt_get),
                            min_side=args.min_side, limit=args.limit, progress=common["progress"],
                            verify=common["verify"])
    common.pop("retry")
    return fetch_local(args.dir, args.out, name=args.name, limit=args.limit, workers=args.workers, **common)


if __name__ == "__main__":
    sys.exit(main())
