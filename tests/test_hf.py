"""Checkpoint interop: round trips, prefix handling, msgpack, and one clear error per bad checkpoint."""

import json
import logging
import os
import shutil

import flax.serialization
import flax.traverse_util
import jax
import numpy as np
import pytest
import safetensors.numpy

import distilbert_jax as dj
from distilbert_jax import hf, models
from conftest import FIXTURES

MODELS = os.path.join(FIXTURES, "models")


def flat(params):
    return flax.traverse_util.flatten_dict(jax.device_get(params))


def assert_same(a, b):
    a, b = flat(a), flat(b)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=str(k))


@pytest.mark.parametrize("name", sorted(os.listdir(MODELS)))
def test_save_then_load_is_bit_exact(name, tmp_path):
    model, params = dj.from_pretrained(os.path.join(MODELS, name))
    dj.save_pretrained(tmp_path, model, params)
    again, params_again = dj.from_pretrained(tmp_path)
    assert type(again) is type(model) and again.config == model.config
    assert_same(params, params_again)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_base_checkpoint_into_head_model(caplog):
    base_dir = os.path.join(MODELS, "distilbert_base")
    _, base = dj.from_pretrained(base_dir)
    with caplog.at_level(logging.WARNING):
        model, params = dj.from_pretrained(base_dir, head="sequence_classification", num_labels=4)
    assert isinstance(model, dj.DistilBertForSequenceClassification)
    assert_same(params["distilbert"], base)
    assert params["classifier"]["kernel"].shape == (32, 4)
    assert "newly initialised" in caplog.text and "classifier.weight" in caplog.text
    # the fresh head is the one a whole-model initialisation with the same seed draws
    whole = models.init_params(model, seed=0)
    for layer in ("pre_classifier", "classifier"):
        assert_same(params[layer], whole[layer])


def test_head_checkpoint_into_base_model(caplog):
    head_dir = os.path.join(MODELS, "distilbert_seqcls")
    _, head_params = dj.from_pretrained(head_dir)
    with caplog.at_level(logging.WARNING):
        model, params = dj.from_pretrained(head_dir, head="base")
    assert isinstance(model, dj.DistilBertModel)
    assert_same(params, head_params["distilbert"])
    assert "unused checkpoint tensors: classifier.bias" in caplog.text


def test_bert_teacher_from_masked_lm_and_pretraining_checkpoints(caplog):
    for name in ("bert_mlm", "bert_pretraining"):
        model, params = dj.from_pretrained(os.path.join(MODELS, name))
        assert isinstance(model, dj.BertForMaskedLM)
        assert set(params) == {"bert", "cls"}
    with caplog.at_level(logging.WARNING):
        model, _ = dj.from_pretrained(os.path.join(MODELS, "bert_mlm"), head="base")
    assert isinstance(model, dj.BertModel)
    assert "pooler.dense.weight" in caplog.text  # BertForMaskedLM has no pooler: reported, fresh


def test_flax_msgpack_checkpoint(tmp_path):
    model, params = dj.from_pretrained(os.path.join(MODELS, "distilbert_mlm"))
    shutil.copy(os.path.join(MODELS, "distilbert_mlm", "config.json"), tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(
        jax.device_get(params)))
    _, loaded = dj.from_pretrained(tmp_path)
    assert_same(params, loaded)


def test_sinusoidal_table_when_a_flax_checkpoint_has_no_positions(tmp_path):
    model, params = dj.from_pretrained(os.path.join(MODELS, "distilbert_sinusoidal"))
    del params["embeddings"]["position_embeddings"]
    shutil.copy(os.path.join(MODELS, "distilbert_sinusoidal", "config.json"), tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(flax.serialization.msgpack_serialize(
        jax.device_get(params)))
    _, loaded = dj.from_pretrained(tmp_path)
    table = dj.models.layers.sinusoidal_table(64, 32)
    np.testing.assert_allclose(loaded["embeddings"]["position_embeddings"]["embedding"], table)


def test_sharded_safetensors(tmp_path):
    src = os.path.join(MODELS, "distilbert_base")
    state = safetensors.numpy.load_file(os.path.join(src, "model.safetensors"))
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, names in halves.items():
        safetensors.numpy.save_file({k: state[k] for k in names}, str(tmp_path / shard))
    index = {"weight_map": {k: shard for shard, names in halves.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(os.path.join(src, "config.json"), tmp_path)
    assert_same(dj.from_pretrained(tmp_path)[1], dj.from_pretrained(src)[1])


def _copy(name, tmp_path):
    shutil.copytree(os.path.join(MODELS, name), tmp_path / name)
    return tmp_path / name


def test_shape_mismatch_names_the_parameter(tmp_path):
    with pytest.raises(dj.CheckpointError,
                       match=r"classifier.weight: checkpoint \(3, 32\) vs model \(5, 32\)"):
        dj.from_pretrained(os.path.join(MODELS, "distilbert_seqcls"), num_labels=5)


def test_missing_encoder_tensor_is_an_error(tmp_path):
    directory = _copy("distilbert_base", tmp_path)
    state = safetensors.numpy.load_file(str(directory / "model.safetensors"))
    del state["transformer.layer.1.ffn.lin2.weight"]
    safetensors.numpy.save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(dj.CheckpointError, match="missing encoder tensors: transformer.layer.1.ffn.lin2.weight"):
        dj.from_pretrained(directory)


def test_unsafe_or_absent_files(tmp_path):
    directory = _copy("distilbert_base", tmp_path)
    os.rename(directory / "model.safetensors", directory / "pytorch_model.bin")
    with pytest.raises(dj.CheckpointError, match="allow_pickle=True"):
        dj.from_pretrained(directory)
    os.remove(directory / "pytorch_model.bin")
    with pytest.raises(dj.CheckpointError, match="has no model.safetensors"):
        dj.from_pretrained(directory)
    os.remove(directory / "config.json")
    with pytest.raises(dj.CheckpointError, match="has no config.json"):
        dj.from_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    shutil.copy(os.path.join(MODELS, "distilbert_base", "config.json"), directory)
    with pytest.raises(dj.CheckpointError, match="not a readable safetensors file"):
        dj.from_pretrained(directory)


def test_unknown_head_and_architecture(tmp_path):
    with pytest.raises(dj.CheckpointError, match="head='pooling' is not available"):
        dj.from_pretrained(os.path.join(MODELS, "distilbert_base"), head="pooling")
    directory = _copy("distilbert_base", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["architectures"] = ["DistilBertForCausalLM"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(dj.CheckpointError, match="architecture 'DistilBertForCausalLM'"):
        dj.from_pretrained(directory)


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(dj.CheckpointError, match="could not be fetched from the Hugging Face Hub"):
        dj.from_pretrained("distilbert/distilbert-base-uncased-not-cached")


def test_pytorch_names_and_layouts():
    model, params = dj.from_pretrained(os.path.join(MODELS, "distilbert_mlm"))
    state = hf.to_pytorch_state_dict(params)
    assert "vocab_projector.weight" not in state  # tied: HF ties it on load
    assert state["distilbert.transformer.layer.0.ffn.lin1.weight"].shape == (37, 32)  # (out, in)
    assert "distilbert.embeddings.LayerNorm.weight" in state
