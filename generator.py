"""SRResNet generator (Ledig et al. 2017, "Photo-Realistic Single Image Super-Resolution Using a GAN"), and
the light ESPCN-style tail of the "video" preset.

    LR (N,H,W,3) float32 in [0,1]
      -> 9x9 conv + PReLU                      (head)
      -> B x [3x3 conv, BN, PReLU, 3x3 conv, BN, + input]   (residual blocks)
      -> 3x3 conv, BN, + head                  (global skip)
      -> per x2 (or the single x3) stage: 3x3 conv(filters*r*r), PixelShuffle(r), PReLU
      -> 9x9 conv to 3 channels, linear        (+ optional interpolated copy of the input)
    SR (N,s*H,s*W,3) float32, roughly [0,1] (not clipped: clipping belongs to whoever makes uint8 of it)

block="distill" (the "imdn" preset, Hui et al. 2019) replaces the residual blocks and body conv with information
multi-distillation blocks whose outputs a 1x1 conv fuses, plus the head (see _distillation_body).

upsampler="subpixel" (the "video" and "imdn" presets) replaces the body conv, global skip, stages and 9x9 conv with one 3x3
conv to 3*s*s channels and one PixelShuffle(s), so every convolution runs at the LR resolution (ESPCN).

output="luma" (the "stream" preset) is luma-first: that conv predicts s*s luma phases only, added to R, G and B of
the bicubic skip alike, so chroma is interpolated (see LumaUpsample).

reparam=True (training only) builds every 3x3 convolution of a residual generator (head, blocks, tail) as a
RepConv2D: a sum of linear branches collapsed into one 3x3 kernel in call(), so training still costs one
convolution per layer; fuse_reparameterized() turns such a model into the plain one (Conv2D), which is what a run
exports and what ships.

Fully convolutional, so a model built once upscales any input size. Only keras.layers / keras.ops are used and
the custom layers below are registered, so saved .keras files load with safe_mode=True.
"""

import math

import runtime  # noqa: F401  (first: Keras starts without TensorFlow's C++ log lines)

# isort: split
import keras
import numpy as np
from keras import ops

import presets

SCALES = presets.SCALES
PRESETS = presets.GENERATOR_PRESETS
INTERPOLATIONS = presets.INTERPOLATIONS
PRELU_INIT = 0.25  # the paper's (He et al.) initial slope; with Keras' default 0 such nets can die at start


def pixel_shuffle(x, scale):
    """(N, H, W, C*r*r) -> (N, H*r, W*r, C) with keras.ops on dynamic shapes (see PixelShuffle)."""
    r = int(scale)
    shape = ops.shape(x)
    n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1] // (r * r)
    x = ops.reshape(x, (n, h, w, r, r, c))
    x = ops.transpose(x, (0, 1, 3, 2, 4, 5))  # (n, h, i, w, j, c)
    return ops.reshape(x, (n, h * r, w * r, c))


@keras.saving.register_keras_serializable(package="srgan")
class PixelShuffle(keras.layers.Layer):
    """Sub-pixel rearrangement (Shi et al. 2016): (N, H, W, C*r*r) -> (N, H*r, W*r, C).

    Channel order matches tf.nn.depth_to_space / torch.nn.PixelShuffle-on-NHWC: output[n, h*r+i, w*r+j, c] =
    input[n, h, w, (i*r + j)*C + c]. Written with keras.ops.reshape/transpose on dynamic shapes, so it works for
    any H, W on every Keras backend and compiles under XLA.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = int(scale)

    def call(self, x):
        return pixel_shuffle(x, self.scale)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        r = self.scale
        if c % (r * r):
            raise ValueError(f"PixelShuffle({r}) needs channels divisible by {r * r}, got {c}")
        return (n, None if h is None else h * r, None if w is None else w * r, c // (r * r))

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _keys_cubic(t, a=-0.5):
    """Keys' cubic convolution kernel (a=-0.5: the kernel of PIL, MATLAB and tf.image.resize bicubic)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def _triangle(t):
    """The linear-interpolation kernel."""
    return max(0.0, 1.0 - abs(t))


