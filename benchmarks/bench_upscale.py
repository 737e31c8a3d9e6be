"""Benchmark upscale.py: per model, frames/s of a 640x360 -> x4 video, model only and the whole path.

    python benchmarks/bench_upscale.py                    # the stream, video and PSNR models (minutes on 2 cores)
    python benchmarks/bench_upscale.py --models stream video --speed-only   # the real-time figures only
    python benchmarks/bench_upscale.py --models stream --speed-only --rounds 6  # steadier whole-path shares
    python benchmarks/bench_upscale.py --models gan       # another shipped model, a .keras file or a preset
    python benchmarks/bench_upscale.py --quick            # 2 frames, smaller Set5 crops: a smoke test
    python benchmarks/bench_upscale.py --models stream --speed-only --max-isa avx2   # as without AVX-512 (emulated)
    python benchmarks/bench_upscale.py --tiling           # the tiled-vs-whole speed and memory study instead

Prints the CPU's name and load (the machine may be shared, so absolute times drift; ratios of interleaved
runs much less), then per model, in one run, every figure also as a ratio against one measured in the same
run. A preset whose weights are not shipped yet (stream: weights/stream_x4.keras) is built untrained, and
says so: speed does not depend on the weights.
0. the CPU's peak GFLOP/s (benchmarks/peak.py: matmul and 3x3 conv, fp32 and bf16), measured first;
1. model-only frames/s of one 640x360 frame (upscale_array: tiles, blending and all) in fp32 and bf16 (a
   mixed_bfloat16 copy; only where the CPU has native bfloat16), each with and without XLA
   (upscale.compile_model, the CLI's --compile), with its share of the peak of its precision (the
   convolutions' FLOPs per frame, benchmarks/peak.py's generator_flops); the fastest is marked;
2. the whole path with that fastest case, threaded, on the first frames of ../shared/data/clips/
   big_buck_bunny.mp4 (or a generated 640x360 clip): decode -> upscale -> YUV4MPEG2 into a pipe that another
   process reads (upscale.py CLIP -o - | player), and decode -> upscale -> libx264 file at the CLI's default
   preset (veryfast) and CRF, each as a share of the model-only rate, with the peak resident memory (on the
   YUV path two model-only rates: the network's float luma alone, and the frame's uint8 planes as the path's
   model thread makes them, the same work without decoding and writing); --rounds rounds, median;
2b. part 2 again with the model on OpenVINO int8 as `upscale.py --int8` runs it (calibrated on the clip),
   where the optional runtimes are installed (make runtimes);
3. Set5 PSNR (Y, x4, border 4) of fp32 and bf16 and their difference (bf16 must stay within 0.05 dB);
4. GIF grain: the high-frequency energy (RMS of a Laplacian, grey levels) of the written GIF frame minus
   the model's output, and its frame-to-frame flicker, for Pillow's median cut per frame (before) against
   GifPalette (a shared, k-means-refined palette, exact nearest colours), on the first frames of a RIFE
   GIF from ../shared/data/clips (or skimage's GIF). Parts 3-4 are left out for untrained models;
5. for a luma-first model (stream), the YUV video path against the RGB path (--video-path), with part 1's
   fastest case: model only (the frame's uint8 output: RGB from upscale_array, or Y, U, V planes), the whole
   path into the y4m pipe and into a libx264 veryfast file (interleaved rounds; ratios yuv/rgb measured in
   the same run), and the Y-PSNR of both paths against the clip's own frames, downscaled x4 and encoded
   losslessly (trained models only).
The --tiling study: 1. tiled vs whole-image speed (480x270 -> x4, SRResNet, random weights); 2. peak memory
of a 960x540 -> x4 upscale in a fresh process per case.
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
from peak import describe_peak, generator_flops, measure_peak  # noqa: E402

# -----------------------------------------------------------------------------
# configuration
PRESET = "srresnet"  # the model for parts 1 and 2: the paper's 16 blocks x 64 filters
SPEED_SIZE = (480, 270)  # LR width, height for part 1 (whole-image inference must fit in memory)
MEMORY_SIZE = (960, 540)  # part 2, tiled
WHOLE_MEMORY_SIZE = (480, 270)  # part 2, whole-image (960x540 does not fit: > 22 GB)
BIG_TILE = 240  # the trade-off row: tiles of up to 240x240 LR pixels (about 1 GiB of SRResNet activations)
REPEATS = 3  # timed runs per case in part 1 (after one warm-up run); the median is reported
MODEL_REPEATS = 3  # timed model-only runs per case (after one warm-up)
PATH_ROUNDS = 2  # rounds of part 2 (model alone, y4m pipe, libx264 file)
CLIP = ROOT.parent / "shared" / "data" / "clips" / "big_buck_bunny.mp4"
SET5 = ROOT.parent / "shared" / "data" / "benchmarks" / "Set5"
QUICK = dict(SPEED_SIZE=(160, 90), MEMORY_SIZE=(320, 180), WHOLE_MEMORY_SIZE=(160, 90), REPEATS=1)
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


def frame_640x360():
    """The first frame of the clip (or a photo-like stand-in), 640x360 RGB."""
    import av

    if CLIP.is_file():
        with av.open(str(CLIP)) as c:
            return next(c.decode(video=0)).to_ndarray(format="rgb24")
    return test_image(640, 360)


def model_only(models, repeats):
    """{name: seconds per 640x360 frame}: one warm-up each, then interleaved rounds, median."""
    import upscale

    rgb = frame_640x360()
    cases = {name: (lambda m=m: upscale.upscale_array(m, rgb)) for name, m in models.items()}
    return {name: wall for name, (wall, _) in interleaved_times(cases, repeats).items()}


class PeakRSS:
    """Samples this process's resident memory in a thread while in use; .peak is the largest, in bytes."""

    def __enter__(self):
        import threading

        self.peak, self.done = current_rss(), False
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done:
            self.peak = max(self.peak, current_rss())
            time.sleep(0.05)

    def __exit__(self, *exc):
        self.done = True
        self.thread.join()


