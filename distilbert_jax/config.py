"""Model configurations with Hugging Face field names, defaults and config.json round trips.

`DistilBertConfig` and `BertConfig` are frozen dataclasses, so they can be fields of a flax Module
and keys of jit caches. Both refuse an unknown or inconsistent field with one sentence naming it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any, ClassVar, Mapping

from distilbert_jax.errors import UserError

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")

# Keys that transformers' PretrainedConfig writes into every config.json (generation settings,
# bookkeeping, legacy flags). They carry nothing this codebase uses, so reading them is not an error.
HF_GENERIC_KEYS = frozenset({
    "_name_or_path", "_attn_implementation", "_attn_implementation_autoset", "add_cross_attention",
    "architectures", "bad_words_ids", "begin_suppress_tokens", "bos_token_id", "chunk_size_feed_forward",
    "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty", "do_sample", "dtype",
    "early_stopping", "encoder_no_repeat_ngram_size", "eos_token_id", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "gradient_checkpointing",
    "is_decoder", "is_encoder_decoder", "label2id", "length_penalty", "max_length", "min_length",
    "model_type", "name_or_path", "no_repeat_ngram_size", "num_beam_groups", "num_beams",
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_past", "output_scores",
    "prefix", "pruned_heads", "remove_invalid_values", "repetition_penalty", "return_dict",
    "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params", "temperature",
    "tf_legacy_loss", "tie_encoder_decoder", "tie_weights_", "tokenizer_class", "top_k", "top_p",
    "torch_dtype", "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache",
})


class ConfigError(UserError, ValueError):
    """A configuration field is unknown or has a value the model cannot use."""


# Sizes (HF names) that must be whole numbers in [1, bound]. The bounds are far beyond any real
# model, and low enough that a typo such as n_layers=1e9 is refused instead of hanging or overflowing.
SIZE_LIMITS = {
    "vocab_size": 10_000_000, "max_position_embeddings": 1_000_000, "type_vocab_size": 1_000_000,
    "n_layers": 1000, "num_hidden_layers": 1000, "n_heads": 100_000, "num_attention_heads": 100_000,
    "dim": 1_000_000, "hidden_size": 1_000_000, "hidden_dim": 1_000_000,
    "intermediate_size": 1_000_000, "num_labels": 1_000_000,
}


def did_you_mean(name: str, candidates) -> str:
    """' (did you mean 'x'?)' for the closest of `candidates` to `name`, or ''."""
    close = difflib.get_close_matches(name, [str(c) for c in candidates], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclasses.dataclass(frozen=True)
class _ConfigBase:
    """Shared machinery: aliases, validation, HF config.json in and out."""

    model_type: ClassVar[str]
    attribute_map: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self):
        self._check_sizes()
        if self.problem_type not in PROBLEM_TYPES:
            raise ConfigError(f"problem_type={self.problem_type!r} is not one of {PROBLEM_TYPES}.")
        if self.id2label is not None and len(self.id2label) != self.num_labels:
            raise ConfigError(
                f"id2label has {len(self.id2label)} labels but num_labels={self.num_labels}.")
        if self.activation_name not in ACTIVATIONS:
            raise ConfigError(f"activation {self.activation_name!r} is not one of {ACTIVATIONS}.")
        if self.hidden_size % self.num_attention_heads:
            heads = self.attribute_map.get("num_attention_heads", "num_attention_heads")
            width = self.attribute_map.get("hidden_size", "hidden_size")
            raise ConfigError(
                f"{heads}={self.num_attention_heads} does not divide {width}={self.hidden_size}.")
        for name in self.dropout_fields():
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{name}={value!r} must be a number.")
            if value is not None and not 0.0 <= value < 1.0:
                raise ConfigError(f"{name}={value} must be in [0, 1).")

    def _check_sizes(self):
        """Whole numbers within SIZE_LIMITS (an integral float such as 6.0 from JSON becomes 6)."""
        for f in dataclasses.fields(self):
            if f.name not in SIZE_LIMITS:
                continue
            value, limit = getattr(self, f.name), SIZE_LIMITS[f.name]
            if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 63:
                value = int(value)
                object.__setattr__(self, f.name, value)  # frozen: the one place a field is set
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{f.name}={value!r} must be a whole number.")
            if not 1 <= value <= limit:
                raise ConfigError(f"{f.name}={value} must be between 1 and {limit:,}.")

    @classmethod
    def dropout_fields(cls) -> tuple[str, ...]:
        """Every dropout rate (HF names), e.g. to turn dropout off: {f: 0.0 for f in dropout_fields()}."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name.endswith("dropout") or f.name.endswith("_prob"))

    def __getattr__(self, name):  # only called when normal lookup fails: resolve HF aliases
        own = type(self).attribute_map.get(name)
        if own is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}.")
        return getattr(self, own)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def labels(self) -> tuple[str, ...]:
        return self.id2label or tuple(f"LABEL_{i}" for i in range(self.num_labels))

    # --- construction ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, ignore_hf_generic: bool = True):
        """Builds a config from HF-style keys; aliases are accepted, unknown keys are refused."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a {cls.__name__} must be a JSON object of field names and values, "
                              f"not a {type(values).__name__}.")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in values.items():
            key = cls.attribute_map.get(key, key)
            if key == "id2label" and value is not None:
                value = _id2label_tuple(value)
                if value == tuple(f"LABEL_{i}" for i in range(len(value))):
                    kwargs.setdefault("num_labels", len(value))
                    value = None  # HF's placeholder names: nothing worth keeping
            if key in fields:
                kwargs[key] = value
            elif not (ignore_hf_generic and key in HF_GENERIC_KEYS):
                raise ConfigError(f"{cls.__name__} has no field {key!r}"
                                  f"{did_you_mean(key, [*fields, *cls.attribute_map])}.")
        if kwargs.get("id2label") is not None:
            kwargs.setdefault("num_labels", len(kwargs["id2label"]))
        if values.get("model_type", cls.model_type) != cls.model_type:
            raise ConfigError(
                f"model_type={values['model_type']!r} cannot be read as a {cls.__name__} "
                f"(expected {cls.model_type!r}).")
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike):
        try:
            with open(path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"Config file {os.fspath(path)!r} does not exist.") from None
        except IsADirectoryError:
            raise ConfigError(f"Config file {os.fspath(path)!r} is a folder, not a file.") from None
        except UnicodeDecodeError as e:
            raise ConfigError(f"Config file {os.fspath(path)!r} is not UTF-8 text "
                              f"(byte {e.start}: {e.object[e.start:e.start + 1]!r}).") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"Config file {os.fspath(path)!r} is not valid JSON: {e}.") from None
        try:
            return cls.from_dict(values)
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{os.fspath(path)}: {e}") from None

    def replace(self, **changes):
        """A copy with some fields changed (HF aliases accepted), validated like the original."""
        return self.from_dict(dataclasses.asdict(self) | changes, ignore_hf_generic=False)

    def to_dict(self, architectures: list[str] | None = None) -> dict[str, Any]:
        """The dict transformers writes as config.json (id2label/label2id in HF's form)."""
        d = dataclasses.asdict(self)
        id2label = self.labels
        d["id2label"] = {str(i): label for i, label in enumerate(id2label)}
        d["label2id"] = {label: i for i, label in enumerate(id2label)}
        d["model_type"] = self.model_type
        if architectures:
            d["architectures"] = list(architectures)
        return d

    def to_json_file(self, path: str | os.PathLike, architectures: list[str] | None = None):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(architectures), f, indent=2, sort_keys=True)
            f.write("\n")


