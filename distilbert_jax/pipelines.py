"""`pipeline(task, model=...)`: a checkpoint applied to raw text, called like transformers' pipelines.

    clf = pipeline("text-classification", model="runs/sst2/model")
    clf(["a gripping film", "a waste of time"])   # [{"label": "POSITIVE", "score": 0.98}, ...]

Tasks (transformers' names, call shapes, output fields and post-processing): "fill-mask",
"text-classification" ("sentiment-analysis"), "token-classification" ("ner"),
"question-answering", "feature-extraction", and "sentence-embeddings" (last_hidden_state
mean-pooled over the attention mask, as sentence-transformers uses checkpoints like
all-MiniLM-L6-v2). tests/test_pipelines.py checks each against transformers' own pipelines.

Inputs are encoded by the Rust tokenizer, sorted by length, padded to a few bucket lengths and
batch sizes, and run through one jitted apply per pipeline, so XLA compiles a handful of shapes
however many texts come. Post-processing is numpy on each input's unpadded outputs, ported from
transformers so that labels, spans and character offsets come out the same.

An exported folder (`python -m distilbert_jax.export`) runs the same way: the same encoding and
post-processing around its onnxruntime session (each batch padded to its longest text only) or
its deserialized jax.export call.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax import hf, models
from distilbert_jax.config import ConfigError
from distilbert_jax.data import packing as packing_lib
from distilbert_jax.data.task import bucket_for
from distilbert_jax.tokenizer import Tokenizer, TokenizerError

ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification"}
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)
AGGREGATIONS = ("none", "simple", "first", "average", "max")


class PipelineError(ValueError):
    """A pipeline cannot be built for this task and model, or was called with bad input."""


# ------------------------------------------------------------------------------------------------
# The common part: load, encode, batch into buckets, one jitted apply
# ------------------------------------------------------------------------------------------------

class Pipeline:
    """Holds the model, params, tokenizer and the jitted apply; subclasses add one task's pre- and
    post-processing. Keyword arguments given at construction are defaults for every call.
    `model` may also be an `export.ExportedModel` (params None): its outputs go through
    `_exported_outputs` to the same arrays `_forward` gives."""

    task: str = ""
    head: str | None = None  # the head (models.MODEL_CLASSES key) the task needs; None: any
    per_token: tuple[str, ...] = ()  # outputs with a token axis, cut to each row's length

    def __init__(self, model: nn.Module, params, tokenizer: Tokenizer, *, directory: str | None = None,
                 batch_size: int = 32, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_length: int | None = None, packing: bool = False, **defaults):
        if int(batch_size) < 1:
            raise PipelineError(f"batch_size={batch_size} must be at least 1.")
        self.model, self.params, self.tokenizer = model, params, tokenizer
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or min(tokenizer.model_max_length,
                                                model.config.max_position_embeddings))
        try:
            models.check_fits(model.config, directory or "the model", self.max_length, tokenizer.vocab_size)
        except ConfigError as e:
            raise PipelineError(str(e)) from None
        self.buckets = tuple(sorted({b for b in buckets if b < self.max_length} | {self.max_length}))
        self.packing = bool(packing)
        self.defaults = defaults
        self._check_options(defaults)
        self._fixed_shapes = True  # pad to a few shapes, each compiled once
        from distilbert_jax import export  # here, so `python -m distilbert_jax.export` runs cleanly
        if isinstance(model, export.ExportedModel):
            if self.packing:
                raise PipelineError(f"{directory} is an exported model: it takes whole rows, so "
                                    "packing=True is not available; leave it off.")
            self._fixed_shapes = not model.dynamic_shapes
            self._apply = lambda params, batch: self._exported_outputs(model(batch), batch)
        else:
            self._apply = jax.jit(self._forward)

    # --- what subclasses define ----------------------------------------------------------------
    def _forward(self, params, batch: dict) -> dict:
        """The traced computation: batch (padded arrays) -> dict of output arrays."""
        inputs = models.model_inputs(self.model, batch)
        out = self.model.apply({"params": params}, **inputs)
        return {"logits": out.logits}

    def _exported_outputs(self, outputs: dict, batch: dict) -> dict:
        """What `_forward` returns, from an exported graph's named outputs (numpy arrays)."""
        return {"logits": outputs["logits"]}

    def _options(self) -> set[str]:
        return set()

    def _run(self, inputs, **options):
        raise NotImplementedError

    # --- calling -------------------------------------------------------------------------------
    def __call__(self, inputs=None, **options):
        options = {**self.defaults, **options}
        self._check_options(options)
        return self._run(inputs, **options)

    def _check_options(self, options):
        unknown = sorted(set(options) - self._options())
        if unknown:
            raise PipelineError(f"The {self.task!r} pipeline has no option {unknown[0]!r}; it takes "
                                f"{sorted(self._options()) or 'no options'}.")

    def _texts(self, inputs) -> tuple[list[str], bool]:
        """inputs -> (list of texts, whether one text was given); refuses empty or non-text input."""
        single = isinstance(inputs, str)
        texts = [inputs] if single else inputs
        if not isinstance(texts, (list, tuple)):
            raise PipelineError(f"The {self.task!r} pipeline takes a string or a list of strings, "
                                f"not {type(inputs).__name__}.")
        if not texts:
            raise PipelineError(f"The {self.task!r} pipeline was given an empty list; pass at least one text.")
        for i, text in enumerate(texts):
            _check_text(text, f"input {i}" if not single else "the input")
        return list(texts), single

    def run_features(self, features: list[dict], extra: Callable[[list[dict], int], dict] | None = None
                     ) -> list[dict[str, np.ndarray]]:
        """Runs encoded rows (dicts of input_ids, attention_mask, token_type_ids lists) through the
        model in length buckets; returns each row's outputs with per-token outputs cut to its length.

        `extra(rows, length)` may add task arrays to a padded batch (e.g. mask positions)."""
        results: list[dict | None] = [None] * len(features)
        order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            length = len(features[chunk[-1]]["input_ids"])
            rows = len(chunk)
            if self._fixed_shapes:  # few batch shapes
                length = bucket_for(length, self.buckets)
                rows = min(1 << (len(chunk) - 1).bit_length(), self.batch_size)
            batch = {k: np.zeros((rows, length), np.int32)
                     for k in ("input_ids", "attention_mask", "token_type_ids")}
            for r, i in enumerate(chunk):
                n = len(features[i]["input_ids"])
                for k in batch:
                    batch[k][r, :n] = features[i].get(k, [0] * n)
            if self.packing:
                batch["packing"] = self._packing(batch["attention_mask"], length)
            else:
                batch["attention_mask"][len(chunk):, 0] = 1  # padding rows attend to something
            if extra is not None:
                batch.update(extra([features[i] for i in chunk] + [None] * (rows - len(chunk)), length))
            out = jax.device_get(self._apply(self.params, batch))
            for r, i in enumerate(chunk):
                n = len(features[i]["input_ids"])
                results[i] = {k: (v[r, :n] if k in self.per_token else v[r]) for k, v in out.items()}
        return results

    def _packing(self, attention_mask: np.ndarray, length: int) -> dict[str, np.ndarray]:
        """The batch's texts packed into rows of at least 128 tokens (or the longest's bucket), as
        many as the row-count ladder gives, so few shapes compile (see data/packing.py)."""
        row_length = max(length, bucket_for(min(128, self.max_length), self.buckets))
        rows = packing_lib.Packer(row_length).rows_for([attention_mask])
        return packing_lib.layout(attention_mask, rows, row_length)

    def encode(self, texts, pairs=None, **kwargs) -> list[list[Any]]:
        try:
            return self.tokenizer.encodings(texts, pairs, **kwargs)
        except TokenizerError as e:
            raise PipelineError(str(e)) from None


