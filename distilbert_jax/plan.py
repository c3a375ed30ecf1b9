"""Plan a TPU run before booking one: a job's programs compiled for a TPU topology on any host.

    python -m distilbert_jax.plan --config=configs/glue.py:sst2 --topology=v5litepod-16 \\
        [--mesh=all|<preset>|data:N,fsdp:N,tensor:N] [--runs=K] [--output=DIR] [--config.<field>=...]

For each program the job declares (`jobs.PROGRAMS`: the very steps its run builds) and each mesh
the topology allows, XLA compiles the TPU executable with libtpu (the `tpu` extra) on this host.
From the executable: per-chip memory against the chip's HBM, FLOPs per chip beside the model's own
count, the collectives, and a roofline estimate of the step time. The estimate is a lower bound
(max of compute, HBM traffic and ICI traffic at the chip's peaks), never a measurement. Where the
batch fits no mesh, the plan compiles with more accumulation (then remat) until one fits. Nothing
is written into any workdir; `--output` gets plan.json.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from typing import Any

import jax

from distilbert_jax import jobs, sharding, storage
from distilbert_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's published figures (what a JAX device of that kind is: v4 and v5p in megacore
    mode, one device per chip)."""
    name: str
    hbm_bytes: int
    peak_flops: float  # bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s one way per link; a ring moves data both ways


GiB = 1024 ** 3
# Sources: Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e)
# for HBM size and bandwidth and peak bf16; "How to Scale Your Model", part 2 (How to Think About
# TPUs, jax-ml.github.io/scaling-book/tpus) for the one-way ICI bandwidth per link.
CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1.2e12, 4.5e10),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12, 8.1e11, 4.5e10),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12, 2.765e12, 9e10),
    "v6e": Chip("TPU v6e", 32 * GiB, 918e12, 1.64e12, 9e10),
}
# gcloud accelerator types count TensorCores for v4 and v5p (two per chip), chips for v5e and v6e.
CORES_PER_CHIP = {"v4": 2, "v5p": 2, "v5e": 1, "v6e": 1}
GCLOUD_NAMES = {"v4": "v4", "v5p": "v5p", "v5litepod": "v5e", "v5e": "v5e", "v6e": "v6e"}
JAX_NAMES = {"v4": "v4", "v5p": "v5p", "v5": "v5p", "v5e": "v5e", "v6e": "v6e"}
MESH_PRESETS = ("dp", "fsdp", "tp", "fsdp_tp", "dp_tp")
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
TOPOLOGY_FORMS = ("v4:2x2x1 / v4-8, v5e:2x2 / v5litepod-4, v5p:2x2x1 / v5p-8, v6e:4x4 / v6e-16, "
                  "single chips as v5e:1x1 / v5litepod-1 and v6e:1x1 / v6e-1")


class PlanError(ConfigError):
    """A topology, mesh or program the plan cannot take; the message says which and why."""


# --- topologies ------------------------------------------------------------------------------------

def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """(generation, chip grid) of a JAX topology name ("v5e:4x4") or a gcloud accelerator type
    ("v5litepod-16", "v4-8", "v5p-8", "v6e-16")."""
    match = re.fullmatch(r"(v\d+[a-z]*):(\d+(?:x\d+){1,2})", name.strip())
    if match and match.group(1) in JAX_NAMES:
        generation, grid = JAX_NAMES[match.group(1)], tuple(int(n) for n in match.group(2).split("x"))
        if len(grid) == (3 if CORES_PER_CHIP[generation] == 2 else 2):  # v4, v5p: a 3-D torus
            return generation, grid
    match = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", name.strip())
    if match and match.group(1) in GCLOUD_NAMES:
        generation = GCLOUD_NAMES[match.group(1)]
        cores = int(match.group(2))
        chips, spare = divmod(cores, CORES_PER_CHIP[generation])
        grid = _grid(generation, chips) if not spare else None
        if grid:
            return generation, grid
    raise PlanError(f"unknown TPU topology {name!r}; give a JAX topology or a gcloud accelerator "
                    f"type, e.g. {TOPOLOGY_FORMS}.")


