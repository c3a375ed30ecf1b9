"""Fine-tune one checkpoint with one recipe here and in transformers (PyTorch), side by side.

    pip install -e ".[reference]"
    python benchmarks/finetune_vs_transformers.py --tasks=rte,mrpc,stsb,cola,wnli,sst2,conll2003 \
        --seeds=42,43,44 --limit=1500 --epochs=2 --out=benchmarks/results/minilm_cpu.json

Both sides see the same examples, encoded by the same `Task` into the same padded batches in the same
order; only the framework differs (model, AdamW with the same no-decay groups, linear warmup/decay,
clipping, dropout). Prints a Markdown table of dev metrics per task (median over seeds) and writes
every run to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from distilbert_jax import hf
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.data.task import eval_batches, train_batches
from distilbert_jax.train import finetune

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "evaldata")
DATA = {"cola": "glue/CoLA", "sst2": "glue/SST-2", "mrpc": "glue/MRPC", "stsb": "glue/STS-B",
        "rte": "glue/RTE", "wnli": "glue/WNLI", "qnli": "glue/QNLI", "conll2003": "conll2003/iob2"}


def recipe(task: str, seed: int, args):
    c = finetune.default_config()
    c.task, c.seed, c.model = task, seed, args.model
    c.data_dir = os.path.join(args.data_root, DATA[task])
    c.max_length, c.buckets = 128, (32, 64, 128)
    c.batch_size, c.eval_batch_size = 32, 64
    c.num_epochs, c.lr, c.warmup_ratio, c.weight_decay = args.epochs, args.lr, 0.1, 0.01
    c.limit_train_examples = args.limit
    c.log_every, c.checkpoint_every, c.eval_every = 50, 10**9, 10**9
    c.save_model = False
    return c


def run_jax(config) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        results = finetune.train_and_evaluate(config, workdir)
        return {"dev": results["eval"]["dev"], "seconds": time.perf_counter() - start}


def run_torch(config) -> dict:
    import torch
    import transformers

    torch.manual_seed(config.seed)
    torch.set_num_threads(os.cpu_count())
    task = finetune.build_task(config)
    directory = hf.resolve(config.model)
    classes = {"sequence_classification": transformers.BertForSequenceClassification,
               "token_classification": transformers.BertForTokenClassification}
    model = classes[task.head].from_pretrained(
        directory, num_labels=task.num_labels, problem_type=task.problem_type,
        attn_implementation="eager")
    # Encoding with our tokenizer is equal to DistilBertTokenizerFast (tests/test_tokenizer.py).
    tokenizer = Tokenizer.from_pretrained(directory)
    train = finetune.encode_split(task, "train", tokenizer, config, True, train=True)
    dev = finetune.encode_split(task, "dev", tokenizer, config, True, train=False)

    steps = int(config.num_epochs * (len(train) // config.batch_size))
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.lr, betas=(config.adam_b1, config.adam_b2), eps=config.adam_eps)
    scheduler = transformers.get_linear_schedule_with_warmup(
        optimizer, int(config.warmup_ratio * steps), steps)
    start = time.perf_counter()
    model.train()
    batches = train_batches(train, config.batch_size, config.seed, 0, tokenizer.pad_token_id,
                            tuple(config.buckets))
    for _ in range(steps):
        batch = {k: torch.as_tensor(v) for k, v in next(batches).items() if k != "weights"}
        if "labels" in batch and task.problem_type != "regression":
            batch["labels"] = batch["labels"].long()
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    lengths = dev.lengths()
    collected, order = [], []
    with torch.no_grad():
        for rows, batch in eval_batches(dev, config.eval_batch_size, tokenizer.pad_token_id,
                                        tuple(config.buckets)):
            inputs = {k: torch.as_tensor(batch[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
            logits = model(**inputs).logits.float().numpy()
            for i, row in enumerate(rows):
                collected.append(logits[i, : lengths[row]] if task.per_token_outputs else logits[i])
                order.append(int(row))
    outputs = [collected[i] for i in np.argsort(order)]
    outputs = {"logits": outputs if task.per_token_outputs else np.stack(outputs)}
    return {"dev": task.evaluate(dev, outputs), "seconds": time.perf_counter() - start}


def table(runs: list[dict]) -> str:
    rows = ["| task | metric | distilbert-jax | transformers (PyTorch) | seeds | seconds/run (jax, torch) |",
            "|---|---|---:|---:|---:|---|"]
    tasks = sorted({r["task"] for r in runs}, key=list(DATA).index)
    for task in tasks:
        by = {fw: [r for r in runs if r["task"] == task and r["framework"] == fw] for fw in ("jax", "torch")}
        metrics = list((by["jax"] or by["torch"])[0]["dev"])
        for metric in metrics:
            cells = []
            for fw in ("jax", "torch"):
                values = [100 * r["dev"][metric] for r in by[fw]]
                cells.append(f"{statistics.median(values):.1f}" if values else "–")
            seconds = [f"{statistics.median([r['seconds'] for r in by[fw]]):.0f}" if by[fw] else "–"
                       for fw in ("jax", "torch")]
            rows.append(f"| {task} | {metric} | {cells[0]} | {cells[1]} | "
                        f"{len(by['jax'])}/{len(by['torch'])} | {', '.join(seconds)} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="rte,mrpc,stsb,cola,wnli,sst2,conll2003")
    parser.add_argument("--seeds", default="42")
    parser.add_argument("--frameworks", default="jax,torch")
    parser.add_argument("--model", default=hf.PACKAGED_MINILM)
    parser.add_argument("--data-root", default=SHARED)
    parser.add_argument("--limit", type=int, default=1500, help="training examples per task (0: all)")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    runs = []
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            runs = json.load(f)["runs"]
    done = {(r["task"], r["seed"], r["framework"]) for r in runs}
    for task in args.tasks.split(","):
        for seed in map(int, args.seeds.split(",")):
            for framework in args.frameworks.split(","):
                if (task, seed, framework) in done:
                    continue
                config = recipe(task, seed, args)
                result = (run_jax if framework == "jax" else run_torch)(config)
                runs.append({"task": task, "seed": seed, "framework": framework, **result})
                print(f"{task} seed={seed} {framework}: {result}", file=sys.stderr, flush=True)
                if args.out:
                    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
                    with open(args.out + ".tmp", "w") as f:
                        json.dump({"recipe": {"model": args.model, "limit": args.limit,
                                              "epochs": args.epochs, "lr": args.lr, "batch_size": 32,
                                              "max_length": 128, "warmup_ratio": 0.1,
                                              "weight_decay": 0.01}, "runs": runs}, f, indent=1)
                    os.replace(args.out + ".tmp", args.out)
    print(table(runs))


if __name__ == "__main__":
    main()
