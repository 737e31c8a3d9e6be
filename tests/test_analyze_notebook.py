"""analyze.ipynb runs top to bottom on a tiny run of both phases, with the run path injected."""

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import flow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "analyze.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_run(tiny_dataset, tmp_path):
    run = tmp_path / "runs" / "tiny"
    assert flow.main(["train", "--data", str(tiny_dataset), "--out", str(run), "--pretrain-epochs", "2",
                      "--gan-epochs", "1", "--filters", "8", "--blocks", "1", "--d-filters", "8",
                      "--content-loss", "mse", "--batch-size", "2", "--steps-per-epoch", "2", "--verbose", "0",
                      "--jit", "off"]) == 0

    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = f"RUN = {json.dumps(str(run))}"
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "best epoch 3 (gan)" in text and "test split: generator" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 6  # losses, PSNR/SSIM, three sample grids, test SSIM distribution
