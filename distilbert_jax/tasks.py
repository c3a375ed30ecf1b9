"""What each inference task computes, written once: the model head it runs, its output names (as
transformers' ONNX exports name them) and which of them have a length axis, and the default padded
lengths of inference. The export writer and runtime, the pipelines, the benchmark tasks (data/)
and fine-tuning's model card all read this table; it imports nothing of the package.

A task here is transformers' pipeline name ("text-classification", ...), not a benchmark
(`data.Task`, e.g. SST-2), although a benchmark's head names its task (`for_head`).
"""

from __future__ import annotations

import dataclasses

# The lengths inference pads a row to (one compiled shape each): the pipelines' default buckets and
# a LiteRT export's signature lengths. Training's are the job config's `buckets` (configs/default.py).
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One task: the head (a key of models.MODEL_CLASSES[family]; "base" is the encoder, which any
    checkpoint has), its outputs in order, and those with a length axis (cut to each row's length)."""

    name: str
    head: str
    outputs: tuple[str, ...]
    per_token: tuple[str, ...] = ()
    pipeline: bool = True  # whether `dj.pipeline` serves it (multiple choice: export only)


TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("feature-extraction", "base", ("last_hidden_state",), per_token=("last_hidden_state",)),
    TaskSpec("sentence-embeddings", "base", ("token_embeddings", "sentence_embedding"),
             per_token=("token_embeddings",)),
    TaskSpec("text-classification", "sequence_classification", ("logits",)),
    TaskSpec("token-classification", "token_classification", ("logits",), per_token=("logits",)),
    TaskSpec("question-answering", "question_answering", ("start_logits", "end_logits"),
             per_token=("start_logits", "end_logits")),
    TaskSpec("fill-mask", "masked_lm", ("logits",), per_token=("logits",)),
    TaskSpec("multiple-choice", "multiple_choice", ("logits",), pipeline=False),
)}


def for_head(head: str) -> TaskSpec:
    """The task a checkpoint with `head` serves by default: the first in TASKS with that head (a
    bare encoder's is feature-extraction; sentence-embeddings is asked for, or read from its files)."""
    return next(spec for spec in TASKS.values() if spec.head == head)
