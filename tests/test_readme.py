"""The Python snippets of the README and of every page in docs/ run as written."""

import glob
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def snippets(page: str) -> list[str]:
    with open(page, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


# A snippet exporting the real MiniLM (an int8 ONNX and a StableHLO artefact) takes a minute or two.
CASES = [pytest.param(os.path.relpath(page, ROOT), i,
                      marks=[pytest.mark.slow] if 'export.export("packaged:' in snippet else [])
         for page in PAGES for i, snippet in enumerate(snippets(page))]


def test_readme_has_snippets():
    assert snippets(PAGES[0])


def test_docs_links_resolve():
    """Every relative link of the README and docs names a file that exists."""
    for page in PAGES:
        with open(page, encoding="utf-8") as f:
            links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", f.read())
        for link in links:
            if "://" in link:
                continue
            target = os.path.normpath(os.path.join(os.path.dirname(page), link))
            assert os.path.exists(target), f"{os.path.relpath(page, ROOT)} links to missing {link}"


@pytest.mark.parametrize("page, index", CASES)
def test_snippet_runs(page, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    path = os.path.join(ROOT, page)
    for earlier in snippets(path)[: index + 1]:  # later snippets may use names from earlier ones
        exec(compile(earlier, path, "exec"), namespace)