def _features(encoding) -> dict:
    return {"input_ids": encoding.ids, "attention_mask": encoding.attention_mask,
            "token_type_ids": encoding.type_ids}


def _check_text(text, where: str):
    if not isinstance(text, str):
        raise PipelineError(f"{where} is a {type(text).__name__}, not a string of text.")
    if not text.strip():
        raise PipelineError(f"{where} is an empty string; give each input some text.")


def _softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float32)))


# ------------------------------------------------------------------------------------------------
# fill-mask
# ------------------------------------------------------------------------------------------------

class FillMaskPipeline(Pipeline):
    """transformers' FillMaskPipeline: the top_k tokens for each [MASK], softmaxed over the vocabulary
    (or over `targets`); {score, token, token_str, sequence}."""

    task, head = "fill-mask", "masked_lm"

    def _options(self):
        return {"top_k", "targets"}

    def _forward(self, params, batch):
        positions = batch.pop("positions")
        inputs = models.model_inputs(self.model, batch)
        out = self.model.apply({"params": params}, **inputs, logit_positions=positions.reshape(-1))
        return {"mask_logits": out.logits.reshape(*positions.shape, -1)}

    def _exported_outputs(self, outputs, batch):
        logits = outputs["logits"]
        positions = batch["positions"]
        return {"mask_logits": logits.reshape(-1, logits.shape[-1])[positions]}

    def _run(self, inputs, top_k=5, targets=None):
        texts, single = self._texts(inputs)
        target_ids = self._target_ids(targets) if targets is not None else None
        features = []
        mask_id = self.tokenizer.mask_token_id
        for i, (encoding,) in enumerate(self.encode(texts)):
            f = _features(encoding)
            f["masked"] = [j for j, t in enumerate(encoding.ids) if t == mask_id]
            if not f["masked"]:
                raise PipelineError(f"{'the input' if single else f'input {i}'} has no [MASK] token "
                                    "to fill.")
            if len(f["input_ids"]) > self.max_length:
                raise PipelineError(f"{'the input' if single else f'input {i}'} has "
                                    f"{len(f['input_ids'])} tokens; the model reads at most "
                                    f"{self.max_length}.")
            features.append(f)

        def positions(rows, length):
            masks = 1 << (max(len(r["masked"]) for r in rows if r) - 1).bit_length()
            pos = np.zeros((len(rows), masks), np.int32)
            for r, row in enumerate(rows):
                if row:
                    pos[r, :len(row["masked"])] = np.asarray(row["masked"]) + r * length
            return {"positions": pos}

        outputs = self.run_features(features, positions)
        results = [self._postprocess(f, o["mask_logits"][:len(f["masked"])], top_k, target_ids)
                   for f, o in zip(features, outputs)]
        return results[0] if single or len(results) == 1 else results

    def _postprocess(self, feature, logits, top_k, target_ids):
        if target_ids is not None and len(target_ids) < top_k:
            top_k = len(target_ids)
        probs = _softmax(logits)
        if target_ids is not None:
            probs = probs[..., target_ids]
        single_mask = len(feature["masked"]) == 1
        result = []
        for m, row_probs in enumerate(probs):
            best = np.argsort(-row_probs, kind="stable")[:top_k]
            row = []
            for p in best:
                token = int(target_ids[p]) if target_ids is not None else int(p)
                tokens = np.array(feature["input_ids"])
                tokens[feature["masked"][m]] = token
                tokens = tokens[tokens != self.tokenizer.pad_token_id]
                row.append({"score": float(row_probs[p]), "token": token,
                            "token_str": self.tokenizer.decode([token]),
                            "sequence": self.tokenizer.decode(tokens, skip_special_tokens=single_mask)})
            result.append(row)
        return result[0] if single_mask else result

    def _target_ids(self, targets) -> np.ndarray:
        """transformers' rule: a target in the vocabulary is its id, else its first token's."""
        targets = [targets] if isinstance(targets, str) else list(targets)
        vocab = self.tokenizer.backend.get_vocab()
        ids = []
        for target in targets:
            if target in vocab:
                ids.append(vocab[target])
                continue
            pieces = self.tokenizer.ids([target])[0]
            if pieces:
                logging.getLogger(__name__).warning(
                    "The target %r is not in the vocabulary; using %r.", target,
                    self.tokenizer.convert_ids_to_tokens(pieces[:1])[0])
                ids.append(pieces[0])
        if not ids:
            raise PipelineError(f"None of the targets {targets} can be encoded; pass at least one "
                                "token of the vocabulary.")
        return np.array(list(set(ids)))


