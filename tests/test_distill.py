"""Distillation end to end on a tiny teacher: the loss falls, the student exports, resume is exact,
and bad input stops before any compute."""

import json
import os

import numpy as np
import pytest
import safetensors.numpy

import distilbert_jax as dj
from distilbert_jax.config import ConfigError
from distilbert_jax.data import DataError
from distilbert_jax.train import distill, loop
from conftest import PADDED_AND_PACKED, crashing_at, make_tiny_model_dir


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("teacher"), "bert_mlm")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    rng = np.random.default_rng(0)
    words = ["the", "movie", "was", "good", "and", "film", "is", "great", "paris", "city", "not", "bad"]
    path.write_text("\n".join(" ".join(rng.choice(words, rng.integers(12, 40))) for _ in range(160)))
    return str(path)


def tiny(teacher, corpus_file, **overrides):
    c = distill.default_config()
    c.teacher, c.corpus_files = teacher, (corpus_file,) if corpus_file else ()
    c.max_length, c.length_multiple = 64, 16
    c.student_layers, c.batch_size, c.grad_accum_steps = 1, 16, 2
    c.max_steps, c.lr, c.log_every, c.checkpoint_every = 12, 1e-3, 1, 4
    for k, v in overrides.items():
        c[k] = v
    return c


def losses_of(workdir):
    return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


@pytest.mark.parametrize("packing", PADDED_AND_PACKED)
def test_distillation_loss_falls_and_the_student_exports(teacher, corpus_file, tmp_path, packing):
    """Also packed, in two micro-batches per update (each packed on its own)."""
    results = distill.distill(tiny(teacher, corpus_file, max_steps=20, packing=packing),
                              str(tmp_path / "run"))
    assert results["steps_this_run"] == 20
    lines = losses_of(tmp_path / "run")
    assert {"distill/loss", "distill/loss_ce", "distill/loss_mlm", "distill/loss_cos"} <= set(lines[0])
    first, last = np.mean([l["distill/loss"] for l in lines[:3]]), np.mean([l["distill/loss"] for l in lines[-3:]])
    assert last < 0.9 * first
    computed = [l["batch/computed_tokens"] for l in lines if "batch/computed_tokens" in l]
    real = [l["batch/tokens"] for l in lines if "batch/tokens" in l]
    assert np.mean(real) / np.mean(computed) > (0.6 if packing else 0.0)  # 0.68 packed
    model, params = dj.from_pretrained(tmp_path / "run" / "student")
    assert isinstance(model, dj.DistilBertForMaskedLM) and model.config.n_layers == 1
    _, teacher_params = dj.from_pretrained(teacher)
    np.testing.assert_array_equal(  # positions frozen at the teacher's
        params["distilbert"]["embeddings"]["position_embeddings"]["embedding"],
        teacher_params["bert"]["embeddings"]["position_embeddings"]["embedding"])
    assert not np.allclose(  # everything else trained
        params["distilbert"]["transformer"]["layer"]["0"]["ffn"]["lin1"]["kernel"],
        teacher_params["bert"]["encoder"]["layer"]["0"]["intermediate"]["dense"]["kernel"])


