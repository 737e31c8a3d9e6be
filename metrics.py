"""Quality metrics the way SR papers report them, and the bicubic baseline every figure stands beside.

Protocol (as Ledig et al. 2017, EDSR, BasicSR): PSNR and SSIM on the luma Y of ITU-R BT.601 YCbCr (MATLAB's
`rgb2ycbcr`), with `scale` pixels of border cut off each side; SSIM with an 11x11 Gaussian window, sigma 1.5,
data range 255. One image pair at a time: a set's figure is the mean of its per-image values.

    psnr = calculate_psnr(sr, hr, crop_border=4)          # uint8 RGB, or float in [0, 1]
    ssim = calculate_ssim(sr, hr, crop_border=4)
    base = calculate_psnr(bicubic_upscale(lr, 4), hr, 4)  # always report bicubic beside the model
    niqe = calculate_niqe(sr, crop_border=4)              # no reference: lower is more natural
    grid = grid_error(sr, hr, 4, crop_border=4)           # (4, 4) mean error per sub-pixel position
"""

import functools
from pathlib import Path

import numpy as np
from scipy import ndimage, special
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


def grid_error(img, img2, scale, crop_border):
    """Mean signed error (img - img2, Y grey levels) at each of the scale x scale positions of the output grid:
    a (scale, scale) array. A model whose sub-pixel layer leaves a fixed pattern repeating every `scale`
    pixels (a GAN's checkerboard) shows it here even where it is too faint to see; an unbiased model gives
    values near 0 everywhere. Average the arrays over a set before reading it: per image, content adds noise.

    crop_border must be a multiple of scale, so that position (0, 0) stays the first output pixel of an LR pixel.
    """
    if crop_border % scale:
        raise ValueError(f"crop_border {crop_border} is not a multiple of the scale {scale}: the grid would shift")
    a, b = _metric_planes(img, img2, crop_border, test_y_channel=True)
    return sub_pixel_means(a - b, scale)


def sub_pixel_means(values, scale):
    """The mean of an HxW (or HxWxC) array at each of the scale x scale sub-pixel positions: (scale, scale[, C]).
    Rows and columns past the last whole multiple of scale are left out."""
    h, w = (values.shape[0] // scale) * scale, (values.shape[1] // scale) * scale
    return values[:h, :w].reshape(h // scale, scale, w // scale, scale, *values.shape[2:]).mean(axis=(0, 2))


def measure_pairs(outputs, targets, crop_border):
    """Per-image (psnr, ssim) arrays of uint8 outputs against their targets, Y channel."""
    psnr = [calculate_psnr(o, t, crop_border) for o, t in zip(outputs, targets, strict=True)]
    ssim = [calculate_ssim(o, t, crop_border) for o, t in zip(outputs, targets, strict=True)]
    return np.array(psnr), np.array(ssim)


def bicubic_upscale(lr, scale):
    """PIL bicubic upscale of an LR image: the baseline every figure is reported beside."""
    return resizer.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), "bicubic")


# ----------------------------------------------------------------------------- NIQE (no-reference)
# Mittal, Soundararajan, Bovik 2013, "Making a 'Completely Blind' Image Quality Analyzer": the distance between a
# multivariate Gaussian fitted to natural-scene statistics of the image's 96x96 blocks (at two scales) and one
# fitted to pristine images. Lower is more natural. The pristine model is the official one of the LIVE release.
NIQE_PARAMS_FILE = Path(__file__).resolve().parent / "weights" / "niqe_pris_params.npz"
NIQE_BLOCK = 96  # block size of the pristine model: the release advises scoring with the same size
_AGGD_SHAPES = np.arange(0.2, 10.001, 0.001)  # the release's grid of shape parameters (0.2:0.001:10)


