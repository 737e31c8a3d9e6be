"""The shipped models: they load in safe mode, score on Set5 what their model card says, and upscale.py uses the
default one when no --model is given."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flow
import upscale
from generator import generator_scale, load_generator

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
SHIPPED = ["srresnet_x4_psnr.keras", "srgan_x4.keras", "video_x4.keras", "stream_x4.keras"]


def card_set5_psnr(model_file):
    """The Set5 PSNR that weights/README.md's table gives for model_file (row `| Set5 | file | PSNR | SSIM |`)."""
    card = (WEIGHTS / "README.md").read_text()
    match = re.search(rf"^\| Set5 \| `{re.escape(model_file)}` \| ([0-9.]+) \| ([0-9.]+) \|", card, re.M)
    assert match, f"weights/README.md has no Set5 row for {model_file}"
    return float(match.group(1))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_in_safe_mode(name):
    model = load_generator(WEIGHTS / name)
    assert generator_scale(model) == 4
    assert (WEIGHTS / name).stat().st_size < 8 * 2**20
    out = model.predict(np.full((1, 12, 20, 3), 0.5, np.float32), verbose=0)
    assert out.shape == (1, 48, 80, 3) and np.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_scores_its_card_on_set5(name, shared_data, tmp_path):
    rows, failed = flow.evaluate(str(WEIGHTS / name), shared_data / "benchmarks" / "Set5", scale=4, out=tmp_path)
    mean = rows[-1]
    assert not failed and len(rows) == 6
    assert mean["model_psnr"] == pytest.approx(card_set5_psnr(name), abs=0.01)
    assert mean["model_psnr"] > mean["bicubic_psnr"]


def test_upscale_uses_the_default_model_without_model_flag(tmp_path):
    assert upscale.DEFAULT_MODEL == WEIGHTS / "srresnet_x4_psnr.keras"
    src = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 24, 3), np.uint8)).save(src)
    assert upscale.main([str(src), "-o", str(tmp_path / "big.png"), "--no-progress"]) == 0
    assert Image.open(tmp_path / "big.png").size == (96, 64)
