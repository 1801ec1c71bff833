"""Build the Keras golden models: seeded TensorFlow/Keras models converted with tf2onnx.

Each model is a small functional Keras model with seeded random weights (BatchNormalization
gamma/beta/moving statistics and all biases are randomized too, so no layer is the
identity). It is converted with ``tf2onnx.convert.from_keras`` at a static batch-1 input
shape, with tf2onnx's default optimizers only (the NHWC ``Transpose`` patterns it writes
are kept on purpose), and written to ``golden_models/keras/<name>.onnx``. Every file is
checked with ``onnx.checker`` (``full_check=True``), run in onnxruntime and compared with
the Keras output.

TensorFlow and tf2onnx need an older numpy/protobuf than spa-opt itself, so regenerate in
a separate virtual environment (from the repository root)::

    python3.11 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install -r golden_models/scripts/requirements-keras.txt
    /tmp/tfenv/bin/python golden_models/scripts/make_keras.py
"""

from __future__ import annotations

import collections
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

layers = tf.keras.layers

OUT = Path(__file__).resolve().parent.parent / "keras"
OPSET = 17
MAX_IR_VERSION = 10  # onnxruntime 1.31 refuses newer IR versions
TOLERANCE = 1e-4
SEED = 0
IMAGE_SHAPE = (1, 32, 32, 3)
SEQ_SHAPE = (1, 16, 32)
NUM_CLASSES = 10


def _conv_bn(x: tf.Tensor, filters: int, name: str, kernel: int = 3, stride: int = 1,
             act: str | None = "relu") -> tf.Tensor:
    """Conv2D (no bias) + BatchNormalization + optional activation.

    Args:
        x: NHWC input tensor.
        filters: Output channels.
        name: Layer name prefix.
        kernel: Square kernel size.
        stride: Convolution stride.
        act: ``"relu"``, ``"relu6"`` or ``None``.

    Returns:
        The output tensor.
    """
    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                      name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    if act == "relu":
        x = layers.ReLU(name=f"{name}_relu")(x)
    elif act == "relu6":
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return x


