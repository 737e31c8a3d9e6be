"""Benchmark memory over a long stream: does upscale.py's resident memory stay flat for 10 minutes of video?

    python benchmarks/bench_stream_memory.py                     # 10 minutes of 24 frames/s, stream model
    python benchmarks/bench_stream_memory.py --minutes 1 --model video --size 160x90   # a quick look
    python benchmarks/bench_stream_memory.py --size 640x360 --minutes 2 -- --int8       # more upscale.py arguments

A clip of --minutes of moving gradients (and a tone) is generated at --size, then `upscale.py CLIP -o - --model
M` runs as a user would run it into a player, in a child process whose YUV4MPEG2 output this script reads and
throws away. The child's resident memory (VmRSS) is sampled at every 1% of the frames. Printed: the memory
after the first tenth of the stream (start-up, model, queues filled) and at each further tenth, the growth from
there to the end, and that growth per minute of stream, beside the child's own summary line. Memory that grows
with the stream's length shows as a steady climb; a flat run stays within a few MiB. Frame size changes what a
frame costs, not whether memory leaks per frame, so a small size lets 10 minutes run in a few minutes.
--help answers without loading Keras.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# -----------------------------------------------------------------------------
# configuration
MINUTES = 10.0
FPS = 24
SIZE = "160x90"  # LR width x height of the generated stream
MODEL = "stream"
SAMPLES = 100  # memory samples over the stream (one per 1% of its frames)
# -----------------------------------------------------------------------------


def run(minutes, model, size, fps, extra=()):
    """Generate the clip, upscale it into this process through a pipe, and print the memory over the stream."""
    from bench_upscale import current_rss, load_average, make_clip

    width, height = size
    frames = round(minutes * 60 * fps)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        clip = make_clip(Path(tmp) / "stream.mp4", frames, size=size, fps=fps)
        print(f"bench_stream_memory: {minutes:g} min of {width}x{height} at {fps} frames/s ({frames} frames) generated "
              f"in {time.perf_counter() - started:.0f} s; upscale.py --model {model} {' '.join(extra)} into a pipe "
              f"({load_average()})",
              flush=True)
        command = [sys.executable, str(ROOT / "upscale.py"), str(clip), "-o", "-", "--model", model, "--no-progress",
                   *extra]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
        samples, every = {}, max(1, frames // SAMPLES)
        header = child.stdout.readline()
        fields = {f[:1]: f[1:] for f in header.split()[1:]}
        out_w, out_h = int(fields[b"W"]), int(fields[b"H"])

        def sample(count):
            if count % every == 0 or count == frames:
                samples[count] = current_rss(child.pid)

        started = time.perf_counter()
        done = read_frames_after_header(child.stdout, out_w, out_h, sample)
        seconds = time.perf_counter() - started
        summary = child.stderr.read().decode(errors="replace").strip().splitlines()
        child.wait()
    report(samples, done, frames, fps, seconds, out_w, out_h, summary, child.returncode)
    return 0 if child.returncode == 0 and done == frames else 1


def read_frames_after_header(stream, width, height, on_frame):
    """Read a YUV4MPEG2 4:2:0 stream, its header already read, to its end, calling on_frame(count) after each
    whole frame; returns the count."""
    size, count = width * height * 3 // 2, 0
    while True:
        if not stream.readline():
            return count
        if len(stream.read(size)) < size:
            return count
        count += 1
        on_frame(count)


def report(samples, done, frames, fps, seconds, out_w, out_h, summary, returncode):
    """Print the memory at each tenth of the stream, and the growth after the first tenth."""
    mib = 2**20
    counts = sorted(samples)
    tenth = [c for c in counts if c >= frames // 10][0]
    print(f"  {done} of {frames} frames of {out_w}x{out_h} read in {seconds:.0f} s ({done / seconds:.1f} frames/s); "
          f"exit status {returncode}")
    print("  stream time  resident memory")
    for k in range(1, 11):
        count = [c for c in counts if c >= k * frames // 10][0]
        print(f"  {count / fps / 60:8.1f} min  {samples[count] / mib:8.1f} MiB")
    growth = (samples[counts[-1]] - samples[tenth]) / mib
    span = (counts[-1] - tenth) / fps / 60
    peak = max(samples.values()) / mib
    print(f"  after the first tenth: {growth:+.1f} MiB over {span:.1f} min of stream ({growth / span:+.2f} MiB a minute); "
          f"peak {peak:.1f} MiB")
    if summary:
        print(f"  upscale.py: {summary[-1]}")


def parse_size(text):
    width, _, height = text.partition("x")
    return int(width), int(height)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=MINUTES, help="length of the generated stream")
    p.add_argument("--model", default=MODEL, help="shipped model name or .keras file")
    p.add_argument("--size", type=parse_size, default=parse_size(SIZE), help="LR frame size, WxH")
    p.add_argument("--fps", type=int, default=FPS)
    p.add_argument("upscale_args", nargs="*", help="after --: more arguments for upscale.py (e.g. -- --int8)")
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be above 0")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return run(args.minutes, args.model, args.size, args.fps, args.upscale_args)


if __name__ == "__main__":
    sys.exit(main())
