"""Distillation step throughput, teacher + student, here and in PyTorch, side by side.

    python benchmarks/distill_throughput.py --teacher=packaged:all-MiniLM-L6-v2 --student-layers=3 \
        --batch=64 --length=128 --steps=10 [--frameworks=jax,torch]

One full distillation update (mask, frozen teacher forward, student forward and backward, AdamW) on
batches of real-length rows (every token real), timed after compilation/warm-up. Two ways to
compute the soft-target KL: over every token (the paper's recipe) or at the MLM targets only
(`restrict_ce_to_mask`, where both models compute vocabulary logits at the targets alone). The
PyTorch step is transformers' BertForMaskedLM and DistilBertForMaskedLM with the same loss terms.
MFU is model FLOPs (2 per multiply-add, backward = 2x forward, attention included) over the peak this
host reaches on a large float32 matmul, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from distilbert_jax import hf, models, sharding, student
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import distill
from distilbert_jax.train import state as train_state
from distilbert_jax.train.step import make_step

from arithmetic import encoder_flops, jax_peak


def flops_per_token(teacher_cfg, student_cfg, length: int, logit_fraction: float) -> float:
    """Model FLOPs of one distillation update per token: teacher forward, student forward + backward."""
    def forward(config, d):
        head = logit_fraction * (d * d + d * teacher_cfg.vocab_size)  # transform + vocabulary
        return encoder_flops(config, length) / length + 2 * head
    return forward(teacher_cfg, teacher_cfg.hidden_size) + 3 * forward(student_cfg, student_cfg.dim)


def config_for(args, restrict: bool):
    c = distill.default_config()
    c.update(teacher=args.teacher, student_layers=args.student_layers, batch_size=args.batch,
             grad_accum_steps=1, max_length=args.length, restrict_ce_to_mask=restrict)
    return c


def batches(vocab: int, batch: int, length: int, count: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        ids = rng.integers(1000, vocab, (batch, length)).astype(np.int32)
        ids[:, 0], ids[:, -1] = 101, 102
        yield {"inputs": {"input_ids": ids, "attention_mask": np.ones_like(ids)}}


def run_jax(args, restrict: bool) -> float:
    """Seconds per update (median of the timed steps)."""
    config = config_for(args, restrict)
    layout = sharding.Layout.from_config(config)
    directory = hf.resolve(args.teacher)  # a bare teacher gets a fresh MLM head: timing only
    teacher, teacher_params = hf.from_pretrained(directory, head="masked_lm", shardings=layout.params)
    tokenizer = Tokenizer.from_pretrained(directory)
    model, params = distill.build_student(config, teacher, teacher_params, tokenizer, layout)
    counts = np.ones(model.config.vocab_size)  # uniform masking weights
    mask = distill.masker(config, counts, tokenizer, model.config.vocab_size)
    tx, _ = train_state.optimizer(config, total_steps=1000)
    state, state_shardings = train_state.create(model, params, tx, 0, layout)
    step = make_step(distill.distill_loss(model, teacher, config, mask), tx, layout, state_shardings,
                     frozen_shardings=layout.params(teacher), prefix="distill")
    times = []
    for i, batch in enumerate(batches(model.config.vocab_size, args.batch, args.length,
                                      args.warmup + args.steps)):
        batch = layout.put_batch(batch)
        start = time.perf_counter()
        state, metrics = step(state, teacher_params, batch)
        jax.block_until_ready(metrics)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def run_torch(args, restrict: bool) -> float:
    import torch
    import torch.nn.functional as F
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    config = config_for(args, restrict)
    directory = hf.resolve(args.teacher)
    teacher = transformers.BertForMaskedLM.from_pretrained(directory, attn_implementation="eager").eval()
    our_teacher, _ = hf.from_pretrained(directory, head="base")
    cfg = student.student_config(our_teacher.config, args.student_layers)
    with tempfile.TemporaryDirectory() as tmp:  # the same student architecture, via our export
        model = models.DistilBertForMaskedLM(cfg)
        hf.save_pretrained(tmp, model, models.init_params(model))
        student_model = transformers.DistilBertForMaskedLM.from_pretrained(tmp, attn_implementation="eager")
    student_model.train()
    optimizer = torch.optim.AdamW(student_model.parameters(), lr=5e-4, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=0.0)
    mask_id, T = Tokenizer.from_pretrained(directory).mask_token_id, config.temperature
    times = []
    for i, batch in enumerate(batches(cfg.vocab_size, args.batch, args.length, args.warmup + args.steps)):
        start = time.perf_counter()
        ids = torch.as_tensor(batch["inputs"]["input_ids"], dtype=torch.long)
        attention = torch.as_tensor(batch["inputs"]["attention_mask"])
        targets = torch.rand(ids.shape) < config.mlm_mask_prop
        corrupted = torch.where(targets, torch.full_like(ids, mask_id), ids)
        labels = torch.where(targets, ids, torch.full_like(ids, -100))
        with torch.no_grad():
            t_hidden = teacher.bert(corrupted, attention_mask=attention).last_hidden_state
        s_hidden = student_model.distilbert(corrupted, attention_mask=attention).last_hidden_state

        def logits(model_head, hidden):
            return model_head(hidden[targets] if restrict else hidden)
        with torch.no_grad():
            t_logits = logits(teacher.cls, t_hidden)
        s_head = lambda h: student_model.vocab_projector(student_model.vocab_layer_norm(
            student_model.activation(student_model.vocab_transform(h))))
        s_logits = logits(s_head, s_hidden)
        vocab = s_logits.shape[-1]
        kl = F.kl_div(F.log_softmax(s_logits.view(-1, vocab) / T, -1),
                      F.softmax(t_logits.view(-1, vocab) / T, -1), reduction="batchmean") * T ** 2
        mlm_labels = labels[targets] if restrict else labels.view(-1)
        mlm = F.cross_entropy(s_logits.view(-1, vocab), mlm_labels, ignore_index=-100)
        cos = 1 - F.cosine_similarity(s_hidden.view(-1, s_hidden.shape[-1]),
                                      t_hidden.view(-1, t_hidden.shape[-1])).mean()
        loss = config.alpha_ce * kl + config.alpha_mlm * mlm + config.alpha_cos * cos
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student_model.parameters(), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=hf.PACKAGED_MINILM)
    parser.add_argument("--student-layers", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--frameworks", default="jax,torch")
    args = parser.parse_args(argv)

    peak = jax_peak(jnp.float32, 4096)
    teacher, _ = hf.from_pretrained(hf.resolve(args.teacher), head="base")
    student_cfg = student.student_config(teacher.config, args.student_layers)
    tokens = args.batch * args.length
    rows = []
    for restrict in (False, True):
        per_token = flops_per_token(teacher.config, student_cfg, args.length,
                                    0.15 if restrict else 1.0)
        for framework in args.frameworks.split(","):
            seconds = (run_jax if framework == "jax" else run_torch)(args, restrict)
            rows.append((framework, "at MLM targets" if restrict else "every token", seconds,
                         tokens / seconds, 100 * per_token * tokens / seconds / peak))
            print(f"{rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nDistillation update, teacher {args.teacher} "
          f"(fp32) -> {args.student_layers}-layer student, batch {args.batch} x {args.length}, "
          f"{jax.devices()[0].platform} ({os.cpu_count()} cores); peak = measured float32 matmul "
          f"{peak / 1e9:.0f} GFLOP/s\n")
    print("| framework | soft-target KL over | s/update | tokens/s | MFU |")
    print("|---|---|---:|---:|---:|")
    for framework, where, seconds, rate, mfu in rows:
        name = "distilbert-jax" if framework == "jax" else "PyTorch (transformers)"
        print(f"| {name} | {where} | {seconds:.3f} | {rate:,.0f} | {mfu:.1f}% |")


if __name__ == "__main__":
    main()
