"""Benchmark training input: PNG pair folders vs TFRecord shards through tf.data, decode included.

    python benchmarks/bench_input.py                  # scikit-image's sample photos, patches mode
    python benchmarks/bench_input.py --patches 64 --repeat 5

Builds the same dataset twice with create_dataset.build_dataset (--format png and --format tfrecord) in a
temporary folder, then reads the train split end to end through tf.data in the same run: PNG pairs as
flow.py reads them (file list -> read_file -> decode_png, parallel map) and TFRecord shards through
create_dataset.tfrecord_pair_dataset (--shard-mb 1: several shards). Both are batched (16) and prefetched; each pass is timed, the best of
--repeat kept, and the ratio printed. The files sit in the page cache after the first pass, so this
measures decode and pipeline overhead; on network storage fewer, larger files gain more.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import create_dataset  # noqa: E402

# -----------------------------------------------------------------------------
PATCHES = 32  # crops per sample photo
SHARD_MB = 1.0  # small shards, so that this small split is read from several files at once, as a large one is
BATCH = 16
REPEAT = 3
# -----------------------------------------------------------------------------


def png_pipeline(tf, split):
    """PNG pairs the way flow.py's tf_pair_dataset reads them (without its augmentation)."""
    paths = tf.data.Dataset.from_tensor_slices(([str(p) for p in split.lr_paths], [str(p) for p in split.hr_paths]))

    def decode(lr_path, hr_path):
        return (tf.io.decode_png(tf.io.read_file(lr_path), channels=3),
                tf.io.decode_png(tf.io.read_file(hr_path), channels=3))

    return paths.map(decode, num_parallel_calls=tf.data.AUTOTUNE)


def timed_pass(dataset):
    """Seconds and images for one pass over a batched, prefetched dataset."""
    started, images = time.perf_counter(), 0
    for lr, _ in dataset:
        images += int(lr.shape[0])
    return time.perf_counter() - started, images


def main(argv=None):
    """Build both formats, time a pass of each (interleaved, best of --repeat) and print images/s and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", type=int, default=PATCHES, help="crops per sample photo")
    parser.add_argument("--shard-mb", type=float, default=SHARD_MB, help="TFRecord shard size in MB")
    parser.add_argument("--repeat", type=int, default=REPEAT, help="timed passes per format; the best is kept")
    args = parser.parse_args(argv)
    import runtime  # noqa: F401 (first: TensorFlow starts without its C++ log lines)

    # isort: split
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="bench_input-") as tmp:
        tmp = Path(tmp)
        common = {"samples": True, "mode": "patches", "patches": args.patches, "progress": False}
        create_dataset.build_dataset([], tmp / "png", **common)
        manifest = create_dataset.build_dataset([], tmp / "tfr", format="tfrecord", shard_mb=args.shard_mb,
                                                **common)
        train = create_dataset.check_dataset(tmp / "png", ("train",))[0]["train"]
        files = create_dataset.tfrecord_files(tmp / "tfr", "train")
        png_bytes = sum(p.stat().st_size for p in (*train.lr_paths, *train.hr_paths))
        print(f"train split: {len(train)} pairs of {manifest['parameters']['hr_size']} px HR; PNG: "
              f"{2 * len(train)} files, {png_bytes / 1e6:.1f} MB; TFRecord: {len(files)} shard(s), "
              f"{sum(Path(f).stat().st_size for f in files) / 1e6:.1f} MB; {os.cpu_count()} CPUs")
        pipelines = {"PNG folders": png_pipeline(tf, train),
                     "TFRecord shards": create_dataset.tfrecord_pair_dataset(files)}
        pipelines = {k: v.batch(BATCH).prefetch(tf.data.AUTOTUNE) for k, v in pipelines.items()}
        for dataset in pipelines.values():
            timed_pass(dataset)  # warm-up: page cache, tf.data threads, graph tracing
        best = {}
        for _ in range(args.repeat):  # interleaved, so a busy moment hits both alike
            for label, dataset in pipelines.items():
                seconds, images = timed_pass(dataset)
                best[label] = min(best.get(label, (seconds, images)), (seconds, images))
    rates = {}
    for label, (seconds, images) in best.items():
        rates[label] = images / seconds
        print(f"  {label:<16} {images:5d} pairs in {seconds:6.3f} s = {rates[label]:8.0f} pairs/s "
              f"(best of {args.repeat})")
    print(f"TFRecord vs PNG folders: {rates['TFRecord shards'] / rates['PNG folders']:.2f}x pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
