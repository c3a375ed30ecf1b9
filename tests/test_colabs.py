"""The notebooks in colabs/ run top to bottom, each in a fresh kernel started from a scratch directory
(not the repository root), and are committed without outputs. Under test a cell placed after a
notebook's settings cell (as papermill injects parameters) cuts its step counts further: every cell
still runs, in less time.

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
SETTINGS_CELL = "# ---- Settings"
TEST_SETTINGS = {  # what the injected cell sets, per notebook
    "distil_and_compare.ipynb": "HEAD_STEPS, DISTILL_STEPS, FINETUNE_STEPS, EVAL_EXAMPLES = 2, 4, 6, 48",
    "finetune_and_predict.ipynb": "SST2_STEPS, EVAL_EXAMPLES, EVAL_EVERY, CSV_STEPS = 6, 48, 3, 4",
}


def with_test_settings(notebook, name: str, nbformat):
    """The notebook with its test settings as a new cell right after its settings cell."""
    if name not in TEST_SETTINGS:
        return notebook
    index = next(i for i, cell in enumerate(notebook.cells)
                 if cell.cell_type == "code" and cell.source.startswith(SETTINGS_CELL))
    notebook.cells.insert(index + 1, nbformat.v4.new_code_cell(
        f"# injected by tests/test_colabs.py\n{TEST_SETTINGS[name]}"))
    return notebook


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


@pytest.mark.slow  # minutes each: the real MiniLM, trained and compared
@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits this environment: this checkout's code, and temporary files under tmp_path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XLA_FLAGS", raising=False)  # a notebook that wants virtual devices sets its own
    notebook = with_test_settings(nbformat.read(path, as_version=4), os.path.basename(path), nbformat)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    started = time.perf_counter()
    client.execute()
    print(f"{os.path.basename(path)} ran in {time.perf_counter() - started:.0f} s")