# ------------------------------------------------------------------------------------------------
# text-classification
# ------------------------------------------------------------------------------------------------

_BEST_ONLY = object()  # top_k not given


class TextClassificationPipeline(Pipeline):
    """transformers' TextClassificationPipeline: {label, score} with id2label names; softmax over
    labels, sigmoid for one label or multi_label_classification, nothing for regression, or
    `function_to_apply`. Without `top_k` a text gives its best label ([that] for one string);
    `top_k=n` the n best, `top_k=None` all, sorted. A {"text", "text_pair"} dict is a pair."""

    task, head = "text-classification", "sequence_classification"

    def _options(self):
        return {"top_k", "function_to_apply"}

    def _run(self, inputs, top_k=_BEST_ONLY, function_to_apply=None):
        legacy = top_k is _BEST_ONLY  # transformers' output shape when top_k is not given
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items:
            raise PipelineError(
                "The 'text-classification' pipeline takes a string, a {'text', 'text_pair'} dict, "
                f"or a non-empty list of them, not {_describe(inputs)}.")
        texts, pairs = [], []
        for i, item in enumerate(items):
            where = "the input" if single else f"input {i}"
            if isinstance(item, dict):
                if set(item) - {"text", "text_pair"} or "text" not in item:
                    raise PipelineError(f"{where} is a dict with keys {sorted(item)}; a text pair is "
                                        "{'text': ..., 'text_pair': ...}.")
                _check_text(item["text"], where + "'s text")
                if item.get("text_pair") is not None:
                    _check_text(item["text_pair"], where + "'s text_pair")
                texts.append(item["text"])
                pairs.append(item.get("text_pair"))
            else:
                _check_text(item, where)
                texts.append(item)
                pairs.append(None)
        function = self._function(function_to_apply)
        encodings: list = [None] * len(texts)
        for is_pair in (False, True):
            idx = [i for i, p in enumerate(pairs) if (p is not None) == is_pair]
            if idx:
                enc = self.encode([texts[i] for i in idx], [pairs[i] for i in idx] if is_pair else None,
                                  max_length=self.max_length, truncation=True)
                for i, (e,) in zip(idx, enc):
                    encodings[i] = e
        outputs = self.run_features([_features(e) for e in encodings])
        labels = self.model.config.labels
        results = []
        for out in outputs:
            scores = function(out["logits"])
            if legacy:
                best = int(scores.argmax())
                results.append({"label": labels[best], "score": float(scores[best])})
                continue
            ranked = sorted(({"label": labels[j], "score": float(s)} for j, s in enumerate(scores)),
                            key=lambda x: x["score"], reverse=True)
            results.append(ranked if top_k is None else ranked[:top_k])
        if single:  # as transformers: one string without top_k gives [best]; one pair gives best
            return [results[0]] if legacy and isinstance(inputs, str) else results[0]
        return results

    def _function(self, name):
        config = self.model.config
        if name is None:
            if config.problem_type == "regression":
                name = "none"
            elif config.problem_type == "multi_label_classification" or config.num_labels == 1:
                name = "sigmoid"
            else:
                name = "softmax"
        functions = {"softmax": _softmax, "sigmoid": _sigmoid,
                     "none": lambda x: np.asarray(x, np.float32)}
        if str(name).lower() not in functions:
            raise PipelineError(f"function_to_apply={name!r} is not one of {sorted(functions)}.")
        return functions[str(name).lower()]


