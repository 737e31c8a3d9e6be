"""metrics.py: quality metrics against hand computations, an independent SSIM and the Set5 bicubic figure."""

import math

import numpy as np
import pytest
from scipy import ndimage

import flow
import metrics


def test_rgb_to_y_matches_matlab_rgb2ycbcr_constants():
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0]], [[0, 255, 0], [0, 0, 255], [10, 20, 30]]], np.uint8)
    y = metrics.rgb_to_y(img)
    assert y.dtype == np.float64 and y.shape == (2, 3)
    expected = [[16.0, 235.0, 16 + 65.481], [16 + 128.553, 16 + 24.966, 16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]]
    np.testing.assert_allclose(y, expected, atol=1e-9)
    # float images are taken as [0, 1], the models' range
    np.testing.assert_allclose(metrics.rgb_to_y(img.astype(np.float32) / 255), y, atol=1e-4)
    with pytest.raises(ValueError, match="RGB"):
        metrics.rgb_to_y(np.zeros((4, 4), np.uint8))


def test_psnr_by_hand_grayscale_and_border():
    a = np.zeros((10, 10), np.uint8)
    b = a.copy()
    b[5, 5] = 10
    assert metrics.calculate_psnr(a, b, 0) == pytest.approx(10 * math.log10(255**2 / (100 / 100)))
    assert metrics.calculate_psnr(a, b, 2) == pytest.approx(10 * math.log10(255**2 / (100 / 36)))
    b[0, 0] = 200  # inside the cropped border: does not count
    assert metrics.calculate_psnr(a, b, 2) == pytest.approx(10 * math.log10(255**2 / (100 / 36)))
    # (H, W, 1) is the same as (H, W): grey is the luma already
    assert metrics.calculate_psnr(a[..., None], b[..., None], 2) == metrics.calculate_psnr(a, b, 2)


def test_psnr_on_y_channel_scales_rgb_differences_by_219_over_255():
    rng = np.random.default_rng(0)
    a = rng.integers(20, 200, (16, 16, 3), dtype=np.uint8)
    b = a + np.uint8(6)  # every channel 6 higher: Y moves by 6 * 219 / 255
    mse_y = (6 * 219 / 255) ** 2
    assert metrics.calculate_psnr(a, b, 4) == pytest.approx(10 * math.log10(255**2 / mse_y))
    assert metrics.calculate_psnr(a, b, 4, test_y_channel=False) == pytest.approx(10 * math.log10(255**2 / 36))


def test_identical_images_give_infinite_psnr_and_ssim_one():
    img = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    assert metrics.calculate_psnr(img, img, 4) == math.inf
    assert metrics.calculate_ssim(img, img, 4) == pytest.approx(1.0)


def reference_ssim(a, b):
    """SSIM written out (Wang et al. 2004) with an 11x11 Gaussian window, sigma 1.5, population covariance."""
    a, b = a.astype(np.float64), b.astype(np.float64)

    def blur(x):
        return ndimage.gaussian_filter(x, 1.5, truncate=3.5)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map[5:-5, 5:-5].mean()  # the window's radius, where the map does not depend on padding


def test_ssim_matches_the_formula_on_the_y_channel():
    rng = np.random.default_rng(2)
    hr = ndimage.uniform_filter(rng.integers(0, 256, (48, 40, 3)).astype(float), (5, 5, 1)).astype(np.uint8)
    noisy = np.clip(hr + rng.normal(0, 12, hr.shape), 0, 255).astype(np.uint8)
    expected = reference_ssim(metrics.rgb_to_y(hr)[4:-4, 4:-4], metrics.rgb_to_y(noisy)[4:-4, 4:-4])
    got = metrics.calculate_ssim(noisy, hr, 4)
    assert got == pytest.approx(expected, abs=1e-9)
    assert 0.2 < got < 0.99
    # without Y: the mean over the RGB channels
    per_channel = [reference_ssim(hr[..., c], noisy[..., c]) for c in range(3)]
    assert metrics.calculate_ssim(noisy, hr, 0, test_y_channel=False) == pytest.approx(np.mean(per_channel), abs=1e-9)


def test_float_images_in_unit_range_equal_their_uint8():
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (20, 20, 3), dtype=np.uint8) for _ in range(2))
    fa, fb = a.astype(np.float32) / 255, b.astype(np.float32) / 255
    assert metrics.calculate_psnr(fa, fb, 2) == pytest.approx(metrics.calculate_psnr(a, b, 2), abs=1e-4)
    assert metrics.calculate_ssim(fa, fb, 2) == pytest.approx(metrics.calculate_ssim(a, b, 2), abs=1e-5)


def test_metrics_refuse_batches_mismatched_shapes_and_out_of_range_floats():
    img = np.zeros((2, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="one image at a time"):
        metrics.calculate_psnr(img, img, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.calculate_ssim(img[0], img[0, :8], 0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metrics.calculate_psnr(np.full((8, 8, 3), 200.0), np.zeros((8, 8, 3)), 0)
    with pytest.raises(ValueError, match="too small"):
        metrics.calculate_psnr(img[0, :8, :8], img[0, :8, :8], 4)


def test_measure_pairs_is_per_image_not_first_of_batch():
    rng = np.random.default_rng(4)
    hr = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    out = [hr[0], np.clip(hr[1].astype(int) + 5, 0, 255).astype(np.uint8), 255 - hr[2]]
    psnr, ssim = metrics.measure_pairs(out, hr, 2)
    assert psnr.shape == ssim.shape == (3,)
    assert psnr[0] == math.inf and psnr[1] > psnr[2]
    assert ssim[0] == pytest.approx(1.0) and ssim[1] > ssim[2]


def test_grid_error_recovers_a_fixed_sub_pixel_pattern_and_keeps_the_grid_phase():
    rng = np.random.default_rng(0)
    hr = rng.integers(20, 230, (64, 72)).astype(np.uint8)  # grey: the error is in grey levels as it is
    pattern = rng.integers(-3, 4, (4, 4))
    sr = (hr + np.tile(pattern, (16, 18))).astype(np.uint8)
    np.testing.assert_allclose(metrics.grid_error(sr, hr, 4, crop_border=4), pattern)  # the border keeps the phase
    np.testing.assert_allclose(metrics.grid_error(hr, hr, 4, crop_border=8), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="multiple of the scale"):
        metrics.grid_error(sr, hr, 4, crop_border=2)


def test_set5_bicubic_matches_the_figure_measured_for_this_protocol(shared_data):
    names, psnr, ssim = [], [], []
    for path in sorted((shared_data / "benchmarks" / "Set5").glob("*.png")):
        lr, hr = flow.load_eval_pair(None, path, 4)
        bicubic = metrics.bicubic_upscale(lr, 4)
        names.append(path.name)
        psnr.append(metrics.calculate_psnr(bicubic, hr, 4))
        ssim.append(metrics.calculate_ssim(bicubic, hr, 4))
    assert len(names) == 5
    assert np.mean(psnr) == pytest.approx(28.43, abs=0.005)  # Set5 bicubic x4: 28.43 dB, as published (Ledig et al. 2017)
    assert np.mean(ssim) == pytest.approx(0.8111, abs=0.0005)
