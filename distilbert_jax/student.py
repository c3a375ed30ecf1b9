"""A DistilBERT student built from its BERT teacher: the config, the layer choice, the weights.

Layer rule: student layer i takes teacher layer round(i · (T − 1) / (S − 1)) (half to even), the
evenly spaced choice that keeps the first and the last layer; for 12 → 6 it gives the reference
[0, 2, 4, 7, 9, 11], for 6 → 3 it gives [0, 2, 5]. Token-type embeddings are dropped (not folded in),
as in the reference extraction script; the MLM head (transform, LayerNorm, output bias) is copied.
"""

from __future__ import annotations

import numpy as np

from distilbert_jax.config import BertConfig, ConfigError, DistilBertConfig

# student block path -> teacher layer path, both relative to one layer
_LAYER_MAP = {
    ("attention", "q_lin"): ("attention", "self", "query"),
    ("attention", "k_lin"): ("attention", "self", "key"),
    ("attention", "v_lin"): ("attention", "self", "value"),
    ("attention", "out_lin"): ("attention", "output", "dense"),
    ("sa_layer_norm",): ("attention", "output", "LayerNorm"),
    ("ffn", "lin1"): ("intermediate", "dense"),
    ("ffn", "lin2"): ("output", "dense"),
    ("output_layer_norm",): ("output", "LayerNorm"),
}
_HEAD_MAP = {
    ("vocab_transform",): ("cls", "predictions", "transform", "dense"),
    ("vocab_layer_norm",): ("cls", "predictions", "transform", "LayerNorm"),
}


def teacher_layers(teacher_depth: int, student_depth: int) -> list[int]:
    """Which teacher layer initialises each student layer (see the module docstring)."""
    if not 1 <= student_depth <= teacher_depth:
        raise ConfigError(f"A {student_depth}-layer student cannot be taken from a "
                          f"{teacher_depth}-layer teacher.")
    if student_depth == 1:
        return [teacher_depth - 1]
    return [int(x) for x in np.round(np.linspace(0, teacher_depth - 1, student_depth))]


def student_config(teacher: BertConfig, n_layers: int, **overrides) -> DistilBertConfig:
    """The DistilBERT config with the teacher's widths, vocabulary and dropout."""
    if teacher.layer_norm_eps != DistilBertConfig.layer_norm_eps:
        raise ConfigError(f"The teacher's layer_norm_eps={teacher.layer_norm_eps} differs from "
                          f"DistilBERT's fixed {DistilBertConfig.layer_norm_eps}.")
    return DistilBertConfig(
        vocab_size=teacher.vocab_size, max_position_embeddings=teacher.max_position_embeddings,
        n_layers=n_layers, n_heads=teacher.num_attention_heads, dim=teacher.hidden_size,
        hidden_dim=teacher.intermediate_size, activation=teacher.hidden_act,
        dropout=teacher.hidden_dropout_prob, attention_dropout=teacher.attention_probs_dropout_prob,
        initializer_range=teacher.initializer_range, pad_token_id=teacher.pad_token_id,
        tie_word_embeddings=teacher.tie_word_embeddings).replace(**overrides)


def init_from_teacher(student_params, teacher_params, layers: list[int]):
    """DistilBertForMaskedLM params with the teacher's weights copied in where the reference copies
    them; the rest of `student_params` (e.g. an MLM head a bare teacher lacks) is kept.

    teacher_params: a BertForMaskedLM tree ({"bert": ..., "cls": ...}) or a BertModel tree.
    Returns (params, list of student paths that were not copied).
    """
    bert = teacher_params.get("bert", teacher_params)
    student = _copy_tree(student_params)
    encoder = student["distilbert"]
    for name in ("word_embeddings", "position_embeddings", "LayerNorm"):
        _assign(encoder["embeddings"], name, bert["embeddings"][name], ("embeddings", name))
    teacher_blocks = bert["encoder"]["layer"]
    for i, layer in enumerate(layers):
        block = encoder["transformer"]["layer"][str(i)]
        for student_path, teacher_path in _LAYER_MAP.items():
            source = _get(teacher_blocks[str(layer)], teacher_path)
            _assign(_get(block, student_path[:-1]), student_path[-1], source, student_path)
    not_copied = []
    if "cls" in teacher_params:
        for student_path, teacher_path in _HEAD_MAP.items():
            _assign(student, student_path[0], _get(teacher_params, teacher_path), student_path)
        bias = teacher_params["cls"]["predictions"]["bias"]
        _assign(student["vocab_projector"], "bias", bias, ("vocab_projector", "bias"))
    else:
        not_copied = ["vocab_transform", "vocab_layer_norm", "vocab_projector/bias"]
    return student, not_copied


def _get(tree, path):
    for key in path:
        tree = tree[key]
    return tree


def _assign(parent, key, value, path):
    target = parent[key]
    shapes = {k: np.shape(v) for k, v in target.items()} if isinstance(target, dict) else np.shape(target)
    given = {k: np.shape(v) for k, v in value.items()} if isinstance(value, dict) else np.shape(value)
    if shapes != given:
        raise ConfigError(f"Teacher and student disagree at {'/'.join(path)}: {given} vs {shapes}.")
    parent[key] = value


def _copy_tree(tree):
    return {k: _copy_tree(v) if isinstance(v, dict) else v for k, v in tree.items()}