def _grid(generation: str, chips: int) -> tuple[int, ...] | None:
    """The chip grid gcloud gives `chips` chips: 2-D for v5e/v6e, 3-D (x, y, z) for v4/v5p."""
    if chips < 1 or chips & (chips - 1):
        return None
    if generation in ("v5e", "v6e"):
        if chips > 256:
            return None
        x = 1 << (chips.bit_length() - 1) // 2
        return (x, chips // x)
    if chips < 4:
        return None
    grid = [2, 2, 1]
    while math.prod(grid) < chips:  # double the smallest side, the last of equals: 2x2x2, 2x2x4, 2x4x4, 4x4x4
        smallest = min(grid)
        grid[max(i for i, side in enumerate(grid) if side == smallest)] *= 2
    return tuple(grid)


def topology_devices(name: str):
    """(the chip, the TPU devices of topology `name`) that a Mesh can hold, compiled for by libtpu on
    any host."""
    generation, grid = parse_topology(name)
    if importlib.util.find_spec("libtpu") is None:
        raise PlanError("compiling for a TPU needs libtpu: pip install 'distilbert-jax[tpu]' "
                        "(jax[tpu] at this package's jax version).")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # another JAX process may hold libtpu
    from jax.experimental import topologies
    options: dict[str, Any] = {}
    if generation in ("v4", "v5p"):
        options["chip_config_name"] = "megacore"  # one device per chip, as a TPU VM shows them
        grid = (*grid, 1)[:3]
    if math.prod(grid) < 4:  # one chip (Colab's TPU) or two: one host holding them all
        options["chips_per_host_bounds"] = (*grid, 1)[:3]
    topology = f"{generation}:{'x'.join(map(str, grid))}"
    try:
        devices = topologies.get_topology_desc(topology_name=topology, platform="tpu", **options).devices
    except Exception as e:
        raise PlanError(f"libtpu refused the topology {topology}: {storage.first_line(e)}") from None
    return CHIPS[generation], topology, devices


# --- compiling and reading a program ---------------------------------------------------------------

def collectives(hlo: str, devices: int) -> dict[str, dict[str, float]]:
    """{kind: {count, bytes, moved}} of the collectives in a compiled program's HLO text. `bytes` is
    the result's size per chip; `moved` what a ring moves per chip for it (all-reduce 2(n-1)/n of
    it, all-gather and all-to-all (n-1)/n, reduce-scatter n-1 times, permute once), n the group."""
    found: dict[str, dict[str, float]] = {}
    pattern = re.compile(r"=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(-start)?\(")
    for line in hlo.splitlines():
        match = pattern.search(line)
        if not match:
            continue
        shapes = _array_bytes(match.group(1))
        size = shapes[-1] if match.group(3) and len(shapes) > 1 else sum(shapes)  # -start: (in, out)
        kind, n = match.group(2), _group_size(line, devices)
        moved = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "all-to-all": (n - 1) / n,
                 "reduce-scatter": n - 1, "collective-permute": 1}[kind] * size
        entry = found.setdefault(kind, {"count": 0, "bytes": 0, "moved": 0.0})
        entry["count"] += 1
        entry["bytes"] += size
        entry["moved"] += moved
    return found


DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}


def _array_bytes(shape_text: str) -> list[int]:
    return [DTYPE_BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
            for dtype, dims in re.findall(r"\b([a-z]+\d*)\[([\d,]*)\]", shape_text)]


def _group_size(line: str, devices: int) -> int:
    iota = re.search(r"replica_groups=\[(\d+),(\d+)\]", line)
    if iota:
        return int(iota.group(2))
    groups = re.search(r"replica_groups=\{\{([\d,]+)\}", line)
    if groups:
        return len(groups.group(1).split(","))
    pairs = re.search(r"source_target_pairs=", line)
    return 2 if pairs else devices


