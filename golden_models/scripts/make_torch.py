"""Export small PyTorch models to ONNX with both exporters: the torch-exported golden models.

Each model is a tiny, seeded, eval-mode PyTorch module that exercises one channel-coupling
pattern a structured pruner must handle (residual adds, depthwise and grouped convs,
concatenation, channel split and shuffle, squeeze-excitation, attention heads, fused qkv,
grouped-query attention, per-head norms, ...). Every model is exported twice, with static
shapes and batch 1:

- ``golden_models/torch/<name>.dynamo.onnx``: ``torch.onnx.export(..., dynamo=True)``
  (``torch.export`` + onnxscript, opset 20);
- ``golden_models/torch/<name>.torchscript.onnx``: the legacy TorchScript exporter
  (``dynamo=False``, opset 17).

The files are then normalised: IR version capped at 10, as in make_handmade.py (onnxruntime
1.31 loads IR <= 13 but refuses IR 14, the onnx 1.23 default; the exporters currently write
10 and 8, so the cap is a guard); the per-node ``pkg.torch.onnx.stack_trace`` metadata is
dropped (it holds absolute paths of this machine); weights stay inside the file. Each file
must pass the full ONNX checker and match the PyTorch output within 1e-4 in onnxruntime on a
seeded random input; the script asserts this and prints a table.

Regenerate with::

    pip install torch==2.13.0 && python golden_models/scripts/make_torch.py

Optionally pass model names to export only those, e.g. ``python ... make_torch.py vit gpt2``.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from golden_files import normalise
from torch import Tensor, nn
from torch_cnns import (
    IMAGE,
    DenseNet,
    EfficientNet,
    Inception,
    MobileNetV2,
    ResNetBasic,
    ResNetBottleneck,
    ShuffleNet,
)
from torch_cnns_dense import ConvNeXt, ConvNeXtBlock, LayerNorm2d, UNet, YoloC2f
from torch_transformers import GPT2, SEQ, VOCAB, Bert, RMSNorm, ViT, llama, qwen3

OUT = Path(__file__).resolve().parent.parent / "torch"
DYNAMO_OPSET = 20
TORCHSCRIPT_OPSET = 17
ATOL = 1e-4


def image_input() -> tuple[Tensor, ...]:
    """A random image batch.

    Returns:
        ``(x,)`` with x of shape (1, 3, 32, 32).
    """
    return (torch.randn(IMAGE),)


def token_input() -> tuple[Tensor, ...]:
    """Random token ids.

    Returns:
        ``(input_ids,)`` of shape (1, 16), int64.
    """
    return (torch.randint(0, VOCAB, (1, SEQ)),)


def bert_input() -> tuple[Tensor, ...]:
    """Random token ids and an attention mask with the last 4 positions padded.

    Returns:
        ``(input_ids, attention_mask)``, both (1, 16) int64.
    """
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[:, -4:] = 0
    return torch.randint(0, VOCAB, (1, SEQ)), mask


@dataclass(frozen=True)
class Spec:
    """One golden model: how to build it, its inputs and I/O names."""

    build: Callable[[], nn.Module]
    inputs: Callable[[], tuple[Tensor, ...]]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    seed: int


IMG_IO = (("input",), ("logits",))
LM_IO = (("input_ids",), ("logits",))

MODELS: dict[str, Spec] = {
    "resnet_basic": Spec(ResNetBasic, image_input, *IMG_IO, seed=1),
    "resnet_bottleneck": Spec(ResNetBottleneck, image_input, *IMG_IO, seed=2),
    "mobilenetv2": Spec(MobileNetV2, image_input, *IMG_IO, seed=3),
    "densenet": Spec(DenseNet, image_input, *IMG_IO, seed=4),
    "shufflenet": Spec(ShuffleNet, image_input, *IMG_IO, seed=5),
    "inception": Spec(Inception, image_input, *IMG_IO, seed=6),
    "efficientnet": Spec(EfficientNet, image_input, *IMG_IO, seed=7),
    "yolo_c2f": Spec(YoloC2f, image_input, ("input",), ("output",), seed=8),
    "unet": Spec(UNet, image_input, ("input",), ("output",), seed=9),
    "convnext": Spec(ConvNeXt, image_input, *IMG_IO, seed=10),
    "vit": Spec(ViT, image_input, *IMG_IO, seed=11),
    "bert": Spec(Bert, bert_input, ("input_ids", "attention_mask"),
                 ("last_hidden_state", "pooler_output"), seed=12),
    "gpt2": Spec(GPT2, token_input, *LM_IO, seed=13),
    "llama": Spec(llama, token_input, *LM_IO, seed=14),
    "qwen3": Spec(qwen3, token_input, *LM_IO, seed=15),
}


@torch.no_grad()
def randomize_norms(model: nn.Module) -> None:
    """Give every norm non-trivial statistics and affine parameters so none is an identity.

    BatchNorm gets random running mean/var, weight and bias; LayerNorm, RMSNorm and the
    channels-first LayerNorm get random weight (and bias); ConvNeXt layer-scale gamma is
    set to O(1) values instead of 1e-6.

    Args:
        model: The model, modified in place.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, (nn.LayerNorm, LayerNorm2d, RMSNorm)):
            m.weight.uniform_(0.5, 1.5)
            bias = getattr(m, "bias", None)
            if bias is not None:
                bias.normal_(0.0, 0.1)
        if isinstance(m, ConvNeXtBlock):
            m.gamma.uniform_(0.2, 1.0)


