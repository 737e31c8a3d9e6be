"""Upscale images, animated GIFs and videos with a trained generator (tiled inference, any size).

    python upscale.py photo.jpg -o photo_x4.png                       # one image (format from the extension)
    python upscale.py photos/ -o photos_x4/                           # a folder, recursively (tree mirrored)
    python upscale.py anim.gif -o anim_x4.gif                         # every frame, timing, loop, transparency
    python upscale.py clip.mp4 -o clip_x4.mp4 --crf 18                # video: fps/timestamps kept, audio copied
    python upscale.py clip.mp4 -o part.mp4 --start 1:30 --max-frames 48   # a preview from 1 min 30 s on
    python upscale.py photo.jpg -o out.png --model gan --compare      # shipped models: psnr (default), gan
    python upscale.py https://host/live.m3u8 -o - --model video | mpv -   # a URL (HTTP, HLS) as YUV4MPEG2 to a player
    python upscale.py clip.mp4 -o - --realtime | ffplay -              # at the source's pace, dropping frames when behind

This file is the command: its arguments, the list of jobs (input -> output), and the summary. The work is
done by two modules beside it: inference.py (loading the model, its precision and runtime, tiled
inference: big inputs go through the model in overlapping cross-faded tiles, so there are no seams and
memory stays bounded) and media.py (images, animations, videos, URLs and YUV4MPEG2 in and out, streamed
through decode, model and encode threads). For videos and animations --compile/--precision auto time the
candidate runtimes on a few frames and run the fastest. Library entry points, importable from here as from
inference.py: `upscale_array(model, rgb)` for one image of any size, `upscale_batch(model, images)` for
many small ones (flow.py's evaluation), `upscale_float` for float/16-bit data, `load_model`. TensorFlow is
imported only when a model is loaded, so `--help` and usage errors answer at once.
"""

import argparse
import contextlib
import functools
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

import deploy
import presets
import resizer
from deploy import RUNTIMES
from inference import (
    BLEND_MARGIN,
    BT709_LUMA,
    CPU_BF16_VARIABLE,
    DEFAULT_MODEL,
    MODEL_NAMES,
    PRECISIONS,
    RUNTIME_TRIALS,
    TILE_MEMORY_BUDGET,
    Inference,
    activation_bytes_per_pixel,
    auto_overlap,
    auto_tile_pixels,
    axis_windows,
    blend_ramp,
    compile_model,
    cpu_has_native_bf16,
    fastest,
    file_luma_first_scale,
    file_receptive_radius,
    has_gpu,
    is_out_of_memory,
    load_fastest,
    load_model,
    memory_budget,
    model_scale,
    overlap_for_radius,
    plan_tiles,
    planes_model,
    receptive_radius,
    resolve_model_path,
    resolve_precision,
    run_forward_on,
    tile_starts,
    upscale_array,
    upscale_batch,
    upscale_float,
    wants_compile,
    widest_map,
    with_precision,
)
from media import (
    ANIMATED_SUFFIXES,
    COMPARE_CROP,
    COMPARE_SUFFIX,
    DEFAULT_CRF,
    DEFAULT_PIX_FMT,
    DEFAULT_PRESET,
    DEFAULT_VIDEO_CODEC,
    QUEUE_FRAMES,
    QUEUE_ITEMS,
    VIDEO_PATHS,
    VIDEO_SUFFIXES,
    X264_PRESETS,
    AudioPacket,
    DecodedFrame,
    GifPalette,
    RealtimeInbox,
    StreamError,
    StreamStats,
    VideoError,
    animation_frames,
    animation_info,
    compare_path,
    detail_crop,
    failure_reason,
    is_pipe,
    is_url,
    open_video,
    remove_dead_temp_outputs,
    run_frames,
    source_info,
    source_name,
    upscale_animation_file,
    upscale_image_file,
    upscale_video_file,
    video_frames,
    yuv_path_obstacles,
)
from resizer import ImageLoadError, is_temp_output

