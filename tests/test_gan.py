"""gan.py: content losses (VGG download against a local server), SRGAN train/test steps on TF and JAX, successors' recipes,
saving, determinism, distribution, AMP."""

import hashlib
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
from fakeserver import FakeServer

import gan
import metrics
from discriminator import build_discriminator
from gan import SRGAN, ContentLoss, adversarial_losses, feature_matching_loss, grid_loss, psnr, vgg_preprocess
from generator import build_generator

ROOT = Path(__file__).resolve().parents[1]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def tiny_pair(n=4, lr=8, scale=4, seed=0):
    return rand(n, lr, lr, 3, seed=seed), rand(n, lr * scale, lr * scale, 3, seed=seed + 1)


def tiny_gan(seed=0, run_eagerly=True, kind="srgan", optimizer=lambda: keras.optimizers.Adam(1e-3), **compile_kwargs):
    """A tiny SRGAN; eager by default because tracing costs more than these steps (XLA is tested separately)."""
    keras.utils.set_random_seed(seed)
    model = SRGAN(build_generator(4, filters=8, blocks=1), build_discriminator(32, filters=8, kind=kind))
    model.compile(optimizer(), optimizer(), content_loss="l1",
                  run_eagerly=run_eagerly, **compile_kwargs)
    return model


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# ----------------------------------------------------------------------------- content losses
def test_pixel_losses_are_per_image_means():
    y, p = rand(3, 8, 8, 3, seed=1), rand(3, 8, 8, 3, seed=2)
    mse, l1 = ContentLoss("mse"), ContentLoss("l1")
    np.testing.assert_allclose(np.asarray(mse.call(y, p)), ((y - p) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(float(l1(y, p)), np.abs(y - p).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="content loss"):
        ContentLoss("ssim")


def test_psnr_metric():
    y = np.full((2, 4, 4, 3), 0.5, np.float32)
    p = y + np.array([0.1, 0.01], np.float32)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(psnr(y, p)), [20.0, 40.0], rtol=1e-4)


def test_vgg_preprocessing_matches_keras_caffe_mode():
    x = rand(2, 4, 4, 3)
    expected = keras.applications.vgg19.preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(vgg_preprocess(x)), expected, atol=1e-4)


@pytest.fixture
def empty_keras_cache(tmp_path, monkeypatch):
    """HOME with an empty ~/.keras and no KERAS_HOME: returns where the VGG file would be cached."""
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    return home / ".keras" / "models" / gan.VGG19_NOTOP_FILE


def serve_vgg(server, monkeypatch, body, md5=None):
    """Point the VGG download at a stand-in file on the local server."""
    server.add("/vgg19.h5", body, "application/octet-stream")
    monkeypatch.setattr(gan, "VGG19_NOTOP_URL", server.url("/vgg19.h5"))
    monkeypatch.setattr(gan, "VGG19_NOTOP_MD5", md5 or hashlib.md5(body).hexdigest())


def test_vgg_weights_download_into_the_keras_cache_once(empty_keras_cache, monkeypatch):
    body = bytes(range(256)) * 64
    with FakeServer() as server:
        serve_vgg(server, monkeypatch, body)
        assert gan.find_vgg_weights() == empty_keras_cache
        assert empty_keras_cache.read_bytes() == body
        assert gan.find_vgg_weights() == empty_keras_cache  # from the cache
        assert len(server.requests("/vgg19.h5")) == 1


def test_vgg_download_with_a_wrong_hash_leaves_no_file(empty_keras_cache, monkeypatch):
    with FakeServer() as server:
        serve_vgg(server, monkeypatch, b"not the weights" * 100, md5="0" * 32)
        with pytest.raises(FileNotFoundError) as error:
            gan.find_vgg_weights()
    message = str(error.value)
    assert gan.VGG19_NOTOP_FILE in message and "--vgg-weights" in message and "hash" in message
    assert not empty_keras_cache.exists()


