"""GAN recipes from one PSNR model at equal steps: which brings the most natural texture without artefacts.

    python benchmarks/bench_gan_recipes.py --data data/photos2-x4 --eval SET5_HR_DIR SET14_HR_DIR --steps 500
    python benchmarks/bench_gan_recipes.py      # scikit-image's samples, 40 steps each (16 min 41 s on 2 AVX2 cores,
                                                # plus about 12 s a model for the pattern-free NIQE)

Each recipe is phase 2 of `flow.py train` from the same generator (--init, default the shipped PSNR model), with
the same content loss (L1), adversarial weight, Adam settings, batch, patches, seed and number of steps. What
differs is the discriminator, the GAN loss and the feature matching:

    paper          the paper's discriminator (VGG-style, Dense head, 64 filters) and its vanilla GAN loss
    unet-ragan     Real-ESRGAN's U-Net discriminator with spectral norm (per-pixel logits) and ESRGAN's
                   relativistic average loss
    unet-ragan-fm  the same, plus feature matching on the discriminator's layers (a perceptual term that needs
                   no pretrained network)
    unet-ragan-fm-grid  the same, plus gan.grid_loss against the fixed 4x4 pattern a discriminator teaches

Each recipe's step time is measured first in this run (the fastest of a dozen steps on one in-memory batch), so
the table shows what the steps cost. Scores, by `flow.py evaluate` on each --eval folder: Y-PSNR, NIQE (lower is
more natural; the originals' NIQE is the floor to aim at) and the grid error, the largest mean error at one of
the 4x4 sub-pixel positions over the set (a fixed pattern where it is large), and NIQE once that fixed pattern
is subtracted from the outputs (NIQE reads a regular pattern as detail). The summary names the recipe with
the lowest mean NIQE among those that keep PSNR at least bicubic + 0.5 dB and the grid error within 0.3 grey
levels: the bars the shipped GAN model has to clear.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from bench_presets import chosen_names, fastest_step, run_flow_train, sample_dataset, score  # noqa: E402

import flow  # noqa: E402  (Keras loads inside the functions that need it: --help answers at once)
import metrics  # noqa: E402
import upscale  # noqa: E402

PAPER = {"discriminator": "srgan", "d_filters": 64, "gan_loss": "vanilla", "feature_matching": 0.0, "grid_weight": 0.0}
UNET = {**PAPER, "discriminator": "unet", "d_filters": 32, "gan_loss": "ragan"}  # 32 filters: CPU time (weights/README.md)
RECIPES = {
    "paper": PAPER,
    "unet-ragan": UNET,
    "unet-ragan-fm": {**UNET, "feature_matching": 1.0},
    "unet-ragan-fm-grid": {**UNET, "feature_matching": 1.0, "grid_weight": 1.0},
}
SHIPPED_ARCH = "--preset srresnet --no-batch-norm --interpolation-skip bicubic"  # weights/srresnet_x4_psnr.keras
EPOCHS = 2  # validation points per run; each validates the whole val split
GRID_LIMIT, PSNR_MARGIN = 0.3, 0.5  # the acceptance bars: grey levels, dB over bicubic


def recipe_flags(recipe):
    """flow.py train flags of a recipe."""
    return ["--discriminator", recipe["discriminator"], "--d-filters", str(recipe["d_filters"]),
            "--gan-loss", recipe["gan_loss"], "--feature-matching", str(recipe["feature_matching"]),
            "--grid-weight", str(recipe["grid_weight"])]


def gan_step_seconds(init, recipe, args):
    """(seconds per GAN training step, discriminator parameters) of a recipe, compiled as flow.py compiles it."""
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines)

    # isort: split
    import keras

    import gan
    from discriminator import build_discriminator
    from generator import load_generator

    discriminator = build_discriminator(args.patch_size, recipe["d_filters"], kind=recipe["discriminator"])
    model = gan.SRGAN(load_generator(init), discriminator)
    model.compile(keras.optimizers.Adam(args.lr), keras.optimizers.Adam(args.lr), content_loss="l1",
                  adversarial_weight=args.adversarial_weight, gan_loss=recipe["gan_loss"],
                  feature_matching_weight=recipe["feature_matching"], grid_weight=recipe["grid_weight"],
                  jit_compile=args.jit == "on")
    return fastest_step(model, args.batch_size, args.patch_size, scale=4), discriminator.count_params()


def scores_of(model, folders, out):
    """score()'s mean rows of a generator, each with its niqe_without_pattern added."""
    scores = score(model, folders, out / "eval")
    for folder in folders:
        scores[Path(folder).name]["niqe_without_pattern"] = niqe_without_pattern(model, folder)
    return scores