def current_rss(pid="self"):
    """Resident memory of this process (or of process pid) in bytes; 0 once that process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def end_to_end(model, frames, threaded, tmp, to_pipe=False, video_path="auto"):
    """(frames/s, peak RSS bytes) of upscaling the clip's first frames into an MP4 with the CLI's defaults, or
    (to_pipe) as YUV4MPEG2 into a pipe that another process reads (upscale.py CLIP -o - | player).
    video_path: the CLI's --video-path."""
    import upscale

    clip = CLIP if CLIP.is_file() else make_clip(Path(tmp) / "clip.mp4", max(frames, 24))
    options = dict(codec=None, crf=upscale.DEFAULT_CRF, preset=upscale.DEFAULT_PRESET, pix_fmt=upscale.DEFAULT_PIX_FMT)
    reader = subprocess.Popen([sys.executable, "-c", PIPE_READER], stdin=subprocess.PIPE) if to_pipe else None
    with PeakRSS() as rss:
        start = time.perf_counter()
        upscale.upscale_video_file(upscale.Inference(model), clip, "-" if to_pipe else Path(tmp) / "out.mp4",
                                   video_options=options, max_frames=frames, progress=False, threaded=threaded,
                                   pipe=reader.stdin if to_pipe else None, video_path=video_path)
        seconds = time.perf_counter() - start
    if reader is not None:
        reader.stdin.close()
        reader.wait()
    return frames / seconds, rss.peak