KERNELS = {"bilinear": _triangle, "bicubic": _keys_cubic}


def interpolation_taps(scale, interpolation):
    """(scale, 5) taps: output phase i of an integer upscale reads input rows h-2..h+2 with these weights.

    Half-pixel centres (as PIL, MATLAB and tf.image.resize): output row h*scale+i sits at input coordinate
    h + (i + 0.5)/scale - 0.5.
    """
    kernel = KERNELS[interpolation]
    taps = np.zeros((scale, 5), np.float64)
    for i in range(scale):
        x = (i + 0.5) / scale - 0.5  # offset from input row h, in (-0.5, 0.5)
        for k, offset in enumerate(range(-2, 3)):
            taps[i, k] = kernel(x - offset)
    return taps


@keras.saving.register_keras_serializable(package="srgan")
class InterpolationUpsample(keras.layers.Layer):
    """Integer-factor bilinear or bicubic upscaling as one fixed-kernel convolution + PixelShuffle.

    shuffle False: the output before the PixelShuffle, (N, H, W, 3*r*r) in depth_to_space order, to be added to
    a network's own sub-pixel output so that one shuffle serves both.

    Why not keras.layers.UpSampling2D / tf.image.resize: TensorFlow's bicubic resize does not compile under XLA
    on CPU, and UpSampling2D(interpolation="bilinear") fails to trace when H and W are unknown (a tf.function
    with a (None, None, None, 3) signature). A convolution does both, on any backend. Like PIL and
    tf.image.resize it drops taps that fall outside the image and renormalises the rest (a zero-padded
    convolution divided by the same convolution of ones), so it matches tf.image.resize(method=interpolation,
    antialias=False) for upscaling (to float rounding; TF's bicubic uses a 1024-entry coefficient table, so
    scale 3 differs by ~1e-3).
    """

    def __init__(self, scale, interpolation="bicubic", shuffle=True, **kwargs):
        super().__init__(**kwargs)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.scale, self.interpolation, self.shuffle = int(scale), interpolation, bool(shuffle)
        r = self.scale
        taps = interpolation_taps(r, interpolation)
        # kernel[ky, kx, c, (i*r+j)*3 + c] = taps[i, ky] * taps[j, kx]: per channel, in depth_to_space order
        kernel = np.zeros((5, 5, 3, r * r * 3), np.float32)
        for i in range(r):
            for j in range(r):
                for c in range(3):
                    kernel[:, :, c, (i * r + j) * 3 + c] = np.outer(taps[i], taps[j])
        self._kernel = kernel
        self._phase_kernel = np.ascontiguousarray(kernel[:, :, :1, 0::3])  # channel 0's taps per output phase

    def call(self, x):
        kernel = ops.convert_to_tensor(self._kernel, dtype=x.dtype)
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        weighted = ops.conv(ops.pad(x, pad), kernel, padding="valid")
        # the taps' sum per output phase, the same for every channel: one channel of ones is enough
        ones = ops.pad(ops.ones_like(x[..., :1]), pad)
        phase_kernel = ops.convert_to_tensor(self._phase_kernel, dtype=x.dtype)
        weights = ops.conv(ones, phase_kernel, padding="valid")  # (N, H, W, r*r), in phase order
        phases = weighted / ops.repeat(weights, 3, axis=-1)
        return pixel_shuffle(phases, self.scale) if self.shuffle else phases

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        r = self.scale
        if not self.shuffle:
            return (n, h, w, c * r * r)
        return (n, None if h is None else h * r, None if w is None else w * r, c)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "interpolation": self.interpolation,
                "shuffle": self.shuffle}


