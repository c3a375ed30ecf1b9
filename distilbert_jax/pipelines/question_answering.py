"""question-answering: the likeliest answer spans of a context, as transformers'
QuestionAnsweringPipeline; long contexts are read in overlapping windows."""

from __future__ import annotations

import numpy as np

from distilbert_jax.pipelines.base import Pipeline, PipelineError, check_text, describe, features


class QuestionAnsweringPipeline(Pipeline, task="question-answering"):
    """transformers' QuestionAnsweringPipeline: {score, start, end, answer}, character offsets into
    the context. A context longer than max_seq_len is read in windows overlapping by doc_stride
    tokens; the same answer found in several windows adds up its scores."""

    OPTIONS = {"top_k": 1, "doc_stride": None, "max_answer_len": 15, "max_seq_len": None,
               "max_question_len": 64, "handle_impossible_answer": False, "align_to_words": True}

    def parse_inputs(self, args, options):
        examples = qa_examples(args, options)
        return examples, len(examples) == 1

    def resolve_options(self, options):
        max_seq_len = options["max_seq_len"]
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384)
        max_seq_len = min(int(max_seq_len), self.max_length)
        doc_stride = options["doc_stride"]
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise PipelineError(f"doc_stride={doc_stride} is larger than max_seq_len={max_seq_len}.")
        if options["top_k"] < 1:
            raise PipelineError(f"top_k={options['top_k']} must be at least 1.")
        if options["max_answer_len"] < 1:
            raise PipelineError(f"max_answer_len={options['max_answer_len']} must be at least 1.")
        return {**options, "max_seq_len": max_seq_len, "doc_stride": doc_stride}

    def preprocess(self, examples, single, options):
        """Each example's windows: the question with as much of the context as max_seq_len holds,
        the next window doc_stride tokens back from the end of the last."""
        windows = self.encode([e["question"] for e in examples], [e["context"] for e in examples],
                              max_length=options["max_seq_len"], truncation="only_second",
                              stride=options["doc_stride"], return_overflowing_tokens=True)
        return [[features(w, encoding=w) for w in per_example] for per_example in windows]

    def postprocess(self, example, rows, outputs, options):
        """The top_k spans over all windows, an answer found in several adding up its scores."""
        top_k, align = options["top_k"], options["align_to_words"]
        answers, min_null_score = [], 1000000.0
        for row, out in zip(rows, outputs):
            encoding = row["encoding"]
            p_mask = [s != 1 for s in encoding.sequence_ids]
            for j, t in enumerate(encoding.ids):
                if t == self.tokenizer.cls_token_id:
                    p_mask[j] = False
            starts, ends, scores, min_null_score = select_starts_ends(
                out["start_logits"][None], out["end_logits"][None], np.array(p_mask)[None],
                np.array(encoding.attention_mask)[None], min_null_score,
                top_k * 2 + 10 if align else top_k, options["handle_impossible_answer"],
                options["max_answer_len"])
            for s, e, score in zip(starts, ends, scores):
                start, end = char_span(encoding, int(s), int(e), align)
                text = example["context"][start:end]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same:
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": start, "end": end, "answer": text})
        if options["handle_impossible_answer"]:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda x: x["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers


def qa_examples(args, kwargs) -> list[dict]:
    """The question/context forms transformers accepts: {"question", "context"} dicts (or a list of
    them), `question=..., context=...` (strings or lists), or two positional strings."""
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        items = [{"question": args[0], "context": args[1]}]
    elif len(args) == 1:
        items = args[0]
    elif args:
        items = list(args)
    elif "question" in kwargs and "context" in kwargs:
        question, context = kwargs.pop("question"), kwargs.pop("context")
        if isinstance(question, str) and isinstance(context, str):
            items = [{"question": question, "context": context}]
        elif isinstance(question, list) and isinstance(context, str):
            items = [{"question": q, "context": context} for q in question]
        elif isinstance(question, list) and isinstance(context, list):
            if len(question) != len(context):
                raise PipelineError(f"question has {len(question)} items but context has "
                                    f"{len(context)}; give one context per question.")
            items = [{"question": q, "context": c} for q, c in zip(question, context)]
        else:
            raise PipelineError("question= and context= take strings or lists of strings.")
    else:
        raise PipelineError("The 'question-answering' pipeline takes {'question': ..., 'context': ...} "
                            "(or a list of them), or question= and context=.")
    items = [items] if isinstance(items, dict) else items
    if not isinstance(items, (list, tuple)) or not items:
        raise PipelineError("The 'question-answering' pipeline takes {'question': ..., 'context': ...} "
                            f"dicts or a non-empty list of them, not {describe(items)}.")
    for i, item in enumerate(items):
        where = "the input" if len(items) == 1 else f"input {i}"
        if not isinstance(item, dict) or "question" not in item or "context" not in item:
            raise PipelineError(f"{where} is {describe(item)}; each input is a dict with "
                                "'question' and 'context'.")
        check_text(item["question"], where + "'s question")
        check_text(item["context"], where + "'s context")
    return list(items)


def select_starts_ends(start, end, p_mask, attention_mask, min_null_score, top_k,
                       handle_impossible_answer, max_answer_len):
    """transformers' select_starts_ends: span scores from start/end logits [1, length]."""
    desired = np.abs(np.array(p_mask).astype(np.int64) - 1) & attention_mask.astype(np.int64)
    undesired = desired == 0
    start = np.where(undesired, -10000.0, np.asarray(start, np.float32))
    end = np.where(undesired, -10000.0, np.asarray(end, np.float32))
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, desired)
    return starts, ends, scores, min_null_score


def decode_spans(start, end, top_k, max_answer_len, desired):
    """transformers' decode_spans: the top_k (start, end) pairs of start * end probability with
    start <= end < start + max_answer_len, kept only where both ends are context tokens."""
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        best = [np.argmax(flat)]
    elif len(flat) < top_k:
        best = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, top_k)[0:top_k]
        best = idx[np.argsort(-flat[idx])]
    starts, ends = np.unravel_index(best, candidates.shape)[1:]
    # As transformers: nonzero() of the [1, length] mask also yields its row indices (all 0),
    # so position 0 always counts as desired; its probability was set to 0 above.
    keep = np.isin(starts, desired.nonzero()) & np.isin(ends, desired.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def char_span(encoding, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
    """Token span -> character span in the context, widened to whole words when asked."""
    if align_to_words:
        try:
            start_word, end_word = encoding.token_to_word(s), encoding.token_to_word(e)
            return (encoding.word_to_chars(start_word, sequence_index=1)[0],
                    encoding.word_to_chars(end_word, sequence_index=1)[1])
        except Exception:  # a special token has no word: transformers falls back to offsets too
            pass
    return encoding.offsets[s][0], encoding.offsets[e][1]
