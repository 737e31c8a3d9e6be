"""Benchmark the runtimes of deploy.py: one 640x360 frame -> x4, per model, against Keras fp32 in the same run.

    python benchmarks/bench_runtimes.py                      # the stream and video models, 15 rounds (minutes)
    python benchmarks/bench_runtimes.py --rounds 3 --models stream   # a quick look
    python benchmarks/bench_runtimes.py --calibration frames/ clip.mp4   # int8 calibrated on these instead
    python benchmarks/bench_runtimes.py --max-isa avx2       # as a CPU without AVX-512 (emulated, see cap_isa)

Per model, the candidates are Keras fp32 (the baseline: predict_on_batch, as upscale.py runs it), Keras bf16
(a mixed_bfloat16 copy), ONNX Runtime fp32, and OpenVINO fp32, bf16 and int8 (NNCF, one quantised model per
calibration source: scikit-image's photos, and ../shared/data/clips/big_buck_bunny.mp4 where it is there).
Each is warmed up once, then timed once per round in interleaved rounds, so a change in the machine's load
hits all alike; the median counts. Printed per candidate: ms per frame (model call only, the whole frame in
one call), its speed as a ratio of Keras fp32's in the same run, and its fidelity: the Y-PSNR of its output
against Keras fp32's on the timed frame, and for int8 what it loses against Keras fp32 on the held-back
calibration frames (deploy.measure_fidelity), and whether load_runtime keeps it (<= 0.1 dB). A luma-first
model (stream) gets a second table: the same runtimes running what its YUV video path runs (inference.luma_model:
the network and the output's BT.709 luma only, no RGB at the output's size). An optional runtime that is not
installed is left out, and said so. --help answers without loading Keras.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_upscale import cap_isa, cpu_name, load_average, test_image  # noqa: E402
from peak import describe_peak, generator_flops, measure_peak  # noqa: E402

import deploy  # noqa: E402

# -----------------------------------------------------------------------------
# configuration
MODELS = ("stream", "video")
FRAME_SIZE = (640, 360)  # LR width, height
ROUNDS = 15
CLIP = ROOT.parent / "shared" / "data" / "clips" / "big_buck_bunny.mp4"
INT8_PEAK_NOTE = ("* int8's convolutions run on the CPU's int8 dot products (VNNI where it has them), whose peak "
                  "is not measured here: its share can pass 100%")
# -----------------------------------------------------------------------------


def candidates(keras_model, calibrations, luma_weights=None, *, bf16=True, onnx=True):
    """{label: (Runtime, note)} for every runtime installed here; int8 once per calibration source.
    luma_weights: keras_model is a luma model (inference.luma_model) with these weights. bf16, onnx: whether
    the bf16 and ONNX Runtime candidates are in (left out on a CPU without native bf16, and under --max-isa)."""
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    out = {f"keras {p}": (deploy.load_runtime(keras_model, "keras", p), "") for p in precisions}
    others = [("onnx", "fp32")] * onnx + [("openvino", p) for p in precisions]
    for runtime, precision in others:
        try:
            out[f"{runtime} {precision}"] = (deploy.load_runtime(keras_model, runtime, precision), "")
        except deploy.MissingRuntime as err:
            print(f"  left out: {err}")
    for source in calibrations:
        name = "photos" if source is None else Path(source).name
        frames = deploy.read_frames(source)  # None: scikit-image's photos
        try:
            rt = deploy.load_runtime(keras_model, "openvino", "int8", frames, int8_tolerance_db=float("inf"),
                                     luma_weights=luma_weights)
        except deploy.MissingRuntime as err:
            print(f"  left out: {err}")
            continue
        kept = "kept" if rt.fidelity.loss_db <= deploy.INT8_TOLERANCE_DB else "REJECTED by load_runtime"
        out[f"openvino int8 ({name})"] = (rt, f"held back: {rt.fidelity} -> {kept}")
    return out


def interleaved_ms(runs, x, rounds):
    """{label: median ms of predict(x)} over `rounds` interleaved rounds, after one warm-up call each."""
    for rt, _ in runs.values():
        rt.predict(x)
    times = {label: [] for label in runs}
    for _ in range(rounds):
        for label, (rt, _) in runs.items():
            started = time.perf_counter()
            rt.predict(x)
            times[label].append(time.perf_counter() - started)
    return {label: 1000 * float(np.median(t)) for label, t in times.items()}


def agreement_db(reference, output, scale):
    """Y-PSNR (border cropped) of an output against the reference output, both rounded to uint8."""
    import metrics
    import resizer

    psnr = metrics.calculate_psnr(resizer.to_uint8(output[0]), resizer.to_uint8(reference[0]), scale)
    return "identical" if psnr >= deploy.IDENTICAL_DB else f"{psnr:.1f} dB"


def share_of_peak(label, gflops, peak):
    """The achieved GFLOP/s as a share of the peak of the precision it computes in (int8's float parts run
    bf16 where native, and there is no int8 matmul peak here, so it is set against bf16's)."""
    precision = "fp32" if "fp32" in label or "bf16" not in peak else "bf16"
    mark = "*" if "int8" in label else " "  # see INT8_PEAK_NOTE
    return f"{gflops:6.0f} GFLOP/s, {100 * gflops / peak[precision]:5.1f}% of {precision} peak{mark}"


def report_model(name, rounds, calibrations, peak, **which):
    """Build, time and print every candidate for one model, and for a luma-first one for its YUV path's luma;
    peak: measure_peak() of this run; which: candidates' bf16 and onnx."""
    import inference

    keras_model = deploy.load_keras(name)
    print(f"\n{name} ({deploy.resolve_model_path(name).name}): building the runtimes ...", flush=True)
    report_runs(keras_model, rounds, calibrations, peak, **which)
    if inference.luma_upsample(keras_model) is not None:
        print(f"\n{name}, the YUV path's luma (what --video-path yuv runs: the network and the BT.709 luma): "
              "building the runtimes ...", flush=True)
        weights = inference.BT709_LUMA
        report_runs(inference.luma_model(keras_model, weights), rounds, calibrations, peak, weights, **which)


def report_runs(keras_model, rounds, calibrations, peak, luma_weights=None, **which):
    """Build, time and print every candidate running keras_model (a luma model with luma_weights)."""
    started = time.perf_counter()
    runs = candidates(keras_model, calibrations, luma_weights, **which)
    print(f"  built in {time.perf_counter() - started:.0f} s; timing {rounds} interleaved rounds of "
          f"{FRAME_SIZE[0]}x{FRAME_SIZE[1]} -> x{deploy.model_scale(keras_model)} ({load_average()})", flush=True)
    x = deploy.as_float_batch(test_image(*FRAME_SIZE)[None])
    ms = interleaved_ms(runs, x, rounds)
    baseline = ms["keras fp32"]
    reference = runs["keras fp32"][0].predict(x)
    scale = deploy.model_scale(keras_model)
    flops = generator_flops(keras_model, FRAME_SIZE[1], FRAME_SIZE[0])
    print(f"  {flops / 1e9:.2f} GFLOP a frame (convolutions)")
    print(f"  {'runtime':<30} {'ms/frame':>9} {'frames/s':>9} {'vs Keras fp32':>14}  {'share of peak':<36} "
          "fidelity vs Keras fp32")
    for label, (rt, note) in runs.items():
        fidelity = agreement_db(reference, rt.predict(x), scale)
        share = share_of_peak(label, flops / ms[label] / 1e6, peak)
        print(f"  {label:<30} {ms[label]:9.1f} {1000 / ms[label]:9.2f} {baseline / ms[label]:13.2f}x  {share:<36} "
              f"{fidelity} on the frame{'; ' + note if note else ''}")
    if any("int8" in label for label in runs):
        print(f"  {INT8_PEAK_NOTE}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="shipped model names or .keras files")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed interleaved rounds (median counts)")
    p.add_argument("--calibration", nargs="*", type=Path, default=None,
                   help="int8 calibration sources (folders of frames or videos); default: the skimage photos, and "
                        "the big_buck_bunny clip where ../shared/data has it")
    p.add_argument("--max-isa", choices=["avx2"], default=None,
                   help="compute as a CPU without AVX-512 would (emulated here: see bench_upscale.cap_isa)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    capped = cap_isa(args.max_isa) if args.max_isa else None
    calibrations = args.calibration if args.calibration is not None else [None] + ([CLIP] if CLIP.is_file() else [])
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines)

    # isort: split
    import keras

    import upscale

    started = time.perf_counter()
    print(f"bench_runtimes: {cpu_name()} ({platform.machine()}), {os.cpu_count()} CPU cores (native bf16: "
          f"{upscale.cpu_has_native_bf16()}), Keras {keras.__version__}; {load_average()}")
    if capped:
        print(capped)
    bf16 = upscale.cpu_has_native_bf16()
    peak = measure_peak(("fp32", "bf16") if bf16 else ("fp32",))
    print(f"peak of this CPU now: {describe_peak(peak)}")
    for name in args.models:
        report_model(name, args.rounds, calibrations, peak, bf16=bf16, onnx=capped is None)
    print(f"\nbench_runtimes: {time.perf_counter() - started:.0f} s in all; at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