@keras.saving.register_keras_serializable(package="srgan")
class LumaUpsample(keras.layers.Layer):
    """The tail of a luma-first generator: [LR (N,H,W,C), luma residual (N,H,W,r*r)] -> SR (N,H*r,W*r,C).

    SR = interpolate(LR) + the residual added equally to every channel (R, G and B in a generator). Adding d to
    all three adds d to luma and nothing to chroma (BT.601's Cb and Cr weights each sum to zero), so the network
    predicts luma detail only and chroma stays interpolated, as in ESPCN, FSRCNN and on-device upscalers: its
    last conv needs r*r channels instead of 3*r*r. The interpolation is a depthwise convolution (each channel
    its own r*r taps, a third of InterpolationUpsample's dense kernel), renormalised at the borders like
    InterpolationUpsample, and the one transpose of the sub-pixel shuffle also brings the channel-major phases
    into place. Any channel count works: the YUV video path runs it on luma alone (one channel), and
    ChromaUpsample applies the same interpolation to chroma planes.
    """

    def __init__(self, scale, interpolation="bicubic", **kwargs):
        super().__init__(**kwargs)
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.scale, self.interpolation = int(scale), interpolation
        r = self.scale
        taps = interpolation_taps(r, interpolation)
        self._phases = np.stack([np.outer(taps[i], taps[j]) for i in range(r) for j in range(r)], axis=-1)  # (5,5,r*r)
        self._phase_kernel = self._phases[:, :, None, :].astype(np.float32)  # (5, 5, 1, r*r)

    def call(self, inputs):
        lr, residual = inputs
        phases = self.interpolated_phases(lr)
        return self.shuffle(phases + ops.expand_dims(ops.cast(residual, phases.dtype), 3))

    def interpolated_phases(self, x):
        """(N, H, W, C) -> (N, H, W, C, r*r): each channel's r*r output phases of the interpolation."""
        channels = x.shape[-1]
        pad = ((0, 0), (2, 2), (2, 2), (0, 0))
        depthwise = np.repeat(self._phases[:, :, None, :], channels, axis=2).astype(np.float32)  # (5, 5, C, r*r)
        kernel = ops.convert_to_tensor(depthwise, dtype=x.dtype)
        weighted = ops.depthwise_conv(ops.pad(x, pad), kernel, padding="valid")  # (N, H, W, C*r*r), c-major
        ones = ops.pad(ops.ones_like(x[..., :1]), pad)
        weights = ops.conv(ones, ops.convert_to_tensor(self._phase_kernel, dtype=x.dtype), padding="valid")
        shape = ops.shape(x)
        return ops.reshape(weighted, (shape[0], shape[1], shape[2], channels, self.scale**2)) / ops.expand_dims(weights, 3)

    def shuffle(self, phases):
        """(N, H, W, C, r*r) channel-major phases -> (N, H*r, W*r, C)."""
        r, channels = self.scale, phases.shape[3]
        shape = ops.shape(phases)
        n, h, w = shape[0], shape[1], shape[2]
        x = ops.reshape(phases, (n, h, w, channels, r, r))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))  # (n, h, i, w, j, c)
        return ops.reshape(x, (n, h * r, w * r, channels))

    def compute_output_shape(self, input_shapes):
        n, h, w, c = input_shapes[0]
        r = self.scale
        return (n, None if h is None else h * r, None if w is None else w * r, c)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "interpolation": self.interpolation}


@keras.saving.register_keras_serializable(package="srgan")
class ChromaUpsample(LumaUpsample):
    """LumaUpsample's interpolation alone: (N, H, W, C) -> (N, H*r, W*r, C), the same taps, border
    renormalisation and shuffle, so chroma planes upscaled with it are what a luma-first generator gives its
    chroma (the YUV video path: inference.finish_model)."""

    def call(self, x):
        return self.shuffle(self.interpolated_phases(x))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape([input_shape])


@keras.saving.register_keras_serializable(package="srgan")
class VideoLevels(keras.layers.Layer):
    """Float planes to a video's 8-bit levels: x * scale + offset, rounded (half to even), clipped to [low,
    high], cast to uint8: what inference.to_uint8_in_bands does in NumPy, inside the graph, so the YUV video
    path's model call hands over uint8 planes (a quarter of float32's bytes, and no pass over them in NumPy).
    NaN (a broken model) is not mapped to `low` as to_uint8_in_bands maps it: a cast decides it."""

    def __init__(self, scale, offset, low, high, **kwargs):
        super().__init__(**kwargs)
        self.levels = tuple(float(v) for v in (scale, offset, low, high))

    def call(self, x):
        scale, offset, low, high = self.levels
        x = ops.round(ops.cast(x, "float32") * scale + offset)
        return ops.cast(ops.clip(x, low, high), "uint8")

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_output_spec(self, x):
        return keras.KerasTensor(x.shape, dtype="uint8")

    def get_config(self):
        scale, offset, low, high = self.levels
        return {**super().get_config(), "scale": scale, "offset": offset, "low": low, "high": high}