def export(model: nn.Module, args: tuple[Tensor, ...], spec: Spec, path: Path,
           dynamo: bool) -> None:
    """Export with one exporter, static shapes, weights inline.

    Args:
        model: Eval-mode model.
        args: Example inputs.
        spec: The model's spec (I/O names).
        path: Output file.
        dynamo: True for the torch.export-based exporter, False for TorchScript.
    """
    common = {"input_names": list(spec.input_names), "output_names": list(spec.output_names)}
    if dynamo:
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                          external_data=False, verbose=False, **common)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          do_constant_folding=True, **common)


def check(path: Path, model: onnx.ModelProto, args: tuple[Tensor, ...],
          expected: tuple[Tensor, ...]) -> float:
    """Run the full checker and onnxruntime; compare with the PyTorch outputs.

    Args:
        path: The saved file.
        model: The loaded model.
        args: The inputs.
        expected: The PyTorch outputs.

    Returns:
        The maximum absolute error over all outputs.

    Raises:
        AssertionError: If the outputs differ by more than ``ATOL`` or mismatch in shape.
    """
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    got = sess.run(None, feeds)
    err = 0.0
    for g, e in zip(got, expected, strict=True):
        e_np = e.numpy()
        assert g.shape == e_np.shape, f"{path.name}: shape {g.shape} != {e_np.shape}"
        err = max(err, float(np.max(np.abs(g - e_np))))
    assert err <= ATOL, f"{path.name}: max abs error {err:.3g} > {ATOL}"
    return err


def param_count(model: onnx.ModelProto) -> int:
    """Count elements of all initializers.

    Args:
        model: The model.

    Returns:
        The number of initializer elements.
    """
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def build(name: str) -> tuple[nn.Module, tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Build one seeded eval-mode model with its seeded input and PyTorch outputs.

    Args:
        name: Key in ``MODELS``.

    Returns:
        ``(model, inputs, outputs)``.
    """
    spec = MODELS[name]
    torch.manual_seed(spec.seed)
    model = spec.build()
    randomize_norms(model)
    model.eval()
    torch.manual_seed(1000 + spec.seed)
    args = spec.inputs()
    with torch.no_grad():
        out = model(*args)
    outputs = out if isinstance(out, tuple) else (out,)
    return model, args, outputs


def main(names: list[str]) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[tuple[str, str, int, int, float, int]] = []
    skipped: list[str] = []
    for name in names or list(MODELS):
        for exporter in ("dynamo", "torchscript"):
            model, args, expected = build(name)
            path = OUT / f"{name}.{exporter}.onnx"
            try:
                export(model, args, MODELS[name], path, dynamo=exporter == "dynamo")
            except Exception as exc:  # an exporter that cannot handle a model is reported
                path.unlink(missing_ok=True)
                skipped.append(f"{path.name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            onnx_model = normalise(path)
            err = check(path, onnx_model, args, expected)
            rows.append((name, exporter, len(onnx_model.graph.node), param_count(onnx_model),
                         err, path.stat().st_size))
    print(f"{'model':<18} {'exporter':<12} {'nodes':>6} {'params':>8} {'max err':>9} "
          f"{'bytes':>8}")
    for name, exporter, nodes, params, err, size in rows:
        print(f"{name:<18} {exporter:<12} {nodes:>6} {params:>8} {err:>9.2e} {size:>8}")
    print(f"{len(rows)} files, {sum(r[5] for r in rows)} bytes in {OUT}")
    for line in skipped:
        print(f"skipped {line}")


if __name__ == "__main__":
    main(sys.argv[1:])