def test_failed_vgg_download_names_the_file_and_how_to_get_it(empty_keras_cache, tmp_path, monkeypatch):
    with FakeServer() as server:
        monkeypatch.setattr(gan, "VGG19_NOTOP_URL", server.url("/missing/vgg19.h5"))
        with pytest.raises(FileNotFoundError) as error:
            ContentLoss("vgg54")
        assert len(server.requests()) == 1
        with pytest.raises(FileNotFoundError, match="not in the Keras cache"):
            gan.find_vgg_weights(download=False)
        assert len(server.requests()) == 1  # download=False only looks
    message = str(error.value)
    assert gan.VGG19_NOTOP_FILE in message and gan.VGG19_NOTOP_URL in message and "--vgg-weights" in message
    assert str(empty_keras_cache.parent) in message and "404" in message
    assert not empty_keras_cache.exists()
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        ContentLoss("vgg22", vgg_weights=tmp_path / "nowhere.h5")
    # a file in the Keras cache is found without being asked for
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    cached = tmp_path / "kh" / "models" / gan.VGG19_NOTOP_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert gan.find_vgg_weights() == cached


def test_vgg22_loss_uses_the_given_weights_and_the_papers_scaling(tmp_path):
    keras.utils.set_random_seed(3)
    vgg = keras.applications.VGG19(include_top=False, weights=None, input_shape=(None, None, 3))
    weights = tmp_path / "vgg19.weights.h5"
    vgg.save_weights(weights)
    loss = ContentLoss("vgg22", vgg_weights=weights)
    features = keras.Model(vgg.input, vgg.get_layer("block2_conv2").output)

    y, p = rand(2, 16, 16, 3, seed=1), rand(2, 16, 16, 3, seed=2)
    prep = keras.applications.vgg19.preprocess_input
    fy, fp = (np.asarray(features(prep(a * 255.0))) / 12.75 for a in (y, p))
    np.testing.assert_allclose(np.asarray(loss.call(y, p)), ((fy - fp) ** 2).mean(axis=(1, 2, 3)), rtol=1e-4)
    assert float(loss(y, y)) == 0.0
    assert loss.vgg.layers[-1].name == "block2_conv2" and not loss.vgg.trainable
    restored = gan.ContentLoss.from_config(loss.get_config())
    np.testing.assert_allclose(float(restored(y, p)), float(loss(y, p)), rtol=1e-6)


# ----------------------------------------------------------------------------- the GAN
def test_one_train_step_moves_both_networks_and_reports_sane_metrics():
    model = tiny_gan()
    lr, hr = tiny_pair()
    g0, d0 = weights_of(model.generator), weights_of(model.discriminator)
    logs = model.train_on_batch(lr, hr, return_dict=True)
    assert set(logs) == {"g_loss", "d_loss", "content_loss", "adversarial_loss", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in logs.values())
    assert 0.0 <= logs["d_real"] <= 1.0 and 0.0 <= logs["d_fake"] <= 1.0
    np.testing.assert_allclose(logs["g_loss"], logs["content_loss"] + 1e-3 * logs["adversarial_loss"], rtol=1e-5)
    assert changed(g0, weights_of(model.generator)) and changed(d0, weights_of(model.discriminator))
    results = model.evaluate(lr, hr, return_dict=True, verbose=0)
    assert set(results) == {"content_loss", "psnr"} and np.isfinite(results["psnr"])


def test_same_seed_gives_the_same_first_steps():
    lr, hr = tiny_pair()
    runs = []
    for _ in range(2):
        model = tiny_gan(seed=7)
        runs.append([model.train_on_batch(lr, hr, return_dict=True) for _ in range(2)])
    for a, b in zip(*runs, strict=True):
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6)


def test_fit_under_xla_matches_eager_steps():
    lr, hr = tiny_pair()
    eager = tiny_gan(seed=5)
    xla = tiny_gan(seed=5, run_eagerly=False, jit_compile=True)
    for _ in range(2):
        a = eager.train_on_batch(lr, hr, return_dict=True)
        b = xla.train_on_batch(lr, hr, return_dict=True)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6)


def test_srgan_saves_and_resumes_with_optimizer_state(tmp_path):
    model = tiny_gan()
    lr, hr = tiny_pair()
    model.fit(lr, hr, batch_size=2, epochs=1, verbose=0)
    path = tmp_path / "srgan.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, SRGAN)
    assert int(loaded.g_optimizer.iterations) == int(model.g_optimizer.iterations) == 2
    for a, b in zip(model.g_optimizer.variables, loaded.g_optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(loaded(lr)), np.asarray(model(lr)))
    a = model.train_on_batch(lr, hr, return_dict=True)
    b = loaded.train_on_batch(lr, hr, return_dict=True)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5)


