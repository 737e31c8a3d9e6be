"""Every command line shows the program's own lines only: no TensorFlow/absl C++ start-up lines, whatever the
caller's environment (TF_CPP_MIN_LOG_LEVEL unset), and --help answers without loading Keras."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TENSORFLOW_NOISE
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def run_clean(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def noise(done):
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(TENSORFLOW_NOISE)]


BENCHMARKS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "benchmarks").glob("bench_*.py"))


@pytest.mark.parametrize("script", ["flow.py", "upscale.py", "create_dataset.py", "fetcher.py", *BENCHMARKS])
def test_help_is_quiet_and_loads_no_keras(script):
    code = (f"import runpy, sys\nsys.argv = [{script!r}, '--help']\nsys.path.insert(0, 'benchmarks')\n"
            f"try:\n    runpy.run_path({script!r}, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            "print('loaded:', sorted(m for m in ('keras', 'tensorflow', 'jax', 'torch') if m in sys.modules))\n"
            "sys.exit(code)\n")
    done = run_clean("-c", code)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and "loaded: []" in done.stdout and not noise(done)


@pytest.mark.slow
def test_upscaling_an_image_prints_only_the_summary(tmp_path):
    """The command a user runs first: upscale.py loads Keras late (--help without it), then quietly."""
    image = tmp_path / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(image)
    done = run_clean("upscale.py", str(image), "-o", str(tmp_path / "small_x4.png"), "--model", "stream")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "small_x4.png").exists() and not noise(done), done.stdout + done.stderr


def test_keras_work_prints_no_tensorflow_start_up_lines(tmp_path):
    """Importing the models, building, saving, loading and predicting: nothing but the program's own line."""
    code = ("import numpy as np\nfrom generator import build_generator, load_generator\n"
            f"m = build_generator(4, filters=8, blocks=1)\nm.save({str(tmp_path / 'g.keras')!r})\n"
            f"m = load_generator({str(tmp_path / 'g.keras')!r})\n"
            "print('shape', m.predict(np.zeros((1, 8, 8, 3), np.float32), verbose=0).shape)\n")
    done = run_clean("-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "shape (1, 32, 32, 3)" and not noise(done), done.stdout + done.stderr