# The command's own names, and the library API that flow.py, training.py, the benchmarks, the notebooks and
# the tests reach through upscale (re-exported from inference.py and media.py, which own them).
__all__ = [
    "main", "parse_args", "parse_time", "run_job", "upscale_all", "plan_jobs", "media_kind", "model_label", "Job",
    "UsageError",
    # inference.py
    "BLEND_MARGIN", "CPU_BF16_VARIABLE", "DEFAULT_MODEL", "MODEL_NAMES", "PRECISIONS", "RUNTIME_TRIALS",
    "TILE_MEMORY_BUDGET", "Inference", "activation_bytes_per_pixel", "auto_overlap", "auto_tile_pixels",
    "axis_windows", "blend_ramp", "compile_model", "cpu_has_native_bf16", "fastest", "file_receptive_radius",
    "has_gpu", "is_out_of_memory", "load_fastest", "load_model", "memory_budget", "model_scale",
    "overlap_for_radius", "plan_tiles", "receptive_radius", "resolve_model_path", "resolve_precision",
    "tile_starts", "upscale_array", "upscale_batch", "upscale_float", "wants_compile", "widest_map",
    "with_precision",
    # media.py
    "COMPARE_CROP", "DEFAULT_CRF", "DEFAULT_PIX_FMT", "DEFAULT_PRESET", "QUEUE_FRAMES", "QUEUE_ITEMS",
    "AudioPacket", "DecodedFrame", "GifPalette", "RealtimeInbox", "StreamError", "StreamStats", "VideoError",
    "animation_frames", "detail_crop", "failure_reason", "open_video", "run_frames", "upscale_video_file",
    "video_frames",
]

# -----------------------------------------------------------------------------
# configuration
IMAGE_SUFFIXES = set(resizer.IMAGE_SUFFIXES)
VIDEO_FORMATS = {suffix[1:] for suffix in VIDEO_SUFFIXES}
STILL_FORMATS = {"png", "jpg", "webp", "gif"}
ANIMATION_FORMATS = {suffix[1:] for suffix in ANIMATED_SUFFIXES} | VIDEO_FORMATS  # png means APNG
FORMATS = sorted(STILL_FORMATS | VIDEO_FORMATS)  # --format choices
# -----------------------------------------------------------------------------


# --- the command ---------------------------------------------------------------------------------------


def main(argv=None):
    """Upscale every input; print a summary; exit 0 when nothing failed, 1 otherwise, 2 for bad usage.
    With -o - stdout carries the video, so the summary goes to stderr."""
    args = parse_args(argv)
    if not is_pipe(args.output):
        return upscale_all(args)
    args.pipe = sys.stdout.buffer
    with contextlib.redirect_stdout(sys.stderr):
        return upscale_all(args)


def upscale_all(args):
    """main's work, for parsed arguments."""
    started = time.perf_counter()
    try:
        model_path = check_args(args)
        jobs, problems = plan_jobs(args.inputs, args.output, args.format)
    except (UsageError, ValueError, FileNotFoundError) as e:
        print(f"upscale: {e}", file=sys.stderr)
        return 2
    inputs = {job.src.resolve() for job in jobs if not is_url(job.src)}
    done, skipped, failed, notes = [], [], list(problems), []
    seen, inference, runtime, leftovers = set(), None, None, 0
    progress = False if args.no_progress else None
    outer = None
    if len(jobs) > 1 and not args.no_progress:
        from tqdm import tqdm

        outer = tqdm(total=len(jobs), unit="file", desc="upscale", dynamic_ncols=True)
    for job in jobs:
        verdict = check_job(job, inputs, args.overwrite, args.compare)
        if verdict is None and job.dst.resolve() in seen:
            verdict = ("failed", f"another input also writes {job.dst}")
        seen.add(job.dst.resolve())
        if verdict is not None:
            (skipped if verdict[0] == "skipped" else failed).append((job.src, verdict[1]))
        else:
            if inference is None:
                try:
                    if args.runtime == "keras" and args.int8 is None:
                        model, runtime = load_fastest(model_path, args.precision, args.compile, first_frame_size(jobs),
                                                      progress, luma=times_luma_path(args, jobs))
                    else:
                        model, runtime = load_on_runtime(model_path, args, jobs)
                    others = tuple((model_label(path), load_model(path, args.precision))
                                   for path in [args.compare_with] if path is not None)
                except Exception as e:  # corrupt, or not a generator: nothing can run
                    print(f"upscale: cannot load the model {model_path}"
                          + (f" or {args.compare_with}" if args.compare_with else "") + f": {type(e).__name__}: {e}",
                          file=sys.stderr)
                    return 2
                if any(model_scale(other) != model_scale(model) for _, other in others):
                    print(f"upscale: --compare-with {args.compare_with} does not upscale x{model_scale(model)} as "
                          f"{model_path} does", file=sys.stderr)
                    return 2
                inference = Inference(model, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                                      label=model_label(model_path), others=others)
            if not is_pipe(job.dst):
                leftovers += remove_dead_temp_outputs(job.dst, args.compare)
            try:
                note = run_job(inference, job, args, progress)
                done.append(job)
                if note:
                    notes.append((job.src, note))
            except KeyboardInterrupt:
                print(f"\nupscale: interrupted during {job.src}; no partial output was left", file=sys.stderr)
                return 130
            except Exception as e:  # one bad file must not stop the batch; it is reported below
                failed.append((job.src, failure_reason(job.src, e)))
        if outer is not None:
            outer.update()
    if outer is not None:
        outer.close()
    for src, reason in skipped:
        print(f"skipped {src}: {reason}")
    for src, note in notes:
        print(f"note    {src}: {note}")
    for src, reason in failed:
        print(f"FAILED  {src}: {reason}", file=sys.stderr)
    print(f"upscale: {len(done)} done, {len(skipped)} skipped, {len(failed)} failed "
          f"in {time.perf_counter() - started:.1f} s" + (f" -> {args.output}" if done else "")
          + (f"; {runtime}" if runtime else "")
          + (f"; removed {leftovers} temporary file(s) a killed earlier run left" if leftovers else ""))
    return 1 if failed else 0


