"""Every shipped config loads, and its fields are ones the loop knows."""

import importlib.util
import os

import pytest

from distilbert_jax.train import distill, finetune

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
CASES = [("distill.py", p) for p in ("paper", "minilm_head")] + [("smoke.py", ""), ("squad.py", "v1"), ("squad.py", "v2"), ("ner.py", "iob1"),
         ("ner.py", "iob2"), ("swag.py", "")] + [("custom.py", k) for k in ("text", "pair", "regression", "tokens")] + [
    ("glue.py", t) for t in ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
                             "rte,minilm")]


def load(name):
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, arg", CASES)
def test_config_loads_with_known_fields(name, arg):
    config = load(name).get_config(arg)
    defaults = distill.default_config() if name == "distill.py" else finetune.default_config()
    known = set(defaults.keys()) | {"sweep"}
    assert set(config.keys()) <= known
    assert config.job in ("finetune", "distill", "fit_teacher_head")


def test_unknown_argument_is_refused():
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        load("glue.py").get_config("sst3")