def test_generator_pretraining_is_plain_keras():
    keras.utils.set_random_seed(0)
    generator = build_generator(4, filters=8, blocks=1, interpolation_skip="bilinear")
    generator.compile(keras.optimizers.Adam(1e-3), loss=ContentLoss("l1"), metrics=[psnr], run_eagerly=True)
    lr, hr = tiny_pair()
    before = weights_of(generator)
    history = generator.fit(lr, hr, batch_size=2, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and np.isfinite(history["psnr"][0])
    assert changed(before, weights_of(generator))
    # the pretrained generator goes straight into the GAN
    model = SRGAN(generator, build_discriminator(32, filters=8))
    model.compile(keras.optimizers.Adam(1e-4), keras.optimizers.Adam(1e-4), content_loss="mse", run_eagerly=True)
    assert np.isfinite(model.train_on_batch(lr, hr, return_dict=True)["g_loss"])


def test_mixed_float16_wraps_optimizers_and_trains():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = tiny_gan()
        assert isinstance(model.g_optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.d_optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.generator.get_layer("head_conv").compute_dtype == "float16"
        lr, hr = tiny_pair()
        g0 = weights_of(model.generator)
        logs = model.train_on_batch(lr, hr, return_dict=True)
        assert all(np.isfinite(v) for v in logs.values())
        assert changed(g0, weights_of(model.generator))
        assert model(lr).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


# ----------------------------------------------------------------------------- successors' recipes
def softplus(x):
    return np.log1p(np.exp(x))


def test_vanilla_adversarial_losses_on_known_logits():
    real, fake = np.array([[2.0], [0.5]], np.float32), np.array([[-1.0], [3.0]], np.float32)
    g, d = adversarial_losses(real, fake, "vanilla")
    np.testing.assert_allclose(np.asarray(g), softplus(-fake[:, 0]), rtol=1e-6)  # -log D(SR)
    np.testing.assert_allclose(np.asarray(d), softplus(-real[:, 0]) + softplus(fake[:, 0]), rtol=1e-6)
    # per-pixel logits (U-Net discriminator) are averaged per image: a constant map equals its one logit
    g_map, d_map = adversarial_losses(np.broadcast_to(real[:, None, None], (2, 4, 4, 1)),
                                      np.broadcast_to(fake[:, None, None], (2, 4, 4, 1)), "vanilla")
    np.testing.assert_allclose(np.asarray(g_map), np.asarray(g), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d_map), np.asarray(d), rtol=1e-6)
    with pytest.raises(ValueError, match="gan_loss"):
        adversarial_losses(real, fake, "wgan")


def test_relativistic_average_losses_on_known_logits():
    real, fake = np.array([[2.0], [0.0]], np.float32), np.array([[-1.0], [1.0]], np.float32)
    g, d = adversarial_losses(real, fake, "ragan")
    real_vs_fake = real[:, 0] - fake.mean()  # [2, 0]
    fake_vs_real = fake[:, 0] - real.mean()  # [-2, 0]
    np.testing.assert_allclose(np.asarray(d), 0.5 * (softplus(-real_vs_fake) + softplus(fake_vs_real)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(g), 0.5 * (softplus(real_vs_fake) + softplus(-fake_vs_real)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(d), [softplus(-2.0), math.log(2.0)], rtol=1e-6)
    # a shift of every logit changes nothing: only differences to the other side's mean count
    g2, d2 = adversarial_losses(real + 5, fake + 5, "ragan")
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(d2), np.asarray(d), rtol=1e-5)


def test_feature_matching_is_a_mean_absolute_difference_with_hr_held_constant():
    import tensorflow as tf

    real = [np.ones((2, 4, 4, 3), np.float32), np.full((2, 2, 2, 5), 3.0, np.float32)]
    fake = [tf.Variable(np.zeros((2, 4, 4, 3), np.float32)), tf.Variable(np.ones((2, 2, 2, 5), np.float32))]
    real = [tf.Variable(r) for r in real]
    with tf.GradientTape(persistent=True) as tape:
        loss = feature_matching_loss(real, fake)
    np.testing.assert_allclose(np.asarray(loss), [1.5, 1.5], rtol=1e-6)  # mean of |1 - 0| and |3 - 1|
    assert all(tape.gradient(loss, r) is None for r in real)
    assert all(tape.gradient(loss, f) is not None for f in fake)


def test_unet_ragan_feature_matching_step_trains_and_logs():
    model = tiny_gan(kind="unet", gan_loss="ragan", feature_matching_weight=0.5)
    lr, hr = tiny_pair()
    g0, d0 = weights_of(model.generator), weights_of(model.discriminator)
    logs = model.train_on_batch(lr, hr, return_dict=True)
    assert set(logs) == {"g_loss", "d_loss", "content_loss", "adversarial_loss", "d_real", "d_fake",
                         "feature_matching_loss"}
    assert all(np.isfinite(v) for v in logs.values()) and logs["feature_matching_loss"] > 0
    expected = logs["content_loss"] + 1e-3 * logs["adversarial_loss"] + 0.5 * logs["feature_matching_loss"]
    np.testing.assert_allclose(logs["g_loss"], expected, rtol=1e-5)
    assert changed(g0, weights_of(model.generator)) and changed(d0, weights_of(model.discriminator))


def test_grid_loss_is_the_per_image_mean_error_per_sub_pixel_position_as_metrics_measures_it():
    rng = np.random.default_rng(0)
    hr = rng.random((2, 16, 20, 3)).astype(np.float32) * 0.8 + 0.1
    pattern = rng.uniform(-0.05, 0.05, (4, 4)).astype(np.float32)
    sr = hr + np.tile(pattern, (4, 5))[None, :, :, None] * np.array([1.0, 0.0], np.float32)[:, None, None, None]
    loss = np.asarray(grid_loss(hr, sr, 4))
    np.testing.assert_allclose(loss, [np.abs(pattern).mean(), 0.0], atol=1e-6)  # the first image has the pattern
    grey = metrics.grid_error(sr[0].mean(axis=-1), hr[0].mean(axis=-1), 4, crop_border=0) / 255
    np.testing.assert_allclose(np.abs(grey).mean(), loss[0], atol=1e-6)


def test_grid_loss_trains_logs_and_survives_save_and_load(tmp_path):
    model = tiny_gan(grid_weight=2.0)
    lr, hr = tiny_pair()
    logs = model.train_on_batch(lr, hr, return_dict=True)
    assert logs["grid_loss"] > 0
    expected = logs["content_loss"] + 1e-3 * logs["adversarial_loss"] + 2.0 * logs["grid_loss"]
    np.testing.assert_allclose(logs["g_loss"], expected, rtol=1e-5)
    model.save(tmp_path / "srgan.keras")
    assert keras.saving.load_model(tmp_path / "srgan.keras", safe_mode=True).grid_weight == 2.0


def test_options_survive_save_and_load_in_safe_mode(tmp_path):
    model = tiny_gan(kind="unet", gan_loss="ragan", feature_matching_weight=0.5,
                     feature_layers=["down1_lrelu", "up3_lrelu"])
    lr, hr = tiny_pair()
    model.train_on_batch(lr, hr)
    model.save(tmp_path / "srgan.keras")
    loaded = keras.saving.load_model(tmp_path / "srgan.keras", safe_mode=True)
    assert (loaded.gan_loss, loaded.feature_matching_weight, loaded.feature_layers) == (
        "ragan", 0.5, ["down1_lrelu", "up3_lrelu"])
    a = model.train_on_batch(lr, hr, return_dict=True)
    b = loaded.train_on_batch(lr, hr, return_dict=True)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5)
    with pytest.raises(ValueError, match="gan_loss"):
        tiny_gan(gan_loss="hinge")


def test_generator_ema_with_swap_ema_weights_callback(tmp_path):
    keras.utils.set_random_seed(0)
    model = SRGAN(build_generator(4, filters=8, blocks=1), build_discriminator(32, filters=8))
    model.compile(keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5), keras.optimizers.Adam(1e-3),
                  content_loss="l1", run_eagerly=True)

    class SeenAtValidation(keras.callbacks.Callback):
        def on_test_begin(self, logs=None):
            self.weights = [np.asarray(v).copy() for v in self.model.generator.trainable_variables]

    seen = SeenAtValidation()
    lr, hr = tiny_pair()
    model.fit(lr, hr, batch_size=2, epochs=1, verbose=0, validation_data=(lr, hr),
              callbacks=[keras.callbacks.SwapEMAWeights(), seen])
    ema = [np.asarray(v) for v in model.g_optimizer._model_variables_moving_average]
    raw = [np.asarray(v) for v in model.generator.trainable_variables]
    assert changed(raw, ema)  # training goes on with the raw weights...
    for a, b in zip(seen.weights, ema, strict=True):  # ...validation measured the average
        np.testing.assert_allclose(a, b, rtol=1e-6)
    model.save(tmp_path / "ema.keras")
    loaded = keras.saving.load_model(tmp_path / "ema.keras", safe_mode=True)
    for a, b in zip(loaded.g_optimizer._model_variables_moving_average, ema, strict=True):
        np.testing.assert_array_equal(np.asarray(a), b)