def whole_path(model, frames, rounds, path="rgb"):
    """{case: (frames/s, {what: share of that model-only rate}, peak RSS)} for the y4m pipe and the libx264
    file: each round times the model alone on `frames` frames, then both paths, so a change in the machine's
    load hits them alike; the median of the rounds. The model alone: the RGB path's upscale_array; on the YUV
    path (path "yuv") both the network's float luma alone (inference.upscale_luma) and the frame's uint8
    planes (what the path's model thread makes: the network, the chroma interpolation, the levels)."""
    from av.video.reformatter import ColorRange, Colorspace

    import media
    import upscale

    rgb, chroma, colour = first_frame_planes()
    if path == "yuv":  # the output's colour as the writer takes it
        yuv = media.Yuv420Frames(upscale.Inference(model), (Colorspace.ITU709, ColorRange.MPEG))
        alone = {"the float luma": lambda: yuv.inference.luma_frames([rgb], yuv.luma_weights),
                 "the planes": lambda: yuv.planes(rgb, chroma, colour)}
    else:
        alone = {"the frame": lambda: upscale.upscale_array(model, rgb)}
    for run in alone.values():
        run()
    cases = {"decode -> upscale -> y4m pipe": True, f"decode -> upscale -> libx264 {upscale.DEFAULT_PRESET} file": False}
    fps = {case: [] for case in cases}
    shares = {case: {what: [] for what in alone} for case in cases}
    peaks = dict.fromkeys(cases, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            alone_fps = {what: frames / timed(run, frames) for what, run in alone.items()}
            for case, to_pipe in cases.items():
                rate, peak = end_to_end(model, frames, True, tmp, to_pipe=to_pipe, video_path=path)
                fps[case].append(rate)
                for what, model_fps in alone_fps.items():
                    shares[case][what].append(rate / model_fps)
                peaks[case] = max(peaks[case], peak)
    return {case: (float(np.median(fps[case])), {what: float(np.median(v)) for what, v in shares[case].items()},
                   peaks[case]) for case in cases}


def timed(run, times):
    """Seconds that `times` calls of run take."""
    started = time.perf_counter()
    for _ in range(times):
        run()
    return time.perf_counter() - started


def print_whole_path(rows):
    """Part 2's lines: whole_path's {case: (frames/s, {what: share of its model-only rate}, peak RSS)}."""
    for case, (fps, shares, rss) in rows.items():
        of = ", ".join(f"{share:5.1%} of {what} alone" for what, share in shares.items())
        print(f"   {case:42s}: {fps:7.3f} frames/s  {of}; peak RSS {rss / 2**30:5.2f} GiB")


def whole_path_on_int8(name, frames, path, rounds=PATH_ROUNDS):
    """Part 2 again with the model on OpenVINO int8, as `upscale.py --int8 CLIP` runs it (upscale.load_on_runtime:
    calibrated on the clip, checked on frames held back, the YUV path's luma converted too); left out, saying
    why, where the optional runtimes are not installed."""
    import deploy
    import upscale

    try:
        deploy.check_installed("openvino", "int8")
    except deploy.MissingRuntime as e:
        print(f"2b. whole path on OpenVINO int8: left out ({e})")
        return
    with tempfile.TemporaryDirectory() as tmp:
        clip = CLIP if CLIP.is_file() else make_clip(Path(tmp) / "clip.mp4", 48)
        settings = argparse.Namespace(int8=str(clip), runtime="openvino", luma_path=path == "yuv",
                                      precision=upscale.runtime_precision("openvino", "auto"))
        started = time.perf_counter()
        model, note = upscale.load_on_runtime(name, settings, jobs=[])
        rows = whole_path(model, frames, rounds, path)  # its warm-up converts and checks what it runs
        print(f"2b. the same on OpenVINO int8 (upscale.py --int8), {path.upper()} path, {frames} frames, "
              f"{rounds} rounds ({note}; converted and checked in {time.perf_counter() - started:.0f} s "
              "with the rounds):")
    print_whole_path(rows)


def yuv_against_rgb(model, frames, rounds, repeats):
    """Part 5: {case: (rgb frames/s, yuv frames/s, median ratio yuv/rgb)} for the model alone and the whole
    paths, each round running the rgb and yuv cases in turn."""
    from av.video.reformatter import ColorRange, Colorspace

    import media
    import upscale

    rgb, chroma, colour = first_frame_planes()
    yuv = media.Yuv420Frames(upscale.Inference(model), (Colorspace.ITU709, ColorRange.MPEG))
    cases = {"rgb": lambda: upscale.upscale_array(model, rgb),
             "yuv": lambda: yuv.planes(rgb, chroma, colour)}
    times = interleaved_times(cases, repeats)
    rows = {"model only (the frame's uint8 output)": (1 / times["rgb"][0], 1 / times["yuv"][0],
                                                      times["rgb"][0] / times["yuv"][0])}
    paths = {"decode -> upscale -> y4m pipe": True, f"decode -> upscale -> libx264 {upscale.DEFAULT_PRESET} file": False}
    rates = {case: {"rgb": [], "yuv": []} for case in paths}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for case, to_pipe in paths.items():
                for path in ("rgb", "yuv"):
                    rates[case][path].append(end_to_end(model, frames, True, tmp, to_pipe=to_pipe, video_path=path)[0])
    for case, r in rates.items():
        ratio = float(np.median([y / x for x, y in zip(r["rgb"], r["yuv"], strict=True)]))
        rows[case] = (float(np.median(r["rgb"])), float(np.median(r["yuv"])), ratio)
    return rows


def first_frame_planes():
    """The clip's first frame (or a stand-in) as the YUV path sees it: (RGB, U and V planes, its colour)."""
    import av

    import media

    if CLIP.is_file():
        with av.open(str(CLIP)) as c:
            frame = next(c.decode(video=0))
    else:
        frame = av.VideoFrame.from_ndarray(test_image(640, 360), format="rgb24").reformat(format="yuv420p")
    return media.frame_to_rgb(frame), media.chroma_planes(frame), media.frame_colour(frame)


def yuv_rgb_quality(model, count=8, seconds=30):
    """(rgb Y-PSNR, yuv Y-PSNR) in dB, the mean over `count` frames of the clip from `seconds` on: each
    frame downscaled x4 (bicubic), encoded losslessly, upscaled by both paths into y4m, its Y against the
    frame's own (BT.601: what y4m takes for 640x360); None without the clip."""
    import io

    import av

    import media
    import upscale
    from resizer import resize

    if not CLIP.is_file():
        return None
    with av.open(str(CLIP)) as inp:
        inp.seek(seconds * av.time_base)
        hr = [media.frame_to_rgb(f) for f, _ in zip(inp.decode(video=0), range(count), strict=False)]
    weights = media.yuv_matrix(5)[0]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "lr.mkv"
        with av.open(str(clip), "w") as out:
            v = out.add_stream("libx264", rate=24)
            v.width, v.height, v.pix_fmt, v.options = 160, 90, "yuv420p", {"qp": "0", "preset": "ultrafast"}
            for rgb in hr:
                out.mux(v.encode(av.VideoFrame.from_ndarray(resize(rgb, (160, 90), "bicubic"), format="rgb24")))
            out.mux(v.encode(None))
        psnr = []
        for path in ("rgb", "yuv"):
            pipe = io.BytesIO()
            upscale.upscale_video_file(upscale.Inference(model), clip, "-", video_options={}, progress=False,
                                       pipe=pipe, video_path=path)
            data = pipe.getvalue().split(b"\n", 1)[1].split(b"FRAME\n")[1:]
            ys = [np.frombuffer(d[: 640 * 360], np.uint8).reshape(360, 640).astype(np.float64) for d in data]
            ref = [16 + 219 * (f.astype(np.float64) / 255) @ weights for f in hr]
            psnr.append(float(np.mean([10 * np.log10(255**2 / np.mean((y - r) ** 2)) for y, r in zip(ys, ref,
                                                                                                    strict=True)])))
    return tuple(psnr)


PIPE_READER = "import os, shutil, sys; shutil.copyfileobj(sys.stdin.buffer, open(os.devnull, 'wb'), 1 << 20)"


def set5_psnr(models, crop=None):
    """{name: mean Set5 PSNR (dB, Y, border 4)} of x4 upscales; None when Set5 is absent."""
    import upscale
    from metrics import calculate_psnr
    from resizer import load_image, lr_from_hr, mod_crop

    files = sorted(SET5.glob("*.png")) if SET5.is_dir() else []
    if not files:
        return None
    pairs = []
    for path in files:
        hr = load_image(path)
        hr = mod_crop(hr[:crop, :crop] if crop else hr, 4)
        pairs.append((lr_from_hr(hr, 4), hr))
    return {name: float(np.mean([calculate_psnr(upscale.upscale_array(m, lr), hr, 4) for lr, hr in pairs]))
            for name, m in models.items()}


def gif_grain(model, frames):
    """(gif name, before, after, (frames shared, own)): (grain, flicker, mean error) of GIF frames quantised
    as before (Pillow's median cut per frame) and with GifPalette, against the model's output for them."""
    import upscale

    gif = next(iter(sorted(CLIP.parent.glob("rife_*.gif"))), None) if CLIP.parent.is_dir() else None
    if gif is None:
        import skimage

        gif = Path(skimage.__file__).parent / "data" / "no_time_for_that_tiny.gif"
    srs = [upscale.upscale_array(model, f.rgb) for f in upscale.animation_frames(gif, max_frames=frames)]
    per_frame = [pillow_median_cut(sr) for sr in srs]
    shared = upscale.GifPalette()
    written = [im for sr in srs for im in shared.add(sr, None)] + shared.finish()

    def measure(images):
        errors = [np.asarray(im.convert("RGB"), np.float32).mean(axis=2) - sr.astype(np.float32).mean(axis=2)
                  for im, sr in zip(images, srs, strict=True)]
        grain = float(np.mean([np.sqrt(np.mean(laplacian(e) ** 2)) for e in errors]))
        flicker = float(np.mean([np.sqrt(np.mean((b - a) ** 2)) for a, b in zip(errors, errors[1:], strict=False)]))
        return grain, flicker, float(np.mean([np.abs(e).mean() for e in errors]))

    return gif.name, measure(per_frame), measure(written), (shared.shared, shared.own)


def pillow_median_cut(rgb):
    """A GIF frame as upscale.py quantised it before GifPalette: Pillow's median cut, a palette per frame."""
    from PIL import Image

    return Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.MEDIANCUT)


