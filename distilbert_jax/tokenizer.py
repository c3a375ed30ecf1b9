"""BERT WordPiece tokenizer on the Rust `tokenizers` library, called like transformers' fast tokenizer.

`Tokenizer.from_pretrained(dir)` reads tokenizer.json, or builds the same pipeline from vocab.txt
(BertNormalizer, BertPreTokenizer, WordPiece, [CLS] A [SEP] B [SEP]). Calling it returns the ids,
masks, offsets and overflow mapping that DistilBertTokenizerFast returns for the same arguments.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from distilbert_jax import storage
from distilbert_jax.errors import UserError

SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]", "pad_token": "[PAD]",
                  "cls_token": "[CLS]", "mask_token": "[MASK]"}
_TRUNCATION = {True: "longest_first", "longest_first": "longest_first", "only_first": "only_first",
               "only_second": "only_second"}
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length"}


class TokenizerError(UserError, ValueError):
    """A tokenizer file is missing or an argument combination is invalid."""


def read_vocab(vocab_file: str) -> dict[str, int]:
    """vocab.txt -> {token: line index}; a token listed twice, or a file that is not UTF-8, is
    refused (two ids for one token leave an id no text maps to, and training goes wrong quietly)."""
    vocab: dict[str, int] = {}
    try:
        with open(vocab_file, encoding="utf-8") as f:
            for i, line in enumerate(f):
                token = line.rstrip("\n")
                if token in vocab:
                    raise TokenizerError(
                        f"{vocab_file}:{i + 1}: the token {token!r} is already on line "
                        f"{vocab[token] + 1}; a vocabulary lists each token once.")
                vocab[token] = i
    except UnicodeDecodeError:
        raise TokenizerError(f"{vocab_file} is not UTF-8 text (after line {len(vocab)}).") from None
    return vocab


class Encoding(dict):
    """What a call returns: a dict (input_ids, attention_mask, ...) whose keys are also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class Tokenizer:
    """Uncased or cased BERT WordPiece with DistilBERT's model inputs (no token types by default)."""

    def __init__(self, backend: tokenizers.Tokenizer, model_max_length: int = 512,
                 do_lower_case: bool = True):
        self.backend = backend
        backend.no_truncation()  # a tokenizer.json may carry its own; every call sets what it needs
        backend.no_padding()
        self.model_max_length = model_max_length
        self.do_lower_case = do_lower_case
        # transformers' decode() also applies its clean_up_tokenization when tokenizer_config.json
        # says so (its default is False); from_pretrained reads it.
        self.clean_up_tokenization_spaces = False
        for attr, token in SPECIAL_TOKENS.items():
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise TokenizerError(f"The vocabulary has no {token} token.")
            setattr(self, attr + "_id", token_id)

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_vocab(cls, vocab_file: str | os.PathLike, do_lower_case: bool = True,
                   strip_accents: bool | None = None, tokenize_chinese_chars: bool = True,
                   model_max_length: int = 512) -> "Tokenizer":
        """The pipeline transformers builds from vocab.txt (its BertConverter)."""
        vocab_file = os.fspath(vocab_file)
        if not os.path.exists(vocab_file):
            raise TokenizerError(f"Vocabulary file {vocab_file!r} does not exist.")
        vocab = read_vocab(vocab_file)
        backend = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        backend.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents, lowercase=do_lower_case)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        cls_id, sep_id = vocab.get("[CLS]"), vocab.get("[SEP]")
        if cls_id is None or sep_id is None:
            raise TokenizerError(f"{vocab_file} has no [CLS] or no [SEP] token.")
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
        backend.decoder = decoders.WordPiece(prefix="##")
        return cls(backend, model_max_length, do_lower_case)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "Tokenizer":
        """A directory (tokenizer.json or vocab.txt, with tokenizer_config.json), a file, or a hub id."""
        path = os.fspath(path)
        if os.path.isfile(path):
            directory, name = os.path.split(path)
        else:
            if not os.path.isdir(path):
                from distilbert_jax.hf import resolve  # hub download shares the checkpoint logic
                path = resolve(path)
            directory, name = path, None
        options = {}
        config_file = os.path.join(directory, "tokenizer_config.json")
        if os.path.exists(config_file):
            with open(config_file, encoding="utf-8") as f:
                saved = json.load(f)
            options = {k: saved[k] for k in ("do_lower_case", "strip_accents", "tokenize_chinese_chars",
                                             "model_max_length") if saved.get(k) is not None}
            if options.get("model_max_length", 0) > 1e9:  # HF's "no limit" sentinel
                del options["model_max_length"]
            clean_up = bool(saved.get("clean_up_tokenization_spaces", False))
        else:
            clean_up = False
        tokenizer = cls._from_files(path, directory, name, options)
        tokenizer.clean_up_tokenization_spaces = clean_up
        return tokenizer

    @classmethod
    def _from_files(cls, path, directory, name, options) -> "Tokenizer":
        tokenizer_json = os.path.join(directory, name or "tokenizer.json")
        if (name or "tokenizer.json").endswith(".json") and os.path.exists(tokenizer_json):
            backend = tokenizers.Tokenizer.from_file(tokenizer_json)
            return cls(backend, options.get("model_max_length", 512),
                       options.get("do_lower_case", True))
        vocab = os.path.join(directory, name or "vocab.txt")
        if not os.path.exists(vocab):
            raise TokenizerError(f"{path} has neither tokenizer.json nor vocab.txt.")
        return cls.from_vocab(vocab, **options)

    def save_pretrained(self, directory: str | os.PathLike):
        """tokenizer.json, vocab.txt, tokenizer_config.json, special_tokens_map.json (HF layout)."""
        directory = os.fspath(directory)
        storage.makedirs(directory)
        vocab = sorted(self.backend.get_vocab().items(), key=lambda kv: kv[1])
        config = {"tokenizer_class": "DistilBertTokenizer", "do_lower_case": self.do_lower_case,
                  "model_max_length": self.model_max_length,
                  "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces, **SPECIAL_TOKENS}
        files = {
            "tokenizer.json": self.backend.to_str(),
            "vocab.txt": "".join(token + "\n" for token, _ in vocab),
            "tokenizer_config.json": json.dumps(config, indent=2),
            "special_tokens_map.json": json.dumps(SPECIAL_TOKENS, indent=2),
        }
        for name, text in files.items():
            storage.write_text(os.path.join(directory, name), text)

    # --- vocabulary ----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    @property
    def all_special_ids(self) -> list[int]:
        return sorted(getattr(self, attr + "_id") for attr in SPECIAL_TOKENS)

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.backend.token_to_id(t) if self.backend.token_to_id(t) is not None
                else self.unk_token_id for t in tokens]

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.backend.id_to_token(int(i)) for i in ids]

    def ids(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text, whole (no truncation or padding): the fast path for corpora."""
        self.backend.no_truncation()
        self.backend.no_padding()
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        return clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text

    # --- encoding ------------------------------------------------------------------------------------
    def __call__(self, text, text_pair=None, max_length: int | None = None, truncation=False,
                 padding=False, stride: int = 0, return_overflowing_tokens: bool = False,
                 return_offsets_mapping: bool = False, return_tensors: str | None = None,
                 return_token_type_ids: bool = False, return_special_tokens_mask: bool = False,
                 pad_to_multiple_of: int | None = None, is_split_into_words: bool = False,
                 return_word_ids: bool = False) -> Encoding:
        """Encodes one text (or pair) or a batch, with transformers' argument semantics.

        truncation: False | True | 'longest_first' | 'only_first' | 'only_second'.
        padding: False | True | 'longest' | 'max_length'. return_tensors: None | 'np' | 'jax'.
        is_split_into_words: each text is a list of words; return_word_ids adds `word_ids` (the
        word index of every token, None for special tokens and padding).
        """
        if is_split_into_words:
            batched = bool(text) and isinstance(text[0], (list, tuple))
        else:
            batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = None if text_pair is None else (list(text_pair) if batched else [text_pair])
        windows = self.encodings(texts, pairs, max_length, truncation, stride, return_overflowing_tokens,
                                 padding, pad_to_multiple_of, is_split_into_words)

        out: dict[str, list] = {"input_ids": [], "attention_mask": []}
        if return_token_type_ids:
            out["token_type_ids"] = []
        if return_special_tokens_mask:
            out["special_tokens_mask"] = []
        if return_offsets_mapping:
            out["offset_mapping"] = []
        if return_overflowing_tokens:
            out["overflow_to_sample_mapping"] = []
        if return_word_ids:
            out["word_ids"] = []
        for sample, pieces in enumerate(windows):
            for e in pieces:
                out["input_ids"].append(e.ids)
                out["attention_mask"].append(e.attention_mask)
                if return_token_type_ids:
                    out["token_type_ids"].append(e.type_ids)
                if return_special_tokens_mask:
                    out["special_tokens_mask"].append(e.special_tokens_mask)
                if return_offsets_mapping:
                    out["offset_mapping"].append([tuple(o) for o in e.offsets])
                if return_overflowing_tokens:
                    out["overflow_to_sample_mapping"].append(sample)
                if return_word_ids:
                    out["word_ids"].append(list(e.word_ids))

        if return_tensors is not None:
            if return_word_ids:
                raise TokenizerError("word_ids hold None for special tokens; use return_tensors=None.")
            return Encoding({k: _as_tensor(k, v, return_tensors) for k, v in out.items()})
        if not batched and not return_overflowing_tokens:
            return Encoding({k: v[0] for k, v in out.items()})
        return Encoding(out)

    def encodings(self, text: Sequence, text_pair: Sequence | None = None, max_length: int | None = None,
                  truncation=False, stride: int = 0, return_overflowing_tokens: bool = False,
                  padding=False, pad_to_multiple_of: int | None = None, is_split_into_words: bool = False
                  ) -> list[list[tokenizers.Encoding]]:
        """The `tokenizers.Encoding` of each text (or pair) as a list per text: the first window,
        then the overflowing ones when asked (unpadded unless `padding`). `__call__` is built on
        it. Encodings also answer `sequence_ids`, `word_ids`, `token_to_word` and `word_to_chars`,
        which the pipelines use to map back to characters."""
        texts = list(text)
        pairs = None if text_pair is None else list(text_pair)
        if pairs is not None and len(pairs) != len(texts):
            raise TokenizerError(f"text has {len(texts)} items but text_pair has {len(pairs)}.")
        for t in texts + (pairs or []):
            words = t if is_split_into_words and isinstance(t, (list, tuple)) else [t]
            if not all(isinstance(w, str) for w in words):
                raise TokenizerError(f"Expected a string to encode, got {type(t).__name__}: {t!r}.")
        self._configure(max_length, truncation, padding, stride, pad_to_multiple_of)
        inputs = texts if pairs is None else list(zip(texts, pairs))
        try:
            encoded = self.backend.encode_batch(inputs, is_pretokenized=is_split_into_words)
        except Exception as e:  # the Rust side reports e.g. a stride too large for max_length
            raise TokenizerError(f"Tokenization failed: {e}.") from None
        return [[e] + (list(e.overflowing) if return_overflowing_tokens else []) for e in encoded]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Tokens joined back into text by the tokenizer's decoder (WordPiece: '##' pieces glued)."""
        decoder = self.backend.decoder
        return decoder.decode(list(tokens)) if decoder is not None else " ".join(tokens)

    def _configure(self, max_length, truncation, padding, stride, pad_to_multiple_of):
        """Sets truncation and padding on the backend exactly as transformers does per call."""
        if truncation not in (False, None) and truncation not in _TRUNCATION:
            raise TokenizerError(f"truncation={truncation!r} is not one of {[False, *_TRUNCATION]}.")
        if padding not in (False, None, "do_not_pad") and padding not in _PADDING:
            raise TokenizerError(f"padding={padding!r} is not one of {[False, *_PADDING]}.")
        truncate = truncation not in (False, None)
        pad = _PADDING.get(padding) if padding not in (False, None, "do_not_pad") else None
        if max_length is None and (truncate or pad == "max_length"):
            max_length = self.model_max_length
        if truncate:
            try:
                self.backend.enable_truncation(max_length, stride=stride,
                                               strategy=_TRUNCATION[truncation], direction="right")
            except ValueError as e:  # e.g. a stride that leaves no room for new tokens
                raise TokenizerError(f"Cannot truncate to max_length={max_length} with stride={stride}: "
                                     f"{str(e).rstrip(', ')}.") from None
        else:
            self.backend.no_truncation()
        if pad:
            self.backend.enable_padding(
                direction="right", pad_id=self.pad_token_id, pad_type_id=0, pad_token="[PAD]",
                length=max_length if pad == "max_length" else None,
                pad_to_multiple_of=pad_to_multiple_of)
        else:
            self.backend.no_padding()


def clean_up_tokenization(text: str) -> str:
    """transformers' clean-up of spaces before punctuation and in English contractions."""
    for dirty, clean in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                         (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"),
                         (" 're", "'re")):
        text = text.replace(dirty, clean)
    return text


def _as_tensor(key: str, rows: list, kind: str):
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        raise TokenizerError(
            f"Cannot make a {kind} tensor of {key}: rows have lengths {sorted(lengths)}; "
            "pass padding=True or padding='max_length'.")
    if kind == "np":
        return np.asarray(rows, dtype=np.int32)
    if kind == "jax":
        import jax.numpy as jnp
        return jnp.asarray(np.asarray(rows, dtype=np.int32))
    raise TokenizerError(f"return_tensors={kind!r} is not one of None, 'np', 'jax'.")
