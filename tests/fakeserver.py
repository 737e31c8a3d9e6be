"""A real HTTP server on 127.0.0.1 (port 0) for fetcher's tests and benchmark.

It plays an image host (with HTTP Range support) and the Pixabay API, and misbehaves on request:
queue faults for a path with `server.fault(path, {...}, ...)`; each request of that path takes the next one.

    {"status": 500}                                  an error status (headers= adds headers, e.g. Retry-After)
    {"drop_after": N}                                send N body bytes (of a full Content-Length), then hang up
    {"ignore_range": True}                           answer 200 with the whole file even to a Range request
    {"bad_range": True}                              answer 206 with a Content-Range that starts at 0
    {"sleep": S}                                     wait S seconds before answering (client timeouts)
    {"trickle": (N, S)}                              send the body N bytes at a time, S seconds apart
    {"body": b"...", "content_type": "text/html"}    answer 200 with this body instead of the file
"""

import io
import json
import re
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image


def image_bytes(seed: int, size: tuple[int, int] = (24, 16), fmt: str = "JPEG") -> bytes:
    """A small, distinct image (random smooth colours) encoded as fmt."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise_png(seed: int, size: int = 160) -> bytes:
    """A PNG that does not compress (about 3 bytes a pixel): big enough to drop a connection halfway."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


class FakePixabay:
    """The Pixabay API at /api/: key check, pages (per_page 3..200), the 500-hit cap, rate-limit headers."""

    def __init__(self, server: "FakeServer", key: str, count: int = 7, remaining: int = 100, reset: str = "0.05"):
        self.key, self.remaining, self.reset = key, remaining, reset
        self.lock = threading.Lock()
        self.hits = []
        for i in range(count):
            image_id = 1000 + i
            path = f"/get/g{image_id:06d}_1280.jpg"
            server.add(path, image_bytes(image_id))
            self.hits.append({
                "id": image_id, "pageURL": f"https://pixabay.com/photos/test-{image_id}/", "type": "photo",
                "tags": "test, photo", "previewURL": server.url(f"/get/{image_id}_150.jpg"),
                "webformatURL": server.url(f"/get/{image_id}_640.jpg"), "largeImageURL": server.url(path),
                "imageWidth": 24, "imageHeight": 16, "user_id": 50 + i, "user": f"photographer{i}"})

    def respond(self, query: dict) -> tuple[int, dict, bytes]:
        """Status, headers and body of an API request."""
        with self.lock:
            self.remaining = max(0, self.remaining - 1)
        headers = {"X-RateLimit-Limit": "100", "X-RateLimit-Remaining": str(self.remaining),
                   "X-RateLimit-Reset": self.reset}
        if query.get("key", [""])[0] != self.key:
            return 400, headers, b"[ERROR 400] Invalid or missing API key"
        per_page, page = int(query.get("per_page", ["20"])[0]), int(query.get("page", ["1"])[0])
        if not 3 <= per_page <= 200:
            return 400, headers, b'[ERROR 400] "per_page" is out of valid range.'
        total_hits = min(len(self.hits), 500)
        if page < 1 or (page - 1) * per_page >= max(total_hits, 1):
            return 400, headers, b'[ERROR 400] "page" is out of valid range.'
        hits = self.hits[(page - 1) * per_page: min(page * per_page, total_hits)]
        body = json.dumps({"total": len(self.hits), "totalHits": total_hits, "hits": hits}).encode()
        return 200, {**headers, "Content-Type": "application/json"}, body


class FakeServer:
    """ThreadingHTTPServer on 127.0.0.1:0 serving registered files, faults and (optionally) FakePixabay."""

    def __init__(self, latency: float = 0.0):
        self.latency = latency
        self.files: dict[str, tuple[bytes, str]] = {}
        self.faults: dict[str, deque] = defaultdict(deque)
        self.log: list[dict] = []
        self.lock = threading.Lock()
        self.pixabay: FakePixabay | None = None
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.fake = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def url(self, path: str) -> str:
        """Absolute URL of a path on this server."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def add(self, path: str, body: bytes, content_type: str = "image/jpeg") -> bytes:
        """Serve body at path; returns body."""
        self.files[path] = (body, content_type)
        return body

    def fault(self, path: str, *faults: dict) -> None:
        """Queue faults for the next requests of path."""
        self.faults[path].extend(faults)

    def requests(self, path: str | None = None) -> list[dict]:
        """Requests seen so far (of path, if given): dicts of path, query, headers."""
        with self.lock:
            return [r for r in self.log if path is None or r["path"] == path]

    def next_fault(self, path: str) -> dict:
        with self.lock:
            return self.faults[path].popleft() if self.faults[path] else {}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real hosts do
    disable_nagle_algorithm = True  # else headers and body, written apart, wait ~40 ms for a delayed ACK

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake
        parts = urlsplit(self.path)
        with fake.lock:
            fake.log.append({"path": parts.path, "query": parse_qs(parts.query), "headers": dict(self.headers)})
        if fake.latency:
            time.sleep(fake.latency)
        fault = fake.next_fault(parts.path)
        if fault.get("sleep"):
            time.sleep(fault["sleep"])
        if "status" in fault:
            return self._send(fault["status"], fault.get("headers", {}), b"server trouble", "text/plain")
        if "body" in fault:
            return self._send(200, {}, fault["body"], fault.get("content_type", "text/html"))
        if parts.path == "/api/" and fake.pixabay is not None:
            status, headers, body = fake.pixabay.respond(parse_qs(parts.query))
            return self._send(status, headers, body, headers.pop("Content-Type", "text/plain"))
        if parts.path not in fake.files:
            return self._send(404, {}, b"<html><body>404 Not Found</body></html>", "text/html")
        body, content_type = fake.files[parts.path]
        self._serve_file(body, content_type, fault)

    def _serve_file(self, body: bytes, content_type: str, fault: dict) -> None:
        start, status, headers = 0, 200, {"Accept-Ranges": "bytes"}
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not fault.get("ignore_range"):
            start = int(match.group(1))
            if start >= len(body):
                return self._send(416, {"Content-Range": f"bytes */{len(body)}"}, b"", "text/plain")
            status = 206
            shown = 0 if fault.get("bad_range") else start
            headers["Content-Range"] = f"bytes {shown}-{len(body) - 1}/{len(body)}"
        self._send(status, headers, body[start:], content_type, drop_after=fault.get("drop_after"),
                   trickle=fault.get("trickle"))

    def _send(self, status: int, headers: dict, body: bytes, content_type: str, drop_after: int | None = None,
              trickle: tuple[int, float] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if drop_after is not None:
            self.wfile.write(body[:drop_after])
            self.wfile.flush()
            self.close_connection = True  # hang up mid-body: the client sees fewer bytes than promised
            return
        step, pause = trickle or (len(body) or 1, 0.0)
        try:
            for offset in range(0, len(body), step):
                self.wfile.write(body[offset: offset + step])
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):  # the client went away (a test stopped it)
            self.close_connection = True