def laplacian(x):
    """The 4-neighbour Laplacian of a 2-D array (its high frequencies), on the interior pixels."""
    return 4 * x[1:-1, 1:-1] - x[:-2, 1:-1] - x[2:, 1:-1] - x[1:-1, :-2] - x[1:-1, 2:]


def bench_model(name):
    """(model, description, trained): a shipped model by name, a .keras file, or, for a preset whose weights
    are not in weights/ yet (weights/stream_x4.keras while it trains), the preset built untrained: speed
    does not depend on the weights."""
    import presets
    import upscale
    from generator import build_generator

    shipped = presets.SHIPPED_MODELS.get(name, presets.WEIGHTS / f"{name}_x4.keras")
    if Path(shipped).is_file() or Path(name).is_file():
        path = shipped if Path(shipped).is_file() else Path(name)
        return upscale.load_model(path), path.name, True
    if name in presets.GENERATOR_PRESETS:
        return (build_generator(4, preset=name), f"the {name} preset built untrained: {shipped.name} does not exist "
                f"yet, and speed does not depend on the weights", False)
    raise SystemExit(f"bench_upscale: {name} is neither a shipped model, a .keras file nor a preset")


def copy_of(model, precision="fp32", xla=False):
    """A separate copy of the model (its own compiled-or-not state), in the precision, XLA-compiled or not."""
    import keras

    import upscale

    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone = upscale.with_precision(clone, precision)
    return upscale.compile_model(clone) if xla else clone


