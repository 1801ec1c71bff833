"""Compare a model before and after a pipeline in onnxruntime.

Inputs are random tensors of each graph input's declared shape. Symbolic dims
take the sizes ``--input-dim`` gives (the run's ``input_dims``, as for calibration
and noise inputs) and 1 otherwise, batch included. Floating inputs are standard
normal; bool inputs are random. Integer inputs are uniform below
:func:`spa_opt.inputs.token_id_bound`, the bound noise calibration uses: the rows of
the embedding table a ``Gather`` reads them from, through Cast, Reshape and other
ops that keep the ids, so token ids stay valid; other integer inputs are 0 or 1
(masks, flags).

Decoders with a key/value cache get their cache, mask and positions built from the
random ``input_ids`` (:mod:`spa_opt.decoder_inputs`): a cache of past length 1 from
noise, so the graph's cache path runs, or an empty one (past length 0) when the
pipeline may rewrite the cache's shape (``--io rewrite``): then each model gets feeds
of its own shapes, equal in every value the two have in common, and outputs whose
declared shape the pipeline changed are not compared (they are listed instead).

The error reported is the largest absolute difference over all outputs and
inputs, and that difference relative to the largest reference magnitude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from spa_opt.decoder_inputs import buildable, complete_feeds
from spa_opt.inputs import model_inputs, resolve_shape, token_id_bound


@dataclasses.dataclass
class VerifyResult:
    """The report's ``verify`` entry."""

    inputs: int
    max_abs_err: float
    rel_err: float
    per_output: dict[str, float]
    reshaped: list[str] = dataclasses.field(default_factory=list)
    """Outputs not compared: the pipeline changed their shape on purpose (``--io rewrite``)."""

    def to_dict(self) -> dict:
        """The report's JSON form; an output whose shape changed has error ``null``."""

        def finite(x: float) -> float | None:
            return x if np.isfinite(x) else None

        return {
            "inputs": self.inputs,
            "max_abs_err": finite(self.max_abs_err),
            "rel_err": finite(self.rel_err),
            "per_output": {name: finite(err) for name, err in self.per_output.items()},
            "reshaped": list(self.reshaped),
        }


def random_inputs(model: ir.Model, count: int, seed: int = 0,
                  dims: Mapping[str, int] | None = None, *, past_length: int = 1
                  ) -> list[dict[str, np.ndarray]]:
    """``count`` random feeds for the model's graph inputs (initializers excluded).

    Args:
        model: The model the feeds are for.
        count: How many feeds.
        seed: Seed of ``numpy.random.default_rng``.
        dims: Sizes of symbolic dims, by name or ``"input:axis"`` (the run's
            ``input_dims``); a symbolic dim not in it, batch included, has size 1: the
            smallest feed every model accepts, enough to compare two models.
        past_length: Past length of a key/value cache built from ``input_ids``.

    Raises:
        InputError: An input has no declared type or shape, or a type other than float,
            integer or bool.
    """
    rng = np.random.default_rng(seed)
    dims = dict(dims or {})
    inputs = model_inputs(model)
    built = buildable(inputs)
    specs = [(spec, resolve_shape(spec, dims, default=1),
              token_id_bound(spec.value) if spec.kind == "int" else 2)
             for spec in inputs if spec.name not in built]
    feeds = []
    for index in range(count):
        feed = {}
        for spec, shape, bound in specs:
            if spec.kind == "float":
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif spec.kind == "bool":
                feed[spec.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                feed[spec.name] = rng.integers(0, bound, shape).astype(spec.dtype)
        if built:
            feed = complete_feeds(inputs, feed, dims, past_length=past_length,
                                  seed=seed + index)
        feeds.append(feed)
    return feeds


def run_all(session: ort.InferenceSession, feeds: Sequence[dict[str, np.ndarray]]
            ) -> list[dict[str, np.ndarray]]:
    """Run ``session`` on every feed; outputs keyed by name."""
    names = [output.name for output in session.get_outputs()]
    return [dict(zip(names, session.run(names, feed), strict=True)) for feed in feeds]


def compare(reference: Sequence[dict[str, np.ndarray]], result: Sequence[dict[str, np.ndarray]],
            reshaped: Sequence[str] = ()) -> VerifyResult:
    """Largest absolute and relative differences between two runs on the same feeds.

    ``reshaped`` outputs are skipped: their shape changed on purpose.
    """
    per_output: dict[str, float] = {}
    scale = 0.0
    for expected, actual in zip(reference, result, strict=True):
        for name, want in expected.items():
            if name in reshaped:
                continue
            got = actual.get(name)
            if got is None or got.shape != want.shape:
                per_output[name] = float("inf")
                continue
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            per_output[name] = max(per_output.get(name, 0.0), float(diff.max(initial=0.0)))
            scale = max(scale, float(np.abs(want.astype(np.float64)).max(initial=0.0)))
    max_abs = max(per_output.values(), default=0.0)
    return VerifyResult(len(reference), max_abs, max_abs / scale if scale > 0 else max_abs,
                        per_output, sorted(reshaped))
