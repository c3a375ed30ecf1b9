"""The unrolled CPU lowering of Threefry-2x32 is the same hash: the reference implementation's known
answers, and JAX's own draws (bits, dropout masks, splits) unchanged bit for bit."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from distilbert_jax import threefry

# Random123's test vectors for Threefry-2x32 with 20 rounds: (key, counter) -> hash.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]

# Draws whose bits the lowering must not change, printed by a process that never unrolls.
DRAWS = """
import json, jax, jax.numpy as jnp, numpy as np
key = jax.random.key(20261202)
draws = {
    "bits": jax.jit(lambda k: jax.random.bits(k, (3, 1001)))(key),
    "dropout_mask": jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (2, 12, 17, 17)))(key),
    "split": jax.random.key_data(jax.jit(lambda k: jax.random.split(k, 5))(key)),
    "fold_in": jax.random.key_data(jax.jit(lambda k: jax.random.fold_in(k, 7))(key)),
    "eager_uniform": jax.random.uniform(jax.random.fold_in(key, 3), (513,)),
}
print(json.dumps({name: np.asarray(x).astype(np.float64).ravel().tolist()
                  for name, x in draws.items()}))
"""


@pytest.mark.parametrize("key, count, expected", KNOWN_ANSWERS)
def test_known_answers(key, count, expected):
    words = [np.array([x], np.uint32) for x in (*key, *count)]
    assert tuple(int(x[0]) for x in threefry.threefry2x32(*words)) == expected
    threefry.unroll_on_cpu()
    hashed = jax.jit(threefry_2x32)(np.uint32(key), np.uint32(count))
    assert tuple(int(x) for x in np.asarray(hashed)) == expected


def draws(setup: str = "") -> dict:
    return json.loads(subprocess.run([sys.executable, "-c", setup + "\n" + DRAWS], check=True,
                                     capture_output=True, text=True).stdout)


def test_same_draws_as_jax_rolled_lowering():
    rolled = draws()
    unrolled = draws("from distilbert_jax import threefry; threefry.unroll_on_cpu()")
    assert rolled.keys() == unrolled.keys()
    for name in rolled:
        np.testing.assert_array_equal(unrolled[name], rolled[name], err_msg=name)
