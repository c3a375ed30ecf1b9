"""Packed batches: the same outputs as the unpacked model for every head, nothing crossing examples."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import models
from distilbert_jax.data import packing
from distilbert_jax.train import distill, finetune
from conftest import (assert_same_training, compared_after_training, relative_error, step_metrics,
                      tiny_config, write_sst2, write_stsb)

TOL = 1e-5
DISTILBERT = dj.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                                 max_position_embeddings=64, num_labels=3)
BERT = dj.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=37, max_position_embeddings=64, num_labels=3)
# Lengths cover a full row (16), a one-example row, padding inside rows and an empty slot (0).
LENGTHS = [16, 3, 9, 1, 12, 5, 0, 7]
EX_LENGTH = ROW = 16


def example_batch(lengths, shape=None, seed=0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(EX_LENGTH)[None] < np.array(lengths)[:, None]).astype(np.int32)
    ids = np.where(mask, rng.integers(3, 99, mask.shape), 0).astype(np.int32)
    types = np.where(mask, (np.arange(EX_LENGTH)[None] > 4), 0).astype(np.int32)
    inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    if shape is not None:
        inputs = {k: v.reshape(*shape, EX_LENGTH) for k, v in inputs.items()}
    return inputs


def packed(inputs, rows=None):
    rows = rows or packing.first_fit_decreasing(
        packing.sequence_lengths(inputs["attention_mask"]), ROW)[2]
    return {**inputs, "packing": packing.layout(inputs["attention_mask"], rows, ROW)}


def outputs(model, params, inputs, **kwargs):
    out = model.apply({"params": params}, **models.model_inputs(model, jax.tree.map(
        jnp.asarray, inputs)), **kwargs)
    return {k: np.asarray(v) for k, v in vars(out).items()
            if k in ("logits", "start_logits", "end_logits", "last_hidden_state", "pooler_output")
            and v is not None}


HEADS = [(family, head) for family in ("distilbert", "bert")
         for head in models.MODEL_CLASSES[family]]


@pytest.mark.parametrize("family,head", HEADS)
def test_packed_outputs_equal_unpacked_for_every_head(family, head):
    config = (DISTILBERT if family == "distilbert" else BERT).replace(
        num_labels=2 if head == "question_answering" else 3)
    model = models.MODEL_CLASSES[family][head](config)
    choices = head == "multiple_choice"
    inputs = example_batch(LENGTHS, shape=(4, 2) if choices else None)
    params = models.init_params(model, seed=1, input_shape=(1, EX_LENGTH))
    unpacked = outputs(model, params, inputs)
    pack = outputs(model, params, packed(inputs))
    real = inputs["attention_mask"].astype(bool)
    for name, ours in pack.items():
        reference = unpacked[name]
        if name in ("last_hidden_state", "start_logits", "end_logits") or (
                name == "logits" and head in ("token_classification", "masked_lm")):
            ours, reference = ours[real], reference[real]  # per token: real tokens only
        else:  # per example: the empty slot's output is dropped by every caller
            keep = real.any(-1)
            ours, reference = ours[keep], reference[keep]
        assert relative_error(ours, reference) <= TOL, (name, relative_error(ours, reference))
    if head == "question_answering":  # each example's span softmax covers only its own tokens
        assert np.all(pack["start_logits"][~real] == np.finfo(np.float32).min)


def test_no_attention_weight_crosses_an_example():
    model = dj.DistilBertModel(DISTILBERT)
    inputs = packed(example_batch(LENGTHS))
    params = models.init_params(model, seed=2)
    out = model.apply({"params": params}, **models.model_inputs(model, jax.tree.map(
        jnp.asarray, inputs)), output_attentions=True)
    segments = inputs["packing"]["segment_ids"]
    same = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0)
    real_queries = np.broadcast_to((segments > 0)[:, None, :, None], (*same.shape[:1], 1,
                                                                      *same.shape[1:]))
    for probs in out.attentions:  # [rows, heads, query, key], in the packed rows
        probs = np.asarray(probs)
        crossing = np.broadcast_to(~same[:, None] & real_queries, probs.shape)
        assert crossing.any() and np.all(probs[crossing] == 0)
        np.testing.assert_allclose(probs.sum(-1)[np.broadcast_to((segments > 0)[:, None],
                                                                 probs.shape[:-1])], 1, rtol=1e-6)


def test_a_model_that_ignores_segments_would_be_caught():
    """The check above fails for attention that sees the whole row (maxtext #4476's bug): an
    example's output changes when its row-mates change."""
    model = dj.DistilBertModel(DISTILBERT)
    params = models.init_params(model, seed=3)
    a = example_batch([5, 6], seed=0)
    b = {k: v.copy() for k, v in a.items()}
    b["input_ids"][1, :6] = (b["input_ids"][1, :6] + 1) % 90 + 3  # change the row-mate only
    run = lambda inputs, **kw: outputs(model, params, inputs, **kw)["last_hidden_state"][0, :5]
    np.testing.assert_array_equal(run(packed(a, rows=1)), run(packed(b, rows=1)))
    whole_row = lambda x: {**x, "packing": {**x["packing"], "segment_ids": np.minimum(
        x["packing"]["segment_ids"], 1)}}  # every real token in segment 1
    assert not np.allclose(run(whole_row(packed(a, rows=1))), run(whole_row(packed(b, rows=1))))


def test_first_fit_decreasing_places_every_token_once():
    lengths = np.array([16, 3, 9, 1, 12, 5, 0, 7])
    rows, offsets, used = packing.first_fit_decreasing(lengths, 16)
    assert used == 4  # 53 tokens in rows of 16: the fewest possible
    slots = set()
    for n, r, o in zip(lengths, rows, offsets):
        assert n == 0 or o + n <= 16
        slots.update((r, o + j) for j in range(n))
    assert len(slots) == lengths.sum()
    with pytest.raises(ValueError, match="17 tokens"):
        packing.first_fit_decreasing(np.array([17]), 16)


def test_every_process_share_gets_the_same_row_count():
    inputs = example_batch(LENGTHS)
    batch = {"inputs": inputs, "targets": {"labels": np.arange(8)}}
    packer = packing.Packer(ROW, data_ways=4)  # shares need 2 rows each (29 and 24 tokens)
    shares = [packer(batch, (i, 2)) for i in range(2)]
    assert {s["inputs"]["packing"]["segment_ids"].shape for s in shares} == {(2, ROW)}
    np.testing.assert_array_equal(shares[1]["targets"]["labels"], [4, 5, 6, 7])


def test_more_processes_do_not_multiply_the_rows():
    """8 devices over 2 processes: each process's block is rounded to whole rows for its own 4
    devices, not for all 8, so the batch takes as many rows as on one process."""
    batch = {"inputs": example_batch([16] * 6 + [0, 0])}  # 3 full rows in each half
    one = packing.Packer(ROW, data_ways=8)(batch)["inputs"]["packing"]["segment_ids"].shape
    two = [packing.Packer(ROW, data_ways=8)(batch, (i, 2))["inputs"]["packing"]["segment_ids"].shape
           for i in range(2)]
    assert one == (8, ROW) and two == [(4, ROW)] * 2


# --- jobs: packing changes the layout, never the numbers -----------------------------------------------

@pytest.mark.parametrize("family,task,accum", [("distilbert", "sst2", 1), ("bert", "stsb", 2)])
def test_fine_tuning_packed_equals_unpacked(family, task, accum, tiny_model, tiny_bert, tmp_path):
    """Dropout off: every update's loss and the dev metrics agree, packed or not (with micro-batch
    accumulation and token types on the BERT run)."""
    model = tiny_model if family == "distilbert" else tiny_bert
    data = (write_sst2 if task == "sst2" else write_stsb)(tmp_path / task)
    config_class = dj.DistilBertConfig if family == "distilbert" else dj.BertConfig
    overrides = {field: 0.0 for field in config_class.dropout_fields()}
    results = {}
    for packed_run in (False, True):
        config = tiny_config(model, data, task, max_steps=6, log_every=1, grad_accum_steps=accum,
                             packing=packed_run, model_overrides=overrides, save_model=False)
        workdir = str(tmp_path / f"packed_{packed_run}")
        results[packed_run] = (finetune.train_and_evaluate(config, workdir),
                               step_metrics(workdir, "train/loss"),
                               step_metrics(workdir, "batch/computed_tokens"))
    (*plain, plain_slots), (*packed, packed_slots) = results[False], results[True]
    assert sum(packed_slots) < sum(plain_slots)  # 2 rows of 48 slots against 8 of 16
    assert_same_training(packed, plain, steps=6)


def test_the_distillation_loss_packed_equals_unpacked():
    """The triple loss (KL over every real token, MLM at the targets, cosine of the last hidden
    states) of one batch, with the same masking draws and dropout off, in both layouts."""
    teacher = dj.BertForMaskedLM(BERT.replace(hidden_dropout_prob=0.0,
                                              attention_probs_dropout_prob=0.0))
    student = dj.DistilBertForMaskedLM(DISTILBERT.replace(dropout=0.0, attention_dropout=0.0))
    teacher_params = models.init_params(teacher, seed=4)
    params = models.init_params(student, seed=5)
    config = distill.default_config()
    for restrict in (False, True):
        config.restrict_ce_to_mask = restrict
        mask = distill.masker(config, np.ones(99), types.SimpleNamespace(
            all_special_ids=[0, 1, 2], mask_token_id=4), 99)
        loss_fn = jax.jit(distill.distill_loss(student, teacher, config, mask))
        inputs = example_batch(LENGTHS)
        del inputs["token_type_ids"]
        key = jax.random.key(7)
        plain, plain_terms = loss_fn(params, teacher_params, {"inputs": inputs}, key)
        packed_loss, packed_terms = loss_fn(params, teacher_params, {"inputs": packed(inputs)}, key)
        assert set(plain_terms) == {"ce", "mlm", "cos"}
        for name in plain_terms:
            assert relative_error(packed_terms[name], plain_terms[name]) <= TOL, name
        assert relative_error(packed_loss, plain) <= TOL


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_soft_targets_made_a_chunk_at_a_time_equal_them_made_at_once(layout):
    """The triple loss with the logit MSE, its terms and its gradient, with the vocabulary logits made
    7 tokens at a time (chunks that cut rows, the last one padded) against made at once: the same
    sums in another order, so equal to float32 rounding over the batch's tokens."""
    teacher = dj.BertForMaskedLM(BERT.replace(hidden_dropout_prob=0.0,
                                              attention_probs_dropout_prob=0.0))
    student = dj.DistilBertForMaskedLM(DISTILBERT.replace(dropout=0.0, attention_dropout=0.0))
    teacher_params = models.init_params(teacher, seed=4)
    params = models.init_params(student, seed=5)
    inputs = example_batch(LENGTHS)
    del inputs["token_type_ids"]
    batch = {"inputs": packed(inputs) if layout == "packed" else inputs}
    config = distill.default_config()
    config.alpha_mse = 0.5
    mask = distill.masker(config, np.ones(99), types.SimpleNamespace(
        all_special_ids=[0, 1, 2], mask_token_id=4), 99)
    out = {}
    for chunk in (0, 7):
        config.logit_chunk = chunk
        loss_fn = jax.value_and_grad(distill.distill_loss(student, teacher, config, mask), has_aux=True)
        out[chunk] = jax.jit(loss_fn)(params, teacher_params, batch, jax.random.key(7))
    ((whole, whole_terms), whole_grads), ((chunked, chunked_terms), chunked_grads) = out[0], out[7]
    assert set(whole_terms) == {"ce", "mlm", "cos", "mse"}
    # The KL of each token is a vocabulary sum of p_t·(log p_t - log p_s), small differences of
    # log-softmax values that each carry float32 rounding of about eps·ln(vocab): so it is bound
    # absolutely (T² scales it), not relative to its own small size.
    kl_rounding = 2 * np.finfo(np.float32).eps * np.log(99) * config.temperature ** 2
    assert abs(float(chunked_terms["ce"] - whole_terms["ce"])) <= kl_rounding
    for name in ("mlm", "cos", "mse"):
        assert relative_error(chunked_terms[name], whole_terms[name]) <= TOL, name
    assert abs(float(chunked - whole)) <= config.alpha_ce * kl_rounding + TOL * abs(float(whole))
    flat = lambda tree: {jax.tree_util.keystr(path).replace("']['", ".").strip("[']"): leaf
                         for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
    want = compared_after_training(flat(whole_grads))  # the key biases' gradients are rounding noise
    for name, got in flat(chunked_grads).items():
        if name in want:
            assert relative_error(got, want[name]) <= TOL, name


@pytest.mark.parametrize("processes,micro_batches", [(2, 1), (1, 2), (2, 4), (4, 2)])
def test_blocks_line_up_with_processes_and_micro_batches(processes, micro_batches):
    """The global packed batch (the processes' shares, one after another) split into micro-batches
    as train/step.py splits it: each micro-batch's token_index points into its own rows, at its own
    examples' tokens."""
    lengths = [16, 3, 9, 1, 12, 5, 0, 7, 2, 14, 6, 11, 4, 8, 10, 13]
    batch = {"inputs": example_batch(lengths)}
    packer = packing.Packer(ROW, micro_batches=micro_batches)
    shares = [packer(batch, (p, processes)) for p in range(processes)]
    glued = {k: np.concatenate([s["inputs"]["packing"][k] for s in shares])
             for k in ("token_index", "segment_ids", "position_ids")}
    ids = np.concatenate([s["inputs"]["input_ids"] for s in shares])
    mask = np.concatenate([s["inputs"]["attention_mask"] for s in shares])
    np.testing.assert_array_equal(ids, batch["inputs"]["input_ids"])
    micro = lambda x: x.reshape(micro_batches, -1, *x.shape[1:])
    for m_ids, m_mask, m_index, m_segments, m_positions in zip(
            micro(ids), micro(mask), micro(glued["token_index"]), micro(glued["segment_ids"]),
            micro(glued["position_ids"])):
        rows = np.zeros(m_segments.size, np.int32)
        real = m_mask.astype(bool)
        assert np.all(m_index[real] >= 0) and np.all(m_index[real] < m_segments.size)
        assert np.all(m_index[~real] == -1)
        rows[m_index[real]] = m_ids[real]  # scatter the micro-batch's examples into its rows
        np.testing.assert_array_equal(rows[m_index[real]], m_ids[real])
        assert len(set(m_index[real].tolist())) == real.sum()  # no two tokens share a slot
        assert (m_segments.reshape(-1) > 0).sum() == real.sum()
        np.testing.assert_array_equal(m_positions.reshape(-1)[m_index[real]],
                                      np.nonzero(real)[1])  # each token at its own position


def test_row_counts_come_from_a_short_ladder():
    assert [packing.round_up(n) for n in range(1, 14)] == [1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    packer = packing.Packer(ROW)
    assert packer.rows_for([example_batch([16] * 5)["attention_mask"]], unit=2) == 2 * 3
    with pytest.raises(ValueError, match="right-padded"):
        packing.sequence_lengths(np.array([[0, 1, 1, 0]]))  # left padding
