"""Distillation: `--config=configs/distill.py:<preset>`.

The paper's recipe (a 6-layer student from BERT-base on your corpus of one sequence per line):

    python -m distilbert_jax.main --config=configs/distill.py:paper --workdir=runs/distilbert \
        --config.teacher=/path/to/bert-base-uncased --config.corpus_files='("/data/wiki.txt", "/data/books.txt")'

all-MiniLM-L6-v2 is a bare BertModel: `minilm_head` gives it a masked-LM head (encoder frozen),
trained on the text you give as --config.corpus_files (e.g. WikiText-2), so it can give soft targets. The whole miniature of the paper (head, the student and its
ablations, GLUE, tables) is one command: configs/miniature.py.
"""

from distilbert_jax.configs import default

PRESETS = ("paper", "minilm_head")


def get_config(arg: str = "paper"):
    if arg not in PRESETS:
        raise ValueError(f"Unknown distillation preset {arg!r}; choose one of {PRESETS}.")
    if arg == "paper":
        return default.distill()  # the released model's recipe: T=2, α = 5/2/1, AdamW 5e-4 (0.9, 0.98)
    c = default.fit_teacher_head()
    c.update(teacher="packaged:all-MiniLM-L6-v2")  # corpus_files: your text, e.g. WikiText-2
    return c
