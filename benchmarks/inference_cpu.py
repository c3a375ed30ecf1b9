"""CPU inference of a sequence classifier, every way a user would ship it, side by side in one run.

    pip install -e ".[test,reference]"
    python benchmarks/inference_cpu.py --trained=runs/smoke/model      # MiniLM fine-tuned on SST-2
    python benchmarks/inference_cpu.py --models=minilm --repeats=10 --sentences=160   # a quick look

For DistilBERT-base (our random initialisation, written with save_pretrained: speed only) and
all-MiniLM-L6-v2 (--trained: a fine-tuned checkpoint of it, so dev accuracy means something):
ours in JAX (float32, jit, lengths padded to buckets of 16/32/64/128 so few shapes compile), our
ONNX export in onnxruntime (float32 and int8, in `exported.onnx_session`), our StableHLO artefact
(deserialized, same buckets), our LiteRT export in ai-edge-litert's interpreter (float32 and
dynamic-range int8, every core); transformers eager float32, transformers + torch dynamic int8
(`quantize_dynamic` on nn.Linear), transformers' ONNX export (torch.onnx) in onnxruntime, plain and
with onnxruntime's BERT fusions (as Optimum applies them), each float32 and dynamic int8
(per-tensor, as Optimum's avx512_vnni preset), in onnxruntime's default session, and its plain int8
graph once more in our session (the same session options, to compare graphs). Reported: p50/p90
latency at batch 1 x 128 tokens (every token real) and at batch 1 over the SST-2 dev sentences;
sentences/s over the dev sentences at batch 32 (ours sorted by length, each batch padded to its
longest: what `dj.pipeline` does; transformers in file order padded per batch, as its pipeline
does); model size on disk; dev accuracy; the share of this CPU's measured matmul peak (float32, or
int8 for the int8 sides) that the 1x128 forward reaches.

The sides are timed in interleaved rounds: each round times every side in turn on its share of the
work (1/--rounds of each measurement), after a pause that lets the previous side's worker threads
stop spinning, so a slow or noisy minute of the machine lands on every side alike. Writes
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

from distilbert_jax import export, exported, hf, models
from distilbert_jax.config import DistilBertConfig
from distilbert_jax.data.task import bucket_for
from distilbert_jax.tokenizer import Tokenizer

from arithmetic import encoder_flops, onnxruntime_peak, seconds, torch_peak

BUCKETS = (16, 32, 64, 128)
SST2_DEV = os.path.join(os.path.dirname(__file__), "..", "distilbert_jax", "data", "sample", "SST-2", "dev.tsv")


def sst2_dev():
    with open(SST2_DEV, encoding="utf-8") as f:
        rows = [line.rstrip("\n").split("\t") for line in f][1:]
    return [r[0] for r in rows], np.array([int(r[1]) for r in rows])


def percentiles(times):
    return {"p50_ms": 1000 * float(np.percentile(times, 50)), "p90_ms": 1000 * float(np.percentile(times, 90))}


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
    model = exported.ExportedModel(out)
    return (lambda b: model(b)["logits"]), not model.dynamic_shapes


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


def transformers_onnx(directory, workdir, fused=False, int8=False, our_session=False):
    """transformers' model exported by torch.onnx (dynamic batch and sequence), as Optimum does;
    run in onnxruntime's default session, or with `our_session` in `exported.onnx_session`."""
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
    session = (exported.onnx_session(source) if our_session
               else onnxruntime.InferenceSession(source, providers=["CPUExecutionProvider"]))
    size = os.path.getsize(source)
    return (lambda b: session.run(None, {k: b[k].astype(np.int64) for k in names})[0]), False, size


# --- measuring: every side in interleaved rounds --------------------------------------------------

ONE_128 = {"input_ids": np.full((1, 128), 1000), "attention_mask": np.ones((1, 128), int),
           "token_type_ids": np.zeros((1, 128), int)}


def inputs(tokenizer, texts, buckets):
    """(single sentences, batch order, batches of 32) as a side pads them: ours sorted by length
    (buckets True: padded to BUCKETS for XLA; False: to each batch's longest), transformers (None)
    in file order."""
    singles = [encode(tokenizer, [t], pad_to=buckets) for t in texts]
    order = (sorted(range(len(texts)), key=lambda i: len(tokenizer.ids([texts[i]])[0]))
             if buckets is not None else list(range(len(texts))))
    batches = [encode(tokenizer, [texts[i] for i in order[s:s + 32]], pad_to=buckets is True)
               for s in range(0, len(texts), 32)]
    return singles, order, batches


