"""fill-mask: the likeliest tokens for each [MASK], as transformers' FillMaskPipeline."""

from __future__ import annotations

import logging

import numpy as np

from distilbert_jax import models
from distilbert_jax.pipelines.base import Pipeline, PipelineError, features, softmax


class FillMaskPipeline(Pipeline, task="fill-mask"):
    """transformers' FillMaskPipeline: the top_k tokens for each [MASK], softmaxed over the vocabulary
    (or over `targets`); {score, token, token_str, sequence}."""

    OPTIONS = {"top_k": 5, "targets": None}

    def resolve_options(self, options):
        targets = options["targets"]
        return {**options, "target_ids": self._target_ids(targets) if targets is not None else None}

    def preprocess(self, texts, single, options):
        rows = []
        mask_id = self.tokenizer.mask_token_id
        for i, (encoding,) in enumerate(self.encode(texts)):
            where = "the input" if single else f"input {i}"
            row = features(encoding, masked=[j for j, t in enumerate(encoding.ids) if t == mask_id])
            if not row["masked"]:
                raise PipelineError(f"{where} has no [MASK] token to fill.")
            if len(row["input_ids"]) > self.max_length:
                raise PipelineError(f"{where} has {len(row['input_ids'])} tokens; the model reads at "
                                    f"most {self.max_length}.")
            rows.append([row])
        return rows

    def batch_extras(self, rows, length):
        """Each row's mask positions into the flattened batch, so only they reach the vocabulary."""
        masks = 1 << (max(len(r["masked"]) for r in rows if r) - 1).bit_length()
        pos = np.zeros((len(rows), masks), np.int32)
        for r, row in enumerate(rows):
            if row:
                pos[r, :len(row["masked"])] = np.asarray(row["masked"]) + r * length
        return {"positions": pos}

    def _forward(self, params, batch):
        positions = batch.pop("positions")
        inputs = models.model_inputs(self.model, batch)
        out = self.model.apply({"params": params}, **inputs, logit_positions=positions.reshape(-1))
        return {"mask_logits": out.logits.reshape(*positions.shape, -1)}

    def _exported_outputs(self, outputs, batch):
        logits = outputs["logits"]
        positions = batch["positions"]
        return {"mask_logits": logits.reshape(-1, logits.shape[-1])[positions]}

    def postprocess(self, text, rows, outputs, options):
        (row,), (out,) = rows, outputs
        top_k, target_ids = options["top_k"], options["target_ids"]
        if target_ids is not None and len(target_ids) < top_k:
            top_k = len(target_ids)
        probs = softmax(out["mask_logits"][:len(row["masked"])])
        if target_ids is not None:
            probs = probs[..., target_ids]
        single_mask = len(row["masked"]) == 1
        result = []
        for m, row_probs in enumerate(probs):
            best = np.argsort(-row_probs, kind="stable")[:top_k]
            found = []
            for p in best:
                token = int(target_ids[p]) if target_ids is not None else int(p)
                tokens = np.array(row["input_ids"])
                tokens[row["masked"][m]] = token
                tokens = tokens[tokens != self.tokenizer.pad_token_id]
                found.append({"score": float(row_probs[p]), "token": token,
                              "token_str": self.tokenizer.decode([token]),
                              "sequence": self.tokenizer.decode(tokens, skip_special_tokens=single_mask)})
            result.append(found)
        return result[0] if single_mask else result

    def combine(self, results, texts, single, options):
        return results[0] if single or len(results) == 1 else results  # as transformers

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
