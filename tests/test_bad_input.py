"""Bad input that used to be silently wrong or end in a traceback: now one sentence naming the
culprit (file, line, field, id or value), a non-zero exit where a CLI runs, nothing written lost."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import distilbert_jax as dj
from distilbert_jax import hf
from distilbert_jax.config import ConfigError
from distilbert_jax.data import DataError, corpus, glue, squad
from distilbert_jax.tokenizer import TokenizerError
from conftest import FIXTURES, TINY_VOCAB, make_tiny_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, *args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def last_line(result):
    return result.stderr.strip().splitlines()[-1]


# --- 5. data that was silently wrong ----------------------------------------------------------------

def write_squad(path, answer_start):
    context = "John lives in Paris, a city in France."
    data = {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": [
        {"id": "q-ok", "question": "Who?", "answers": [{"text": "John", "answer_start": 0}]},
        {"id": "q-shifted", "question": "Where?",
         "answers": [{"text": "Paris", "answer_start": answer_start}]}]}]}]}
    path.write_text(json.dumps(data))
    return str(path)


def test_squad_answer_that_is_not_at_answer_start_names_question_and_file(tmp_path):
    assert len(squad.read_squad(write_squad(tmp_path / "good.json", 14))) == 2
    path = write_squad(tmp_path / "train-v1.1.json", 15)  # one character off
    with pytest.raises(DataError, match=r"train-v1.1.json: question 'q-shifted' has the answer "
                                        r"'Paris' at answer_start 15, but the context there reads "
                                        r"'aris,'; fix answer_start"):
        squad.read_squad(path)


def test_vocab_with_a_duplicated_token_names_file_token_and_lines(tmp_path):
    directory = make_tiny_model_dir(tmp_path / "m")
    vocab = TINY_VOCAB[:98] + ["good"]  # 'good' is also on an earlier line
    (tmp_path / "m" / "vocab.txt").write_text("\n".join(vocab) + "\n")
    first = vocab.index("good") + 1
    with pytest.raises(TokenizerError, match=rf"vocab.txt:99: the token 'good' is already on line "
                                             rf"{first}; a vocabulary lists each token once"):
        dj.Tokenizer.from_pretrained(directory)


def test_header_only_train_tsv_is_refused_with_exit_2(tiny_model, tmp_path):
    data = tmp_path / "SST-2"
    data.mkdir()
    (data / "train.tsv").write_text("sentence\tlabel\n")
    (data / "dev.tsv").write_text("sentence\tlabel\ngood film\t1\n")
    with pytest.raises(DataError, match=r"train.tsv has no examples, only a header\.$"):
        glue.GlueTask("sst2", str(data)).load("train")
    result = run_cli("distilbert_jax.main", "--config=configs/smoke.py", f"--workdir={tmp_path / 'w'}",
                     f"--config.model={tiny_model}", f"--config.data_dir={data}")
    assert result.returncode == 2
    assert last_line(result) == f"error: {data / 'train.tsv'} has no examples, only a header."
    assert not (tmp_path / "w").exists()


def test_checkpoint_labels_that_differ_from_the_task_labels(tmp_path):
    mnli = dj.DistilBertConfig(num_labels=3, id2label=("entailment", "neutral", "contradiction"))
    sst2 = glue.GlueTask("sst2").label_names
    with pytest.raises(hf.CheckpointError, match=(
            r"^runs/mnli/model was trained on the labels \['entailment', 'neutral', 'contradiction'\] "
            r"but sst2 has the labels \['negative', 'positive'\]; evaluate it on the task it was "
            r"trained on, or fine-tune it on sst2 first\.$")):
        hf.check_labels(mnli, sst2, checkpoint="runs/mnli/model", task="sst2")
    with pytest.raises(hf.CheckpointError, match=r"labels \['positive', 'negative'\] but"):  # order
        hf.check_labels(dj.DistilBertConfig(id2label=("positive", "negative")), sst2)
    with pytest.raises(hf.CheckpointError, match=r"labels \['LABEL_0', 'LABEL_1', 'LABEL_2'\] but"):
        hf.check_labels(hf.read_config(os.path.join(FIXTURES, "models", "distilbert_seqcls"))[0], sst2)
    # accepted: the same names (HF's SST-2 checkpoint writes them in capitals), HF's placeholder
    # names with the right count, and tasks without label names (regression, spans)
    hf.check_labels(dj.DistilBertConfig(id2label=("NEGATIVE", "POSITIVE")), sst2)
    hf.check_labels(dj.DistilBertConfig(num_labels=2), sst2)
    hf.check_labels(mnli, None)


# --- the corpus tool ---------------------------------------------------------------------------------

LINE = "the movie was good and the film was great and it is not bad"  # 16 tokens with [CLS] [SEP]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return dj.Tokenizer.from_pretrained(make_tiny_model_dir(tmp_path_factory.mktemp("tok")))


def swapped_tokenizer(directory):
    """The tiny vocabulary with two tokens trading ids: same size, another tokenizer."""
    vocab = list(TINY_VOCAB[:99])
    i, j = vocab.index("good"), vocab.index("bad")
    vocab[i], vocab[j] = vocab[j], vocab[i]
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    return dj.Tokenizer.from_pretrained(str(directory))


def interrupted_prepare(tok, tmp_path, monkeypatch):
    """Prepares tmp_path/a.txt (4 lines) into tmp_path/c, killed after its first chunk; returns
    the text file. Chunk writing is restored afterwards."""
    text = tmp_path / "a.txt"
    text.write_text("\n".join([LINE] * 4) + "\n")
    write_chunk = corpus._write_chunk

    def fail_after_first(out_dir, chunk, *args):
        if chunk == 1:
            raise KeyboardInterrupt
        write_chunk(out_dir, chunk, *args)

    monkeypatch.setattr(corpus, "_write_chunk", fail_after_first)
    with pytest.raises(KeyboardInterrupt):
        corpus.prepare([str(text)], tok, str(tmp_path / "c"), chunk_lines=2)
    monkeypatch.setattr(corpus, "_write_chunk", write_chunk)
    return text


def test_corpus_does_not_reuse_chunks_of_a_failed_prepare_of_other_input(tok, tmp_path, monkeypatch):
    text = interrupted_prepare(tok, tmp_path, monkeypatch)
    assert (tmp_path / "c" / "part-000000.npz").exists()
    # the file is edited before the retry: the old chunk 0 (4 sequences of LINE) must not survive
    text.write_text("\n".join([LINE + " in paris"] * 3) + "\n")
    meta = corpus.prepare([str(text)], tok, str(tmp_path / "c"), chunk_lines=2)
    data = corpus.Corpus.load(str(tmp_path / "c"))
    assert meta["sequences"] == 3 and data.lengths.tolist() == [18, 18, 18]
    assert sorted(os.listdir(tmp_path / "c")) == ["lengths.npy", "meta.json", "token_counts.npy",
                                                   "tokens.npy"]


def test_corpus_resumes_an_interrupted_prepare_of_the_same_input(tok, tmp_path, monkeypatch):
    text = interrupted_prepare(tok, tmp_path, monkeypatch)
    # chunk 0 is emptied to prove the retry takes it from its file instead of tokenising again
    np.savez(tmp_path / "c" / "part-000000.npz", tokens=np.zeros(0, np.uint16),
             lengths=np.zeros(0, np.int32))
    corpus.prepare([str(text)], tok, str(tmp_path / "c"), chunk_lines=2)
    assert corpus.Corpus.load(str(tmp_path / "c")).lengths.tolist() == [16, 16]


def test_corpus_folder_input_is_named_a_folder(tok, tmp_path):
    (tmp_path / "texts").mkdir()
    with pytest.raises(DataError, match=r"^Corpus file '.*texts' is a folder, not a file; pass the "
                                        r"text files in it\.$"):
        corpus.prepare([str(tmp_path / "texts")], tok, str(tmp_path / "c"))
    assert not (tmp_path / "c").exists()
    result = run_cli("distilbert_jax.data.corpus", str(tmp_path / "texts"),
                     f"--tokenizer={make_tiny_model_dir(tmp_path / 'm')}", f"--out={tmp_path / 'c'}")
    assert result.returncode == 2
    assert last_line(result) == (f"error: Corpus file '{tmp_path / 'texts'}' is a folder, not a file; "
                                 "pass the text files in it.")


def test_corpus_tokenised_with_another_vocabulary_of_the_same_size(tok, tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("\n".join([LINE] * 3) + "\n")
    meta = corpus.prepare([str(text)], tok, str(tmp_path / "c"))
    assert meta["tokenizer_sha256"] == corpus.tokenizer_fingerprint(tok)
    corpus.check_tokenizer(str(tmp_path / "c"), tok)  # the same tokenizer passes
    other = swapped_tokenizer(tmp_path / "other")
    assert other.vocab_size == tok.vocab_size
    with pytest.raises(DataError, match=(
            rf"^The corpus in {tmp_path / 'c'} was tokenised with another vocabulary \(sha256 "
            rf"{meta['tokenizer_sha256'][:12]}\) than the teacher's tokenizer \(sha256 \w{{12}}, 99 "
            r"tokens\); prepare the corpus again with this tokenizer, into another directory\.$")):
        corpus.check_tokenizer(str(tmp_path / "c"), other, "the teacher's tokenizer")
    # preparing into the same directory with the other tokenizer is refused, and nothing is lost
    before = {p: (tmp_path / "c" / p).read_bytes() for p in os.listdir(tmp_path / "c")}
    with pytest.raises(DataError, match="tokenised with another vocabulary"):
        corpus.prepare([str(text)], other, str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"already holds a corpus of .* choose another output directory"):
        corpus.prepare([str(text), str(text)], tok, str(tmp_path / "c"))
    assert {p: (tmp_path / "c" / p).read_bytes() for p in os.listdir(tmp_path / "c")} == before
    # a corpus from before the fingerprint: only its vocabulary size can be checked
    old = dict(meta)
    del old["tokenizer_sha256"]
    (tmp_path / "c" / "meta.json").write_text(json.dumps(old | {"vocab_size": 30522}))
    with pytest.raises(DataError, match="vocabulary of 30522 tokens but the tokenizer has 99"):
        corpus.check_tokenizer(str(tmp_path / "c"), tok)


def test_unfinished_corpus_is_not_loaded(tmp_path):
    (tmp_path / "c").mkdir()
    for name in ("tokens", "lengths", "token_counts"):
        np.save(tmp_path / "c" / f"{name}.npy", np.zeros(1, np.int32))
    with pytest.raises(DataError, match="no meta.json: its preparation never finished"):
        corpus.Corpus.load(str(tmp_path / "c"))


# --- 6. tracebacks where one sentence belongs ---------------------------------------------------------

def checkpoint_with_config(tmp_path, write):
    directory = make_tiny_model_dir(tmp_path / "m")
    path = os.path.join(directory, "config.json")
    write(path)
    return directory, path


def test_config_json_that_is_a_list_or_not_utf8(tmp_path):
    directory, path = checkpoint_with_config(tmp_path, lambda p: open(p, "w").write("[1, 2]"))
    with pytest.raises(hf.CheckpointError, match=r"config.json holds a JSON list, not the JSON object "
                                                 r"of config fields a checkpoint's config.json holds\.$"):
        dj.from_pretrained(directory)
    with pytest.raises(ConfigError, match=r"config.json: a DistilBertConfig must be a JSON object of "
                                          r"field names and values, not a list\.$"):
        dj.DistilBertConfig.from_json_file(path)
    with open(path, "wb") as f:
        f.write('{"model_type": "distilbert", "dim": 32, "note": "caf\u00e9"}'.encode("latin-1"))
    with pytest.raises(hf.CheckpointError, match=r"config.json is not UTF-8 text \(byte 52: b'\\xe9'\)\.$"):
        dj.from_pretrained(directory)
    with pytest.raises(ConfigError, match=r"config.json' is not UTF-8 text"):
        dj.DistilBertConfig.from_json_file(path)


@pytest.mark.parametrize("kwargs, message", [
    ({"n_heads": 0}, r"n_heads=0 must be between 1 and 100,000\."),
    ({"dim": 30, "n_heads": 4}, r"n_heads=4 does not divide dim=30\."),
    ({"dim": -8}, r"dim=-8 must be between 1 and 1,000,000\."),
    ({"hidden_dim": 0}, r"hidden_dim=0 must be between 1 and 1,000,000\."),
    ({"vocab_size": 0}, r"vocab_size=0 must be between 1 and 10,000,000\."),
    ({"max_position_embeddings": 0}, r"max_position_embeddings=0 must be between 1 and 1,000,000\."),
    ({"n_layers": 10**9}, r"n_layers=1000000000 must be between 1 and 1,000\."),
    ({"n_layers": 6.5}, r"n_layers=6.5 must be a whole number\."),
    ({"n_heads": "12"}, r"n_heads='12' must be a whole number\."),
    ({"dropout": "0.1"}, r"dropout='0.1' must be a number\."),
])
def test_sizes_are_validated(kwargs, message):
    with pytest.raises(ConfigError, match="^" + message + "$"):
        dj.DistilBertConfig(**kwargs)


def test_bert_sizes_are_validated():
    with pytest.raises(ConfigError, match=r"^num_attention_heads=0 must be between 1 and 100,000\.$"):
        dj.BertConfig(num_attention_heads=0)
    with pytest.raises(ConfigError, match=r"^type_vocab_size=0 must be between 1"):
        dj.BertConfig(type_vocab_size=0)
    assert dj.DistilBertConfig(n_layers=6.0).n_layers == 6  # JSON may write 6.0


@pytest.mark.parametrize("field, value, message", [
    ("n_layers", 1e9, r"n_layers=1000000000 must be between 1 and 1,000\."),
    ("vocab_size", 1e12, r"vocab_size=1000000000000 must be between 1 and 10,000,000\."),
    ("n_heads", 0, r"n_heads=0 must be between 1 and 100,000\."),
    ("n_layerz", 2, r"DistilBertConfig has no field 'n_layerz' \(did you mean 'n_layers'\?\)\."),
])
def test_absurd_config_json_is_refused_before_building_the_model(tmp_path, field, value, message):
    def write(path):
        values = json.load(open(path))
        values[field] = value
        json.dump(values, open(path, "w"))
    directory, _ = checkpoint_with_config(tmp_path, write)
    with pytest.raises(ConfigError, match=r"config.json: " + message + "$"):
        dj.from_pretrained(directory)


def test_config_file_with_a_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    c = dict(\n    return c\n")
    result = run_cli("distilbert_jax.main", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: cannot load --config={bad}: '(' was never closed at line 2."
    bad.write_text("import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict(x)\n")
    result = run_cli("distilbert_jax.main", f"--config={bad}", f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: cannot load --config={bad}: NameError: name 'x' is not "
                                     "defined at line 4.")
    assert not (tmp_path / "w").exists()


def test_misspelt_config_field_suggests_the_field(tmp_path):
    result = run_cli("distilbert_jax.main", "--config=configs/smoke.py", "--config.lrr=1",
                     f"--workdir={tmp_path / 'w'}")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: the config has no field 'lrr' (did you mean 'lr'?)"


def test_sweep_set_takes_mains_form_too():
    from distilbert_jax.experiments import sweep
    overrides = sweep.parse_set(["max_steps=2", "--config.save_model=False", "config.buckets=(16, 48)",
                                 "--config.model=packaged:all-MiniLM-L6-v2"])
    assert overrides == {"max_steps": "2", "save_model": "False", "buckets": "(16, 48)",
                         "model": "packaged:all-MiniLM-L6-v2"}
    config = sweep.load_config("configs/glue.py", "sst2", overrides)
    assert (config.max_steps, config.save_model, tuple(config.buckets), config.model) == (
        2, False, (16, 48), "packaged:all-MiniLM-L6-v2")
    with pytest.raises(ValueError, match=r"^the config has no field 'lrr' \(did you mean 'lr'\?\)$"):
        sweep.load_config("configs/glue.py", "sst2", {"lrr": "1"})
    nested = sweep.load_config("configs/custom.py", "text", {"task_options.label_column": "stars"})
    assert nested.task_options.label_column == "stars"
    with pytest.raises(ValueError, match=r"^the config has no field 'task_options.label_colum'"):
        sweep.load_config("configs/custom.py", "text", {"task_options.label_colum": "stars"})
    with pytest.raises(ValueError, match=r"^--set=lr is not of the form field=value"):
        sweep.parse_set(["lr"])
