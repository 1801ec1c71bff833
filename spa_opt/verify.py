"""Compare a model before and after a pipeline in onnxruntime.

Inputs are random tensors of each graph input's declared shape, symbolic
dimensions set to 1. Floating inputs are standard normal. Integer inputs that
index an embedding (``Gather`` of a constant table) are uniform over the table's
rows, so token ids stay valid; other integer inputs are 0 or 1 (masks, flags).

The error reported is the largest absolute difference over all outputs and
inputs, and that difference relative to the largest reference magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from spa_opt.errors import InputError


@dataclasses.dataclass
class VerifyResult:
    """The report's ``verify`` entry."""

    inputs: int
    max_abs_err: float
    rel_err: float
    per_output: dict[str, float]

    def to_dict(self) -> dict:
        """The report's JSON form; an output whose shape changed has error ``null``."""

        def finite(x: float) -> float | None:
            return x if np.isfinite(x) else None

        return {
            "inputs": self.inputs,
            "max_abs_err": finite(self.max_abs_err),
            "rel_err": finite(self.rel_err),
            "per_output": {name: finite(err) for name, err in self.per_output.items()},
        }


def _index_bound(value: ir.Value) -> int:
    bounds = []
    for node, position in value.uses():
        if node.op_type == "Gather" and position == 1:
            table = node.inputs[0]
            if table is not None and table.shape is not None:
                axis = node.attributes.get_int("axis", 0)
                dim = table.shape[axis]
                if isinstance(dim, int):
                    bounds.append(dim)
    return min(bounds) if bounds else 2


def random_inputs(model: ir.Model, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` random feeds for the model's graph inputs (initializers excluded).

    Raises:
        InputError: An input has no declared type or rank.
    """
    rng = np.random.default_rng(seed)
    initializers = set(model.graph.initializers)
    specs = []
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        if value.dtype is None or value.shape is None:
            raise InputError(f"cannot make random data for input '{value.name}': no declared "
                             "type or shape")
        dims = [d if isinstance(d, int) else 1 for d in value.shape]
        specs.append((value.name, dims, value.dtype.numpy(), _index_bound(value)))
    feeds = []
    for _ in range(count):
        feed = {}
        for name, dims, dtype, bound in specs:
            if np.issubdtype(dtype, np.floating):
                feed[name] = rng.standard_normal(dims).astype(dtype)
            elif dtype == np.bool_:
                feed[name] = rng.integers(0, 2, dims).astype(bool)
            else:
                feed[name] = rng.integers(0, bound, dims).astype(dtype)
        feeds.append(feed)
    return feeds


def run_all(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]
            ) -> list[dict[str, np.ndarray]]:
    """Run ``session`` on every feed; outputs keyed by name."""
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed), strict=True)) for feed in feeds]


def compare(reference: Sequence[dict[str, np.ndarray]], result: Sequence[dict[str, np.ndarray]]
            ) -> VerifyResult:
    """Largest absolute and relative differences between two runs on the same feeds."""
    per_output: dict[str, float] = {}
    scale = 0.0
    for expected, actual in zip(reference, result, strict=True):
        for name, want in expected.items():
            got = actual.get(name)
            if got is None or got.shape != want.shape:
                per_output[name] = float("inf")
                continue
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            per_output[name] = max(per_output.get(name, 0.0), float(diff.max(initial=0.0)))
            scale = max(scale, float(np.abs(want.astype(np.float64)).max(initial=0.0)))
    max_abs = max(per_output.values(), default=0.0)
    return VerifyResult(len(reference), max_abs, max_abs / scale if scale > 0 else max_abs,
                        per_output)
