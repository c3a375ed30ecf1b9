"""Same checkpoint, same inputs, same outputs as transformers (PyTorch), from committed fixtures."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import hf, losses, models, sharding
from distilbert_jax.train import finetune
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import make_step
from conftest import FIXTURES, compared_after_training, load_reference, relative_error

TOL = 1e-5
MODEL_FIXTURES = sorted(os.listdir(os.path.join(FIXTURES, "models")))
TRAINING_FIXTURES = sorted(f.removesuffix(".npz") for f in os.listdir(os.path.join(FIXTURES, "training")))


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
    head = next(h for h, cls in models.MODEL_CLASSES[model.config.model_type].items()
                if cls is type(model))
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


@pytest.mark.parametrize("name", TRAINING_FIXTURES)
def test_fine_tuning_updates_match_transformers(name):
    """Our jitted update (head loss, micro-batch accumulation, clipping, AdamW with HF's no-decay
    groups, warmup and linear decay) repeats transformers' on the same batches, dropout off:
    the loss of every update and every parameter after the last."""
    ref = load_reference(os.path.join(FIXTURES, "training", f"{name}.npz"))
    recipe = {k.split("/", 1)[1]: ref[k].item() for k in ref if k.startswith("recipe/")}
    directory = os.path.join(FIXTURES, "models", name)
    saved, architectures = hf.read_config(directory)
    head = hf.head_from_architectures(saved.model_type, architectures)
    no_dropout = {field: 0.0 for field in saved.dropout_fields()}
    model, params = hf.from_pretrained(directory, head=head, **no_dropout)
    layout = sharding.Layout(sharding.make_mesh("dp", jax.devices()[:1]), sharding.RULES)
    tx = train_state.adamw(
        train_state.linear_schedule(recipe["lr"], recipe["updates"], recipe["warmup"]),
        b1=recipe["b1"], b2=recipe["b2"], eps=recipe["eps"], weight_decay=recipe["weight_decay"],
        max_grad_norm=recipe["max_grad_norm"])
    state, shardings = train_state.create(model, params, tx, 0, layout)
    step = make_step(finetune.loss_fn(model, head), tx, layout, shardings, int(ref["accum"]))
    update_losses = []
    for update in range(recipe["updates"]):
        arrays = {k.split("/", 1)[1]: jnp.asarray(v[update]) for k, v in ref.items()
                  if k.startswith("batch/")}
        inputs = {k: v for k, v in arrays.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        batch = {"inputs": inputs, "targets": {k: v for k, v in arrays.items() if k not in inputs}}
        state, metrics = step(state, None, batch)
        update_losses.append(float(metrics["train/loss"]))
    np.testing.assert_allclose(update_losses, ref["losses"], rtol=TOL)
    ours = hf.to_pytorch_state_dict(state.params)
    reference = {k.split("/", 1)[1]: v for k, v in ref.items() if k.startswith("params/")}
    assert set(ours) == set(reference)
    errors = {k: relative_error(ours[k], reference[k]) for k in compared_after_training(reference)}
    assert max(errors.values()) <= TOL, sorted(errors.items(), key=lambda kv: -kv[1])[:3]
