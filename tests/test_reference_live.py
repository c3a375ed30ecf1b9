"""Live parity against transformers (PyTorch), run when the `reference` extra is installed.

Builds fresh random checkpoints with transformers, loads them here, and compares every output; saves
our params with `save_pretrained` and checks that transformers loads them to the same outputs.
"""

import importlib.util
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from conftest import FIXTURES, compared_after_training, relative_error

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(importlib.util.find_spec("transformers") is None
                       or importlib.util.find_spec("torch") is None,
                       reason="needs the reference extra: pip install -e '.[reference]'"),
]

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fixtures"))
TOL = 1e-5


@pytest.fixture(scope="module")
def make_reference():
    import make_reference  # the same script that writes the committed fixtures
    return make_reference


def _torch_outputs(model, inputs):
    import torch
    with torch.no_grad():
        out = model(**{k: torch.as_tensor(v) for k, v in inputs.items()}, output_hidden_states=True)
    fields = {f: getattr(out, f).numpy() for f in ("last_hidden_state", "logits", "start_logits",
                                                   "end_logits", "prediction_logits")
              if getattr(out, f, None) is not None}
    if "prediction_logits" in fields:
        fields["logits"] = fields.pop("prediction_logits")
    fields.update({f"hidden_states/{i}": h.numpy() for i, h in enumerate(out.hidden_states)})
    return fields


def _ours(model, params, inputs):
    out = model.apply({"params": params}, **{k: jnp.asarray(v) for k, v in inputs.items()},
                      output_hidden_states=True)
    return lambda name: (out.hidden_states[int(name.split("/")[1])] if "/" in name
                         else getattr(out, name))


@pytest.mark.parametrize("index, name",
                         list(enumerate(sorted(os.listdir(os.path.join(FIXTURES, "models"))))))
def test_transformers_checkpoint_loads_here_and_ours_loads_there(index, name, make_reference, tmp_path):
    import torch
    import transformers
    class_name, overrides, kind = make_reference.MODELS[name]
    family = "bert" if class_name.startswith("Bert") else "distilbert"
    config_cls = transformers.BertConfig if family == "bert" else transformers.DistilBertConfig
    base = make_reference.TINY_BERT if family == "bert" else make_reference.TINY_DISTILBERT
    torch.manual_seed(index)
    hf_model = getattr(transformers, class_name)(config_cls(**base, **overrides)).eval()
    make_reference.perturb(hf_model, torch.Generator().manual_seed(index))
    hf_model.save_pretrained(tmp_path / "hf")
    inputs, _ = make_reference.make_inputs(np.random.default_rng(index), family, kind,
                                           hf_model.config.num_labels)
    expected = _torch_outputs(hf_model, inputs)

    model, params = dj.from_pretrained(tmp_path / "hf")
    ours = _ours(model, params, inputs)
    for field, value in expected.items():
        assert relative_error(ours(field), value) <= TOL, f"{name}: {field}"

    dj.save_pretrained(tmp_path / "ours", model, params)
    hf_class = type(model).__name__  # transformers' class of the same name
    reloaded = getattr(transformers, hf_class).from_pretrained(tmp_path / "ours").eval()
    again = _torch_outputs(reloaded, inputs)
    for field, value in again.items():
        assert relative_error(ours(field), value) <= TOL, f"{name} reloaded by transformers: {field}"


def test_tokenizer_on_more_text(minilm_dir):
    import transformers
    theirs = transformers.DistilBertTokenizerFast.from_pretrained(minilm_dir)
    ours = dj.Tokenizer.from_pretrained(minilm_dir)
    texts = ["Ünïcödé  spaces\u00a0and\u2003wide", "x" * 300, "a " * 600, "¿Qué? ¡Sí!", "Mr. O'Neil's"]
    for kwargs in ({}, {"truncation": True, "max_length": 64, "stride": 16,
                        "return_overflowing_tokens": True, "padding": True,
                        "return_offsets_mapping": True}):
        a = theirs(texts, **kwargs)
        b = ours(texts, **kwargs)
        for key in a:
            assert [list(map(list, r)) if key == "offset_mapping" else r for r in a[key]] == \
                   [list(map(list, r)) if key == "offset_mapping" else r for r in b[key]], key


@pytest.mark.parametrize("index, name", list(enumerate(sorted(
    f.removesuffix(".npz") for f in os.listdir(os.path.join(FIXTURES, "training"))))))
def test_training_fixture_is_what_transformers_does_now(index, name, make_reference, tmp_path):
    """The committed fine-tuning trajectories (which test_parity holds our updates to) are what the
    installed transformers and torch compute today."""
    make_reference.make_training_fixture(name, out_dir=str(tmp_path))
    with np.load(os.path.join(FIXTURES, "training", f"{name}.npz")) as committed, \
            np.load(tmp_path / f"{name}.npz") as fresh:
        assert set(committed.files) == set(fresh.files)
        params = {k.split("/", 1)[1] for k in committed.files if k.startswith("params/")}
        compared = set(compared_after_training(dict.fromkeys(params)))
        for key in committed.files:
            if key == "losses" or (key.startswith("params/") and key.split("/", 1)[1] in compared):
                assert relative_error(fresh[key], committed[key]) <= TOL, key
            elif not key.startswith("params/"):
                np.testing.assert_array_equal(fresh[key], committed[key], err_msg=key)
