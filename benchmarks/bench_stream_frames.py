"""How much could earlier frames give a stream model? An oracle bound on the stream benchmark's clips.

    python benchmarks/bench_stream_frames.py --data data/stream-x4        # a DATASET's test split (its photos)
    python benchmarks/bench_stream_frames.py --data data/benchmarks/set14 --crf 28 34

A network that sees neighbouring frames can only restore what a codec lost in one frame if another frame kept
it. This measures that on the clips of `flow.py evaluate-stream` (each photo filmed by its panning window,
downscaled x4 by antialiased bicubic, libx264 preset medium yuv420p at each CRF, decoded), in the LR frames'
luma against the clean LR frames (border 8), for each frame after the first. Earlier decoded frames are aligned
to it by the camera's known motion (the oracle: the exact pan, no motion estimation; a cubic-spline shift), and
printed per CRF are: the decoded frames' Y-PSNR; that of the frame averaged with the aligned previous one (and the
gain); the alignment's own loss on clean frames; the correlation of the two frames' codec errors (near 1: P and B
frames carry their references' errors, and neighbours have little to add); and two bounds of a linear fusion:
the best weighting (per frame, weights summing to 1, chosen knowing the clean frame) of the frame and the aligned
previous one, and of the frame and every aligned earlier one of its clip. A learned fusion that weights each
pixel differently is not bounded by them; a global one is.
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
    """Per frame after the first of the photo's benchmark clip at a CRF, mean squared errors against the clean LR
    luma: (the decoded frame's, its average with the aligned previous decoded frame's, the aligned clean previous
    frame's alone, the best weighting of the frame and the aligned previous one's, the best weighting of the frame
    and every aligned earlier one's), and the correlation of the frame's codec error with the previous frame's
    (aligned); and the clip's frame types."""
    import codec
    from metrics import rgb_to_y

    boxes, window = codec.benchmark_camera((photo.shape[1], photo.shape[0]), scale)
    lr = codec.downscale_frames(codec.render_frames(photo, boxes, window), scale, "bicubic")
    decoded, stream = codec.encode_decode(lr, "libx264", crf=crf, preset=codec.BENCH_PRESET)
    clean, decoded = [rgb_to_y(f) for f in lr], [rgb_to_y(f) for f in decoded]
    rows = []
    for i in range(1, len(lr)):
        aligns = [aligner(boxes[j], boxes[i], scale) for j in range(i)]
        # each candidate's error against this frame's clean luma: earlier decoded frames aligned (their codec
        # error and the alignment's own), then this decoded frame
        errors = [cropped(align(decoded[j]) - clean[i]) for j, align in enumerate(aligns)]
        errors.append(cropped(decoded[i] - clean[i]))
        average = cropped((decoded[i] + aligns[-1](decoded[i - 1])) / 2 - clean[i])
        alignment = cropped(aligns[-1](clean[i - 1]) - clean[i])
        previous_codec_error = cropped(aligns[-1](decoded[i - 1]) - aligns[-1](clean[i - 1]))
        correlation = np.corrcoef(errors[-1].ravel(), previous_codec_error.ravel())[0, 1]
        rows.append((np.mean(errors[-1] ** 2), np.mean(average**2), np.mean(alignment**2),
                     best_weighting_mse(errors[-2:]), best_weighting_mse(errors), correlation))
    return rows, stream["frame_types"]


def best_weighting_mse(errors):
    """The least mean squared error of any weighted sum (weights summing to 1) of candidates with these error
    planes: 1 / (1' C^+ 1) for the planes' second-moment matrix C (the pseudo-inverse: identical errors make C
    singular)."""
    flat = np.stack([e.ravel() for e in errors])
    covariance = flat @ flat.T / flat.shape[1]
    ones = np.ones(len(errors))
    return 1.0 / (ones @ np.linalg.pinv(covariance) @ ones)


def aligner(previous_box, box, scale):
    """A function shifting a previous LR frame so its content lies where the current frame shows it: the
    camera moved by the boxes' difference (HR pixels), so content moved the other way by that over scale."""
    from scipy import ndimage

    dy, dx = (box[1] - previous_box[1]) / scale, (box[0] - previous_box[0]) / scale
    return lambda frame: ndimage.shift(frame, (-dy, -dx), order=3, mode="nearest")


def cropped(plane):
    """The plane without BORDER pixels at each edge."""
    return plane[BORDER:-BORDER, BORDER:-BORDER]


def psnr_of_mse(mse):
    """Y-PSNR in dB of a mean squared error on the 0-255 scale."""
    return 10 * np.log10(255.0**2 / mse)


def run(data, photos, crfs):
    """Measure every photo at every CRF and print one line per CRF (failed photos are named and skipped)."""
    from tqdm import tqdm

    import codec
    import resizer

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
    print("| CRF | frames | decoded | + aligned previous frame (average) | alignment alone, clean | error "
          "correlation | best weighting of 2 frames | of all frames so far |")
    print("|---|---|---|---|---|---|---|---|")
    for crf in crfs:
        if not results[crf]:
            continue
        single, average, alignment, best_two, best_all, correlation = (
            np.array(column) for column in zip(*results[crf], strict=True))
        decoded = psnr_of_mse(single.mean())

        def gain(mse, decoded=decoded):
            return f"{psnr_of_mse(mse.mean()):.2f} dB ({psnr_of_mse(mse.mean()) - decoded:+.2f})"

        print(f"| {crf} | {len(single)} | {decoded:.2f} dB | {gain(average)} | {psnr_of_mse(alignment.mean()):.2f} dB "
              f"| {np.mean(correlation):.3f} (min {np.min(correlation):.3f}) | {gain(best_two)} | {gain(best_all)} |")
    for line in failed:
        print(f"failed: {line}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a DATASET (its test split's photos) or a folder of photos")
    p.add_argument("--crf", type=int, nargs="+", default=list(CRFS), help=f"libx264 CRFs (default {CRFS})")
    args = p.parse_args(argv)
    import codec
    import flow

    try:
        for crf in args.crf:
            codec.check_rate("libx264", (crf, crf))
        photos = flow.stream_photos(args.data)
    except ValueError as e:  # codec.CodecError is a ValueError
        p.error(str(e))
    run(args.data, photos, args.crf)


if __name__ == "__main__":
    main()
