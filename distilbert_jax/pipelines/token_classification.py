"""token-classification (ner): a label per token or per entity, with character offsets, as
transformers' TokenClassificationPipeline."""

from __future__ import annotations

import numpy as np

from distilbert_jax.pipelines.base import Pipeline, PipelineError, features, softmax

AGGREGATIONS = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline(Pipeline, task="token-classification"):
    """transformers' TokenClassificationPipeline: per token {entity, score, index, word, start, end},
    or with aggregation_strategy simple/first/average/max per entity {entity_group, score, word,
    start, end}; labels in `ignore_labels` (default ["O"]) are left out. `stride` runs texts longer
    than the model in overlapping windows (not with aggregation "none")."""

    OPTIONS = {"aggregation_strategy": "none", "ignore_labels": None, "stride": None}

    def resolve_options(self, options):
        given = options["aggregation_strategy"]
        strategy = str(getattr(given, "value", given)).lower()
        if strategy not in AGGREGATIONS:
            raise PipelineError(f"aggregation_strategy={given!r} is not one of {list(AGGREGATIONS)}.")
        if options["stride"] is not None and strategy == "none":
            raise PipelineError("stride needs an aggregation_strategy other than 'none' to merge "
                                "the windows' entities.")
        ignore = options["ignore_labels"]
        return {**options, "aggregation_strategy": strategy,
                "ignore_labels": ["O"] if ignore is None else list(ignore)}

    def preprocess(self, texts, single, options):
        """Each text's windows: one, or with `stride` as many as cover it, overlapping by stride."""
        stride = options["stride"]
        windows = self.encode(texts, max_length=self.max_length, truncation=True,
                              stride=stride or 0, return_overflowing_tokens=stride is not None)
        return [[features(e, encoding=e) for e in per_text] for per_text in windows]

    def postprocess(self, text, rows, outputs, options):
        strategy, ignore = options["aggregation_strategy"], options["ignore_labels"]
        entities = []
        for row, out in zip(rows, outputs):
            pre = self._pre_entities(text, row["encoding"], softmax(out["logits"]))
            entities += [e for e in self._aggregate(pre, strategy)
                         if e.get("entity") not in ignore and e.get("entity_group") not in ignore]
        return merge_overlapping(entities) if len(rows) > 1 else entities

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


def merge_overlapping(entities):
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
