"""SWAG multiple choice: `--config=configs/swag.py`.

    python -m distilbert_jax.main --config=configs/swag.py --workdir=runs/swag \
        --config.data_dir=/data/swag   # train.csv and val.csv in SWAG's format

Recipe of transformers' run_swag.py: lr 5e-5, batch 16, 3 epochs, max length 128.
"""

from distilbert_jax.configs import default


def get_config(arg: str = ""):
    c = default.finetune()
    c.task = "swag"
    c.data_dir = ""
    c.max_length = 128
    c.batch_size = 16
    c.num_epochs = 3.0
    c.lr = 5e-5
    return c