def report_model(name, frames, repeats, quick, peak, speed_only=False, rounds=PATH_ROUNDS):
    """Parts 1-5 for one model (see bench_model); peak: measure_peak() of this run. Part 2 runs the fastest
    case of part 1 (what upscale.py's --compile/--precision auto would time and pick); rounds: of parts 2 and 5."""
    import inference
    import upscale

    base, about, trained = bench_model(name)
    flops = generator_flops(base, 360, 640)
    print(f"model {name} ({about}; {base.count_params():,} parameters, {flops / 1e9:.2f} GFLOP per 640x360 frame):")
    models = {"fp32": base, "fp32 XLA": copy_of(base, "fp32", True)}
    if upscale.cpu_has_native_bf16() or quick:  # emulated bf16 is slower than fp32 (and not an auto candidate)
        models.update({"bf16": copy_of(base, "bf16"), "bf16 XLA": copy_of(base, "bf16", True)})
    times = model_only(models, repeats)
    base_t = times["fp32"]
    best = min(times, key=times.get)
    print(f"1. model only, one 640x360 -> x4 frame (upscale_array), median of {repeats} interleaved runs; share of "
          f"this run's peak of the case's precision:")
    for case, t in times.items():
        share = flops / t / 1e9 / peak[case.split()[0]]
        print(f"   {case:9s}: {1 / t:7.3f} frames/s ({t:6.3f} s)  {base_t / t:5.2f}x fp32, {share:5.1%} of peak"
              + ("   <- fastest" if case == best else ""))
    frames = frames or int(np.clip(round(4 / times[best]), 8, 96))  # about 4 s of model time
    path = "yuv" if inference.luma_upsample(base) is not None else "rgb"  # what --video-path auto takes
    print(f"2. whole path, {best} (the fastest above), {path.upper()} path, {frames} frames of "
          f"{CLIP.name if CLIP.is_file() else 'a generated 640x360 clip'}, threaded, in {rounds} rounds, each "
          f"also timing the model alone on as many frames (yuv: the network's float luma, and the frame's planes as "
          f"the model thread makes them; the share is the median of the rounds' ratios):")
    rows = whole_path(models[best], frames, rounds, path)
    print_whole_path(rows)
    whole_path_on_int8(name, frames, path, rounds)
    psnr = None
    if speed_only or not trained:
        print("3-4. Set5 PSNR and GIF grain: skipped (" + ("--speed-only" if speed_only else "untrained weights") + ")")
    else:
        psnr = set5_and_gif(base, quick)
    if inference.luma_upsample(base) is not None:
        print(f"5. the YUV path against the RGB path (--video-path), {best}, {frames} frames, {rounds} rounds "
              f"({load_average()}):")
        for case, (rgb_fps, yuv_fps, ratio) in yuv_against_rgb(models[best], frames, rounds, repeats).items():
            print(f"   {case:42s}: rgb {rgb_fps:7.3f}, yuv {yuv_fps:7.3f} frames/s: yuv {ratio:.2f}x rgb")
        quality = yuv_rgb_quality(base) if trained else None
        if quality is not None:
            print(f"   Y-PSNR, 8 clip frames from 30 s downscaled x4 and upscaled back: rgb {quality[0]:.4f} dB, "
                  f"yuv {quality[1]:.4f} dB, difference {quality[1] - quality[0]:+.4f} dB")
    return times, rows, psnr