# ------------------------------------------------------------------------------------------------
# token-classification
# ------------------------------------------------------------------------------------------------

class TokenClassificationPipeline(Pipeline):
    """transformers' TokenClassificationPipeline: per token {entity, score, index, word, start, end},
    or with aggregation_strategy simple/first/average/max per entity {entity_group, score, word,
    start, end}; labels in `ignore_labels` (default ["O"]) are left out. `stride` runs texts longer
    than the model in overlapping windows (not with aggregation "none")."""

    task, head, per_token = "token-classification", "token_classification", ("logits",)

    def _options(self):
        return {"aggregation_strategy", "ignore_labels", "stride"}

    def _run(self, inputs, aggregation_strategy="none", ignore_labels=None, stride=None):
        texts, single = self._texts(inputs)
        strategy = str(getattr(aggregation_strategy, "value", aggregation_strategy)).lower()
        if strategy not in AGGREGATIONS:
            raise PipelineError(f"aggregation_strategy={aggregation_strategy!r} is not one of "
                                f"{list(AGGREGATIONS)}.")
        if stride is not None and strategy == "none":
            raise PipelineError("stride needs an aggregation_strategy other than 'none' to merge "
                                "the windows' entities.")
        ignore_labels = ["O"] if ignore_labels is None else list(ignore_labels)
        windows = self.encode(texts, max_length=self.max_length, truncation=True,
                              stride=stride or 0, return_overflowing_tokens=stride is not None)
        flat = [e for per_text in windows for e in per_text]
        outputs = iter(self.run_features([_features(e) for e in flat]))
        results = []
        for text, per_text in zip(texts, windows):
            entities = []
            for encoding in per_text:
                scores = _softmax(next(outputs)["logits"])
                pre = self._pre_entities(text, encoding, scores)
                entities += [e for e in self._aggregate(pre, strategy)
                             if e.get("entity") not in ignore_labels
                             and e.get("entity_group") not in ignore_labels]
            if len(per_text) > 1:
                entities = _merge_overlapping(entities)
            results.append(entities)
        return results[0] if single else results

    def _pre_entities(self, sentence, encoding, scores):
        pre = []
        for idx, token_scores in enumerate(scores):
            if encoding.special_tokens_mask[idx]:
                continue
            token_id = encoding.ids[idx]
            word = self.tokenizer.convert_ids_to_tokens([token_id])[0]
            start, end = encoding.offsets[idx]
            word_ref = sentence[start:end]
            is_subword = len(word) != len(word_ref)
            if token_id == self.tokenizer.unk_token_id:
                word, is_subword = word_ref, False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end,
                        "index": idx, "is_subword": is_subword})
        return pre

    def _aggregate(self, pre, strategy):
        labels = self.model.config.labels
        if strategy in ("none", "simple"):
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": labels[best], "score": float(p["scores"][best]),
                                 "index": p["index"], "word": p["word"], "start": p["start"],
                                 "end": p["end"]})
            if strategy == "none":
                return entities
        else:
            entities, group = [], None
            for p in pre:
                if group is None:
                    group = [p]
                elif p["is_subword"]:
                    group.append(p)
                else:
                    entities.append(self._aggregate_word(group, strategy))
                    group = [p]
            if group is not None:
                entities.append(self._aggregate_word(group, strategy))
        return self._group_entities(entities)

    def _aggregate_word(self, tokens, strategy):
        labels = self.model.config.labels
        if strategy == "first":
            scores = tokens[0]["scores"]
        elif strategy == "max":
            scores = max(tokens, key=lambda t: t["scores"].max())["scores"]
        else:
            scores = np.nanmean(np.stack([t["scores"] for t in tokens]), axis=0)
        best = int(scores.argmax())
        return {"entity": labels[best], "score": float(scores[best]),
                "word": self.tokenizer.convert_tokens_to_string([t["word"] for t in tokens]),
                "start": tokens[0]["start"], "end": tokens[-1]["end"]}

    def _group_entities(self, entities):
        groups, current = [], []
        for entity in entities:
            if current:
                bi, tag = _tag(entity["entity"])
                _, last_tag = _tag(current[-1]["entity"])
                if tag != last_tag or bi == "B":
                    groups.append(self._group(current))
                    current = []
            current.append(entity)
        if current:
            groups.append(self._group(current))
        return groups

    def _group(self, entities):
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.mean(np.nanmean([e["score"] for e in entities]))),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}


