"""Distillation: `--config=configs/distill.py:<preset>`.

The paper's recipe (a 6-layer student from BERT-base on your corpus of one sequence per line):

    python -m distilbert_jax.main --config=configs/distill.py:paper --workdir=runs/distilbert \
        --config.teacher=/path/to/bert-base-uncased --config.corpus_files='("/data/wiki.txt", "/data/books.txt")'

The paper in miniature, on this repository's CPU budget: all-MiniLM-L6-v2 is a bare BertModel, so
first give it a masked-LM head (encoder frozen), then distil a 3-layer student from it on WikiText-2
(../shared/corpus); `mini_no_ce`, `mini_no_cos` and `mini_random` are the paper's Table 4 ablations:

    python -m distilbert_jax.main --config=configs/distill.py:minilm_head --workdir=runs/minilm_head
    python -m distilbert_jax.main --config=configs/distill.py:mini --workdir=runs/mini
"""

from distilbert_jax.train.distill import default_config

WIKITEXT = ("../shared/corpus/wikitext-2-raw/wiki.valid.raw", "../shared/corpus/wikitext-2-raw/wiki.test.raw")
PRESETS = ("paper", "minilm_head", "mini", "mini_no_ce", "mini_no_cos", "mini_random")


def get_config(arg: str = "paper"):
    if arg not in PRESETS:
        raise ValueError(f"Unknown distillation preset {arg!r}; choose one of {PRESETS}.")
    c = default_config()  # the released model's recipe: T=2, α = 5/2/1, AdamW 5e-4 (0.9, 0.98)
    if arg == "paper":
        return c
    c.teacher = "packaged:all-MiniLM-L6-v2"
    c.corpus_files = WIKITEXT
    c.max_length = 128
    c.batch_size = 64
    c.grad_accum_steps = 1
    c.num_epochs = 1.0
    c.log_every = 10
    c.checkpoint_every = 100
    if arg == "minilm_head":
        c.job = "fit_teacher_head"
        c.lr = 1e-3
        return c
    c.teacher = "runs/minilm_head/teacher"
    c.corpus_dir = "runs/minilm_head/corpus"  # tokenised once, shared by every miniature run
    c.student_layers = 3
    if arg == "mini_no_ce":
        c.alpha_ce = 0.0
    elif arg == "mini_no_cos":
        c.alpha_cos = 0.0
    elif arg == "mini_random":
        c.student_init = "random"
    return c