def set5_and_gif(base, quick):
    """Parts 3-4 for a trained model: Set5 PSNR of fp32 and bf16, GIF grain. Returns the PSNRs (or None)."""
    import upscale

    fp32, bf16 = base, upscale.with_precision(base, "bf16")
    psnr = set5_psnr({"fp32": fp32, "bf16": bf16}, crop=96 if quick else None)
    if psnr is None:
        print("3. Set5 PSNR: skipped (Set5 not found at ../shared/data/benchmarks/Set5)")
    else:
        diff = psnr["bf16"] - psnr["fp32"]
        verdict = "within" if abs(diff) <= 0.05 else "NOT within"
        print(f"3. Set5 PSNR (Y, x4): fp32 {psnr['fp32']:.3f} dB, bf16 {psnr['bf16']:.3f} dB, "
              f"difference {diff:+.4f} dB ({verdict} 0.05 dB)")
    gif, before, after, (shared, own) = gif_grain(fp32, 3 if quick else 10)
    print(f"4. GIF grain, {gif}: written frame minus model output, Laplacian RMS / frame-to-frame RMS / mean |error|:")
    print(f"   Pillow, per frame : {before[0]:6.2f} / {before[1]:6.2f} / {before[2]:5.2f}")
    print(f"   shared palette    : {after[0]:6.2f} / {after[1]:6.2f} / {after[2]:5.2f}  "
          f"({after[0] / before[0]:.2f}x grain, {after[1] / before[1]:.2f}x flicker; {shared} frames shared, {own} own)")
    return psnr


