"""The paper in miniature (`distilbert_jax/experiments/miniature.py`): one command, well under an hour on a CPU.

    python -m distilbert_jax.main --config=configs/miniature.py:../shared --workdir=runs/miniature

The argument is a data root holding evaldata/glue/<Task>/ and corpus/wikitext-2-raw/ (or set
--config.glue_dir and --config.corpus_files yourself).

Distils a 3-layer student from all-MiniLM-L6-v2 on WikiText-2 plus the text of the GLUE training and
unlabelled test splits, with the triple loss and the paper's three ablations, fine-tunes the teacher
and every student on the GLUE tasks, and prints Tables 1, 3 and 4. Budgets are fields, e.g.
`--config.distill.max_steps=1000 --config.seeds='(42,43,44)' --config.finetune.limit_train_examples=0`.
"""

import os

from distilbert_jax.experiments.miniature import WIKITEXT, default_config


def get_config(root: str = ""):
    c = default_config()
    if root:
        c.glue_dir = os.path.join(root, "evaldata", "glue")
        c.corpus_files = tuple(os.path.join(root, path) for path in WIKITEXT)
    return c