# ECBSR's fixed edge filters (Zhang et al. 2021, "Edge-oriented Convolution Block for Real-time Super Resolution
# on Mobile Devices"), each applied per channel after a learnable 1x1 conv and scaled per output channel
EDGE_MASKS = {
    "sobel_x": ((1, 0, -1), (2, 0, -2), (1, 0, -1)),
    "sobel_y": ((1, 2, 1), (0, 0, 0), (-1, -2, -1)),
    "laplacian": ((0, 1, 0), (1, -4, 1), (0, 1, 0)),
}
REPARAM_EXPANSION = 2  # the expand branch's 1x1 conv widens to this many times the output channels


@keras.saving.register_keras_serializable(package="srgan")
class RepConv2D(keras.layers.Layer):
    """A 3x3 "same" convolution trained as the sum of linear branches (online re-parameterization: OREPA, Hu et
    al. 2022; the branches of ECBSR, Zhang et al. 2021), each collapsed into one (3, 3, C_in, C_out) kernel and
    one bias in call(), so a training step costs one convolution, and what trains is exactly the plain
    convolution that fused_kernel() returns:

        conv3x3     a 3x3 kernel and bias (the plain convolution's)
        conv1x1     a 1x1 kernel at the 3x3's centre, and a bias
        expand      1x1 conv to REPARAM_EXPANSION * C_out channels, then 3x3: the kernels composed (the 1x1
                    conv's bias goes through the 3x3 kernel into the bias)
        sobel_x, sobel_y, laplacian   a 1x1 conv, then EDGE_MASKS' filter per channel with a learnable scale
                    per output channel, and a bias
        identity    (C_in == C_out) the input itself, with a learnable scale per channel

    The branches are linear and sum to one kernel, so they add no capacity: they change how gradient descent
    moves through that kernel (over-parameterization), which trains small networks further.

    Every branch but conv3x3 starts at zero (its last factor zeros, the other random so its gradient flows): a
    fresh layer starts as a plain Conv2D with the same kernel_initializer, and start_from_plain() makes it
    that convolution exactly.
    """

    def __init__(self, filters, use_bias=True, kernel_initializer="glorot_uniform", expansion=REPARAM_EXPANSION,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters, self.use_bias, self.expansion = int(filters), bool(use_bias), int(expansion)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.autocast = False  # the branches are collapsed in float32, the kernel cast to the compute dtype

    def build(self, input_shape):
        cin, cout, wide = input_shape[-1], self.filters, self.expansion * self.filters
        zeros, random = "zeros", "glorot_uniform"
        self.conv3x3 = self.add_weight(name="conv3x3", shape=(3, 3, cin, cout), initializer=self.kernel_initializer)
        self.conv1x1 = self.add_weight(name="conv1x1", shape=(cin, cout), initializer=zeros)
        self.expand_in = self.add_weight(name="expand_in", shape=(cin, wide), initializer=random)
        self.expand_out = self.add_weight(name="expand_out", shape=(3, 3, wide, cout), initializer=zeros)
        self.edge_in = {k: self.add_weight(name=f"{k}_in", shape=(cin, cout), initializer=random) for k in EDGE_MASKS}
        self.edge_scale = {k: self.add_weight(name=f"{k}_scale", shape=(cout,), initializer=zeros) for k in EDGE_MASKS}
        self.identity_scale = (self.add_weight(name="identity_scale", shape=(cout,), initializer=zeros)
                               if cin == cout else None)
        self.biases = []  # one per branch that has one, summed; expand_in's goes through expand_out
        if self.use_bias:
            self.expand_in_bias = self.add_weight(name="expand_in_bias", shape=(wide,), initializer=zeros)
            self.biases = [self.add_weight(name=f"{k}_bias", shape=(cout,), initializer=zeros)
                           for k in ("conv3x3", "conv1x1", "expand", *EDGE_MASKS)]

    def collapsed(self):
        """(kernel (3, 3, C_in, C_out), bias (C_out,) or None): the sum of the branches, as tensors (float32)."""
        # variables on the left of numpy constants: numpy's operators would take them as constants (no gradient)
        cin = self.conv3x3.shape[2]
        centre = np.zeros((3, 3, 1, 1), np.float32)
        centre[1, 1] = 1.0
        kernel = self.conv3x3 + self.conv1x1 * centre
        kernel = kernel + ops.einsum("ie,yxeo->yxio", self.expand_in, self.expand_out)
        for name, mask in EDGE_MASKS.items():
            kernel = kernel + self.edge_in[name] * self.edge_scale[name] * np.float32(mask)[:, :, None, None]
        if self.identity_scale is not None:
            kernel = kernel + self.identity_scale * (centre * np.eye(cin, dtype=np.float32))
        if not self.use_bias:
            return kernel, None
        bias = ops.einsum("e,yxeo->o", self.expand_in_bias, self.expand_out)
        for branch_bias in self.biases:
            bias = bias + branch_bias
        return kernel, bias

    def call(self, x):
        kernel, bias = self.collapsed()
        y = ops.conv(x, ops.cast(kernel, x.dtype), padding="same")
        return y if bias is None else y + ops.cast(bias, x.dtype)

    def fused_kernel(self):
        """(kernel, bias) as numpy float32: the one Conv2D this layer computes (bias None without use_bias)."""
        kernel, bias = self.collapsed()
        return ops.convert_to_numpy(kernel), None if bias is None else ops.convert_to_numpy(bias)

    def start_from_plain(self, kernel, bias=None):
        """Become the plain 3x3 convolution (kernel, bias) exactly: they go into the conv3x3 branch, and every
        other branch's zero-initialised factor is set to zero (its random factor is kept, so it can learn)."""
        self.conv3x3.assign(kernel)
        zero = [self.conv1x1, self.expand_out, *self.edge_scale.values(), *self.biases]
        zero += [self.identity_scale] if self.identity_scale is not None else []
        zero += [self.expand_in_bias] if self.use_bias else []
        for variable in zero:
            variable.assign(np.zeros(variable.shape, np.float32))
        if self.use_bias:
            self.biases[0].assign(np.zeros(self.filters, np.float32) if bias is None else bias)

    def plain_conv(self):
        """A new Conv2D of the same name, shape and dtype policy (without weights: see fuse_reparameterized)."""
        return keras.layers.Conv2D(self.filters, 3, padding="same", use_bias=self.use_bias, name=self.name,
                                   dtype=self.dtype_policy)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "expansion": self.expansion}


