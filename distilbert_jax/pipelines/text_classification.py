"""text-classification (sentiment-analysis): labels and scores for a text or a text pair, as
transformers' TextClassificationPipeline."""

from __future__ import annotations

import numpy as np

from distilbert_jax.pipelines.base import (Pipeline, PipelineError, check_text, describe, features,
                                           sigmoid, softmax)

BEST_ONLY = object()  # top_k not given: transformers' older output shape, the best label only


class TextClassificationPipeline(Pipeline, task="text-classification"):
    """transformers' TextClassificationPipeline: {label, score} with id2label names; softmax over
    labels, sigmoid for one label or multi_label_classification, nothing for regression, or
    `function_to_apply`. Without `top_k` a text gives its best label ([that] for one string);
    `top_k=n` the n best, `top_k=None` all, sorted. A {"text", "text_pair"} dict is a pair."""

    OPTIONS = {"top_k": BEST_ONLY, "function_to_apply": None}

    def parse_inputs(self, args, options):
        if len(args) > 1:
            raise PipelineError("The 'text-classification' pipeline takes one input (a text, a pair "
                                "or a list of them); options go by name.")
        inputs = args[0] if args else options.pop("inputs", None)
        single = isinstance(inputs, (str, dict))
        items = [inputs] if single else inputs
        if not isinstance(items, (list, tuple)) or not items:
            raise PipelineError(
                "The 'text-classification' pipeline takes a string, a {'text', 'text_pair'} dict, "
                f"or a non-empty list of them, not {describe(inputs)}.")
        for i, item in enumerate(items):
            where = "the input" if single else f"input {i}"
            if isinstance(item, dict):
                if set(item) - {"text", "text_pair"} or "text" not in item:
                    raise PipelineError(f"{where} is a dict with keys {sorted(item)}; a text pair is "
                                        "{'text': ..., 'text_pair': ...}.")
                check_text(item["text"], where + "'s text")
                if item.get("text_pair") is not None:
                    check_text(item["text_pair"], where + "'s text_pair")
            else:
                check_text(item, where)
        return list(items), single

    def resolve_options(self, options):
        return {**options, "function": self._function(options["function_to_apply"])}

    def preprocess(self, items, single, options):
        texts = [i["text"] if isinstance(i, dict) else i for i in items]
        pairs = [i.get("text_pair") if isinstance(i, dict) else None for i in items]
        rows: list = [None] * len(texts)
        for is_pair in (False, True):  # texts and pairs encoded apart, each in one batch
            idx = [i for i, p in enumerate(pairs) if (p is not None) == is_pair]
            if idx:
                enc = self.encode([texts[i] for i in idx], [pairs[i] for i in idx] if is_pair else None,
                                  max_length=self.max_length, truncation=True)
                for i, (e,) in zip(idx, enc):
                    rows[i] = [features(e)]
        return rows

    def postprocess(self, item, rows, outputs, options):
        labels = self.model.config.labels
        scores = options["function"](outputs[0]["logits"])
        if options["top_k"] is BEST_ONLY:
            best = int(scores.argmax())
            return {"label": labels[best], "score": float(scores[best])}
        ranked = sorted(({"label": labels[j], "score": float(s)} for j, s in enumerate(scores)),
                        key=lambda x: x["score"], reverse=True)
        return ranked if options["top_k"] is None else ranked[:options["top_k"]]

    def combine(self, results, items, single, options):
        if single:  # as transformers: one string without top_k gives [best]; one pair gives best
            return [results[0]] if options["top_k"] is BEST_ONLY and isinstance(items[0], str) else results[0]
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
        functions = {"softmax": softmax, "sigmoid": sigmoid,
                     "none": lambda x: np.asarray(x, np.float32)}
        if str(name).lower() not in functions:
            raise PipelineError(f"function_to_apply={name!r} is not one of {sorted(functions)}.")
        return functions[str(name).lower()]
