"""Fine-tune on your own data: `--config=configs/custom.py:<kind>`, kind one of
`text` (one text -> a label), `pair` (two texts -> a label), `regression` (text(s) -> a score),
`tokens` (words -> one tag each).

    python -m distilbert_jax.main --config=configs/custom.py:text --workdir=runs/mine \
        --config.data_dir=my_data --config.model=packaged:all-MiniLM-L6-v2

`my_data/` holds train.csv (and dev.csv, test.csv; or .tsv, or .jsonl) with a `text` and a `label`
column; the labels are whatever the training file holds. Other column names:
--config.task_options.text_columns='("review",)' --config.task_options.label_column=stars.
`tokens` reads JSON lines {"tokens": [...], "ner_tags": [...]} (the Hugging Face datasets layout).
"""

from distilbert_jax.configs import default

KINDS = {
    "text": ("text_classification", {"text_columns": ("text",), "label_column": "label"}),
    "pair": ("text_classification", {"text_columns": ("text", "text_pair"), "label_column": "label"}),
    "regression": ("text_classification", {"text_columns": ("text",), "label_column": "label",
                                           "regression": True}),
    "tokens": ("token_classification", {"tokens_column": "tokens", "tags_column": "ner_tags"}),
}


def get_config(arg: str = "text"):
    if arg not in KINDS:
        raise ValueError(f"Unknown kind {arg!r}; choose one of {tuple(KINDS)}.")
    task, options = KINDS[arg]
    c = default.finetune()
    c.task = task
    c.data_dir = "data"  # your folder with train.csv / dev.csv / test.csv
    c.task_options.update(options)
    c.update(max_length=128, batch_size=32, num_epochs=3.0, lr=5e-5, warmup_ratio=0.1, weight_decay=0.01)
    return c
