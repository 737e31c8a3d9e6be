"""What the machine can do, measured in the same run as a benchmark, and what a generator asks of it.

    from peak import measure_peak, generator_flops
    peak = measure_peak()                       # {"fp32": GFLOP/s, "bf16": GFLOP/s, ...}
    flops = generator_flops(model, 360, 640)    # FLOPs of one forward pass over a 640x360 LR frame

Absolute speeds do not compare across machines (or across sessions on a shared one); a share of the peak
measured minutes apart on the same cores does. The peak is the better of a 2048x2048 matmul and a 3x3
64->64 convolution over a 640x360 map, per precision, median of a few runs after a warm-up.
"""

import statistics
import time

import numpy as np

MATMUL_SIDE = 2048
CONV_SHAPE = (1, 360, 640, 64)  # a 3x3 64->64 convolution over a 640x360 feature map
RUNS = 5


def median_seconds(fn, runs=RUNS):
    """Median wall time of fn() over `runs` calls, after one warm-up call (kernels chosen or compiled, memory
    allocated)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ops():
    """keras.ops, loaded on first use (runtime first: Keras starts quietly), so importing peak costs nothing."""
    import runtime  # noqa: F401

    # isort: split
    from keras import ops

    return ops


def _matmul_gflops(dtype):
    ops = _ops()
    a = ops.convert_to_tensor(np.random.default_rng(0).standard_normal((MATMUL_SIDE,) * 2), dtype=dtype)
    seconds = median_seconds(lambda: ops.convert_to_numpy(ops.matmul(a, a)))
    return 2 * MATMUL_SIDE**3 / seconds / 1e9


def _conv_gflops(dtype):
    ops = _ops()
    rng = np.random.default_rng(0)
    x = ops.convert_to_tensor(rng.standard_normal(CONV_SHAPE), dtype=dtype)
    k = ops.convert_to_tensor(rng.standard_normal((3, 3, CONV_SHAPE[3], CONV_SHAPE[3])) * 0.05, dtype=dtype)
    seconds = median_seconds(lambda: ops.convert_to_numpy(ops.conv(x, k, padding="same")))
    n, h, w, c = CONV_SHAPE
    return 2 * n * h * w * 9 * c * c / seconds / 1e9


def measure_peak(precisions=("fp32", "bf16")):
    """{precision: GFLOP/s} (the better of matmul and conv) and {"precision matmul"/"precision conv": GFLOP/s}."""
    dtypes = {"fp32": "float32", "bf16": "bfloat16"}
    result = {}
    for precision in precisions:
        matmul, conv = _matmul_gflops(dtypes[precision]), _conv_gflops(dtypes[precision])
        result.update({precision: max(matmul, conv), f"{precision} matmul": matmul, f"{precision} conv": conv})
    return result


def describe_peak(peak):
    """One line: each precision's peak and where it came from."""
    return "; ".join(f"{p} {peak[p]:.0f} GFLOP/s (matmul {peak[p + ' matmul']:.0f}, conv {peak[p + ' conv']:.0f})"
                     for p in ("fp32", "bf16") if p in peak)


def _conv_of(layer):
    """The Conv2D a layer is (or wraps, as keras.layers.SpectralNormalization does); None for other layers."""
    import keras

    inner = getattr(layer, "layer", None)
    return layer if isinstance(layer, keras.layers.Conv2D) else inner if isinstance(inner, keras.layers.Conv2D) else None


def generator_flops(model, height, width):
    """FLOPs (2 per multiply-add) of the convolutions in one forward pass over a height x width input image:
    every Conv2D (spectral-normalised ones too) at its own output resolution, and the fixed-kernel convolutions of
    an interpolation skip. Element-wise work (activations, adds, pixel shuffles) is left out: it is memory-bound
    and small. Any size-agnostic convolutional model will do (discriminators, the VGG of a content loss)."""
    import keras

    from generator import InterpolationUpsample, LumaUpsample  # imports runtime, then Keras

    side = model.input.shape[1:3]  # a model tied to one input size is probed at that size
    side = (8, 8) if None in side else tuple(side)
    probe = np.zeros((1, *side, 3), np.float32)  # output sizes relative to the input's, found once
    convs = [layer for layer in model.layers if _conv_of(layer) is not None]
    outputs = keras.Model(model.input, [layer.output for layer in convs])(probe)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    macs = 0.0
    for layer, out in zip(convs, outputs, strict=True):
        area = height * width * (out.shape[1] / side[0]) * (out.shape[2] / side[1])
        kh, kw, cin, cout = _conv_of(layer).kernel.shape
        macs += area * kh * kw * cin * cout
    for layer in model.layers:
        if isinstance(layer, InterpolationUpsample):
            r = layer.scale
            macs += height * width * 25 * (3 * 3 * r * r + r * r)  # the weighted and the normalising convolution
        if isinstance(layer, LumaUpsample):
            r = layer.scale
            macs += height * width * 25 * (3 * r * r + r * r)  # depthwise: each channel its own taps
    return 2 * macs
