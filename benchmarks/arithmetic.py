"""What the benchmarks' MFU columns divide: a model's FLOPs and this machine's measured matmul peak.

Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on sys.path).
"""

from __future__ import annotations

import time

import jax
import numpy as np


def seconds(fn) -> float:
    """Wall-clock seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def encoder_flops(config, length: int) -> float:
    """FLOPs (2 per multiply-add) of one sequence's encoder forward, either family: the dense layers
    (q, k, v, out, FFN in and out) and attention (scores and weighted sum)."""
    d = getattr(config, "dim", None) or config.hidden_size
    inner = getattr(config, "hidden_dim", None) or config.intermediate_size
    layers = getattr(config, "n_layers", None) or config.num_hidden_layers
    return 2 * layers * length * (4 * d * d + 2 * d * inner + 2 * length * d)


def jax_peak(dtype, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of `repeats` n x n matmuls in `dtype` under XLA on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    return 2 * n ** 3 / min(seconds(lambda: matmul(a).block_until_ready()) for _ in range(repeats))


def torch_peak(dtype: str, n: int, repeats: int = 5) -> float:
    """The same for torch on its device (its CPU kernels can beat XLA's, e.g. bf16 on CPUs)."""
    import torch
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    (a @ a), sync()
    return 2 * n ** 3 / min(seconds(lambda: ((a @ a), sync())) for _ in range(repeats))


def onnxruntime_peak(dtype: str, n: int, repeats: int = 5) -> float:
    """The same for onnxruntime's CPU kernels, with a constant right operand (as a model's weights
    are, so onnxruntime prepacks it): "float32" (MatMul) or "int8" (MatMulInteger, u8 x s8)."""
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    if dtype == "int8":
        op, a_type, out = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
        a, b = rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-127, 127, (n, n), dtype=np.int8)
    else:
        op, a_type, out = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
        a = b = rng.standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "peak",
                              [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("c", out, [n, n])],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    session.run(None, {"a": a})
    return 2 * n ** 3 / min(seconds(lambda: session.run(None, {"a": a})) for _ in range(repeats))
