"""The TPU plan: every job's programs compiled for TPU topologies on this host (libtpu, no TPU), the
plan's memory and FLOPs against what the maths fixes, and its refusals as one sentence."""

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from distilbert_jax import plan, sharding
from distilbert_jax.configs import default
from distilbert_jax.config import ConfigError
from distilbert_jax.train import finetune
from conftest import make_tiny_model_dir, tiny_config, write_sst2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="compiling for a TPU topology needs libtpu: pip install -e '.[tpu]' (CI installs it)")


# --- topology names and HLO reading (no libtpu needed) -----------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("v5e:2x2", ("v5e", (2, 2))), ("v6e:16x16", ("v6e", (16, 16))), ("v4:2x2x1", ("v4", (2, 2, 1))),
    ("v5:2x2x1", ("v5p", (2, 2, 1))), ("v5litepod-16", ("v5e", (4, 4))), ("v5litepod-8", ("v5e", (2, 4))),
    ("v5litepod-1", ("v5e", (1, 1))), ("v6e-8", ("v6e", (2, 4))), ("v4-8", ("v4", (2, 2, 1))),
    ("v4-32", ("v4", (2, 2, 4))), ("v5p-8", ("v5p", (2, 2, 1))), ("v5p-128", ("v5p", (4, 4, 4))),
])
def test_topology_names_as_jax_and_gcloud_write_them(name, expected):
    assert plan.parse_topology(name) == expected


@pytest.mark.parametrize("name", ["v7x:2x2", "v5litepod-12", "v4-6", "tpu", "v5e-2x2"])
def test_an_unknown_topology_is_one_sentence_listing_the_forms(name):
    with pytest.raises(plan.PlanError, match=r"unknown TPU topology .* v5litepod-4") as error:
        plan.parse_topology(name)
    assert "\n" not in str(error.value)


def test_collectives_are_counted_with_what_a_ring_moves():
    hlo = "\n".join([
        "  %all-reduce.1 = f32[128,64]{1,0} all-reduce(f32[128,64]{1,0} %x), replica_groups={{0,1,2,3}}",
        "  %ag = (bf16[8,32]{1,0}, bf16[32,32]{1,0}) all-gather-start(bf16[8,32]{1,0} %y), "
        "replica_groups=[1,4]<=[4], dimensions={0}",
        "  %ag.done = bf16[32,32]{1,0} all-gather-done(%ag)",
        "  %rs = f32[16]{0} reduce-scatter(f32[64]{0} %z), replica_groups={{0,1},{2,3}}",
    ])
    found = plan.collectives(hlo, devices=4)
    assert found["all-reduce"] == {"count": 1, "bytes": 128 * 64 * 4, "moved": 2 * 3 / 4 * 128 * 64 * 4}
    assert found["all-gather"] == {"count": 1, "bytes": 32 * 32 * 2, "moved": 3 / 4 * 32 * 32 * 2}
    assert found["reduce-scatter"] == {"count": 1, "bytes": 16 * 4, "moved": 1 * 16 * 4}


def test_libtpu_missing_is_one_sentence_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real(name, *a))
    with pytest.raises(plan.PlanError, match=r"needs libtpu: pip install 'distilbert-jax\[tpu\]'"):
        plan.topology_devices("v5e:2x2")


# --- compiled for TPU ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    text = root / "corpus.txt"
    text.write_text("the movie was good\n")  # never read: the plan reads no data
    return {"model": make_tiny_model_dir(root / "model", "distilbert_seqcls"),
            "teacher": make_tiny_model_dir(root / "teacher", "bert_mlm"),
            "sst2": write_sst2(root / "SST-2"), "corpus": str(text), "root": root}


def finetune_config(inputs, **overrides):
    return tiny_config(inputs["model"], inputs["sst2"], "sst2", **overrides)


def distill_config(inputs, job="distill", **overrides):
    c = default.distill() if job == "distill" else default.fit_teacher_head()
    c.teacher, c.corpus_files = inputs["teacher"], (inputs["corpus"],)
    c.max_length, c.length_multiple, c.student_layers = 64, 16, 1
    c.batch_size, c.grad_accum_steps, c.max_steps = 16, 1, 10
    for k, v in overrides.items():
        c[k] = v
    return c


def layout_on(topology, mesh, config):
    _, _, devices = plan.topology_devices(topology)
    return sharding.Layout(sharding.make_mesh(mesh, devices), tuple(tuple(r) for r in config.rules))


