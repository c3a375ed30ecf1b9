"""The one training step every job uses (train/step.py), checked on what the maths fixes."""

import jax
import numpy as np

import distilbert_jax as dj
from distilbert_jax import sharding
from distilbert_jax.train import finetune, loop
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import make_step
from conftest import tiny_config, write_sst2


def tiny_setup(tiny_model, accum):
    """A tiny classifier without dropout, its state on one device, and the one step."""
    model, params = dj.from_pretrained(tiny_model, head="sequence_classification", num_labels=2,
                                       dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    layout = sharding.Layout(sharding.make_mesh("dp", jax.devices()[:1]), sharding.RULES)
    tx = train_state.adamw(train_state.linear_schedule(1e-3, 10, 0), b1=0.9, b2=0.999, eps=1e-8,
                           weight_decay=0.01, max_grad_norm=1.0)
    state, shardings = train_state.create(model, params, tx, 0, layout)
    step = make_step(finetune.loss_fn(model, "sequence_classification"), tx, layout, shardings, accum,
                     learning_rate=train_state.linear_schedule(1e-3, 10, 0))
    return state, step, layout


def batch(rows=8, length=12, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 99, (rows, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:, length - 3:] = 0  # some padding: it must not count
    return {"inputs": {"input_ids": ids, "attention_mask": mask},
            "targets": {"labels": rng.integers(0, 2, (rows,)).astype(np.int32)}}


def test_accumulating_two_halves_equals_one_whole_batch(tiny_model):
    """Two micro-batches of 4 average to the mean loss and gradient of the batch of 8."""
    whole, step1, layout = tiny_setup(tiny_model, accum=1)
    halves, step2, _ = tiny_setup(tiny_model, accum=2)
    for seed in range(3):
        b = layout.put_batch(batch(seed=seed))
        whole, m1 = step1(whole, None, b)
        halves, m2 = step2(halves, None, b)
        # (Parameters are not compared: Adam scales float noise in near-zero gradients, such as
        # the attention key bias's, into lr-sized steps; see conftest.compared_after_training.)
        for name in ("train/loss", "train/grad_norm", "train/param_norm", "train/lr"):
            np.testing.assert_allclose(m2[name], m1[name], rtol=1e-5, err_msg=name)
        assert int(m1["batch/tokens"]) == 8 * 9
    assert int(whole.step) == int(halves.step) == 3


def test_the_step_donates_the_state_and_keeps_its_shardings(tiny_model):
    state, step, layout = tiny_setup(tiny_model, accum=1)
    before = jax.tree.map(lambda x: x.sharding, state)
    old_params = state.params
    state, _ = step(state, None, layout.put_batch(batch()))
    assert jax.tree.map(lambda x: x.sharding, state) == before
    assert all(x.is_deleted() for x in jax.tree.leaves(old_params))  # donated: no second copy


def test_the_hot_loop_makes_no_hidden_host_device_transfers(tiny_model, tmp_path, monkeypatch):
    """The real fine-tuning loop (steps, metric fetches, evaluation, checkpoints) under
    jax.transfer_guard("disallow"): every transfer in it must be an explicit one."""
    real_run = loop.run

    def guarded(*args, **kwargs):
        with jax.transfer_guard("disallow"):
            return real_run(*args, **kwargs)
    monkeypatch.setattr(loop, "run", guarded)
    data = write_sst2(tmp_path / "SST-2")
    results = finetune.train_and_evaluate(
        tiny_config(tiny_model, data, "sst2", max_steps=4, log_every=1, eval_every=2, save_model=False),
        str(tmp_path / "run"))
    assert results["steps_this_run"] == 4


def _dot_precisions(hlo: str) -> set[str]:
    """The precision of every matmul (dot_general) in lowered StableHLO text."""
    return {line.split("precision = [")[1].split("]")[0] if "precision = [" in line else "unset"
            for line in hlo.splitlines() if "dot_general" in line}


def test_float32_training_is_true_float32_on_every_backend(tiny_model):
    """Forward, backward and the accumulation all ask XLA for HIGHEST: a GPU may not run float32
    matmuls as TF32 unless the config opts in (matmul_precision="high"). CPUs honour it trivially,
    so the lowered program is what is checked here."""
    state, step, layout = tiny_setup(tiny_model, accum=2)
    lowered = step.lower(state, None, layout.put_batch(batch())).as_text()
    assert _dot_precisions(lowered) == {"HIGHEST, HIGHEST"}


def test_matmul_precision_is_a_model_argument(tiny_model):
    expected = {("float32", "auto"): "HIGHEST, HIGHEST", ("float32", "high"): "HIGH, HIGH",
                ("float32", "default"): "DEFAULT, DEFAULT", ("bfloat16", "auto"): "DEFAULT, DEFAULT"}
    ids = np.ones((2, 8), np.int32)
    for (dtype, precision), wanted in expected.items():
        model, params = dj.from_pretrained(tiny_model, head="masked_lm", dtype=dtype,
                                           matmul_precision=precision)
        hlo = jax.jit(lambda p: model.apply({"params": p}, ids).logits).lower(params).as_text()
        assert _dot_precisions(hlo) == {wanted}, (dtype, precision)
