"""Benchmark upscale.py: tiled vs whole-image speed, peak memory, and video frames per second.

    python benchmarks/bench_upscale.py             # the full run (several minutes on 2 CPU cores)
    python benchmarks/bench_upscale.py --quick     # small sizes: a smoke test of the script itself

Prints, in one run:
1. output megapixels/s of tiled inference (automatic tiles, overlap and batch) against whole-image inference
   (the model alone on the whole image), on the same image in the same process; target tiled >= 0.85x;
   plus tiled with --tile 240 (more memory, less recomputed overlap): the speed/memory trade-off;
2. peak memory (VmHWM of a fresh subprocess per case) of a 960x540 -> x4 upscale, tiled (automatic, and
   --tile 240), against whole-image inference at the largest size that fits here (480x270: whole-image
   960x540 with the 16x64 SRResNet needs > 22 GB and was killed by the OOM killer), plus the bare runtime
   (TensorFlow and the model loaded, nothing upscaled) for reference; target tiled <= 1.5 GB;
3. frames/s of a 640x360 -> x4 video with the light "fast" preset, end to end (decode, upscale, encode,
   audio copy): ../shared/data/clips/big_buck_bunny.mp4 when present, else a generated clip.
Speed and memory do not depend on the weights, so the models are freshly built (random weights) unless
--model is given.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# -----------------------------------------------------------------------------
# configuration
PRESET = "srresnet"  # the model for parts 1 and 2: the paper's 16 blocks x 64 filters
VIDEO_PRESET = "fast"  # the light preset, for part 3
SPEED_SIZE = (480, 270)  # LR width, height for part 1 (whole-image inference must fit in memory)
MEMORY_SIZE = (960, 540)  # part 2, tiled
WHOLE_MEMORY_SIZE = (480, 270)  # part 2, whole-image (960x540 does not fit: > 22 GB)
BIG_TILE = 240  # the trade-off row: tiles of up to 240x240 LR pixels (about 1 GiB of SRResNet activations)
REPEATS = 3  # timed runs per case in part 1 (after one warm-up run); the median is reported
VIDEO_FRAMES = 12  # frames of the clip upscaled in part 3 (half a second at 24 fps)
CLIP = ROOT.parent / "shared" / "data" / "clips" / "big_buck_bunny.mp4"
QUICK = dict(SPEED_SIZE=(160, 90), MEMORY_SIZE=(320, 180), WHOLE_MEMORY_SIZE=(160, 90), REPEATS=1, VIDEO_FRAMES=3)
# -----------------------------------------------------------------------------


def test_image(width, height):
    """A photo-like LR test image of any size: scikit-image's astronaut, resized."""
    from skimage import data

    from resizer import resize

    return resize(data.astronaut(), (width, height), "bicubic")


def build_model(preset, model_path=None):
    import upscale
    from generator import build_generator

    return upscale.load_model(model_path) if model_path else build_generator(scale=4, preset=preset)


def whole_image(model, rgb):
    """Whole-image inference: the model alone on the whole image, as uint8."""
    from resizer import to_float, to_uint8

    return to_uint8(np.clip(model.predict_on_batch(to_float(rgb)[None])[0], 0.0, 1.0))


def tiled(model, rgb, tile=None):
    import upscale

    return upscale.upscale_array(model, rgb, tile=tile)


def tiling(model, size, tile=None):
    """'N tiles of WxH, overlap O, Rx the pixels' for an image of size (width, height)."""
    import upscale

    overlap = upscale.auto_overlap(model)
    area = tile * tile if tile else upscale.auto_tile_pixels(model)
    tile_h, tile_w = upscale.plan_tiles(size[1], size[0], area, overlap)
    tiles = len(upscale.tile_starts(size[1], tile_h, overlap)) * len(upscale.tile_starts(size[0], tile_w, overlap))
    return (f"{tiles} tiles of {tile_w}x{tile_h}, overlap {overlap}, "
            f"{tiles * tile_h * tile_w / (size[0] * size[1]):.2f}x the pixels")


def median_seconds(fn, repeats):
    fn()  # warm-up: traces and compiles the predict function for this shape
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def interleaved_times(cases, repeats):
    """{name: (median wall s, median CPU s)}: one warm-up each, then the cases in turn, `repeats` rounds, so
    a change in the machine's load (teammates' jobs) hits them alike."""
    for fn in cases.values():
        fn()
    wall = {name: [] for name in cases}
    cpu = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
    return {name: (float(np.median(wall[name])), float(np.median(cpu[name]))) for name in cases}


