"""Shared test fixtures: sample photos, a tiny DATASET written straight to disk, and ../shared data."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# ../shared sits beside the project's checkout (and beside CI's clean clone); a fresh clone elsewhere lacks it.
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(params=["off", "on"], ids=["cpu-fp32", "cpu-bf16"])
def cpu_bf16(request, monkeypatch) -> bool:
    """Run a test twice, the CPU's native bfloat16 forced off and on (upscale.CPU_BF16_VARIABLE, which --precision
    auto and --mixed-precision auto follow), so any machine checks both paths. True when on. The whole suite can
    be run either way too: SR_CPU_BF16=on (or off) make test."""
    monkeypatch.setenv("SR_CPU_BF16", request.param)
    return request.param == "on"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data (Set5, Set14, clips), or skip when this checkout has none beside it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the benchmark data in {SHARED_DATA}, which a fresh clone does not have")
    return SHARED_DATA


def write_tiny_dataset(root: Path, *, hr_size: int = 32, scale: int = 4, counts=(6, 2, 2), seed: int = 0) -> Path:
    """Write a DATASET folder (the layout create_dataset.py writes) of smooth random pairs, without create_dataset.py."""
    rng = np.random.default_rng(seed)
    lr_size = hr_size // scale
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        for sub in ("hr", "lr"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            hr = Image.fromarray(coarse).resize((hr_size, hr_size), Image.BICUBIC)
            lr = hr.resize((lr_size, lr_size), Image.BICUBIC)
            hr.save(root / split / "hr" / f"img-{i:03d}.png")
            lr.save(root / split / "lr" / f"img-{i:03d}.png")
    params = {"scale": scale, "hr_size": hr_size, "lr_size": lr_size, "mode": "square", "filter": "bicubic",
              "degradations": {}, "seed": seed}
    manifest = {"parameters": params, "counts": dict(zip(("train", "val", "test"), counts, strict=True)),
                "sources": [], "skipped": []}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


@pytest.fixture
def tiny_dataset(tmp_path) -> Path:
    """A small DATASET folder: 32x32 HR, 8x8 LR, x4, 6/2/2 pairs."""
    return write_tiny_dataset(tmp_path / "dataset")


# flow.py train flags of the tests' tiny runs. float32 on every CPU: with native bfloat16, --mixed-precision auto
# would train in bf16, and the numbers the tests compare (across resumes, workers and devices) are float32's
TINY_TRAIN = ["--filters", "8", "--blocks", "1", "--d-filters", "8", "--content-loss", "mse", "--batch-size", "2",
              "--steps-per-epoch", "2", "--verbose", "2", "--mixed-precision", "off"]
TINY_RUN_FLAGS = ["--pretrain-epochs", "2", "--gan-epochs", "1", *TINY_TRAIN, "--grid-weight", "0.5"]


# upscale.py's runtime in the tests that do not test its choice: float32 without XLA. --precision/--compile auto
# time every candidate on a few frames and XLA-compile the fastest for each video or animation: seconds per run
# that the tests of files, frames and errors do not need (the choice has tests of its own, which pass auto).
FIXED_RUNTIME = {"--precision": "fp32", "--compile": "off"}


def with_fixed_runtime(args) -> list[str]:
    """upscale.py's arguments as strings, with FIXED_RUNTIME's flags added where args do not set them."""
    args = [str(a) for a in args]
    return args + [item for flag, value in FIXED_RUNTIME.items() if flag not in args for item in (flag, value)]


# Tests of a run's wiring (resume, kill, checkpoints) need no graph: with TensorFlow's functions run eagerly, a
# run of a few tiny steps skips their tracing, with the same numbers (measured on the 2 shared cores: a tiny run
# in-process 10 s instead of 34, as a process 8.8 s instead of 11.2). Runs of many steps are faster traced. The
# graph path is trained by tiny_run and the mirrored, multi-worker and XLA tests.
EAGER_FLOW = ["-W", "ignore:Even though:UserWarning", "-c",
              "import runtime, sys, runpy, tensorflow as tf\ntf.config.run_functions_eagerly(True)\n"
              "sys.argv[0] = 'flow.py'\nrunpy.run_path('flow.py', run_name='__main__')"]


@pytest.fixture
def eager_functions():
    """TensorFlow's functions (Keras' train and predict steps) run eagerly in this test (see EAGER_FLOW)."""
    import runtime  # noqa: F401  (first: a quiet TensorFlow)

    # isort: split
    import tensorflow as tf

    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def built_once_per_session(tmp_path_factory, name: str, build) -> Path:
    """The folder `name` that build(folder) fills, built once per test session and shared by pytest-xdist's
    workers: the first to take the lock builds it (into a fresh folder, so a failed try leaves nothing half-made
    behind for the next), the others wait and read it. Without xdist it is simply this session's."""
    import fcntl
    import shutil

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    # each xdist worker's base temp folder is inside the session's, which all of them share; the run's uid names it
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    folder = shared / f"{name}-{os.environ.get('PYTEST_XDIST_TESTRUNUID', 'serial')}"
    done = folder / ".built"
    with open(shared / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


def build_tiny_run(root: Path) -> None:
    """Train the tiny run of both phases into root/runs/tiny on root/dataset; what it printed in root/printed.txt."""
    import contextlib
    import io

    import flow

    dataset, run = write_tiny_dataset(root / "dataset"), root / "runs" / "tiny"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = flow.main(["train", "--data", str(dataset), "--out", str(run), *TINY_RUN_FLAGS])
    assert status == 0, printed.getvalue()[-3000:]
    (root / "printed.txt").write_text(printed.getvalue())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(dataset, run folder, what training printed): one finished tiny run of both phases (TINY_RUN_FLAGS: 2
    pretraining epochs, 1 GAN epoch), trained once a session, for all of xdist's workers, for the tests that only
    read a run. Do not change it; a test that trains further or breaks a run makes its own."""
    root = built_once_per_session(tmp_path_factory, "tiny-run", build_tiny_run)
    return root / "dataset", root / "runs" / "tiny", (root / "printed.txt").read_text()


@pytest.fixture
def png_and_tfrecord_datasets(tmp_path):
    """The same pairs as a PNG DATASET and as a tfrecord DATASET of several shards (32 px HR, x4)."""
    import create_dataset  # imported here: most tests need no dataset writer
    import resizer

    rng = np.random.default_rng(5)
    photos = tmp_path / "photos"
    for i in range(6):
        smooth = np.kron(rng.integers(0, 256, (12, 12, 3)), np.ones((6, 6, 1))).astype(np.uint8)
        resizer.save_image(photos / f"p{i}.png", smooth)
    kwargs = {"mode": "patches", "patches": 4, "hr_size": 32, "min_variance": 0.0, "split": (0.5, 0.25, 0.25),
              "workers": 1, "progress": False}
    create_dataset.build_dataset([photos], tmp_path / "png", **kwargs)
    create_dataset.build_dataset([photos], tmp_path / "tfr", **kwargs, format="tfrecord", shard_mb=0.005)
    return tmp_path / "png", tmp_path / "tfr"


def assert_committed_without_outputs(notebook: Path):
    """A committed notebook has no outputs or execution counts, and a `parameters` cell to inject values into."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)
    return nb


# how TensorFlow's C++ start-up lines begin ("I0000 00:00:...", "E0000", "WARNING: All log messages before absl")
TENSORFLOW_NOISE = ("I0000", "W0000", "E0000", "WARNING: All log messages before absl", "To enable the following")


def executed_outputs(nb):
    """(stream text, PNG display outputs) of an executed notebook, after asserting no cell raised and no
    TensorFlow start-up line (absl, oneDNN, CUDA probing) reached a cell's output."""
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert not [line for line in text.splitlines() if line.startswith(TENSORFLOW_NOISE)], text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    return text, images


def png_header_only(width: int, height: int, *, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG that claims width x height pixels but holds almost nothing: a decompression bomb's shape."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