def run_job(inference, job, args, progress):
    """Upscale one input into its output; returns a note for the summary, or None."""
    video_options = dict(codec=args.codec, crf=args.crf, preset=args.preset, pix_fmt=args.pix_fmt)
    timing = dict(start=args.start, max_frames=args.max_frames)
    started, stats = time.perf_counter(), StreamStats()
    if job.kind == "video":
        frames = upscale_video_file(inference, job.src, job.dst, video_options=video_options, compare=args.compare,
                                    progress=progress, realtime=args.realtime, stats=stats,
                                    pipe=getattr(args, "pipe", None), video_path=args.video_path, **timing)
    elif job.kind == "animation" and (job.dst.suffix.lower() == ".gif" or animation_info(job.src)[0] > 1):
        frames = upscale_animation_file(inference, job.src, job.dst, video_options=video_options,
                                        compare=args.compare, progress=progress, **timing)
    else:  # a still image, or a one-frame animation written in a still format
        return upscale_image_file(inference, job.src, job.dst, compare=args.compare)
    seconds = time.perf_counter() - started
    note = f"{frames} frames in {seconds:.1f} s ({frames / max(seconds, 1e-9):.2f} frames/s)"
    if job.kind == "video":
        note += f"; {stats.video_path.upper()} path" + (" (luma through the network, chroma interpolated)"
                                                        if stats.video_path == "yuv" else "")
    if stats.realtime:
        note += f"; realtime: {stats.describe()}"
    if stats.reader_closed:
        note += "; the reader closed the pipe"
    return note


class UsageError(ValueError):
    """A command-line setting that cannot work (found before any model is loaded): exit status 2."""


# --- the command line ----------------------------------------------------------------------------------


