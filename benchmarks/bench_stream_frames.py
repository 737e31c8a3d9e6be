"""How much could the previous frame give a stream model? An oracle bound on the stream benchmark's clips.

    python benchmarks/bench_stream_frames.py --data data/stream-x4        # a DATASET's test split (its photos)
    python benchmarks/bench_stream_frames.py --data data/benchmarks/set14 --crf 28 34

A network that sees neighbouring frames can only restore what a codec lost in one frame if the next one lost
something else. This measures that, with the clips of `flow.py evaluate-stream` (each photo filmed by its
panning window, downscaled x4 by antialiased bicubic, libx264 preset medium yuv420p at each CRF, decoded): per
frame after the first, the decoded frame's codec error (its luma against the clean LR frame's) beside the error of
its average with the previous decoded frame, aligned by the camera's known motion (the oracle: the exact pan,
no motion estimation, bicubic spline shift), and the correlation of the two frames' aligned errors. Printed per
CRF: Y-PSNR of the decoded LR frames against the clean ones, of the aligned two-frame average, the gain, the
alignment's own loss on clean frames, the correlation, and what the best weighting of two frames would gain with a
perfect alignment (the error's power times (1 + r) / 2): near r = 1, P and B frames carry their references' errors
and the neighbours have little to add; near 0, averaging N frames would cut the error's power N-fold.
--help answers without loading Keras.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# -----------------------------------------------------------------------------
# configuration
CRFS = (18, 28, 34)
SCALE = 4
BORDER = 8  # LR pixels left out at each edge: the shift's border and the codec's edge blocks
# -----------------------------------------------------------------------------


def clip_errors(photo, crf, scale=SCALE):
    """Per frame after the first of the photo's benchmark clip at a CRF: (mean squared codec error of the decoded
    luma, that of its average with the aligned previous decoded frame, that of the aligned clean previous frame
    alone, the correlation of the two frames' aligned codec errors), and the clip's frame types."""
    import codec
    from metrics import rgb_to_y

    boxes, window = codec.benchmark_camera((photo.shape[1], photo.shape[0]), scale)
    lr = codec.downscale_frames(codec.render_frames(photo, boxes, window), scale, "bicubic")
    decoded, stream = codec.encode_decode(lr, "libx264", crf=crf, preset=codec.BENCH_PRESET)
    clean, decoded = [rgb_to_y(f) for f in lr], [rgb_to_y(f) for f in decoded]
    rows = []
    for i in range(1, len(lr)):
        align = aligner(boxes[i - 1], boxes[i], scale)
        error = cropped(decoded[i] - clean[i])
        previous_error = cropped(align(decoded[i - 1]) - align(clean[i - 1]))
        average = cropped((decoded[i] + align(decoded[i - 1])) / 2 - clean[i])
        alignment = cropped(align(clean[i - 1]) - clean[i])
        correlation = np.corrcoef(error.ravel(), previous_error.ravel())[0, 1]
        rows.append((np.mean(error**2), np.mean(average**2), np.mean(alignment**2), correlation))
    return rows, stream["frame_types"]


def aligner(previous_box, box, scale):
    """A function shifting a previous LR frame so its content lies where the current frame shows it: the
    camera moved by the boxes' difference (HR pixels), so content moved the other way by that over scale."""
    from scipy import ndimage

    dy, dx = (box[1] - previous_box[1]) / scale, (box[0] - previous_box[0]) / scale
    return lambda frame: ndimage.shift(frame, (-dy, -dx), order=3, mode="nearest")


def cropped(plane):
    """The plane without BORDER pixels at each edge."""
    return plane[BORDER:-BORDER, BORDER:-BORDER]


def best_weighting_gain(correlations):
    """dB gained by the best weighting of two frames whose errors have equal power and these correlations r,
    with a perfect alignment: the error's power falls to (1 + r) / 2 (weights 1/2 each), averaged over frames."""
    return -10 * np.log10(np.mean((1 + np.asarray(correlations)) / 2))


def psnr_of_mse(mse):
    """Y-PSNR in dB of a mean squared error on the 0-255 scale."""
    return 10 * np.log10(255.0**2 / mse)


def run(data, crfs):
    """Measure every photo at every CRF and print one line per CRF (failed photos are named and skipped)."""
    from tqdm import tqdm

    import codec
    import flow
    import resizer

    photos = flow.stream_photos(data)
    results, failed = {crf: [] for crf in crfs}, []
    for photo_path in tqdm(photos, desc="photos", unit="photo"):
        try:
            photo = resizer.load_image(photo_path)
            for crf in crfs:
                rows, _ = clip_errors(photo, crf)
                results[crf] += rows
        except (OSError, ValueError) as e:  # codec.CodecError is a ValueError
            failed.append(f"{photo_path.name}: {e}")
    print(f"bench_stream_frames: {data}, {len(photos) - len(failed)} photos, x{SCALE}, libx264 preset "
          f"{codec.BENCH_PRESET}; luma against the clean LR frames (border {BORDER}), per frame after the first")
    print("| CRF | frames | decoded | + aligned previous (average) | gain | alignment alone, clean | error correlation "
          "| best weighting's gain |")
    print("|---|---|---|---|---|---|---|---|")
    for crf in crfs:
        if not results[crf]:
            continue
        single, average, alignment, correlation = (np.array(column) for column in zip(*results[crf], strict=True))
        gain = psnr_of_mse(average.mean()) - psnr_of_mse(single.mean())
        print(f"| {crf} | {len(single)} | {psnr_of_mse(single.mean()):.2f} dB | {psnr_of_mse(average.mean()):.2f} dB | "
              f"{gain:+.2f} dB | {psnr_of_mse(alignment.mean()):.2f} dB | {np.mean(correlation):.3f} "
              f"(min {np.min(correlation):.3f}) | {best_weighting_gain(correlation):+.2f} dB |")
    for line in failed:
        print(f"failed: {line}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a DATASET (its test split's photos) or a folder of photos")
    p.add_argument("--crf", type=int, nargs="+", default=list(CRFS), help=f"libx264 CRFs (default {CRFS})")
    args = p.parse_args(argv)
    if not all(0 <= crf <= 51 for crf in args.crf):
        p.error("--crf: libx264's CRF lies within 0-51")
    run(args.data, args.crf)


if __name__ == "__main__":
    main()
