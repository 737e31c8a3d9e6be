"""fetcher.py against a real HTTP server on 127.0.0.1 (tests/fakeserver.py): every source, every failure mode."""

import hashlib
import io
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fakeserver import FakePixabay, FakeServer, image_bytes, noise_png
from PIL import Image

import fetcher

KEY = "sekr1t-pixabay-key-0123456789"


class Sleeps(list):
    """A sleep that records its delays (and really sleeps them, so servers' resets pass)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)
        time.sleep(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def retry(sleeps):
    """Tiny backoff delays so failure tests stay fast."""
    return fetcher.RetryPolicy(retries=3, backoff=0.01, backoff_max=0.02, timeout=(2.0, 2.0), sleep=sleeps)


@pytest.fixture
def server():
    with FakeServer() as srv:
        yield srv


@pytest.fixture
def raw(tmp_path):
    return tmp_path / "raw"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_lines(raw: Path) -> list[dict]:
    return [json.loads(line) for line in (raw / "manifest.jsonl").read_text().splitlines() if line.strip()]


def fetch(server, raw, retry, paths, **kwargs):
    return fetcher.fetch_urls([server.url(p) for p in paths], raw, retry=retry, progress=False, **kwargs)


# ----------------------------------------------------------------------------- urls


def test_url_list_fetches_images_into_raw_with_manifest(server, raw, retry, tmp_path):
    a = server.add("/img/a.jpg", image_bytes(1))
    b = server.add("/img/b.png", image_bytes(2, fmt="PNG"), "image/png")
    c = server.add("/other/a.jpg", image_bytes(3))  # same file name as the first, another URL
    listing = tmp_path / "urls.txt"
    listing.write_text(f"# holiday photos\n{server.url('/img/a.jpg')}\n\n{server.url('/img/b.png')}\n"
                       f"{server.url('/other/a.jpg')}  {sha(c)}\n")

    summary = fetcher.fetch_urls(listing, raw, retry=retry, progress=False)

    assert (summary.fetched, summary.skipped, summary.failed) == (3, 0, [])
    entries = {e["url"]: e for e in manifest_lines(raw)}
    assert set(entries) == {server.url(p) for p in ("/img/a.jpg", "/img/b.png", "/other/a.jpg")}
    for path, body in (("/img/a.jpg", a), ("/img/b.png", b), ("/other/a.jpg", c)):
        entry = entries[server.url(path)]
        assert entry["source"] == "url" and entry["sha256"] == sha(body) and entry["bytes"] == len(body)
        assert (raw / entry["path"]).read_bytes() == body
    assert entries[server.url("/img/b.png")]["path"] == "urls/b.png"
    assert len({e["path"] for e in entries.values()}) == 3  # the two a.jpg got distinct names
    assert not list(raw.rglob("*.part"))
    assert "fetched 3" in summary.line() and "failed 0" in summary.line()


def test_rerun_downloads_nothing(server, raw, retry):
    paths = [server.add(f"/p{i}.jpg", image_bytes(i)) and f"/p{i}.jpg" for i in range(4)]
    assert fetch(server, raw, retry, paths).fetched == 4
    before = len(server.requests())
    again = fetch(server, raw, retry, paths)
    assert (again.fetched, again.skipped) == (0, 4)
    assert len(server.requests()) == before
    assert len(manifest_lines(raw)) == 4


def test_500_then_success_is_retried_with_backoff(server, raw, retry, sleeps):
    body = server.add("/flaky.jpg", image_bytes(5))
    server.fault("/flaky.jpg", {"status": 500}, {"status": 502})
    summary = fetch(server, raw, retry, ["/flaky.jpg"])
    assert summary.fetched == 1 and summary.ok
    assert len(server.requests("/flaky.jpg")) == 3
    assert len(sleeps) == 2 and all(0 < s <= 0.02 for s in sleeps)
    assert (raw / "urls/flaky.jpg").read_bytes() == body


def test_retry_after_is_honoured(server, raw, retry, sleeps):
    server.add("/busy.jpg", image_bytes(6))
    server.fault("/busy.jpg", {"status": 503, "headers": {"Retry-After": "0.15"}})
    assert fetch(server, raw, retry, ["/busy.jpg"]).fetched == 1
    assert sleeps == [0.15]


def test_gives_up_after_retries_and_cli_exits_non_zero(server, raw, tmp_path, capsys):
    server.add("/down.jpg", image_bytes(7))
    server.fault("/down.jpg", *[{"status": 500}] * 10)
    server.add("/fine.jpg", image_bytes(8))
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{server.url('/down.jpg')}\n{server.url('/fine.jpg')}\n")
    status = fetcher.main(["urls", str(listing), "--out", str(raw), "--retries", "0", "-q"])
    out = capsys.readouterr().out
    assert status == 1
    assert "fetched 1" in out and "failed 1 (HTTP 500: 1)" in out


def test_404_is_not_retried(server, raw, retry):
    summary = fetch(server, raw, retry, ["/missing.jpg"])
    assert [reason for _, reason in summary.failed] == ["HTTP 404 Not Found"]
    assert len(server.requests("/missing.jpg")) == 1
    assert not (raw / "urls").exists() or not list((raw / "urls").iterdir())


def test_read_timeout_is_retried(server, raw, sleeps):
    server.add("/slow.jpg", image_bytes(9))
    server.fault("/slow.jpg", {"sleep": 0.8})
    quick = fetcher.RetryPolicy(retries=3, backoff=0.01, timeout=(1.0, 0.3), sleep=sleeps)
    summary = fetch(server, raw, quick, ["/slow.jpg"])
    assert summary.fetched == 1
    assert len(server.requests("/slow.jpg")) >= 2


def test_dropped_connection_is_resumed_with_range(server, raw, retry):
    body = server.add("/big.png", noise_png(1), "image/png")
    assert len(body) > 70_000
    server.fault("/big.png", {"drop_after": len(body) - 5000})
    summary = fetch(server, raw, retry, ["/big.png"])
    assert summary.fetched == 1, summary.failed
    first, second = server.requests("/big.png")
    assert "Range" not in first["headers"]
    offset = int(second["headers"]["Range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < offset < len(body)
    assert (raw / "urls/big.png").read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server, raw, retry):
    body = server.add("/img.png", noise_png(2), "image/png")
    (raw / "urls").mkdir(parents=True)
    (raw / "urls/img.png.part").write_bytes(b"garbage that must not survive")
    server.fault("/img.png", {"ignore_range": True})
    assert fetch(server, raw, retry, ["/img.png"]).fetched == 1
    assert server.requests("/img.png")[0]["headers"]["Range"] == "bytes=29-"
    assert (raw / "urls/img.png").read_bytes() == body


def test_wrong_content_range_restarts(server, raw, retry):
    body = server.add("/img.png", noise_png(3), "image/png")
    (raw / "urls").mkdir(parents=True)
    (raw / "urls/img.png.part").write_bytes(body[:1000])
    server.fault("/img.png", {"bad_range": True})
    assert fetch(server, raw, retry, ["/img.png"]).fetched == 1
    assert [("Range" in r["headers"]) for r in server.requests("/img.png")] == [True, False]
    assert (raw / "urls/img.png").read_bytes() == body


def test_complete_partial_file_is_finished_without_a_body(server, raw, retry):
    body = server.add("/img.jpg", image_bytes(10))
    (raw / "urls").mkdir(parents=True)
    (raw / "urls/img.jpg.part").write_bytes(body)  # a run stopped between download and rename
    assert fetch(server, raw, retry, ["/img.jpg"]).fetched == 1
    assert (raw / "urls/img.jpg").read_bytes() == body
    assert server.requests("/img.jpg")[0]["headers"]["Range"] == f"bytes={len(body)}-"


def test_html_error_pages_are_rejected(server, raw, retry):
    server.add("/labelled.jpg", b"<html><body>Please log in</body></html>", "text/html; charset=utf-8")
    server.add("/disguised.jpg", b"<html><body>Rate limited</body></html>", "image/jpeg")
    summary = fetch(server, raw, retry, ["/labelled.jpg", "/disguised.jpg"])
    reasons = dict(summary.failed)
    assert reasons[server.url("/labelled.jpg")].startswith("content type text/html")
    assert reasons[server.url("/disguised.jpg")].startswith("not a usable image")
    assert summary.fetched == 0
    assert not [p for p in raw.rglob("*") if p.is_file() and p.suffix in (".jpg", ".part")]
    assert not (raw / "manifest.jsonl").exists()


def test_duplicate_bytes_are_kept_once_and_remembered(server, raw, retry):
    body = image_bytes(11)
    server.add("/one.jpg", body)
    server.add("/same.jpg", body)
    summary = fetch(server, raw, retry, ["/one.jpg", "/same.jpg"], workers=1)
    assert (summary.fetched, summary.duplicates) == (1, 1)
    assert [e["path"] for e in manifest_lines(raw)] == ["urls/one.jpg"]
    assert not (raw / "urls/same.jpg").exists()
    before = len(server.requests())
    assert fetch(server, raw, retry, ["/one.jpg", "/same.jpg"]).skipped == 2
    assert len(server.requests()) == before


def test_expected_sha256_mismatch_is_a_failure(server, raw, retry, tmp_path):
    server.add("/x.jpg", image_bytes(12))
    listing = tmp_path / "urls.txt"
    listing.write_text(f"{server.url('/x.jpg')} {'0' * 64}\n")
    summary = fetcher.fetch_urls(listing, raw, retry=retry, progress=False)
    assert summary.failed[0][1].startswith("sha256 mismatch")
    assert not list(raw.rglob("x.jpg*"))


def test_url_without_suffix_gets_one_from_its_format(server, raw, retry):
    server.add("/render/42", image_bytes(13, fmt="PNG"), "image/png")
    assert fetch(server, raw, retry, ["/render/42"]).fetched == 1
    assert [e["path"] for e in manifest_lines(raw)] == ["urls/42.png"]
    assert fetch(server, raw, retry, ["/render/42"]).skipped == 1


def test_interrupted_run_continues_where_it_stopped(server, raw, retry):
    bodies = {f"/c{i}.png": server.add(f"/c{i}.png", noise_png(20 + i), "image/png") for i in range(5)}
    paths = list(bodies)
    server.fault("/c1.png", {"drop_after": 40_000})  # dropped, no retries left: .part kept
    server.fault("/c2.png", {"status": 503})
    once = fetcher.RetryPolicy(retries=0, sleep=retry.sleep)
    first = fetch(server, raw, once, paths)
    assert (first.fetched, len(first.failed)) == (3, 2)
    assert (raw / "urls/c1.png.part").stat().st_size == 40_000  # every byte received is kept

    # the crash cases too: a file renamed but never recorded, and a torn manifest line
    (raw / "urls/c3.png").write_bytes(bodies["/c3.png"])
    kept = [line for line in (raw / "manifest.jsonl").read_text().splitlines() if "c3.png" not in line]
    (raw / "manifest.jsonl").write_text("\n".join(kept) + '\n{"path": "urls/c9.p')

    seen = len(server.requests())
    second = fetch(server, raw, retry, paths)
    assert second.ok and (second.fetched, second.skipped) == (3, 2)
    new = server.requests()[seen:]
    assert sorted(r["path"] for r in new) == ["/c1.png", "/c2.png"]  # c3 adopted without a request
    assert [r["headers"].get("Range") for r in new if r["path"] == "/c1.png"] == ["bytes=40000-"]
    for path, body in bodies.items():
        assert (raw / "urls" / path.lstrip("/")).read_bytes() == body
    assert sorted(e["path"] for e in manifest_lines(raw)) == [f"urls/c{i}.png" for i in range(5)]  # torn line gone


def test_ctrl_c_stops_cleanly_and_the_next_run_resumes(server, raw, tmp_path):
    body = server.add("/slow.png", noise_png(6), "image/png")
    server.fault("/slow.png", {"trickle": (1024, 0.05)})  # about four seconds for the whole file
    quick = [server.add(f"/q{i}.jpg", image_bytes(100 + i)) and f"/q{i}.jpg" for i in range(3)]
    listing = tmp_path / "urls.txt"
    listing.write_text("".join(server.url(p) + "\n" for p in ["/slow.png", *quick]))
    command = [sys.executable, str(Path(fetcher.__file__)), "urls", str(listing), "--out", str(raw), "-q"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    part = raw / "urls/slow.png.part"
    deadline = time.monotonic() + 20
    # part of the body written, however slowly a loaded machine runs the fetcher (a fixed sleep was not enough)
    while not (part.is_file() and part.stat().st_size) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and "run the same command again" in err

    kept = part.stat().st_size
    assert 0 < kept < len(body)
    summary = fetcher.fetch_urls(listing, raw, progress=False)
    assert summary.ok and summary.fetched + summary.skipped == 4
    assert server.requests("/slow.png")[-1]["headers"]["Range"] == f"bytes={kept}-"
    assert (raw / "urls/slow.png").read_bytes() == body
    assert len(manifest_lines(raw)) == 4


# ----------------------------------------------------------------------------- pixabay


@pytest.fixture
def pixabay(server, monkeypatch):
    server.pixabay = FakePixabay(server, KEY, count=7)
    monkeypatch.setenv(fetcher.PIXABAY_KEY_ENV, KEY)
    return server.pixabay


def fetch_pixabay(server, raw, retry, **kwargs):
    kwargs = {"limit": 5, "base_url": server.url("/api/"), "retry": retry, "progress": False, **kwargs}
    return fetcher.fetch_pixabay("red fox", raw, **kwargs)


def test_pixabay_fetch_keeps_attribution_and_never_leaks_the_key(server, raw, retry, pixabay, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # main() in another test may have quietened it
    summary = fetch_pixabay(server, raw, retry, min_width=20, min_height=10, category="animals")

    assert summary.fetched == 5 and summary.ok
    (api,) = server.requests("/api/")
    query = {k: v[0] for k, v in api["query"].items()}
    assert query | {"key": "?"} == {"q": "red fox", "image_type": "photo", "min_width": "20", "min_height": "10",
                                   "category": "animals", "order": "popular", "safesearch": "false",
                                   "editors_choice": "false", "per_page": "5", "page": "1", "key": "?"}
    for entry in manifest_lines(raw):
        hit = next(h for h in pixabay.hits if h["id"] == entry["id"])
        assert entry["path"] == f"pixabay/{hit['id']}.jpg" and entry["source"] == "pixabay"
        assert (entry["user"], entry["pageURL"], entry["url"]) == (hit["user"], hit["pageURL"], hit["largeImageURL"])
        assert entry["license"] == "Pixabay Content License"
    assert '"GET /api/?' in caplog.text and "key=***" in caplog.text  # urllib3 logged the URL, redacted
    out = capsys.readouterr()
    assert KEY not in caplog.text + out.out + out.err
    for path in raw.rglob("*"):
        assert KEY not in str(path.relative_to(raw))
        if path.is_file():
            assert KEY.encode() not in path.read_bytes()
    assert list((raw / ".cache/pixabay").glob("*.json"))


def test_pixabay_cache_is_reused_for_24_hours(server, raw, retry, pixabay):
    assert fetch_pixabay(server, raw, retry).fetched == 5
    seen = len(server.requests())
    again = fetch_pixabay(server, raw, retry)
    assert (again.fetched, again.skipped) == (0, 5)
    assert len(server.requests()) == seen  # no API request, no image request

    (cache_file,) = (raw / ".cache/pixabay").glob("*.json")
    record = json.loads(cache_file.read_text())
    record["fetched_at"] -= 25 * 3600
    cache_file.write_text(json.dumps(record))
    fetch_pixabay(server, raw, retry)
    assert [r["path"] for r in server.requests()[seen:]] == ["/api/"]  # stale: asked again, images skipped


def test_pixabay_pages_stop_at_the_500_hit_cap(server, retry, pixabay):
    server.pixabay = FakePixabay(server, KEY, count=650)
    hits = fetcher.search_pixabay("sea", KEY, limit=10_000, base_url=server.url("/api/"), retry=retry)
    assert len(hits) == 500 and len({h["id"] for h in hits}) == 500
    pages = [(r["query"]["page"][0], r["query"]["per_page"][0]) for r in server.requests("/api/")]
    assert pages == [("1", "200"), ("2", "200"), ("3", "200")]

    few = fetcher.search_pixabay("sea", KEY, limit=2, base_url=server.url("/api/"), retry=retry)
    assert len(few) == 2 and server.requests("/api/")[-1]["query"]["per_page"] == ["3"]


def test_pixabay_429_waits_for_the_reset(server, raw, retry, sleeps, pixabay):
    server.fault("/api/", {"status": 429, "headers": {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": "0",
                                                      "X-RateLimit-Reset": "0.25"}})
    assert fetch_pixabay(server, raw, retry).fetched == 5
    assert len(server.requests("/api/")) == 2
    assert sleeps[0] == 0.25


def test_pixabay_waits_when_the_budget_is_spent(server, retry, sleeps):
    server.pixabay = FakePixabay(server, KEY, count=300, remaining=1, reset="0.5")
    fetcher.search_pixabay("sea", KEY, limit=300, base_url=server.url("/api/"), retry=retry)
    assert len(server.requests("/api/")) == 2
    assert len(sleeps) == 1 and 0 < sleeps[0] <= 0.5  # remaining 0 after page 1: wait out the window


def test_pixabay_key_from_file_and_clear_errors(server, raw, pixabay, monkeypatch, tmp_path, caplog, capsys):
    monkeypatch.delenv(fetcher.PIXABAY_KEY_ENV)
    with pytest.raises(fetcher.FetchError, match="PIXABAY_API_KEY"):
        fetcher.pixabay_key()
    key_file = tmp_path / "pixabay.key"
    key_file.write_text(KEY + "\n")
    args = ["pixabay", "red fox", "--key-file", str(key_file), "--out", str(raw), "--base-url", server.url("/api/"),
            "--limit", "3", "-q"]
    assert fetcher.main(args) == 0
    assert "fetched 3" in capsys.readouterr().out

    key_file.write_text("wrong-key-98765\n")
    assert fetcher.main(args[:-1] + ["--cache-dir", str(tmp_path / "c2"), "-q"]) == 1
    assert "HTTP 400" in caplog.text and "Invalid or missing API key" in caplog.text
    assert "wrong-key-98765" not in caplog.text + capsys.readouterr().err


def test_key_is_redacted_from_connection_errors(retry, tmp_path):
    fetcher.register_secret(KEY)
    dead = fetcher.RetryPolicy(retries=0, timeout=(0.5, 0.5), sleep=retry.sleep)
    with pytest.raises(fetcher.FetchError) as err:  # nothing listens on port 9 of 127.0.0.1
        fetcher.search_pixabay("sea", KEY, base_url="http://127.0.0.1:9/api/", retry=dead)
    assert "Pixabay API" in str(err.value) and KEY not in str(err.value)
    assert fetcher.redact(f"GET /api/?q=sea&key={KEY}&page=1") == "GET /api/?q=sea&key=***&page=1"


# ----------------------------------------------------------------------------- archives and datasets


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


def make_tar(members: dict[str, bytes], links: dict[str, tuple[bytes, str]] | None = None,
             compression: str = "gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, (kind, target) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tf.addfile(info)
    return buf.getvalue()


def test_zip_archive_extracts_only_images_and_is_not_fetched_twice(server, raw, retry):
    images = {f"photos/{n}": image_bytes(30 + i, fmt="PNG") for i, n in enumerate(["a.png", "b.png", "sub/c.png"])}
    data = server.add("/photos.zip", make_zip({**images, "photos/README.txt": b"hello",
                                               "__MACOSX/photos/._a.png": b"\0\5\26\7"}), "application/zip")
    summary = fetcher.fetch_archive(server.url("/photos.zip"), raw, sha256=sha(data), retry=retry, progress=False)

    assert (summary.fetched, summary.failed) == (3, [])
    for member, body in images.items():
        assert (raw / "photos" / member).read_bytes() == body
    entry = next(e for e in manifest_lines(raw) if e["path"] == "photos/photos/sub/c.png")
    assert (entry["source"], entry["url"], entry["member"]) == ("archive", server.url("/photos.zip"),
                                                                "photos/sub/c.png")
    assert not (raw / ".downloads/photos.zip").exists()  # deleted after a complete extraction
    again = fetcher.fetch_archive(server.url("/photos.zip"), raw, sha256=sha(data), retry=retry, progress=False)
    assert (again.fetched, again.skipped) == (0, 3)
    assert len(server.requests("/photos.zip")) == 1


def test_zip_with_escaping_absolute_and_symlink_members_is_extracted_safely(server, raw, retry, tmp_path):
    good = image_bytes(40)
    server.add("/evil.zip", make_zip({"ok.jpg": good, "../evil.jpg": image_bytes(41), "/abs.jpg": image_bytes(42),
                                      "a/../../b.jpg": image_bytes(43)}, symlinks={"link.jpg": "/etc/passwd"}))
    status = fetcher.main(["archive", server.url("/evil.zip"), "--out", str(raw), "-q"])
    assert status == 1
    summary = fetcher.fetch_archive(server.url("/evil.zip"), raw, retry=retry, progress=False)
    assert summary.skipped == 1 and len(summary.failed) == 4  # re-reported from the completion record
    assert all(reason.startswith("unsafe member") for _, reason in summary.failed)
    assert (raw / "evil/ok.jpg").read_bytes() == good
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["raw/.downloads/evil.zip.done.json", "raw/evil/ok.jpg", "raw/manifest.jsonl"]
    assert not [p for p in tmp_path.rglob("*") if p.is_symlink()]


def test_tar_with_escaping_members_and_links_is_extracted_safely(server, raw, retry, tmp_path):
    good = image_bytes(50)
    server.add("/set.tar.gz", make_tar({"set/good.jpg": good, "../escape.jpg": image_bytes(51),
                                        "/tmp/abs.jpg": image_bytes(52)},
                                       links={"set/sym.jpg": (tarfile.SYMTYPE, "/etc/passwd"),
                                              "set/hard.jpg": (tarfile.LNKTYPE, "set/good.jpg"),
                                              "set/fifo.jpg": (tarfile.FIFOTYPE, "")}), "application/gzip")
    summary = fetcher.fetch_archive(server.url("/set.tar.gz"), raw, retry=retry, progress=False)
    assert summary.fetched == 1
    reasons = sorted(reason.split(": ")[0] for _, reason in summary.failed)
    assert reasons == ["unsafe member (absolute path)", "unsafe member (escapes the target folder)",
                       "unsafe member (hardlink refused)", "unsafe member (special refused)",
                       "unsafe member (symlink refused)"]
    files = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file() and p.suffix == ".jpg")
    assert files == ["set/set/good.jpg"]
    assert not (tmp_path / "escape.jpg").exists() and not [p for p in tmp_path.rglob("*") if p.is_symlink()]


def test_archive_sha256_mismatch_is_refused(server, raw, retry):
    server.add("/photos.zip", make_zip({"a.jpg": image_bytes(60)}), "application/zip")
    summary = fetcher.fetch_archive(server.url("/photos.zip"), raw, sha256="ab" * 32, retry=retry, progress=False)
    assert summary.fetched == 0 and "sha256 mismatch" in summary.failed[0][1]
    assert not [p for p in raw.rglob("*") if p.is_file()]  # neither archive, nor part, nor images


def test_archive_download_resumes_after_a_drop(server, raw, retry):
    data = server.add("/big.zip", make_zip({f"n{i}.png": noise_png(70 + i) for i in range(2)}), "application/zip")
    server.fault("/big.zip", {"drop_after": len(data) // 2})
    summary = fetcher.fetch_archive(server.url("/big.zip"), raw, sha256=sha(data), retry=retry, progress=False)
    assert summary.fetched == 2 and summary.ok
    assert "Range" in server.requests("/big.zip")[1]["headers"]


def test_dataset_from_the_registry_through_a_mirror(server, raw, retry, monkeypatch):
    hr = {f"tiny/HR/{i:04d}.png": image_bytes(80 + i, fmt="PNG") for i in range(3)}
    data = server.add("/mirror/tiny_HR.tar.gz", make_tar({**hr, "tiny/LR/0000.png": image_bytes(99, fmt="PNG")}))
    monkeypatch.setitem(fetcher.DATASETS, "tiny", dict(url="https://example.invalid/sets/tiny_HR.tar.gz",
                                                       root="tiny/HR/", sha256=sha(data), bytes=len(data), images=3,
                                                       homepage="https://example.invalid/", about="test set"))
    summary = fetcher.fetch_dataset("TINY", raw, base_url=server.url("/mirror/"), retry=retry, progress=False)
    assert summary.fetched == 3 and summary.ok
    assert sorted(e["path"] for e in manifest_lines(raw)) == ["tiny/0000.png", "tiny/0001.png", "tiny/0002.png"]
    assert {e["dataset"] for e in manifest_lines(raw)} == {"tiny"}
    assert fetcher.fetch_dataset("tiny", raw, base_url=server.url("/mirror/"), progress=False).skipped == 3
    with pytest.raises(fetcher.FetchError, match="div2k-train"):
        fetcher.fetch_dataset("imagenet", raw)


def test_dataset_limit_keeps_the_archive_for_a_full_run(server, raw, retry, monkeypatch):
    hr = {f"tiny/HR/{i:04d}.png": image_bytes(90 + i, fmt="PNG") for i in range(4)}
    server.add("/tiny_HR.tar.gz", make_tar(hr))
    monkeypatch.setitem(fetcher.DATASETS, "tiny", dict(url="https://example.invalid/tiny_HR.tar.gz",
                                                       root="tiny/HR", sha256=None, bytes=None, images=4,
                                                       about="test set"))
    assert fetcher.fetch_dataset("tiny", raw, base_url=server.url("/"), limit=2, progress=False).fetched == 2
    full = fetcher.fetch_dataset("tiny", raw, base_url=server.url("/"), progress=False)
    assert (full.fetched, full.skipped) == (2, 2)
    assert len(server.requests("/tiny_HR.tar.gz")) == 1


def test_registry_entries_are_well_formed():
    assert {"div2k-train", "div2k-valid", "flickr2k", "bsds500", "dtd", "set5", "set14", "bsd100", "urban100",
            "openimages-valid", "places365-val"} <= set(fetcher.DATASETS)
    for name, entry in fetcher.DATASETS.items():
        assert entry["url"].startswith(("https://", "http://")), name
        assert entry["root"] == "" or entry["root"].endswith("/"), name  # "" keeps every image member
        assert entry["sha256"] is None or len(entry["sha256"]) == 64, name
        assert entry.get("md5") is None or len(entry["md5"]) == 32, name
        assert entry["license"] and entry["images"] > 0, name
    for name in ("set5", "set14", "bsd100", "urban100"):  # a flat HR folder, as flow.py evaluate reads it
        assert fetcher.DATASETS[name]["root"].endswith("_HR/")


def test_dataset_list_prints_the_registry_as_a_table(capsys):
    assert fetcher.main(["dataset", "--list"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["NAME", "IMAGES", "SIZE", "CHECKSUM"] and header.rstrip().endswith("URL")
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == set(fetcher.DATASETS)
    for name, entry in fetcher.DATASETS.items():
        row = by_name[name]
        assert row.endswith(entry["url"]) and entry["license"] in row and f" {entry['images']} " in row
    assert " 449.0 MB " in by_name["div2k-valid"] and " sha256 " in by_name["div2k-valid"]
    assert " md5 " in by_name["urban100"] and " none " in by_name["set5"] and " ? " in by_name["set5"]
    assert fetcher.main(["dataset"]) == 0 and capsys.readouterr().out.splitlines()[0] == header


def stand_in_archive(name: str, images: dict[str, bytes]) -> tuple[str, bytes]:
    """(file name, bytes) of a small archive laid out like the registry entry's: images under its root,
    a text file, and (where the entry has a root) an LR image outside it: both must be left out."""
    entry = fetcher.DATASETS[name]
    filename = entry["url"].rsplit("/", 1)[1]
    members = {entry["root"] + n: body for n, body in images.items()}
    if entry["root"]:
        members["LR_bicubic/X4/" + next(iter(images))] = image_bytes(999, fmt="PNG")
    members["README.txt"] = b"stand-in"
    if filename.endswith(".zip"):
        return filename, make_zip(members)
    return filename, make_tar(members, compression="gz" if filename.endswith("gz") else "")


@pytest.mark.parametrize("name", ["set5", "set14", "bsd100", "urban100", "openimages-valid", "places365-val"])
def test_registry_dataset_downloads_and_extracts_through_a_mirror(server, raw, retry, monkeypatch, name):
    images = {f"img_{i:03d}.png": image_bytes(200 + i, fmt="PNG") for i in range(3)}
    filename, data = stand_in_archive(name, images)
    server.add(f"/mirror/{filename}", data, "application/octet-stream")
    check = "md5" if fetcher.DATASETS[name].get("md5") else "sha256"
    patched = {**fetcher.DATASETS[name], "sha256": None, "md5": None,
               check: getattr(hashlib, check)(data).hexdigest()}
    monkeypatch.setitem(fetcher.DATASETS, name, patched)

    summary = fetcher.fetch_dataset(name, raw, base_url=server.url("/mirror/"), retry=retry, progress=False)

    assert summary.ok and summary.fetched == 3
    folder = raw / name
    root = fetcher.DATASETS[name]["root"]
    if root:  # the images lie flat in RAW/NAME: the folder is flow.py evaluate --data input as it is
        assert sorted(p.name for p in folder.iterdir()) == sorted(images)
    for member, body in images.items():
        assert (folder / member).read_bytes() == body
    for entry in manifest_lines(raw):
        assert (entry["source"], entry["dataset"], entry["license"]) == ("archive", name, patched["license"])
    record = json.loads((raw / ".downloads" / f"{filename}.done.json").read_text())
    assert (record["sha256"], record["verified_by"]) == (sha(data), check)
    assert not (raw / ".downloads" / filename).exists()


def test_benchmark_folder_is_evaluate_input(server, raw, retry, monkeypatch):
    flow = pytest.importorskip("flow")
    images = {f"{n}.png": image_bytes(210 + i, size=(48, 40), fmt="PNG") for i, n in enumerate(["baby", "bird"])}
    filename, data = stand_in_archive("set5", images)
    server.add(f"/{filename}", data)
    monkeypatch.setitem(fetcher.DATASETS, "set5", {**fetcher.DATASETS["set5"], "sha256": sha(data)})
    assert fetcher.main(["dataset", "set5", "--out", str(raw), "--base-url", server.url("/"), "-q"]) == 0
    pairs, scale = flow.evaluation_pairs(raw / "set5", 4)
    assert [name for name, _, _ in pairs] == ["baby.png", "bird.png"] and scale == 4


def test_registry_hash_mismatch_is_a_clear_error_and_leaves_nothing(server, raw, retry, monkeypatch, caplog):
    filename, data = stand_in_archive("set14", {"a.png": image_bytes(220, fmt="PNG")})
    server.add(f"/{filename}", data)
    monkeypatch.setitem(fetcher.DATASETS, "set14", {**fetcher.DATASETS["set14"], "sha256": "ab" * 32})
    with caplog.at_level(logging.WARNING, logger="fetcher"):  # whatever logging state the tests before left
        status = fetcher.main(["dataset", "set14", "--out", str(raw), "--base-url", server.url("/"), "-q"])
    assert status == 1
    assert f"sha256 mismatch for {filename} (expected {'ab' * 32}, got {sha(data)}); the download was deleted" \
        in caplog.text
    assert not [p for p in raw.rglob("*") if p.is_file()]  # no archive, no part, no images, no manifest

    monkeypatch.setitem(fetcher.DATASETS, "urban100", {**fetcher.DATASETS["urban100"], "md5": "0" * 32})
    filename, data = stand_in_archive("urban100", {"a.png": image_bytes(221, fmt="PNG")})
    server.add(f"/{filename}", data)
    summary = fetcher.fetch_dataset("urban100", raw, base_url=server.url("/"), retry=retry, progress=False)
    assert summary.fetched == 0 and summary.failed[0][1].startswith(f"md5 mismatch for {filename}")
    assert not [p for p in raw.rglob("*") if p.is_file()]


def test_unpublished_checksum_is_reported_as_not_verified(server, raw, retry, monkeypatch, caplog):
    filename, data = stand_in_archive("bsd100", {"3096.png": image_bytes(230, fmt="PNG")})
    server.add(f"/{filename}", data)
    assert fetcher.DATASETS["bsd100"]["sha256"] is None
    with caplog.at_level(logging.WARNING, logger="fetcher"):
        summary = fetcher.fetch_dataset("bsd100", raw, base_url=server.url("/"), retry=retry, progress=False)
    assert summary.fetched == 1
    assert f"{filename}: sha256 {sha(data)} (not verified" in caplog.text
    record = json.loads((raw / ".downloads" / f"{filename}.done.json").read_text())
    assert (record["sha256"], record["verified_by"]) == (sha(data), None)


def test_registry_download_cut_short_extracts_nothing_and_resumes(server, raw, retry, monkeypatch):
    images = {f"n{i}.png": noise_png(240 + i) for i in range(2)}
    filename, data = stand_in_archive("set5", images)
    server.add(f"/{filename}", data)
    monkeypatch.setitem(fetcher.DATASETS, "set5", {**fetcher.DATASETS["set5"], "sha256": sha(data)})
    server.fault(f"/{filename}", {"drop_after": len(data) // 3})
    once = fetcher.RetryPolicy(retries=0, sleep=retry.sleep)
    cut = fetcher.fetch_dataset("set5", raw, base_url=server.url("/"), retry=once, progress=False)
    assert cut.fetched == 0 and "gave up after 1 try" in cut.failed[0][1]
    assert not (raw / "set5").exists() and not (raw / "manifest.jsonl").exists()  # nothing half-extracted
    kept = (raw / ".downloads" / f"{filename}.part").stat().st_size
    assert kept == len(data) // 3

    whole = fetcher.fetch_dataset("set5", raw, base_url=server.url("/"), retry=retry, progress=False)
    assert whole.ok and whole.fetched == 2
    assert server.requests(f"/{filename}")[-1]["headers"]["Range"] == f"bytes={kept}-"
    assert sorted(p.name for p in (raw / "set5").iterdir()) == sorted(images)


def test_oversized_members_are_refused(server, raw, retry):
    big, small = noise_png(250), image_bytes(251, fmt="PNG")
    server.add("/mixed.tar.gz", make_tar({"mixed/big.png": big, "mixed/small.png": small}))
    summary = fetcher.fetch_archive(server.url("/mixed.tar.gz"), raw, retry=retry, progress=False,
                                    max_member_bytes=len(big) - 1)
    assert summary.fetched == 1
    assert [(item, reason.split(" (")[0]) for item, reason in summary.failed] == [("mixed/big.png",
                                                                                   "member too large")]
    assert sorted(p.name for p in (raw / "mixed/mixed").iterdir()) == ["small.png"]


def test_extraction_stops_before_the_disk_fills(server, raw, retry, monkeypatch):
    server.add("/set.zip", make_zip({f"{i}.png": image_bytes(260 + i, fmt="PNG") for i in range(3)}))
    monkeypatch.setattr(fetcher, "DISK_RESERVE_BYTES", shutil.disk_usage(raw.parent).free * 4)
    summary = fetcher.fetch_archive(server.url("/set.zip"), raw, retry=retry, progress=False)
    assert summary.fetched == 0 and len(summary.failed) == 1 and "disk nearly full" in summary.failed[0][1]
    assert not (raw / ".downloads/set.zip.done.json").exists()  # incomplete: the next run extracts again


def test_safe_member_path():
    assert fetcher.safe_member_path("./a//b/c.jpg").as_posix() == "a/b/c.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/x.jpg", "C:/x.jpg", "a\\..\\..\\x.jpg", "./"):
        with pytest.raises(fetcher.FetchError, match="unsafe member"):
            fetcher.safe_member_path(bad)


# ----------------------------------------------------------------------------- local folders


@pytest.fixture
def wallpapers(tmp_path):
    """A folder tree like a wallpaper package: nested images, a duplicate, junk, a broken file."""
    src = tmp_path / "backgrounds"
    (src / "nature/hd").mkdir(parents=True)
    (src / ".thumbnails").mkdir()
    files = {"sky.jpg": image_bytes(1), "nature/lake.png": image_bytes(2, fmt="PNG"),
             "nature/hd/forest.JPG": image_bytes(3), "nature/hd/sky-copy.jpg": image_bytes(1),
             "nature/readme.txt": b"not a usable image", "nature/broken.jpg": b"<html>oops</html>",
             ".thumbnails/sky.png": image_bytes(4, fmt="PNG")}
    for name, body in files.items():
        (src / name).write_bytes(body)
    return src


def test_local_folder_is_copied_recursively_with_dedup(wallpapers, raw):
    summary = fetcher.fetch_local(wallpapers, raw, progress=False)
    assert (summary.fetched, summary.duplicates) == (3, 1)
    assert [(Path(item).name, reason.split(" (")[0]) for item, reason in summary.failed] == [
        ("broken.jpg", "not a usable image")]
    paths = sorted(e["path"] for e in manifest_lines(raw))
    assert paths == ["local/backgrounds/nature/hd/forest.JPG", "local/backgrounds/nature/lake.png",
                     "local/backgrounds/sky.jpg"]  # the first copy in folder order is the one kept
    for entry in manifest_lines(raw):
        assert entry["source"] == "local" and Path(entry["origin"]).read_bytes() == (raw / entry["path"]).read_bytes()


def test_local_rerun_reads_nothing_and_new_files_are_picked_up(wallpapers, raw, monkeypatch):
    fetcher.fetch_local(wallpapers, raw, progress=False)
    (wallpapers / "nature/broken.jpg").unlink()
    (wallpapers / "new.png").write_bytes(image_bytes(5, fmt="PNG"))

    copied = []
    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda a, b: copied.append(Path(a).name) or real_copy(a, b))
    summary = fetcher.fetch_local(wallpapers, raw, progress=False)
    assert (summary.fetched, summary.skipped, summary.ok) == (1, 4, True)
    assert copied == ["new.png"]

    changed = image_bytes(6, size=(40, 30))  # a source file replaced by another picture
    (wallpapers / "nature/lake.png").write_bytes(changed)
    assert fetcher.fetch_local(wallpapers, raw, progress=False).fetched == 1
    lines = manifest_lines(raw)
    assert len(lines) == len({e["path"] for e in lines}) == 4  # one line per path, the new one
    lake = next(e for e in lines if e["path"].endswith("lake.png"))
    assert lake["sha256"] == sha(changed) and (raw / lake["path"]).read_bytes() == changed


def test_local_ignores_the_output_folder_inside_the_source(wallpapers):
    raw = wallpapers / "raw"
    first = fetcher.fetch_local(wallpapers, raw, progress=False)
    assert (first.fetched, first.duplicates, len(first.failed)) == (3, 1, 1)
    paths = sorted(e["path"] for e in manifest_lines(raw))
    assert paths == ["local/backgrounds/nature/hd/forest.JPG", "local/backgrounds/nature/lake.png",
                     "local/backgrounds/sky.jpg"]  # nothing from backgrounds/raw/ itself
    assert not [e for e in manifest_lines(raw) if Path(e["origin"]).is_relative_to(raw)]

    lines_before = (raw / "manifest.jsonl").read_text()
    again = fetcher.fetch_local(wallpapers, raw, progress=False)
    assert (again.fetched, again.duplicates, again.skipped) == (0, 0, 4)  # 3 copies + the known duplicate
    assert [Path(item).name for item, _ in again.failed] == ["broken.jpg"]  # the copies in raw/ are not sources
    assert (raw / "manifest.jsonl").read_text() == lines_before
    assert not (raw / "local/backgrounds/raw").exists()


def test_local_cli_and_missing_folder(wallpapers, raw, tmp_path, capsys):
    (wallpapers / "nature/broken.jpg").unlink()
    assert fetcher.main(["local", str(wallpapers), "--out", str(raw), "--name", "mate", "-q"]) == 0
    assert "fetched 3" in capsys.readouterr().out and (raw / "local/mate/sky.jpg").is_file()
    assert fetcher.main(["local", str(tmp_path / "nowhere"), "--out", str(raw)]) == 1


# ----------------------------------------------------------------------------- small pieces


def test_verify_image_accepts_images_and_refuses_the_rest(tmp_path):
    good, html, empty, cut = (tmp_path / n for n in ("good.png", "page.jpg", "empty.jpg", "cut.png"))
    good.write_bytes(image_bytes(1, fmt="PNG"))
    html.write_bytes(b"<!doctype html><title>404</title>")
    empty.write_bytes(b"")
    cut.write_bytes(noise_png(1)[:5000])
    assert fetcher.verify_image(good) == ("PNG", 24, 16)
    for bad in (html, empty, cut):
        with pytest.raises(fetcher.FetchError, match="not a usable image"):
            fetcher.verify_image(bad)


def test_retry_after_parsing_and_backoff():
    assert fetcher.parse_retry_after("7") == 7.0
    assert fetcher.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    assert fetcher.parse_retry_after("soon") is None and fetcher.parse_retry_after(None) is None
    policy = fetcher.RetryPolicy(backoff=1.0, backoff_max=10.0)
    for attempt, cap in ((0, 1.0), (2, 4.0), (6, 10.0)):
        delays = [policy.delay(attempt) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays) and len(set(delays)) > 1  # jittered


def test_manifest_appends_after_a_torn_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"path": "a.jpg", "sha256": "aa", "bytes": 1}\n{"path": "b.j')
    assert [e["path"] for e in fetcher.read_manifest(tmp_path)] == ["a.jpg"]
    fetcher._append_jsonl(tmp_path / "manifest.jsonl", {"path": "c.jpg", "sha256": "cc", "bytes": 1})
    assert [e["path"] for e in fetcher.read_manifest(tmp_path)] == ["a.jpg", "c.jpg"]
    assert os.path.getsize(tmp_path / "manifest.jsonl") > 0


# ----------------------------------------------------------------------------- Debian packages


def photo_bytes(seed: int, size: tuple[int, int], fmt: str = "JPEG", grey: bool = False) -> bytes:
    """A photo-like image: many colours and fine detail at every scale."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size[1] // 4, size[0] // 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    (img.convert("L") if grey else img).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def drawn_bytes(size: tuple[int, int], gradient: bool = False) -> bytes:
    """A rendered image: flat shapes in three colours, or a smooth gradient."""
    if gradient:
        x = np.linspace(0, 255, size[0])[None, :, None]
        y = np.linspace(0, 255, size[1])[:, None, None]
        pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    else:
        pixels = np.full((size[1], size[0], 3), (20, 60, 140), np.uint8)
        pixels[size[1] // 4: size[1] // 2, size[0] // 5: size[0] // 2] = (250, 200, 0)
        pixels[size[1] // 2:, size[0] // 2:] = (240, 240, 240)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


DEP5 = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: test-backgrounds
License: GPL-2+

Files: *
Copyright: 2019 Test Artists
License: GPL-2+
 This program is free software; you can redistribute it ...
 .
 On Debian systems, see /usr/share/common-licenses/GPL-2.

Files: backgrounds/photos/*
Copyright: 2020 Jane Photographer
License: CC-BY-SA-4.0
 Attribution-ShareAlike 4.0 International
"""


def ar_archive(members: dict[str, bytes]) -> bytes:
    """An ar archive (the container of a .deb), built here byte by byte."""
    out = bytearray(b"!<arch>\n")
    for name, data in members.items():
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def tar_bytes(members: dict[str, bytes], compression: str) -> bytes:
    return make_tar(members, compression=compression)


def make_deb(path: Path, package: str, files: dict[str, bytes], *, copyright: str | None = DEP5,
             version: str = "1.2-3", compression: str = "xz") -> Path:
    """A tiny .deb: debian-binary, control.tar.gz (control), data.tar.xz/.gz (files and copyright)."""
    control = (f"Package: {package}\nVersion: {version}\nArchitecture: all\nMaintainer: T <t@example.org>\n"
               f"Description: test images\n").encode()
    data = {f"./{name}": body for name, body in files.items()}
    if copyright is not None:
        data[f"./usr/share/doc/{package}/copyright"] = copyright.encode()
    path.write_bytes(ar_archive({"debian-binary": b"2.0\n",
                                 "control.tar.gz": tar_bytes({"./control": control}, "gz"),
                                 f"data.tar.{compression}": tar_bytes(data, compression)}))
    return path


@pytest.fixture
def deb_files():
    """The images of a wallpaper-like package: a photo, two drawings, a small photo, a vector, a text file."""
    return {"usr/share/backgrounds/photos/lake.jpg": photo_bytes(1, (640, 560)),
            "usr/share/backgrounds/art/shapes.png": drawn_bytes((800, 600)),
            "usr/share/backgrounds/art/gradient.png": drawn_bytes((800, 600), gradient=True),
            "usr/share/pixmaps/small.jpg": photo_bytes(2, (300, 200)),
            "usr/share/backgrounds/art/logo.svg": b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            "usr/share/doc/test-backgrounds/README": b"hello"}


def test_debian_deb_images_with_package_version_and_licence(tmp_path, raw, deb_files, capsys):
    deb = make_deb(tmp_path / "test-backgrounds_1.2-3_all.deb", "test-backgrounds", deb_files)
    assert fetcher.main(["debian", "--deb", str(deb), "--out", str(raw), "-q"]) == 0
    assert "fetched 4" in capsys.readouterr().out
    entries = {e["path"].removeprefix("debian/test-backgrounds/"): e for e in manifest_lines(raw)}
    assert set(entries) == {n for n in deb_files if n.endswith((".jpg", ".png"))}  # no SVG, no README
    for member, entry in entries.items():
        assert (entry["source"], entry["package"], entry["version"]) == ("debian", "test-backgrounds", "1.2-3")
        assert entry["sha256"] == sha(deb_files[member]) and entry["bytes"] == len(deb_files[member])
        assert (raw / entry["path"]).read_bytes() == deb_files[member]
    lake = entries["usr/share/backgrounds/photos/lake.jpg"]
    assert (lake["license"], lake["attribution"], lake["license_from"]) == ("CC-BY-SA-4.0", "2020 Jane Photographer",
                                                                           "files")
    assert entries["usr/share/pixmaps/small.jpg"]["license"] == "GPL-2+"
    assert {m: e["kind"] for m, e in entries.items()} == {
        "usr/share/backgrounds/photos/lake.jpg": "photo", "usr/share/backgrounds/art/shapes.png": "drawn",
        "usr/share/backgrounds/art/gradient.png": "drawn", "usr/share/pixmaps/small.jpg": "photo"}

    again = fetcher.fetch_debian(debs=[deb], out_dir=raw, progress=False)
    assert (again.fetched, again.skipped, again.left_out, again.ok) == (0, 4, 1, True)  # the SVG, again
    assert len(manifest_lines(raw)) == 4


def test_debian_photos_only_and_include(tmp_path, raw, deb_files):
    deb = make_deb(tmp_path / "bg.deb", "test-backgrounds", deb_files, compression="gz")
    summary = fetcher.fetch_debian(debs=[deb], out_dir=raw, photos_only=True, progress=False)
    assert (summary.fetched, summary.left_out, summary.ok) == (1, 4, True)  # shapes, gradient, small, svg
    assert [e["path"] for e in manifest_lines(raw)] == ["debian/test-backgrounds/usr/share/backgrounds/photos/lake.jpg"]

    other = tmp_path / "raw2"
    assert fetcher.main(["debian", "--deb", str(deb), "--out", str(other), "--include", "usr/share/pixmaps/*",
                         "-q"]) == 0
    assert [e["path"] for e in manifest_lines(other)] == ["debian/test-backgrounds/usr/share/pixmaps/small.jpg"]
    assert fetcher.main(["debian", "--deb", str(deb), "--out", str(other), "--include", "usr/share/pixmaps/*",
                         "--photos-only", "--min-side", "200", "-q"]) == 0  # small is a photo of 300x200


def test_debian_reserved_package_needs_allow_eval(tmp_path, raw, deb_files, caplog):
    never = [sys.executable, "-c", "raise SystemExit('apt-get must not run')"]
    assert fetcher.main(["debian", "ukui-wallpapers", "--out", str(raw), "--apt-get", " ".join(never)]) == 1
    assert "ukui-wallpapers is reserved for evaluation" in caplog.text and "--allow-eval" in caplog.text
    assert "must not run" not in caplog.text

    deb = make_deb(tmp_path / "renamed.deb", "ukui-wallpapers", deb_files)  # the control file says who it is
    refused = fetcher.fetch_debian(debs=[deb], out_dir=raw, progress=False)
    assert refused.fetched == 0 and "reserved for evaluation" in refused.failed[0][1]
    assert not (raw / "debian").exists() and not (raw / "manifest.jsonl").exists()

    allowed = fetcher.fetch_debian(debs=[deb], out_dir=raw, allow_eval=True, progress=False)
    assert allowed.fetched == 4 and {e["reserved"] for e in manifest_lines(raw)} == {"reserved for evaluation"}


@pytest.mark.parametrize("copyright_text, reason", [
    (None, "licence cannot be stated (no usr/share/doc/pkg/copyright file)"),
    ("This package was debianized by someone.\nIt is GPL.\n",
     "licence cannot be stated (the copyright file is not machine-readable (no DEP-5 Format: header))")])
def test_debian_package_without_a_statable_licence_is_skipped(tmp_path, raw, deb_files, copyright_text, reason):
    deb = make_deb(tmp_path / "pkg.deb", "pkg", deb_files, copyright=copyright_text, compression="gz")
    good = make_deb(tmp_path / "good.deb", "good", {"usr/share/backgrounds/photos/a.jpg": photo_bytes(5, (600, 600))})
    summary = fetcher.fetch_debian(debs=[deb, good], out_dir=raw, progress=False)
    assert summary.failed == [("pkg.deb", reason)] and summary.fetched == 1
    assert not (raw / "debian/pkg").exists()  # nothing of the refused package was written
    assert not [p for p in raw.rglob("*.part")]


def test_debian_package_without_images_is_reported(tmp_path, raw, capsys):
    deb = make_deb(tmp_path / "fonts.deb", "fonts-x", {"usr/share/fonts/x.ttf": b"\0\1\0\0",
                                                         "usr/share/icons/x.svg": b"<svg/>"})
    assert fetcher.main(["debian", "--deb", str(deb), "--out", str(raw), "-q"]) == 1
    assert "failed 1 (no raster images in fonts-x: 1)" in capsys.readouterr().out
    assert not (raw / "debian").exists()


def test_debian_download_through_apt_get(tmp_path, raw, deb_files):
    deb = make_deb(tmp_path / "built.deb", "test-backgrounds", deb_files)
    fake = tmp_path / "fake-apt-get.py"  # stands in for apt-get: `download NAME` leaves NAME_VERSION_all.deb
    fake.write_text("import shutil, sys\nassert sys.argv[1] == 'download'\n"
                    f"if sys.argv[2] != 'test-backgrounds':\n    sys.exit('E: Unable to locate package ' + sys.argv[2])\n"
                    f"shutil.copy({str(deb)!r}, sys.argv[2] + '_1.2-3_all.deb')\n")
    apt = [sys.executable, str(fake)]
    summary = fetcher.fetch_debian(["test-backgrounds", "no-such-pkg"], raw, apt_get=apt, progress=False)
    assert summary.fetched == 4
    assert summary.failed == [("no-such-pkg", "apt-get download no-such-pkg failed: E: Unable to locate package "
                                              "no-such-pkg")]
    assert {e["deb"] for e in manifest_lines(raw)} == {"test-backgrounds_1.2-3_all.deb"}
    assert not list((raw / ".downloads").iterdir())  # the downloaded .deb and its unpacked tars are gone
    with pytest.raises(fetcher.FetchError, match="not a Debian package name"):
        fetcher.fetch_debian(["-oAPT::Get::Something=1"], raw, apt_get=apt, progress=False)


def test_debian_not_a_deb_is_a_clear_error(tmp_path, raw):
    junk = tmp_path / "junk.deb"
    junk.write_bytes(b"PK\3\4 not an ar archive")
    summary = fetcher.fetch_debian(debs=[junk], out_dir=raw, progress=False)
    assert summary.failed == [("junk.deb", "junk.deb: not a .deb (no ar archive header)")]


def test_dep5_licence_lookup():
    dep5 = fetcher.Dep5.parse(DEP5 + "\nFiles: debian/*\nLicence-note: x\nLicense: MIT\n")
    assert dep5.licence_for("usr/share/backgrounds/photos/lake.jpg") == ("CC-BY-SA-4.0", "2020 Jane Photographer",
                                                                        "files")
    assert dep5.licence_for("usr/share/pixmaps/a.png")[::2] == ("GPL-2+", "files")
    only_header = fetcher.Dep5.parse("Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
                                     "License: CC0-1.0\n\nFiles: src/*\nCopyright: x\nLicense: MIT\n")
    assert only_header.licence_for("usr/share/backgrounds/a.jpg") == ("CC0-1.0", None, "header")
    assert only_header.licence_for("usr/share/doc/src/a.jpg")[0] == "MIT"  # a tail matches src/*


def test_image_kind_tells_photos_from_drawings(tmp_path):
    cases = {"photo.jpg": (photo_bytes(3, (640, 480)), "photo"),
             "grey-photo.jpg": (photo_bytes(4, (640, 480), grey=True), "photo"),
             "shapes.png": (drawn_bytes((640, 480)), "drawn"),
             "gradient.png": (drawn_bytes((640, 480), gradient=True), "drawn")}
    for name, (body, kind) in cases.items():
        (tmp_path / name).write_bytes(body)
        assert fetcher.image_kind(tmp_path / name) == kind, name
    palette = Image.open(io.BytesIO(drawn_bytes((640, 480)))).convert("P")
    palette.info["transparency"] = b"\x80" + b"\xff" * 255  # partial alpha stays bytes; convert("RGB") warns
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fetcher.image_kind(tmp_path / "palette.png") == "drawn"


def test_check_archive_checks_every_published_digest(tmp_path):
    archive = tmp_path / "val_256.tar"
    archive.write_bytes(b"stand-in archive bytes")
    data = archive.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    assert fetcher.check_archive(archive, sha256=sha(data), md5=md5) == sha(data)
    with pytest.raises(fetcher.FetchError, match=f"md5 mismatch for val_256.tar \\(expected {'0' * 32}, got {md5}\\)"):
        fetcher.check_archive(archive, sha256=sha(data), md5="0" * 32)
    assert not archive.exists()  # a download that fails its check is not kept