def measure(program, chip: Chip, devices: int) -> dict[str, Any]:
    """Compiles `program` and reads its executable: one plan.json record (without program/mesh)."""
    started = time.perf_counter()
    cache = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)  # no device here could load the program
    try:
        compiled = program.lower().compile()
    except Exception as e:  # XLA's refusal: out of HBM, or a program the TPU compiler rejects
        text = storage.first_line(e)
        if "RESOURCE_EXHAUSTED" not in text and "Ran out of memory" not in text:
            raise PlanError(f"XLA refused to compile {program.name} for {chip.name}: {text}") from None
        return {"fits": False, "error": text, "compile_s": time.perf_counter() - started,
                "hbm_bytes_per_chip": _bytes_in(text), "hbm_capacity_bytes": chip.hbm_bytes}
    finally:
        jax.config.update("jax_enable_compilation_cache", cache)
    compile_s = time.perf_counter() - started
    memory = compiled.memory_analysis()
    hbm = (memory.argument_size_in_bytes + memory.output_size_in_bytes + memory.temp_size_in_bytes
           - memory.alias_size_in_bytes + memory.generated_code_size_in_bytes)
    cost = compiled.cost_analysis() or {}
    cost = cost[0] if isinstance(cost, list) else cost
    flops, traffic = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
    found = collectives(compiled.as_text(), devices)
    moved = sum(c["moved"] for c in found.values())
    model_flops_per_chip = program.model_flops / devices
    # XLA counts a loop's body once (accumulation, the chunked soft targets, collective matmuls),
    # so each term is a lower bound, and compute is at least the model's own FLOPs.
    times = {"compute": max(flops, model_flops_per_chip) / chip.peak_flops,
             "hbm": traffic / chip.hbm_bandwidth, "ici": moved / (2 * chip.ici_bandwidth)}
    step = max(times.values())
    record = {
        "fits": hbm <= chip.hbm_bytes, "hbm_bytes_per_chip": int(hbm),
        "hbm_capacity_bytes": chip.hbm_bytes, "margin_bytes": int(chip.hbm_bytes - hbm),
        "memory": {"arguments": memory.argument_size_in_bytes, "outputs": memory.output_size_in_bytes,
                   "temporaries": memory.temp_size_in_bytes, "aliases": memory.alias_size_in_bytes},
        "flops_per_chip": flops, "model_flops_per_chip": model_flops_per_chip,
        "hbm_traffic_bytes_per_chip": traffic, "ici_moved_bytes_per_chip": moved,
        "term_s": times,
        "collectives": {k: {"count": int(v["count"]), "bytes": int(v["bytes"])} for k, v in found.items()},
        "step_time_s": step, "bound_by": max(times, key=times.get), "step_time_is": "lower bound",
        "tokens_per_s": program.tokens / step if step else None,
        "mfu": model_flops_per_chip / (chip.peak_flops * step) if step else None,
        "runs": program.runs, "run_update_s": step / program.runs,
        "compile_s": compile_s,
    }
    if program.calls:
        record["run_time_s"] = program.calls * step
    return record


def _bytes_in(message: str) -> int | None:
    """The bytes an out-of-memory message says the program needs ("... temporaries (22.82G) ...")."""
    match = re.search(r"\(([\d.]+)([KMG])\)", message)
    return int(float(match.group(1)) * 1024 ** " KMG".index(match.group(2))) if match else None


# --- the plan --------------------------------------------------------------------------------------

def meshes(choice: str, devices, runs: int = 1) -> list[str]:
    """The meshes to plan: every preset the device count holds ("all"), or the one asked for."""
    if choice != "all":
        sharding.make_mesh(choice, devices)  # a mesh the topology cannot hold: one sentence
        return [choice]
    names = [*MESH_PRESETS, *(["runs"] if runs > 1 else [])]
    fitting = []
    for name in names:
        try:
            mesh = sharding.make_mesh(name, devices)
        except ConfigError:
            continue
        if len(devices) == 1 or name == "dp" or any(
                mesh.shape[a] > 1 for a in mesh.shape if a != "data" or name.startswith("dp")):
            fitting.append(name)
    return list(dict.fromkeys(fitting))


