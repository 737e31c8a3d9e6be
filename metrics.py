"""Quality metrics the way SR papers report them, and the bicubic baseline every figure stands beside.

Protocol (as Ledig et al. 2017, EDSR, BasicSR): PSNR and SSIM on the luma Y of ITU-R BT.601 YCbCr (MATLAB's
`rgb2ycbcr`), with `scale` pixels of border cut off each side; SSIM with an 11x11 Gaussian window, sigma 1.5,
data range 255. One image pair at a time: a set's figure is the mean of its per-image values.

    psnr = calculate_psnr(sr, hr, crop_border=4)          # uint8 RGB, or float in [0, 1]
    ssim = calculate_ssim(sr, hr, crop_border=4)
    base = calculate_psnr(bicubic_upscale(lr, 4), hr, 4)  # always report bicubic beside the model
"""

import numpy as np
from skimage.metrics import structural_similarity

import resizer


def _as_float255(img, name="image"):
    """uint8 (or float in [0,1], the models' range) -> float64 in [0,255]; HxW, HxWx1 or HxWx3."""
    img = np.asarray(img)
    if img.ndim == 4:
        raise ValueError(f"{name}: got a batch {img.shape}; the metrics take one image at a time (mean per image)")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (1, 3)):
        raise ValueError(f"{name}: expected HxW, HxWx1 or HxWx3, got shape {img.shape}")
    if img.dtype == np.uint8:
        return img.astype(np.float64)
    if np.issubdtype(img.dtype, np.floating):
        if img.size and (np.nanmax(img) > 1.0 + 1e-6 or np.nanmin(img) < -1e-6):
            raise ValueError(f"{name}: float images must be in [0, 1]; pass uint8 for [0, 255]")
        return img.astype(np.float64) * 255.0
    raise ValueError(f"{name}: unsupported dtype {img.dtype}; pass uint8 or float in [0, 1]")


def rgb_to_y(img):
    """Luma Y of ITU-R BT.601 as MATLAB's rgb2ycbcr: 16 + (65.481 R + 128.553 G + 24.966 B) / 255.

    img: uint8 RGB HxWx3 (or float in [0, 1]). Returns float64 HxW in [16, 235], unrounded (as BasicSR).
    """
    x = _as_float255(img)
    if x.ndim != 3 or x.shape[-1] != 3:
        raise ValueError(f"rgb_to_y needs an HxWx3 RGB image, got shape {x.shape}")
    return 16.0 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255.0


def _metric_planes(img, img2, crop_border, test_y_channel):
    """Both images as float64 in [0,255], Y (or all channels), with crop_border pixels cut from each side."""
    a, b = _as_float255(img, "img"), _as_float255(img2, "img2")
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a, b = a[..., 0], b[..., 0]
    if test_y_channel and a.ndim == 3:  # grayscale already is the luma: used as it is (as BasicSR)
        a, b = rgb_to_y(a / 255.0), rgb_to_y(b / 255.0)
    if crop_border:
        if min(a.shape[:2]) <= 2 * crop_border:
            raise ValueError(f"image {a.shape[:2]} too small for a border crop of {crop_border}")
        a, b = a[crop_border:-crop_border, crop_border:-crop_border], b[crop_border:-crop_border, crop_border:-crop_border]
    return a, b


def calculate_psnr(img, img2, crop_border, test_y_channel=True):
    """PSNR in dB of two images (uint8, or float in [0,1]), on Y by default, crop_border pixels cut off.

    Identical images give inf. One image pair at a time: average per-image values over a set.
    """
    a, b = _metric_planes(img, img2, crop_border, test_y_channel)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def calculate_ssim(img, img2, crop_border, test_y_channel=True):
    """SSIM (11x11 Gaussian window, sigma 1.5, data range 255) of two images, on Y by default.

    Colour images measured without test_y_channel get the mean SSIM over their channels.
    """
    a, b = _metric_planes(img, img2, crop_border, test_y_channel)
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                       data_range=255, channel_axis=-1 if a.ndim == 3 else None))


def measure_pairs(outputs, targets, crop_border):
    """Per-image (psnr, ssim) arrays of uint8 outputs against their targets, Y channel."""
    psnr = [calculate_psnr(o, t, crop_border) for o, t in zip(outputs, targets, strict=True)]
    ssim = [calculate_ssim(o, t, crop_border) for o, t in zip(outputs, targets, strict=True)]
    return np.array(psnr), np.array(ssim)


def bicubic_upscale(lr, scale):
    """PIL bicubic upscale of an LR image: the baseline every figure is reported beside."""
    return resizer.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), "bicubic")
