"""generator.py and discriminator.py: shapes, layers against references, presets, safe-mode save/load."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from discriminator import FEATURE_LAYERS, build_discriminator, feature_layer_names
from generator import (
    PRESETS,
    ChannelContrast,
    InterpolationUpsample,
    PixelShuffle,
    build_generator,
    generator_scale,
    load_generator,
    upsample_stages,
)


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def pixel_shuffle_reference(x, r):
    """Loop-by-loop definition: out[n, h*r+i, w*r+j, c] = x[n, h, w, (i*r+j)*C + c]."""
    n, h, w, cr2 = x.shape
    c = cr2 // (r * r)
    out = np.zeros((n, h * r, w * r, c), x.dtype)
    for i in range(r):
        for j in range(r):
            out[:, i::r, j::r, :] = x[:, :, :, (i * r + j) * c:(i * r + j + 1) * c]
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_pixel_shuffle_matches_numpy_and_depth_to_space(scale):
    x = rand(2, 5, 3, 3 * scale * scale)
    out = np.asarray(PixelShuffle(scale)(x))
    np.testing.assert_array_equal(out, pixel_shuffle_reference(x, scale))
    np.testing.assert_array_equal(out, tf.nn.depth_to_space(x, scale).numpy())


def test_pixel_shuffle_traces_with_unknown_height_and_width_under_xla():
    layer = PixelShuffle(2)
    fn = tf.function(layer, jit_compile=True, input_signature=[tf.TensorSpec((None, None, None, 12))])
    for h, w in [(3, 5), (4, 2)]:
        x = rand(1, h, w, 12)
        np.testing.assert_array_equal(fn(x).numpy(), pixel_shuffle_reference(x, 2))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_interpolation_upsample_matches_pil(interpolation, scale):
    x = rand(1, 7, 5, 3)
    out = np.asarray(InterpolationUpsample(scale, interpolation)(x))[0]
    resample = Image.BILINEAR if interpolation == "bilinear" else Image.BICUBIC
    ref = np.stack([np.asarray(Image.fromarray(x[0, :, :, c]).resize((5 * scale, 7 * scale), resample))
                    for c in range(3)], axis=-1)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
def test_generator_shapes_for_every_scale_and_odd_sizes(scale):
    model = build_generator(scale, filters=8, blocks=1)
    assert model.input_shape == (None, None, None, 3)
    for h, w in [(7, 5), (4, 9)]:
        out = model(rand(2, h, w, 3), training=False)
        assert out.shape == (2, h * scale, w * scale, 3)
        assert out.dtype == "float32"
    assert generator_scale(model) == scale
    assert len([layer for layer in model.layers if isinstance(layer, PixelShuffle)]) == len(upsample_stages(scale))


def test_bad_scale_and_preset_are_refused():
    with pytest.raises(ValueError, match="scale"):
        build_generator(5, filters=8, blocks=1)
    with pytest.raises(ValueError, match="unknown generator preset"):
        build_generator(4, preset="huge")
    with pytest.raises(ValueError, match="interpolation_skip"):
        build_generator(4, filters=8, blocks=1, interpolation_skip="lanczos")


def test_srresnet_preset_is_the_papers_network():
    model = build_generator(4, preset="srresnet")
    names = [layer.name for layer in model.layers]
    assert sum(n.endswith("_add") for n in names) == 16  # residual blocks
    assert sum(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers) == 33
    assert model.get_layer("head_conv").kernel.shape == (9, 9, 3, 64)
    assert model.get_layer("out_conv").kernel.shape == (9, 9, 64, 3)
    assert model.get_layer("up0_conv").kernel.shape == (3, 3, 64, 256)
    assert model.count_params() == 1_552_771  # ~1.5M, as the paper's SRResNet
    prelu = model.get_layer("head_prelu")
    assert prelu.alpha.shape == (1, 1, 64)  # shared over H, W: one slope per channel
    np.testing.assert_allclose(prelu.alpha.numpy(), 0.25)


def test_fast_preset_and_overrides():
    fast = build_generator(4, preset="fast")
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in fast.layers)
    assert fast.get_layer("skip_bilinear").interpolation == "bilinear"
    assert fast.get_layer("head_conv").kernel.shape[-1] == PRESETS["fast"]["filters"]
    wider = build_generator(4, preset="fast", filters=48, interpolation_skip="bicubic")
    assert wider.get_layer("head_conv").kernel.shape[-1] == 48
    assert wider.get_layer("skip_bicubic").interpolation == "bicubic"


def test_video_preset_runs_every_convolution_at_lr_resolution_and_starts_at_bicubic(tmp_path):
    model = build_generator(4, preset="video")
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    x = rand(1, 6, 5, 3)
    per_conv = keras.Model(model.input, [layer.output for layer in convs])(x)
    assert all(tuple(out.shape[1:3]) == (6, 5) for out in per_conv)  # no convolution at HR resolution
    assert model.get_layer("head_conv").kernel.shape == (3, 3, 3, 32)
    assert model.get_layer("out_conv").kernel.shape == (3, 3, 32, 48)
    assert 40_000 < model.count_params() < 60_000 and generator_scale(model) == 4
    # untrained, it is exactly bicubic (zero-initialised output conv), whatever the size
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(InterpolationUpsample(4, "bicubic")(x)), atol=1e-6)
    with pytest.raises(ValueError, match="upsampler must be one of"):
        build_generator(4, preset="video", upsampler="deconv")
    model.get_layer("out_conv").set_weights([w + 0.01 for w in model.get_layer("out_conv").get_weights()])
    model.save(tmp_path / "video.keras")
    np.testing.assert_array_equal(np.asarray(load_generator(tmp_path / "video.keras")(x)), np.asarray(model(x)))


def test_stream_preset_is_luma_first_within_the_real_time_budget(tmp_path):
    model = build_generator(4, preset="stream")
    assert model.get_layer("out_conv").kernel.shape == (3, 3, 16, 16)  # one channel per sub-pixel phase: luma only
    assert generator_scale(model) == 4
    x = rand(2, 6, 5, 3)
    # untrained, it is exactly bicubic, like the RGB presets
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(InterpolationUpsample(4, "bicubic")(x)), atol=1e-6)
    out_conv = model.get_layer("out_conv")
    out_conv.set_weights([np.random.default_rng(1).normal(0, 0.05, w.shape).astype("float32")
                          for w in out_conv.get_weights()])
    delta = np.asarray(model(x)) - np.asarray(InterpolationUpsample(4, "bicubic")(x))
    assert np.abs(delta).max() > 1e-2
    # what it adds is luma alone: R, G and B move together, so BT.601 chroma stays the bicubic one
    np.testing.assert_allclose(delta[..., 0], delta[..., 1], atol=1e-6)
    np.testing.assert_allclose(delta[..., 0], delta[..., 2], atol=1e-6)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from peak import generator_flops

    assert generator_flops(model, 360, 640) / 2 / (360 * 640) <= 15_000  # the on-device budget per LR pixel
    with pytest.raises(ValueError, match="needs an interpolation skip"):
        build_generator(4, preset="stream", interpolation_skip="none")
    model.save(tmp_path / "stream.keras")
    np.testing.assert_array_equal(np.asarray(load_generator(tmp_path / "stream.keras")(x)), np.asarray(model(x)))


def test_imdn_preset_is_the_published_network_on_a_bicubic_skip(tmp_path):
    model = build_generator(4, preset="imdn")
    assert model.count_params() == 715_176  # IMDN's published x4 parameter count (Hui et al. 2019, Table 1)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    x = rand(1, 6, 5, 3)
    per_conv = keras.Model(model.input, [layer.output for layer in convs])(x)
    assert all(tuple(out.shape[1:3]) in {(6, 5), (1, 1)} for out in per_conv)  # LR maps and the attention's 1x1
    assert model.get_layer("imdb0_conv0d").kernel.shape == (3, 3, 64, 16)  # a quarter kept ...
    assert model.get_layer("imdb0_conv0r").kernel.shape == (3, 3, 64, 48)  # ... three quarters refined
    assert model.get_layer("blocks_fuse").kernel.shape == (1, 1, 6 * 64, 64)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(InterpolationUpsample(4, "bicubic")(x)), atol=1e-6)
    with pytest.raises(ValueError, match="without batch norm"):
        build_generator(4, preset="imdn", batch_norm=True)
    with pytest.raises(ValueError, match="block must be one of"):
        build_generator(4, preset="imdn", block="dense")
    model.get_layer("out_conv").set_weights([w + 0.01 for w in model.get_layer("out_conv").get_weights()])
    model.save(tmp_path / "imdn.keras")
    np.testing.assert_array_equal(np.asarray(load_generator(tmp_path / "imdn.keras")(x)), np.asarray(model(x)))


def test_channel_contrast_is_mean_plus_standard_deviation_per_channel():
    x = rand(2, 5, 7, 4)
    expected = x.mean(axis=(1, 2), keepdims=True) + x.std(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(ChannelContrast()(x)), expected, rtol=1e-5)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_interpolation_skip_starts_from_interpolation(interpolation):
    """With the output conv zeroed the generator is exactly the interpolated input."""
    model = build_generator(3, filters=8, blocks=1, batch_norm=False, interpolation_skip=interpolation)
    out_conv = model.get_layer("out_conv")
    out_conv.set_weights([np.zeros_like(w) for w in out_conv.get_weights()])
    x = rand(1, 6, 4, 3)
    expected = np.asarray(InterpolationUpsample(3, interpolation)(x))
    np.testing.assert_allclose(np.asarray(model(x)), expected, atol=1e-6)


def test_generator_save_load_round_trip_in_safe_mode(tmp_path):
    model = build_generator(4, filters=8, blocks=2, interpolation_skip="bicubic")
    path = tmp_path / "g.keras"
    model.save(path)
    loaded = load_generator(path)
    x = rand(1, 5, 7, 3)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert generator_scale(loaded) == 4


def test_generator_compiles_with_xla_on_unknown_sizes():
    model = build_generator(2, filters=8, blocks=1, interpolation_skip="bicubic")
    fn = tf.function(lambda x: model(x, training=False), jit_compile=True,
                     input_signature=[tf.TensorSpec((None, None, None, 3))])
    for h, w in [(5, 3), (4, 6)]:
        x = rand(1, h, w, 3)
        np.testing.assert_allclose(fn(x).numpy(), np.asarray(model(x)), atol=1e-5)


def test_generator_output_is_float32_under_mixed_precision():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_generator(2, filters=8, blocks=1, interpolation_skip="bilinear")
        assert model.get_layer("head_conv").compute_dtype == "bfloat16"
        assert model(rand(1, 4, 4, 3)).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


@pytest.mark.parametrize("size, grid", [(96, 6), (128, 8)])
def test_discriminator_at_the_papers_and_the_projects_sizes(size, grid):
    model = build_discriminator(size, filters=8)
    assert model.get_layer("lrelu7").output.shape[1:3] == (grid, grid)
    assert model.get_layer("dense").units == 128
    out = model(rand(3, size, size, 3))
    assert out.shape == (3, 1) and out.dtype == "float32"
    assert "bn0" not in [layer.name for layer in model.layers]  # no BN on the first conv
    strides = [model.get_layer(f"conv{k}").strides[0] for k in range(8)]
    assert strides == [1, 2, 1, 2, 1, 2, 1, 2]


def test_discriminator_of_any_size_uses_global_pooling():
    model = build_discriminator(None, filters=8)
    assert model.input_shape == (None, None, None, 3)
    for size in (48, 64, 100):
        assert model(rand(2, size, size, 3)).shape == (2, 1)
    with pytest.raises(ValueError, match="hr_size"):
        build_discriminator(8)


def test_discriminator_papers_width():
    model = build_discriminator(96)
    widths = [model.get_layer(f"conv{k}").filters for k in range(8)]
    assert widths == [64, 64, 128, 128, 256, 256, 512, 512]
    assert model.get_layer("dense").units == 1024


def test_discriminator_save_load_round_trip_in_safe_mode(tmp_path):
    model = build_discriminator(32, filters=8)
    path = tmp_path / "d.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = rand(2, 32, 32, 3)
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)))


def test_unet_discriminator_gives_per_pixel_logits_with_spectral_norm():
    model = build_discriminator(32, filters=8, kind="unet")
    out = model(rand(2, 32, 32, 3))
    assert out.shape == (2, 32, 32, 1) and out.dtype == "float32"
    normalised = [layer for layer in model.layers if isinstance(layer, keras.layers.SpectralNormalization)]
    assert len(normalised) == 8  # every conv but the first and the last, as Real-ESRGAN
    assert [model.get_layer(f"down{k}_conv").layer.strides[0] for k in (1, 2, 3)] == [2, 2, 2]
    assert model.get_layer("down3_conv").layer.filters == 64
    assert feature_layer_names(model) == list(FEATURE_LAYERS["unet"])
    assert feature_layer_names(build_discriminator(32, filters=8)) == list(FEATURE_LAYERS["srgan"])


def test_unet_discriminator_of_any_multiple_of_8_and_bad_sizes():
    model = build_discriminator(None, filters=8, kind="unet")
    for size in (24, 40):
        assert model(rand(1, size, size, 3)).shape == (1, size, size, 1)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_discriminator(36, kind="unet")
    with pytest.raises(ValueError, match="kind"):
        build_discriminator(32, kind="patchgan")


def test_spectral_norm_power_iteration_updates_only_in_training():
    model = build_discriminator(16, filters=4, kind="unet")
    u = model.get_layer("down1_conv").vector_u
    before = np.asarray(u).copy()
    model(rand(1, 16, 16, 3), training=False)
    np.testing.assert_array_equal(np.asarray(u), before)
    model(rand(1, 16, 16, 3), training=True)
    assert not np.array_equal(np.asarray(u), before)


def test_unet_discriminator_save_load_round_trip_in_safe_mode(tmp_path):
    model = build_discriminator(16, filters=4, kind="unet")
    model(rand(1, 16, 16, 3), training=True)  # move the power-iteration vectors off their initial values
    path = tmp_path / "unet_d.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = rand(2, 16, 16, 3)
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)),
                               rtol=1e-6, atol=1e-7)
