"""The paper in miniature (`distilbert_jax/experiments/miniature.py`): one command, well under an hour on a CPU.

    python -m distilbert_jax.main --config=configs/miniature.py --workdir=runs/miniature

Distils a 3-layer student from all-MiniLM-L6-v2 on WikiText-2 plus the text of the GLUE training and
unlabelled test splits, with the triple loss and the paper's three ablations, fine-tunes the teacher
and every student on the GLUE tasks, and prints Tables 1, 3 and 4. Budgets are fields, e.g.
`--config.distill.max_steps=1000 --config.seeds='(42,43,44)' --config.finetune.limit_train_examples=0`.
"""

from distilbert_jax.experiments.miniature import default_config


def get_config():
    return default_config()
