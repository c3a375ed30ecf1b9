"""Every shipped config loads, and its fields are ones the loop knows."""

import importlib.util
import os

import pytest

from distilbert_jax import configs
from distilbert_jax.train import distill, finetune

CONFIGS = configs.HERE
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
    known = set(defaults.keys())
    assert set(config.keys()) <= known
    assert config.job in ("finetune", "distill", "fit_teacher_head")


def test_unknown_argument_is_refused():
    with pytest.raises(ValueError, match="Unknown GLUE task"):
        load("glue.py").get_config("sst3")


def test_every_packaged_config_is_loaded_here_or_by_the_miniature_tests():
    assert {name[:-3] for name, _ in CASES} | {"miniature"} == set(configs.packaged())


def test_documented_config_paths_name_the_packaged_files_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here, as after a plain pip install
    glue = os.path.join(CONFIGS, "glue.py")
    assert configs.resolve("configs/glue.py:rte") == glue + ":rte"
    assert configs.resolve("configs/smoke.py") == os.path.join(CONFIGS, "smoke.py")
    # Anything else is left for the loader to report: an unknown name, another folder, the base.
    for spec in ("configs/nothere.py", "elsewhere/glue.py:rte", "configs/__init__.py",
                 "configs/default.py", "glue.py:rte"):
        assert configs.resolve(spec) == spec
    # A file of that path where the command runs (the user's own copy) comes first.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "glue.py").write_text("")
    assert configs.resolve("configs/glue.py:rte") == "configs/glue.py:rte"


def test_the_top_level_configs_folder_is_the_installed_package():
    checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    assert os.path.samefile(CONFIGS, checkout)


def test_every_sub_package_is_installed():
    # pyproject.toml lists the packages (configs/ is mapped into distilbert_jax): none left out.
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = {os.path.relpath(d, root).replace(os.sep, ".") for d, _, files in
             os.walk(os.path.join(root, "distilbert_jax")) if "__init__.py" in files}
    assert found | {"distilbert_jax.configs"} == listed


def test_trainers_define_no_fields():
    from distilbert_jax.configs import default
    assert finetune.default_config is default.finetune and distill.default_config is default.distill
    shared = set(default.get_config().keys())
    assert shared <= set(default.finetune().keys()) and shared <= set(default.distill().keys())


def test_sweep_grid_lives_in_the_config_file_not_in_the_runs_config():
    module = load("glue.py")
    assert module.SWEEP == {"lr": (2e-5, 3e-5, 5e-5), "seed": (42, 43, 44, 45, 46), "stacked": False}
    assert "sweep" not in module.get_config("rte")