def train(name, out, args):
    """Phase 2 of flow.py from --init with the recipe; returns the wall time in seconds."""
    return run_flow_train(args.data, out, [
        "--init-generator", str(args.init), "--pretrain-epochs", "0", "--gan-epochs", str(EPOCHS),
        "--steps-per-epoch", str(max(1, args.steps // EPOCHS)), "--batch-size", str(args.batch_size),
        "--patch-size", str(args.patch_size), "--content-loss", "l1", "--adversarial-weight",
        str(args.adversarial_weight), "--lr-g", str(args.lr), "--lr-d", str(args.lr), "--lr-schedule", "constant",
        "--seed", str(args.seed), "--jit", args.jit, *recipe_flags(RECIPES[name]), *args.arch.split()])


def niqe_without_pattern(model_path, folder, scale=4):
    """Mean NIQE of a generator's outputs on a folder once the set's fixed pattern is taken out: the mean error
    at each scale x scale sub-pixel position (per RGB channel, over the set) subtracted from every output. A
    recipe whose NIQE gain vanishes here got it from the pattern, not from texture."""
    from generator import load_generator

    model = load_generator(model_path)
    pairs, scale = flow.evaluation_pairs(folder, scale)
    outputs = [(upscale.upscale_array(model, lr), hr) for lr, hr in
               (flow.load_eval_pair(lr_path, hr_path, scale) for _, lr_path, hr_path in pairs)]
    pattern = np.mean([metrics.sub_pixel_means(sr.astype(np.float64) - hr, scale) for sr, hr in outputs], axis=0)
    niqe = []
    for sr, _ in outputs:
        tiled = np.tile(pattern, (sr.shape[0] // scale + 1, sr.shape[1] // scale + 1, 1))[: sr.shape[0], : sr.shape[1]]
        niqe.append(flow.niqe_or_nan(np.clip(np.round(sr - tiled), 0, 255).astype(np.uint8), scale))
    return flow.nanmean(niqe)


def passes(scores):
    """Whether a recipe clears the bars on every eval set: PSNR >= bicubic + margin, grid error <= limit."""
    return all(m["model_psnr"] >= m["bicubic_psnr"] + PSNR_MARGIN and m["model_grid"] <= GRID_LIMIT
               for m in scores.values())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="DATASET to train on (default: scikit-image's samples as patches)")
    parser.add_argument("--eval", nargs="+", help="folders of HR images (e.g. Set14) or DATASETs (their test "
                                                  "split) to score on (default: --data)")
    parser.add_argument("--init", default=str(ROOT / "weights" / "srresnet_x4_psnr.keras"),
                        help="the PSNR-trained generator every recipe starts from")
    parser.add_argument("--arch", default=SHIPPED_ARCH, help="flow.py's architecture flags that rebuild --init "
                                                              "(default: the shipped PSNR model's)")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated subset of {tuple(RECIPES)}")
    parser.add_argument("--steps", type=int, default=40, help="GAN steps per recipe")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--patch-size", type=int, default=96, help="HR patch side (the paper's 96)")
    parser.add_argument("--adversarial-weight", type=float, default=5e-3)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam's learning rate, both networks, constant")
    parser.add_argument("--jit", choices=("on", "off"), default="on", help="XLA (faster GAN steps on CPU too)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args(argv)
    names = chosen_names(parser, args.recipes, RECIPES, "recipes")
    import runtime  # noqa: F401 (first: Keras starts without TensorFlow's C++ log lines

    # isort: split
    import keras

    print(f"Keras {keras.__version__} ({keras.backend.backend()}), {os.cpu_count()} CPUs; from {args.init}, "
          f"{args.steps} steps each, batch {args.batch_size} of {args.patch_size} px, L1 + "
          f"{args.adversarial_weight:g} adversarial, Adam {args.lr:g}", flush=True)
    rates = {name: gan_step_seconds(args.init, RECIPES[name], args) for name in names}  # while nothing else runs
    for name, (seconds, d_params) in rates.items():
        print(f"  {name}: discriminator {d_params:,} parameters, {1000 * seconds:.0f} ms/step", flush=True)

    keep = tempfile.TemporaryDirectory() if args.out is None else None
    out = Path(args.out or keep.name)
    args.data = args.data or sample_dataset(out)
    args.eval = args.eval or [args.data]
    rows = [("PSNR model (start)", None, None, None, scores_of(args.init, args.eval, out))]
    for name in names:
        print(f"== {name} ==", flush=True)
        wall = train(name, out / name, args)
        rows.append((name, *rates[name], wall, scores_of(out / name / "generator_last.keras", args.eval, out)))

    sets = list(rows[0][4])
    print("\n| recipe | D parameters | ms/step | run min | " + " | ".join(
        f"{k} PSNR / NIQE / grid / NIQE without the pattern" for k in sets) + " |")
    print("|---" * (4 + len(sets)) + "|")
    for name, seconds, d_params, wall, scores in rows:
        cost = f"{d_params:,} | {1000 * seconds:.0f} | {wall / 60:.1f}" if seconds else " | | "
        print(f"| {name} | {cost} | " + " | ".join(
            f"{scores[k]['model_psnr']:.2f} / {scores[k]['model_niqe']:.2f} / {scores[k]['model_grid']:.2f} / "
            f"{scores[k]['niqe_without_pattern']:.2f}" for k in sets) + " |")
    print("| bicubic | | | | " + " | ".join(
        f"{rows[0][4][k]['bicubic_psnr']:.2f} / {rows[0][4][k]['bicubic_niqe']:.2f} / / " for k in sets) + " |")
    print("| originals (NIQE) | | | | " + " | ".join(f"/ {rows[0][4][k]['hr_niqe']:.2f} / /" for k in sets) + " |")
    niqe = {name: np.mean([s[k]["model_niqe"] for k in sets]) for name, *_, s in rows[1:]}
    fit = [name for name, *_, s in rows[1:] if passes(s)]
    verdict = (f"{min(fit, key=niqe.get)} is the most natural that clears the bars" if fit
               else "no recipe clears the bars")
    print(f"\nsummary: after {args.steps} steps each, {verdict} (PSNR >= bicubic + {PSNR_MARGIN} dB, grid error <= "
          f"{GRID_LIMIT}); mean NIQE over {', '.join(sets)}: " + ", ".join(f"{n} {v:.2f}" for n, v in niqe.items()))
    if keep:
        keep.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
