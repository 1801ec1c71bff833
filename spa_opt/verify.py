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
inputs, and that difference relative to the largest reference magnitude. With
calibration inputs (``--calib``) the comparison runs on the last ``N`` of them instead
of random tensors, held back from the passes when there are more than ``N`` (``source``
says which: ``calibration (held back)``, or ``calibration (in-sample)`` when every
input was needed), because on random inputs a lossy step's error says little
(the digits ResNet pruned by obspa to 100% test accuracy shows rel err 0.88 on N(0,1)
images). Beside the errors, for what the outputs are:

- a classifier's ``(batch, classes)`` float output: the fraction of inputs whose top-1
  class is unchanged, and the mean KL divergence ``KL(softmax(before) ||
  softmax(after))`` in nats;
- a decoder's ``(batch, seq, vocab)`` logits beside an integer ``(batch, seq)`` input
  whose values are all below ``vocab`` (else the output is hidden states: skipped):
  top-1 agreement over positions, the KL, and the ratio of next-token perplexities
  after / before, the targets being the input ids shifted by one.
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
    source: str = "random"
    """``random``, ``calibration (held back)`` or ``calibration (in-sample)``."""
    agreement: float | None = None
    """Smallest top-1 agreement over classifier-like outputs."""
    kl: float | None = None
    """Largest mean softmax KL divergence (nats) over classifier-like outputs."""
    perplexity_ratio: float | None = None
    """Next-token perplexity after / before, for decoder logits."""

    def to_dict(self) -> dict:
        """The report's JSON form; a figure that is not finite is ``null``.

        An output whose shape changed has error ``null``; NaN outputs give a ``null``
        KL divergence and errors.
        """

        def finite(x: float | None) -> float | None:
            return x if x is not None and np.isfinite(x) else None

        return {
            "inputs": self.inputs,
            "max_abs_err": finite(self.max_abs_err),
            "rel_err": finite(self.rel_err),
            "per_output": {name: finite(err) for name, err in self.per_output.items()},
            "reshaped": list(self.reshaped),
            "source": self.source,
            "top1_agreement": finite(self.agreement),
            "kl": finite(self.kl),  # NaN when the logits are
            "perplexity_ratio": finite(self.perplexity_ratio),
        }

    def summary(self) -> str:
        """One line for the CLI: what matters first."""
        parts = [f"{self.inputs} {self.source} inputs"]
        if self.agreement is not None:
            parts.append(f"top-1 agreement {self.agreement * 100:.1f}%")
        if self.kl is not None:
            parts.append(f"KL {self.kl:.3g}")
        if self.perplexity_ratio is not None:
            parts.append(f"perplexity x{self.perplexity_ratio:.3f}")
        parts.append(f"max abs err {self.max_abs_err:.3g}, rel err {self.rel_err:.3g}")
        return "verify: " + ", ".join(parts)


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


def calibration_inputs(calibration, model: ir.Model, count: int
                       ) -> list[dict[str, np.ndarray]]:
    """The first ``count`` calibration samples, one feed each."""
    feeds = []
    for feed in calibration.batches(model, 1):
        feeds.append(feed)
        if len(feeds) == count:
            break
    return feeds


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis in float64 (verify's KL and perplexity, sensitivity's KL)."""
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _token_ids(feed: Mapping[str, np.ndarray], batch: int, seq: int) -> np.ndarray | None:
    for array in feed.values():
        if array.dtype.kind in "iu" and array.shape == (batch, seq):
            return array
    return None


def _quality(reference: Sequence[dict[str, np.ndarray]], result: Sequence[dict[str, np.ndarray]],
             feeds: Sequence[Mapping[str, np.ndarray]], skip: Sequence[str]
             ) -> tuple[float | None, float | None, float | None]:
    """Top-1 agreement, softmax KL and perplexity ratio (see the module docstring)."""
    agree: dict[str, list[np.ndarray]] = {}
    kls: dict[str, list[np.ndarray]] = {}
    nll = [0.0, 0.0]
    decoder = False
    for index, (expected, actual) in enumerate(zip(reference, result, strict=True)):
        for name, want in expected.items():
            got = actual.get(name)
            if name in skip or got is None or got.shape != want.shape or \
                    want.dtype.kind != "f" or want.ndim not in (2, 3) or want.shape[-1] < 2:
                continue
            ids = _token_ids(feeds[index], *want.shape[:2]) if want.ndim == 3 and \
                index < len(feeds) else None
            if want.ndim == 3 and (ids is None or ids.min(initial=0) < 0
                                   or ids.max(initial=0) >= want.shape[-1]):
                continue  # hidden states, or ids that are not this axis' classes
            before, after = log_softmax(want), log_softmax(got)
            agree.setdefault(name, []).append((want.argmax(-1) == got.argmax(-1)).ravel())
            kls.setdefault(name, []).append(
                (np.exp(before) * (before - after)).sum(-1).ravel())
            if ids is not None and ids.shape[1] > 1:
                decoder = True
                target = ids[:, 1:, None]
                nll[0] -= float(np.take_along_axis(before[:, :-1], target, -1).sum())
                nll[1] -= float(np.take_along_axis(after[:, :-1], target, -1).sum())
    if not agree:
        return None, None, None
    agreement = min(float(np.concatenate(v).mean()) for v in agree.values())
    kl = max(float(np.concatenate(v).mean()) for v in kls.values())
    count = sum(len(np.concatenate(v)) for v in agree.values())
    ratio = float(np.exp((nll[1] - nll[0]) / max(count, 1))) if decoder else None
    return agreement, kl, ratio


def compare(reference: Sequence[dict[str, np.ndarray]], result: Sequence[dict[str, np.ndarray]],
            reshaped: Sequence[str] = (), feeds: Sequence[Mapping[str, np.ndarray]] = (),
            source: str = "random") -> VerifyResult:
    """Largest absolute and relative differences between two runs on the same feeds.

    ``reshaped`` outputs are skipped: their shape changed on purpose. ``feeds`` (the
    inputs of the runs) lets a decoder's perplexity ratio find its token ids.
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
    agreement, kl, ratio = _quality(reference, result, feeds, reshaped)
    return VerifyResult(len(reference), max_abs, max_abs / scale if scale > 0 else max_abs,
                        per_output, sorted(reshaped), source, agreement, kl, ratio)
