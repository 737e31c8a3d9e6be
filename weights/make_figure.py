"""The README's comparison picture: bicubic | PSNR model | GAN model | original, on x4 crops of benchmark images,
each panel captioned with its whole image's PSNR (Y, border 4) and NIQE (no reference, lower = more natural),
and a texture measure: each method's high-frequency energy (variance of the Laplacian of Y) as a fraction of
the original's, averaged over whole images (1.0 = as much fine detail as the original; PSNR does not see this).

    python fetcher.py dataset set5 --out data/benchmarks && python fetcher.py dataset set14 --out data/benchmarks
    python weights/make_figure.py data/benchmarks/set14/baboon.png data/benchmarks/set5/butterfly.png \
        -o docs/comparison.png --texture data/benchmarks/set5 data/benchmarks/set14
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import metrics  # noqa: E402
import resizer  # noqa: E402
import upscale  # noqa: E402

WEIGHTS = Path(__file__).resolve().parent
MODELS = {"PSNR model": WEIGHTS / "srresnet_x4_psnr.keras", "GAN model": WEIGHTS / "srgan_x4.keras"}
SCALE, CROP = 4, 40  # LR pixels per crop side: 160 px shown per panel


def comparison_row(path, models):
    """(panels, captions) for one image: bicubic, each model, original, on its most detailed crop; each caption
    gives the whole image's PSNR against the original and its NIQE (the original: NIQE only)."""
    hr = resizer.mod_crop(resizer.load_image(path), SCALE)
    lr = resizer.lr_from_hr(hr, SCALE)
    top, left = upscale.detail_crop(lr, CROP)
    window = (slice(top * SCALE, (top + CROP) * SCALE), slice(left * SCALE, (left + CROP) * SCALE))
    bicubic = resizer.resize(lr, (lr.shape[1] * SCALE, lr.shape[0] * SCALE), "bicubic")
    outputs = [bicubic] + [upscale.upscale_array(m, lr) for m in models.values()]
    captions = [f"{metrics.calculate_psnr(out, hr, SCALE):.2f} dB, NIQE {metrics.calculate_niqe(out, SCALE):.2f}"
                for out in outputs] + [f"NIQE {metrics.calculate_niqe(hr, SCALE):.2f}"]
    return [out[window] for out in outputs] + [hr[window]], captions


def high_frequency_energy(rgb):
    """Variance of the Laplacian of the Y channel, border of SCALE cropped."""
    return float(ndimage.laplace(metrics.rgb_to_y(rgb)[SCALE:-SCALE, SCALE:-SCALE]).var())


def texture_ratios(paths, models):
    """{method: mean over images of its high-frequency energy / the original's}, bicubic first."""
    ratios = {"bicubic": [], **{name: [] for name in models}}
    for path in paths:
        hr = resizer.mod_crop(resizer.load_image(path), SCALE)
        lr = resizer.lr_from_hr(hr, SCALE)
        original = high_frequency_energy(hr)
        ratios["bicubic"].append(high_frequency_energy(metrics.bicubic_upscale(lr, SCALE)) / original)
        for name, model in models.items():
            ratios[name].append(high_frequency_energy(upscale.upscale_array(model, lr)) / original)
    return {name: float(np.mean(values)) for name, values in ratios.items()}


def main(argv=None):
    """Write the comparison grid for the given HR images."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/comparison.png"))
    parser.add_argument("--texture", nargs="*", type=Path, default=[], metavar="DIR",
                        help="folders of HR images to measure high-frequency energy on")
    args = parser.parse_args(argv)
    models = {name: upscale.load_model(path) for name, path in MODELS.items()}
    rows = [comparison_row(path, models) for path in args.images]
    labels = ["bicubic", *models, "original"]
    side, gap, band, caption = CROP * SCALE, 6, 26, 20
    row_height = side + caption + gap
    canvas = Image.new("RGB", (len(labels) * (side + gap) - gap, band + len(rows) * row_height - gap), "white")
    draw, font, small = ImageDraw.Draw(canvas), ImageFont.load_default(size=18), ImageFont.load_default(size=13)
    for c, label in enumerate(labels):
        draw.text((c * (side + gap) + 4, 3), label, fill="black", font=font)
    for r, (panels, captions) in enumerate(rows):
        y = band + r * row_height
        for c, (panel, text) in enumerate(zip(panels, captions, strict=True)):
            canvas.paste(Image.fromarray(np.ascontiguousarray(panel)), (c * (side + gap), y))
            draw.text((c * (side + gap) + 2, y + side + 3), text, fill="black", font=small)
    with resizer.atomic_output(args.output) as tmp:
        canvas.save(tmp, format="PNG")
    print(f"wrote {args.output} ({len(rows)} image(s), {' | '.join(labels)})")
    if args.texture:
        paths = sorted(p for folder in args.texture for p in folder.glob("*.png"))
        for name, ratio in texture_ratios(paths, models).items():
            print(f"{name}: high-frequency energy {ratio:.3f} of the original's (mean over {len(paths)} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
