"""Export of the network to ONNX (dynamic batch and bag axes) and back, built with the `onnx` helpers.

The embedding table is stored in float16 (half the file); rows are cast to float32 after the gather, so
only the rows a batch touches are converted. Everything else is float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecosched_predictor_onnx.network import Network

OPSET = 17
INPUTS = ("ids", "weights", "dense")
OUTPUT = "probs"


def to_onnx(net: Network, path: Path) -> None:
    """Write `net` as an ONNX model:
    (ids int64 [N, L], weights float [N, S, L], dense float [N, F]) -> probs float [N, K]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    p = net.params
    num_dense = net.dense_mean.shape[0]
    num_classes = p["b2"].shape[0]
    num_bags = (p["W1"].shape[0] - num_dense) // p["E"].shape[1]
    inits = [
        numpy_helper.from_array(p["E"].astype(np.float16), "E"),
        numpy_helper.from_array(p["W1"], "W1"),
        numpy_helper.from_array(p["b1"], "b1"),
        numpy_helper.from_array(p["W2"], "W2"),
        numpy_helper.from_array(p["b2"], "b2"),
        numpy_helper.from_array(net.dense_mean.astype(np.float32), "dense_mean"),
        numpy_helper.from_array((1.0 / net.dense_std).astype(np.float32), "dense_inv_std"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat_shape"),
    ]
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["rows16"]),
        helper.make_node("Cast", ["rows16"], ["rows"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["weights", "rows"], ["bags"]),
        helper.make_node("Reshape", ["bags", "flat_shape"], ["bag"]),
        helper.make_node("Sub", ["dense", "dense_mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "dense_inv_std"], ["scaled"]),
        helper.make_node("Concat", ["bag", "scaled"], ["x"], axis=1),
        helper.make_node("Gemm", ["x", "W1", "b1"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["h"]),
        helper.make_node("Gemm", ["h", "W2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "ecosched_length_predictor",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "bag"]),
            helper.make_tensor_value_info("weights", TensorProto.FLOAT, ["batch", num_bags, "bag"]),
            helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", num_dense]),
        ],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", num_classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ecosched")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def from_onnx(path: Path) -> Network:
    """The network stored in an ONNX file written by `to_onnx` (to fine-tune it)."""
    import onnx
    from onnx import numpy_helper

    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    params = {k: arrays[k].astype(np.float32) for k in ("E", "W1", "b1", "W2", "b2")}
    return Network(params, arrays["dense_mean"].astype(np.float32), (1.0 / arrays["dense_inv_std"]).astype(np.float32))