def _tag(name: str) -> tuple[str, str]:
    if name.startswith("B-"):
        return "B", name[2:]
    if name.startswith("I-"):
        return "I", name[2:]
    return "I", name


def _merge_overlapping(entities):
    """Of entities from overlapping windows that overlap, keep the longer (then the likelier)."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    merged, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length
                                            and entity["score"] > previous["score"]):
                previous = entity
        else:
            merged.append(previous)
            previous = entity
    merged.append(previous)
    return merged


# ------------------------------------------------------------------------------------------------
# question-answering
# ------------------------------------------------------------------------------------------------

class QuestionAnsweringPipeline(Pipeline):
    """transformers' QuestionAnsweringPipeline: {score, start, end, answer}, character offsets into
    the context. A context longer than max_seq_len is read in windows overlapping by doc_stride
    tokens; the same answer found in several windows adds up its scores."""

    task, head, per_token = "question-answering", "question_answering", ("start_logits", "end_logits")

    def _options(self):
        return {"top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len",
                "handle_impossible_answer", "align_to_words"}

    def __call__(self, *args, **options):
        examples = _qa_examples(args, options)
        options = {**self.defaults, **options}
        self._check_options(options)
        return self._run(examples, **options)

    def _run(self, examples, top_k=1, doc_stride=None, max_answer_len=15, max_seq_len=None,
             max_question_len=64, handle_impossible_answer=False, align_to_words=True):
        single = len(examples) == 1
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        max_seq_len = min(int(max_seq_len), self.max_length)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise PipelineError(f"doc_stride={doc_stride} is larger than max_seq_len={max_seq_len}.")
        if top_k < 1:
            raise PipelineError(f"top_k={top_k} must be at least 1.")
        if max_answer_len < 1:
            raise PipelineError(f"max_answer_len={max_answer_len} must be at least 1.")
        windows = self.encode([e["question"] for e in examples], [e["context"] for e in examples],
                              max_length=max_seq_len, truncation="only_second", stride=doc_stride,
                              return_overflowing_tokens=True)
        flat = [w for per_example in windows for w in per_example]
        outputs = iter(self.run_features([_features(w) for w in flat]))
        results = []
        for example, per_example in zip(examples, windows):
            answers, min_null_score = [], 1000000.0
            for encoding in per_example:
                out = next(outputs)
                p_mask = [s != 1 for s in encoding.sequence_ids]
                for j, t in enumerate(encoding.ids):
                    if t == self.tokenizer.cls_token_id:
                        p_mask[j] = False
                starts, ends, scores, min_null_score = _select_starts_ends(
                    out["start_logits"][None], out["end_logits"][None], np.array(p_mask)[None],
                    np.array(encoding.attention_mask)[None], min_null_score,
                    top_k * 2 + 10 if align_to_words else top_k, handle_impossible_answer,
                    max_answer_len)
                for s, e, score in zip(starts, ends, scores):
                    start, end = _char_span(encoding, int(s), int(e), align_to_words)
                    text = example["context"][start:end]
                    same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                    if same:
                        same["score"] += score.item()
                    else:
                        answers.append({"score": score.item(), "start": start, "end": end,
                                        "answer": text})
            if handle_impossible_answer:
                answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
            answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
            results.append(answers[0] if len(answers) == 1 else answers)
        return results[0] if single else results

    def _forward(self, params, batch):
        out = self.model.apply({"params": params}, **models.model_inputs(self.model, batch))
        return {"start_logits": out.start_logits, "end_logits": out.end_logits}

    def _exported_outputs(self, outputs, batch):
        return {"start_logits": outputs["start_logits"], "end_logits": outputs["end_logits"]}


def _qa_examples(args, kwargs) -> list[dict]:
    """The question/context forms transformers accepts: {"question", "context"} dicts (or a list of
    them), `question=..., context=...` (strings or lists), or two positional strings."""
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        items = [{"question": args[0], "context": args[1]}]
    elif len(args) == 1:
        items = args[0]
    elif args:
        items = list(args)
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        if isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        elif isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise PipelineError(f"question has {len(question)} items but context has "
                                    f"{len(context)}; give one context per question.")
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        else:
            raise PipelineError("question= and context= take strings or lists of strings.")
    else:
        raise PipelineError("The 'question-answering' pipeline takes {'question': ..., 'context': ...} "
                            "(or a list of them), or question= and context=.")
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, (list, tuple)) or not items:
        raise PipelineError("The 'question-answering' pipeline takes {'question': ..., 'context': ...} "
                            f"dicts or a non-empty list of them, not {_describe(items)}.")
    for i, item in enumerate(items):
        where = "the input" if len(items) == 1 else f"input {i}"
        if not isinstance(item, dict) or "question" not in item or "context" not in item:
            raise PipelineError(f"{where} is {_describe(item)}; each input is a dict with "
                                "'question' and 'context'.")
        _check_text(item["question"], where + "'s question")
        _check_text(item["context"], where + "'s context")
    return list(items)


def _select_starts_ends(start, end, p_mask, attention_mask, min_null_score, top_k,
                        handle_impossible_answer, max_answer_len):
    """transformers' select_starts_ends: span scores from start/end logits [1, length]."""
    desired = np.abs(np.array(p_mask).astype(np.int64) - 1) & attention_mask.astype(np.int64)
    undesired = desired == 0
    start = np.where(undesired, -10000.0, np.asarray(start, np.float32))
    end = np.where(undesired, -10000.0, np.asarray(end, np.float32))
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = _decode_spans(start, end, top_k, max_answer_len, desired)
    return starts, ends, scores, min_null_score


