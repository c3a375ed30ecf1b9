"""The paper in miniature (`distilbert_jax/experiments/miniature.py`): one command, well under an hour on a CPU.

    python -m distilbert_jax.main --config=configs/miniature.py:/data --workdir=runs/miniature

The argument is a data root holding evaldata/glue/<Task>/ and corpus/wikitext-2-raw/ (or set
--config.glue_dir and --config.corpus_files yourself).

Distils a 3-layer student from all-MiniLM-L6-v2 on WikiText-2 plus the text of the GLUE training and
unlabelled test splits, with the triple loss and the paper's three ablations, fine-tunes the teacher
and every student on the GLUE tasks, and prints Tables 1, 3 and 4. Budgets are fields, e.g.
`--config.distill.max_steps=1000 --config.seeds='(42,43,44)' --config.finetune.limit_train_examples=0`.
"""

import os

from ml_collections import config_dict

from distilbert_jax.configs import default

WIKITEXT = ("corpus/wikitext-2-raw/wiki.valid.raw", "corpus/wikitext-2-raw/wiki.test.raw")


def get_config(root: str = "") -> config_dict.ConfigDict:
    """A run of well under an hour on a 2-core CPU; every budget is a field to raise."""
    c = config_dict.ConfigDict()
    c.job = "miniature"
    c.teacher = "packaged:all-MiniLM-L6-v2"
    c.corpus_files = ()  # text files, e.g. WikiText-2 (the `root` argument sets both)
    c.glue_dir = ""  # the GLUE download: every task folder found here gives its text
    c.tasks = ("cola", "sst2", "mrpc", "stsb", "rte", "wnli")  # fine-tuned and scored
    c.variants = ("triple_loss", "no_ce", "no_cos", "random_init")  # the paper's Table 4 rows
    c.seeds = (42,)
    c.speed_task = "stsb"  # Table 3 times a batch-1 pass over this task's dev set
    c.deterministic = True  # as default.get_config(): GPU reductions in a fixed order
    c.compilation_cache = True  # students share shapes: compile each step once for all of them

    # The stages' own configs; the pipeline sets their teacher, corpus, model and data paths.
    c.head = default.fit_teacher_head()
    c.distill = default.distill()
    c.distill.update(max_length=128, batch_size=64, grad_accum_steps=1, max_steps=100,
                     student_layers=3, restrict_ce_to_mask=True, log_every=10, checkpoint_every=50)
    c.finetune = default.finetune()
    c.finetune.update(max_length=128, buckets=(32, 64, 128), batch_size=32, num_epochs=2.0,
                      warmup_ratio=0.1, weight_decay=0.01, limit_train_examples=600, lr=1e-4,
                      log_every=25, eval_every=10**9, checkpoint_every=10**9, save_model=False)
    if root:
        c.glue_dir = os.path.join(root, "evaldata", "glue")
        c.corpus_files = tuple(os.path.join(root, path) for path in WIKITEXT)
    return c