def plan(config, topology: str, mesh: str = "all", runs: int = 1, log=print) -> dict[str, Any]:
    """Every program of `config.job` compiled for `topology` on each mesh: {"records": [...],
    "recommended": mesh or None, "suggestion": ...}. `runs` > 1 plans a stacked sweep of that many
    runs beside one run alone."""
    if config.job not in jobs.PROGRAMS:
        raise PlanError(f"job={config.job!r} has no programs of its own to plan; plan the config "
                        f"of each of its stages (one of {sorted(jobs.PROGRAMS)}).")
    chip, name, devices = topology_devices(topology)
    records = []
    for mesh_name in meshes(mesh, devices, runs):
        layout = sharding.Layout(sharding.make_mesh(mesh_name, devices),
                                 tuple(tuple(rule) for rule in config.rules))
        try:
            programs = list(jobs.PROGRAMS[config.job](config, layout))
            if runs > 1:
                programs += [dataclasses.replace(p, name=f"{p.name}[{runs} stacked]")
                             for p in jobs.PROGRAMS[config.job](config, layout, runs)
                             if p.name == "train_step"]
        except ConfigError as e:
            if mesh != "all":
                raise
            log(f"{mesh_name}: skipped ({e})")
            continue
        for program in programs:
            record = {"program": program.name, "mesh": mesh_name, "mesh_shape": dict(layout.mesh.shape),
                      "topology": name, "chip": chip.name, "devices": len(devices),
                      "tokens_per_step": program.tokens, **measure(program, chip, len(devices))}
            log(row(record))
            records.append(record)
    main = "eval_step" if config.job == "evaluate" else "train_step"
    fits = {m for m in {r["mesh"] for r in records}
            if all(r["fits"] for r in records if r["mesh"] == m and "[" not in r["program"])}
    candidates = [r for r in records if r["program"] == main and r["mesh"] in fits]
    best = min(candidates, key=lambda r: r["step_time_s"])["mesh"] if candidates else None
    result = {"topology": name, "chip": dataclasses.asdict(chip), "job": config.job,
              "records": records, "recommended": best}
    if best is None and records and main == "train_step":
        result["suggestion"] = fitting_change(config, records, topology, log)
    return result


