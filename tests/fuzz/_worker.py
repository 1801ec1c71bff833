"""The oracle's worker: imported once by the fork server, then run once per mutant.

Importing this module imports everything a run needs (spa-opt's passes, onnx,
onnxruntime, onnxscript), so the forked workers start warm. It creates no onnxruntime
session at import: a process forked while onnxruntime's thread pools run could
deadlock.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import spa_opt.api
import spa_opt.cli
from spa_opt.passes import all_passes

all_passes()  # imports every pass module (onnxscript's folder among them)
_ = spa_opt.api


def run_and_check(work: str, argv: list[str], result: str) -> None:
    """Run ``spa-opt argv`` in ``work`` with stdout/stderr in files, then check the output.

    Writes ``{"code": exit code, "invalid": why the output is invalid or None}`` to
    ``result``. The check runs after fds 1 and 2 are restored, so only spa-opt's
    own run is judged for noise.
    """
    folder = Path(work)
    os.chdir(folder)
    saved = os.dup(1), os.dup(2)
    with open(f"{work}.stdout", "wb") as out, open(f"{work}.stderr", "wb") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            code = spa_opt.cli.main(argv)
        except BaseException as error:  # main must catch everything; this is a finding
            print(f"uncaught {type(error).__name__}: {error}", file=sys.stderr)
            code = -1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    invalid = None
    if code == 0:
        invalid = output_problem(folder / argv[-2], folder / argv[-1])
    Path(result).write_text(json.dumps({"code": code, "invalid": invalid}))


def _interface(model: onnx.ModelProto) -> list[tuple]:
    def dims(value: onnx.ValueInfoProto) -> tuple:
        tensor = value.type.tensor_type
        if not tensor.HasField("shape"):
            return (tensor.elem_type, None)
        return (tensor.elem_type, tuple(d.dim_value if d.HasField("dim_value") else
                                        d.dim_param for d in tensor.shape.dim))

    return ([("input", v.name, dims(v)) for v in model.graph.input]
            + [("output", v.name, dims(v)) for v in model.graph.output])


def output_problem(source: Path, destination: Path) -> str | None:
    """Why the output of a successful run is not valid, or None when it is."""
    if not destination.exists():
        return "exit 0 but no output file"
    model = onnx.load(str(destination))
    try:
        onnx.checker.check_model(str(destination), full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                          data_prop=True)
    except Exception as error:
        message = " ".join(str(error).split())
        # spa-opt's rule (spa_opt.ir.check): a default-domain op onnx has no schema for
        # is onnxruntime's (SimplifiedLayerNormalization); onnxruntime judges it below.
        if "No Op registered for" not in message:
            return "checker: " + message[:300]
    original = onnx.load(str(source), load_external_data=False)
    initializers = {t.name for t in original.graph.initializer}
    before = [row for row in _interface(original) if row[1] not in initializers]
    after = [row for row in _interface(model) if row[1] not in initializers]
    # a shape the input left out may be written (spa-opt infers it on load)
    after = [(kind, name, (dims[0], None)) if old[2][1] is None else (kind, name, dims)
             for (kind, name, dims), old in zip(after, before, strict=False)]
    if before != after:
        return f"graph inputs/outputs changed: {before} -> {after}"
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(str(destination), options,
                                       providers=["CPUExecutionProvider"])
        feeds = {}
        for value in session.get_inputs():
            shape = [d if isinstance(d, int) and d > 0 else 1 for d in value.shape]
            dtype = _NUMPY.get(value.type, np.float32)
            feeds[value.name] = np.zeros(shape, dtype=dtype)
    except Exception as error:
        return "onnxruntime: " + " ".join(str(error).split())[:300]
    try:
        session.run(None, feeds)
    except Exception as error:
        try:  # inputs of zeros may not suit the model itself (positions, masks)
            ort.InferenceSession(str(source), options,
                                 providers=["CPUExecutionProvider"]).run(None, feeds)
        except Exception:
            return None
        return "onnxruntime run: " + " ".join(str(error).split())[:300]
    return None


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
          "tensor(double)": np.float64, "tensor(int64)": np.int64,
          "tensor(int32)": np.int32, "tensor(bool)": np.bool_, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8}
