"""gan.py: content losses (VGG included, offline), SRGAN train/test steps, saving, determinism, distribution, AMP."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest

import gan
from discriminator import build_discriminator
from gan import SRGAN, make_content_loss, psnr, vgg_preprocess
from generator import build_generator

ROOT = Path(__file__).resolve().parents[1]


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def tiny_pair(n=4, lr=8, scale=4, seed=0):
    return rand(n, lr, lr, 3, seed=seed), rand(n, lr * scale, lr * scale, 3, seed=seed + 1)


def tiny_gan(seed=0, run_eagerly=True, **compile_kwargs):
    """A tiny SRGAN; eager by default because tracing costs more than these steps (XLA is tested separately)."""
    keras.utils.set_random_seed(seed)
    model = SRGAN(build_generator(4, filters=8, blocks=1), build_discriminator(32, filters=8))
    model.compile(keras.optimizers.Adam(1e-3), keras.optimizers.Adam(1e-3), content_loss="l1",
                  run_eagerly=run_eagerly, **compile_kwargs)
    return model


def weights_of(model):
    return [w.copy() for w in model.get_weights()]


def changed(before, after):
    return any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


# ----------------------------------------------------------------------------- content losses
def test_pixel_losses_are_per_image_means():
    y, p = rand(3, 8, 8, 3, seed=1), rand(3, 8, 8, 3, seed=2)
    mse, l1 = make_content_loss("mse"), make_content_loss("l1")
    np.testing.assert_allclose(np.asarray(mse.call(y, p)), ((y - p) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(float(l1(y, p)), np.abs(y - p).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="content loss"):
        make_content_loss("ssim")


def test_psnr_metric():
    y = np.full((2, 4, 4, 3), 0.5, np.float32)
    p = y + np.array([0.1, 0.01], np.float32)[:, None, None, None]
    np.testing.assert_allclose(np.asarray(psnr(y, p)), [20.0, 40.0], rtol=1e-4)


def test_vgg_preprocessing_matches_keras_caffe_mode():
    x = rand(2, 4, 4, 3)
    expected = keras.applications.vgg19.preprocess_input(x * 255.0)
    np.testing.assert_allclose(np.asarray(vgg_preprocess(x)), expected, atol=1e-4)


def test_vgg_loss_without_weights_names_the_file_and_never_downloads(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".keras").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    with pytest.raises(FileNotFoundError) as error:
        make_content_loss("vgg54")
    message = str(error.value)
    assert gan.VGG19_NOTOP_FILE in message and gan.VGG19_NOTOP_URL in message and "--vgg-weights" in message
    assert str(home / ".keras" / "models") in message
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        make_content_loss("vgg22", vgg_weights=tmp_path / "nowhere.h5")
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
    loss = make_content_loss("vgg22", vgg_weights=weights)
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
    generator.compile(keras.optimizers.Adam(1e-3), loss=make_content_loss("l1"), metrics=[psnr], run_eagerly=True)
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
