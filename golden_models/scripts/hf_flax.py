"""Export a tiny Flax NNX CNN with jax2onnx: the Flax entry of the HF golden models.

A residual CNN (conv-BN-ReLU stem, one residual conv-BN-ReLU block, a strided conv, global
mean, Linear head), NHWC input ``(1, 32, 32, 3)``, seeded (``nnx.Rngs(0)``), BatchNorm in
inference mode with random running statistics and affine parameters. Written to
``golden_models/hf/flax_cnn.jax2onnx.onnx`` (opset 18, IR version capped at 10), checked with
the full ONNX checker and against JAX in onnxruntime. jax2onnx's own value_info is
dropped and re-inferred (it declares wrong spatial sizes after the strided conv).

jax2onnx needs its own virtual environment (jax, flax)::

    python3 -m venv /work/jaxvenv
    /work/jaxvenv/bin/pip install jax2onnx==0.17.1 flax==0.12.8 jax==0.10.2 jaxlib==0.10.2 \
        onnx==1.23.2 onnxruntime==1.32.0 numpy==2.4.6
    /work/jaxvenv/bin/python golden_models/scripts/hf_flax.py
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime as ort
from flax import nnx
from jax2onnx import to_onnx

OUT = Path(__file__).resolve().parent.parent / "hf" / "flax_cnn.jax2onnx.onnx"
RAW = OUT.with_name("flax_cnn_raw.jax2onnx.onnx")
"""The export exactly as jax2onnx wrote it, stale value_info included."""
OPSET = 18
IR_VERSION = 10
SHAPE = (1, 32, 32, 3)


class CNN(nnx.Module):
    """Stem, a residual block, a strided conv, global mean and a Linear head (10 classes)."""

    def __init__(self, rngs: nnx.Rngs) -> None:
        self.c1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
        self.b1 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.c2 = nnx.Conv(16, 16, (3, 3), rngs=rngs)
        self.b2 = nnx.BatchNorm(16, use_running_average=True, rngs=rngs)
        self.c3 = nnx.Conv(16, 32, (3, 3), strides=(2, 2), rngs=rngs)
        self.fc = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits of an NHWC image batch."""
        x = nnx.relu(self.b1(self.c1(x)))
        x = x + nnx.relu(self.b2(self.c2(x)))
        x = nnx.relu(self.c3(x))
        return self.fc(x.mean(axis=(1, 2)))


def randomize(model: CNN, key: jax.Array) -> None:
    """Random running statistics, scale and bias for every BatchNorm (none is an identity)."""
    for bn in (model.b1, model.b2):
        k1, k2, k3, k4, key = jax.random.split(key, 5)
        n = bn.mean.value.shape
        bn.mean.value = 0.1 * jax.random.normal(k1, n)
        bn.var.value = jax.random.uniform(k2, n, minval=0.5, maxval=1.5)
        bn.scale.value = jax.random.uniform(k3, n, minval=0.5, maxval=1.5)
        bn.bias.value = 0.1 * jax.random.normal(k4, n)
    model.c1.bias.value = 0.1 * jax.random.normal(key, model.c1.bias.value.shape)


def main() -> None:
    model = CNN(nnx.Rngs(0))
    randomize(model, jax.random.PRNGKey(1))
    proto = to_onnx(model, [SHAPE], model_name="flax_cnn", opset=OPSET,
                    input_names=["input"], output_names=["logits"])
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    # jax2onnx 0.17.1 writes value_info with the input's spatial size after the stride-2
    # SAME conv (16x16 tensors declared 32x32), which strict shape inference rejects. The
    # export is kept as it is (RAW: spa-opt must repair it on load), and a clean copy
    # with the hints dropped and re-inferred.
    onnx.save(proto, str(RAW), save_as_external_data=False)
    del proto.graph.value_info[:]
    proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    onnx.checker.check_model(proto, full_check=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(OUT), save_as_external_data=False)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), SHAPE), dtype=np.float32)
    expected = np.asarray(model(jnp.asarray(x)))
    sess = ort.InferenceSession(str(OUT), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    err = float(np.max(np.abs(got - expected)))
    assert np.allclose(got, expected, atol=1e-4, rtol=1e-3), err
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    print(f"{OUT.name}: opset {OPSET}, {len(proto.graph.node)} nodes, {params} params, "
          f"output {proto.graph.output[0].name}, max err {err:.2e}, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