def _decode_spans(start, end, top_k, max_answer_len, desired):
    """transformers' decode_spans: the top_k (start, end) pairs of start * end probability with
    start <= end < start + max_answer_len, kept only where both ends are context tokens."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        best = [np.argmax(flat)]
    elif len(flat) < top_k:
        best = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, top_k)[0:top_k]
        best = idx[np.argsort(-flat[idx])]
    starts, ends = np.unravel_index(best, candidates.shape)[1:]
    # As transformers: nonzero() of the [1, length] mask also yields its row indices (all 0),
    # so position 0 always counts as desired; its probability was set to 0 above.
    keep = np.isin(starts, desired.nonzero()) & np.isin(ends, desired.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def _char_span(encoding, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Token span -> character span in the context, widened to whole words when asked."""
    if align_to_words:
        try:
            start_word, end_word = encoding.token_to_word(s), encoding.token_to_word(e)
            return (encoding.word_to_chars(start_word, sequence_index=1)[0],
                    encoding.word_to_chars(end_word, sequence_index=1)[1])
        except Exception:  # a special token has no word: transformers falls back to offsets too
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]


# ------------------------------------------------------------------------------------------------
# feature-extraction and sentence-embeddings
# ------------------------------------------------------------------------------------------------

class FeatureExtractionPipeline(Pipeline):
    """transformers' FeatureExtractionPipeline: the encoder's last_hidden_state of each text as a
    nested list [1][tokens][hidden] (an array with return_tensors=True)."""

    task, head, per_token = "feature-extraction", None, ("last_hidden_state",)

    def _options(self):
        return {"return_tensors"}

    def _forward(self, params, batch):
        out = self.model.apply({"params": params}, **models.model_inputs(self.model, batch))
        return {"last_hidden_state": out.last_hidden_state}

    def _exported_outputs(self, outputs, batch):
        key = "last_hidden_state" if "last_hidden_state" in outputs else "token_embeddings"
        return {"last_hidden_state": outputs[key]}

    def _run(self, inputs, return_tensors=False):
        texts, single = self._texts(inputs)
        encodings = self.encode(texts, max_length=self.max_length, truncation=True)
        outputs = self.run_features([_features(e) for (e,) in encodings])
        results = [o["last_hidden_state"][None] for o in outputs]
        results = results if return_tensors else [r.tolist() for r in results]
        return results[0] if single else results


