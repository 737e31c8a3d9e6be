"""dataset_preparation.ipynb runs top to bottom (nbclient, this venv's kernel) in a temporary working folder."""

import json
import os
import sys
import time
from pathlib import Path

import nbformat
import pytest
from conftest import assert_committed_without_outputs, executed_outputs
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "dataset_preparation.ipynb"


def test_notebook_is_committed_without_outputs():
    nb = assert_committed_without_outputs(NOTEBOOK)
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert time.perf_counter() - started < 60

    text, images = executed_outputs(nb)
    assert f"at {sys.executable}" in text, "the notebook ran on another Python than this venv's"
    assert "fetched 8" in text and "reused from an earlier run" in text
    assert len(images) == 4  # photos, split counts, LR/HR grid, histograms

    dataset = tmp_path / "data" / "walkthrough" / "dataset"
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["parameters"]["mode"] == "patches" and all(manifest["counts"].values())
    assert {s["provenance"]["source"] for s in manifest["sources"]} == {"local"}
    messy = json.loads((tmp_path / "data" / "walkthrough" / "messy-dataset" / "manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in messy["skipped"]}
    assert set(reasons) == {"empty.jpg", "notes.png", "cut-short.jpg", "tiny.png"}