# (topology, job, mesh, overrides): the default run compiles each generation and each job once;
# the slow tier every mesh preset with padded/packed, float32/bfloat16 and accumulation.
CASES = [
    ("v5e:2x2", "finetune", "dp", dict(dtype="bfloat16")),
    ("v4-8", "finetune", "fsdp", dict(packing=True)),
    ("v5p:2x2x1", "distill", "fsdp_tp", dict(dtype="bfloat16", teacher_dtype="bfloat16", grad_accum_steps=2)),
    ("v6e-4", "fit_teacher_head", "tp", dict(dtype="bfloat16")),
    ("v5litepod-1", "finetune", "dp", dict(dtype="bfloat16")),  # Colab's TPU: one v5e chip (v5e:1x1)
    ("v6e-1", "evaluate", "dp", dict()),  # or one v6e chip (v6e:1x1)
]
SLOW_CASES = [
    pytest.param(topology, job, mesh, dict(dtype=dtype, packing=packing, grad_accum_steps=accum),
                 marks=pytest.mark.slow, id=f"{topology}-{job}-{mesh}-{dtype}-{'packed' if packing else 'padded'}-accum{accum}")
    for topology in ("v4:2x2x1", "v5e:2x2", "v5p-8", "v6e:2x2")
    for job in ("finetune", "distill")
    for mesh in plan.MESH_PRESETS
    for dtype, packing, accum in (("bfloat16", False, 2), ("float32", True, 1))
]


@needs_libtpu
@pytest.mark.parametrize("topology,job,mesh,overrides", [*CASES, *SLOW_CASES])
def test_every_jobs_programs_compile_for_tpu(inputs, topology, job, mesh, overrides):
    config = (distill_config(inputs, job, **overrides) if job in ("distill", "fit_teacher_head")
              else finetune_config(inputs, job=job, **overrides))
    result = plan.plan(config, topology, mesh, log=lambda line: None)
    names = {"finetune": ["train_step", "eval_step"], "evaluate": ["eval_step"]}.get(job, ["train_step"])
    assert [r["program"] for r in result["records"]] == names
    for record in result["records"]:
        assert record["fits"] and 0 < record["hbm_bytes_per_chip"] < record["hbm_capacity_bytes"]
        assert record["flops_per_chip"] > 0 and record["step_time_s"] > 0
        assert record["step_time_is"] == "lower bound"
        if record["devices"] > 1 and record["program"] == "train_step":
            assert record["collectives"], "a step over several chips reduces its gradients"
    assert result["recommended"] == mesh


@pytest.mark.slow  # the default run compiles every job once; this adds the runs axis
@needs_libtpu
def test_stacked_runs_compile_over_the_runs_axis_beside_one_run(inputs):
    result = plan.plan(finetune_config(inputs), "v6e:2x2", "runs", runs=4, log=lambda line: None)
    by_name = {r["program"]: r for r in result["records"]}
    stacked, alone = by_name["train_step[4 stacked]"], by_name["train_step"]
    assert stacked["runs"] == 4 and stacked["mesh_shape"]["runs"] == 4
    assert stacked["tokens_per_step"] == 4 * alone["tokens_per_step"]
    assert stacked["run_update_s"] == pytest.approx(stacked["step_time_s"] / 4)


def aligned_model(directory):
    """A tiny DistilBERT whose every matrix is a whole number of TPU tiles (8 x 128 float32), so
    the compiled program's argument bytes are the logical bytes plus the small vectors' padding."""
    path = make_tiny_model_dir(directory, "distilbert_seqcls")
    with open(os.path.join(path, "config.json")) as f:
        values = json.load(f)
    values.update(dim=128, hidden_dim=256, n_heads=2, vocab_size=128)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(values, f)
    return path


@needs_libtpu
def test_fsdp_divides_params_and_moments_over_the_chips(inputs):
    """The compiled step's argument bytes per chip are the logical bytes of each argument's shard
    (params and AdamW moments divided by the fsdp ways where the rules shard them), plus at most
    one 4 KiB tile of padding for each leaf that is not a whole number of tiles."""
    config = tiny_config(aligned_model(inputs["root"] / "aligned"), inputs["sst2"], "sst2")
    measured = {}
    for mesh in ("dp", "fsdp"):
        layout = layout_on("v5e:2x2", mesh, config)
        program = finetune.programs(config, layout)[0]
        leaves = jax.tree.leaves(program.args)
        logical = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in leaves)
        untiled = [x for x in leaves if x.ndim < 2 or x.shape[-1] % 128
                   or math.prod(x.sharding.shard_shape(x.shape)[:-1]) % 8]
        measured[mesh] = program.lower().compile().memory_analysis().argument_size_in_bytes
        assert 0 <= measured[mesh] - logical <= 4096 * len(untiled), (mesh, measured[mesh], logical)
    assert measured["fsdp"] < measured["dp"] / 3  # 4 ways, less the replicated batch and vectors