def part1_speed(model, size, repeats):
    import upscale

    rgb = test_image(*size)
    scale = upscale.model_scale(model)
    out_mp = size[0] * size[1] * scale * scale / 1e6
    cases = {"whole image": lambda: whole_image(model, rgb), "tiled (auto)": lambda: tiled(model, rgb),
             f"tiled --tile {BIG_TILE}": lambda: tiled(model, rgb, BIG_TILE)}
    times = interleaved_times(cases, repeats)
    notes = {"tiled (auto)": tiling(model, size), f"tiled --tile {BIG_TILE}": tiling(model, size, BIG_TILE)}
    t_whole, c_whole = times["whole image"]
    print(f"1. speed, {size[0]}x{size[1]} -> x{scale} ({out_mp:.2f} output MP), median of {repeats} interleaved runs:")
    for name, (t, c) in times.items():
        ratio = "" if name == "whole image" else f"  {t_whole / t:.2f}x wall, {c_whole / c:.2f}x CPU of whole"
        print(f"   {name:16s}: {t:6.2f} s  {out_mp / t:6.3f} MP/s  (CPU {c:5.1f} s){ratio}")
        if name in notes:
            print(f"   {'':16s}  {notes[name]}")
    t_tiled, c_tiled = times["tiled (auto)"]
    print(f"   target tiled >= 0.85x whole: auto tiles {t_whole / t_tiled:.2f}x (wall) / {c_whole / c_tiled:.2f}x (CPU)")
    return t_whole / t_tiled


def child_memory(mode, width, height, preset, model_path):
    """Run in a subprocess: one upscale, then print this process's peak RSS and the time it took."""
    model = build_model(preset, model_path)
    rgb = test_image(width, height)
    start = time.perf_counter()
    if mode == "tiled":
        out = tiled(model, rgb)
    elif mode == "tiled-big":
        out = tiled(model, rgb, BIG_TILE)
    elif mode == "whole":
        out = whole_image(model, rgb)
    else:  # runtime only: a 16x16 image through the model, to load and trace everything
        out = whole_image(model, rgb[:16, :16])
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_bytes": peak_rss(), "seconds": seconds, "shape": list(out.shape)}))


