"""Batch 1 x 128 latency of the int8 contenders, each measured in fresh processes, in turn.

    pip install -e ".[test,reference]"
    python benchmarks/latency_isolated.py --trained=runs/smoke/model          # MiniLM, as trained
    python benchmarks/latency_isolated.py --models=distilbert-base --processes=4  # a quick look

Why a second latency benchmark: on a small shared CPU, one onnxruntime session can stay 35% slower
than another session of the same file for its whole life (measured on this project's 2-core CPU),
so one session per side, as `inference_cpu.py` times them, can rank sides by luck. Here every side
runs --processes times, each time in a new process that loads one model, warms it up and times
--repeats calls at 1 x 128 tokens; the sides take turns (the order rotates every round) so a slow
phase of the machine lands on all of them. Reported per side: the median over processes of each
process's p50, and the fastest and slowest process's p50. Writes
benchmarks/results/latency_isolated.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

# label -> (how the child loads it, the file it loads)
SIDES = {
    "ours, ONNX int8 (our session)": ("onnx-ours", "ours.onnx"),
    "ours, LiteRT int8 (ai-edge-litert)": ("litert", "ours-litert/model.tflite"),
    "transformers ONNX int8 (onnxruntime)": ("onnx-default", "hf_int8.onnx"),
    "transformers ONNX + ORT fusions int8 (onnxruntime)": ("onnx-default", "hf_fused_int8.onnx"),
    "transformers + torch dynamic int8": ("torch-int8", "model"),
    "transformers, PyTorch eager float32": ("torch", "model"),
}
EAGER = "transformers, PyTorch eager float32"


def feed_1x128(names, dtype) -> dict[str, np.ndarray]:
    """One row of 128 real tokens for the named inputs."""
    fill = {"input_ids": 1000, "attention_mask": 1}
    return {n: np.full((1, 128), fill.get(n, 0), dtype) for n in names}


def child(kind: str, path: str, repeats: int) -> list[float]:
    """One process's life: load one model, warm it, time `repeats` calls at 1 x 128."""
    if kind.startswith("onnx"):
        if kind == "onnx-ours":
            from distilbert_jax.exported import onnx_session
            session = onnx_session(path)
        else:
            import onnxruntime
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = feed_1x128([i.name for i in session.get_inputs()], np.int64)
        call = lambda: session.run(None, feed)  # noqa: E731
    elif kind == "litert":
        from ai_edge_litert.interpreter import Interpreter
        runner = Interpreter(model_path=path, num_threads=os.cpu_count()).get_signature_runner("length_128")
        feed = feed_1x128(runner.get_input_details(), np.int32)
        call = lambda: runner(**feed)  # noqa: E731
    else:
        import torch
        from transformers import AutoModelForSequenceClassification
        model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        if kind == "torch-int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        feed = {"input_ids": torch.full((1, 128), 1000), "attention_mask": torch.ones(1, 128, dtype=torch.int64)}
        if model.config.model_type == "bert":
            feed["token_type_ids"] = torch.zeros(1, 128, dtype=torch.int64)

        def call():
            with torch.inference_mode():
                model(**feed)
    for _ in range(10):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def build(directory: str, work: str) -> None:
    """The files the children load: our int8 exports (ONNX, LiteRT) and transformers' ONNX int8
    graphs, plain and fused, made as `inference_cpu.py` makes them."""
    from inference_cpu import transformers_onnx
    from distilbert_jax import export
    export.export(directory, os.path.join(work, "ours"), format="onnx", quantize="int8")
    export.export(directory, os.path.join(work, "ours-litert"), format="litert", quantize="int8")
    os.symlink(os.path.join(work, "ours", "model.onnx"), os.path.join(work, "ours.onnx"))
    os.symlink(directory, os.path.join(work, "model"))
    for fused in (False, True):
        transformers_onnx(directory, work, fused=fused, int8=True)


def measure(work: str, processes: int, repeats: int, settle: float) -> dict:
    p50s = {label: [] for label in SIDES}
    labels = list(SIDES)
    for r in range(processes):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            time.sleep(settle)
            kind, name = SIDES[label]
            out = subprocess.run([sys.executable, __file__, f"--child={kind}",
                                  f"--path={os.path.join(work, name)}", f"--repeats={repeats}"],
                                 check=True, capture_output=True, text=True).stdout
            p50s[label].append(1000 * float(np.percentile(json.loads(out.splitlines()[-1]), 50)))
        print(f"round {r + 1}/{processes}: " + ", ".join(f"{v[-1]:.1f}" for v in p50s.values()), flush=True)
    return {label: {"p50_ms_per_process": v, "median_ms": float(np.median(v)),
                    "fastest_ms": min(v), "slowest_ms": max(v)} for label, v in p50s.items()}


def table(results) -> str:
    lines = [f"{results['processes']} processes per side, {results['repeats']} timed calls each "
             f"({results['machine']}, {results['date']})."]
    for name, rows in results["models"].items():
        eager = rows[EAGER]["median_ms"]
        lines += [f"\n{name}\n", "| side | 1x128 p50, median over processes (ms) | fastest / slowest "
                  "process | vs eager |", "|---|---:|---:|---:|"]
        lines += [f"| {label} | {r['median_ms']:.1f} | {r['fastest_ms']:.1f} / {r['slowest_ms']:.1f} | "
                  f"{eager / r['median_ms']:.2f}x |" for label, r in rows.items()]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="distilbert-base,minilm")
    parser.add_argument("--trained", default=None, help="MiniLM fine-tuned on SST-2 (a model/ folder)")
    parser.add_argument("--processes", type=int, default=10, help="fresh processes per side")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per process")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause before each process")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "latency_isolated.json"))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.path, args.repeats)))
        return
    from inference_cpu import benchmark_model
    import onnxruntime
    import torch
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "onnxruntime": onnxruntime.__version__, "processes": args.processes,
               "repeats": args.repeats, "models": {}}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            directory, _ = benchmark_model(name, args.trained, work)
            build(directory, work)
            results["models"][name] = measure(work, args.processes, args.repeats, args.settle)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(table(results))


if __name__ == "__main__":
    main()
