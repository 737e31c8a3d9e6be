"""The named choices of the models and their training, as plain values.

Importable without Keras, so every command line can list them in --help and reject a wrong name at once.
generator.py, gan.py, discriminator.py, flow.py and upscale.py all read them from here.
"""

from pathlib import Path

SCALES = (2, 3, 4, 8)
SWITCHES = ("auto", "on", "off")  # flags that default to auto: on where they help (--jit, --compile, ...)
INTERPOLATIONS = ("bilinear", "bicubic")

# Generator architectures. The paper's SRResNet is the default everywhere a preset is not named.
GENERATOR_PRESETS = {
    # The paper's SRResNet: 16 residual blocks of 64 filters with batch norm, no interpolation skip.
    "srresnet": dict(filters=64, blocks=16, batch_norm=True, interpolation_skip=None, upsampler="stages",
                     head_kernel=9, block="residual", output="rgb", reparam=False),
    # Light enough for CPUs and video. Measured on a 2-core CPU, 180x320 -> 720x1280 x4 under XLA: 16x64+BN
    # 2.8 s/frame, 8x48 1.8 s, 8x32 0.89 s, 6x32 0.87 s, 4x32 0.84 s: the x2 stages at high resolution dominate
    # and scale with filters^2, so width is what costs and depth is nearly free -> 8 blocks of 32. BN is dropped: at
    # inference it is only an affine op, but in training with small batches it costs time and adds noise;
    # the bilinear skip makes the net learn a residual over interpolation, so it starts at bilinear quality.
    "fast": dict(filters=32, blocks=8, batch_norm=False, interpolation_skip="bilinear", upsampler="stages",
                 head_kernel=9, block="residual", output="rgb", reparam=False),
    # For video on CPUs (ESPCN, Shi et al. 2016; ABPN, Du et al. 2021): every convolution at the LR resolution,
    # one 3x3 conv to 3*r*r channels and one PixelShuffle, over a bicubic copy of the input. 56 kMAC per
    # LR pixel against 0.48 MMAC for "fast" and 2.2 MMAC for srresnet: the x2 stages and the 9x9 output conv at
    # HR resolution are what those pay for. 32 filters: on a 2-core AVX2 CPU 32 ran faster than 28 (x1.06).
    "video": dict(filters=32, blocks=2, batch_norm=False, interpolation_skip="bicubic", upsampler="subpixel",
                  head_kernel=3, block="residual", output="rgb", reparam=False),
    # IMDN (Hui et al. 2019): 6 information multi-distillation blocks of 64 filters, each keeping a quarter of its
    # channels after every 3x3 conv and weighting the concatenation by contrast-aware channel attention; the
    # blocks' outputs are fused by a 1x1 conv; ESPCN's tail. 0.7 M MAC per LR pixel against srresnet's 2.2 M.
    "imdn": dict(filters=64, blocks=6, batch_norm=False, interpolation_skip="bicubic", upsampler="subpixel",
                 head_kernel=3, block="distill", output="rgb", reparam=False),
    # For streamed video on a device (the real-time budget: <= 15 kMAC per LR pixel, 7 GFLOP a 640x360 frame):
    # luma-first (FSRCNN, on-device upscalers): the network predicts a luma residual, its last conv needs 16
    # channels instead of 48, and chroma is the bicubic skip's. 16 filters, 2 residual blocks: 12 kMAC per LR
    # pixel for the convolutions plus 1.6 for the depthwise bicubic skip, against the video preset's 55.
    "stream": dict(filters=16, blocks=2, batch_norm=False, interpolation_skip="bicubic", upsampler="subpixel",
                   head_kernel=3, block="residual", output="luma", reparam=False),
}
DEFAULT_PRESET = "srresnet"
ARCHITECTURE_KEYS = ("filters", "blocks", "batch_norm", "interpolation_skip", "upsampler", "head_kernel", "block",
                     "output", "reparam")
# stages: the paper's conv + x2 PixelShuffle + PReLU per stage, then a 9x9 conv at HR; subpixel: ESPCN's single
# conv to 3*r*r channels at LR and one PixelShuffle
UPSAMPLERS = ("stages", "subpixel")
# residual: the paper's conv-BN-PReLU-conv-BN block; distill: IMDN's information multi-distillation block
BLOCKS = ("residual", "distill")
# rgb: the network predicts R, G and B; luma: luma-first, the network predicts a luma residual over the
# interpolation skip, and chroma is interpolated (generator.LumaUpsample)
OUTPUTS = ("rgb", "luma")
# reparam (training only): every 3x3 conv of a residual generator trained as a sum of linear branches collapsed into
# one kernel (generator.RepConv2D); the same model, and cost, once fused, which is what a run exports

# Training losses.
PIXEL_LOSSES = ("l1", "mse")
CONTENT_LOSSES = ("mse", "l1", "vgg54", "vgg22", "vgg16")  # vgg16: offline (weights/vgg16_hed_conv4.npz)
GAN_LOSSES = ("vanilla", "ragan")  # the paper's binary cross-entropy; ESRGAN's relativistic average
DISCRIMINATORS = ("srgan", "unet")  # the paper's classifier; Real-ESRGAN's per-pixel U-Net with spectral norm
LR_SCHEDULES = ("constant", "cosine", "step")

# The models that ship in weights/, by the short names upscale.py --model accepts.
WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED_MODELS = {
    "psnr": WEIGHTS / "srresnet_x4_psnr.keras",
    "gan": WEIGHTS / "srgan_x4.keras",
    "video": WEIGHTS / "video_x4.keras",  # the "video" preset: light enough for frames/s on a CPU
    "stream": WEIGHTS / "stream_x4.keras",  # the "stream" preset, trained on libx264 output: for compressed video
}
DEFAULT_MODEL = "psnr"


def resolve_architecture(preset=None, **overrides):
    """Generator settings (ARCHITECTURE_KEYS): the preset's (the paper's SRResNet
    when None), then every override that is not None. interpolation_skip "none" means no skip."""
    name = DEFAULT_PRESET if preset is None else preset
    if name not in GENERATOR_PRESETS:
        raise ValueError(f"unknown generator preset {preset!r}; choose from {', '.join(GENERATOR_PRESETS)}")
    unknown = set(overrides) - set(ARCHITECTURE_KEYS)
    if unknown:
        raise TypeError(f"unknown generator settings: {', '.join(sorted(unknown))}")
    settings = {**GENERATOR_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if settings["interpolation_skip"] == "none":
        settings["interpolation_skip"] = None
    if settings["upsampler"] not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {settings['upsampler']!r}")
    if settings["output"] not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {settings['output']!r}")
    if settings["block"] not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {settings['block']!r}")
    skip = settings["interpolation_skip"]
    if skip is not None and skip not in INTERPOLATIONS:
        raise ValueError(f"interpolation_skip must be one of {INTERPOLATIONS} or None, got {skip!r}")
    return settings
