"""Loads the packaged all-MiniLM-L6-v2, encodes sentences, and prints their similarities.

    python -m distilbert_jax.quickstart
"""

import time

import jax.numpy as jnp

import distilbert_jax as dj
from distilbert_jax import hf

SENTENCES = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The stock market fell sharply today.",
]


def main():
    start = time.perf_counter()
    path = hf.packaged_minilm()
    model, params = dj.from_pretrained(path)
    tok = dj.Tokenizer.from_pretrained(path)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    out = model.apply({"params": params}, enc["input_ids"], attention_mask=enc["attention_mask"])
    mask = enc["attention_mask"][..., None]
    emb = (out.last_hidden_state * mask).sum(1) / mask.sum(1)  # mean pooling, as sentence-transformers
    emb = emb / jnp.linalg.norm(emb, axis=-1, keepdims=True)
    print(f"{type(model).__name__} from {path}")
    print(f"input_ids {enc['input_ids'].shape}, last_hidden_state {out.last_hidden_state.shape}")
    sims = emb @ emb.T
    for i, sentence in enumerate(SENTENCES):
        print(f"  {sentence:<42} " + " ".join(f"{float(s):.3f}" for s in sims[i]))
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
