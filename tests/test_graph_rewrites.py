"""Backend rewrites of exported graphs compute the same function: GroupNorm without the reshape."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from omniseg_rt.data import DEMO_GRAPH
from omniseg_rt.engines.graph_rewrites import group_norm_without_reshape, rewrite_for_openvino


def exported_style_group_norm(opset: int, groups: int = 4, channels: int = 8, scale: float = 1.0) -> onnx.ModelProto:
    """The exporter's GroupNorm: Reshape [0, G, -1] -> InstanceNormalization -> Reshape(Shape(x)),
    then the per-channel affine Mul/Add."""
    rng = np.random.default_rng(0)
    gamma = rng.normal(size=(channels, 1, 1)).astype(np.float32)
    beta = rng.normal(size=(channels, 1, 1)).astype(np.float32)
    inits = [
        numpy_helper.from_array(np.array([0, groups, -1], np.int64), "grouped"),
        numpy_helper.from_array(np.full(groups, scale, np.float32), "ones"),
        numpy_helper.from_array(np.zeros(groups, np.float32), "zeros"),
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(beta, "beta"),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "grouped"], ["g"]),
        helper.make_node("InstanceNormalization", ["g", "ones", "zeros"], ["n"], epsilon=1e-5),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["n", "shape"], ["back"]),
        helper.make_node("Mul", ["back", "gamma"], ["scaled"]),
        helper.make_node("Add", ["scaled", "beta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "gn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", channels, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def group_norm(x: np.ndarray, groups: int, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1).astype(np.float64)
    norm = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(x.shape)
    return (norm * gamma + beta).astype(np.float32)


def run(model: onnx.ModelProto, **inputs) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


@pytest.mark.parametrize("opset", [17, 18])
def test_group_norm_rewrite_is_exact_and_removes_the_big_reshapes(opset):
    model = exported_style_group_norm(opset)
    x = (np.random.default_rng(1).normal(size=(2, 8, 12, 10)) * 3 + 5).astype(np.float32)
    before = run(model, x=x)
    assert group_norm_without_reshape(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert "InstanceNormalization" not in ops and ops.count("ReduceMean") == 4
    # the only Reshapes left act on [N, C, 1, 1] statistics, never on x
    assert all(n.input[0] != "x" for n in model.graph.node if n.op_type == "Reshape")
    after = run(model, x=x)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(after, group_norm(x, 4, inits["gamma"], inits["beta"]), atol=2e-5)
    np.testing.assert_allclose(after, before, atol=2e-5)
    assert not {"grouped", "ones", "zeros"} & set(inits), "dead initializers left behind"


def test_other_normalisations_are_left_alone():
    model = exported_style_group_norm(17, scale=2.0)  # an InstanceNormalization with its own affine
    assert group_norm_without_reshape(model) == 0
    assert [n.op_type for n in model.graph.node].count("InstanceNormalization") == 1


def test_bundled_graph_rewritten_for_openvino_gives_the_same_margins(tmp_path):
    from omniseg_rt.data import sample_windows

    graph = tmp_path / "demo.onnx"
    graph.write_bytes(DEMO_GRAPH.read_bytes())
    done = rewrite_for_openvino(graph)
    original = onnx.load(str(DEMO_GRAPH))
    assert done["group_norm_without_reshape"] == [n.op_type for n in original.graph.node].count("InstanceNormalization")
    windows = sample_windows(2, 256)
    before, after = run(original, image=windows), run(onnx.load(str(graph)), image=windows)
    assert np.abs(after - before).max() <= 1e-3 * np.abs(before).max()
    assert ((after > 0) == (before > 0)).mean() > 0.9999
