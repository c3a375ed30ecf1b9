"""The README's Python snippets run as written."""

import os
import re

import pytest

README = os.path.join(os.path.dirname(__file__), "..", "README.md")
with open(README, encoding="utf-8") as f:
    SNIPPETS = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_has_snippets():
    assert SNIPPETS


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for earlier in SNIPPETS[: index + 1]:  # later snippets may use names from earlier ones
        exec(compile(earlier, README, "exec"), namespace)
