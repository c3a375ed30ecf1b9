"""Real tokens per second of GLUE fine-tuning and evaluation: packed rows, today's length buckets, and
transformers (PyTorch) with DataCollatorWithPadding, side by side in one run.

    pip install -e ".[reference]"
    python benchmarks/packing_throughput.py --tasks=sst2,mrpc,stsb,cola --steps=12 \
        --out=benchmarks/results/packing_cpu.json

Every side trains all-MiniLM-L6-v2 (batch 32, max length 128, AdamW with clipping, dropout on) on the
same shuffled examples in the same order and evaluates the dev split. A "real token" is a token of an
example (padding excluded); "computed" counts the token slots the encoder runs on. Steady state leaves
out the steps that compiled a new shape (JAX) or the first step (PyTorch); "with compiles" is real
tokens over the whole wall time (evaluation: its first pass, which compiles; steady: its second).
The dev metric of the JAX sides is computed with the same params
(those the bucketed run reached), so packed and bucketed evaluation must agree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from distilbert_jax import hf, sharding
from distilbert_jax.data.task import eval_batches, train_batches
from distilbert_jax.train import finetune
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import computed_tokens, make_step

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "evaldata")
DATA = {"cola": "glue/CoLA", "sst2": "glue/SST-2", "mrpc": "glue/MRPC", "stsb": "glue/STS-B"}


def recipe(task: str, args, packing: bool):
    c = finetune.default_config()
    c.task, c.model, c.seed = task, args.model, 42
    c.data_dir = os.path.join(args.data_root, DATA[task])
    c.max_length, c.buckets, c.batch_size, c.eval_batch_size = 128, (32, 64, 128), 32, 64
    c.lr, c.weight_decay, c.packing = 5e-5, 0.01, packing
    c.limit_train_examples = 32 * (args.steps + 1)
    c.limit_eval_examples = args.eval_limit
    return c


def _shapes(batch) -> tuple:
    return tuple(np.shape(x) for x in jax.tree.leaves(batch))


def run_jax(task: str, args, packing: bool, eval_params=None) -> dict:
    config = recipe(task, args, packing)
    layout = sharding.Layout(sharding.make_mesh("dp", jax.devices()[:1]), sharding.RULES)
    job = finetune.build_task(config)
    model = finetune.abstract_model(config, job)
    tokenizer = finetune.load_tokenizer(config, model)
    params = finetune.load_params(config, job, layout.params(model))
    train = finetune.encode_split(job, "train", tokenizer, config, train=True)
    dev = finetune.encode_split(job, "dev", tokenizer, config, train=False)
    tx, _ = train_state.optimizer(config, args.steps)
    state, shardings = train_state.create(model, params, tx, config.seed, layout)
    step = make_step(finetune.loss_fn(model, job.head), tx, layout, shardings)
    batches = train_batches(train, 32, config.seed, 0, tokenizer.pad_token_id, tuple(config.buckets),
                            packer=finetune.packer_of(config, layout.data_ways))
    seen, steady, real, computed = set(), [], [], []
    started = time.perf_counter()
    for _ in range(args.steps):
        batch = next(batches)
        shape = _shapes(batch)
        t0 = time.perf_counter()
        state, metrics = step(state, None, layout.put_batch(batch))
        metrics = jax.device_get(metrics)
        if shape in seen:
            steady.append((time.perf_counter() - t0, metrics["batch/tokens"]))
        seen.add(shape)
        real.append(metrics["batch/tokens"])
        computed.append(metrics["batch/computed_tokens"])
    train_wall = time.perf_counter() - started
    params = state.params if eval_params is None else eval_params
    eval_step = finetune.make_eval_step(model, shardings.params, layout)
    packer = finetune.packer_of(config, layout.data_ways)
    eval_layouts = [b["inputs"] for _, b in eval_batches(dev, 64, tokenizer.pad_token_id,
                                                         tuple(config.buckets), packer=packer)]
    walls = []
    for _ in range(2):  # the first pass compiles each shape, the second is steady state
        t0 = time.perf_counter()
        outputs = finetune.predict(eval_step, params, job, dev, 64, tokenizer.pad_token_id,
                                   tuple(config.buckets), layout, packer)
        walls.append(time.perf_counter() - t0)
    eval_real = int(sum(dev.lengths()))
    eval_computed = sum(computed_tokens(inputs) for inputs in eval_layouts)
    return {"train": {"steady_tokens_per_sec": sum(t for _, t in steady) / sum(s for s, _ in steady),
                      "tokens_per_sec_with_compiles": sum(real) / train_wall,
                      "real_fraction": sum(real) / sum(computed), "compiled_shapes": len(seen),
                      "steps": args.steps},
            "eval": {"tokens_per_sec_with_compiles": eval_real / walls[0],
                     "steady_tokens_per_sec": eval_real / walls[1],
                     "real_fraction": eval_real / eval_computed,
                     "compiled_shapes": len({_shapes(inputs) for inputs in eval_layouts}),
                     "dev": job.evaluate(dev, outputs)},
            "params": state.params}


def run_torch(task: str, args) -> dict:
    import torch
    import transformers

    torch.manual_seed(42)
    torch.set_num_threads(os.cpu_count())
    config = recipe(task, args, False)
    job = finetune.build_task(config)
    directory = hf.resolve(config.model)
    model = transformers.BertForSequenceClassification.from_pretrained(
        directory, num_labels=job.num_labels, problem_type=job.problem_type)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
    collator = transformers.DataCollatorWithPadding(hf_tokenizer, return_tensors="pt")
    from distilbert_jax.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_pretrained(directory)
    train = finetune.encode_split(job, "train", tokenizer, config, train=True)
    dev = finetune.encode_split(job, "dev", tokenizer, config, train=False)

    def examples(features, rows, with_labels=True):
        out = []
        for r in rows:
            ex = {"input_ids": features.inputs["input_ids"][r].tolist(),
                  "token_type_ids": features.inputs["token_type_ids"][r].tolist()}
            if with_labels:
                label = features.targets["labels"][r]
                ex["labels"] = float(label) if job.problem_type == "regression" else int(label)
            out.append(ex)
        return out

    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    steady, real = [], []
    started = time.perf_counter()
    for k in range(args.steps):  # the same examples in the same order as train_batches
        order = np.random.default_rng([config.seed, 0]).permutation(len(train))
        batch = collator(examples(train, order[k * 32:(k + 1) * 32]))
        t0 = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        tokens = int(batch["attention_mask"].sum())
        if k:
            steady.append((time.perf_counter() - t0, tokens))
        real.append((tokens, batch["input_ids"].numel()))
    train_wall = time.perf_counter() - started
    model.eval()
    logits, computed = [], 0
    t0 = time.perf_counter()
    with torch.no_grad():  # the Trainer's evaluation: dataset order, batches padded to their longest
        for start in range(0, len(dev), 64):
            batch = collator(examples(dev, range(start, min(start + 64, len(dev))), False))
            computed += batch["input_ids"].numel()
            logits.append(model(**batch).logits.float().numpy())
    eval_wall = time.perf_counter() - t0
    eval_real = int(sum(dev.lengths()))
    return {"train": {"steady_tokens_per_sec": sum(t for _, t in steady) / sum(s for s, _ in steady),
                      "tokens_per_sec_with_compiles": sum(t for t, _ in real) / train_wall,
                      "real_fraction": sum(t for t, _ in real) / sum(c for _, c in real),
                      "steps": args.steps},
            "eval": {"tokens_per_sec_with_compiles": eval_real / eval_wall,
                     "steady_tokens_per_sec": eval_real / eval_wall,
                     "real_fraction": eval_real / computed,
                     "dev": job.evaluate(dev, {"logits": np.concatenate(logits)})}}


def table(results: dict) -> str:
    rows = ["| task | side | train real tok/s (steady) | with compiles | real/computed | shapes "
            "| eval real tok/s (steady) | with compiles | real/computed | shapes | dev metric |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for task, sides in results.items():
        for side in ("packed", "buckets", "transformers"):
            if side not in sides:
                continue
            r = sides[side]
            metric = ", ".join(f"{k} {v:.4f}" for k, v in r["eval"]["dev"].items())
            rows.append(
                f"| {task} | {side} | {r['train']['steady_tokens_per_sec']:,.0f} "
                f"| {r['train']['tokens_per_sec_with_compiles']:,.0f} | {r['train']['real_fraction']:.2f} "
                f"| {r['train'].get('compiled_shapes', '–')} | {r['eval']['steady_tokens_per_sec']:,.0f} "
                f"| {r['eval']['tokens_per_sec_with_compiles']:,.0f} | {r['eval']['real_fraction']:.2f} "
                f"| {r['eval'].get('compiled_shapes', '–')} | {metric} |")
        if {"packed", "transformers", "buckets"} <= set(sides):
            ratio = lambda part, a, b: (sides[a][part]["steady_tokens_per_sec"]
                                        / sides[b][part]["steady_tokens_per_sec"])
            rows.append(f"| {task} | packed ÷ | {ratio('train', 'packed', 'transformers'):.2f}x "
                        f"transformers, {ratio('train', 'packed', 'buckets'):.2f}x buckets | | | "
                        f"| {ratio('eval', 'packed', 'transformers'):.2f}x transformers, "
                        f"{ratio('eval', 'packed', 'buckets'):.2f}x buckets | | | | |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,mrpc,stsb,cola")
    parser.add_argument("--sides", default="buckets,packed,transformers")
    parser.add_argument("--model", default=hf.PACKAGED_MINILM)
    parser.add_argument("--data-root", default=SHARED)
    parser.add_argument("--steps", type=int, default=12, help="training updates timed per side")
    parser.add_argument("--eval-limit", type=int, default=512, help="dev examples evaluated")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    results = {}
    for task in args.tasks.split(","):
        sides, params = {}, None
        for side in args.sides.split(","):
            if side == "transformers":
                sides[side] = run_torch(task, args)
            else:
                sides[side] = run_jax(task, args, side == "packed", params)
                trained = sides[side].pop("params")
                params = trained if params is None else params
            print(f"{task} {side}: {json.dumps(sides[side])}", file=sys.stderr, flush=True)
        results[task] = sides
        if args.out:
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out, "w") as f:
                json.dump({"machine": f"{os.cpu_count()} CPU cores, jax {jax.__version__}",
                           "args": vars(args), "results": results}, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
