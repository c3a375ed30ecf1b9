"""CoNLL-2003 NER: `--config=configs/ner.py` (IOB2 files) or `configs/ner.py:iob1` (eng.train/testa).

    python -m distilbert_jax.main --config=configs/ner.py --workdir=runs/ner \
        --config.data_dir=/data/conll2003/iob2

Recipe of transformers' run_ner.py: lr 5e-5, batch 32, 3 epochs, max length 128, label on the first
sub-token of each word; entity-level F1 as seqeval.
"""

from distilbert_jax.configs import default


def get_config(arg: str = "iob2"):
    if arg not in ("iob1", "iob2"):
        raise ValueError(f"Unknown CoNLL layout {arg!r}; use iob1 or iob2.")
    c = default.finetune()
    c.task = "conll2003"
    c.data_dir = "conll2003"  # train.txt/valid.txt/test.txt (iob2) or eng.train/testa/testb (iob1)
    c.task_options.layout = arg
    c.max_length = 128
    c.batch_size = 32
    c.num_epochs = 3.0
    c.lr = 5e-5
    return c