class SentenceEmbeddingsPipeline(Pipeline):
    """One vector per text: last_hidden_state averaged over the attention mask (sentence-transformers'
    mean pooling), L2-normalised when `normalize` (by default when the checkpoint's modules.json ends
    in a Normalize module, as all-MiniLM-L6-v2's does). Texts longer than the checkpoint's
    sentence_bert_config.json max_seq_length are truncated there. A list of floats per text, or
    numpy arrays ([hidden] or [texts, hidden]) with return_tensors=True."""

    task, head = "sentence-embeddings", None

    def __init__(self, *args, directory=None, max_length=None, **kwargs):
        settings = sentence_transformers_settings(directory)
        super().__init__(*args, directory=directory,
                         max_length=max_length or settings.get("max_seq_length"), **kwargs)
        self.normalize_default = settings.get("normalize", False)

    def _options(self):
        return {"normalize", "return_tensors"}

    def _forward(self, params, batch):
        out = self.model.apply({"params": params}, **models.model_inputs(self.model, batch))
        mask = batch["attention_mask"].astype(jnp.float32)[..., None]
        hidden = out.last_hidden_state.astype(jnp.float32)
        pooled = (hidden * mask).sum(1) / jnp.maximum(mask.sum(1), 1e-9)
        return {"embedding": pooled}

    def _exported_outputs(self, outputs, batch):
        """Pooled here from the token outputs, so `normalize` works whatever the graph does."""
        key = "last_hidden_state" if "last_hidden_state" in outputs else "token_embeddings"
        mask = batch["attention_mask"].astype(np.float32)[..., None]
        hidden = outputs[key].astype(np.float32)
        return {"embedding": (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)}

    def _run(self, inputs, normalize=None, return_tensors=False):
        texts, single = self._texts(inputs)
        encodings = self.encode(texts, max_length=self.max_length, truncation=True)
        vectors = np.stack([o["embedding"] for o in self.run_features([_features(e) for (e,) in encodings])])
        if self.normalize_default if normalize is None else normalize:
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
        if return_tensors:
            return vectors[0] if single else vectors
        return vectors[0].tolist() if single else vectors.tolist()


