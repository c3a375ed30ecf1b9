"""The notebooks in colabs/ run top to bottom with their default (small) settings, each in a fresh
kernel started from a scratch directory (not the repository root), and are committed without outputs.

Each notebook's install cell skips its installs when the packages are importable, so nothing is
downloaded here; the kernel imports this checkout's code through PYTHONPATH.
"""

import glob
import json
import os
import time

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
EXPECTED = {"quickstart.ipynb", "finetune_and_predict.ipynb", "distil_and_compare.ipynb",
            "shard_over_a_mesh.ipynb"}
CELL_TIMEOUT_S = 600  # one cell; the whole notebook takes a few minutes on a 2-core CPU


def test_the_four_notebooks_are_there():
    assert EXPECTED <= {os.path.basename(p) for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_without_outputs(path):
    with open(path, encoding="utf-8") as f:
        notebook = json.load(f)
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"cell {index} of {path} has outputs"
            assert cell.get("execution_count") is None, f"cell {index} of {path} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: this checkout's code, and temporary files under tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # a notebook that wants virtual devices sets its own
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    print(f"{os.path.basename(path)} ran in {time.perf_counter() - started:.0f} s")
