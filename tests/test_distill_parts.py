"""Distillation building blocks: each loss term against NumPy, masking statistics, layer choice and
student initialisation from the teacher."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import losses, student
from distilbert_jax.data import corpus
from conftest import FIXTURES


def np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_terms_against_numpy():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 5, 11)), rng.normal(size=(2, 5, 11)) * 2
    hs, ht = rng.normal(size=(2, 5, 7)), rng.normal(size=(2, 5, 7))
    mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    labels = np.full((2, 5), -100)
    labels[0, 1], labels[1, 0] = 3, 9
    T = 2.0
    sel = mask.astype(bool)
    ls, lt = np_log_softmax(s / T), np_log_softmax(t / T)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)[sel].mean() * T ** 2
    mlm = -np.mean([np_log_softmax(s)[0, 1, 3], np_log_softmax(s)[1, 0, 9]])
    cos = (hs * ht).sum(-1) / np.linalg.norm(hs, axis=-1) / np.linalg.norm(ht, axis=-1)
    cos_loss = (1 - cos)[sel].mean()
    mse = ((s - t) ** 2).sum(-1)[sel].mean()
    total, terms = losses.distillation_loss(s, t, hs, ht, mask, labels, temperature=T, alpha_ce=5.0,
                                            alpha_mlm=2.0, alpha_cos=1.0, alpha_mse=0.5)
    np.testing.assert_allclose([terms["ce"], terms["mlm"], terms["cos"], terms["mse"]],
                               [kl, mlm, cos_loss, mse], rtol=1e-5)
    np.testing.assert_allclose(total, 5 * kl + 2 * mlm + cos_loss + 0.5 * mse, rtol=1e-5)
    _, restricted = losses.distillation_loss(s, t, hs, ht, mask, labels, temperature=T, alpha_ce=1.0,
                                             alpha_mlm=0.0, alpha_cos=0.0, restrict_ce_to_mask=True)
    kl_masked = (np.exp(lt) * (lt - ls)).sum(-1)[labels != -100].mean() * T ** 2
    np.testing.assert_allclose(restricted["ce"], kl_masked, rtol=1e-5)
    assert set(restricted) == {"ce"}


def test_kl_is_zero_for_identical_logits():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4, 9)))
    total, count = losses.soft_target_kl_sums(x, x, jnp.ones((3, 4)), 2.0)
    assert abs(float(total)) < 1e-5 and int(count) == 12


SPECIALS = [0, 100, 101, 102, 103]  # PAD, UNK, CLS, SEP, MASK


def _mask_many(counts, ids, mask, n=400):
    probs = jnp.asarray(corpus.token_probs(counts, SPECIALS))
    fn = jax.jit(lambda key: corpus.mask_tokens(key, ids, mask, probs, mask_id=103, vocab_size=len(counts)))
    return [jax.device_get(fn(jax.random.key(i))) for i in range(n)]


def test_masking_rates_and_specials():
    rng = np.random.default_rng(0)
    vocab = 1000
    ids = rng.integers(1000 // 2, vocab, (8, 40)).astype(np.int32)
    lengths = rng.integers(12, 41, 8)
    mask = (np.arange(40)[None] < lengths[:, None]).astype(np.int32)
    ids[:, 0] = 101
    ids[np.arange(8), lengths - 1] = 102
    ids = np.where(mask == 1, ids, 0)
    ids[0, 3] = 100  # an [UNK] inside the text
    results = _mask_many(np.ones(vocab), jnp.asarray(ids), jnp.asarray(mask))
    n_real = mask.sum()
    selected = np.stack([labels != -100 for _, labels in results])
    assert np.all(selected.sum(axis=(1, 2)) == np.ceil(0.15 * n_real))  # exactly ceil(15%) a batch
    assert not selected[:, np.isin(ids, SPECIALS)].any()  # never PAD, UNK, CLS, SEP
    corrupted = np.stack([c for c, _ in results])
    chosen = corrupted[selected]
    original = np.broadcast_to(ids, corrupted.shape)[selected]
    rates = [np.mean(chosen == 103), np.mean(chosen == original), np.mean((chosen != 103) & (chosen != original))]
    np.testing.assert_allclose(rates, [0.8, 0.1 + 0.1 / vocab, 0.1], atol=0.01)
    assert np.array_equal(corrupted[~selected], np.broadcast_to(ids, corrupted.shape)[~selected])
    first = _mask_many(np.ones(vocab), jnp.asarray(ids), jnp.asarray(mask), n=1)[0]
    np.testing.assert_array_equal(first[0], results[0][0])  # deterministic in the key


def test_target_positions_keep_every_target_and_its_label():
    ids = jnp.asarray(np.random.default_rng(2).integers(200, 999, (6, 33)), jnp.int32)
    mask = jnp.ones_like(ids)
    for corrupted, labels in _mask_many(np.ones(1000), ids, mask, n=20):
        positions, picked = jax.jit(corpus.target_positions, static_argnums=1)(labels, 0.15)
        flat = labels.reshape(-1)
        targets = np.flatnonzero(flat != -100)
        assert positions.shape == picked.shape == (int(np.ceil(0.15 * flat.size)) + 1,)
        np.testing.assert_array_equal(np.asarray(positions)[: len(targets)], targets)
        np.testing.assert_array_equal(np.asarray(picked)[: len(targets)], flat[targets])
        assert np.all(np.asarray(picked)[len(targets):] == -100)


def test_frequency_smoothing_prefers_rare_tokens():
    vocab = 1000
    counts = np.ones(vocab)
    counts[500] = 10_000  # a very frequent token
    ids = np.full((4, 30), 600, np.int32)
    ids[:, ::2] = 500
    mask = np.ones_like(ids)
    results = _mask_many(counts, jnp.asarray(ids), jnp.asarray(mask), n=200)
    picked = np.concatenate([ids[labels != -100] for _, labels in results])
    # weights 10000^-0.7 vs 1: the frequent token is chosen far less often than its 50% share
    assert np.mean(picked == 500) < 0.02


def test_layer_choice():
    assert student.teacher_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # the reference's choice
    assert student.teacher_layers(6, 3) == [0, 2, 5]
    assert student.teacher_layers(6, 6) == list(range(6))
    with pytest.raises(dj.ConfigError, match="cannot be taken"):
        student.teacher_layers(3, 6)


def test_student_from_teacher_reproduces_the_teacher():
    """With every layer kept and token type 0 zeroed, the student computes the teacher's function."""
    teacher, params = dj.from_pretrained(os.path.join(FIXTURES, "models", "bert_mlm"))
    params["bert"]["embeddings"]["token_type_embeddings"]["embedding"] = \
        params["bert"]["embeddings"]["token_type_embeddings"]["embedding"].at[0].set(0.0)
    cfg = student.student_config(teacher.config, n_layers=2)
    model = dj.DistilBertForMaskedLM(cfg)
    fresh = dj.models.init_params(model)
    init, missing = student.init_from_teacher(fresh, params, student.teacher_layers(2, 2))
    assert missing == []
    ids = jnp.array([[2, 15, 27, 3, 0]])
    mask = (ids != 0).astype(jnp.int32)
    ours = model.apply({"params": init}, ids, attention_mask=mask, output_hidden_states=True)
    ref = teacher.apply({"params": params}, ids, attention_mask=mask, output_hidden_states=True)
    np.testing.assert_allclose(ours.logits, ref.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.hidden_states[-1], ref.hidden_states[-1], rtol=1e-5, atol=1e-5)


def test_student_from_a_bare_teacher_keeps_a_fresh_head(minilm_dir):
    teacher, params = dj.from_pretrained(minilm_dir)  # a BertModel: no MLM head
    cfg = student.student_config(teacher.config, n_layers=3)
    assert (cfg.dim, cfg.n_heads, cfg.hidden_dim, cfg.n_layers) == (384, 12, 1536, 3)
    model = dj.DistilBertForMaskedLM(cfg)
    fresh = jax.eval_shape(lambda: dj.models.init_params(model))
    fresh = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), fresh)
    init, missing = student.init_from_teacher(fresh, params, [0, 2, 5])
    assert missing == ["vocab_transform", "vocab_layer_norm", "vocab_projector/bias"]
    np.testing.assert_array_equal(init["distilbert"]["transformer"]["layer"]["2"]["ffn"]["lin1"]["kernel"],
                                  params["encoder"]["layer"]["5"]["intermediate"]["dense"]["kernel"])
