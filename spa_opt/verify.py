"""Compare a model before and after a pipeline in onnxruntime.

Inputs are random tensors of each graph input's declared shape. Symbolic dims
take the sizes ``--input-dim`` gives (the run's ``input_dims``, as for calibration
and noise inputs) and 1 otherwise, batch included. Floating inputs are standard
normal; bool inputs are random. Integer inputs are uniform below
:func:`spa_opt.inputs.token_id_bound`, the bound noise calibration uses: the rows of
the embedding table a ``Gather`` reads them from, through Cast, Reshape and other
ops that keep the ids, so token ids stay valid; other integer inputs are 0 or 1
(masks, flags).

The error reported is the largest absolute difference over all outputs and
inputs, and that difference relative to the largest reference magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from spa_opt.inputs import model_inputs, resolve_shape, token_id_bound


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


def random_inputs(model: ir.Model, count: int, seed: int = 0,
                  dims: Mapping[str, int] | None = None) -> list[dict[str, np.ndarray]]:
    """``count`` random feeds for the model's graph inputs (initializers excluded).

    Args:
        model: The model the feeds are for.
        count: How many feeds.
        seed: Seed of ``numpy.random.default_rng``.
        dims: Sizes of symbolic dims, by name or ``"input:axis"`` (the run's
            ``input_dims``); a symbolic dim not in it, batch included, has size 1: the
            smallest feed every model accepts, enough to compare two models.

    Raises:
        InputError: An input has no declared type or shape, or a type other than float,
            integer or bool.
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    specs = [(spec, resolve_shape(spec, dims, default=1),
              token_id_bound(spec.value) if spec.kind == "int" else 2)
             for spec in model_inputs(model)]
    feeds = []
    for _ in range(count):
        feed = {}
        for spec, shape, bound in specs:
            if spec.kind == "float":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.kind == "bool":
                feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feed[spec.name] = rng.integers(0, bound, shape).astype(spec.dtype)
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
