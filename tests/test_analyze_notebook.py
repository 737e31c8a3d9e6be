"""analyze.ipynb runs top to bottom on a tiny run of both phases, with the run path injected."""

import json
from pathlib import Path

import nbformat
import pytest
from conftest import assert_committed_without_outputs, executed_outputs
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "analyze.ipynb"


def test_notebook_is_committed_without_outputs():
    assert_committed_without_outputs(NOTEBOOK)


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_run(tiny_run):
    run = tiny_run[1]  # 2 pretraining epochs, 1 GAN epoch (conftest)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"RUN = {json.dumps(str(run))}"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    text, images = executed_outputs(nb)
    assert "best epoch 3 (gan)" in text and "test split: generator" in text
    assert len(images) == 6  # losses, PSNR/SSIM, three sample grids, test SSIM distribution