def fuse_reparameterized(model):
    """The plain model a re-parameterized generator computes: every RepConv2D replaced by a Conv2D holding its
    fused kernel and bias, every other layer and weight as they are. The outputs are equal to float rounding, and
    the model is what build_generator(..., reparam=False) builds (the same layers, names and weights)."""

    def plain_layer(layer):
        return layer.plain_conv() if isinstance(layer, RepConv2D) else layer.__class__.from_config(layer.get_config())

    plain = keras.models.clone_model(model, clone_function=plain_layer)
    for layer in model.layers:
        weights = layer.fused_kernel() if isinstance(layer, RepConv2D) else layer.get_weights()
        plain.get_layer(layer.name).set_weights([w for w in weights if w is not None])
    return plain


def set_generator_weights(model, saved):
    """Copy a saved generator's weights into model, of the same architecture or its re-parameterized form: a
    plain Conv2D's kernel and bias start the RepConv2D of the same name (start_from_plain), so the model's output
    is the saved one's. ValueError when the two do not match."""
    if not any(isinstance(layer, RepConv2D) for layer in model.layers):
        model.set_weights(saved.get_weights())
        return
    if len(saved.layers) != len(model.layers):
        raise ValueError(f"{len(saved.layers)} layers saved, {len(model.layers)} in the model")
    for layer in model.layers:
        source = saved.get_layer(layer.name)
        if isinstance(layer, RepConv2D) and not isinstance(source, RepConv2D):
            layer.start_from_plain(*source.get_weights())
        else:
            layer.set_weights(source.get_weights())