# ----------------------------------------------------------------------------- the JAX and torch backends
BACKEND_SCRIPT = """
import json, sys
import keras, numpy as np
import gan, generator  # register the custom classes
assert keras.backend.backend() == sys.argv[1]
lr, hr = np.load(sys.argv[3])["lr"], np.load(sys.argv[3])["hr"]


def load(path):
    model = keras.saving.load_model(path, safe_mode=True)
    model.run_eagerly = True  # JAX: tracing and compiling cost more than these tiny steps
    return model


out = {}
for name in sys.argv[4:]:
    model = load(f"{sys.argv[2]}/{name}.keras")
    steps = [model.train_on_batch(lr, hr, return_dict=True) for _ in range(2)]
    weights = [float(np.abs(w).sum()) for w in model.generator.get_weights() + model.discriminator.get_weights()]
    model.save(f"{sys.argv[2]}/{name}-resaved.keras")
    resumed = load(f"{sys.argv[2]}/{name}-resaved.keras")
    iterations = int(resumed.g_optimizer.iterations)
    nxt, nxt_resumed = (m.train_on_batch(lr, hr, return_dict=True) for m in (model, resumed))
    out[name] = {"steps": steps, "weights": weights, "next": nxt, "next_resumed": nxt_resumed,
                 "iterations": iterations, "evaluate": model.evaluate(lr, hr, verbose=0, return_dict=True)}
print("RESULT " + json.dumps(out))
"""

