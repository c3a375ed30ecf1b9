"""The paper in miniature: distil a small student from all-MiniLM-L6-v2 on real text, fine-tune
teacher and students on GLUE, and print the paper's Tables 1, 3 and 4 at this scale.

    python -m distilbert_jax.main --config=configs/miniature.py --workdir=runs/miniature

Stages, each in its own sub-directory of the workdir and skipped once its results.json exists (each
also resumes from its own checkpoints; a stage that ran under another config is refused), so an
interrupted pipeline picks up where it stopped:
  text/      the text of the GLUE training and unlabelled test splits (never dev), one example a line
  corpus/    that text plus `corpus_files` (WikiText-2), tokenised once for every stage
  head/      the teacher's masked-LM head, fitted with its encoder frozen (MiniLM ships without one)
  distill/   one student per variant: the triple loss, then the paper's Table 4 ablations
  glue/      teacher and every student fine-tuned on each task and seed with one recipe
  speed.json parameters and a batch-1 CPU pass over a dev set (Table 3)
  tables.md  the tables, also printed
"""

from __future__ import annotations

import copy
import json
import logging
import os
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from distilbert_jax import hf, storage
from distilbert_jax.config import ConfigError
from distilbert_jax.configs import miniature as miniature_config
from distilbert_jax.data import glue
from distilbert_jax.data.task import DataError
from distilbert_jax.metrics import glue_score
from distilbert_jax.tokenizer import Tokenizer
from distilbert_jax.train import checks, distill, finetune, workdir as workdirs

log = logging.getLogger(__name__)

# The paper's Table 4 rows, as changes to the triple loss with teacher initialisation.
VARIANTS = {"triple_loss": {}, "no_ce": {"alpha_ce": 0.0}, "no_cos": {"alpha_cos": 0.0},
            "random_init": {"student_init": "random"}}
TEXT_SPLITS = ("train", "test")  # never dev: the students are scored on it


# The fields are defined (and commented) in configs/miniature.py.
default_config = miniature_config.get_config


def check(config) -> None:
    """The miniature's own fields; each stage's config is checked when that stage starts."""
    for field, chosen, known in (("variants", config.variants, VARIANTS), ("tasks", config.tasks, glue.SPECS)):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ConfigError(f"Unknown {field} {unknown}; choose from {list(known)}.")
    if not config.glue_dir or not config.corpus_files:
        raise ConfigError("Set glue_dir (the GLUE download) and corpus_files (text, e.g. WikiText-2), "
                          "or pass a data root: --config=configs/miniature.py:<root>.")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Every stage in order (finished ones skipped); returns and writes the tables' numbers."""
    checks.start([(config, workdir)], check)
    workdirs.record(config, workdir)
    text = write_glue_text(config.glue_dir, os.path.join(workdir, "text", "glue.txt"))
    corpus_dir = os.path.join(workdir, "corpus")

    head = copy.deepcopy(config.head)
    head.update(teacher=config.teacher, corpus_files=(*config.corpus_files, text), corpus_dir=corpus_dir)
    workdirs.run_once(distill.fit_teacher_head, head, os.path.join(workdir, "head"))

    models = {"teacher": config.teacher}
    for variant in config.variants:
        c = copy.deepcopy(config.distill)
        c.update(teacher=os.path.join(workdir, "head", "teacher"), corpus_dir=corpus_dir,
                 **VARIANTS[variant])
        workdirs.run_once(distill.distill, c, os.path.join(workdir, "distill", variant))
        models[variant] = os.path.join(workdir, "distill", variant, "student")

    scores = {}
    for name, model in models.items():
        for task in config.tasks:
            for seed in config.seeds:
                c = copy.deepcopy(config.finetune)
                c.update(task=task, model=model, seed=seed,
                         data_dir=os.path.join(config.glue_dir, glue.SPECS[task].directory))
                results = workdirs.run_once(finetune.train_and_evaluate, c,
                                 os.path.join(workdir, "glue", name, task, f"seed{seed}"))
                scores.setdefault(name, {}).setdefault(task, []).append(glue_score(results["eval"]["dev"]))

    speed = _cached(os.path.join(workdir, "speed.json"), lambda: {
        name: inference_speed(models[name], config.glue_dir, config.speed_task, config.finetune)
        for name in ("teacher", "triple_loss") if name in models})
    summary = {"scores": {m: {t: statistics.median(v) for t, v in s.items()} for m, s in scores.items()},
               "speed": speed, "distill_tokens_per_sec": {
                   v: distill_throughput(os.path.join(workdir, "distill", v)) for v in config.variants}}
    workdirs.write_results(workdir, summary)
    markdown = tables(summary, config)
    storage.write_text(os.path.join(workdir, "tables.md"), markdown)
    print(markdown)
    return summary


def _cached(path: str, compute) -> dict:
    if not os.path.exists(path):
        storage.write_json(path, compute())
    with open(path) as f:
        return json.load(f)


