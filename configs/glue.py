"""GLUE fine-tuning, one config per task: `--config=configs/glue.py:<task>`.

    python -m distilbert_jax.main --config=configs/glue.py:sst2 --workdir=runs/sst2 \
        --config.data_dir=/data/glue/SST-2 --config.model=distilbert-base-uncased

Defaults follow the recipe HF used for DistilBERT's GLUE numbers (run_glue.py): AdamW lr 2e-5..5e-5,
batch 32, 3 epochs, max length 128, no warmup, weight decay 0, linear decay. SWEEP is the grid
(learning rates x seeds) the paper's table was taken over (median of 5 seeds); the sweep runner
(distilbert_jax.experiments.sweep) reads it from this file, the runs' configs do not hold it.
"""

from ml_collections import config_dict

from distilbert_jax.configs import default
from distilbert_jax.data.glue import SPECS

TASKS = tuple(SPECS)
# The sweep runner's default grid (--lrs and --seeds override it).
# stacked: the points of a task train together in one program (sweep run --stacked, docs/sweeps.md)
SWEEP = {"lr": (2e-5, 3e-5, 5e-5), "seed": (42, 43, 44, 45, 46), "stacked": False}
# Small tasks need more epochs to converge (as in the DistilBERT GLUE runs).
EPOCHS = {"cola": 3, "sst2": 3, "mrpc": 5, "stsb": 5, "qqp": 3, "mnli": 3, "qnli": 3, "rte": 5, "wnli": 5}


def get_config(arg: str = "sst2") -> config_dict.ConfigDict:
    task, _, variant = arg.partition(",")
    if task not in TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; choose one of {TASKS}.")
    c = default.finetune()
    c.task = task
    c.num_epochs = float(EPOCHS[task])
    c.data_dir = f"glue/{SPECS[task].directory}"  # the task's folder of the GLUE download (or tfds)
    if task == "mnli":
        c.eval_splits = ("dev", "dev_mismatched")
    if variant == "minilm":  # the recipe used for the measured numbers in benchmarks/README.md
        c.model = "packaged:all-MiniLM-L6-v2"
        c.lr = 5e-5
        c.warmup_ratio = 0.1
    return c

