"""python -m distilbert_jax.export: every head of both families exported to ONNX, StableHLO and
LiteRT gives the JAX model's outputs (1e-5 relative, several batch sizes and lengths, padding
included); int8 is onnxruntime's (or LiteRT's) dynamic quantisation; pipelines and predict run an exported folder with the
same answers; bad input is one sentence and writes nothing."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import onnx
import pytest

import distilbert_jax as dj
from conftest import FIXTURES, make_tiny_model_dir, relative_error
from distilbert_jax import export, predict, storage

TOL = 1e-5
HEADS = {  # fixture -> the task its head is exported for by default
    "distilbert_base": "feature-extraction", "distilbert_seqcls": "text-classification",
    "distilbert_token_classification": "token-classification",
    "distilbert_question_answering": "question-answering", "distilbert_mlm": "fill-mask",
    "distilbert_multiple_choice": "multiple-choice",
    "bert_base": "feature-extraction", "bert_seqcls": "text-classification",
    "bert_token_classification": "token-classification",
    "bert_question_answering": "question-answering", "bert_mlm": "fill-mask",
    "bert_multiple_choice": "multiple-choice",
}
# Shapes the export itself was not checked on (export.CHECK_SHAPES): the axes really are dynamic.
SHAPES = ((4, 20), (1, 64))
SENTIMENT = os.path.join(FIXTURES, "pipelines", "distilbert_sentiment")


def jax_outputs(directory, task, arrays):
    module, params = dj.from_pretrained(directory, head=export.TASKS[task][0])
    return [np.asarray(o) for o in jax.jit(export.graph_function(module, params, task))(*arrays)]


def assert_matches_jax(source, out, task):
    exported = export.ExportedModel(out)
    assert exported.task == task
    for batch, length in SHAPES:
        arrays = export.check_inputs(exported.config, task, batch, length, seed=batch)
        want = jax_outputs(source, task, arrays)
        got = exported(dict(zip(exported.inputs, arrays)))
        for name, w in zip(exported.outputs, want):
            assert relative_error(got[name], w) <= TOL, (task, name, batch, length)
    measured = exported.manifest["agreement"]["max_relative_error"]
    assert max(measured.values()) <= TOL


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {name: make_tiny_model_dir(root / name, name) for name in HEADS}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_onnx_equals_jax_for_every_head(checkpoints, tmp_path, name):
    out = export.export(checkpoints[name], tmp_path / "out", format="onnx")
    assert_matches_jax(checkpoints[name], out, HEADS[name])
    graph = onnx.load(os.path.join(out, "model.onnx")).graph
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if name.startswith("bert") else [])
    assert [i.name for i in graph.input] == names
    for value in graph.input:  # int64 as transformers' exports take them; batch and length free
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert all(d.dim_param and not d.dim_value for d in value.type.tensor_type.shape.dim)
    assert [o.name for o in graph.output] == list(export.TASKS[HEADS[name]][1])
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json", "README.md", "export.json"):
        assert os.path.isfile(os.path.join(out, file)), file


@pytest.mark.parametrize("name", ["distilbert_seqcls", "distilbert_multiple_choice",
                                  "bert_question_answering", "bert_mlm"])
def test_stablehlo_equals_jax(checkpoints, tmp_path, name):
    out = export.export(checkpoints[name], tmp_path / "out", format="stablehlo")
    assert_matches_jax(checkpoints[name], out, HEADS[name])


@pytest.mark.parametrize("name", sorted(HEADS))
def test_litert_equals_jax_for_every_head(checkpoints, tmp_path, name):
    out = export.export(checkpoints[name], tmp_path / "out", format="litert")
    assert_matches_jax(checkpoints[name], out, HEADS[name])
    from ai_edge_litert.interpreter import Interpreter
    signatures = Interpreter(model_path=os.path.join(out, "model.tflite")).get_signature_list()
    config, _ = dj.hf.read_config(checkpoints[name])
    assert sorted(signatures) == sorted(f"length_{n}" for n in export.litert_lengths(config))
    want = {"inputs": sorted(export.ExportedModel(out).inputs), "outputs": sorted(export.TASKS[HEADS[name]][1])}
    assert all({k: sorted(v) for k, v in s.items()} == want for s in signatures.values())


def test_litert_int8_is_dynamic_range_and_keeps_the_labels(checkpoints, tmp_path):
    source = checkpoints["bert_seqcls"]
    out = export.export(source, tmp_path / "int8", format="litert", quantize="int8")
    full = export.export(source, tmp_path / "float32", format="litert")
    from ai_edge_litert.interpreter import Interpreter
    types = lambda path: {d["dtype"] for d in Interpreter(model_path=path).get_tensor_details()}
    assert np.int8 in types(os.path.join(out, "model.tflite"))
    assert np.int8 not in types(os.path.join(full, "model.tflite"))
    exported = export.ExportedModel(out)
    arrays = export.check_inputs(exported.config, "text-classification", 4, 20)
    got = exported(dict(zip(exported.inputs, arrays)))["logits"]
    want = jax_outputs(source, "text-classification", arrays)[0]
    # int8 rounding, not a different model (which errs by about 1). Each quantised matmul on the
    # path (q/k/v, out, lin1, lin2 a block, then the two head layers) adds at most a full int8 weight
    # step (1/127 of its channel's max) and a full uint8 activation step (1/255 of the range) at first
    # order; doubled for kernels that saturate int16 pair sums (onnxruntime's u8s8 path on CPUs
    # without VNNI). Measured: 0.032 on an AVX-512 VNNI EPYC, 0.114 on another CI machine.
    in_series = 4 * exported.config.num_hidden_layers + 2
    bound = 2 * in_series * (1 / 127 + 1 / 255)
    assert relative_error(got, want) < bound, bound


def test_stablehlo_loads_in_a_process_without_distilbert_jax(checkpoints, tmp_path):
    source = checkpoints["bert_seqcls"]
    out = export.export(source, tmp_path / "out", format="stablehlo")
    config, _ = dj.hf.read_config(source)
    arrays = export.check_inputs(config, "text-classification", 3, 11)
    np.savez(tmp_path / "inputs.npz", *arrays)
    script = (
        "import sys, jax, numpy as np\n"
        "exp = jax.export.deserialize(bytearray(open(sys.argv[1], 'rb').read()))\n"
        "arrays = list(np.load(sys.argv[2]).values())\n"
        "np.save(sys.argv[3], np.asarray(exp.call(*arrays)[0]))\n"
        "assert not any(m.startswith('distilbert_jax') for m in sys.modules), 'imported distilbert_jax'\n")
    subprocess.run([sys.executable, "-c", script, os.path.join(out, "model.stablehlo"),
                    str(tmp_path / "inputs.npz"), str(tmp_path / "logits.npy")],
                   check=True, cwd=tmp_path)
    want = jax_outputs(source, "text-classification", arrays)[0]
    assert relative_error(np.load(tmp_path / "logits.npy"), want) <= TOL


def test_sentence_embeddings_are_mean_pooled_and_normalised(tmp_path, minilm_dir):
    # a tiny BERT with all-MiniLM-L6-v2's sentence-transformers modules: mean pooling, Normalize
    source = make_tiny_model_dir(tmp_path / "tiny", "bert_base")
    shutil.copytree(os.path.join(minilm_dir, "1_Pooling"), os.path.join(source, "1_Pooling"))
    shutil.copy(os.path.join(minilm_dir, "modules.json"), source)
    with open(os.path.join(source, "sentence_bert_config.json"), "w") as f:
        json.dump({"max_seq_length": 64, "do_lower_case": False}, f)  # the tiny model's positions
    out = export.export(source, tmp_path / "out", format="onnx")
    exported = export.ExportedModel(out)
    assert exported.task == "sentence-embeddings"  # the checkpoint's modules.json says so
    assert os.path.isfile(os.path.join(out, "modules.json"))
    texts = ["a gripping film", "a waste of time, and a long one"]
    ours = dj.pipeline("sentence-embeddings", model=source)(texts)
    theirs = dj.pipeline("sentence-embeddings", model=out)(texts)
    assert relative_error(theirs, ours) <= TOL
    enc = dj.Tokenizer.from_pretrained(out)(texts, padding=True, return_tensors="np")
    graph = exported({**enc, "token_type_ids": np.zeros_like(enc["input_ids"])})
    assert relative_error(graph["sentence_embedding"], ours) <= TOL  # Normalize in the graph too
    np.testing.assert_allclose(np.linalg.norm(graph["sentence_embedding"], axis=-1), 1.0, rtol=1e-5)


def test_the_graph_holds_native_gelu_and_an_additive_mask(checkpoints, tmp_path):
    """What onnxruntime runs fast: one Gelu op per block, the padding added to the scores before
    one Softmax (not a softmax renormalised by the mask afterwards)."""
    out = export.export(checkpoints["distilbert_seqcls"], tmp_path / "f32", format="onnx")
    nodes = onnx.load(os.path.join(out, "model.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    layers = export.ExportedModel(out).config.n_layers
    assert ops.count("Gelu") == ops.count("Softmax") == layers
    assert "Erf" not in ops and "ReduceSum" not in ops
    producer = {o: n.op_type for n in nodes for o in n.output}
    assert {producer[n.input[0]] for n in nodes if n.op_type == "Softmax"} == {"Add"}


def test_dense_layers_are_single_matmuls_and_head_reshapes_fold(checkpoints, tmp_path):
    """Each dense layer is one broadcasting MatMul on [batch, length, features] (no Gemm between a
    reshape to 2-D and a run-time computed reshape back), and onnxruntime folds the shape arithmetic
    of every head split and merge (3 + 1 per block) into a Reshape with a constant shape."""
    import onnxruntime
    out = export.export(checkpoints["distilbert_seqcls"], tmp_path / "f32", format="onnx")
    graph = onnx.shape_inference.infer_shapes(onnx.load(os.path.join(out, "model.onnx"))).graph
    weights = {t.name for t in graph.initializer}
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in graph.value_info}
    dense = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    layers = export.ExportedModel(out).config.n_layers
    assert "Gemm" not in [n.op_type for n in graph.node]
    # q k v out lin1 lin2 per block on [batch, length, features]; pre_classifier, classifier on [CLS]
    assert sorted(rank[n.input[0]] for n in dense) == [2, 2] + [3] * (6 * layers)

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
    onnxruntime.InferenceSession(os.path.join(out, "model.onnx"), options,
                                 providers=["CPUExecutionProvider"])
    loaded = onnx.load(options.optimized_model_filepath).graph
    constants = {t.name for t in loaded.initializer}
    static = [n for n in loaded.node if n.op_type == "Reshape" and n.input[1] in constants]
    assert len(static) >= 4 * layers


def test_sessions_keep_residual_add_and_layer_norm_unfused(checkpoints, tmp_path):
    """onnxruntime's own session fuses every residual Add + LayerNormalization into
    SkipLayerNormalization (a slower kernel on the CPUs measured); the sessions this package opens
    keep the pair, with every other fusion still on."""
    import onnxruntime
    out = export.export(checkpoints["distilbert_seqcls"], tmp_path / "int8", format="onnx", quantize="int8")
    layers = export.ExportedModel(out).config.n_layers

    def loaded_ops(session_of):
        options = onnxruntime.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "loaded.onnx")
        session_of(os.path.join(out, "model.onnx"), options)
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]

    plain = loaded_ops(lambda path, options: onnxruntime.InferenceSession(
        path, options, providers=["CPUExecutionProvider"]))
    ours = loaded_ops(export.onnx_session)
    assert plain.count("SkipLayerNormalization") >= 2 * layers  # after attention and after the FFN
    assert "SkipLayerNormalization" not in ours
    assert ours.count("LayerNormalization") == 2 * layers + 1  # + the embeddings'
    assert ours.count("DynamicQuantizeMatMul") == plain.count("DynamicQuantizeMatMul") > 0


def test_int8_quantises_every_dense_layer_per_channel_and_keeps_the_tables(checkpoints, tmp_path):
    source = checkpoints["distilbert_seqcls"]
    out = export.export(source, tmp_path / "int8", format="onnx", quantize="int8")
    full = export.export(source, tmp_path / "float32", format="onnx")
    graph = onnx.load(os.path.join(full, "model.onnx")).graph
    weights = {t.name for t in graph.initializer}
    dense = [n for n in graph.node if n.op_type in ("Gemm", "MatMul") and any(i in weights for i in n.input)]
    quantised = onnx.load(os.path.join(out, "model.onnx")).graph
    ops = [n.op_type for n in quantised.node]
    assert ops.count("MatMulInteger") == len(dense)  # per block q k v out lin1 lin2, then the head
    assert "DynamicQuantizeLinear" in ops and "DequantizeLinear" not in ops  # tables stay float32
    scales = {t.name: t for t in quantised.initializer if t.name.endswith("_scale")}
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    widths = sorted(shapes[next(i for i in n.input if i in weights)][-1] for n in dense)
    assert sorted(t.dims[0] for t in scales.values() if len(t.dims) == 1) == widths  # per channel
    exported = export.ExportedModel(out)
    assert exported.manifest["quantize"] == "int8"
    arrays = export.check_inputs(exported.config, "text-classification", 4, 20)
    got = exported(dict(zip(exported.inputs, arrays)))["logits"]
    want = jax_outputs(source, "text-classification", arrays)[0]
    # int8 rounding, not a different model (which errs by about 1). Each quantised matmul on the
    # path (q/k/v, out, lin1, lin2 a block, then the two head layers) adds at most a full int8 weight
    # step (1/127 of its channel's max) and a full uint8 activation step (1/255 of the range) at first
    # order; doubled for kernels that saturate int16 pair sums (onnxruntime's u8s8 path on CPUs
    # without VNNI). Measured: 0.032 on an AVX-512 VNNI EPYC, 0.114 on another CI machine.
    in_series = 4 * exported.config.num_hidden_layers + 2
    bound = 2 * in_series * (1 / 127 + 1 / 255)
    assert relative_error(got, want) < bound, bound


@pytest.fixture(scope="module")
def sentiment_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("sentiment")
    return {fmt: export.export(SENTIMENT, root / fmt, format=fmt) for fmt in export.FORMATS}


@pytest.mark.parametrize("fmt", sorted(export.FORMATS))
def test_pipeline_on_an_export_answers_as_the_checkpoint(sentiment_exports, fmt):
    texts = ["a gripping film", "a waste of time", "fine", "the best thing this year, by far"] * 9
    want = dj.pipeline("text-classification", model=SENTIMENT, batch_size=8)(texts, top_k=None)
    got = dj.pipeline("text-classification", model=sentiment_exports[fmt], batch_size=8)(texts, top_k=None)
    assert [[r["label"] for r in row] for row in got] == [[r["label"] for r in row] for row in want]
    scores = lambda rows: np.array([[r["score"] for r in row] for row in rows])
    np.testing.assert_allclose(scores(got), scores(want), rtol=TOL, atol=1e-7)


@pytest.mark.parametrize("task,fixture,call", [
    ("token-classification", "distilbert_ner", {"inputs": ["John lives in Paris", "hello world"],
                                                "aggregation_strategy": "simple"}),
    ("fill-mask", "distilbert_fill_mask", {"inputs": ["the [MASK] is good", "a [MASK] film [MASK]"]}),
    ("question-answering", "bert_qa", {"question": "where does he live?", "top_k": 2,
                                       "context": "John lives in Paris with his dog."}),
    ("feature-extraction", "distilbert_encoder", {"inputs": ["hello", "a longer text here"]}),
])
def test_every_pipeline_task_runs_an_onnx_export(tmp_path, task, fixture, call):
    source = os.path.join(FIXTURES, "pipelines", fixture)
    out = export.export(source, tmp_path / "out", format="onnx", task=task)
    want = dj.pipeline(task, model=source)(**call)
    got = dj.pipeline(task, model=out)(**call)
    assert _words(got) == _words(want)  # labels, tokens, answers, offsets
    np.testing.assert_allclose(_numbers(got), _numbers(want), rtol=1e-4, atol=1e-6)


def _words(value):
    if isinstance(value, dict):
        return {k: _words(v) for k, v in value.items() if k != "score"}
    if isinstance(value, list):
        return [_words(v) for v in value]
    return None if isinstance(value, float) else value


def _numbers(value):
    if isinstance(value, dict):
        return [x for v in value.values() for x in _numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in _numbers(v)]
    return [value] if isinstance(value, float) else []


def test_predict_on_an_export(sentiment_exports, tmp_path):
    source = tmp_path / "reviews.txt"
    source.write_text("a gripping film\na waste of time\n", encoding="utf-8")
    rows = {}
    for name, model in (("checkpoint", SENTIMENT), ("export", sentiment_exports["onnx"])):
        out = tmp_path / f"{name}.jsonl"
        assert predict.main([f"--model={model}", "--task=text-classification", f"--input={source}",
                             f"--output={out}"]) == 0
        rows[name] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["label"] for r in rows["export"]] == [r["label"] for r in rows["checkpoint"]]
    np.testing.assert_allclose([r["score"] for r in rows["export"]],
                               [r["score"] for r in rows["checkpoint"]], rtol=TOL)


# --- bad input: one sentence, exit 2, nothing written ------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--format=tflite"], "--format='tflite' is not one of"),
    (["--quantize=int4"], "--quantize='int4' is not one of"),
    (["--format=stablehlo", "--quantize=int8"], "use it with --format=onnx"),
    (["--task=summarization"], "--task='summarization' is not one of"),
    (["--task=fill-mask"], "has no masked_lm head"),
])
def test_bad_arguments_are_one_sentence(tmp_path, capsys, args, message):
    out = tmp_path / "out"
    assert export.main([f"--model={SENTIMENT}", f"--output={out}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and os.listdir(tmp_path) == []


def test_a_folder_that_does_not_load(tmp_path, capsys):
    assert export.main([f"--model={tmp_path / 'nowhere'}", f"--output={tmp_path / 'out'}"]) == 2
    assert "could not be fetched" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "distilbert"}', encoding="utf-8")
    assert export.main([f"--model={broken}", f"--output={tmp_path / 'out'}"]) == 2
    assert str(broken) in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["broken"]


def test_an_output_that_is_not_empty_is_kept(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine", encoding="utf-8")
    assert export.main([f"--model={SENTIMENT}", f"--output={out}"]) == 2
    assert "already exists and is not an empty folder" in capsys.readouterr().err
    assert os.listdir(out) == ["notes.txt"]


def test_a_failure_midway_leaves_no_folder(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(export, "_write_onnx", fail)
    with pytest.raises(storage.WriteError, match=f"cannot write {tmp_path / 'out'}: no space left"):
        export.export(SENTIMENT, tmp_path / "out", format="onnx")
    assert os.listdir(tmp_path) == []  # neither the folder nor its staging copy


def test_missing_converter_or_runtime_names_the_extra(tmp_path, monkeypatch, sentiment_exports):
    monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` raises ImportError
    with pytest.raises(export.ExportError, match=r"needs jax2onnx.*distilbert-jax\[export\]"):
        export.export(SENTIMENT, tmp_path / "out", format="onnx")
    assert os.listdir(tmp_path) == []
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(export.ExportError, match=r"needs tensorflow.*distilbert-jax\[litert\]"):
        export.export(SENTIMENT, tmp_path / "out", format="litert")
    assert os.listdir(tmp_path) == []
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(dj.PipelineError, match=r"needs onnxruntime.*distilbert-jax\[onnxruntime\]"):
        dj.pipeline("text-classification", model=sentiment_exports["onnx"])
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(dj.PipelineError, match=r"needs ai-edge-litert.*distilbert-jax\[litert-runtime\]"):
        dj.pipeline("text-classification", model=sentiment_exports["litert"])


def test_pipeline_refuses_what_an_export_cannot_do(sentiment_exports):
    with pytest.raises(dj.PipelineError, match="was exported for 'text-classification'"):
        dj.pipeline("fill-mask", model=sentiment_exports["onnx"])
    with pytest.raises(dj.PipelineError, match="packing=True is not available"):
        dj.pipeline("text-classification", model=sentiment_exports["onnx"], packing=True)