def keras_resnet() -> tf.keras.Model:
    """ResNet basic blocks: an identity residual block and a strided projection block.

    Returns:
        The Keras model (1x32x32x3 -> 1x10).
    """
    inp = tf.keras.Input(IMAGE_SHAPE[1:], batch_size=1, name="input")
    x = _conv_bn(inp, 16, "stem")
    # identity block 16 -> 16
    y = _conv_bn(x, 16, "b1_c1")
    y = _conv_bn(y, 16, "b1_c2", act=None)
    x = layers.ReLU(name="b1_out")(layers.Add(name="b1_add")([y, x]))
    # projection block 16 -> 32, stride 2
    y = _conv_bn(x, 32, "b2_c1", stride=2)
    y = _conv_bn(y, 32, "b2_c2", act=None)
    s = _conv_bn(x, 32, "b2_down", kernel=1, stride=2, act=None)
    x = layers.ReLU(name="b2_out")(layers.Add(name="b2_add")([y, s]))
    # identity block 32 -> 32
    y = _conv_bn(x, 32, "b3_c1")
    y = _conv_bn(y, 32, "b3_c2", act=None)
    x = layers.ReLU(name="b3_out")(layers.Add(name="b3_add")([y, x]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inp, out, name="keras_resnet")


def _inverted_residual(x: tf.Tensor, c_in: int, c_out: int, expand: int, stride: int,
                       name: str) -> tf.Tensor:
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project, residual Add.

    Args:
        x: NHWC input tensor.
        c_in: Input channels.
        c_out: Output channels.
        expand: Expanded (hidden) channels.
        stride: Depthwise stride.
        name: Layer name prefix.

    Returns:
        The output tensor.
    """
    y = _conv_bn(x, expand, f"{name}_expand", kernel=1, act="relu6")
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False,
                               name=f"{name}_dw")(y)
    y = layers.BatchNormalization(name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu6")(y)
    y = _conv_bn(y, c_out, f"{name}_project", kernel=1, act=None)
    if stride == 1 and c_in == c_out:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def keras_mobilenet() -> tf.keras.Model:
    """MobileNetV2-style inverted residual blocks with ReLU6 and depthwise convolutions.

    Returns:
        The Keras model (1x32x32x3 -> 1x10).
    """
    inp = tf.keras.Input(IMAGE_SHAPE[1:], batch_size=1, name="input")
    x = _conv_bn(inp, 16, "stem", stride=2, act="relu6")
    x = _inverted_residual(x, 16, 16, 32, 1, "ir1")
    x = _inverted_residual(x, 16, 24, 32, 2, "ir2")
    x = _inverted_residual(x, 24, 24, 32, 1, "ir3")
    x = _conv_bn(x, 32, "head", kernel=1, act="relu6")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inp, out, name="keras_mobilenet")


def keras_inception() -> tf.keras.Model:
    """Inception block (1x1, 1x1->3x3, maxpool->1x1) concatenated on channels, Flatten+Dense.

    Returns:
        The Keras model (1x32x32x3 -> 1x10).
    """
    inp = tf.keras.Input(IMAGE_SHAPE[1:], batch_size=1, name="input")
    x = _conv_bn(inp, 16, "stem", stride=2)
    b1 = _conv_bn(x, 8, "br1x1", kernel=1)
    b2 = _conv_bn(x, 8, "br3x3_reduce", kernel=1)
    b2 = _conv_bn(b2, 16, "br3x3")
    b3 = layers.MaxPooling2D(3, strides=1, padding="same", name="brpool_pool")(x)
    b3 = _conv_bn(b3, 8, "brpool_proj", kernel=1)
    x = layers.Concatenate(axis=-1, name="concat")([b1, b2, b3])  # 8 + 16 + 8 = 32
    x = _conv_bn(x, 16, "mix", stride=2)
    x = layers.MaxPooling2D(2, name="pool")(x)  # 4x4x16
    x = layers.Flatten(name="flatten")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inp, out, name="keras_inception")


def keras_se() -> tf.keras.Model:
    """Squeeze-excitation: GAP, Dense reduce, Dense expand (sigmoid), Reshape, Multiply.

    Returns:
        The Keras model (1x32x32x3 -> 1x10).
    """
    inp = tf.keras.Input(IMAGE_SHAPE[1:], batch_size=1, name="input")
    x = _conv_bn(inp, 16, "stem", stride=2)
    x = _conv_bn(x, 32, "c1")
    s = layers.GlobalAveragePooling2D(name="se_squeeze")(x)
    s = layers.Dense(8, activation="relu", name="se_reduce")(s)
    s = layers.Dense(32, activation="sigmoid", name="se_expand")(s)
    s = layers.Reshape((1, 1, 32), name="se_reshape")(s)
    x = layers.Multiply(name="se_scale")([x, s])
    x = _conv_bn(x, 16, "c2", kernel=1)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inp, out, name="keras_se")


def keras_transformer() -> tf.keras.Model:
    """One post-norm transformer encoder layer (MHA 4x8, GELU FFN), mean pool, Dense head.

    Returns:
        The Keras model (1x16x32 -> 1x10).
    """
    inp = tf.keras.Input(SEQ_SHAPE[1:], batch_size=1, name="input")
    a = layers.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")(inp, inp)
    x = layers.LayerNormalization(epsilon=1e-5, name="ln1")(layers.Add(name="add1")([inp, a]))
    f = layers.Dense(64, activation="gelu", name="ffn_up")(x)
    f = layers.Dense(32, name="ffn_down")(f)
    x = layers.LayerNormalization(epsilon=1e-5, name="ln2")(layers.Add(name="add2")([x, f]))
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    out = layers.Dense(NUM_CLASSES, name="logits")(x)
    return tf.keras.Model(inp, out, name="keras_transformer")


MODELS: dict[str, Callable[[], tf.keras.Model]] = {
    "keras_resnet": keras_resnet,
    "keras_mobilenet": keras_mobilenet,
    "keras_inception": keras_inception,
    "keras_se": keras_se,
    "keras_transformer": keras_transformer,
}


def randomize(model: tf.keras.Model, rng: np.random.Generator) -> None:
    """Give every bias, BatchNormalization and LayerNormalization parameter random values.

    Kernels keep their (seeded) Keras initializers. BatchNormalization gets
    gamma ~ 1 + 0.2 N, beta ~ 0.1 N, moving mean ~ 0.1 N and moving variance in
    [0.5, 1.5], so that it is never the identity and folding it changes the weights.

    Args:
        model: The model whose weights are overwritten in place.
        rng: Seeded random generator.
    """
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                (1.0 + 0.2 * rng.standard_normal(c)).astype(np.float32),
                (0.1 * rng.standard_normal(c)).astype(np.float32),
                (0.1 * rng.standard_normal(c)).astype(np.float32),
                rng.uniform(0.5, 1.5, c).astype(np.float32),
            ])
            continue
        is_norm = isinstance(layer, layers.LayerNormalization)
        for var in layer.weights:
            short = var.name.split("/")[-1].split(":")[0]
            if short == "gamma" and is_norm:
                var.assign((1.0 + 0.2 * rng.standard_normal(var.shape)).astype(np.float32))
            elif short in ("bias", "beta"):
                var.assign((0.1 * rng.standard_normal(var.shape)).astype(np.float32))


def convert(model: tf.keras.Model) -> onnx.ModelProto:
    """Convert a Keras model with tf2onnx at its static input shape.

    Args:
        model: A single-input Keras model with a fully static input shape.

    Returns:
        The ONNX model, with ``ir_version`` capped at ``MAX_IR_VERSION``.
    """
    shape = tuple(model.inputs[0].shape)
    spec = (tf.TensorSpec(shape, tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
    proto.producer_name = f"tf2onnx {tf2onnx.__version__} (tensorflow {tf.__version__})"
    proto.doc_string = f"spa-opt golden model {model.name}: golden_models/scripts/make_keras.py"
    return proto


def param_count(proto: onnx.ModelProto) -> int:
    """Count the elements in all initializers and Constant node tensors.

    Args:
        proto: The ONNX model.

    Returns:
        The number of stored tensor elements.
    """
    total = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    total += int(np.prod(attr.t.dims))
    return total


@dataclass
class Row:
    """One line of the summary table.

    Attributes:
        name: Model name.
        nodes: Number of ONNX nodes.
        params: Elements in ONNX initializers and Constant tensors (includes shape constants).
        keras_params: Keras ``count_params()`` (BatchNormalization statistics included).
        err: Max absolute difference between onnxruntime and Keras outputs.
        kb: File size in KiB.
        ops: Histogram of ONNX op types.
    """

    name: str
    nodes: int
    params: int
    keras_params: int
    err: float
    kb: float
    ops: collections.Counter[str]


def build_one(name: str, build: Callable[[], tf.keras.Model], seed: int) -> Row:
    """Build, convert, check, run and save one model.

    Args:
        name: Model name (also the file stem).
        build: Function returning the Keras model.
        seed: Seed for Keras initializers, the randomized parameters and the test input.

    Returns:
        A row for the summary table.

    Raises:
        AssertionError: If onnxruntime's output differs from Keras by more than TOLERANCE.
    """
    tf.keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model = build()
    randomize(model, rng)
    shape = tuple(model.inputs[0].shape)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = model(x, training=False).numpy()

    proto = convert(model)
    path = OUT / f"{name}.onnx"
    onnx.save(proto, path)
    onnx.checker.check_model(str(path), full_check=True)
    assert proto.ir_version <= MAX_IR_VERSION, proto.ir_version

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    assert got.shape == expected.shape, (got.shape, expected.shape)
    err = float(np.max(np.abs(got - expected)))
    assert err <= TOLERANCE, f"{name}: max abs err {err:.3g} > {TOLERANCE}"
    return Row(
        name=name,
        nodes=len(proto.graph.node),
        params=param_count(proto),
        keras_params=model.count_params(),
        err=err,
        kb=path.stat().st_size / 1024,
        ops=collections.Counter(n.op_type for n in proto.graph.node),
    )


def main() -> int:
    """Build every model, print a summary table and per-model op histograms.

    Returns:
        Process exit code.
    """
    OUT.mkdir(parents=True, exist_ok=True)
    rows = [build_one(name, build, SEED + i) for i, (name, build) in enumerate(MODELS.items())]
    print(f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}, onnx {onnx.__version__},"
          f" onnxruntime {ort.__version__}, numpy {np.__version__}, opset {OPSET}")
    print(f"{'name':<20}{'nodes':>7}{'params':>9}{'keras params':>14}{'max abs err':>14}"
          f"{'size KiB':>10}")
    for r in rows:
        print(f"{r.name:<20}{r.nodes:>7}{r.params:>9}{r.keras_params:>14}{r.err:>14.2e}"
              f"{r.kb:>10.1f}")
    for r in rows:
        print(f"{r.name}: " + ", ".join(f"{op}:{n}" for op, n in sorted(r.ops.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
