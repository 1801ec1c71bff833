"""Hessians from calibration inputs: run the original model in onnxruntime, accumulate.

Every consumer layer's activation becomes an extra output of the model for the
duration of one onnxruntime session (the graph is restored afterwards). The inputs go
through in batches sized so that one batch's activations take about ``batch_bytes``;
each batch feeds every :class:`~spa_opt.obs.hessian.Accumulator` and is then
dropped, so memory holds one batch plus the running ``Σ X Xᵀ`` per accumulator.

Every layer sees the original network's activations, not those of a network already
pruned upstream: layers are then independent and can be solved in parallel, which
measured as good as the sequential variant on the digits ResNet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx_ir as ir

from spa_opt.calibration import Calibration
from spa_opt.errors import InputError
from spa_opt.obs.hessian import Accumulator
from spa_opt.obs.threads import run_tasks
from spa_opt.passes.obspa_graph.layers import Layer, key_of

DEFAULT_BATCH_BYTES = 256 << 20


def _session(model: ir.Model, values: list[ir.Value]):  # -> ort.InferenceSession
    from spa_opt.ort import quiet_session_options, session_from_model

    graph = model.graph
    saved = list(graph.outputs)
    extra = [v for v in values if v not in saved and not v.is_graph_input()]
    for value in extra:
        graph.outputs.append(value)
    options = quiet_session_options()
    # Idle onnxruntime threads spin by default and would steal the cores numpy's
    # BLAS needs between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return session_from_model(model, options)
    except Exception as error:  # onnxruntime raises untyped failures
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(f"obspa: the model does not run in onnxruntime: {first}") from None
    finally:
        graph.outputs.clear()
        graph.outputs.extend(saved)


def accumulate(model: ir.Model, layers: Iterable[Layer], calibration: Calibration, *,
               max_positions: int, seed: int, jobs: int = 0,
               batch_bytes: int = DEFAULT_BATCH_BYTES,
               progress: Callable[[int], None] | None = None) -> dict[tuple, Accumulator]:
    """One accumulator per activation and geometry, filled from every calibration sample.

    The caller keeps the model's value types inferred (extra outputs need them).

    Args:
        model: The model as it is now (before any removal).
        layers: The consumer layers whose Hessians are wanted.
        calibration: Model inputs, samples along axis 0.
        max_positions: Columns per batch and accumulator beyond which a subset is drawn.
        seed: Seed of those subsets.
        jobs: Threads for the accumulators (0: all cores).
        batch_bytes: Rough budget of one batch's activations.
        progress: Called with the number of samples after each batch.

    Returns:
        Accumulators keyed by :func:`~spa_opt.passes.obspa_graph.layers.key_of`.
    """
    accumulators: dict[tuple, Accumulator] = {}
    reads: dict[tuple, ir.Value] = {}
    for index, layer in enumerate(layers):
        key = key_of(layer)
        if key not in accumulators:
            accumulators[key] = Accumulator(key[1], max_positions, seed + index, layer.width)
            reads[key] = layer.activation
    values = list({id(v): v for v in reads.values()}.values())
    for value in values:
        if not value.name:
            raise InputError("obspa: a consumer layer reads an unnamed value; run on a model "
                             "whose values have names")
    session = _session(model, values)
    names = [v.name for v in values]
    input_names = {i.name for i in session.get_inputs()}

    def run(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        wanted = [n for n in names if n not in input_names]
        outputs = dict(zip(wanted, session.run(wanted, feed), strict=True)) if wanted else {}
        outputs.update({n: feed[n] for n in names if n in input_names})
        return outputs

    probe = next(calibration.batches(model, 1))
    probe_bytes = sum(a.nbytes for a in run(probe).values())
    size = max(1, min(256, batch_bytes // max(probe_bytes, 1)))
    keys = list(accumulators)
    sizes = [accumulators[k].width for k in keys]
    done = 0
    for feed in calibration.batches(model, size):
        outputs = run(feed)
        run_tasks(lambda key, got=outputs: accumulators[key].add(got[reads[key].name]), keys,
                  sizes, jobs)
        count = len(next(iter(feed.values())))
        done += count
        if progress is not None:
            progress(count)
        del outputs
    return accumulators
