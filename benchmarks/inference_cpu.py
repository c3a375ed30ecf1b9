"""CPU inference of a sequence classifier, every way a user would ship it, side by side in one run.

    pip install -e ".[test,reference]"
    python benchmarks/inference_cpu.py --trained=runs/smoke/model      # MiniLM fine-tuned on SST-2
    python benchmarks/inference_cpu.py --models=minilm --repeats=5      # a quick look

For DistilBERT-base (our random initialisation, written with save_pretrained: speed only) and
all-MiniLM-L6-v2 (--trained: a fine-tuned checkpoint of it, so dev accuracy means something):
ours in JAX (float32, jit, lengths padded to buckets of 16/32/64/128 so few shapes compile), our
ONNX export in onnxruntime (float32 and int8), our StableHLO artefact (deserialized, same
buckets); transformers eager float32, transformers + torch dynamic int8 (`quantize_dynamic` on
nn.Linear), transformers' ONNX export (torch.onnx) in onnxruntime, plain and with onnxruntime's
BERT fusions (as Optimum applies them), each float32 and dynamic int8 (per-tensor, as Optimum's
avx512_vnni preset). Reported: p50/p90 latency at batch 1 x 128 tokens and at batch 1 over the
SST-2 dev sentences; sentences/s over the 872 dev sentences at batch 32 (ours sorted by length,
each batch padded to its longest: what `dj.pipeline` does; transformers in file order padded per
batch, as its pipeline does); model size on disk; dev accuracy. Writes
benchmarks/results/inference_cpu.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import numpy as np

from distilbert_jax import export, hf, models
from distilbert_jax.config import DistilBertConfig
from distilbert_jax.data.task import bucket_for
from distilbert_jax.tokenizer import Tokenizer

BUCKETS = (16, 32, 64, 128)
SST2_DEV = os.path.join(os.path.dirname(__file__), "..", "distilbert_jax", "data", "sample", "SST-2", "dev.tsv")


def sst2_dev():
    with open(SST2_DEV, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def percentiles(times):
    return {"p50_ms": 1000 * float(np.percentile(times, 50)), "p90_ms": 1000 * float(np.percentile(times, 90))}


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def encode(tokenizer, texts, pad_to=None):
    enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="np",
                    return_token_type_ids=True)
    arrays = {k: np.asarray(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids")}
    if pad_to:
        width = bucket_for(arrays["input_ids"].shape[1], BUCKETS)
        arrays = {k: np.pad(v, ((0, 0), (0, width - v.shape[1]))) for k, v in arrays.items()}
    return arrays


# --- the sides: each a function batch-dict -> logits (numpy), and whether it pads to buckets ---------

def ours_jax(directory):
    module, params = hf.from_pretrained(directory)
    names = export.input_names(module.config)
    forward = jax.jit(export.graph_function(module, params, "text-classification"))
    return (lambda b: np.asarray(forward(*(b[k].astype(np.int32) for k in names))[0])), True


def ours_exported(directory, out, **options):
    export.export(directory, out, format=options.pop("format", "onnx"), **options)
    exported = export.ExportedModel(out)
    return (lambda b: exported(b)["logits"]), not exported.dynamic_shapes


def torch_model(directory, int8=False):
    import torch
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    if int8:
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def transformers_eager(directory, int8=False):
    import torch
    model = torch_model(directory, int8)
    names = ("input_ids", "attention_mask", "token_type_ids") if model.config.model_type == "bert" \
        else ("input_ids", "attention_mask")

    def run(b):
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(b[k].astype(np.int64)) for k in names}).logits.numpy()
    return run, False


def transformers_onnx(directory, workdir, fused=False, int8=False):
    """transformers' model exported by torch.onnx (dynamic batch and sequence), as Optimum does."""
    import onnxruntime
    import torch
    model = torch_model(directory)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.config.model_type == "bert" else [])
    path = os.path.join(workdir, f"hf{'_fused' if fused else ''}{'_int8' if int8 else ''}.onnx")
    base = os.path.join(workdir, "hf.onnx")
    if not os.path.exists(base):
        dummy = tuple(torch.ones(1, 8, dtype=torch.int64) for _ in names)
        axes = {n: {0: "batch", 1: "sequence"} for n in names + ["logits"]}
        axes["logits"] = {0: "batch"}
        torch.onnx.export(model, dummy, base, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    source = base
    if fused:
        from onnxruntime.transformers.optimizer import optimize_model
        source = os.path.join(workdir, "hf_fused.onnx")
        if not os.path.exists(source):
            config = model.config
            heads = getattr(config, "num_attention_heads", getattr(config, "n_heads", 0))
            hidden = getattr(config, "hidden_size", getattr(config, "dim", 0))
            optimize_model(base, model_type="bert", num_heads=heads, hidden_size=hidden).save_model_to_file(source)
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(source, path, per_channel=False, weight_type=QuantType.QInt8,  # fused ops
                         extra_options={"DefaultTensorType": 1})  # have no inferred type: float
        source = path
    session = onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"])
    size = os.path.getsize(source)
    return (lambda b: session.run(None, {k: b[k].astype(np.int64) for k in names})[0]), False, size


# --- measuring one side ------------------------------------------------------------------------------

def measure(run, buckets, tokenizer, texts, labels, repeats, trained):
    row = {}
    ids = {"input_ids": np.full((1, 128), 1000), "attention_mask": np.ones((1, 128), int),
           "token_type_ids": np.zeros((1, 128), int)}
    row["1x128"] = percentiles(timed(lambda: run(ids), repeats))
    singles = [encode(tokenizer, [t], pad_to=buckets) for t in texts]
    for b in singles[:len(BUCKETS) * 4]:  # warm every bucket (JAX compiles each shape once)
        run(b)
    times = []
    for b in singles:
        start = time.perf_counter()
        run(b)
        times.append(time.perf_counter() - start)
    row["batch1_sst2"] = percentiles(times)
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer.ids([texts[i]])[0])) if buckets is not None else list(range(len(texts)))
    batches = [encode(tokenizer, [texts[i] for i in order[s:s + 32]], pad_to=buckets is True)
               for s in range(0, len(texts), 32)]
    for b in batches:  # warm
        run(b)
    start = time.perf_counter()
    logits = [run(b) for b in batches]
    row["sentences_per_s"] = len(texts) / (time.perf_counter() - start)
    predicted = np.empty(len(texts), int)
    predicted[order] = np.concatenate(logits).argmax(-1)
    row["accuracy"] = float((predicted == labels).mean()) if trained else None
    row["predicted"] = predicted
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="distilbert-base,minilm")
    parser.add_argument("--trained", default=None, help="MiniLM fine-tuned on SST-2 (a model/ folder)")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sentences", type=int, default=872)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "inference_cpu.json"))
    args = parser.parse_args()
    import torch
    texts, labels = sst2_dev()
    texts, labels = texts[:args.sentences], labels[:args.sentences]
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "torch": torch.__version__,
               "onnxruntime": __import__("onnxruntime").__version__, "models": {}}
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            if name == "minilm":
                directory, trained = args.trained or hf.packaged_minilm(), args.trained is not None
                if not trained:
                    directory = os.path.join(work, "minilm")  # a (random) classifier on MiniLM
                    module, params = hf.from_pretrained(hf.packaged_minilm(), head="sequence_classification", num_labels=2)
                    hf.save_pretrained(directory, module, params, Tokenizer.from_pretrained(hf.packaged_minilm()))
            else:
                directory, trained = os.path.join(work, "distilbert-base"), False
                module = models.DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
                hf.save_pretrained(directory, module, models.init_params(module),
                                   Tokenizer.from_pretrained(hf.packaged_minilm()))
            tokenizer = Tokenizer.from_pretrained(directory)
            weights = os.path.getsize(os.path.join(directory, "model.safetensors"))
            sides = {}
            run, buckets = ours_jax(directory)
            sides["ours, JAX float32"] = (run, buckets, weights)
            for label, options in (("ours, ONNX float32 (onnxruntime)", {}),
                                   ("ours, ONNX int8 (onnxruntime)", {"quantize": "int8"}),
                                   ("ours, StableHLO (jax.export)", {"format": "stablehlo"})):
                out = os.path.join(work, label.split(",")[1].strip().replace(" ", "_"))
                run, buckets = ours_exported(directory, out, **options)
                sides[label] = (run, buckets, os.path.getsize(os.path.join(out, export.ExportedModel(out).manifest["file"])))
            run, _ = transformers_eager(directory)
            sides["transformers, PyTorch eager float32"] = (run, None, weights)
            run, _ = transformers_eager(directory, int8=True)
            with tempfile.NamedTemporaryFile() as f:
                torch.save(torch_model(directory, int8=True).state_dict(), f.name)
                sides["transformers + torch dynamic int8"] = (run, None, os.path.getsize(f.name))
            for fused in (False, True):
                for int8 in (False, True):
                    run, _, size = transformers_onnx(directory, work, fused, int8)
                    label = (f"transformers ONNX{' + ORT fusions' if fused else ''} "
                             f"{'int8' if int8 else 'float32'} (onnxruntime)")
                    sides[label] = (run, None, size)
            rows = {}
            reference = None
            for label, (run, buckets, size) in sides.items():
                row = measure(run, buckets, tokenizer, texts, labels, args.repeats, trained)
                predicted = row.pop("predicted")
                reference = predicted if reference is None else reference
                row["labels_equal_to_ours_float32"] = float((predicted == reference).mean())
                row["size_mb"] = size / 1e6
                rows[label] = row
                print(name, label, json.dumps(row), flush=True)
            results["models"][name] = rows
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(table(results))


def table(results) -> str:
    lines = []
    for name, rows in results["models"].items():
        eager = rows["transformers, PyTorch eager float32"]["1x128"]["p50_ms"]
        lines += [f"\n{name} ({results['machine']}, {results['date']})\n",
                  "| side | 1x128 p50 / p90 ms | vs eager | batch 1 SST-2 p50 / p90 ms | sentences/s (872, batch 32) | size MB | dev acc | labels = ours f32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            acc = f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else "–"
            lines.append(f"| {label} | {r['1x128']['p50_ms']:.1f} / {r['1x128']['p90_ms']:.1f} | "
                         f"{eager / r['1x128']['p50_ms']:.2f}x | {r['batch1_sst2']['p50_ms']:.1f} / "
                         f"{r['batch1_sst2']['p90_ms']:.1f} | {r['sentences_per_s']:.0f} | {r['size_mb']:.0f} | "
                         f"{acc} | {100 * r['labels_equal_to_ours_float32']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
