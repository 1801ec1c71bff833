"""Build the hand-made golden models with onnx.helper: no framework, seeded weights.

These small graphs exist so that spa-opt's own tests and README commands need no
exporter. They use IR version 10 (onnx >= 1.23 writes IR 14 by default, which
onnxruntime 1.31 refuses).

    python golden_models/scripts/make_handmade.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent
IR_VERSION = 10
OPSET = 17


class _Builder:
    """Collects nodes and seeded initializers with unique names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        std = scale if scale is not None else np.sqrt(2.0 / fan_in)
        data = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(data, name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_bn_relu(self, x: str, c_in: int, c_out: int, name: str, k: int = 3,
                     stride: int = 1, relu: bool = True) -> str:
        w = self.weight(f"{name}.weight", (c_out, c_in, k, k))
        y = self.node("Conv", [x, w], f"{name}.conv", kernel_shape=[k, k],
                      pads=[k // 2] * 4, strides=[stride, stride])
        gamma = self.weight(f"{name}.bn.scale", (c_out,), 0.1)
        self.initializers[-1] = numpy_helper.from_array(
            (1.0 + numpy_helper.to_array(self.initializers[-1])).astype(np.float32), gamma)
        beta = self.weight(f"{name}.bn.bias", (c_out,), 0.1)
        mean = self.weight(f"{name}.bn.mean", (c_out,), 0.1)
        var_name = f"{name}.bn.var"
        var = np.abs(self.rng.standard_normal(c_out)).astype(np.float32) + 0.5
        self.initializers.append(numpy_helper.from_array(var, var_name))
        y = self.node("BatchNormalization", [y, gamma, beta, mean, var_name], f"{name}.bn")
        return self.node("Relu", [y], f"{name}.relu") if relu else y


def resnet_tiny() -> onnx.ModelProto:
    """A ResNet with basic blocks (residual adds, a strided projection), 8/16/32 wide."""
    b = _Builder(seed=0)
    x = b.conv_bn_relu("input", 3, 8, "stem")
    c_in = 8
    for stage, (width, stride) in enumerate([(8, 1), (16, 2), (32, 2)]):
        y = b.conv_bn_relu(x, c_in, width, f"s{stage}.b0.c1", stride=stride)
        y = b.conv_bn_relu(y, width, width, f"s{stage}.b0.c2", relu=False)
        shortcut = x
        if stride != 1 or c_in != width:
            shortcut = b.conv_bn_relu(x, c_in, width, f"s{stage}.b0.down", k=1, stride=stride,
                                      relu=False)
        y = b.node("Add", [y, shortcut], f"s{stage}.b0.add")
        x = b.node("Relu", [y], f"s{stage}.b0.out")
        c_in = width
    x = b.node("GlobalAveragePool", [x], "pool")
    x = b.node("Flatten", [x], "flatten", axis=1)
    w = b.weight("fc.weight", (10, c_in))
    bias = b.weight("fc.bias", (10,), 0.01)
    b.node("Gemm", [x, w, bias], "logits", transB=1)
    graph = helper.make_graph(
        b.nodes, "resnet_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        b.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              ir_version=IR_VERSION, producer_name="spa-opt golden_models")
    onnx.checker.check_model(model, full_check=True)
    return model


MODELS = {"resnet_tiny": resnet_tiny}


def main() -> None:
    for name, build in MODELS.items():
        onnx.save(build(), OUT / f"{name}.onnx")
        print(f"wrote {OUT / f'{name}.onnx'}")


if __name__ == "__main__":
    main()
