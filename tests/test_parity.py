"""Same checkpoint, same inputs, same outputs as transformers (PyTorch), from committed fixtures."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import hf, losses
from conftest import FIXTURES, load_reference, relative_error

TOL = 1e-5
MODEL_FIXTURES = sorted(os.listdir(os.path.join(FIXTURES, "models")))


def run(model, params, ref):
    inputs = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in ref.items() if k.startswith("input/")}
    return model.apply({"params": params}, **inputs, output_hidden_states=True,
                       output_attentions=True)


def reference_outputs(ref):
    """Our output field name -> reference array, for every tensor transformers produced."""
    fields = {k[len("output/"):]: v for k, v in ref.items() if k.startswith("output/")}
    if "prediction_logits" in fields:  # BertForPreTraining's MLM logits are our MaskedLM logits
        fields["logits"] = fields.pop("prediction_logits")
    fields.pop("loss", None)
    return fields


def our_output(out, name):
    if "/" in name:
        field, index = name.split("/")
        return getattr(out, field)[int(index)]
    return getattr(out, name)


@pytest.mark.parametrize("name", MODEL_FIXTURES)
def test_outputs_match_transformers(name):
    directory = os.path.join(FIXTURES, "models", name)
    ref = load_reference(os.path.join(directory, "reference.npz"))
    model, params = dj.from_pretrained(directory)
    out = run(model, params, ref)
    expected = reference_outputs(ref)
    assert expected, "fixture has no outputs"
    errors = {k: relative_error(our_output(out, k), v) for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOL, f"{name}: {worst} relative error {errors[worst]:.2e}"


@pytest.mark.parametrize("name", [n for n in MODEL_FIXTURES
                                  if "output/loss" in np.load(os.path.join(
                                      FIXTURES, "models", n, "reference.npz")).files])
def test_losses_match_transformers(name):
    directory = os.path.join(FIXTURES, "models", name)
    ref = load_reference(os.path.join(directory, "reference.npz"))
    model, params = dj.from_pretrained(directory)
    out = run(model, params, ref)
    labels = {k.split("/", 1)[1]: jnp.asarray(v) for k, v in ref.items() if k.startswith("label/")}
    head = next(h for h, cls in hf.MODEL_CLASSES[model.config.model_type].items() if cls is type(model))
    loss = losses.head_loss(head, out, labels, model.config)
    assert relative_error(loss, ref["output/loss"]) <= TOL


def test_real_minilm_matches_transformers(minilm_dir):
    ref = load_reference(os.path.join(FIXTURES, "minilm_reference.npz"))
    model, params = dj.from_pretrained(minilm_dir)
    assert isinstance(model, dj.BertModel)
    out = model.apply({"params": params}, jnp.asarray(ref["input/input_ids"]),
                      attention_mask=jnp.asarray(ref["input/attention_mask"]),
                      output_hidden_states=True)
    assert relative_error(out.last_hidden_state, ref["output/last_hidden_state"]) <= TOL
    assert relative_error(out.pooler_output, ref["output/pooler_output"]) <= TOL
    assert relative_error(out.hidden_states[3], ref["output/hidden_states/3"]) <= TOL
