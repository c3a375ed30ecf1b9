"""Sharded runs equal the single-device run: dp, fsdp, tp and fsdp+tp on 8 virtual CPU devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from distilbert_jax import sharding
from distilbert_jax.train import preemption

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run(mesh, tmp_path, devices, restore_from="", job="finetune", layout=None):
    out = tmp_path / f"{job}_{mesh}_{devices}_{layout}.npz"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "PYTHONPATH": REPO}
    command = [sys.executable, os.path.join(HERE, "sharded_run.py"), f"--mesh={mesh}", f"--job={job}",
               f"--workdir={tmp_path / f'{mesh}_{devices}'}", f"--out={out}"]
    if restore_from:
        command.append(f"--restore_from={restore_from}")
    if layout:
        command.append(f"--layout={layout}")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(out) as data:
        params = {k: data[k] for k in data.files}
    return params, json.load(open(str(out) + ".json"))


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    return run("dp", tmp_path_factory.mktemp("single"), 1)


@pytest.fixture(scope="module")
def single_device_distill(tmp_path_factory):
    return run("dp", tmp_path_factory.mktemp("single_distill"), 1, job="distill")


def assert_close_params(params, reference, atol=1e-5):
    for name, value in reference.items():
        if name.endswith("k_lin/bias"):
            # Softmax ignores a constant added to every key score, so this bias's gradient is zero in
            # exact arithmetic; Adam turns the rounding noise left in it into lr-sized steps.
            continue
        np.testing.assert_allclose(params[name], value, rtol=1e-4, atol=atol, err_msg=name)


@pytest.mark.parametrize("mesh", [*(pytest.param(m, marks=pytest.mark.slow) for m in ("dp", "fsdp", "tp")),
                                  "fsdp_tp"])  # fsdp_tp shards over every axis at once
def test_preset_equals_single_device(mesh, single_device, tmp_path):
    params, info = run(mesh, tmp_path, 8)
    reference, reference_info = single_device
    assert info["devices"] == 8
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    assert_close_params(params, reference)
    specs = info["specs"]
    q = "distilbert/transformer/layer/0/attention/q_lin/kernel"
    out = "distilbert/transformer/layer/0/attention/out_lin/kernel"
    lin1 = "distilbert/transformer/layer/0/ffn/lin1/kernel"
    expected = {  # (embed, heads), (heads, embed), (embed, mlp) -> mesh axes, by the rules
        "dp": ([None, None],) * 3,
        "fsdp": (["fsdp", None], [None, "fsdp"], ["fsdp", None]),
        "tp": ([None, "tensor"], ["tensor", None], [None, None]),  # 37 FFN columns: not divisible by 8
        "fsdp_tp": (["fsdp", "tensor"], ["tensor", "fsdp"], ["fsdp", None]),
    }[mesh]
    assert (specs[q], specs[out], specs[lin1]) == expected


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    saved, _ = run("fsdp", tmp_path, 8)
    restored, info = run("tp", tmp_path, 4, restore_from=str(tmp_path / "fsdp_8" / "run"))
    assert info["devices"] == 4
    assert info["specs"]["distilbert/transformer/layer/0/attention/q_lin/kernel"] == [None, "tensor"]
    for name, value in saved.items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_mesh_from_config():
    mesh = sharding.make_mesh((("data", -1), ("fsdp", 1), ("tensor", 1)))
    assert mesh.shape["data"] == len(mesh.devices.flat)
    with pytest.raises(ValueError, match="must be exactly"):
        sharding.make_mesh((("data", -1), ("model", 1)))
    with pytest.raises(ValueError, match="does not fit 1 devices"):
        sharding.make_mesh((("data", 2), ("fsdp", 1), ("tensor", 1)))
    assert dict(sharding.make_mesh("data:1,fsdp:-1,tensor:1").shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ValueError, match="neither a preset"):
        sharding.make_mesh("data=2")


def two_processes(tmp_path, job, layout=None, extra=(), status=0):
    """2 processes x 4 CPU devices on localhost through jax.distributed, FSDP over all 8; each
    must exit with `status`. Returns (params, info) of a finished run, else their stderr."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / f"multihost_{job}.npz"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": REPO}
    processes = [subprocess.Popen(
        [sys.executable, os.path.join(HERE, "sharded_run.py"), "--mesh=fsdp", f"--job={job}",
         f"--workdir={tmp_path / 'w'}", f"--out={out}", f"--coordinator=localhost:{port}",
         "--num_processes=2", f"--process_id={i}", *([f"--layout={layout}"] if layout else []), *extra],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = []
    for p in processes:
        _, err = p.communicate(timeout=600)
        assert p.returncode == status, err[-3000:]
        errors.append(err)
    if status:
        return errors
    with np.load(out) as data:
        params = {k: data[k] for k in data.files}
    return params, json.load(open(str(out) + ".json"))


@pytest.mark.xdist_group("processes")  # one multi-process job at a time
def test_two_processes_equal_one_device(single_device, tmp_path):
    params, info = two_processes(tmp_path, "finetune")
    reference, reference_info = single_device
    assert info["devices"] == 8
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    assert_close_params(params, reference)


@pytest.mark.slow  # tests/test_preemption.py covers one process by default
@pytest.mark.xdist_group("processes")  # one multi-process job at a time
def test_two_processes_preempted_save_one_step_and_resume_to_one_device(single_device, tmp_path):
    """Process 0 alone gets the SIGTERM; JAX's preemption service has both processes save the same
    step and exit 75; run again, they end where the single-device run ends."""
    errors = two_processes(tmp_path, "finetune", extra=["--sigterm_after=0"],
                           status=preemption.EXIT_STATUS)
    saved = {err.strip().splitlines()[-1] for err in errors}
    assert len(saved) == 1 and saved.pop().startswith("preempted at step "), errors[0][-2000:]
    params, info = two_processes(tmp_path, "finetune")
    reference, reference_info = single_device
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    assert_close_params(params, reference)


@pytest.mark.parametrize("mesh", [pytest.param("fsdp", marks=pytest.mark.slow), "tp"])
def test_distillation_on_a_mesh_equals_single_device(mesh, single_device_distill, tmp_path):
    """Teacher and student sharded by the same rules give the single-device distillation."""
    params, info = run(mesh, tmp_path, 8, job="distill")
    reference, reference_info = single_device_distill
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    assert_close_params(params, reference)


@pytest.mark.slow  # test_two_processes_equal_one_device covers the multi-host path by default
@pytest.mark.xdist_group("processes")  # one multi-process job at a time
def test_two_processes_distill_equal_one_device(single_device_distill, tmp_path):
    params, info = two_processes(tmp_path, "distill")
    reference, reference_info = single_device_distill
    assert info["devices"] == 8
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    assert_close_params(params, reference)


@pytest.fixture(scope="module")
def single_device_no_dropout(tmp_path_factory):
    return run("dp", tmp_path_factory.mktemp("single_padded"), 1, layout="padded")


@pytest.mark.xdist_group("processes")  # one multi-process job at a time
@pytest.mark.parametrize("where", ["8 devices", pytest.param("2 processes", marks=pytest.mark.slow)])
def test_packed_on_a_mesh_equals_padded_on_one_device(where, single_device_no_dropout, tmp_path):
    """Packed batches split over 8 devices (each gets whole rows; the model gathers the examples
    across them), or packed block by block in 2 processes: the single-device padded run, dropout
    off."""
    if where == "8 devices":
        params, info = run("fsdp_tp", tmp_path, 8, layout="packed")
    else:
        params, info = two_processes(tmp_path, "finetune", layout="packed")
    reference, reference_info = single_device_no_dropout
    assert info["devices"] == 8
    np.testing.assert_allclose(info["losses"], reference_info["losses"], rtol=1e-5)
    # Packed rows add up attention and matmuls in another order; where a gradient component is
    # rounding noise around zero, Adam turns it into steps of up to lr (1e-3) either way. So the
    # params must agree to a tenth of one step (the largest difference measured: 2.3e-5).
    assert_close_params(params, reference, atol=1e-4)
