"""SRGAN discriminator (Ledig et al. 2017, Fig. 4): a VGG-style classifier of real HR vs super-resolved images.

    HR or SR (N, S, S, 3) float32 in [0,1]
      -> 3x3 conv f, LeakyReLU(0.2)                        (no BN on the first conv, as in the paper)
      -> 3x3 conv f stride 2, 2f stride 1, 2f stride 2, 4f, 4f s2, 8f, 8f s2; each BN + LeakyReLU(0.2)
      -> Flatten (fixed S) or global average pooling (S=None), Dense(16f), LeakyReLU(0.2), Dense(1)
    logits (N, 1) float32: the paper's sigmoid is left to the loss (binary cross-entropy from logits).

The paper trains on 96x96 HR crops; this project's datasets default to 128x128. Both work, as does any size
(divisible by 16 keeps every stride-2 step exact; other sizes are rounded up by the "same" padding).

kind="unet": Real-ESRGAN's U-Net discriminator with spectral normalisation (Wang et al. 2021), which judges every
pixel instead of the whole patch:

    3x3 conv f, LeakyReLU(0.2)                                              x0 (S)
    -> 4x4 conv 2f s2, 4f s2, 8f s2 (spectral norm, no bias), LeakyReLU    x1 (S/2), x2 (S/4), x3 (S/8)
    -> bilinear x2, 3x3 conv 4f + x2; x2, 2f + x1; x2, f + x0 (spectral norm, LeakyReLU before each skip sum)
    -> 3x3 conv f, f (spectral norm, LeakyReLU), 3x3 conv 1
    logits (N, S, S, 1) float32, one per pixel. Any size divisible by 8.
"""

import runtime  # noqa: F401  (first: Keras starts without TensorFlow's C++ log lines)

# isort: split
import keras

import presets

# (filters multiplier, stride) of the eight convolutions: 64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2 for f=64
CONV_PLAN = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))
LEAKY_SLOPE = 0.2
KINDS = presets.DISCRIMINATORS
# Intermediate activations that feature matching (gan.feature_matching_loss) compares, per kind
FEATURE_LAYERS = {"srgan": ("lrelu1", "lrelu3", "lrelu5", "lrelu7"),
                  "unet": ("down1_lrelu", "down2_lrelu", "down3_lrelu", "up1_lrelu", "up2_lrelu", "up3_lrelu")}


def build_discriminator(hr_size=128, filters=64, name="discriminator", kind="srgan"):
    """The discriminator of the given kind: "srgan" (the paper's, (N, 1) logits) or "unet" (per-pixel logits).

    See build_srgan_discriminator and build_unet_discriminator for hr_size and filters.
    """
    if kind == "srgan":
        return build_srgan_discriminator(hr_size, filters, name)
    if kind == "unet":
        return build_unet_discriminator(hr_size, filters, name)
    raise ValueError(f"discriminator kind must be one of {KINDS}, got {kind!r}")


def feature_layer_names(discriminator):
    """The layers whose outputs feature matching compares: FEATURE_LAYERS of the kind the model was built as."""
    names = {layer.name for layer in discriminator.layers}
    for layers in FEATURE_LAYERS.values():
        if names.issuperset(layers):
            return list(layers)
    raise ValueError(f"{discriminator.name}: not built by build_discriminator; name its feature layers explicitly")


def build_srgan_discriminator(hr_size=128, filters=64, name="discriminator"):
    """Build the discriminator for hr_size x hr_size RGB inputs; returns a keras.Model emitting (N, 1) logits.

    hr_size: an int (the paper's Flatten -> Dense head, tied to that size) or None, which accepts any size by
        replacing Flatten with global average pooling (a size-agnostic head with 16x fewer dense weights at 128,
        at the cost of discarding where in the patch the evidence was).
    filters: width of the first conv (64 in the paper); the dense layer has 16 * filters units (1024).
    """
    if hr_size is not None and int(hr_size) < 16:
        raise ValueError(f"hr_size must be at least 16 (four stride-2 steps) or None, got {hr_size}")
    size = None if hr_size is None else int(hr_size)
    hr = keras.Input((size, size, 3), dtype="float32", name="hr")
    x = hr
    for k, (multiplier, stride) in enumerate(CONV_PLAN):
        x = keras.layers.Conv2D(filters * multiplier, 3, strides=stride, padding="same", use_bias=k == 0,
                                name=f"conv{k}")(x)
        if k > 0:
            x = keras.layers.BatchNormalization(name=f"bn{k}")(x)
        x = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"lrelu{k}")(x)
    if size is None:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    else:
        x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(16 * filters, name="dense")(x)
    x = keras.layers.LeakyReLU(LEAKY_SLOPE, name="dense_lrelu")(x)
    logits = keras.layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(hr, logits, name=name)


def _sn_conv(x, filters, kernel, stride, name):
    """Spectrally normalised conv (one power iteration a step, as Real-ESRGAN), no bias, then LeakyReLU(0.2)."""
    conv = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)
    x = keras.layers.SpectralNormalization(conv, name=f"{name}_conv")(x)
    return keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"{name}_lrelu")(x)


def build_unet_discriminator(hr_size=128, filters=64, name="discriminator"):
    """Real-ESRGAN's U-Net discriminator with spectral normalisation; a keras.Model emitting (N, S, S, 1) logits.

    hr_size: an int divisible by 8, or None for any such size. filters: width of the first conv (64 in
    Real-ESRGAN). Only keras.layers, so a saved model loads in safe mode.
    keras.layers.SpectralNormalization, in training, writes the normalised kernel back into the kernel variable
    (TensorFlow, torch); under a stateless JAX train step that write is not kept, so the stored kernel stays
    raw and the gradient flows through the normalisation (as torch.nn.utils.spectral_norm): the same forward
    pass, slightly different updates.
    """
    if hr_size is not None and (int(hr_size) < 8 or int(hr_size) % 8):
        raise ValueError(f"hr_size of the unet discriminator must be a multiple of 8 or None, got {hr_size}")
    size = None if hr_size is None else int(hr_size)
    hr = keras.Input((size, size, 3), dtype="float32", name="hr")
    x0 = keras.layers.Conv2D(filters, 3, padding="same", name="in_conv")(hr)
    x0 = keras.layers.LeakyReLU(LEAKY_SLOPE, name="in_lrelu")(x0)
    x1 = _sn_conv(x0, 2 * filters, 4, 2, "down1")
    x2 = _sn_conv(x1, 4 * filters, 4, 2, "down2")
    x = _sn_conv(x2, 8 * filters, 4, 2, "down3")
    for k, (skip, width) in enumerate(((x2, 4), (x1, 2), (x0, 1)), start=1):
        x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up{k}_resize")(x)
        x = _sn_conv(x, width * filters, 3, 1, f"up{k}")
        x = keras.layers.Add(name=f"up{k}_skip")([x, skip])
    x = _sn_conv(x, filters, 3, 1, "out1")
    x = _sn_conv(x, filters, 3, 1, "out2")
    logits = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", name="logits")(x)
    return keras.Model(hr, logits, name=name)