def cpu_name():
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cap_isa(isa):
    """Make this process and its children compute as on a CPU without AVX-512 (isa "avx2": AVX2 and FMA, no
    native bf16), before any backend loads: oneDNN (TensorFlow's, and OpenVINO's own copy) and XLA's code
    generation are capped at AVX2, OpenVINO's own kernels too where its build reads OV_CPU_MAX_ISA, and
    --precision auto sees no native bf16. An emulation: the cores, clock and caches stay this machine's.
    Returns the line that says so."""
    from inference import CPU_BF16_VARIABLE

    if isa != "avx2":
        raise ValueError(f"unknown ISA cap {isa!r}; choose avx2")
    os.environ["ONEDNN_MAX_CPU_ISA"] = os.environ["OV_CPU_MAX_ISA"] = "AVX2"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX2".strip()
    os.environ[CPU_BF16_VARIABLE] = "off"
    return ("ISA capped at AVX2 (emulated: ONEDNN_MAX_CPU_ISA, OV_CPU_MAX_ISA, XLA's --xla_cpu_max_isa; no "
            "native bf16; ONNX Runtime cannot be capped and is left out)")


def load_average():
    """The 1, 5 and 15 minute load averages (the machine may be shared: read the figures as ratios)."""
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


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
    p.add_argument("--models", nargs="+", default=["stream", "video", "psnr"],
                   help="shipped model names, .keras files, or presets (built untrained when not shipped)")
    p.add_argument("--frames", type=int, default=None,
                   help="clip frames per whole-path run (default: about 4 s of model time, 8 to 96)")
    p.add_argument("--rounds", type=int, default=PATH_ROUNDS,
                   help=f"rounds of the whole-path parts 2 and 5, median reported (default {PATH_ROUNDS})")
    p.add_argument("--speed-only", action="store_true", help="leave out Set5 PSNR and GIF grain (parts 3-4)")
    p.add_argument("--tiling", action="store_true", help="the tiled-vs-whole speed and memory study instead")
    p.add_argument("--preset", default=PRESET, help="generator preset for the --tiling study")
    p.add_argument("--model", type=Path, default=None, help="--tiling: a .keras generator instead of a fresh preset")
    p.add_argument("--skip-memory", action="store_true", help="--tiling: leave out the memory part")
    p.add_argument("--max-isa", choices=["avx2"], default=None,
                   help="compute as a CPU without AVX-512 would (emulated here: see cap_isa)")
    p.add_argument("--child", nargs=3, metavar=("MODE", "W", "H"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    capped = cap_isa(args.max_isa) if args.max_isa else None
    if args.child:
        mode, w, h = args.child
        child_memory(mode, int(w), int(h), args.preset, args.model)
        return 0
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines)

    # isort: split
    import keras

    import upscale

    started = time.perf_counter()
    print(f"bench_upscale: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores (native bf16: "
          f"{upscale.cpu_has_native_bf16()}), Keras {keras.__version__} on {keras.backend.backend()} "
          f"({backend_devices()}); memory budget {upscale.memory_budget() / 2**20:.0f} MiB")
    if capped:
        print(capped)
    if args.tiling:
        cfg = dict(SPEED_SIZE=SPEED_SIZE, MEMORY_SIZE=MEMORY_SIZE, WHOLE_MEMORY_SIZE=WHOLE_MEMORY_SIZE, REPEATS=REPEATS)
        if args.quick:
            cfg.update(QUICK)
        model = build_model(args.preset, args.model)
        ratio = part1_speed(model, cfg["SPEED_SIZE"], cfg["REPEATS"])
        del model
        if not args.skip_memory:
            part2_memory(args.preset, args.model, cfg["MEMORY_SIZE"], cfg["WHOLE_MEMORY_SIZE"])
        print(f"bench_upscale: tiled/whole speed {ratio:.2f}x, {time.perf_counter() - started:.0f} s in all")
        return 0
    frames = 2 if args.quick else args.frames
    print(f"at the start: {load_average()}")
    peak = measure_peak(("fp32", "bf16") if upscale.cpu_has_native_bf16() or args.quick else ("fp32",))
    print(f"peak of this CPU now: {describe_peak(peak)}")
    for name in args.models:
        report_model(name, frames, 1 if args.quick else MODEL_REPEATS, args.quick, peak, args.speed_only,
                     1 if args.quick else args.rounds)
    print(f"bench_upscale: {time.perf_counter() - started:.0f} s in all; at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
