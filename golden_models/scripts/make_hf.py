"""Export tiny random-init Hugging Face ``transformers`` models to ONNX with both exporters.

The HF golden models (issue 14): what a user gets from ``transformers`` by default, built from
a config object with random init (no hub access), seeded, in eval mode, static shapes, batch 1,
each exported twice:

- ``golden_models/hf/<name>.dynamo.onnx``: ``torch.onnx.export(..., dynamo=True)``, opset 18;
- ``golden_models/hf/<name>.torchscript.onnx``: ``dynamo=False``, opset 17.

The output is ``last_hidden_state`` for the base models and ``logits`` for the
``*ForSequenceClassification`` / ``*ForImageClassification`` variants (one per family, where
the family has one: pruning the residual stream needs a head). Files are normalised as in
make_torch.py (IR version capped at 10, ``pkg.torch.onnx.stack_trace`` metadata dropped,
weights inline), must pass the full ONNX checker, load in onnxruntime and match PyTorch on a
seeded random input. A model that an exporter cannot handle is reported (and listed in
``golden_models/hf/README.md``) and skipped.

This script needs ``transformers``; it runs in its own virtual environment so that the
project's pins stay untouched::

    python3 -m venv /work/hfvenv
    /work/hfvenv/bin/pip install torch==2.13.0
    /work/hfvenv/bin/pip install -r golden_models/scripts/requirements-hf.txt
    /work/hfvenv/bin/python golden_models/scripts/make_hf.py [NAME ...]

``--table`` also prints the README table rows (markdown).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from golden_files import normalise
from hf_models import MODELS, Spec, build_hf
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent.parent / "hf"
DYNAMO_OPSET = 18
TORCHSCRIPT_OPSET = 17
ATOL = 1e-4
RTOL = 1e-3


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
    common = {"input_names": list(spec.input_names), "output_names": [spec.output]}
    if dynamo:
        torch.onnx.export(model, args, str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                          external_data=False, verbose=False, **common)
    else:
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          do_constant_folding=True, **common)


def check(path: Path, model: onnx.ModelProto, args: tuple[Tensor, ...],
          expected: Tensor) -> float:
    """Run the full checker and onnxruntime; compare with the PyTorch output.

    Args:
        path: The saved file.
        model: The loaded model.
        args: The inputs.
        expected: The PyTorch output.

    Returns:
        The maximum absolute error.

    Raises:
        AssertionError: If the output differs by more than ``ATOL + RTOL * |expected|``.
    """
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args, strict=True)}
    (got,) = sess.run(None, feeds)
    e_np = expected.numpy()
    assert got.shape == e_np.shape, f"{path.name}: shape {got.shape} != {e_np.shape}"
    err = float(np.max(np.abs(got - e_np)))
    assert np.allclose(got, e_np, atol=ATOL, rtol=RTOL), f"{path.name}: max abs error {err:.3g}"
    return err


def param_count(model: onnx.ModelProto) -> int:
    """Count elements of all initializers (and of Constant nodes holding tensors).

    Args:
        model: The model.

    Returns:
        The number of initializer elements.
    """
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def build(name: str) -> tuple[nn.Module, tuple[Tensor, ...], Tensor]:
    """Build one seeded eval-mode model with its seeded input and PyTorch output.

    Args:
        name: Key in ``MODELS``.

    Returns:
        ``(model, inputs, output)``.
    """
    spec = MODELS[name]
    model = build_hf(spec)
    torch.manual_seed(1000 + spec.seed)
    args = spec.inputs()
    with torch.no_grad():
        out = model(*args)
    return model, args, out


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    table = "--table" in argv
    names = [a for a in argv if not a.startswith("--")] or list(MODELS)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    skipped: list[dict[str, str]] = []
    for name in names:
        spec = MODELS[name]
        for exporter in ("dynamo", "torchscript"):
            path = OUT / f"{name}.{exporter}.onnx"
            try:
                model, args, expected = build(name)
                export(model, args, spec, path, dynamo=exporter == "dynamo")
                onnx_model = normalise(path)
                err = check(path, onnx_model, args, expected)
            except Exception as exc:  # an exporter that cannot handle a model is reported
                path.unlink(missing_ok=True)
                path.with_name(path.name + ".data").unlink(missing_ok=True)
                root = exc
                while root.__cause__ is not None:
                    root = root.__cause__
                msg = f"{type(exc).__name__}: {exc}".strip().splitlines()
                if root is not exc:
                    msg = [f"{type(exc).__name__} caused by {type(root).__name__}: {root}"
                           .splitlines()[0]]
                skipped.append({"file": path.name, "why": msg[0][:300] if msg else "?"})
                if "--debug" in argv:
                    traceback.print_exc()
                continue
            opset = next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx"))
            out = onnx_model.graph.output[0]
            dims = [d.dim_value or d.dim_param for d in out.type.tensor_type.shape.dim]
            rows.append({"name": name, "family": spec.family, "class": spec.cls,
                         "config": spec.config_text(), "exporter": exporter, "opset": opset,
                         "ir": onnx_model.ir_version, "nodes": len(onnx_model.graph.node),
                         "params": param_count(onnx_model),
                         "output": f"{out.name} {tuple(dims)}", "err": err,
                         "bytes": path.stat().st_size})
    print(f"{'model':<18} {'exporter':<12} {'opset':>5} {'nodes':>6} {'params':>8} "
          f"{'max err':>9} {'bytes':>8}")
    for r in rows:
        print(f"{r['name']:<18} {r['exporter']:<12} {r['opset']:>5} {r['nodes']:>6} "
              f"{r['params']:>8} {r['err']:>9.2e} {r['bytes']:>8}")
    print(f"{len(rows)} files, {sum(int(r['bytes']) for r in rows)} bytes in {OUT}")
    for s in skipped:
        print(f"skipped {s['file']}: {s['why']}")
    if table:
        print("\n| file | family | class | config | exporter | opset | nodes | params | output |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['name']}.{r['exporter']}.onnx` | {r['family']} | `{r['class']}` | "
                  f"{r['config']} | {r['exporter']} | {r['opset']} | {r['nodes']} | "
                  f"{r['params']} | `{r['output']}` |")
    (Path("/tmp") / "make_hf_last.json").write_text(json.dumps({"rows": rows,
                                                               "skipped": skipped}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
