"""optimize/channel_shuffle.py: a channel shuffle goes into the weights of the convs after it, with the same outputs;
shuffles whose channels go anywhere else stay; every family of the registry keeps its logits."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from registry_choices import FAMILY_IDS

from smallnets.optimize.channel_shuffle import SHUFFLE_PERM, fold_channel_shuffles

RNG = np.random.default_rng(0)


def unit(tail: str = "conv") -> onnx.ModelProto:
    """ShuffleNet V1's unit on 6 channels: grouped 1x1 (g=3) -> Relu -> shuffle -> depthwise 3x3 -> ``tail``: a
    grouped 1x1 to 12 channels ("conv"), or the same with the depthwise output also a graph output ("exposed")."""
    weights = {
        "w1": RNG.normal(size=(6, 2, 1, 1)),
        "wd": RNG.normal(size=(6, 1, 3, 3)),
        "bd": RNG.normal(size=(6,)),
        "w2": RNG.normal(size=(12, 2, 1, 1)),
        "split_shape": np.array([-1, 3, 2, 8, 8]),
        "merge_shape": np.array([-1, 6, 8, 8]),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["g1"], name="gconv1", group=3),
        helper.make_node("Relu", ["g1"], ["r1"], name="act1"),
        helper.make_node("Reshape", ["r1", "split_shape"], ["s5"], name="split"),
        helper.make_node("Transpose", ["s5"], ["t5"], name="shuffle", perm=SHUFFLE_PERM),
        helper.make_node("Reshape", ["t5", "merge_shape"], ["sh"], name="merge"),
        helper.make_node("Conv", ["sh", "wd", "bd"], ["d"], name="depthwise", group=6, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["d", "w2"], ["y"], name="gconv2", group=3),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if tail == "exposed":
        outputs.append(helper.make_tensor_value_info("d", TensorProto.FLOAT, None))
    initializers = [
        numpy_helper.from_array(value.astype(np.int64 if "shape" in name else np.float32), name)
        for name, value in weights.items()
    ]
    graph = helper.make_graph(
        nodes, "unit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 8, 8])], outputs, initializers
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: feed})[0]


def shuffles(model: onnx.ModelProto) -> int:
    return sum(
        node.op_type == "Transpose" and list(node.attribute[0].ints) == SHUFFLE_PERM for node in model.graph.node
    )


def test_the_shuffle_goes_into_the_weights_with_the_same_outputs() -> None:
    model, feed = unit(), RNG.normal(size=(1, 6, 8, 8)).astype(np.float32)
    before = run(model, feed)
    assert fold_channel_shuffles(model) == 1
    onnx.checker.check_model(model)
    assert not {"Reshape", "Transpose"} & {node.op_type for node in model.graph.node}
    reader = next(node for node in model.graph.node if node.name == "gconv2")
    assert next(attr.i for attr in reader.attribute if attr.name == "group") == 1, "the permuted reader is plain"
    assert {init.name for init in model.graph.initializer} == {"w1", "wd", "bd", "w2"}, "shape constants dropped"
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-5, atol=1e-5)


def test_a_shuffle_whose_channels_leave_the_path_stays() -> None:
    model = unit("exposed")
    original = model.SerializeToString()
    assert fold_channel_shuffles(model) == 0
    assert model.SerializeToString() == original


@pytest.mark.parametrize("family", FAMILY_IDS)
def test_every_family_keeps_its_logits_with_its_shuffles_folded(
    family: str, fused_family: Callable[[str], tuple[onnx.ModelProto, np.ndarray]]
) -> None:
    model, feed = fused_family(family)
    before, present = run(model, feed), shuffles(model)
    folded = fold_channel_shuffles(model)
    onnx.checker.check_model(model)
    np.testing.assert_allclose(run(model, feed), before, rtol=1e-4, atol=1e-5 * float(np.abs(before).max()))
    assert shuffles(model) == present - folded and (folded > 0 or present == 0), "some shuffle of a net that has any"
    print(f"{family}: {folded} of {present} channel shuffles folded")