def peak_rss():
    """This process's peak resident memory in bytes: VmHWM, which starts afresh at exec. (ru_maxrss does
    not: Linux carries the forking parent's high-water mark into the child, so a child of a big benchmark
    process would report the parent's peak.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_in_subprocess(mode, size, preset, model_path):
    cmd = [sys.executable, __file__, "--child", mode, str(size[0]), str(size[1]), "--preset", preset]
    if model_path:
        cmd += ["--model", str(model_path)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        return {"error": f"exit {result.returncode} " + (result.stderr.strip().splitlines() or [""])[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def part2_memory(preset, model_path, size, whole_size):
    print(f"2. peak memory (peak RSS, VmHWM, of a fresh process per case; {preset}):")
    rows = [("runtime only", "runtime", (16, 16)), (f"tiled {size[0]}x{size[1]}", "tiled", size),
            (f"tiled {size[0]}x{size[1]} --tile {BIG_TILE}", "tiled-big", size),
            (f"whole {whole_size[0]}x{whole_size[1]}", "whole", whole_size)]
    results = {}
    for label, mode, sz in rows:
        r = measure_in_subprocess(mode, sz, preset, model_path)
        results[label] = r
        if "error" in r:
            print(f"   {label:26s}: failed ({r['error']})")
        else:
            print(f"   {label:26s}: {r['peak_bytes'] / 2**30:6.2f} GiB  ({r['seconds']:.1f} s)")
    tiled_peak = results[rows[1][0]].get("peak_bytes")
    if tiled_peak:
        verdict = "met" if tiled_peak <= 1.5e9 else "NOT met"
        print(f"   tiled {size[0]}x{size[1]} peak {tiled_peak / 1e9:.2f} GB: target <= 1.5 GB {verdict}; whole-image "
              f"{size[0]}x{size[1]} was not run (> 22 GB with SRResNet, killed by the OOM killer)")
    return results


def make_clip(path, frames, size=(640, 360), fps=24):
    """A generated stand-in clip (moving gradients, AAC tone) when the shared one is absent."""
    import av

    width, height = size
    with av.open(str(path), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = width, height, "yuv420p"
        a = out.add_stream("aac", rate=44100)
        yy, xx = np.mgrid[0:height, 0:width]
        for k in range(frames):
            img = np.dstack([(xx + 4 * k) % 256, (yy + 2 * k) % 256, (xx + yy) % 256]).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = k, Fraction(1, fps)
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        n = int(44100 * frames / fps)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / 44100)).astype(np.float32)[None]
        for start in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp", layout="mono")
            af.sample_rate, af.pts = 44100, start
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    return path


def part3_video(frames, model_path):
    import upscale

    model = build_model(VIDEO_PRESET, model_path)
    with tempfile.TemporaryDirectory() as tmp:
        clip = CLIP if CLIP.is_file() else make_clip(Path(tmp) / "clip.mp4", frames)
        source = "big_buck_bunny.mp4 (shared data)" if clip == CLIP else "a generated 640x360 clip"
        upscale.upscale_array(model, test_image(640, 360))  # warm-up: trace the 640x360 shape once
        start = time.perf_counter()
        upscale.upscale_video_file(
            model, clip, Path(tmp) / "out.mp4", upscale=lambda rgb: upscale.upscale_array(model, rgb),
            video_options=dict(codec=None, crf=upscale.DEFAULT_CRF, preset=upscale.DEFAULT_PRESET,
                               pix_fmt=upscale.DEFAULT_PIX_FMT), max_frames=frames, progress=False)
        seconds = time.perf_counter() - start
        one = median_seconds(lambda: upscale.upscale_array(model, test_image(640, 360)), 1)
    print(f"3. video, 640x360 -> 2560x1440, preset {VIDEO_PRESET!r}, {frames} frames of {source}:")
    print(f"   end to end (decode, upscale, encode libx264 crf {upscale.DEFAULT_CRF}, copy audio): "
          f"{frames / seconds:.3f} frames/s ({seconds:.1f} s)")
    print(f"   model alone on one frame: {one:.2f} s ({1 / one:.3f} frames/s)")
    return frames / seconds


def backend_devices():
    """The devices the Keras backend computes on, in words."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return f"TensorFlow {tf.__version__}, " + ", ".join(d.device_type for d in tf.config.list_logical_devices())
    if keras.backend.backend() == "jax":
        import jax

        return f"JAX {jax.__version__}, " + ", ".join(d.device_kind for d in jax.devices())
    return keras.backend.backend()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    p.add_argument("--preset", default=PRESET, help="generator preset for parts 1-2")
    p.add_argument("--model", type=Path, default=None, help="a .keras generator instead of a fresh preset")
    p.add_argument("--skip-memory", action="store_true", help="leave out part 2 (host memory; on a GPU it says little)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "W", "H"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        mode, w, h = args.child
        child_memory(mode, int(w), int(h), args.preset, args.model)
        return 0
    cfg = dict(SPEED_SIZE=SPEED_SIZE, MEMORY_SIZE=MEMORY_SIZE, WHOLE_MEMORY_SIZE=WHOLE_MEMORY_SIZE,
               REPEATS=REPEATS, VIDEO_FRAMES=VIDEO_FRAMES)
    if args.quick:
        cfg.update(QUICK)
    import keras

    import upscale

    started = time.perf_counter()
    print(f"bench_upscale: {platform.machine()}, {os.cpu_count()} CPU cores, Keras {keras.__version__} on "
          f"{keras.backend.backend()} ({backend_devices()}); "
          f"model {args.model or args.preset + ' (random weights)'}; "
          f"memory budget {upscale.memory_budget() / 2**20:.0f} MiB")
    model = build_model(args.preset, args.model)
    ratio = part1_speed(model, cfg["SPEED_SIZE"], cfg["REPEATS"])
    del model
    if not args.skip_memory:
        part2_memory(args.preset, args.model, cfg["MEMORY_SIZE"], cfg["WHOLE_MEMORY_SIZE"])
    fps = part3_video(cfg["VIDEO_FRAMES"], None)
    print(f"bench_upscale: tiled/whole speed {ratio:.2f}x, video {fps:.3f} frames/s, "
          f"{time.perf_counter() - started:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
