"""Download throughput of fetcher.py: 1 worker vs the default workers, against a local server with latency.

    python benchmarks/bench_fetcher.py [--images 64] [--latency 0.05] [--workers 8]

A real HTTP server on 127.0.0.1 (tests/fakeserver.py) answers every request after an artificial delay,
standing in for a distant image host. Both runs fetch the same images into fresh folders in one process,
so the ratio compares like with like. Target: >= 4x with 8 workers.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fakeserver import FakeServer, image_bytes  # noqa: E402

import fetcher  # noqa: E402

IMAGES = 64
LATENCY = 0.05  # seconds per request
SIZE = (320, 240)  # pixels; ~10 KB JPEGs, so the latency dominates as it does for a far host


def images_per_second(server: FakeServer, urls: list[str], workers: int) -> tuple[float, fetcher.Summary]:
    """Fetch urls into a fresh RAW folder; returns (images per second, summary)."""
    with tempfile.TemporaryDirectory() as raw:
        started = time.perf_counter()
        summary = fetcher.fetch_urls(urls, raw, workers=workers, progress=False)
        seconds = time.perf_counter() - started
    if not summary.ok or summary.fetched != len(urls):
        raise SystemExit(f"benchmark run failed: {summary.line()}")
    return len(urls) / seconds, summary


def main(argv: list[str] | None = None) -> int:
    """Run both configurations and print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=IMAGES)
    parser.add_argument("--latency", type=float, default=LATENCY, help="seconds added to every request")
    parser.add_argument("--workers", type=int, default=fetcher.WORKERS)
    args = parser.parse_args(argv)

    with FakeServer(latency=args.latency) as server:
        urls = [server.url(f"/img/{i:04d}.jpg") for i in range(args.images)]
        for i, url in enumerate(urls):
            server.add(url.split(server.url(""), 1)[1], image_bytes(i, size=SIZE))
        single, _ = images_per_second(server, urls, 1)
        multi, summary = images_per_second(server, urls, args.workers)

    print(f"fetcher: {args.images} images, {args.latency * 1000:.0f} ms latency per request, 127.0.0.1")
    print(f"  1 worker : {single:7.1f} images/s")
    print(f"  {args.workers} workers: {multi:7.1f} images/s   ({summary.line()})")
    ratio = multi / single
    print(f"  speed-up : {ratio:.1f}x  (target >= 4x: {'met' if ratio >= 4 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
