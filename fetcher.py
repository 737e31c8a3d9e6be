"""Fetch lots of images into a RAW folder: Pixabay, URL lists, archives, a dataset registry, local folders.

    python fetcher.py pixabay "mountain lake" --limit 300 --out data/raw      # key in PIXABAY_API_KEY
    python fetcher.py urls urls.txt --out data/raw
    python fetcher.py archive https://example.org/photos.tar.gz --sha256 HEX --out data/raw
    python fetcher.py dataset div2k-valid --out data/raw                      # `dataset` alone lists them
    python fetcher.py local /usr/share/backgrounds --out data/raw

RAW/ receives image files and RAW/manifest.jsonl, one JSON object a line (path, sha256, bytes, source, url,
attribution), as ../shared/DESIGN.md describes; create_dataset.py reads it. Downloads run on concurrent
workers with retries (exponential backoff with jitter, Retry-After honoured), resume partial files
(NAME.part) with HTTP Range requests, are checked to really be images, de-duplicated by sha256 and renamed
into place atomically. Re-running a fetch skips what is already there and whole, so an interrupted fetch
continues where it stopped. Every function here is usable from a notebook and returns a Summary.
"""

import argparse
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import stat
import sys
import tarfile
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

# Datasets named in the proposal. `root`: only image members under it are kept, with the prefix removed.
# sha256 and bytes: from TensorFlow Datasets' url_checksums (div2k.txt, dtd.txt); None where not known for sure.
DATASETS = {
    "div2k-train": dict(url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_train_HR.zip", root="DIV2K_train_HR/",
                        sha256="9d0b9c463f6e35b6c62cc6a930ee2224f670b34c1df841a57670f9acf0f6c335",
                        bytes=3530603713, images=800, homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
                        about="DIV2K training set, 2K-resolution HR PNGs (academic research use)"),
    "div2k-valid": dict(url="https://data.vision.ee.ethz.ch/cvl/DIV2K/DIV2K_valid_HR.zip", root="DIV2K_valid_HR/",
                        sha256="20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc",
                        bytes=448993893, images=100, homepage="https://data.vision.ee.ethz.ch/cvl/DIV2K/",
                        about="DIV2K validation set, 2K-resolution HR PNGs (academic research use)"),
    "flickr2k": dict(url="https://cv.snu.ac.kr/research/EDSR/Flickr2K.tar", root="Flickr2K/Flickr2K_HR/",
                     sha256=None, bytes=None, images=2650, homepage="https://github.com/sanghyun-son/EDSR-PyTorch",
                     about="Flickr2K HR PNGs collected for EDSR (the LR folders are left out)"),
    "bsds500": dict(url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/BSR/BSR_bsds500.tgz",
                    root="BSR/BSDS500/data/images/", sha256=None, bytes=None, images=500,
                    homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
                    about="Berkeley segmentation dataset, 481x321 JPEGs (train/val/test folders)"),
    "dtd": dict(url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz", root="dtd/images/",
                sha256="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205", bytes=625239812,
                images=5640, homepage="https://www.robots.ox.ac.uk/~vgg/data/dtd/",
                about="Describable Textures Dataset, 47 texture categories (research use)"),
}
# -----------------------------------------------------------------------------

log = logging.getLogger("fetcher")
_STOP = threading.Event()  # set on Ctrl-C so workers stop between chunks and leave their .part files
_SECRETS: set[str] = set()
_thread = threading.local()


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
        self.failed += other.failed
        self.bytes += other.bytes
        return self

    def line(self) -> str:
        """One line for the end of a run: fetched, skipped, duplicates, failed with reasons, time."""
        text = f"fetched {self.fetched} ({self.bytes / 1e6:.1f} MB), skipped {self.skipped}"
        text += f", duplicates {self.duplicates}, failed {len(self.failed)}"
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

        Returns ("fetched", rel) or ("duplicate", rel of the file that holds the same bytes).
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
            return "fetched", rel

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
        """Record that a job's bytes are already held by `other`, so re-runs skip it; ("duplicate", other)."""
        record = {"key": job.key, "sha256": sha256, "bytes": size, "duplicate_of": other}
        with self.lock:
            _append_jsonl(self.root / DUPLICATES, record)
            self.duplicates[job.key] = record
        return "duplicate", other


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
# running jobs on workers


