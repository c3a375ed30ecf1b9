"""The plan (distilbert_jax.plan) of the paper's two TPU workloads, compiled on this host:

- the paper's distillation (configs/distill.py:paper: BERT-base teacher, 6-layer student, sequences
  of 512, 4,000 sequences per update through 50 accumulated micro-batches), bfloat16;
- DistilBERT-base GLUE fine-tuning (configs/glue.py:sst2: batch 32, length 128), bfloat16;

on v4-8, v5e-16, v5p-8 and v6e-8 over the dp, fsdp and fsdp_tp meshes, and the largest micro-batch
of 512-token sequences the distillation step fits on one v5e chip (16 GiB). The models are the
published bert-base-uncased and distilbert-base-uncased configs (their config.json fields below);
the vocabulary is the uncased 30,522-token WordPiece the packaged all-MiniLM-L6-v2 ships, the same
as theirs. No weights or data are read.

    python benchmarks/tpu_plan.py --out=benchmarks/results/tpu_plan.json [--topologies=v5e-16,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from distilbert_jax import hf, plan
from distilbert_jax.configs import default

BERT_BASE = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 30522,
             "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
             "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
             "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12, "pad_token_id": 0}
DISTILBERT_BASE = {"architectures": ["DistilBertForMaskedLM"], "model_type": "distilbert",
                   "vocab_size": 30522, "dim": 768, "n_layers": 6, "n_heads": 12, "hidden_dim": 3072,
                   "activation": "gelu", "dropout": 0.1, "attention_dropout": 0.1,
                   "max_position_embeddings": 512, "sinusoidal_pos_embds": False,
                   "initializer_range": 0.02, "qa_dropout": 0.1, "seq_classif_dropout": 0.2,
                   "tie_weights_": True, "pad_token_id": 0}
TOPOLOGIES = ("v4-8", "v5litepod-16", "v5p-8", "v6e-8")
MESHES = ("dp", "fsdp", "fsdp_tp")


def model_dir(root: str, name: str, config: dict) -> str:
    """A checkpoint folder with `config` and the packaged uncased vocabulary, and no weights."""
    directory = os.path.join(root, name)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    minilm = hf.packaged_minilm()
    for file in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if os.path.exists(os.path.join(minilm, file)):
            shutil.copy(os.path.join(minilm, file), directory)
    return directory


def recipes(root: str) -> dict:
    glue = default.finetune()
    glue.update(model=model_dir(root, "distilbert-base-uncased", DISTILBERT_BASE), task="sst2",
                data_dir=root, dtype="bfloat16", max_length=128, buckets=(128,), batch_size=32,
                eval_batch_size=128, max_steps=6315)  # 3 epochs of SST-2's 67,349 sentences
    paper = default.distill()
    paper.update(teacher=model_dir(root, "bert-base-uncased", BERT_BASE), dtype="bfloat16",
                 teacher_dtype="bfloat16", max_steps=0)
    return {"glue_sst2": glue, "distill_paper": paper}


def largest_micro_batch(config, topology: str = "v5litepod-1", low: int = 128, high: int = 256,
                        step: int = 16) -> dict:
    """The most 512-token sequences one chip's distillation step fits (a micro-batch: accumulation 1)
    between `low` (known to fit) and `high` (known not to), to `step`, by bisection over compiles,
    each one recorded."""
    tried = {}
    while high - low > step:
        middle = (low + high) // (2 * step) * step
        trial = config.copy_and_resolve_references()
        trial.update(batch_size=middle, grad_accum_steps=1)
        record = plan.plan(trial, topology, "dp", log=lambda line: None)["records"][0]
        tried[middle] = {k: record.get(k) for k in ("fits", "hbm_bytes_per_chip", "compile_s", "error")}
        print(f"  {middle} x 512 on one chip: {'fits' if record['fits'] else 'does not fit'} "
              f"({(record['hbm_bytes_per_chip'] or 0) / 2**30:.2f} GiB, {record['compile_s']:.0f} s)",
              flush=True)
        low, high = (middle, high) if record["fits"] else (low, middle)
    return {"largest_fitting": low, "tried": tried}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/tpu_plan.json")
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES))
    parser.add_argument("--meshes", default=",".join(MESHES))
    parser.add_argument("--recipes", default="glue_sst2,distill_paper")
    parser.add_argument("--largest", action="store_true", help="also bisect the largest micro-batch")
    args = parser.parse_args()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    import jax
    jax.config.update("jax_platforms", "cpu")
    results = json.load(open(args.out)) if os.path.exists(args.out) else {}
    with tempfile.TemporaryDirectory() as root:
        configs = recipes(root)
        for name in args.recipes.split(","):
            for topology in args.topologies.split(","):
                for mesh in args.meshes.split(","):
                    print(f"{name} on {topology}, mesh {mesh}", flush=True)
                    started = time.perf_counter()
                    result = plan.plan(configs[name], topology, mesh)
                    result["wall_s"] = time.perf_counter() - started
                    results.setdefault(name, {}).setdefault(topology, {})[mesh] = result
                    with open(args.out, "w") as f:
                        json.dump(results, f, indent=1)
        if args.largest:
            results["distill_largest_micro_batch_v5e"] = largest_micro_batch(configs["distill_paper"])
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