def parse_args(argv=None):
    """The command line, parsed (argparse exits 2 on bad syntax)."""
    names = ", ".join(f"{name} ({path.name})" for name, path in MODEL_NAMES.items())
    p = argparse.ArgumentParser(
        description="Upscale images, animated GIFs and videos with a trained SRGAN/SRResNet generator.",
        epilog="Examples: upscale.py photo.jpg -o photo_x4.png | upscale.py photos/ -o out/ --format png | "
               "upscale.py anim.gif -o anim_x4.gif | upscale.py clip.mp4 -o clip_x4.mp4 --crf 20 | "
               "upscale.py clip.mp4 -o preview.mp4 --start 1:30 --max-frames 48 --model gan",
    )
    p.add_argument("inputs", nargs="+",
                   help="image, GIF or video files, folders (recursive), or video URLs (http/https, HLS .m3u8)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="output file (one input) or folder (several inputs or a folder; the tree is mirrored); "
                        "- : one video as YUV4MPEG2 to stdout, for a player (upscale.py URL -o - | mpv -)")
    p.add_argument("--model", default=None,
                   help=f"a shipped model by name: {names}; or a generator .keras file (default: psnr)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="compute in float32 or bfloat16; auto (default): for videos and animations the faster of the "
                        "two, timed on a few frames at start-up (bf16 tried only on a GPU or a CPU with native "
                        "bfloat16, AVX512_BF16/AMX); for still images bf16 where native, else fp32")
    p.add_argument("--compile", nargs="?", choices=presets.SWITCHES, const="on", default="auto",
                   help="run the model XLA-compiled (one compile per tile shape, seconds each); auto (default): for "
                        "videos and animations, whichever is faster, timed on a few frames at start-up (the summary "
                        "says what ran); off for still images")
    p.add_argument("--tile", type=int, default=None,
                   help="tiles hold at most TILE x TILE LR pixels, shaped to the image (default: from free memory); "
                        "must exceed twice the overlap")
    p.add_argument("--overlap", type=int, default=None,
                   help="LR pixels shared by neighbouring tiles (default: from the model's receptive field)")
    p.add_argument("--batch-size", type=int, default=None, help="tiles per model call (default: as many as fit)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format for folder outputs (images: png/jpg/webp/gif; animations: gif/webp/png/"
                        "video; videos: mp4/mkv/webm/mov); inputs it does not suit keep their own")
    p.add_argument("--codec", default=None, help=f"video encoder (default {DEFAULT_VIDEO_CODEC}; libvpx-vp9 for webm)")
    p.add_argument("--crf", type=int, default=DEFAULT_CRF,
                   help=f"constant-quality factor, lower is better (default {DEFAULT_CRF}: visually near-lossless "
                        "for x264)")
    p.add_argument("--x264-preset", "--preset", dest="preset", choices=X264_PRESETS, default=DEFAULT_PRESET,
                   metavar="PRESET",
                   help=f"x264/x265 speed preset (default {DEFAULT_PRESET}: keeps up with the model; the quality "
                        "is set by --crf, slower presets only make the file smaller)")
    p.add_argument("--pix-fmt", default=DEFAULT_PIX_FMT, help="video pixel format")
    p.add_argument("--start", type=parse_time, default=0.0,
                   help="videos and animations: begin at this time, in seconds or HH:MM:SS[.ms]")
    p.add_argument("--max-frames", type=int, default=None,
                   help="videos and animations: stop after this many frames (a preview)")
    p.add_argument("--realtime", action="store_true",
                   help="videos: keep pace with the source's clock, dropping the frames the model has no time for "
                        "(a y4m output repeats the last frame for them); reports frames shown and dropped")
    p.add_argument("--video-path", choices=VIDEO_PATHS, default="auto",
                   help="videos: yuv runs a luma-first model (stream) on the decoded planes: luma through the "
                        "network, chroma interpolated, no RGB image at the output size (faster); rgb converts "
                        "frames to RGB and back; auto (default): yuv for a luma-first model with an even scale "
                        "writing yuv420p (a video file or -o -), else rgb")
    p.add_argument("--compare", action="store_true", help="also write OUT_compare.png: bicubic | model on a crop")
    p.add_argument("--compare-with", metavar="MODEL", help=f"--compare, with a third panel: this model's output "
                                                            f"({', '.join(MODEL_NAMES)} or a .keras file)")
    p.add_argument("--runtime", choices=RUNTIMES, default="keras",
                   help="what runs the network: keras (default), or OpenVINO / ONNX Runtime where installed "
                        "(pip install -r requirements-runtimes.txt; benchmarks/bench_runtimes.py measures which is "
                        "faster for a model); the stream model's YUV video path runs on them too")
    p.add_argument("--int8", nargs="?", const="inputs", default=None, metavar="CALIBRATION",
                   help="OpenVINO int8 (implies --runtime openvino), calibrated on the inputs' own frames (or on a "
                        "folder of images or a video given here) and kept only if it loses at most 0.1 dB Y-PSNR "
                        "against fp32 on held-back frames; else the float model runs and the summary says why")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def parse_time(text):
    """Seconds from "12.5", "1:02.5" (MM:SS) or "01:02:03.5" (HH:MM:SS); for --start."""
    parts = str(text).strip().split(":")
    try:
        if len(parts) > 3 or any(p == "" for p in parts):
            raise ValueError(text)
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use seconds (12.5) or HH:MM:SS[.ms]") from None
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    if seconds < 0 or not math.isfinite(seconds) or any(v < 0 for v in values) or any(v >= 60 for v in values[1:]):
        raise argparse.ArgumentTypeError(f"{text!r} is not a time: use seconds (12.5) or HH:MM:SS[.ms]")
    return seconds