def run_jobs(jobs: list[Job], out_dir: str | Path, *, workers: int = WORKERS, retry: RetryPolicy | None = None,
             progress: bool = True, verify: bool = False, desc: str = "fetch",
             manifest: "Manifest | None" = None) -> Summary:
    """Bring every job's image into out_dir on a pool of workers; returns the Summary.

    Jobs already whole in the manifest (or known duplicates) are skipped without touching the network.
    """
    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    retry = retry or RetryPolicy()
    manifest = manifest or Manifest(out)
    summary = Summary()
    todo = [job for job in jobs if not manifest.is_done(job, verify=verify)]
    summary.skipped = len(jobs) - len(todo)
    _STOP.clear()
    bar = tqdm(total=len(jobs), initial=summary.skipped, unit="img", desc=desc, disable=not progress,
               dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch")
    try:
        futures = {pool.submit(_run_job, job, manifest, retry): job for job in todo}
        for future in as_completed(futures):
            _record(summary, futures[future], future.result(), manifest)
            bar.update()
    except KeyboardInterrupt:
        _STOP.set()  # workers stop between chunks; their .part files are resumed next time
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        bar.close()
        manifest.tidy()
    summary.seconds = time.monotonic() - started
    return summary


def _record(summary: Summary, job: Job, result: tuple[str, str], manifest: Manifest) -> None:
    status, detail = result
    if status == "fetched":
        summary.fetched += 1
        summary.bytes += manifest.entries[detail]["bytes"]
    elif status == "duplicate":
        summary.duplicates += 1
        log.debug("%s: same bytes as %s; not kept", job.label, detail)
    else:
        summary.failed.append((job.label, detail))
        log.debug("failed: %s: %s", job.label, detail)


def _run_job(job: Job, manifest: Manifest, retry: RetryPolicy) -> tuple[str, str]:
    """Do one job on a worker thread: ("fetched", rel) / ("duplicate", rel) / ("failed", reason)."""
    dest = manifest.root / job.rel
    tmp = _part_path(dest)
    try:
        if dest.exists() and job.rel not in manifest.entries:
            tmp = dest  # written by a run that stopped before recording it: adopt it, don't download again
        else:
            download_file(job.url, tmp, retry=retry)
        return _check_and_commit(tmp, job, manifest)
    except (GaveUp, Interrupted) as exc:
        return "failed", str(exc)  # the .part stays: the next run resumes it with a Range request
    except FetchError as exc:
        if tmp != dest:
            tmp.unlink(missing_ok=True)  # refused bytes (404 page, not an image, wrong sha256): start afresh
        return "failed", str(exc)
    except OSError as exc:
        return "failed", redact(f"{type(exc).__name__}: {exc}")


def _check_and_commit(tmp: Path, job: Job, manifest: Manifest) -> tuple[str, str]:
    """Verify a finished temporary file (image? expected sha256?) and move it into place."""
    info = verify_image(tmp)
    sha = file_sha256(tmp)
    if job.sha256 and sha != job.sha256:
        raise FetchError(f"sha256 mismatch (expected {job.sha256}, got {sha})")
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


def fetch_archive(url: str, out_dir: str | Path = OUT_DIR, *, sha256: str | None = None, name: str | None = None,
                  root: str = "", limit: int | None = None, keep_archive: bool = False,
                  retry: RetryPolicy | None = None, progress: bool = True, verify: bool = False,
                  extra_meta: dict | None = None) -> Summary:
    """Download a zip/tar archive (streamed, resumable, checksum-verified) and extract its images safely.

    Images land in out_dir/NAME/ (NAME: the archive's stem); members that are links, special files or
    escape the folder (`..`, absolute paths) are refused and reported; non-image members are left out.
    A completion record in out_dir/.downloads/ lets a re-run skip the download; the archive itself is
    deleted after a complete extraction unless keep_archive (or a limit) says otherwise.
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
                _download_archive(url, archive, sha256, retry or RetryPolicy(), progress)
            elif sha256:
                _check_sha256(archive, sha256)
            result = extract_images(archive, out, name, root=root, limit=limit, meta=meta, progress=progress)
        except FetchError as exc:
            summary.failed.append((redact(url), str(exc)))
        except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
            summary.failed.append((redact(url), f"cannot read archive {filename} ({type(exc).__name__}: {exc})"))
        else:
            summary.add(result.summary)
            if result.complete:
                resizer.write_json(record_path, {"url": url, "sha256": sha256, "limit": limit,
                                                 "files": result.files, "rejected": result.rejected})
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


def _download_archive(url: str, archive: Path, sha256: str | None, retry: RetryPolicy, progress: bool) -> None:
    """Download an archive to archive (via archive.part, resumable) and check its sha256 if known."""
    part = _part_path(archive)
    have = part.stat().st_size if part.exists() else 0
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, initial=have, desc=archive.name,
              disable=not progress, dynamic_ncols=True) as bar:
        download_file(url, part, retry=retry, progress=bar.update)
    if sha256:
        try:
            _check_sha256(part, sha256)
        except FetchError:
            part.unlink(missing_ok=True)  # corrupt or changed upstream: start afresh next time
            raise
    os.replace(part, archive)


def _check_sha256(path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected.lower():
        raise FetchError(f"sha256 mismatch for {path.name} (expected {expected}, got {actual})")


@dataclass
class Extraction:
    """What extract_images did: its summary, the files written or already there, the members rejected
    for good (unsafe, not an image), and whether it ran to the end without a read or write error."""

    summary: Summary
    files: list[str]
    rejected: list[tuple[str, str]]
    complete: bool


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
                   meta: dict | None = None, progress: bool = True) -> Extraction:
    """Extract the image members of a zip or tar archive under root into out_dir/name/, recording each.

    Refuses (and reports) symlinks, hard links, special files, absolute paths and `..` members; skips
    members already whole in the manifest; each image is verified, hashed and de-duplicated like a download.
    """
    meta = meta or {}
    manifest = Manifest(out_dir)
    target = (out_dir / name).resolve()
    root_path = PurePosixPath(root.strip("/")) if root.strip("/") else None
    summary, files, rejected, complete, taken = Summary(), [], [], True, 0
    with tqdm(unit="img", desc=f"extract {name}", disable=not progress, dynamic_ncols=True) as bar:
        for member, kind, opener in _archive_members(archive):
            try:
                rel_member = safe_member_path(member)
                if kind in ("symlink", "hardlink", "special"):
                    raise FetchError(f"unsafe member ({kind} refused): {member!r}")
            except FetchError as exc:
                rejected.append((member, str(exc)))
                continue
            if kind != "file" or not _is_wanted_member(rel_member, root_path):
                continue
            if limit is not None and taken >= limit:
                break
            taken += 1
            rel = f"{name}/{(rel_member.relative_to(root_path) if root_path else rel_member).as_posix()}"
            if not (out_dir / rel).resolve().is_relative_to(target):  # e.g. a symlinked folder in the target
                rejected.append((member, f"unsafe member (resolves outside {name}/): {member!r}"))
                continue
            if manifest.is_whole(rel):
                summary.skipped += 1
                files.append(rel)
            else:
                job = Job(rel=rel, key=f"{meta.get('url', archive.name)}#{member}", meta={**meta, "member": member})
                status, detail = _extract_one(opener, job, manifest)
                if status == "fetched":
                    summary.fetched += 1
                    summary.bytes += manifest.entries[detail]["bytes"]
                    files.append(detail)
                elif status == "duplicate":
                    summary.duplicates += 1
                elif status == "rejected":
                    rejected.append((member, detail))
                else:
                    complete = False
                    summary.failed.append((member, detail))
            bar.update()
    summary.failed += rejected
    manifest.tidy()
    if taken == 0:
        log.warning("%s: no image members%s", archive.name, f" under {root}" if root else "")
    return Extraction(summary, files, rejected, complete)


def _is_wanted_member(path: PurePosixPath, root: PurePosixPath | None) -> bool:
    """Image members under root, leaving out macOS resource forks (__MACOSX/, ._name)."""
    if path.name.startswith("._") or "__MACOSX" in path.parts:
        return False
    if root is not None and not path.is_relative_to(root):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES


def _extract_one(opener: Callable, job: Job, manifest: Manifest) -> tuple[str, str]:
    """Extract one member through NAME.part: fetched/duplicate, "rejected" (bad bytes) or "failed" (I/O)."""
    tmp = _part_path(manifest.root / job.rel)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        return _check_and_commit(tmp, job, manifest)
    except FetchError as exc:
        tmp.unlink(missing_ok=True)
        return "rejected", str(exc)
    except (OSError, EOFError, zipfile.BadZipFile, tarfile.TarError) as exc:
        tmp.unlink(missing_ok=True)
        return "failed", f"cannot extract ({type(exc).__name__}: {exc})"


def _archive_members(archive: Path) -> Iterable[tuple[str, str, Callable]]:
    """(name, kind, opener) per member of a zip or tar; kind: file, dir, symlink, hardlink or special."""
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
                yield info.filename, kind, (lambda info=info: zf.open(info))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:  # in order, so compressed tars are read once, front to back
                kind = ("file" if member.isfile() else "dir" if member.isdir() else
                        "symlink" if member.issym() else "hardlink" if member.islnk() else "special")
                yield member.name, kind, (lambda member=member: tf.extractfile(member))
    else:
        raise FetchError(f"{archive.name} is neither a zip nor a tar archive")


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
    meta = {"dataset": key, "homepage": entry.get("homepage")}
    return fetch_archive(url, out_dir, sha256=entry.get("sha256"), name=key, root=entry.get("root", ""),
                         limit=limit, keep_archive=keep_archive, retry=retry, progress=progress, verify=verify,
                         extra_meta=meta)


def dataset_table() -> str:
    """The registry as text, one dataset a line."""
    lines = []
    for name, entry in DATASETS.items():
        size = f"{entry['bytes'] / 1e9:.2f} GB" if entry.get("bytes") else "size ?"
        check = "sha256" if entry.get("sha256") else "no checksum"
        lines.append(f"{name:12s} {entry['images']:>5} images  {size:>9s}  {check:11s}  {entry['about']}")
    return "\n".join(lines)


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
    started = time.monotonic()
    src, out = Path(src_dir).expanduser(), Path(out_dir)
    if not src.is_dir():
        raise FetchError(f"{src}: not a folder")
    jobs = local_jobs(src, out, name or src.resolve().name or "root", limit)
    if not jobs:
        log.warning("%s: no image files (%s)", src, " ".join(IMAGE_SUFFIXES))
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out)
    todo = [job for job in jobs if not manifest.is_done(job, verify=verify)]
    summary = Summary(skipped=len(jobs) - len(todo))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="local") as pool:
        checked = list(tqdm(pool.map(_check_local, todo), total=len(todo), unit="img", desc="local: check",
                            disable=not progress or not todo, dynamic_ncols=True))
        copies, claimed = [], {}
        for job, result in zip(todo, checked, strict=True):
            if isinstance(result, str):
                _record(summary, job, ("failed", result), manifest)
                continue
            sha, info = result
            other = claimed.get(sha) or manifest.holder(sha, job.rel)
            if other:
                _record(summary, job, manifest.note_duplicate(job, sha, job.size, other), manifest)
            else:
                claimed[sha] = job.rel
                copies.append((job, sha, info))
        for job, result in zip((c[0] for c in copies),
                               tqdm(pool.map(lambda c: _copy_local(*c, manifest), copies), total=len(copies),
                                    unit="img", desc="local: copy", disable=not progress or not copies,
                                    dynamic_ncols=True), strict=True):
            _record(summary, job, result, manifest)
    manifest.tidy()
    summary.seconds = time.monotonic() - started
    return summary


def _check_local(job: Job) -> tuple[str, tuple[str, int, int]] | str:
    """(sha256, image info) of a local file, or the reason it is refused."""
    try:
        info = verify_image(job.src)
        return file_sha256(job.src), info
    except FetchError as exc:
        return str(exc)
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"


def _copy_local(job: Job, sha: str, info: tuple[str, int, int], manifest: Manifest) -> tuple[str, str]:
    """Copy a checked local file in through NAME.part and record it."""
    tmp = _part_path(manifest.root / job.rel)
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(job.src, tmp)
        return manifest.commit(tmp, job, sha, info)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return "failed", f"{type(exc).__name__}: {exc}"


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

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
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
    ar.add_argument("--name", help="folder under RAW (default: the archive's stem)")
    ar.add_argument("--root", default="", help="keep only members under this folder of the archive")
    ar.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")

    ds = sub.add_parser("dataset", parents=[common], help="a dataset from the registry (no NAME: list them)")
    ds.add_argument("name", nargs="?", help=", ".join(DATASETS))
    ds.add_argument("--keep-archive", action="store_true", help="keep the archive after extracting it")

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
        return fetch_archive(url, args.out, sha256=args.sha256, name=args.name, root=args.root, limit=args.limit,
                             keep_archive=args.keep_archive, **common)
    if args.source == "dataset":
        if not args.name:
            print(dataset_table())
            return None
        return fetch_dataset(args.name, args.out, base_url=args.base_url, limit=args.limit,
                             keep_archive=args.keep_archive, **common)
    common.pop("retry")
    return fetch_local(args.dir, args.out, name=args.name, limit=args.limit, workers=args.workers, **common)


if __name__ == "__main__":
    sys.exit(main())
