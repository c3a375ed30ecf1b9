"""Fine-tune one checkpoint with one recipe here and in transformers (PyTorch), side by side.

    pip install -e ".[reference]"
    python benchmarks/finetune_vs_transformers.py --tasks=rte,mrpc,stsb,cola,wnli,sst2,conll2003 \
        --seeds=42,43,44 --limit=1500 --epochs=2 --out=benchmarks/results/minilm_cpu.json

Both sides see the same examples, encoded by the same `Task` into the same padded batches in the same
order; only the framework differs (model, AdamW with the same no-decay groups, linear warmup/decay,
clipping, dropout). Prints a Markdown table of dev metrics per task (median over seeds) and writes
every run to --out.

`--variant=same_init` also starts both sides from one saved initial model (the new head drawn once,
here) and `--variant=same_init_no_dropout` in addition turns dropout off: what is left between the two
sides is then floating-point rounding, since one update is equal to 1e-5 (tests/test_parity.py).
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


VARIANTS = ("default", "same_init", "same_init_no_dropout")


def recipe(task: str, seed: int, args, model: str):
    c = finetune.default_config()
    c.task, c.seed, c.model = task, seed, model
    c.data_dir = os.path.join(args.data_root, DATA[task])
    c.max_length, c.buckets = 128, (32, 64, 128)
    c.batch_size, c.eval_batch_size = 32, 64
    c.num_epochs, c.lr, c.warmup_ratio, c.weight_decay = args.epochs, args.lr, 0.1, 0.01
    c.limit_train_examples = args.limit
    c.log_every, c.checkpoint_every, c.eval_every = 50, 10**9, 10**9
    c.save_model = False
    return c


def save_initial_model(config, variant: str, out_dir: str) -> str:
    """The model both sides start from: the checkpoint with this seed's new head (and no dropout)."""
    task = finetune.build_task(config)
    directory = hf.resolve(config.model)
    saved, _ = hf.read_config(directory)
    overrides = ({field: 0.0 for field in saved.dropout_fields()}
                 if variant == "same_init_no_dropout" else {})
    if task.label_names:
        overrides = {**overrides, "id2label": tuple(task.label_names)}
    model, params = hf.from_pretrained(directory, head=task.head, num_labels=task.num_labels,
                                       seed=config.seed, problem_type=task.problem_type, **overrides)
    hf.save_pretrained(out_dir, model, params, Tokenizer.from_pretrained(directory))
    return out_dir


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
    train = finetune.encode_split(task, "train", tokenizer, config, train=True)
    dev = finetune.encode_split(task, "dev", tokenizer, config, train=False)

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
        batch = {k: torch.as_tensor(v) for part in next(batches).values() for k, v in part.items()}
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
            inputs = {k: torch.as_tensor(v) for k, v in batch["inputs"].items()}
            logits = model(**inputs).logits.float().numpy()
            for i, row in enumerate(rows):
                collected.append(logits[i, : lengths[row]] if task.per_token_outputs else logits[i])
                order.append(int(row))
    outputs = [collected[i] for i in np.argsort(order)]
    outputs = {"logits": outputs if task.per_token_outputs else np.stack(outputs)}
    return {"dev": task.evaluate(dev, outputs), "seconds": time.perf_counter() - start}


def table(runs: list[dict]) -> str:
    """One row per task, variant and metric: the median over seeds and, with several, each seed's value."""
    rows = ["| task | variant | metric | seeds | distilbert-jax: median (per seed) "
            "| transformers: median (per seed) |", "|---|---|---|---:|---|---|"]
    groups = sorted({(r["task"], r.get("variant", "default")) for r in runs},
                    key=lambda g: (list(DATA).index(g[0]), VARIANTS.index(g[1])))
    for task, variant in groups:
        by = {fw: sorted((r for r in runs if r["task"] == task and r["framework"] == fw
                          and r.get("variant", "default") == variant), key=lambda r: r["seed"])
              for fw in ("jax", "torch")}
        for metric in (by["jax"] or by["torch"])[0]["dev"]:
            if task == "conll2003" and metric != "f1":
                continue  # entity F1 is the metric (precision, recall, token accuracy are in the JSON)
            cells = []
            for fw in ("jax", "torch"):
                scale = 1 if metric == "loss" else 100  # metrics in %, the loss as it is
                values = [scale * r["dev"][metric] for r in by[fw] if metric in r["dev"]]
                per_seed = f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else ""
                cells.append(f"**{statistics.median(values):.1f}**{per_seed}" if values else "–")
            seeds = f"{len(by['jax'])}" if len(by["jax"]) == len(by["torch"]) else \
                f"{len(by['jax'])}/{len(by['torch'])}"
            rows.append(f"| {task} | {variant} | {metric} | {seeds} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def save(args, runs: list[dict]):
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".tmp", "w") as f:
        json.dump({"recipe": {"model": args.model, "limit": args.limit, "epochs": args.epochs,
                              "lr": args.lr, "batch_size": 32, "max_length": 128,
                              "warmup_ratio": 0.1, "weight_decay": 0.01}, "runs": runs}, f, indent=1)
    os.replace(args.out + ".tmp", args.out)


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
    parser.add_argument("--variant", default="default", choices=VARIANTS)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    runs = []
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            runs = json.load(f)["runs"]
    done = {(r["task"], r["seed"], r["framework"], r.get("variant", "default")) for r in runs}
    for task in args.tasks.split(","):
        for seed in map(int, args.seeds.split(",")):
            with tempfile.TemporaryDirectory() as initial:
                config = recipe(task, seed, args, args.model)
                if args.variant != "default":
                    config = recipe(task, seed, args, save_initial_model(config, args.variant, initial))
                for framework in args.frameworks.split(","):
                    if (task, seed, framework, args.variant) in done:
                        continue
                    result = (run_jax if framework == "jax" else run_torch)(config)
                    runs.append({"task": task, "seed": seed, "framework": framework,
                                 "variant": args.variant, **result})
                    print(f"{task} seed={seed} {framework} {args.variant}: {result}", file=sys.stderr,
                          flush=True)
                    if args.out:
                        save(args, runs)
    print(table(runs))


if __name__ == "__main__":
    main()