@pytest.mark.slow  # the loop's exact resume is checked by default in test_resume.py
def test_crash_then_resume_equals_uninterrupted(teacher, corpus_file, tmp_path, monkeypatch):
    config = tiny(teacher, corpus_file)
    distill.distill(config, str(tmp_path / "straight"))
    real = distill.make_step
    monkeypatch.setattr(distill, "make_step", crashing_at(9, real))
    with pytest.raises(KeyboardInterrupt):
        distill.distill(config, str(tmp_path / "resumed"))
    monkeypatch.setattr(distill, "make_step", real)
    results = distill.distill(config, str(tmp_path / "resumed"))
    assert results["steps_this_run"] in (4, 8)  # from step 8, or 4 if the crash beat the async save
    a = safetensors.numpy.load_file(str(tmp_path / "straight" / "student" / "model.safetensors"))
    b = safetensors.numpy.load_file(str(tmp_path / "resumed" / "student" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # the finished workdir is never reused with another corpus (its prepared corpus would be)
    config.corpus_files = (corpus_file, corpus_file)
    with pytest.raises(ConfigError, match=r"holds a run with other values of \['corpus_files'\]"):
        distill.distill(config, str(tmp_path / "resumed"))


def test_a_non_finite_loss_stops_naming_step_and_term(teacher, corpus_file, tmp_path):
    config = tiny(teacher, corpus_file, lr=1e30, max_grad_norm=0.0, warmup_ratio=0.0, max_steps=6)
    with pytest.raises(loop.TrainingError,
                       match=r"(distill/loss\w*|train/\w+_norm) became (nan|inf) at step \d, so the run "
                             r"stopped before saving that state"):
        distill.distill(config, str(tmp_path / "run"))
    assert os.path.isdir(tmp_path / "run" / "checkpoints")


def test_bad_recipes_are_refused_before_compute(teacher, corpus_file, minilm_dir, tmp_path):
    with pytest.raises(ConfigError, match="has no masked-LM head"):
        distill.distill(tiny(minilm_dir, corpus_file), str(tmp_path / "a"))
    with pytest.raises(ConfigError, match="must be non-negative"):
        distill.distill(tiny(teacher, corpus_file, alpha_cos=-1.0), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match="word_mask \\+ word_keep \\+ word_rand = 1.1"):
        distill.distill(tiny(teacher, corpus_file, word_rand=0.2), str(tmp_path / "c"))
    # a corpus tokenised with another vocabulary (the 30,522-token MiniLM one) is refused
    distill.corpus.prepare([corpus_file], dj.Tokenizer.from_pretrained(minilm_dir), str(tmp_path / "corpus"), 64)
    with pytest.raises(DataError, match="was tokenised with another vocabulary"):
        distill.distill(tiny(teacher, corpus_file, corpus_dir=str(tmp_path / "corpus")), str(tmp_path / "d"))
    # a corpus of longer sequences than this run's max_length, or of other files than corpus_files
    tokenizer = dj.Tokenizer.from_pretrained(teacher)
    distill.corpus.prepare([corpus_file], tokenizer, str(tmp_path / "long"), 64)
    with pytest.raises(DataError, match="holds sequences of up to 64 tokens, more than max_length=32"):
        distill.distill(tiny(teacher, (), corpus_dir=str(tmp_path / "long"), max_length=32),
                        str(tmp_path / "e"))
    other = tmp_path / "other.txt"
    other.write_text("another text\n")
    with pytest.raises(DataError, match="already holds a corpus of"):
        distill.distill(tiny(teacher, str(other), corpus_dir=str(tmp_path / "long")), str(tmp_path / "f"))
    assert not any((tmp_path / d).exists() for d in "abcdef")


def test_fit_a_head_on_a_bare_teacher_then_distil_with_soft_targets(teacher, corpus_file, tmp_path):
    bare = tmp_path / "bare"
    model, params = dj.from_pretrained(teacher, head="base")
    dj.save_pretrained(bare, model, params, dj.Tokenizer.from_pretrained(teacher))
    config = tiny(str(bare), corpus_file, job="fit_teacher_head", max_steps=20, lr=1e-2)
    distill.fit_teacher_head(config, str(tmp_path / "head"))
    lines = losses_of(tmp_path / "head")
    assert lines[-1]["head/loss"] < lines[0]["head/loss"]
    fitted, fitted_params = dj.from_pretrained(tmp_path / "head" / "teacher")
    assert isinstance(fitted, dj.BertForMaskedLM)
    np.testing.assert_array_equal(  # the encoder did not move
        fitted_params["bert"]["encoder"]["layer"]["1"]["output"]["dense"]["kernel"],
        params["encoder"]["layer"]["1"]["output"]["dense"]["kernel"])
    results = distill.distill(tiny(str(tmp_path / "head" / "teacher"), corpus_file, max_steps=2),
                              str(tmp_path / "student"))
    assert results["steps_this_run"] == 2
    assert "distill/loss_ce" in losses_of(tmp_path / "student")[0]


def test_corpus_preparation_splits_cleans_counts_and_resumes(minilm_dir, tmp_path):
    from distilbert_jax.data import corpus
    tok = dj.Tokenizer.from_pretrained(minilm_dir)
    long_line = " ".join(["word"] * 300)
    lines = ["short line", long_line, "[UNK] " * 20, "a sentence with exactly enough words to be kept here ok"]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n\n")
    meta = corpus.prepare([str(tmp_path / "a.txt")], tok, str(tmp_path / "c"), max_length=128, chunk_lines=2)
    data = corpus.Corpus.load(str(tmp_path / "c"))
    # 300 words -> 302 tokens -> pieces of 127, 128, 51; the 4-token line and the [UNK] line are dropped
    assert sorted(data.lengths.tolist()) == [13, 51, 127, 128]
    for i in range(len(data.lengths)):
        seq = data.sequence(i)
        assert seq[0] == tok.cls_token_id and seq[-1] == tok.sep_token_id
    assert data.counts[tok.convert_tokens_to_ids(["word"])[0]] == 300
    assert meta["sequences"] == 4 and not list((tmp_path / "c").glob("part-*"))
    # an interrupted preparation (a chunk file left, no meta.json) keeps finished chunks: chunk 0
    # (lines 1-2) is taken from its file, here emptied to prove it is not tokenised again
    os.remove(tmp_path / "c" / "meta.json")
    (tmp_path / "c" / corpus.RECIPE).write_text(  # what an interrupted run of the same inputs leaves
        json.dumps(corpus._recipe([str(tmp_path / "a.txt")], tok, max_length=128, chunk_lines=2)))
    np.savez(tmp_path / "c" / "part-000000.npz", tokens=np.zeros(0, np.uint16), lengths=np.zeros(0, np.int32))
    corpus.prepare([str(tmp_path / "a.txt")], tok, str(tmp_path / "c"), max_length=128, chunk_lines=2)
    assert corpus.Corpus.load(str(tmp_path / "c")).lengths.tolist() == [13]
    with pytest.raises(corpus.DataError, match="does not exist"):
        corpus.prepare([str(tmp_path / "missing.txt")], tok, str(tmp_path / "d"))
    assert not (tmp_path / "d").exists()


def test_corpus_from_a_tfds_text_dataset(minilm_dir, tmp_path, monkeypatch):
    import sys
    import types
    from distilbert_jax.data import corpus
    articles = [b"First paragraph of an article that has more than eleven word pieces in it.\n\n"
                b"Second paragraph, also long enough to be kept by the cleaning rule here.",
                "A str article with one paragraph that is long enough to be kept as well."]
    requested = []
    fake = types.SimpleNamespace(data_source=lambda name, split: requested.append((name, split))
                                 or [{"text": a, "title": b"t"} for a in articles])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
    tok = dj.Tokenizer.from_pretrained(minilm_dir)
    meta = corpus.prepare(["tfds:wikipedia/20230601.en"], tok, str(tmp_path / "c"), max_length=128)
    assert requested == [("wikipedia/20230601.en", "train")]
    assert meta["sequences"] == 3  # one per paragraph
    data = corpus.Corpus.load(str(tmp_path / "c"))
    assert tok.decode(data.sequence(2).tolist(), skip_special_tokens=True).startswith("a str article")
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
    with pytest.raises(corpus.DataError, match="needs tensorflow-datasets"):
        corpus.prepare(["tfds:wikipedia/20230601.en:train[:1%]"], tok, str(tmp_path / "d"))


def test_length_grouped_batches_are_a_function_of_the_step(minilm_dir, tmp_path):
    from distilbert_jax.data import corpus
    rng = np.random.default_rng(0)
    lengths = rng.integers(12, 100, 300).astype(np.int32)
    tokens = rng.integers(1000, 2000, lengths.sum()).astype(np.uint16)
    data = corpus.Corpus(tokens, lengths, np.bincount(tokens, minlength=30522))
    straight = data.batches(8, 3, 0, 0, length_multiple=16)
    batches = [next(straight)["inputs"] for _ in range(50)]  # crosses an epoch (37 batches each)
    resumed = data.batches(8, 3, 41, 0, length_multiple=16)
    np.testing.assert_array_equal(next(resumed)["inputs"]["input_ids"], batches[41]["input_ids"])
    for b in batches:
        real = b["attention_mask"].sum(1)
        assert b["input_ids"].shape[1] % 16 == 0 and b["input_ids"].shape[1] - real.max() < 16
    spread = np.mean([np.ptp(b["attention_mask"].sum(1)) for b in batches])
    assert spread < 20  # grouped by length: far less spread than random batches (~70)
