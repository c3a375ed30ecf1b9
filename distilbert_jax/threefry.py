"""Dropout's random bits on a CPU: JAX's own Threefry-2x32, compiled straight-line instead of as a loop.

On XLA:CPU, JAX lowers `threefry2x32` (the hash behind every `jax.random` draw) as a 5-trip while
loop to keep compile times short. A loop cannot fuse, so each dropout mask makes five passes over
memory: on a 2-core CPU a 32x12x128x128 attention-dropout mask takes 58 ms that way and 7.6 ms
unrolled, and a MiniLM fine-tuning update at 32x128 spends about a fifth of its time there. On GPU
JAX already lowers the hash unrolled. `unroll_on_cpu()` gives the CPU that same lowering: the hash
is Salmon et al.'s Threefry-2x32 with 20 rounds (the Random123 constants JAX uses), so every draw
keeps the bits it had, on every backend. The price is compile time: about 2 s more per compiled
training step on that CPU, earned back after about 5 updates of that shape at 32x128, or 50 at 4x128.
"""

from __future__ import annotations

import functools

import numpy as np
from jax.extend.random import threefry2x32_p
from jax.interpreters import mlir

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotate_left(x, bits: int):
    return (x << np.uint32(bits)) | (x >> np.uint32(32 - bits))


def threefry2x32(key0, key1, count0, count1):
    """Threefry-2x32-20 of the counter pair (count0, count1) under the key (key0, key1): uint32s
    in, the two hashed words out, elementwise (one fusion for XLA)."""
    keys = (key0, key1, key0 ^ key1 ^ _PARITY)
    x0, x1 = count0 + keys[0], count1 + keys[1]
    for block in range(5):
        for rotation in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, rotation) ^ x0
        x0 = x0 + keys[(block + 1) % 3]
        x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


@functools.cache
def unroll_on_cpu() -> None:
    """Lowers `threefry2x32` on CPU as one straight-line fusion (same bits, fewer passes), for the
    whole process: `settings.configure(unroll_threefry_on_cpu=True)` (the entry points' default)
    calls it; the lowering is registered once per process."""
    mlir.register_lowering(threefry2x32_p, mlir.lower_fun(threefry2x32, multiple_results=True),
                           platform="cpu")
