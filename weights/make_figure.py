"""The README's comparison picture: bicubic | PSNR model | GAN model | original, on x4 crops of benchmark images.

    python weights/make_figure.py ../shared/data/benchmarks/Set14/baboon.png ../shared/data/benchmarks/Set5/butterfly.png \
        -o docs/comparison.png
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import resizer  # noqa: E402
import upscale  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent
MODELS = {"PSNR model": WEIGHTS / "srresnet_x4_psnr.keras", "GAN model": WEIGHTS / "srgan_x4.keras"}
SCALE, CROP = 4, 40  # LR pixels per crop side: 160 px shown per panel


def comparison_row(path, models):
    """The panels for one image: bicubic, each model, original, on its most detailed crop."""
    hr = resizer.mod_crop(resizer.load_image(path), SCALE)
    lr = resizer.lr_from_hr(hr, SCALE)
    top, left = upscale.detail_crop(lr, CROP)
    window = (slice(top * SCALE, (top + CROP) * SCALE), slice(left * SCALE, (left + CROP) * SCALE))
    bicubic = resizer.resize(lr, (lr.shape[1] * SCALE, lr.shape[0] * SCALE), "bicubic")
    panels = [bicubic[window]] + [upscale.upscale_array(m, lr)[window] for m in models.values()] + [hr[window]]
    return panels


def main(argv=None):
    """Write the comparison grid for the given HR images."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/comparison.png"))
    args = parser.parse_args(argv)
    models = {name: upscale.load_model(path) for name, path in MODELS.items()}
    rows = [comparison_row(path, models) for path in args.images]
    labels = ["bicubic", *models, "original"]
    side, gap, band = CROP * SCALE, 6, 26
    canvas = Image.new("RGB", (len(labels) * (side + gap) - gap, band + len(rows) * (side + gap) - gap), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=18)
    for c, label in enumerate(labels):
        draw.text((c * (side + gap) + 4, 3), label, fill="black", font=font)
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (c * (side + gap), band + r * (side + gap)))
    with resizer.atomic_output(args.output) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {args.output} ({len(rows)} image(s), {' | '.join(labels)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