def upsample_stages(scale):
    """The sub-pixel stages for a scale factor: x2 stages for powers of two, one x3 stage for 3."""
    if scale == 3:
        return [3]
    if scale >= 2 and scale & (scale - 1) == 0:
        return [2] * int(math.log2(scale))
    raise ValueError(f"scale must be one of {SCALES} (a power of two or 3), got {scale}")


def _prelu(init, name):
    """PReLU with one slope per channel shared over the spatial axes, so the model stays size-agnostic."""
    return keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(init), shared_axes=[1, 2], name=name)


def _conv(filters, kernel, name, use_bias=True, kernel_initializer="glorot_uniform", reparam=False):
    """A "same" convolution; with reparam, a 3x3 one is a RepConv2D (other sizes stay plain)."""
    if reparam and kernel == 3:
        return RepConv2D(filters, use_bias=use_bias, name=name, kernel_initializer=kernel_initializer)
    return keras.layers.Conv2D(filters, kernel, padding="same", use_bias=use_bias, name=name,
                               kernel_initializer=kernel_initializer)


def _residual_block(x, filters, batch_norm, prelu_init, name, reparam=False):
    """conv-BN-PReLU-conv-BN plus the block's input (the paper's Fig. 4 block)."""
    y = _conv(filters, 3, f"{name}_conv1", use_bias=not batch_norm, reparam=reparam)(x)
    if batch_norm:
        y = keras.layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = _prelu(prelu_init, f"{name}_prelu")(y)
    y = _conv(filters, 3, f"{name}_conv2", use_bias=not batch_norm, reparam=reparam)(y)
    if batch_norm:
        y = keras.layers.BatchNormalization(name=f"{name}_bn2")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


@keras.saving.register_keras_serializable(package="srgan")
class ChannelContrast(keras.layers.Layer):
    """Per channel, the mean plus the standard deviation over the spatial axes: (N, H, W, C) -> (N, 1, 1, C).
    The statistic of IMDN's contrast-aware channel attention (computed in float32 under any policy)."""

    def call(self, x):
        x = ops.cast(x, "float32")
        mean = ops.mean(x, axis=(1, 2), keepdims=True)
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(1, 2), keepdims=True))
        return ops.cast(mean + std, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1, 1, input_shape[-1])


DISTILL_SLOPE = 0.05  # IMDN's LeakyReLU slope
DISTILL_SHARE = 4  # a block keeps 1/4 of its channels after each conv and refines the other 3/4


def _leaky(name):
    return keras.layers.LeakyReLU(negative_slope=DISTILL_SLOPE, name=name)