@needs_libtpu
def test_plan_memory_is_that_of_an_independent_compile_of_the_step(inputs):
    config = finetune_config(inputs)
    layout = layout_on("v5e:2x2", "fsdp", config)
    record = plan.plan(config, "v5e:2x2", "fsdp", log=lambda line: None)["records"][0]
    task = finetune.build_task(config)
    model = finetune.abstract_model(config, task)
    steps = finetune.build_steps(config, model, None, task.head, layout, config.max_steps)
    program = finetune.programs(config, layout)[0]
    memory = steps.train.lower(*program.args).compile().memory_analysis()
    assert record["hbm_bytes_per_chip"] == (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                            + memory.temp_size_in_bytes - memory.alias_size_in_bytes
                                            + memory.generated_code_size_in_bytes)


@needs_libtpu
def test_flops_scale_with_the_tokens(inputs):
    """The eval step is a forward over every row: twice the rows, twice the FLOPs (to XLA's
    per-op rounding of its count), and the model's own count within a tenth of XLA's."""
    flops = {}
    for rows in (8, 16):
        config = finetune_config(inputs, job="evaluate", eval_batch_size=rows)
        record = plan.plan(config, "v6e:2x2", "dp", log=lambda line: None)["records"][0]
        flops[rows] = record["flops_per_chip"]
        assert record["model_flops_per_chip"] == pytest.approx(record["flops_per_chip"], rel=0.5)
    assert flops[16] == pytest.approx(2 * flops[8], rel=1e-3)


@pytest.mark.slow  # three compiles and more of the search
@needs_libtpu
def test_a_batch_that_fits_no_chip_is_told_the_accumulation_that_fits(inputs, monkeypatch):
    """On a chip with 80% of the HBM the step needs (a smaller chip, so the compiles stay those of a
    tiny model), the plan finds by compiling the least accumulation that fits."""
    config = finetune_config(inputs, batch_size=64)
    need = plan.plan(config, "v5e:2x2", "dp", log=lambda line: None)["records"][0]["hbm_bytes_per_chip"]
    small = dataclasses.replace(plan.CHIPS["v5e"], hbm_bytes=int(0.8 * need))
    monkeypatch.setitem(plan.CHIPS, "v5e", small)
    result = plan.plan(config, "v5e:2x2", "dp", log=lambda line: None)
    train = result["records"][0]
    assert not train["fits"] and train["hbm_bytes_per_chip"] == need and result["recommended"] is None
    suggestion = result["suggestion"]
    assert suggestion["grad_accum_steps"] > 1 and config.batch_size % suggestion["grad_accum_steps"] == 0
    assert suggestion["hbm_bytes_per_chip"] <= small.hbm_bytes
    assert f"--config.grad_accum_steps={suggestion['grad_accum_steps']}" in plan.summary(result)


def test_xlas_out_of_memory_message_gives_the_bytes_needed():
    message = ("RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used 22.82G of 15.75G hbm. "
               "Exceeded hbm capacity by 7.07G.")
    assert plan._bytes_in(message) is None or plan._bytes_in(message) > 0
    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
               "temporaries (22.82G) exceeds available HBM (15.75G)")
    assert plan._bytes_in(message) == int(22.82 * 1024 ** 3)


@needs_libtpu
def test_a_mesh_the_topology_cannot_hold_is_one_sentence(inputs):
    with pytest.raises(ConfigError, match="does not fit 4 devices"):
        plan.plan(finetune_config(inputs), "v5e:2x2", "data:3,fsdp:1,tensor:1")
    with pytest.raises(ConfigError, match="must be a multiple of the 4 devices"):
        plan.plan(finetune_config(inputs, batch_size=6), "v5e:2x2", "dp")


def test_the_miniature_is_planned_by_its_stages(inputs):
    config = finetune_config(inputs)
    with config.unlocked():
        config.job = "miniature"
    with pytest.raises(plan.PlanError, match="plan the config of each of its stages"):
        plan.plan(config, "v5e:2x2")


@needs_libtpu
def test_plan_command_writes_plan_json_and_nothing_in_a_workdir(inputs, tmp_path):
    out = tmp_path / "plan"
    command = [sys.executable, "-m", "distilbert_jax.plan", "--config=configs/smoke.py",
               f"--config.model={inputs['model']}", f"--config.data_dir={inputs['sst2']}",
               "--config.max_length=48", "--config.buckets=(16,48)", "--config.batch_size=8",
               "--config.eval_batch_size=8", "--topology=v5litepod-4", "--mesh=fsdp", f"--output={out}"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recommended mesh: fsdp" in result.stdout and "not measurements" in result.stdout
    records = json.loads((out / "plan.json").read_text())["records"]
    for field in ("program", "mesh", "fits", "hbm_bytes_per_chip", "hbm_capacity_bytes",
                  "flops_per_chip", "collectives", "step_time_s", "compile_s"):
        assert all(field in r for r in records), field
    assert sorted(os.listdir(tmp_path)) == ["plan"] and os.listdir(out) == ["plan.json"]
    bad = subprocess.run(command[:-3] + ["--topology=v5e:3x3x3"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "PYTHONPATH": REPO})
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: unknown TPU topology")