@functools.lru_cache(maxsize=1)
def load_niqe_params(path=NIQE_PARAMS_FILE):
    """The pristine model: (mu (36,), cov (36, 36), 7x7 Gaussian window) from the shipped .npz file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NIQE pristine parameters not found (shipped in weights/)")
    with np.load(path) as params:
        return (params["mu_pris_param"].reshape(-1), params["cov_pris_param"], params["gaussian_window"])


@functools.lru_cache(maxsize=1)
def _aggd_ratio_table():
    """r(g) = Gamma(2/g)^2 / (Gamma(1/g) Gamma(3/g)) on the shape grid, to invert by nearest match."""
    inv = 1.0 / _AGGD_SHAPES
    return special.gamma(2 * inv) ** 2 / (special.gamma(inv) * special.gamma(3 * inv))


def estimate_aggd(values):
    """(alpha, beta_left, beta_right) of an asymmetric generalised Gaussian fitted by moment matching.

    NaN where one side of zero is empty (a flat block): such blocks are left out by calculate_niqe.
    """
    values = np.asarray(values, np.float64).ravel()
    left, right = values[values < 0], values[values > 0]
    if left.size == 0 or right.size == 0:
        return np.nan, np.nan, np.nan
    left_std, right_std = np.sqrt(np.mean(left**2)), np.sqrt(np.mean(right**2))
    gamma_hat = left_std / right_std
    r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    alpha = _AGGD_SHAPES[np.argmin((_aggd_ratio_table() - r_hat_norm) ** 2)]
    spread = np.sqrt(special.gamma(1 / alpha) / special.gamma(3 / alpha))
    return alpha, left_std * spread, right_std * spread


def niqe_block_features(block):
    """The 18 features of one normalised block: AGGD of the coefficients, and of the products of neighbours
    along the four orientations (horizontal, vertical, two diagonals; circular shifts as the release)."""
    alpha, beta_l, beta_r = estimate_aggd(block)
    features = [alpha, (beta_l + beta_r) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        alpha, beta_l, beta_r = estimate_aggd(block * np.roll(block, shift, axis=(0, 1)))
        mean = (beta_r - beta_l) * special.gamma(2 / alpha) / special.gamma(1 / alpha)
        features.extend([alpha, mean, beta_l, beta_r])
    return features


def _cubic(x):
    """MATLAB's bicubic kernel (a = -0.5)."""
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _matlab_resize_axis(img, axis, scale):
    """Resize one axis as MATLAB's imresize(..., 'bicubic') does: antialiased when shrinking, mirrored edges."""
    in_len = img.shape[axis]
    out_len = int(np.ceil(in_len * scale))
    width = 4.0 / scale if scale < 1 else 4.0
    centres = np.arange(1, out_len + 1) / scale + 0.5 * (1 - 1 / scale)  # 1-based input coordinates
    first = np.floor(centres - width / 2)
    taps = int(np.ceil(width)) + 2
    index = first[:, None] + np.arange(taps)[None, :]
    distance = centres[:, None] - index
    weights = scale * _cubic(scale * distance) if scale < 1 else _cubic(distance)
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    index = mirror[np.mod(index.astype(int) - 1, 2 * in_len)]
    moved = np.moveaxis(img, axis, 0)
    out = np.einsum("ot,ot...->o...", weights, moved[index])
    return np.moveaxis(out, 0, axis)


def matlab_imresize(img, scale):
    """A 2-D float image resized by scale with MATLAB's imresize (bicubic, antialiasing), rows first."""
    return _matlab_resize_axis(_matlab_resize_axis(np.asarray(img, np.float64), 0, scale), 1, scale)


def _niqe_features(luma, window):
    """(blocks, 36) features: 18 per block at full scale, 18 at half scale (the same blocks, 48x48)."""
    rows, cols = luma.shape[0] // NIQE_BLOCK, luma.shape[1] // NIQE_BLOCK
    per_scale = []
    img = luma
    for scale in (1, 2):
        mu = ndimage.correlate(img, window, mode="nearest")
        sigma = np.sqrt(np.abs(ndimage.correlate(img * img, window, mode="nearest") - mu * mu))
        normalised = (img - mu) / (sigma + 1)  # eq. 1: mean-subtracted contrast-normalised coefficients
        size = NIQE_BLOCK // scale
        per_scale.append([niqe_block_features(normalised[r * size:(r + 1) * size, c * size:(c + 1) * size])
                          for c in range(cols) for r in range(rows)])
        img = matlab_imresize(img, 0.5)
    return np.concatenate([np.asarray(f, np.float64) for f in per_scale], axis=1)


def calculate_niqe(img, crop_border, test_y_channel=True, params_file=NIQE_PARAMS_FILE):
    """NIQE of one image (uint8 RGB/grey, or float in [0,1]): lower is more natural. No reference needed.

    As the official MATLAB release (and BasicSR): luma Y of BT.601 rounded to integers (test_y_channel; grey
    images are used as they are; else MATLAB's rgb2gray), crop_border pixels cut off each side, cropped further to whole 96x96 blocks, features at full and
    half scale (MATLAB-style bicubic), distance to the pristine Gaussian with the pooled covariance's
    pseudo-inverse (eq. 10). Blocks without texture (flat: no coefficient on one side of zero) are left out; an
    image with no textured block, or smaller than one block, raises ValueError. With a single textured block,
    the image's own feature covariance is taken as zero.
    """
    x = _as_float255(img)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 3:
        x = rgb_to_y(x / 255.0) if test_y_channel else x @ np.array([0.298936, 0.587043, 0.114021])
    if crop_border:
        x = x[crop_border:-crop_border, crop_border:-crop_border]
    x = np.round(x)  # MATLAB's rgb2ycbcr of a uint8 image is uint8: the release scores integer luma
    if min(x.shape) < NIQE_BLOCK:
        raise ValueError(f"NIQE needs at least {NIQE_BLOCK}x{NIQE_BLOCK} pixels after the border crop, "
                         f"got {x.shape[1]}x{x.shape[0]}")
    x = x[:x.shape[0] // NIQE_BLOCK * NIQE_BLOCK, :x.shape[1] // NIQE_BLOCK * NIQE_BLOCK]
    mu_pristine, cov_pristine, window = load_niqe_params(Path(params_file))
    features = _niqe_features(x, window)
    features = features[np.isfinite(features).all(axis=1)]
    if len(features) == 0:
        raise ValueError("NIQE is undefined for this image: no 96x96 block has any texture (flat image)")
    mu = features.mean(axis=0)
    cov = np.cov(features, rowvar=False) if len(features) > 1 else np.zeros_like(cov_pristine)
    difference = mu_pristine - mu
    return float(np.sqrt(difference @ np.linalg.pinv((cov_pristine + cov) / 2) @ difference))
