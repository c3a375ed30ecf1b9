"""Configs: HF names, defaults and aliases; config.json round trips; one clear error per bad field."""

import json

import pytest

import distilbert_jax as dj


def test_defaults_are_hugging_face_defaults():
    cfg = dj.DistilBertConfig()
    assert (cfg.vocab_size, cfg.dim, cfg.n_layers, cfg.n_heads, cfg.hidden_dim) == (30522, 768, 6, 12, 3072)
    assert (cfg.dropout, cfg.attention_dropout, cfg.qa_dropout, cfg.seq_classif_dropout) == (0.1, 0.1, 0.1, 0.2)
    assert cfg.activation == "gelu" and not cfg.sinusoidal_pos_embds and cfg.pad_token_id == 0
    assert cfg.num_labels == 2 and cfg.problem_type is None and cfg.max_position_embeddings == 512
    bert = dj.BertConfig()
    assert (bert.hidden_size, bert.num_hidden_layers, bert.intermediate_size, bert.type_vocab_size) == (768, 12, 3072, 2)


def test_aliases():
    cfg = dj.DistilBertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3})
    assert (cfg.dim, cfg.n_heads, cfg.n_layers) == (64, 4, 3)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (64, 4, 3)
    assert cfg.replace(hidden_size=128).dim == 128


def test_json_round_trip(tmp_path):
    cfg = dj.DistilBertConfig(dim=64, n_heads=4, num_labels=3, id2label=("neg", "neutral", "pos"))
    cfg.to_json_file(tmp_path / "config.json", architectures=["DistilBertForSequenceClassification"])
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
    assert saved["label2id"] == {"neg": 0, "neutral": 1, "pos": 2}
    assert saved["model_type"] == "distilbert"
    assert dj.DistilBertConfig.from_json_file(tmp_path / "config.json") == cfg


def test_reads_real_hugging_face_config(minilm_dir):
    cfg = dj.BertConfig.from_json_file(f"{minilm_dir}/config.json")  # carries generic HF keys
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (384, 6, 1536)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_heads": 5}, "n_heads=5 does not divide dim=768"),
    ({"activation": "gelu_fast_typo"}, "activation 'gelu_fast_typo'"),
    ({"problem_type": "ranking"}, "problem_type='ranking'"),
    ({"dropout": 1.5}, r"dropout=1.5 must be in \[0, 1\)"),
    ({"num_labels": 0}, "num_labels=0"),
])
def test_invalid_field_names_the_field(kwargs, message):
    with pytest.raises(dj.ConfigError, match=message):
        dj.DistilBertConfig(**kwargs)


def test_unknown_field_is_refused(tmp_path):
    with pytest.raises(dj.ConfigError, match="no field 'n_layer'"):
        dj.DistilBertConfig.from_dict({"n_layer": 3})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "distilbert", "dimm": 3}))
    with pytest.raises(dj.ConfigError, match="config.json: DistilBertConfig has no field 'dimm'"):
        dj.DistilBertConfig.from_json_file(path)
    with pytest.raises(dj.ConfigError, match="model_type='bert' cannot be read"):
        dj.DistilBertConfig.from_dict({"model_type": "bert"})
    with pytest.raises(dj.ConfigError, match="position_embedding_type='relative_key'"):
        dj.BertConfig(position_embedding_type="relative_key")


def test_question_answering_needs_two_labels():
    with pytest.raises(dj.ConfigError, match="num_labels=3 must be 2 for question answering"):
        dj.DistilBertForQuestionAnswering(dj.DistilBertConfig(num_labels=3))