def sentence_transformers_settings(directory: str | None) -> dict:
    """max_seq_length and whether a Normalize module follows pooling, from a sentence-transformers
    checkpoint's files (an empty dict for a plain transformers checkpoint)."""
    if not directory:
        return {}
    settings = {}
    try:
        with open(os.path.join(directory, "sentence_bert_config.json"), encoding="utf-8") as f:
            settings["max_seq_length"] = json.load(f).get("max_seq_length")
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(directory, "modules.json"), encoding="utf-8") as f:
            modules = json.load(f)
        settings["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
        if pooling is not None:
            with open(os.path.join(directory, pooling.get("path", ""), "config.json"), encoding="utf-8") as f:
                settings["pooling"] = json.load(f)
    except (OSError, ValueError, AttributeError):
        pass
    pooling = settings.get("pooling")
    if isinstance(pooling, dict) and not pooling.get("pooling_mode_mean_tokens", True):
        raise PipelineError(f"{directory} pools its embeddings by {pooling}; the "
                            "'sentence-embeddings' pipeline does mean pooling only.")
    return settings


# ------------------------------------------------------------------------------------------------
# The entry point
# ------------------------------------------------------------------------------------------------

PIPELINES: dict[str, type[Pipeline]] = {
    "fill-mask": FillMaskPipeline,
    "text-classification": TextClassificationPipeline,
    "token-classification": TokenClassificationPipeline,
    "question-answering": QuestionAnsweringPipeline,
    "feature-extraction": FeatureExtractionPipeline,
    "sentence-embeddings": SentenceEmbeddingsPipeline,
}
TASKS = tuple(PIPELINES) + tuple(ALIASES)


def pipeline(task: str, model, tokenizer=None, *, batch_size: int = 32,
             buckets: Sequence[int] = DEFAULT_BUCKETS, max_length: int | None = None,
             dtype=jnp.float32, matmul_precision: str | None = None, packing: bool = False,
             **defaults) -> Pipeline:
    """A callable that applies `model` to text for `task`, like `transformers.pipeline`.

    model: a checkpoint directory, a hub id, `packaged:all-MiniLM-L6-v2`, a folder written by
    `python -m distilbert_jax.export`, or a (module, params) pair (then pass `tokenizer`). tokenizer: a directory or a `Tokenizer`; by default the model's
    directory. batch_size: texts per forward pass; buckets: the padded lengths (capped at the
    model's positions); max_length: tokens per text (default: the tokenizer's and model's limit).
    dtype: the compute dtype of a loaded checkpoint (e.g. jnp.bfloat16). matmul_precision: the
    model's (`models`: "auto", true float32 for float32 compute, or "high" to allow TF32 on a
    GPU); None keeps a given module's own, and "auto" for a loaded checkpoint. packing: several
    texts share a row (data/packing.py), so padding is not computed; outputs are unchanged.
    Other keyword arguments are defaults for every call (e.g. top_k=3, aggregation_strategy="simple").
    """
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        raise PipelineError(f"Unknown task {task!r}; the tasks are {list(TASKS)}.")
    cls = PIPELINES[name]
    directory = None
    from distilbert_jax import export
    if isinstance(model, (tuple, list)) and len(model) == 2 and isinstance(model[0], nn.Module):
        module, params = model
        if tokenizer is None:
            raise PipelineError("A (module, params) model needs tokenizer= (a directory or a Tokenizer).")
        if cls.head is None:  # features come from the encoder, whatever head the model has
            module, params = _encoder_of(module, params)
        else:
            _check_head(cls, type(module).__name__, _head_of(module), "the given model", task)
    elif export.is_exported(model):
        directory = os.fspath(model)
        try:
            module, params = export.ExportedModel(directory), None
        except export.ExportError as e:
            raise PipelineError(str(e)) from None
        _check_exported_task(module, directory, task, cls)
    elif isinstance(model, (str, os.PathLike)):
        directory = hf.resolve(model)
        config, architectures = hf.read_config(directory)
        if cls.head is not None:
            head = hf.head_from_architectures(config.model_type, architectures)
            _check_head(cls, (architectures or ["a bare encoder"])[0], head, os.fspath(model), task)
        module, params = hf.load_quietly(directory, cls.head or "base", dtype)
    else:
        raise PipelineError(f"model= takes a checkpoint directory, a hub id or a (module, params) "
                            f"pair, not {_describe(model)}.")
    if matmul_precision is not None and isinstance(module, nn.Module):
        module = module.clone(matmul_precision=matmul_precision)
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer if tokenizer is not None else directory)
    return cls(module, params, tokenizer, directory=directory, batch_size=batch_size,
               buckets=buckets, max_length=max_length, packing=packing, **defaults)


def _check_exported_task(exported, directory: str, task: str, cls):
    """An exported graph serves the tasks of its head; feature tasks need the encoder's outputs."""
    from distilbert_jax import export
    head = export.TASKS[exported.task][0]
    serves = head == "base" if cls.head is None else head == cls.head
    if not serves:
        raise PipelineError(f"{directory} was exported for {exported.task!r}; the {task!r} pipeline "
                            f"needs an export made with --task={cls.task}.")


def _head_of(module: nn.Module) -> str | None:
    family = module.config.model_type
    return next((h for h, c in models.MODEL_CLASSES[family].items() if isinstance(module, c)), None)


def _encoder_of(module: nn.Module, params):
    """The bare encoder (module, params) of a model with or without a head."""
    family = module.config.model_type
    encoder = models.MODEL_CLASSES[family]["base"]
    if isinstance(module, encoder):
        return module, params
    params = params[family]
    options = {"add_pooling_layer": "pooler" in params} if family == "bert" else {}
    return encoder(module.config, **module.numerics, **options), params


def _check_head(cls, what: str, head: str | None, where: str, task: str):
    if head != cls.head:
        needs = " or ".join(models.MODEL_CLASSES[f][cls.head].__name__
                            for f in ("distilbert", "bert"))
        raise PipelineError(f"{where} is {'a ' if what.startswith(('Distil', 'Bert')) else ''}{what}; "
                            f"the {task!r} pipeline needs a {needs} checkpoint.")


def _describe(value) -> str:
    text = repr(value)
    return f"a {type(value).__name__} ({text[:40] + '...' if len(text) > 40 else text})"
