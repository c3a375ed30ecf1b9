"""The notebooks in colabs/ run top to bottom (shell and magic lines skipped, training shortened)."""

import glob
import json
import os

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
NOTEBOOKS = sorted(glob.glob(os.path.join(ROOT, "colabs", "*.ipynb")))
QUICK = {"config.max_steps = 0": "config.max_steps = 3; config.limit_eval_examples = 64"}


def code_of(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        cells = json.load(f)["cells"]
    lines = [line for cell in cells if cell["cell_type"] == "code"
             for line in "".join(cell["source"]).splitlines()
             if not line.lstrip().startswith(("%", "!"))]
    code = "\n".join(lines)
    for long_run, short_run in QUICK.items():
        code = code.replace(long_run, short_run)
    return code


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # notebooks run from the repository root
    code = code_of(path)
    assert "config.max_steps = 3" in code or "train_and_evaluate" not in code
    exec(compile(code, path, "exec"), {})
