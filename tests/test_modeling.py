"""Model behaviour beyond parity: sizes, logical axes, dtypes, masking, dropout, shapes."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax.models import layers
from conftest import FIXTURES

TINY = dj.DistilBertConfig(vocab_size=99, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
                           max_position_embeddings=64)
TINY_BERT = dj.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=37, max_position_embeddings=64)
IDS = jnp.array([[1, 7, 8, 9, 2, 0], [1, 5, 2, 0, 0, 0]])  # ids within the tiny vocab
MASK = (IDS != 0).astype(jnp.int32)


def n_params(model, shape=(1, 8)):
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape, jnp.int32))
    return sum(x.size for x in jax.tree.leaves(abstract["params"]))


def test_parameter_counts_of_the_base_configs():
    cfg = dj.DistilBertConfig()
    assert n_params(dj.DistilBertModel(cfg)) == 66_362_880
    assert n_params(dj.DistilBertForMaskedLM(cfg)) == 66_985_530
    assert n_params(dj.DistilBertForSequenceClassification(cfg)) == 66_955_010
    assert n_params(dj.BertModel(dj.BertConfig())) == 109_482_240


@pytest.mark.parametrize("cls", [dj.DistilBertForMaskedLM, dj.DistilBertForQuestionAnswering,
                                 dj.BertForMaskedLM])
def test_every_parameter_has_logical_axis_names(cls):
    cfg = dj.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=37) if cls is dj.BertForMaskedLM else TINY
    boxed = jax.eval_shape(cls(cfg).init, jax.random.key(0), IDS)["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
    assert all(len(x.names) == x.value.ndim for x in leaves)


def test_init_follows_hugging_face():
    params = nn.meta.unbox(dj.DistilBertModel(TINY).init(jax.random.key(0), IDS)["params"])
    words = params["embeddings"]["word_embeddings"]["embedding"]
    assert np.all(words[TINY.pad_token_id] == 0)  # padding row zeroed
    assert abs(float(jnp.std(words[1:])) - 0.02) < 0.002
    assert np.all(params["embeddings"]["LayerNorm"]["scale"] == 1)
    assert np.all(params["transformer"]["layer"]["0"]["ffn"]["lin1"]["bias"] == 0)


def test_sinusoidal_positions_start_as_the_sinusoid():
    cfg = TINY.replace(sinusoidal_pos_embds=True)
    params = nn.meta.unbox(dj.DistilBertModel(cfg).init(jax.random.key(0), IDS)["params"])
    table = params["embeddings"]["position_embeddings"]["embedding"]
    np.testing.assert_allclose(table[1, 0::2], np.sin(1.0 / 10000 ** (np.arange(0, 32, 2) / 32)), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_has_no_nan_even_for_an_all_padding_row(dtype):
    model, params = dj.from_pretrained(os.path.join(FIXTURES, "models", "distilbert_mlm"))
    low = dj.DistilBertForMaskedLM(model.config, dtype=dtype)
    mask = MASK.at[1].set(0)  # the second row is all padding
    out = low.apply({"params": params}, IDS, attention_mask=mask, output_attentions=True)
    ref = model.apply({"params": params}, IDS, attention_mask=mask)
    assert out.logits.dtype == dtype
    assert bool(jnp.all(jnp.isfinite(out.logits.astype(jnp.float32))))
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in out.attentions)
    np.testing.assert_allclose(out.logits[0].astype(jnp.float32), ref.logits[0], atol=0.1, rtol=0.1)


def test_padding_does_not_change_real_tokens():
    model = dj.DistilBertModel(TINY)
    params = model.init(jax.random.key(0), IDS)["params"]
    short = model.apply({"params": params}, IDS[1:, :3]).last_hidden_state
    padded = model.apply({"params": params}, IDS[1:], attention_mask=MASK[1:]).last_hidden_state
    np.testing.assert_allclose(padded[:, :3], short, atol=1e-5)


def test_dropout_needs_a_key_and_is_reproducible():
    model = dj.DistilBertForSequenceClassification(TINY)
    params = model.init(jax.random.key(0), IDS)["params"]
    run = lambda key: model.apply({"params": params}, IDS, attention_mask=MASK, deterministic=False,
                                  rngs={"dropout": key}).logits
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(1)))
    assert not np.allclose(run(jax.random.key(1)), run(jax.random.key(2)))
    eval_logits = model.apply({"params": params}, IDS, attention_mask=MASK).logits
    np.testing.assert_array_equal(eval_logits, model.apply({"params": params}, IDS, attention_mask=MASK).logits)


@pytest.mark.parametrize("cls, cfg", [(dj.DistilBertForTokenClassification, TINY),
                                      (dj.BertForTokenClassification, TINY_BERT)])
def test_dropout_at_real_tokens_does_not_depend_on_the_padding(cls, cfg):
    """Dropout's bits at an element depend on its index, not on how far the batch was padded (in
    rows or tokens): a batch padded to a longer bucket, or stacked with longer batches, trains alike."""
    model = cls(cfg.replace(num_labels=3))
    params = model.init(jax.random.key(0), IDS)["params"]
    run = lambda ids, mask: model.apply({"params": params}, ids, attention_mask=mask,
                                        deterministic=False, rngs={"dropout": jax.random.key(1)}).logits
    wider = jnp.zeros((3, 11), IDS.dtype).at[:2, :6].set(IDS)  # one more row, five more tokens
    short, padded = run(IDS, MASK), run(wider, (wider != 0).astype(jnp.int32))
    real = np.asarray(MASK, bool)
    np.testing.assert_allclose(np.asarray(padded[:2, :6])[real], np.asarray(short)[real], rtol=1e-5, atol=1e-6)
    off = model.apply({"params": params}, IDS, attention_mask=MASK).logits
    assert not np.allclose(np.asarray(short)[real], np.asarray(off)[real])  # dropout is on


def test_dropout_bits_at_an_index_stay_when_the_free_axes_grow():
    key = jax.random.key(3)
    small = layers.padding_stable_bernoulli(key, 0.9, (2, 3, 16, 16), (0, 2, 3))
    large = layers.padding_stable_bernoulli(key, 0.9, (4, 3, 40, 48), (0, 2, 3))
    np.testing.assert_array_equal(small, large[:2, :, :16, :16])
    assert 0.8 < float(small.mean()) < 0.97  # keep probability 0.9 over 1,536 draws


@pytest.mark.parametrize("cls, cfg", [
    (dj.DistilBertForMaskedLM, TINY),
    (dj.BertForMaskedLM, dj.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=37))])
def test_logits_at_positions_equal_the_full_logits_there(cls, cfg):
    model = cls(cfg)
    params = model.init(jax.random.key(0), IDS)["params"]
    full = model.apply({"params": params}, IDS, attention_mask=MASK).logits
    positions = jnp.array([1, 3, 7, 0])  # flat indices into batch x length
    picked = model.apply({"params": params}, IDS, attention_mask=MASK, logit_positions=positions).logits
    assert picked.shape == (4, 99)
    np.testing.assert_allclose(picked, full.reshape(-1, 99)[positions], rtol=1e-6, atol=1e-6)


def test_output_shapes_of_every_head():
    cfg = TINY.replace(num_labels=2)
    expectations = {
        dj.DistilBertModel: lambda o: o.last_hidden_state.shape == (2, 6, 32),
        dj.DistilBertForMaskedLM: lambda o: o.logits.shape == (2, 6, 99),
        dj.DistilBertForSequenceClassification: lambda o: o.logits.shape == (2, 2),
        dj.DistilBertForTokenClassification: lambda o: o.logits.shape == (2, 6, 2),
        dj.DistilBertForQuestionAnswering: lambda o: o.start_logits.shape == o.end_logits.shape == (2, 6),
    }
    for cls, check in expectations.items():
        model = cls(cfg)
        out = jax.jit(lambda ids, mask: model.apply(model.init(jax.random.key(0), ids), ids,
                                                    attention_mask=mask, output_hidden_states=True))(IDS, MASK)
        assert check(out), cls.__name__
        assert len(out.hidden_states) == cfg.n_layers + 1
    choice = dj.DistilBertForMultipleChoice(cfg)
    ids3 = jnp.stack([IDS, IDS, IDS], axis=1)  # [batch 2, choices 3, length 6]
    out = choice.apply(choice.init(jax.random.key(0), ids3), ids3)
    assert out.logits.shape == (2, 3)


def test_logical_names_of_key_parameters():
    boxed = jax.eval_shape(dj.DistilBertForMaskedLM(TINY).init, jax.random.key(0), IDS)["params"]
    layer = boxed["distilbert"]["transformer"]["layer"]["0"]
    assert layer["attention"]["q_lin"]["kernel"].names == ("embed", "heads")
    assert layer["attention"]["out_lin"]["kernel"].names == ("heads", "embed")
    assert layer["ffn"]["lin1"]["kernel"].names == ("embed", "mlp")
    assert boxed["distilbert"]["embeddings"]["word_embeddings"]["embedding"].names == ("vocab", "embed")
    assert boxed["vocab_projector"]["bias"].names == ("vocab",)


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_fused_attention_equals_the_explicit_softmax(family):
    """Without attention maps or active attention dropout the models take jax.nn.dot_product_attention
    (XLA's here); its outputs equal the explicit path's on real tokens, padded or packed."""
    from distilbert_jax import models
    from distilbert_jax.data import packing
    config = TINY if family == "distilbert" else TINY_BERT
    fused = models.MODEL_CLASSES[family]["base"](config)
    explicit = fused.clone(attention_implementation="explicit")
    params = models.init_params(fused, seed=0, input_shape=IDS.shape)
    layouts = {"padded": {}, "packed": {"packing": models.Packing(**{
        k: jnp.asarray(v) for k, v in packing.layout(np.asarray(MASK), 1, 8).items()})}}
    real = np.asarray(MASK, bool)
    for name, extra in layouts.items():
        a = fused.apply({"params": params}, IDS, MASK, **extra).last_hidden_state
        b = explicit.apply({"params": params}, IDS, MASK, **extra).last_hidden_state
        np.testing.assert_allclose(np.asarray(a)[real], np.asarray(b)[real], rtol=1e-5, atol=1e-6,
                                   err_msg=name)
    maps = fused.apply({"params": params}, IDS, MASK, output_attentions=True).attentions
    assert len(maps) == 2 and maps[0].shape == (2, 4, 6, 6)  # asking for maps takes the explicit path
    with pytest.raises(dj.ConfigError, match="attention_implementation='flash'"):
        fused.clone(attention_implementation="flash").apply({"params": params}, IDS, MASK)


def test_deterministic_gpu_ops_are_asked_for_before_the_backend_starts(monkeypatch):
    from distilbert_jax import distributed
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    distributed.use_deterministic_ops(True)
    assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=8",
                                                "--xla_gpu_deterministic_ops=true"]
    distributed.use_deterministic_ops(True)  # once only
    assert os.environ["XLA_FLAGS"].count("deterministic") == 1
    monkeypatch.setenv("XLA_FLAGS", "")
    distributed.use_deterministic_ops(False)
    assert os.environ["XLA_FLAGS"] == ""


@pytest.mark.parametrize("family", ["distilbert", "bert"])
def test_remat_changes_memory_not_numbers(family):
    """remat="dots" / "full" recompute block activations in the backward: the same params, loss and
    gradients (dropout on: the recomputed masks are the same draws), and fewer bytes kept for the
    backward (the residuals `jax.vjp` holds) than remat="none", "full" fewest."""
    from distilbert_jax import models
    config = TINY if family == "distilbert" else TINY_BERT
    model = models.MODEL_CLASSES[family]["sequence_classification"](config)
    params = models.init_params(model, seed=0, input_shape=IDS.shape)
    ids, mask = jnp.tile(IDS, (8, 8)), jnp.tile(MASK, (8, 8))  # [16, 48]: activations outweigh params

    def run(remat):
        remodel = model.clone(remat=remat)
        assert jax.tree.structure(models.init_params(remodel, 0, IDS.shape)) == jax.tree.structure(params)

        def loss(p):
            logits = remodel.apply({"params": p}, ids, mask, deterministic=False,
                                   rngs={"dropout": jax.random.key(3)}).logits
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0])
        value, backward = jax.vjp(loss, params)
        kept = sum(x.nbytes for x in jax.tree.leaves(backward))
        return value, backward(jnp.ones_like(value))[0], kept

    loss, grads, kept = run("none")
    kept_by_remat = {}
    for remat in ("dots", "full"):
        remat_loss, remat_grads, kept_by_remat[remat] = run(remat)
        np.testing.assert_allclose(remat_loss, loss, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                     remat_grads, grads)
    assert kept_by_remat["full"] < kept_by_remat["dots"] < kept / 2, (kept, kept_by_remat)
    with pytest.raises(dj.ConfigError, match="remat='all' is not one of"):
        model.clone(remat="all").apply({"params": params}, IDS, MASK)
