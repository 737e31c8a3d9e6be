"""SRGAN discriminator (Ledig et al. 2017, Fig. 4): a VGG-style classifier of real HR vs super-resolved images.

    HR or SR (N, S, S, 3) float32 in [0,1]
      -> 3x3 conv f, LeakyReLU(0.2)                        (no BN on the first conv, as in the paper)
      -> 3x3 conv f stride 2, 2f stride 1, 2f stride 2, 4f, 4f s2, 8f, 8f s2; each BN + LeakyReLU(0.2)
      -> Flatten (fixed S) or global average pooling (S=None), Dense(16f), LeakyReLU(0.2), Dense(1)
    logits (N, 1) float32: the paper's sigmoid is left to the loss (binary cross-entropy from logits).

The paper trains on 96x96 HR crops; this project's datasets default to 128x128. Both work, as does any size
(divisible by 16 keeps every stride-2 step exact; other sizes are rounded up by the "same" padding).
"""

import keras

# (filters multiplier, stride) of the eight convolutions: 64, 64/2, 128, 128/2, 256, 256/2, 512, 512/2 for f=64
CONV_PLAN = ((1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1), (8, 2))
LEAKY_SLOPE = 0.2


def build_discriminator(hr_size=128, filters=64, name="discriminator"):
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
