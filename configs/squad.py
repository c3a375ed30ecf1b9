"""SQuAD fine-tuning: `--config=configs/squad.py` (v1.1) or `configs/squad.py:v2` (v2.0).

    python -m distilbert_jax.main --config=configs/squad.py --workdir=runs/squad \
        --config.data_dir=/data/squad --config.model=distilbert-base-uncased

Recipe of transformers' run_qa.py for DistilBERT: lr 3e-5, batch 12, 2 epochs, max length 384,
doc stride 128, max answer length 30, n-best 20. data_dir holds train-v1.1.json and dev-v1.1.json
(v2: *-v2.0.json); `--config.data_source=tfds` reads TFDS `squad` instead.
"""

from distilbert_jax.configs import default


def get_config(arg: str = "v1"):
    if arg not in ("v1", "v2"):
        raise ValueError(f"Unknown SQuAD version {arg!r}; use v1 or v2.")
    c = default.finetune()
    c.task = "squad" if arg == "v1" else "squad_v2"
    c.data_dir = "squad"  # train-v1.1.json and dev-v1.1.json (or v2.0), or data_source=tfds
    c.max_length = 384
    c.buckets = (384,)  # windows are long; one shape
    c.batch_size = 12
    c.eval_batch_size = 32
    c.num_epochs = 2.0
    c.lr = 3e-5
    c.task_options.doc_stride = 128
    c.task_options.max_answer_length = 30
    c.task_options.n_best = 20
    c.task_options.null_score_diff_threshold = 0.0
    c.task_options.train_file = ""  # default train-v1.1.json / train-v2.0.json
    c.task_options.dev_file = ""
    return c
