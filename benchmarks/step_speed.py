"""Training-step and inference speed of DistilBERT-base, here and in transformers, side by side.

    pip install -e ".[reference]"
    python benchmarks/step_speed.py                      # on a GPU: 32x128, 256x128, 64x512
    python benchmarks/step_speed.py --shapes=4x128,2x512 --steps=3 --sides=jax,torch   # a CPU

One process times every side on the same device with the same weights (our random initialisation,
exported with save_pretrained and loaded by transformers): a sequence-classification train step
(forward, backward, clipping, AdamW) and inference, every token real, for our model in float32 and
bf16 compute, transformers eager (SDPA attention; bf16 through autocast) and transformers with
torch.compile; then one distillation update (BERT-base teacher -> 6-layer student, the triple loss)
here. MFU is model FLOPs (2 per multiply-add, backward = 2x forward, attention included) over the
peak this device reaches on a large matmul of the same dtype (the faster of JAX's and torch's),
measured in the same run. JAX does not
pre-allocate, so torch has memory too.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distilbert_jax import hf, models, sharding, student  # noqa: E402
from distilbert_jax.config import BertConfig, DistilBertConfig  # noqa: E402
from distilbert_jax.train import distill, finetune  # noqa: E402
from distilbert_jax.train import state as train_state  # noqa: E402
from distilbert_jax.train.step import make_step  # noqa: E402

from arithmetic import encoder_flops, jax_peak, seconds, torch_peak  # noqa: E402

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_flops(config: DistilBertConfig, batch: int, length: int, train: bool) -> float:
    return encoder_flops(config, length) * batch * (3 if train else 1)


def median_seconds(step, warmup: int, steps: int, sync) -> float:
    for _ in range(warmup):
        sync(step())
    return float(np.median([seconds(lambda: sync(step())) for _ in range(steps)]))


def batch_of(config, batch: int, length: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, config.vocab_size, (batch, length)).astype(np.int32)
    return {"inputs": {"input_ids": ids, "attention_mask": np.ones_like(ids)},
            "targets": {"labels": rng.integers(0, 2, batch).astype(np.int32)}}


def run_jax(config, params, dtype: str, batch: int, length: int, args) -> dict:
    model = models.DistilBertForSequenceClassification(config, dtype=DTYPES[dtype])
    layout = sharding.Layout(sharding.make_mesh("dp", jax.devices()[:1]), sharding.RULES)
    recipe = finetune.default_config()
    tx, _ = train_state.optimizer(recipe, 1000)
    state, shardings = train_state.create(model, params, tx, 0, layout)
    train = make_step(finetune.loss_fn(model, "sequence_classification"), tx, layout, shardings)
    infer = finetune.make_eval_step(model, shardings.params, layout)
    data = layout.put_batch(batch_of(config, batch, length))
    holder = {"state": state}

    def train_once():
        holder["state"], metrics = train(holder["state"], None, data)
        return metrics
    sync = jax.block_until_ready
    return {"train": median_seconds(train_once, args.warmup, args.steps, sync),
            "inference": median_seconds(lambda: infer(holder["state"].params, data["inputs"]),
                                        args.warmup, args.steps, sync)}


def run_torch(directory: str, dtype: str, batch: int, length: int, args, compiled: bool) -> dict:
    import torch
    import transformers

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = transformers.DistilBertForSequenceClassification.from_pretrained(
        directory, attn_implementation="sdpa").to(device)
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5)
    data = batch_of(model.config, batch, length)
    ids = torch.as_tensor(data["inputs"]["input_ids"], dtype=torch.long, device=device)
    mask = torch.ones_like(ids)
    labels = torch.as_tensor(data["targets"]["labels"], dtype=torch.long, device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    sync = (lambda _: torch.cuda.synchronize()) if device == "cuda" else (lambda _: None)

    def train_once():
        model.train()
        with autocast:
            loss = forward(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    def infer_once():
        model.eval()
        with torch.no_grad(), autocast:
            return forward(input_ids=ids, attention_mask=mask).logits
    return {"train": median_seconds(train_once, args.warmup, args.steps, sync),
            "inference": median_seconds(infer_once, args.warmup, args.steps, sync)}


def run_distillation(batch: int, length: int, args) -> float:
    """Seconds per distillation update: BERT-base teacher (frozen) -> 6-layer student, triple loss."""
    teacher = models.BertForMaskedLM(BertConfig())
    teacher_params = models.init_params(teacher)
    cfg = student.student_config(teacher.config, 6)
    model = models.DistilBertForMaskedLM(cfg, dtype=DTYPES[args.distill_dtype])
    params, _ = student.init_from_teacher(models.init_params(model), teacher_params,
                                          student.teacher_layers(12, 6))
    layout = sharding.Layout(sharding.make_mesh("dp", jax.devices()[:1]), sharding.RULES)
    recipe = distill.default_config()
    recipe.update(batch_size=batch, max_length=length)
    tx, _ = train_state.optimizer(recipe, 1000)
    state, shardings = train_state.create(model, params, tx, 0, layout)

    class Vocab:  # what the masker reads of a tokenizer
        all_special_ids, mask_token_id = [0, 100, 101, 102, 103], 103
    mask = distill.masker(recipe, np.ones(cfg.vocab_size), Vocab, cfg.vocab_size)
    teacher = teacher.clone(dtype=DTYPES[args.distill_dtype])
    step = make_step(distill.distill_loss(model, teacher, recipe, mask), tx, layout, shardings,
                     frozen_shardings=layout.params(teacher), prefix="distill")
    data = layout.put_batch({"inputs": batch_of(cfg, batch, length)["inputs"]})
    holder = {"state": state}

    def once():
        holder["state"], metrics = step(holder["state"], teacher_params, data)
        return metrics
    return median_seconds(once, args.warmup, args.steps, jax.block_until_ready)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    on_gpu = jax.default_backend() == "gpu"
    parser.add_argument("--shapes", default="32x128,256x128,64x512" if on_gpu else "4x128,2x512")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--sides", default="jax,torch,torch_compile")
    parser.add_argument("--distill-shape", default="64x256" if on_gpu else "2x128")
    parser.add_argument("--distill-dtype", default="bfloat16" if on_gpu else "float32")
    parser.add_argument("--steps", type=int, default=20 if on_gpu else 3)
    parser.add_argument("--warmup", type=int, default=3 if on_gpu else 1)
    parser.add_argument("--peak-size", type=int, default=8192 if on_gpu else 2048)
    args = parser.parse_args(argv)

    config = DistilBertConfig()
    init = models.DistilBertForSequenceClassification(config)
    params = models.init_params(init, seed=0)
    peaks = {d: jax_peak(DTYPES[d], args.peak_size) for d in args.dtypes.split(",")}
    if any(side.startswith("torch") for side in args.sides.split(",")):  # the faster of the two
        peaks = {d: max(p, torch_peak(d, args.peak_size)) for d, p in peaks.items()}
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory, init, jax.device_get(params))
        for shape in args.shapes.split(","):
            batch, length = map(int, shape.split("x"))
            for dtype in args.dtypes.split(","):
                for side in args.sides.split(","):
                    if side == "jax":
                        times = run_jax(config, params, dtype, batch, length, args)
                    else:
                        times = run_torch(directory, dtype, batch, length, args,
                                          compiled=side == "torch_compile")
                    rows.append((shape, dtype, side, times, batch, length))
                    print(rows[-1][:4], file=sys.stderr, flush=True)
    names = {"jax": "distilbert-jax", "torch": "transformers eager (SDPA)",
             "torch_compile": "transformers + torch.compile"}
    device = jax.devices()[0]
    print(f"\nDistilBERT-base sequence classifier on {device.device_kind} ({device.platform}); "
          f"peaks (measured matmul): " + ", ".join(f"{d} {p / 1e12:.1f} TFLOP/s" for d, p in peaks.items()))
    print("\n| step | shape | dtype | side | ms | MFU |\n|---|---|---|---|---:|---:|")
    for part in ("train", "inference"):
        for shape, dtype, side, times, batch, length in rows:
            mfu = model_flops(config, batch, length, part == "train") / times[part] / peaks[dtype]
            print(f"| {part} | {shape} | {dtype} | {names[side]} | {1e3 * times[part]:.1f} "
                  f"| {100 * mfu:.1f}% |")
    batch, length = map(int, args.distill_shape.split("x"))
    seconds = run_distillation(batch, length, args)
    print(f"| distillation update, BERT-base -> 6 layers | {args.distill_shape} | {args.distill_dtype} "
          f"| distilbert-jax | {1e3 * seconds:.1f} | – |")


if __name__ == "__main__":
    main()
