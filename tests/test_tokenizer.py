"""Tokenizer parity with transformers' DistilBertTokenizerFast (committed fixture) and its edge cases."""

import json
import os
import shutil

import numpy as np
import pytest

import distilbert_jax as dj
from conftest import FIXTURES

with open(os.path.join(FIXTURES, "tokenizer_reference.json"), encoding="utf-8") as f:
    REFERENCE = json.load(f)


def _as_lists(enc) -> dict:
    out = {}
    for key, value in enc.items():
        value = value.tolist() if hasattr(value, "tolist") else value
        out[key] = json.loads(json.dumps(value))  # tuples -> lists, as in the fixture
    return out


@pytest.fixture(scope="module", params=["tokenizer.json", "vocab.txt"])
def source(request, minilm_dir, tmp_path_factory):
    if request.param == "tokenizer.json":
        return request.param, dj.Tokenizer.from_pretrained(minilm_dir)
    only_vocab = tmp_path_factory.mktemp("vocab_only")
    shutil.copy(os.path.join(minilm_dir, "vocab.txt"), only_vocab)
    return request.param, dj.Tokenizer.from_pretrained(only_vocab)


def test_matches_transformers_fast_tokenizer(source):
    name, tok = source
    cases = REFERENCE[name]
    assert len(cases) > 20
    for case in cases:
        args = (case["text"], case["text_pair"]) if "text_pair" in case else (case["text"],)
        got = _as_lists(tok(*args, **case["kwargs"]))
        assert got == case["expected"], f"{name}: {case['description']!r} on {case['text']!r}"


def test_numpy_and_jax_tensors(minilm_dir):
    tok = dj.Tokenizer.from_pretrained(minilm_dir)
    enc = tok(["a short one", "and a slightly longer one"], padding=True, return_tensors="np")
    assert enc["input_ids"].dtype == np.int32 and enc["input_ids"].shape == enc.attention_mask.shape
    jax_enc = tok("hello", return_tensors="jax")
    assert jax_enc["input_ids"].shape == (1, 3)
    with pytest.raises(dj.TokenizerError, match="padding=True"):
        tok(["a", "b c d"], return_tensors="np")


def test_save_and_reload_round_trip(minilm_dir, tmp_path):
    tok = dj.Tokenizer.from_pretrained(minilm_dir)
    tok.save_pretrained(tmp_path)
    reloaded = dj.Tokenizer.from_pretrained(tmp_path)
    text = "Round trips keep naïve CJK 北京 and offsets."
    assert reloaded(text, return_offsets_mapping=True) == tok(text, return_offsets_mapping=True)
    os.remove(tmp_path / "tokenizer.json")  # the vocab.txt path must agree too
    assert dj.Tokenizer.from_pretrained(tmp_path)(text) == tok(text)


def test_bad_input_is_one_clear_error(minilm_dir, tmp_path):
    with pytest.raises(dj.TokenizerError, match="neither tokenizer.json nor vocab.txt"):
        dj.Tokenizer.from_pretrained(tmp_path)
    tok = dj.Tokenizer.from_pretrained(minilm_dir)
    with pytest.raises(dj.TokenizerError, match="truncation='middle'"):
        tok("x", truncation="middle")
    for encode in (tok, tok.encodings):  # __call__ and the Encoding objects it is built on
        with pytest.raises(dj.TokenizerError, match="text has 2 items but text_pair has 1"):
            encode(["a", "b"], ["c"])
    with pytest.raises(dj.TokenizerError, match="Expected a string"):
        tok([1, 2])
