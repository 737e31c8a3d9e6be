"""dataset_preparation.ipynb runs top to bottom (nbclient, this venv's kernel) in a temporary working folder."""

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "dataset_preparation.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    assert any("parameters" in c.metadata.get("tags", []) for c in code)


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.perf_counter() - started < 60

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"at {sys.executable}" in text, "the notebook ran on another Python than this venv's"
    assert "fetched 8" in text and "reused from an earlier run" in text
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 4  # photos, split counts, LR/HR grid, histograms

    dataset = tmp_path / "data" / "walkthrough" / "dataset"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["parameters"]["mode"] == "patches" and all(manifest["counts"].values())
    assert {s["provenance"]["source"] for s in manifest["sources"]} == {"local"}
    messy = json.loads((tmp_path / "data" / "walkthrough" / "messy-dataset" / "manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in messy["skipped"]}
    assert set(reasons) == {"empty.jpg", "notes.png", "cut-short.jpg", "tiny.png"}