OTHER_BACKEND_RECIPES = {"paper": {}, "successors": {"kind": "unet", "gan_loss": "ragan", "feature_matching_weight": 0.5,
                                                 "grid_weight": 1.0}}


# JAX takes a minute or two on 2 CPU cores (it compiles each op and initializer shape on first use): a soak test
# (`pytest -m soak`, which .ci/run runs); make test keeps JAX's phase 1 (test_multiworker's data-parallel test)
@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("jax", marks=pytest.mark.soak), "torch"])
def test_train_step_on_another_backend_matches_tensorflow(backend, tmp_path):
    lr, hr = tiny_pair()
    np.savez(tmp_path / "batch.npz", lr=lr, hr=hr)
    expected = {}
    for name, options in OTHER_BACKEND_RECIPES.items():
        # SGD with momentum: state to save, and no Adam first step, whose sign(gradient) amplifies rounding
        model = tiny_gan(optimizer=lambda: keras.optimizers.SGD(0.05, momentum=0.9), **options)
        model.save(tmp_path / f"{name}.keras")  # the same starting weights and optimizer state for both
        steps = [model.train_on_batch(lr, hr, return_dict=True) for _ in range(2)]
        weights = [float(np.abs(w).sum()) for w in model.generator.get_weights() + model.discriminator.get_weights()]
        expected[name] = steps, weights
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": backend,
           "JAX_PLATFORMS": "cpu"}
    (tmp_path / "step.py").write_text(BACKEND_SCRIPT)
    result = subprocess.run([sys.executable, str(tmp_path / "step.py"), backend, str(tmp_path),
                             str(tmp_path / "batch.npz"), *OTHER_BACKEND_RECIPES], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    if result.returncode and f"No module named '{backend}'" in result.stderr:
        pytest.skip(f"{backend} is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.split("RESULT ", 1)[1])
    for name, (steps, weights) in expected.items():
        run = got[name]
        # float32 rounding differs between the backends' kernels; RaGAN's differences of means amplify it a little
        for step, (tf_logs, other_logs) in enumerate(zip(steps, run["steps"], strict=True), start=1):
            assert set(tf_logs) == set(other_logs)
            for key in tf_logs:
                np.testing.assert_allclose(other_logs[key], tf_logs[key], rtol=2e-4, atol=1e-6,
                                           err_msg=f"{name}, step {step}: {key}")
        if not (backend == "jax" and OTHER_BACKEND_RECIPES[name].get("kind") == "unet"):
            # Keras' SpectralNormalization writes the normalised kernel back into the trainable kernel in
            # training; a stateless JAX step keeps the raw kernel (the gradient then flows through the
            # normalisation, as torch's spectral_norm), so only the U-Net's losses are the same across backends
            # sums of |w|; the biases start at 0, so theirs are two steps' updates (~1e-3), each a sum over every
            # pixel with cancellation: float32 rounding that differs between the backends' kernels (oneDNN's
            # AVX-512 ones more than AVX2's) moves them by ~1e-6 absolute, far above 1e-4 of their size
            np.testing.assert_allclose(run["weights"], weights, rtol=1e-4, atol=5e-6)
        # JAX save/resume keeps the optimizer state: the resumed model's next step is the original's
        assert run["iterations"] == 2
        for key in run["next"]:
            np.testing.assert_allclose(run["next_resumed"][key], run["next"][key], rtol=1e-5)
        assert set(run["evaluate"]) == {"content_loss", "psnr"} and np.isfinite(run["evaluate"]["psnr"])


MIRRORED_SCRIPT = """
import numpy as np, tensorflow as tf, keras
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from discriminator import build_discriminator
from gan import SRGAN
from generator import build_generator


def make(strategy, optimizer):
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = SRGAN(build_generator(4, filters=8, blocks=1), build_discriminator(32, filters=8))
        model.compile(optimizer(), optimizer(), content_loss="l1", jit_compile=False)
    return model


mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
assert mirrored.num_replicas_in_sync == 2
rng = np.random.default_rng(0)
lr, hr = rng.random((8, 8, 8, 3), np.float32), rng.random((8, 32, 32, 3), np.float32)

# 1. fit works: weights move, metrics are finite and aggregated over replicas
model = make(mirrored, lambda: keras.optimizers.Adam(1e-3))
before = [w.copy() for w in model.generator.get_weights()]
history = model.fit(tf.data.Dataset.from_tensor_slices((lr, hr)).batch(4), epochs=2, verbose=0).history
assert any(not np.array_equal(a, b) for a, b in zip(before, model.generator.get_weights())), "G did not move"
for key, values in history.items():
    assert all(np.isfinite(values)), (key, values)
assert 0 <= history["d_real"][-1] <= 1 and 0 <= history["d_fake"][-1] <= 1
assert abs(history["g_loss"][-1] - (history["content_loss"][-1] + 1e-3 * history["adversarial_loss"][-1])) < 1e-4
assert int(model.g_optimizer.iterations.numpy()) == 4

# 2. losses are averaged per global batch: one SGD step on [A, A] split as A | A (so each replica's batch-norm
#    statistics equal the global ones) moves the weights exactly as one step on one device does
batch = (np.concatenate([lr[:2], lr[:2]]), np.concatenate([hr[:2], hr[:2]]))
sgd = lambda: keras.optimizers.SGD(0.1)
results = []
for strategy in (mirrored, tf.distribute.get_strategy()):
    model = make(strategy, sgd)
    logs = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0).history
    results.append((logs, model.generator.get_weights() + model.discriminator.get_weights()))
(logs_m, w_m), (logs_1, w_1) = results
for a, b in zip(w_m, w_1):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
for key in logs_1:
    np.testing.assert_allclose(logs_m[key], logs_1[key], rtol=1e-4)
print("MIRRORED-OK", history["g_loss"])
"""


def test_trains_under_mirrored_strategy_on_two_logical_cpus():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(MIRRORED_SCRIPT)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MIRRORED-OK" in result.stdout