def fitting_change(config, records: list[dict], topology: str, log=print) -> dict[str, Any] | None:
    """The least accumulation (then remat) under which the train step fits, found by compiling on
    the mesh whose step needed the least memory per chip, starting from the accumulation that
    divides that need by the chip's HBM; None if none fits."""
    chip, _, devices = topology_devices(topology)
    tried = [r for r in records if r["program"] == "train_step"]
    least = min(tried, key=lambda r: r["hbm_bytes_per_chip"] or math.inf)
    mesh_name, need = least["mesh"], least["hbm_bytes_per_chip"] or 0
    layout = sharding.Layout(sharding.make_mesh(mesh_name, devices), tuple(tuple(r) for r in config.rules))
    first = max(config.grad_accum_steps, int(config.grad_accum_steps * need / chip.hbm_bytes))
    for remat in dict.fromkeys([config.remat, "dots", "full"]):
        for accum in range(first if remat == config.remat else config.grad_accum_steps,
                           config.batch_size + 1):
            if config.batch_size % accum or (config.batch_size // accum) % layout.data_ways:
                continue
            if accum == config.grad_accum_steps and remat == config.remat:
                continue
            trial = config.copy_and_resolve_references()
            with trial.unlocked():
                trial.grad_accum_steps, trial.remat = accum, remat
            program = next(p for p in jobs.PROGRAMS[config.job](trial, layout) if p.name == "train_step")
            record = measure(program, chip, len(devices))
            log(f"  grad_accum_steps={accum} remat={remat} on {mesh_name}: "
                f"{'fits' if record['fits'] else 'does not fit'}")
            if record["fits"]:
                return {"mesh": mesh_name, "grad_accum_steps": accum, "remat": remat,
                        "hbm_bytes_per_chip": record["hbm_bytes_per_chip"]}
    return None


HEADER = (f"{'program':<24} {'mesh':<8} {'fits':<5} {'HBM/chip':>9} {'of':>6} {'TFLOP/chip':>10} "
          f"{'model':>7} {'step >=':>9} {'bound':<7} {'tokens/s <=':>11} {'MFU <=':>6} "
          f"{'collectives':<34} {'compile':>7}")


def row(r: dict[str, Any]) -> str:
    """One record as a line of the plan's table."""
    gib = lambda b: f"{b / GiB:.2f}G" if b is not None else "?"
    if "step_time_s" not in r:
        return (f"{r['program']:<24} {r['mesh']:<8} {'no':<5} {gib(r['hbm_bytes_per_chip']):>9} "
                f"{gib(r['hbm_capacity_bytes']):>6}  {r['error'][:80]}")
    kinds = " ".join(f"{k.replace('collective-', '')}x{v['count']}:{v['bytes'] / 2**20:.0f}M"
                     for k, v in r["collectives"].items())
    return (f"{r['program']:<24} {r['mesh']:<8} {'yes' if r['fits'] else 'no':<5} "
            f"{gib(r['hbm_bytes_per_chip']):>9} {gib(r['hbm_capacity_bytes']):>6} "
            f"{r['flops_per_chip'] / 1e12:>10.3f} {r['model_flops_per_chip'] / 1e12:>7.3f} "
            f"{r['step_time_s'] * 1e3:>7.2f}ms {r['bound_by']:<7} {r['tokens_per_s']:>11.0f} "
            f"{r['mfu'] * 100:>5.1f}% {kinds or '-':<34} {r['compile_s']:>6.1f}s")


def summary(result: dict[str, Any]) -> str:
    """What the table means and what to do: the recommended mesh, or the change that fits."""
    lines = ["step >= and tokens/s <= are lower and upper bounds, not measurements: the roofline "
             "max(FLOPs / peak, HBM bytes / bandwidth, ICI bytes / bandwidth) at the chip's "
             "published figures (plan.CHIPS)",
             f"recommended mesh: {result['recommended'] or 'none fits'}"]
    suggestion = result.get("suggestion")
    if suggestion:
        lines.append(f"fits with --config.grad_accum_steps={suggestion['grad_accum_steps']} "
                     f"--config.remat={suggestion['remat']} --config.mesh={suggestion['mesh']}")
    elif result["recommended"] is None and "suggestion" in result:
        lines.append("no accumulation or remat policy makes the train step fit this topology")
    for r in result["records"]:
        if r.get("run_time_s"):
            lines.append(f"{r['program']} on {r['mesh']}: the config's steps take at least "
                         f"{r['run_time_s'] / 60:.1f} min (a lower bound, not a measurement)")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------

def main(argv) -> None:
    from absl import flags

    from distilbert_jax import startup
    jax.config.update("jax_platforms", "cpu")  # the host compiles; no device here is used
    for name, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_WORKER_ID", "0"),
                        ("TPU_WORKER_HOSTNAMES", "localhost"), ("TPU_ACCELERATOR_TYPE", "v5litepod-4")):
        os.environ.setdefault(name, value)  # libtpu only describes topologies here: no VM to ask
    config = startup.load_config()
    values = flags.FLAGS

    def run():
        if len(argv) > 1:
            raise PlanError(f"unexpected arguments: {argv[1:]}")
        print(HEADER, flush=True)
        result = plan(config, values.topology, values.mesh, values.runs, log=lambda line: print(line, flush=True))
        print(summary(result))
        if values.output:
            path = storage.join(values.output, "plan.json")
            storage.makedirs(values.output)
            storage.write_text(path, json.dumps(result, indent=1))
            print(f"wrote {path}")
    sys.exit(startup.command(run))


def cli_main() -> None:
    from absl import app, flags

    from distilbert_jax import startup
    flags.DEFINE_string("topology", None, f"A TPU topology: {TOPOLOGY_FORMS}.")
    flags.DEFINE_string("mesh", "all", "all (every preset the topology holds), a preset "
                        f"({', '.join(MESH_PRESETS)}), or data:N,fsdp:N,tensor:N.")
    flags.DEFINE_integer("runs", 1, "Plan a stacked sweep of this many runs beside one run.")
    flags.DEFINE_string("output", None, "A folder for plan.json (never a run's workdir).")
    flags.mark_flags_as_required(["config", "topology"])
    sys.modules["__main__"].__doc__ = __doc__
    app.run(main, flags_parser=startup.parse_flags)


if __name__ == "__main__":
    cli_main()