def _id2label_tuple(id2label) -> tuple[str, ...]:
    """HF stores {"0": "NEG", "1": "POS"}; we keep the names in id order."""
    if isinstance(id2label, Mapping):
        items = sorted((int(k), v) for k, v in id2label.items())
        if [k for k, _ in items] != list(range(len(items))):
            raise ConfigError(f"id2label keys {[k for k, _ in items]} are not 0..{len(items) - 1}.")
        return tuple(str(v) for _, v in items)
    return tuple(str(v) for v in id2label)


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(_ConfigBase):
    """DistilBERT, field for field as transformers' DistilBertConfig (same names and defaults)."""

    model_type: ClassVar[str] = "distilbert"
    attribute_map: ClassVar[Mapping[str, str]] = {
        "hidden_size": "dim", "num_attention_heads": "n_heads", "num_hidden_layers": "n_layers",
        "intermediate_size": "hidden_dim", "hidden_act": "activation",
    }

    vocab_size: int = 30522
    max_position_embeddings: int = 512
    sinusoidal_pos_embds: bool = False
    n_layers: int = 6
    n_heads: int = 12
    dim: int = 768
    hidden_dim: int = 3072
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation: str = "gelu"
    initializer_range: float = 0.02
    qa_dropout: float = 0.1
    seq_classif_dropout: float = 0.2
    pad_token_id: int = 0
    num_labels: int = 2
    problem_type: str | None = None
    id2label: tuple[str, ...] | None = None
    tie_word_embeddings: bool = True

    layer_norm_eps: ClassVar[float] = 1e-12  # hard-coded in HF's DistilBERT

    @property
    def activation_name(self) -> str:
        return self.activation


@dataclasses.dataclass(frozen=True)
class BertConfig(_ConfigBase):
    """The BERT teacher, field for field as transformers' BertConfig (absolute positions only)."""

    model_type: ClassVar[str] = "bert"

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    position_embedding_type: str = "absolute"
    classifier_dropout: float | None = None
    num_labels: int = 2
    problem_type: str | None = None
    id2label: tuple[str, ...] | None = None
    tie_word_embeddings: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.position_embedding_type != "absolute":
            raise ConfigError(
                f"position_embedding_type={self.position_embedding_type!r} is not supported "
                "(only 'absolute', as in BERT and DistilBERT).")

    @property
    def activation_name(self) -> str:
        return self.hidden_act


def config_from_dict(values: Mapping[str, Any]) -> DistilBertConfig | BertConfig:
    """Picks the config class from config.json's model_type ('distilbert' or 'bert')."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"a config must be a JSON object of field names and values, "
                          f"not a {type(values).__name__}.")
    model_type = values.get("model_type")
    for cls in (DistilBertConfig, BertConfig):
        if model_type == cls.model_type:
            return cls.from_dict(values)
    raise ConfigError(
        f"model_type={model_type!r} is not supported (expected 'distilbert' or 'bert').")