def write_glue_text(glue_dir: str, path: str) -> str:
    """The text of every GLUE training and unlabelled test split under `glue_dir`, one example a
    line (a pair's two texts joined by a space); dev splits are left out. Returns `path`."""
    if os.path.exists(path):
        return path
    lines = []
    for name, spec in glue.SPECS.items():
        folder = os.path.join(glue_dir, spec.directory)
        for split in TEXT_SPLITS:
            task = glue.GlueTask(name, folder)
            if os.path.exists(task.split_file(split)):
                lines += [" ".join(t.strip() for t in e.texts) for e in task.load(split)]
    if not lines:
        raise DataError(f"No GLUE training or test split under {glue_dir}.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    storage.write_text(path, "\n".join(lines) + "\n")
    return path


def inference_speed(model_dir: str, glue_dir: str, task: str, recipe) -> dict[str, float]:
    """Parameters (no task head) and the seconds of a batch-1 forward pass over `task`'s dev set on this
    host's CPU (the paper's Table 3 protocol), each example padded to a multiple of 32 tokens."""
    directory = hf.resolve(model_dir)
    cpu = jax.local_devices(backend="cpu")[0]
    with jax.default_device(cpu):
        model, params = hf.from_pretrained(directory, head="base")
        params = jax.device_put(params, cpu)
    tokenizer = Tokenizer.from_pretrained(directory)
    spec_task = glue.GlueTask(task, os.path.join(glue_dir, glue.SPECS[task].directory))
    examples = spec_task.load("dev")
    features = spec_task.encode(examples, tokenizer, recipe.max_length)
    pad = tokenizer.pad_token_id
    forward = jax.jit(lambda p, ids: model.apply({"params": p}, ids, attention_mask=ids != pad)
                      .last_hidden_state)
    padded = [np.pad(ids, (0, -len(ids) % 32), constant_values=pad)[None]
              for ids in features.inputs["input_ids"]]
    for length in sorted({x.shape[1] for x in padded}):  # compile every shape before timing
        forward(params, jnp.zeros((1, length), jnp.int32)).block_until_ready()
    start = time.perf_counter()
    for ids in padded:
        forward(params, jax.device_put(ids, cpu)).block_until_ready()
    seconds = time.perf_counter() - start
    return {"parameters": int(sum(x.size for x in jax.tree.leaves(params))), "seconds": seconds,
            "examples": len(padded)}


def distill_throughput(run_dir: str) -> float:
    """Median real tokens/s over a distillation run's logged windows (robust to compile windows)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(path) as f:
        rates = [r["perf/tokens_per_sec"] for r in map(json.loads, f) if "perf/tokens_per_sec" in r]
    return statistics.median(rates) if rates else float("nan")


def tables(summary: dict, config) -> str:
    """Markdown for the paper's Tables 1, 3 and 4 in miniature."""
    scores, tasks = summary["scores"], list(config.tasks)
    macro = {m: statistics.mean(s[t] for t in tasks) for m, s in scores.items()}
    seeds = f"median of {len(config.seeds)} seed(s)" if len(config.seeds) > 1 else "one seed"
    lines = [f"Table 1: GLUE dev ({seeds}); Score = macro average of the tasks", "",
             "| Model | Score | " + " | ".join(tasks) + " |", "|---|---:|" + "---:|" * len(tasks)]
    for name in ("teacher", "triple_loss"):
        if name in scores:
            label = "teacher (all-MiniLM-L6-v2)" if name == "teacher" else "student (triple loss)"
            lines.append(f"| {label} | {macro[name]:.1f} | "
                         + " | ".join(f"{scores[name][t]:.1f}" for t in tasks) + " |")
    if "teacher" in macro and "triple_loss" in macro:
        lines += ["", f"The student keeps {100 * macro['triple_loss'] / macro['teacher']:.1f}% of the "
                      "teacher's score."]
    speed = summary["speed"]
    if speed:
        lines += ["", f"Table 3: parameters and a batch-1 pass over {config.speed_task} dev on "
                      "this CPU", "", "| Model | # params (M, no head) | inference time (s) |", "|---|---:|---:|"]
        lines += [f"| {name} | {s['parameters'] / 1e6:.1f} | {s['seconds']:.1f} |"
                  for name, s in speed.items()]
        if len(speed) == 2:
            t, s = speed["teacher"], speed["triple_loss"]
            lines += ["", f"The student has {100 * (1 - s['parameters'] / t['parameters']):.0f}% fewer "
                          f"parameters and runs {100 * (t['seconds'] / s['seconds'] - 1):.0f}% faster."]
    ablations = [v for v in config.variants if v != "triple_loss" and v in macro]
    if "triple_loss" in macro and ablations:
        lines += ["", "Table 4: ablations, GLUE macro score and its change from the triple loss", "",
                  "| Ablation | Score | Δ |", "|---|---:|---:|"]
        lines += [f"| {v} | {macro[v]:.1f} | {macro[v] - macro['triple_loss']:+.2f} |" for v in ablations]
    rates = summary.get("distill_tokens_per_sec", {})
    if rates:
        lines += ["", "Distillation throughput (teacher + student, real tokens/s, median over log "
                      "windows): " + ", ".join(f"{v} {r:,.0f}" for v, r in rates.items())]
    return "\n".join(lines) + "\n"
