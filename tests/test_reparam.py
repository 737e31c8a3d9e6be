"""Training-time re-parameterization (generator.RepConv2D, flow.py train --reparam): the branches collapse into
the plain model exactly, a plain model starts a reparam one exactly, and a run exports plain generators at the
preset's cost and resumes with its branches."""

import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import write_tiny_dataset

import flow
from generator import (
    RepConv2D,
    build_generator,
    fuse_reparameterized,
    load_generator,
    set_generator_weights,
)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_STREAM = ROOT / "weights" / "stream_x4.keras"


def rand(*shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def randomize(model, seed=1, std=0.1):
    """Random values in every weight of every branch (zero-initialised ones too), so each branch counts."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        variable.assign(rng.normal(0, std, variable.shape).astype("float32"))


def conv_kinds(model):
    return {type(layer).__name__ for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, RepConv2D))}


# the residual generators reparam applies to: luma-first, ESPCN tail, and the paper's tail with batch norm (no bias)
ARCHITECTURES = {
    "stream": dict(preset="stream"),
    "video": dict(preset="video", filters=8, blocks=1),
    "stages-bn": dict(preset="srresnet", filters=8, blocks=1, interpolation_skip="bicubic"),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_fused_model_is_the_plain_model_with_the_same_outputs(arch, tmp_path):
    settings = ARCHITECTURES[arch]
    model = build_generator(4, **settings, reparam=True)
    assert "RepConv2D" in conv_kinds(model)
    randomize(model)
    fused = fuse_reparameterized(model)
    plain = build_generator(4, **settings)
    assert conv_kinds(fused) == {"Conv2D"}
    assert [(layer.name, type(layer)) for layer in fused.layers] == [(layer.name, type(layer)) for layer in plain.layers]
    assert [w.shape for w in fused.weights] == [w.shape for w in plain.weights]
    x = rand(2, 9, 7, 3)
    np.testing.assert_allclose(np.asarray(fused(x)), np.asarray(model(x)), atol=1e-4)
    fused.save(tmp_path / "fused.keras")
    np.testing.assert_array_equal(np.asarray(load_generator(tmp_path / "fused.keras")(x)), np.asarray(fused(x)))


def test_every_branch_changes_the_kernel_and_the_fused_kernel_is_their_sum():
    layer = RepConv2D(4, name="rep")
    layer.build((None, None, None, 4))
    randomize(layer, seed=3)
    kernel, bias = layer.fused_kernel()
    x = rand(1, 6, 5, 4)
    np.testing.assert_allclose(np.asarray(layer(x)), np.asarray(tf.nn.conv2d(x, kernel, 1, "SAME") + bias), atol=1e-5)
    for variable in layer.weights:  # each branch's parameters move the fused kernel or bias
        before = [w.copy() for w in layer.fused_kernel()]
        variable.assign(variable.numpy() + 0.5)
        assert any(not np.allclose(a, b) for a, b in zip(before, layer.fused_kernel(), strict=True)), variable.path


def test_a_plain_model_starts_the_reparam_model_exactly_and_every_branch_learns():
    shipped = load_generator(SHIPPED_STREAM)
    model = build_generator(4, "stream", reparam=True)
    randomize(model)  # whatever the branches held before
    set_generator_weights(model, shipped)
    x = rand(2, 10, 12, 3)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(shipped(x)), atol=1e-6)
    for layer in (layer for layer in model.layers if isinstance(layer, RepConv2D)):
        kernel, bias = layer.fused_kernel()
        np.testing.assert_allclose(kernel, shipped.get_layer(layer.name).kernel.numpy(), atol=1e-7)
        np.testing.assert_allclose(bias, shipped.get_layer(layer.name).bias.numpy(), atol=1e-7)
    # no branch is stuck at zero: each zero-initialised factor gets a gradient from the first step
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.abs(model(x) - tf.image.resize(x, (40, 48), "bicubic")))
    grads = dict(zip((v.path for v in model.trainable_variables),
                     tape.gradient(loss, model.trainable_variables), strict=True))
    for name in ("conv1x1", "expand_out", "sobel_x_scale", "laplacian_scale", "identity_scale"):
        assert float(tf.reduce_max(tf.abs(grads[f"res0_conv1/{name}"]))) > 0, name
    with pytest.raises(ValueError):
        set_generator_weights(model, build_generator(4, "stream", blocks=3))


def test_fused_stream_model_costs_the_presets_macs():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from peak import generator_flops

    model = build_generator(4, "stream", reparam=True)
    randomize(model)
    macs = generator_flops(fuse_reparameterized(model), 360, 640) / 2 / (360 * 640)
    assert macs == generator_flops(build_generator(4, "stream"), 360, 640) / 2 / (360 * 640)
    assert 13_000 < macs <= 15_000  # 13.6 kMAC per LR pixel, within the on-device budget


def test_reparam_trains_under_mixed_bfloat16_and_xla():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = build_generator(4, "stream", reparam=True)
        model.compile(keras.optimizers.Adam(1e-3), loss="mae", jit_compile=True)
        x, y = rand(2, 8, 8, 3), rand(2, 32, 32, 3, seed=1)
        losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        assert np.all(np.isfinite(losses)) and model(x).dtype == "float32"
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------- flow.py train --reparam
class Killed(Exception):
    """Raised after an epoch's state is saved: the run dies there, as a kill -9 would."""


class OutputsAtEpochEnd(keras.callbacks.Callback):
    """The trained model's output on a fixed probe after every epoch; with kill_after, the run dies after that
    many epochs (the callbacks before it have exported and saved the epoch)."""

    def __init__(self, probe, kill_after=None):
        super().__init__()
        self.probe, self.kill_after, self.outputs = probe, kill_after, []

    def on_epoch_end(self, epoch, logs=None):
        assert "RepConv2D" in conv_kinds(self.model)
        self.outputs.append(np.asarray(self.model(self.probe)))
        if self.kill_after == epoch + 1:
            raise Killed


def reparam_run_args(data, out):
    return flow.parse_args(["train", "--data", str(data), "--out", str(out), "--preset", "stream", "--reparam",
                            "--init-generator", str(SHIPPED_STREAM), "--pretrain-epochs", "2", "--gan-epochs", "0",
                            "--batch-size", "2", "--steps-per-epoch", "2", "--lr-g", "1e-3", "--verbose", "0",
                            "--mixed-precision", "off", "--jit", "off"])


def test_reparam_of_distillation_blocks_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        flow.parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--preset", "imdn",
                         "--reparam"])
    assert exit_info.value.code == 2 and "--reparam applies to the residual presets" in capsys.readouterr().err


