"""Live check of the pipeline fixtures, run when the `reference` extra is installed: the script's own
functions rebuild every tiny checkpoint (the same tensors as committed) and re-run transformers'
pipelines, which must return what tests/fixtures/pipelines/*.json holds."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import safetensors.numpy

from conftest import FIXTURES
from test_pipelines import CASES, PIPELINE_FIXTURES, differences, load_case

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                       or importlib.util.find_spec("torch") is None,
                       reason="needs the reference extra: pip install -e '.[reference]'"),
]
sys.path.insert(0, FIXTURES)
TOL = 1e-5  # transformers against itself: float32 rounding that varies with threads and machines


@pytest.fixture(scope="module")
def script():
    import make_pipeline_reference  # the script that writes the committed fixtures
    return make_pipeline_reference


def test_checkpoints_are_what_the_script_builds(script, tmp_path):
    for name in script.CHECKPOINTS:
        script.checkpoint(name, tmp_path / name)
        fresh = safetensors.numpy.load_file(tmp_path / name / "model.safetensors")
        committed = safetensors.numpy.load_file(os.path.join(PIPELINE_FIXTURES, name, "model.safetensors"))
        assert sorted(fresh) == sorted(committed), name
        for key in fresh:
            np.testing.assert_allclose(fresh[key], committed[key], atol=1e-6, err_msg=f"{name}: {key}")
        for file in ("config.json", "vocab.txt", "tokenizer_config.json"):
            with open(tmp_path / name / file) as a, open(os.path.join(PIPELINE_FIXTURES, name, file)) as b:
                assert json.loads(a.read()) == json.loads(b.read()) if file.endswith(".json") \
                    else a.read() == b.read(), f"{name}/{file}"


@pytest.mark.parametrize("case", CASES)
def test_fixture_is_what_transformers_computes_now(case, script):
    committed = load_case(case)
    if case == "sentence_embeddings":
        fresh = script.sentence_embeddings(script.minilm_dir())
    else:
        fresh = script.run_case(case, script.model_path(committed["model"]))
    fresh = json.loads(json.dumps(fresh))  # tuples -> lists, as in the committed file
    assert [c["inputs"] for c in fresh["calls"]] == [c["inputs"] for c in committed["calls"]]
    assert [c["kwargs"] for c in fresh["calls"]] == [c["kwargs"] for c in committed["calls"]]
    for new, old in zip(fresh["calls"], committed["calls"]):
        abs_diff, _ = differences(new["output"], old["output"], f"{case} {old['kwargs']}")
        assert abs_diff <= TOL, (case, old["kwargs"], abs_diff)