class Side:
    """One way of serving the model: its call, its inputs, and what it has timed."""

    def __init__(self, run, size, arithmetic, singles, order, batches):
        self.run, self.size, self.arithmetic = run, size, arithmetic
        self.singles, self.order, self.batches = singles, order, batches
        self.times = {"1x128": [], "batch1_sst2": [], "batch32": []}
        self.logits = [None] * len(batches)

    def warm(self):
        """Every shape once (JAX compiles each bucket; onnxruntime plans its first run)."""
        self.run(ONE_128)
        for b in self.singles[:len(BUCKETS) * 4] + self.batches:
            self.run(b)

    def time_share(self, round_, rounds, repeats):
        """This round's share: repeats/rounds calls at 1x128, every rounds-th sentence and batch."""
        for _ in range(2):  # the caches after the previous side
            self.run(ONE_128)
        for _ in range(max(1, repeats // rounds)):
            self.times["1x128"].append(seconds(lambda: self.run(ONE_128)))
        for b in self.singles[round_::rounds]:
            self.times["batch1_sst2"].append(seconds(lambda: self.run(b)))
        for i in range(round_, len(self.batches), rounds):
            start = time.perf_counter()
            self.logits[i] = self.run(self.batches[i])
            self.times["batch32"].append(time.perf_counter() - start)

    def row(self, labels, trained, flops_1x128, peaks) -> dict:
        predicted = np.empty(len(self.order), int)
        predicted[self.order] = np.concatenate(self.logits).argmax(-1)
        return {"1x128": percentiles(self.times["1x128"]),
                "batch1_sst2": percentiles(self.times["batch1_sst2"]),
                "sentences_per_s": len(self.order) / sum(self.times["batch32"]),
                "accuracy": float((predicted == labels).mean()) if trained else None,
                "peak_share_1x128": flops_1x128 / np.percentile(self.times["1x128"], 50) / peaks[self.arithmetic],
                "predicted": predicted, "size_mb": self.size / 1e6}


def measure(sides: dict, rounds: int, repeats: int, settle: float):
    for side in sides.values():
        side.warm()
    for r in range(rounds):
        for side in sides.values():
            time.sleep(settle)  # the previous side's onnxruntime/torch threads stop spinning
            side.time_share(r, rounds, repeats)


def measured_peaks(n: int = 2048) -> dict:
    """This CPU's best n x n matmul, in each side's arithmetic: float32 (the faster of torch and
    onnxruntime) and int8 (onnxruntime's MatMulInteger, the kernel the int8 graphs run)."""
    return {"float32": max(torch_peak("float32", n, 10), onnxruntime_peak("float32", n, 10)),
            "int8": onnxruntime_peak("int8", n, 10)}


def benchmark_model(name: str, trained: str | None, work: str) -> tuple[str, bool]:
    """(checkpoint folder, whether it is trained): "minilm" is `trained` (a fine-tuned MiniLM
    folder) or else a random classifier on all-MiniLM-L6-v2; "distilbert-base" is our random
    initialisation (speed only), both written into `work`."""
    if name == "minilm" and trained:
        return trained, True
    directory = os.path.join(work, name)
    if name == "minilm":
        module, params = hf.from_pretrained(hf.packaged_minilm(), head="sequence_classification", num_labels=2)
    else:
        module = models.DistilBertForSequenceClassification(DistilBertConfig(num_labels=2))
        params = models.init_params(module)
    hf.save_pretrained(directory, module, params, Tokenizer.from_pretrained(hf.packaged_minilm()))
    return directory, False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="distilbert-base,minilm")
    parser.add_argument("--trained", default=None, help="MiniLM fine-tuned on SST-2 (a model/ folder)")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per side at 1x128")
    parser.add_argument("--sentences", type=int, default=872)
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (each a share of the work)")
    parser.add_argument("--settle", type=float, default=0.5, help="seconds of pause before each side's turn")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "inference_cpu.json"))
    args = parser.parse_args()
    import torch
    texts, labels = sst2_dev()
    texts, labels = texts[:args.sentences], labels[:args.sentences]
    peaks = measured_peaks()  # measured again after each model: the best the machine reached
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "torch": torch.__version__,
               "onnxruntime": __import__("onnxruntime").__version__, "rounds": args.rounds,
               "peak_flops": peaks, "models": {}}
    print("measured peaks: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()), flush=True)
    for name in args.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            directory, trained = benchmark_model(name, args.trained, work)
            tokenizer = Tokenizer.from_pretrained(directory)
            weights = os.path.getsize(os.path.join(directory, "model.safetensors"))
            made = {}  # label -> (run, buckets, size, arithmetic)
            run, buckets = ours_jax(directory)
            made["ours, JAX float32"] = (run, buckets, weights, "float32")
            for label, options in (("ours, ONNX float32 (onnxruntime)", {}),
                                   ("ours, ONNX int8 (onnxruntime)", {"quantize": "int8"}),
                                   ("ours, StableHLO (jax.export)", {"format": "stablehlo"}),
                                   ("ours, LiteRT float32 (ai-edge-litert)", {"format": "litert"}),
                                   ("ours, LiteRT int8 (ai-edge-litert)", {"format": "litert", "quantize": "int8"})):
                out = os.path.join(work, label.split(",")[1].strip().replace(" ", "_"))
                run, buckets = ours_exported(directory, out, **options)
                size = os.path.getsize(os.path.join(out, exported.ExportedModel(out).manifest["file"]))
                made[label] = (run, buckets, size, "int8" if "int8" in label else "float32")
            run, _ = transformers_eager(directory)
            made["transformers, PyTorch eager float32"] = (run, None, weights, "float32")
            run, _ = transformers_eager(directory, int8=True)
            with tempfile.NamedTemporaryFile() as f:
                torch.save(torch_model(directory, int8=True).state_dict(), f.name)
                made["transformers + torch dynamic int8"] = (run, None, os.path.getsize(f.name), "int8")
            for fused, int8, ours in ((False, False, False), (False, True, False), (True, False, False),
                                      (True, True, False), (False, True, True)):
                run, _, size = transformers_onnx(directory, work, fused, int8, our_session=ours)
                label = (f"transformers ONNX{' + ORT fusions' if fused else ''} "
                         f"{'int8' if int8 else 'float32'} (onnxruntime{', our session' if ours else ''})")
                made[label] = (run, None, size, "int8" if int8 else "float32")
            encoded = {b: inputs(tokenizer, texts, b) for b in {m[1] for m in made.values()}}
            sides = {label: Side(run, size, kind, *encoded[buckets])
                     for label, (run, buckets, size, kind) in made.items()}
            measure(sides, args.rounds, args.repeats, args.settle)
            peaks.update({k: max(v, peaks[k]) for k, v in measured_peaks().items()})
            config, _ = hf.read_config(directory)
            rows, reference = {}, None
            for label, side in sides.items():
                row = side.row(labels, trained, encoder_flops(config, 128), peaks)
                predicted = row.pop("predicted")
                reference = predicted if reference is None else reference
                row["labels_equal_to_ours_float32"] = float((predicted == reference).mean())
                rows[label] = row
                print(name, label, json.dumps(row), flush=True)
            results["models"][name] = rows
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(table(results))


def table(results) -> str:
    peaks = results["peak_flops"]
    lines = [f"Measured matmul peaks: float32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
             f"int8 {peaks['int8'] / 1e9:.0f} GOP/s; {results['rounds']} interleaved rounds."]
    for name, rows in results["models"].items():
        eager = rows["transformers, PyTorch eager float32"]["1x128"]["p50_ms"]
        lines += [f"\n{name} ({results['machine']}, {results['date']})\n",
                  "| side | 1x128 p50 / p90 ms | vs eager | 1x128 share of peak | batch 1 SST-2 p50 / p90 ms | "
                  "sentences/s (batch 32) | size MB | dev acc | labels = ours f32 |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            acc = f"{100 * r['accuracy']:.2f}" if r["accuracy"] is not None else "–"
            lines.append(f"| {label} | {r['1x128']['p50_ms']:.1f} / {r['1x128']['p90_ms']:.1f} | "
                         f"{eager / r['1x128']['p50_ms']:.2f}x | {100 * r['peak_share_1x128']:.0f}% | "
                         f"{r['batch1_sst2']['p50_ms']:.1f} / {r['batch1_sst2']['p90_ms']:.1f} | "
                         f"{r['sentences_per_s']:.0f} | {r['size_mb']:.0f} | "
                         f"{acc} | {100 * r['labels_equal_to_ours_float32']:.1f}% |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