def test_reparam_run_exports_plain_generators_and_resumes_with_its_branches(tmp_path, eager_functions):
    data, probe = write_tiny_dataset(tmp_path / "dataset"), rand(1, 8, 8, 3, seed=5)
    whole, killed = OutputsAtEpochEnd(probe), OutputsAtEpochEnd(probe, kill_after=1)
    assert flow.train(reparam_run_args(data, tmp_path / "whole"), extra_callbacks=[whole]) == 0
    run = tmp_path / "whole"
    assert json.loads((run / "config.json").read_text())["generator"]["reparam"] is True
    for name in ("generator.keras", "generator_last.keras", "generator_pretrain.keras"):
        assert conv_kinds(load_generator(run / name)) == {"Conv2D"}, name
    best = json.loads((run / "best.json").read_text())["pretrain"]["epoch"]
    np.testing.assert_allclose(np.asarray(load_generator(run / "generator_last.keras")(probe)), whole.outputs[-1],
                               atol=1e-4)
    np.testing.assert_allclose(np.asarray(load_generator(run / "generator.keras")(probe)), whole.outputs[best - 1],
                               atol=1e-4)
    assert np.abs(whole.outputs[0] - np.asarray(load_generator(SHIPPED_STREAM)(probe))).max() > 1e-2  # it trained
    assert np.abs(whole.outputs[1] - whole.outputs[0]).max() > 1e-2  # and epoch 2 too: the resume below must match it

    # killed after epoch 1's state, then the same command: epoch 2 from the saved branches and optimizer, to the
    # same weights as the run that was never stopped
    with pytest.raises(Killed):
        flow.train(reparam_run_args(data, tmp_path / "killed"), extra_callbacks=[killed])
    resumed = OutputsAtEpochEnd(probe)
    assert flow.train(reparam_run_args(data, tmp_path / "killed"), extra_callbacks=[resumed]) == 0
    assert len(resumed.outputs) == 1  # only epoch 2 was run
    np.testing.assert_allclose(resumed.outputs[0], whole.outputs[1], atol=1e-5)
    np.testing.assert_allclose(np.asarray(load_generator(tmp_path / "killed" / "generator_last.keras")(probe)),
                               whole.outputs[1], atol=1e-4)
