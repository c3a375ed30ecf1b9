"""Predictions for a file of text, with any checkpoint and `dj.pipeline` task:

    python -m distilbert_jax.predict --model=runs/sst2/model --task=text-classification \\
        --input=reviews.txt [--output=predictions.jsonl] [--text_column=text] [--batch_size=32] \\
        [--packing] [--options='{"top_k": 2}']

--input: text lines (.txt, one text a line, blank lines skipped), JSON lines (.jsonl: the
--text_column field, or "question" and "context" for question-answering; "text_pair" makes a pair
and "id" is copied to the output), or CSV with a header (.csv, the same columns). `-` reads
stdin (JSON lines when the first line starts with "{", else text lines).
--output: JSON lines, or CSV when it ends in .csv; stdout when left out. The file appears
whole when every row is done (written to a temporary file first). Progress and throughput go to
stderr. Every input is checked before the model is loaded: a missing file or column, or a bad
row (named by file:line), is one sentence and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import distilbert_jax as dj
from distilbert_jax import startup, storage
from distilbert_jax.data.custom import KINDS, MissingColumn, parse_records, read_text
from distilbert_jax.errors import UserError

OUTPUT_FIELD = {"token-classification": "entities", "ner": "entities",
                "feature-extraction": "features", "sentence-embeddings": "embedding"}


class PredictError(UserError, ValueError):
    """Bad input or arguments for the predict command: one sentence for the user."""


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m distilbert_jax.predict",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint directory, hub id or packaged:all-MiniLM-L6-v2")
    parser.add_argument("--task", required=True, help="a dj.pipeline task, e.g. text-classification")
    parser.add_argument("--input", required=True, help=".txt, .jsonl or .csv file, or - for stdin")
    parser.add_argument("--output", default=None, help=".jsonl or .csv file (default: stdout, JSON lines)")
    parser.add_argument("--text_column", default="text", help="the text field of JSONL/CSV rows")
    parser.add_argument("--batch_size", type=int, default=32, help="texts per forward pass")
    parser.add_argument("--packing", action="store_true",
                        help="pack several texts per row: padding is not computed, answers unchanged")
    parser.add_argument("--options", default="{}", help="pipeline call options as a JSON object")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# Reading inputs: (where, row) pairs, where = "file:line"
# ------------------------------------------------------------------------------------------------

def read_rows(path: str, text_column: str, task: str) -> list[tuple[str, dict]]:
    """Every input row as {"text"} / {"text", "text_pair"} / {"question", "context"} (+ "id")."""
    qa = task == "question-answering"
    if path == "-":
        name, content = "<stdin>", sys.stdin.read().lstrip("\ufeff")
        kind = "jsonl" if content.lstrip().startswith("{") else "txt"
    else:
        if not os.path.exists(path):
            raise PredictError(f"--input={path} does not exist.")
        if os.path.isdir(path):
            raise PredictError(f"--input={path} is a folder; give a .txt, .jsonl or .csv file.")
        name, content = path, read_text(path)
        kind = KINDS.get(os.path.splitext(path)[1].lower(), "txt")
    columns = ("question", "context") if qa else (text_column,)
    if kind == "txt":
        if qa:
            raise PredictError(f"{name}: question-answering needs question and context fields; give "
                               "a .jsonl or .csv file.")
        rows = [(f"{name}:{i}", {"text": line.rstrip("\r")})
                for i, line in enumerate(content.split("\n"), 1) if line.strip()]
    else:  # the same reader as the tasks' own files
        try:
            rows = [(f"{name}:{line}", row) for line, row in parse_records(name, content, kind, columns)]
        except MissingColumn as e:
            raise PredictError(str(e)[:-1] + ("" if qa else "; pass --text_column=NAME") + ".") from None
    checked = []
    for where, row in rows:
        for column in columns:
            if not isinstance(row[column], str) or not row[column].strip():
                raise PredictError(f"{where}: the {column!r} field is {_short(row[column])}, "
                                   "not a non-empty text.")
        out = ({"question": row["question"], "context": row["context"]} if qa
               else {"text": row[text_column]})
        if not qa and row.get("text_pair") not in (None, ""):
            if not isinstance(row["text_pair"], str):
                raise PredictError(f"{where}: the 'text_pair' field is {_short(row['text_pair'])}, not text.")
            out["text_pair"] = row["text_pair"]
        if "id" in row:
            out["id"] = row["id"]
        checked.append((where, out))
    if not checked:
        raise PredictError(f"{name} has no rows to predict.")
    return checked


def _short(value) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------------------------
# Writing outputs
# ------------------------------------------------------------------------------------------------

def record(task: str, row: dict, result) -> dict:
    """One output row: the input's fields (not a QA context) and the prediction's."""
    out = {k: v for k, v in row.items() if k != "context"}
    if isinstance(result, dict):
        out.update(result)
    else:
        out[OUTPUT_FIELD.get(task, "predictions")] = result
    return out


class Writer:
    """JSON lines or CSV to a temporary file renamed at the end (storage.atomic_open), or JSON lines
    straight to stdout.
    CSV rows are written at the end, under a header of every field any row has."""

    def __init__(self, path: str | None):
        self.path = path
        self.csv_rows = [] if path is not None and path.lower().endswith(".csv") else None
        self.atomic = storage.atomic_open(path, "w", newline="") if path else None
        self.file = self.atomic.__enter__() if path else sys.stdout

    def write(self, rec: dict):
        if self.csv_rows is None:
            self.file.write(json.dumps(rec, ensure_ascii=False) + "\n")
            return
        self.csv_rows.append({k: v if isinstance(v, (str, int, float)) or v is None
                              else json.dumps(v, ensure_ascii=False) for k, v in rec.items()})

    def close(self, ok: bool):
        if ok and self.csv_rows is not None:
            header = list(dict.fromkeys(k for row in self.csv_rows for k in row))
            writer = csv.DictWriter(self.file, fieldnames=header)
            writer.writeheader()
            writer.writerows(self.csv_rows)
        if self.path is None:
            self.file.flush()
            return
        if ok:  # renamed onto the path; otherwise removed, an older file of that name kept
            self.atomic.__exit__(None, None, None)
        else:
            self.atomic.__exit__(RuntimeError, RuntimeError("predict stopped"), None)


# ------------------------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------------------------

def predict(args) -> dict:
    """Reads every row, builds the pipeline, predicts in chunks, writes; returns timing figures."""
    try:
        options = json.loads(args.options)
    except json.JSONDecodeError as e:
        raise PredictError(f"--options is not valid JSON ({e.msg}); e.g. --options='{{\"top_k\": 2}}'.") from None
    if not isinstance(options, dict):
        raise PredictError("--options must be a JSON object, e.g. --options='{\"top_k\": 2}'.")
    if args.batch_size < 1:
        raise PredictError(f"--batch_size={args.batch_size} must be at least 1.")
    if args.task not in dj.pipelines.TASKS:
        raise PredictError(f"--task={args.task!r} is not one of {list(dj.pipelines.TASKS)}.")
    if args.output and os.path.isdir(args.output):
        raise PredictError(f"--output={args.output} is a folder; give a .jsonl or .csv file name.")
    if args.output and not os.path.isdir(os.path.dirname(os.path.abspath(args.output))):
        raise PredictError(f"--output={args.output}: the folder {os.path.dirname(args.output)} does not exist.")
    rows = read_rows(args.input, args.text_column, args.task)

    started = time.perf_counter()
    pipe = dj.pipeline(args.task, model=args.model, batch_size=args.batch_size, packing=args.packing)
    qa = args.task == "question-answering"
    writer = Writer(args.output)
    ok, first, done = False, None, 0
    chunk = max(args.batch_size * 4, 64)
    try:
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            if qa:
                inputs = [{"question": r["question"], "context": r["context"]} for _, r in part]
            else:
                inputs = [({"text": r["text"], "text_pair": r["text_pair"]} if "text_pair" in r
                           else r["text"]) for _, r in part]
            results = pipe(inputs, **options)
            if len(inputs) == 1 and args.task in ("fill-mask", "question-answering"):
                results = [results]  # as transformers, these unwrap a list of one input
            for (_, row), result in zip(part, results):
                writer.write(record(args.task, row, result))
            done += len(part)
            now = time.perf_counter()
            first = first if first is not None else now - started
            print(f"predict: {done}/{len(rows)} rows, {done / (now - started):.1f} rows/s",
                  end="\r" if sys.stderr.isatty() else "\n", file=sys.stderr, flush=True)
        ok = True
    finally:
        writer.close(ok)
    elapsed = time.perf_counter() - started
    print(f"predict: {done} rows in {elapsed:.1f} s ({done / elapsed:.1f} rows/s; first "
          f"{min(chunk, len(rows))} after {first:.1f} s, model loading and compiling included)"
          + (f"; wrote {args.output}" if args.output else ""), file=sys.stderr)
    return {"rows": done, "seconds": elapsed, "first_seconds": first}


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return startup.command(lambda: predict(args))


if __name__ == "__main__":
    sys.exit(main())
