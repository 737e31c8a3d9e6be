"""SRGAN training (Ledig et al. 2017): content losses, and the generator + discriminator trained against each other.

Two phases, as in the paper:
  1. SRResNet: the generator alone with a pixel loss, plain Keras on any backend:
         generator.compile(keras.optimizers.Adam(1e-4), loss=make_content_loss("mse"), metrics=[psnr])
         generator.fit(pairs_of_lr_hr, ...)
  2. SRGAN: the pretrained generator against a discriminator, perceptual = content + 1e-3 * adversarial:
         gan = SRGAN(generator, build_discriminator(128))
         gan.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4), content_loss="vgg54")
         gan.fit(pairs_of_lr_hr, ...)

Content losses (the paper's Sec. 2.2.1): "mse", "l1" on pixels, and "vgg54"/"vgg22": MSE between VGG19 feature
maps phi_{i,j} of the SR and HR images, where phi_{i,j} is "the feature map obtained by the j-th convolution
(after activation) before the i-th maxpooling layer" (eq. 5) -> the ReLU outputs of block5_conv4 / block2_conv2
(Keras' VGG19 conv layers include their ReLU), with the features rescaled by 1/12.75 "to obtain VGG losses of a
scale that is comparable to the MSE loss" (Sec. 3.2).
"""

import os
from pathlib import Path

import keras
from keras import ops

# ----------------------------------------------------------------------------- configuration
ADVERSARIAL_WEIGHT = 1e-3  # perceptual = content + 1e-3 * adversarial (the paper's eq. 3)
CONTENT_LOSSES = ("mse", "l1", "vgg54", "vgg22")
VGG_LAYERS = {"vgg54": "block5_conv4", "vgg22": "block2_conv2"}
VGG_FEATURE_SCALE = 1 / 12.75  # Ledig et al. Sec. 3.2
VGG_MEAN_BGR = (103.939, 116.779, 123.68)  # caffe-style ImageNet means, what keras' vgg19.preprocess_input uses
VGG19_NOTOP_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"
VGG19_NOTOP_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/vgg19/"
                   "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


# ----------------------------------------------------------------------------- content losses
def keras_cache_candidates():
    """Where keras.utils.get_file caches application weights: $KERAS_HOME or ~/.keras (/tmp/.keras if read-only)."""
    root = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    roots = [root] if root.is_dir() and os.access(root, os.W_OK) else [root, Path("/tmp/.keras")]
    return [r / "models" / VGG19_NOTOP_FILE for r in roots]