def check_args(args):
    """Check the settings that need no model, and the model file (its receptive field, read from the file,
    gives the overlap a --tile must exceed). Returns the model's path; raises UsageError or
    FileNotFoundError."""
    for name in ("tile", "batch_size", "max_frames"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.overlap is not None and args.overlap < 0:
        raise UsageError("--overlap must be at least 0")
    path = resolve_model_path(args.model)
    check_runtime(args)
    if args.compare_with is not None:
        args.compare, args.compare_with = True, resolve_model_path(args.compare_with)
    try:
        radius, luma_scale = file_receptive_radius(path), file_luma_first_scale(path)
    except ValueError as e:
        raise UsageError(f"cannot load the model {path}: {e}") from e
    obstacles = yuv_path_obstacles(luma_scale, DEFAULT_PIX_FMT if is_pipe(args.output) else args.pix_fmt)
    args.luma_path = args.video_path != "rgb" and not obstacles  # videos go through the YUV path (its timing)
    if args.video_path == "yuv" and obstacles:
        raise UsageError(f"--video-path yuv cannot run with {path.name}: " + "; ".join(obstacles))
    if args.tile is not None:
        overlap = args.overlap if args.overlap is not None else overlap_for_radius(radius)
        if args.tile <= 2 * overlap:
            source = "--overlap" if args.overlap is not None else f"the overlap {path.name} needs"
            raise UsageError(f"--tile {args.tile} is too small for {source} ({overlap}): use --tile "
                             f"{2 * overlap + 1} or more" + ("" if args.overlap is not None else
                                                              ", or a smaller --overlap"))
    return path


def check_job(job, inputs, overwrite, compare):
    """None when the job may run, else ("skipped"|"failed", reason)."""
    if is_pipe(job.dst):
        return check_input(job)
    dst = job.dst.resolve()
    outputs = [dst, compare_path(dst)] if compare else [dst]
    for out in outputs:
        if out in inputs:
            return "failed", f"refusing to overwrite the input {out}"
    if not overwrite:
        existing = [str(out) for out in outputs if out.exists()]
        if existing:
            return "skipped", f"{', '.join(existing)} exists (use --overwrite to replace it)"
    if job.kind == "image" and job.dst.suffix.lower() in VIDEO_SUFFIXES:
        return "failed", f"a still image cannot be written as a video ({job.dst.suffix})"
    if job.kind == "video" and job.dst.suffix.lower() not in VIDEO_SUFFIXES:
        return "failed", f"a video can be written as {', '.join(sorted(VIDEO_SUFFIXES))}, not {job.dst.suffix}"
    return check_input(job)


def check_input(job):
    """None when the input looks usable from its header, else ("failed", reason): a cheap look before any
    model is loaded (damage further into a file is found when it is decoded)."""
    try:
        if job.kind == "video":
            open_video(job.src).close()
        else:
            resizer.image_size(job.src)
    except (ImageLoadError, VideoError) as e:
        return "failed", failure_reason(job.src, e)
    return None


# --- the job list --------------------------------------------------------------------------------------


@dataclass
class Job:
    """One input file and the output it becomes."""

    src: Path | str  # a path, or a URL (is_url)
    dst: Path  # PIPE ("-"): stdout
    kind: str  # "image", "animation" or "video"


def plan_jobs(inputs, output, fmt=None):
    """Pair every input file (or URL) with its output path. Returns (jobs, problems): problems are (path,
    reason) for folders with nothing to upscale. An input that does not exist raises UsageError. Output PIPE
    takes one video."""
    output = Path(output)
    inputs = [p if is_url(p) else Path(p) for p in inputs]
    if is_pipe(output):
        if len(inputs) != 1 or media_kind(inputs[0]) != "video":
            raise ValueError("-o - (YUV4MPEG2 to stdout, for a player) takes one video file or URL")
        if not is_url(inputs[0]) and not inputs[0].is_file():
            raise UsageError(f"{inputs[0]}: no such file or folder")
        return [Job(inputs[0], output, "video")], []
    single_file = (len(inputs) == 1 and (is_url(inputs[0]) or inputs[0].is_file()) and output.suffix
                   and not output.is_dir())
    if not single_file and output.exists() and not output.is_dir():
        raise ValueError(f"-o {output} is a file; several inputs or a folder need an output folder")
    jobs, problems = [], []
    if single_file:
        src = inputs[0]
        kind = media_kind(src)
        if fmt is not None and output.suffix.lower().lstrip(".") not in {fmt, "jpeg" if fmt == "jpg" else fmt}:
            raise ValueError(f"--format {fmt} disagrees with the output name {output}")
        return [Job(src, output, kind)], problems
    for src in inputs:
        if src.is_dir():
            base = output if len(inputs) == 1 else output / src.resolve().name
            files = find_media(src, exclude=output.resolve())
            if not files:
                problems.append((src, "no images or videos in this folder"))
            for path in files:
                kind = media_kind(path)
                jobs.append(Job(path, (base / path.relative_to(src)).with_suffix(output_suffix(path, kind, fmt)),
                                kind))
        elif is_url(src):
            suffix = "." + fmt if fmt in VIDEO_FORMATS else ".mp4"
            jobs.append(Job(src, (output / source_name(src)).with_suffix(suffix), "video"))
        elif src.is_file():
            kind = media_kind(src)
            jobs.append(Job(src, (output / src.name).with_suffix(output_suffix(src, kind, fmt)), kind))
        else:  # a missing input is a usage error: nothing runs (exit 2), as for any other bad argument
            raise UsageError(f"{src}: no such file or folder")
    return jobs, problems


def media_kind(path):
    """"video" for a URL or by extension, "animation" for a multi-frame GIF/WebP/PNG, else "image"."""
    if is_url(path):
        return "video"
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in ANIMATED_SUFFIXES:
        info = source_info(path)
        if info is not None and info.frames > 1:
            return "animation"
        if suffix == ".gif" and info is not None:
            return "animation"  # a one-frame GIF still goes out as a GIF with its palette and transparency
    return "image"


def output_suffix(src, kind, fmt):
    """The output extension: --format where it suits the kind of input, else the input's own."""
    allowed = {"image": STILL_FORMATS, "animation": ANIMATION_FORMATS, "video": VIDEO_FORMATS}[kind]
    if fmt is not None and fmt in allowed:
        return "." + fmt
    return src.suffix


def find_media(folder, exclude=None):
    """Image and video files under folder, recursively, sorted; hidden files, atomic_output leftovers and
    anything inside `exclude` (the output folder) are left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or is_temp_output(path) or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        if path.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and not path.name.endswith(COMPARE_SUFFIX):
            found.append(path)
    return found


def model_label(path):
    """How --compare names a model: a shipped one by its --model name ("shipped psnr"), any other by its folder
    and stem (runs/demo/generator.keras: "demo/generator")."""
    path = Path(path).resolve()
    shipped = [name for name, file in MODEL_NAMES.items() if Path(file).resolve() == path]
    return f"shipped {shipped[0]}" if shipped else f"{path.parent.name}/{path.stem}"


def first_frame_size(jobs):
    """(width, height) of the frames of the first video or animation among the jobs whose size can be read
    (what load_fastest times the runtimes on), or None when there are only still images."""
    return next((size for size in map(frame_size, jobs) if size is not None), None)


def check_runtime(args):
    """--runtime and --int8: installed and consistent (raises UsageError, naming how to install a missing runtime)."""
    if args.int8 is not None:
        if args.runtime == "onnx":
            raise UsageError("--int8 runs on OpenVINO, not --runtime onnx")
        args.runtime = "openvino"
    if args.runtime == "keras":
        return
    if args.compile == "on":
        raise UsageError(f"--compile is Keras' XLA; --runtime {args.runtime} compiles the model itself")
    args.precision = runtime_precision(args.runtime, args.precision)
    try:
        deploy.check_installed(args.runtime, "int8" if args.int8 is not None else args.precision)
    except (deploy.MissingRuntime, ValueError) as e:
        raise UsageError(f"--runtime {args.runtime}: {e}") from None
    if args.int8 not in (None, "inputs") and not Path(args.int8).exists():
        raise UsageError(f"--int8 {args.int8}: no such folder of images or video to calibrate with")


def runtime_precision(runtime, precision):
    """The float precision an optional runtime computes in: --precision, or for auto bf16 where OpenVINO has it
    natively (resolve_precision's rule) and fp32 elsewhere (ONNX Runtime runs fp32 only here)."""
    if precision != "auto":
        return precision
    return resolve_precision() if runtime == "openvino" else "fp32"


def load_on_runtime(path, args, jobs):
    """(the fp32 Keras model whose forward pass now runs on --runtime, the summary's note: a RuntimeNote).
    Each network is converted when first needed: the whole RGB model, and for a luma-first model's YUV path
    its luma network (inference.luma_model), made now for the BT.709 luma that video outputs take when the
    first video goes that way, and joined with the making of the output's planes in one graph where the
    runtime can (OpenVINO). With --int8 each is quantised on the inputs' frames (or --int8's folder or video);
    one that loses more than 0.1 dB runs in float instead, and the note gives the measured loss."""
    model, note = load_model(path, "fp32"), RuntimeNote()
    calibration = None
    if args.int8 is not None:
        source = calibration_frames(jobs) if args.int8 == "inputs" else args.int8
        calibration = functools.cache(lambda: deploy.read_frames(source))  # read once, for each network

    luma_runners = {}  # luma weights -> the YUV path's luma network on the runtime

    def forward_on_runtime(keras_model, luma_weights=None):
        runner = runner_for(keras_model, args, calibration, luma_weights, note)
        if luma_weights is not None:
            luma_runners[tuple(luma_weights)] = runner
        return runner.predict

    def planes_on_runtime(luma_weights, finish):  # the luma network and the output's planes in one graph
        planes = luma_runners[tuple(luma_weights)].with_finish(finish)
        return None if planes is None else planes.predict

    luma_forward, planes_forward = (forward_on_runtime, planes_on_runtime) if args.luma_path else (None, None)
    run_forward_on(model, on_first_call(lambda: forward_on_runtime(model)), luma_forward, planes_forward)
    if times_luma_path(args, jobs):
        planes_model(model, BT709_LUMA)  # converted (int8: and checked) before the first frame, with the planes
    return model, note


def runner_for(keras_model, args, calibration, luma_weights, note):
    """keras_model on --runtime (deploy.Runtime), in int8 where it keeps within the tolerance; adds to note."""
    network = "" if luma_weights is None else " for the YUV path's luma"
    refused = ""
    if args.int8 is not None:
        try:
            runner = deploy.load_runtime(keras_model, "openvino", "int8", calibration(), luma_weights=luma_weights)
            note.add(f"ran openvino int8{network} (loses {runner.fidelity.loss_db:.3f} dB on "
                     f"{runner.fidelity.frames} held-back frames)")
            return runner
        except deploy.QualityError as e:
            refused = f"int8 refused{network} ({e}); "
    runner = deploy.load_runtime(keras_model, args.runtime, args.precision)
    note.add(f"{refused}ran {args.runtime} {runner.precision}{network}")
    return runner


class RuntimeNote:
    """The summary's account of --runtime: a line per network converted (the RGB model, the YUV path's luma),
    added as each is first needed."""

    def __init__(self):
        self.lines = []

    def add(self, line):
        self.lines.append(line)

    def __str__(self):
        return "; ".join(self.lines) or "no frame needed the runtime"


def on_first_call(build):
    """A function that calls what build() returns, building it on the first call."""
    built = []

    def call(*a):
        if not built:
            built.append(build())
        return built[0](*a)

    return call


def calibration_frames(jobs):
    """--int8's calibration from the inputs: the first video (frames spread over its length), else the frames
    of the still images and animations (up to what deploy calibrates and holds back)."""
    video = next((job for job in jobs if job.kind == "video" and not is_url(job.src)), None)
    if video is not None:
        return video.src
    wanted, frames = deploy.CALIBRATION_FRAMES + deploy.HELD_BACK_FRAMES, []
    for job in jobs:
        with Image.open(job.src) as im:
            for frame in ImageSequence.Iterator(im):
                frames.append(np.asarray(frame.convert("RGB")))
                if len(frames) >= wanted:
                    return frames
    return frames


def times_luma_path(args, jobs):
    """Whether load_fastest times the YUV path's luma: the first video or animation is a video that the YUV path
    takes (a luma-first model writing yuv420p: check_args), not an animation, which takes the RGB path."""
    first = next((job for job in jobs if frame_size(job) is not None), None)
    return bool(getattr(args, "luma_path", False) and first is not None and first.kind == "video")


def frame_size(job):
    """(width, height) of a video's or an animation's frames, or None (a still image, or unreadable)."""
    try:
        if job.kind == "video":
            with open_video(job.src) as inp:
                codec = inp.streams.video[0].codec_context
                return codec.width, codec.height
        if job.kind == "animation":
            with Image.open(job.src) as im:
                return im.size
    except Exception:  # the job itself reports it
        return None
    return None


if __name__ == "__main__":
    sys.exit(main())
