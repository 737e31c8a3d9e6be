"""metrics.calculate_niqe: the official release's figure on Set14 baboon, and behaviour on generated images."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

import metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"


def one_over_f_noise(size, seed=0):
    """Grey uint8 noise with a 1/f amplitude spectrum: the statistics of natural scenes, no photo needed."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(size)
    radius = np.hypot(f[:, None], f[None, :])
    radius[0, 0] = 1.0
    x = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) / radius))
    return np.round(255 * (x - x.min()) / (x.max() - x.min())).astype(np.uint8)


def blurred(img, sigma):
    return np.round(ndimage.gaussian_filter(img.astype(np.float64), sigma)).astype(np.uint8)


@pytest.mark.skipif(not (SHARED / "Set14" / "baboon.png").is_file(), reason="benchmark images (../shared) absent")
def test_baboon_matches_the_matlab_release():
    img = np.asarray(Image.open(SHARED / "Set14" / "baboon.png").convert("RGB"))
    assert metrics.calculate_niqe(img, crop_border=0) == pytest.approx(5.7296, abs=0.01)  # MATLAB: 5.72957
    assert metrics.calculate_niqe(img / 255.0, crop_border=0) == metrics.calculate_niqe(img, crop_border=0)


def test_blur_scores_worse_and_worse():
    img = one_over_f_noise(288)
    scores = [metrics.calculate_niqe(img, 0)] + [metrics.calculate_niqe(blurred(img, s), 0) for s in (1, 2, 3)]
    assert all(a < b for a, b in zip(scores[:-1], scores[1:], strict=True)), scores


def test_white_noise_is_far_less_natural_than_one_over_f_noise():
    white = np.random.default_rng(1).integers(0, 256, (192, 192), dtype=np.uint8)
    assert metrics.calculate_niqe(white, 0) > 3 * metrics.calculate_niqe(one_over_f_noise(192), 0)


def test_flat_blocks_are_skipped_and_a_flat_image_is_refused():
    img = np.full((192, 288), 120, np.uint8)
    img[:96, :192] = one_over_f_noise(192)[:96]  # two textured blocks, four flat ones
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NaN means or empty slices on the way
        score = metrics.calculate_niqe(img, 0)
    assert np.isfinite(score) and score > 0
    with pytest.raises(ValueError, match="flat"):
        metrics.calculate_niqe(np.full((200, 200, 3), 77, np.uint8), 0)


def test_input_forms_crop_and_size_checks():
    img = one_over_f_noise(200, seed=3)
    grey = metrics.calculate_niqe(img, 0)
    assert metrics.calculate_niqe(img[..., None], 0) == grey
    assert metrics.calculate_niqe(np.repeat(img[..., None], 3, axis=-1), 0, test_y_channel=False) == pytest.approx(
        grey, abs=1e-6)
    # the crop removes the border before blocks are cut: same as scoring the cropped image
    assert metrics.calculate_niqe(img, 4) == metrics.calculate_niqe(img[4:-4, 4:-4], 0)
    with pytest.raises(ValueError, match="96x96"):
        metrics.calculate_niqe(img[:100, :100], 4)
    with pytest.raises(ValueError, match="batch"):
        metrics.calculate_niqe(np.zeros((2, 96, 96, 3), np.uint8), 0)


def test_a_single_block_gives_a_finite_score():
    assert np.isfinite(metrics.calculate_niqe(one_over_f_noise(96), 0))


def test_matlab_imresize_half():
    out = metrics.matlab_imresize(np.full((9, 10), 7.0), 0.5)
    assert out.shape == (5, 5)
    np.testing.assert_allclose(out, 7.0)
    # the cubic kernel keeps linear ramps away from the mirrored edges: output pixel k sits at input 2k + 0.5
    ramp = np.tile(np.arange(40, dtype=np.float64), (40, 1))
    half = metrics.matlab_imresize(ramp, 0.5)
    np.testing.assert_allclose(half[:, 3:-3], np.tile(2 * np.arange(20) + 0.5, (20, 1))[:, 3:-3], atol=1e-9)


def test_missing_parameters_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        metrics.calculate_niqe(one_over_f_noise(96), 0, params_file=tmp_path / "nowhere.npz")


def test_shipped_parameters_are_the_releases():
    mu, cov, window = metrics.load_niqe_params()
    assert mu.shape == (36,) and cov.shape == (36, 36) and window.shape == (7, 7)
    np.testing.assert_allclose(cov, cov.T)
    assert window.sum() == pytest.approx(1.0)