def find_vgg_weights(vgg_weights=None):
    """The VGG19 (no top) weights file to use: the given path, else the first one in the Keras cache.

    Never downloads: offline, a missing file raises FileNotFoundError naming the file and where to get it.
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
    raise FileNotFoundError(
        f"the VGG content losses need the ImageNet VGG19 weights {VGG19_NOTOP_FILE}, which is not in the Keras "
        f"cache (looked in: {', '.join(str(p.parent) for p in candidates)}). Download it from {VGG19_NOTOP_URL} "
        f"into {candidates[0].parent}, or pass its path with --vgg-weights FILE (vgg_weights=...).")


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
    """Pixel ("mse", "l1") or VGG19 feature ("vgg54", "vgg22") loss between HR (y_true) and SR (y_pred).

    call() returns one value per image (N,), so Keras (and SRGAN, for tf.distribute) can average it per global
    batch. The VGG is built on construction: create the loss inside a distribution strategy's scope.
    """

    def __init__(self, kind="mse", vgg_weights=None, name=None, **kwargs):
        if kind not in CONTENT_LOSSES:
            raise ValueError(f"content loss must be one of {CONTENT_LOSSES}, got {kind!r}")
        super().__init__(name=name or f"{kind}_loss", **kwargs)
        self.kind, self.vgg_weights = kind, None if vgg_weights is None else str(vgg_weights)
        self.vgg = build_vgg_features(VGG_LAYERS[kind], vgg_weights) if kind in VGG_LAYERS else None

    def call(self, y_true, y_pred):
        y_true, y_pred = ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")
        if self.kind == "l1":
            return ops.mean(ops.abs(y_true - y_pred), axis=(1, 2, 3))
        if self.vgg is not None:
            y_true = ops.stop_gradient(self._features(y_true))
            y_pred = self._features(y_pred)
        return ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))

    def _features(self, x):
        return ops.cast(self.vgg(vgg_preprocess(x), training=False), "float32") * VGG_FEATURE_SCALE

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "vgg_weights": self.vgg_weights}


def make_content_loss(name="mse", vgg_weights=None):
    """The content loss called name ("mse", "l1", "vgg54", "vgg22") as a Keras loss: loss(y_true, y_pred)."""
    return ContentLoss(name, vgg_weights=vgg_weights)


@keras.saving.register_keras_serializable(package="srgan")
def psnr(y_true, y_pred):
    """Per-image PSNR in dB of [0,1] RGB images, SR clipped to [0,1]: a quick progress figure for Keras logs.

    Not the papers' protocol (Y channel, border cropped, uint8): flow.calculate_psnr is the one to report.
    """
    y_true = ops.cast(y_true, "float32")
    y_pred = ops.clip(ops.cast(y_pred, "float32"), 0.0, 1.0)
    mse = ops.mean(ops.square(y_true - y_pred), axis=(1, 2, 3))
    return -10.0 * ops.log10(ops.maximum(mse, 1e-10))


# ----------------------------------------------------------------------------- the GAN
def _per_image(loss_fn, y_true, y_pred):
    """A loss as one value per image: Keras Loss objects through call(), plain callables reduced if needed."""
    value = loss_fn.call(y_true, y_pred) if isinstance(loss_fn, keras.losses.Loss) else loss_fn(y_true, y_pred)
    value = ops.cast(value, "float32")
    if len(value.shape) == 0:
        return ops.broadcast_to(value, ops.shape(y_true)[:1])
    return ops.mean(ops.reshape(value, (ops.shape(value)[0], -1)), axis=1)


@keras.saving.register_keras_serializable(package="srgan")
class SRGAN(keras.Model):
    """Generator and discriminator trained against each other (Ledig et al. 2017), trained with fit().

    Data: (lr, hr) batches, float32 in [0,1]. Calling the model runs the generator.
    fit() logs g_loss (perceptual), d_loss, content_loss, adversarial_loss, d_real and d_fake (mean sigmoid of
    the discriminator on HR and on SR); evaluate() / validation logs content_loss and psnr.
    Saved as .keras (model.save) with both networks and both optimizers' state, so a run can resume.
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
        self.psnr = keras.metrics.Mean(name="psnr")
        self.built = True  # both networks are built functional models

    def call(self, inputs, training=False):
        return self.generator(inputs, training=training)

    def compile(self, g_optimizer, d_optimizer, content_loss="mse", adversarial_weight=ADVERSARIAL_WEIGHT,
                vgg_weights=None, **kwargs):
        """One optimizer per network; content_loss is a CONTENT_LOSSES name or a loss(y_true, y_pred) callable.

        Under a mixed_float16 policy the optimizers are wrapped in keras.optimizers.LossScaleOptimizer (dynamic
        loss scaling; mixed_bfloat16 needs none). kwargs go to keras.Model.compile (jit_compile,
        steps_per_execution, run_eagerly). Call it inside the distribution strategy's scope, if any.
        """
        super().compile(**kwargs)
        self.g_optimizer = self._maybe_loss_scaled(keras.optimizers.get(g_optimizer))
        self.d_optimizer = self._maybe_loss_scaled(keras.optimizers.get(d_optimizer))
        if isinstance(content_loss, str):
            content_loss = make_content_loss(content_loss, vgg_weights=vgg_weights)
        self.content_loss = content_loss
        self.adversarial_weight = float(adversarial_weight)
        # Build optimizer state now, outside any tf.function/XLA trace (and inside the strategy scope).
        for optimizer, network in ((self.g_optimizer, self.generator), (self.d_optimizer, self.discriminator)):
            if not optimizer.built:
                optimizer.build(network.trainable_variables)

    def _maybe_loss_scaled(self, optimizer):
        if (self.generator.dtype_policy.name == "mixed_float16"
                and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer)):
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    @property
    def metrics(self):
        return [self.g_loss, self.d_loss, self.content_loss_tracker, self.adversarial_loss, self.d_real,
                self.d_fake, self.psnr]

    def train_step(self, data):
        """One adversarial step (TensorFlow backend: tf.GradientTape and tf.distribute).

        As in the TF2 SRGAN codes, one forward pass gives both networks' gradients: the discriminator's from
        BCE(D(HR), 1) + BCE(D(SR), 0), the generator's from content + adversarial_weight * BCE(D(SR), 1) (the
        paper's -log D(G(LR))), both against the discriminator as it was before this step's update.
        Losses are averaged over the global batch (tf.nn.compute_average_loss), so MirroredStrategy's summed
        gradients equal the single-device ones; with loss scaling (mixed_float16), the optimizers unscale them.
        """
        import tensorflow as tf

        lr, hr = data[0], data[1]
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            sr = self.generator(lr, training=True)
            real_logits = self.discriminator(hr, training=True)
            fake_logits = self.discriminator(sr, training=True)
            content = _per_image(self.content_loss, hr, sr)
            adversarial = ops.softplus(-fake_logits[:, 0])  # BCE(D(SR), 1) from logits
            perceptual = content + self.adversarial_weight * adversarial
            discrimination = ops.softplus(-real_logits[:, 0]) + ops.softplus(fake_logits[:, 0])
            g_loss = tf.nn.compute_average_loss(perceptual)
            d_loss = tf.nn.compute_average_loss(discrimination)
            g_scaled, d_scaled = self.g_optimizer.scale_loss(g_loss), self.d_optimizer.scale_loss(d_loss)
        d_grads = d_tape.gradient(d_scaled, self.discriminator.trainable_variables)
        g_grads = g_tape.gradient(g_scaled, self.generator.trainable_variables)
        self.d_optimizer.apply(d_grads, self.discriminator.trainable_variables)
        self.g_optimizer.apply(g_grads, self.generator.trainable_variables)

        batch = ops.cast(ops.shape(hr)[0], "float32")
        updates = {self.g_loss: perceptual, self.d_loss: discrimination, self.content_loss_tracker: content,
                   self.adversarial_loss: adversarial, self.d_real: ops.sigmoid(real_logits),
                   self.d_fake: ops.sigmoid(fake_logits)}
        for tracker, values in updates.items():
            tracker.update_state(ops.mean(values), sample_weight=batch)
        return {m.name: m.result() for m in updates}

    def test_step(self, data):
        """Content loss and quick RGB PSNR (see psnr) of the generator on a validation batch; any backend."""
        lr, hr = data[0], data[1]
        sr = self.generator(lr, training=False)
        batch = ops.cast(ops.shape(hr)[0], "float32")
        self.content_loss_tracker.update_state(ops.mean(_per_image(self.content_loss, hr, sr)), sample_weight=batch)
        self.psnr.update_state(ops.mean(psnr(hr, sr)), sample_weight=batch)
        return {m.name: m.result() for m in (self.content_loss_tracker, self.psnr)}

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
        content = self.content_loss
        return {"g_optimizer": keras.saving.serialize_keras_object(self.g_optimizer),
                "d_optimizer": keras.saving.serialize_keras_object(self.d_optimizer),
                "content_loss": keras.saving.serialize_keras_object(content),
                "adversarial_weight": self.adversarial_weight}

    def compile_from_config(self, config):
        config = dict(config)
        for key in ("g_optimizer", "d_optimizer", "content_loss"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        self.compile(**config)