def _contrast_attention(x, filters, name, reduction=16):
    """IMDN's CCA: the channels weighted by a sigmoid of a 2-layer 1x1 MLP of their contrast (mean + std)."""
    w = ChannelContrast(name=f"{name}_contrast")(x)
    w = keras.layers.Conv2D(max(1, filters // reduction), 1, activation="relu", name=f"{name}_squeeze")(w)
    w = keras.layers.Conv2D(filters, 1, activation="sigmoid", name=f"{name}_excite")(w)
    return keras.layers.Multiply(name=f"{name}_weighted")([x, w])


def _distillation_block(x, filters, name):
    """IMDN's information multi-distillation block: three 3x3 convs, each splitting its output into a distilled
    quarter (kept) and three quarters (refined by the next), a last 3x3 conv to a quarter, the four quarters
    concatenated, channel attention, a 1x1 fusion and the block's input added. The split is written as two
    convolutions (the same weights and FLOPs as one conv sliced), so the model has no slicing ops."""
    kept, rest = filters // DISTILL_SHARE, filters - filters // DISTILL_SHARE
    distilled, y = [], x
    for k in range(3):
        distilled.append(_leaky(f"{name}_act{k}d")(_conv(kept, 3, f"{name}_conv{k}d")(y)))
        y = _leaky(f"{name}_act{k}r")(_conv(rest, 3, f"{name}_conv{k}r")(y))
    distilled.append(_conv(kept, 3, f"{name}_conv3")(y))
    y = keras.layers.Concatenate(name=f"{name}_concat")(distilled)
    y = _contrast_attention(y, kept * DISTILL_SHARE, name=f"{name}_cca")
    y = _conv(filters, 1, f"{name}_fuse")(y)
    return keras.layers.Add(name=f"{name}_add")([x, y])


def _distillation_body(head, filters, blocks):
    """IMDN's body: the blocks in a chain, all their outputs fused by a 1x1 conv + LeakyReLU, a 3x3 conv, plus the
    head's features (a global skip)."""
    outputs, x = [], head
    for b in range(blocks):
        x = _distillation_block(x, filters, f"imdb{b}")
        outputs.append(x)
    x = keras.layers.Concatenate(name="blocks_concat")(outputs) if len(outputs) > 1 else outputs[0]
    x = _leaky("blocks_fuse_act")(_conv(filters, 1, "blocks_fuse")(x))
    x = _conv(filters, 3, "body_conv")(x)
    return keras.layers.Add(name="global_skip")([head, x])


def _interpolate(x, scale, method, shuffle=True):
    """The input upscaled by plain interpolation, in float32 (it is added to the output, whatever the policy)."""
    if method not in INTERPOLATIONS:
        raise ValueError(f"interpolation_skip must be one of {INTERPOLATIONS} or None, got {method!r}")
    return InterpolationUpsample(scale, method, shuffle=shuffle, dtype="float32", name=f"skip_{method}")(x)


def build_generator(scale=4, preset=None, *, filters=None, blocks=None, batch_norm=None, interpolation_skip=None,
                    upsampler=None, head_kernel=None, block=None, output=None, reparam=None,
                    prelu_init=PRELU_INIT, name="generator"):
    """Build a generator: (N,H,W,3) float32 [0,1] -> (N,scale*H,scale*W,3) float32.

    preset: a PRESETS name ("srresnet", "fast", "video", "imdn", "stream"), None for the paper's SRResNet. Its settings are used
        where the argument is None; an argument given overrides the preset's.
    interpolation_skip: "none", "bilinear" or "bicubic": add an interpolated copy of the input to the output, so
        the network learns the residual and starts at interpolation quality. Both are fixed-kernel convolutions
        (see InterpolationUpsample), so they compile under XLA and trace with unknown H, W.
    block: "residual" (the paper's block; PReLU) or "distill" (IMDN's distillation blocks and fused body; LeakyReLU,
        no batch norm).
    upsampler: "stages" (the paper's: conv + PixelShuffle + PReLU per x2 stage, then a 9x9 conv at HR) or
        "subpixel" (ESPCN: one 3x3 conv to 3*scale^2 channels at LR and one PixelShuffle, no global skip conv).
    head_kernel: the first convolution's size (the paper's 9).
    output: "rgb" (the network predicts all three channels) or "luma" (luma-first: it predicts a luma residual
        at LR resolution, and chroma is the interpolation skip's; see LumaUpsample).
    reparam: every 3x3 convolution of a residual generator a RepConv2D (for training; fuse_reparameterized
        gives the plain model, the same outputs at the plain model's cost).
    prelu_init: initial PReLU slope (0.25 as in the paper).
    The last layer casts to float32, so the model also works under a mixed_float16/mixed_bfloat16 policy.
    """
    settings = presets.resolve_architecture(preset, filters=filters, blocks=blocks, batch_norm=batch_norm,
                                            interpolation_skip=interpolation_skip, upsampler=upsampler,
                                            head_kernel=head_kernel, block=block, output=output, reparam=reparam)
    filters, blocks = int(settings["filters"]), int(settings["blocks"])
    batch_norm, skip = bool(settings["batch_norm"]), settings["interpolation_skip"]
    reparam = bool(settings["reparam"])

    lr = keras.Input((None, None, 3), dtype="float32", name="lr")
    if settings["block"] == "distill" and reparam:
        raise ValueError("reparam applies to residual generators, not to distillation blocks")
    head = _conv(filters, int(settings["head_kernel"]), "head_conv", reparam=reparam)(lr)
    if settings["block"] == "distill":
        if batch_norm or settings["upsampler"] != "subpixel":
            raise ValueError("distillation blocks come without batch norm and with the subpixel upsampler")
        return keras.Model(lr, _subpixel_tail(lr, _distillation_body(head, filters, blocks), scale, skip), name=name)
    head = _prelu(prelu_init, "head_prelu")(head)
    x = head
    for b in range(blocks):
        x = _residual_block(x, filters, batch_norm, prelu_init, f"res{b}", reparam)
    if settings["output"] == "luma":
        return keras.Model(lr, _luma_tail(lr, x, scale, skip, reparam), name=name)
    if settings["upsampler"] == "subpixel":
        return keras.Model(lr, _subpixel_tail(lr, x, scale, skip, reparam), name=name)
    x = _stages_tail(head, x, scale, filters, batch_norm, prelu_init, reparam)
    sr = keras.layers.Activation("linear", dtype="float32", name="sr")(x)
    if skip is not None:
        sr = keras.layers.Add(dtype="float32", name="sr_plus_interpolation")([sr, _interpolate(lr, scale, skip)])
    return keras.Model(lr, sr, name=name)


def _stages_tail(head, x, scale, filters, batch_norm, prelu_init, reparam=False):
    """The paper's: body conv (+BN) and global skip, a sub-pixel stage per x2 (or the x3), then a 9x9 conv."""
    x = _conv(filters, 3, "body_conv", use_bias=not batch_norm, reparam=reparam)(x)
    if batch_norm:
        x = keras.layers.BatchNormalization(name="body_bn")(x)
    x = keras.layers.Add(name="global_skip")([head, x])
    for k, r in enumerate(upsample_stages(scale)):
        x = _conv(filters * r * r, 3, f"up{k}_conv", reparam=reparam)(x)
        x = PixelShuffle(r, name=f"up{k}_shuffle")(x)
        x = _prelu(prelu_init, f"up{k}_prelu")(x)
    return _conv(3, 9, "out_conv")(x)


def _subpixel_tail(lr, x, scale, skip, reparam=False):
    """ESPCN's: one 3x3 conv at LR to 3*scale^2 channels, plus the skip's interpolation in the same sub-pixel
    layout, and one PixelShuffle into the HR image (one shuffle and one add for both: at HR resolution these
    element-wise passes cost a quarter of this light network's time)."""
    upsample_stages(scale)  # the same scales as the paper's tail
    # zeros: an untrained net outputs its interpolation skip exactly, and training starts from bicubic quality
    x = _conv(3 * scale * scale, 3, "out_conv", kernel_initializer="zeros", reparam=reparam)(x)
    x = keras.layers.Activation("linear", dtype="float32", name="out_float32")(x)
    if skip is not None:
        x = keras.layers.Add(dtype="float32", name="out_plus_interpolation")(
            [x, _interpolate(lr, scale, skip, shuffle=False)])
    return PixelShuffle(scale, dtype="float32", name="sr")(x)


def _luma_tail(lr, x, scale, skip, reparam=False):
    """The luma-first tail: one 3x3 conv at LR to scale^2 luma phases (zeros, so an untrained net is its
    interpolation), added to every colour channel of the interpolated input and shuffled (LumaUpsample)."""
    upsample_stages(scale)
    if skip is None:
        raise ValueError("a luma-first generator needs an interpolation skip: its chroma is interpolated")
    x = _conv(scale * scale, 3, "out_conv", kernel_initializer="zeros", reparam=reparam)(x)
    return LumaUpsample(scale, skip, dtype="float32", name="sr")([lr, x])


def load_generator(path):
    """Load a saved generator (.keras) in safe mode; this module's import registers its custom layers."""
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def generator_scale(model):
    """The model's upscaling factor, from its PixelShuffle stages (or, failing that, by running a tiny input)."""
    stages = [layer.scale for layer in _all_layers(model) if isinstance(layer, (PixelShuffle, LumaUpsample))]
    if stages:
        return int(np.prod(stages))
    out = model(np.zeros((1, 4, 4, 3), np.float32), training=False)
    return int(out.shape[1]) // 4


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
