"""synthesize: calibration inputs made from the model alone, by optimising the inputs (analysis).

Rules:

- the result is the context's ``calibration`` (:class:`spa_opt.calibration.Calibration`,
  source ``"synthesized:<method> (<samples> samples, <steps> steps)"``, ``labels`` the
  class each sample was optimised for), which ``obspa`` (``hessian=data``, and its
  data-free default) and the data-driven criteria read as they read ``--calib``, and
  ``--save-calib`` writes;
- float inputs only: a model with an integer (token id) input is refused with a one-line
  error (give ``--calib``, or use obspa's ``hessian=noise``); bool inputs are all True and
  rank-0 float inputs keep their initial value; symbolic dims other than the batch take
  their sizes from ``--input-dim`` (the context's ``input_dims``) as for noise inputs
  (:mod:`spa_opt.inputs`); a fixed
  batch dim ``k`` makes chunks of ``k`` samples (a remainder is dropped);
- the inputs start as pink noise (:func:`spa_opt.noise.noise_calibration`, spectral
  exponent drawn from [1, 3]) with per-channel ``mean`` and ``std``, the statistics of the
  model's (normalised) inputs, then ``steps`` steps of Adam (``lr`` with cosine decay) run
  on each chunk of ``batch`` samples through the graph in torch
  (:mod:`spa_opt.autodiff`, eval mode), minimising:

  - ``method=bn`` (DeepInversion): over every BatchNormalization node whose running
    statistics are constants, ``||mean_b - running_mean||₂ + ||var_b - running_var||₂``
    of its input's per-channel batch statistics (the first node's term ``first-bn``
    times), plus ``ce`` times the cross-entropy of the targets when there are classes;
  - ``method=inversion`` (class-conditional inversion): ``ce`` times the cross-entropy
    of the targets on the ``(N, classes)`` output (the input of a final Softmax when
    there is one);
  - both: the image prior, ``tv`` times the mean squared difference of neighbouring
    pixels (summed over the two image axes) and ``l2`` times the mean square of the
    inputs over ``std²``; and ``input-stats`` times the squared distance of each
    channel's batch mean and std from ``mean`` and ``std`` (over ``std²``);
  - images (rank 4, NCHW or NHWC as for image folders) are rolled by a random shift of
    up to ``jitter`` pixels at every step; with ``resolution = r > 1`` they are
    optimised at ``1/r`` of their size and upsampled bilinearly (a smoothness prior);
    the inputs saturate at [``low``, ``high``] (clipped in the forward pass, no gradient
    beyond: the range of the normalised inputs when known, ``(0 - m) / s`` and
    ``(1 - m) / s`` for images in [0, 1] normalised by ``m`` and ``s``);
  - ``method=auto``: ``bn`` when the graph has such BatchNormalization nodes, else
    ``inversion``;
- the targets are spread evenly over the classes: sample ``i`` gets class ``i mod C``;
- everything is seeded by the run's seed (``--seed``), so a seed reproduces the inputs
  on the same machine and torch thread count (``jobs``).

The report's ``synthesize`` has the method, samples, steps, the final loss terms, the
fraction of samples the model assigns to their target class, and the seconds. Needs the
``autodiff`` extra (PyTorch); without it the pass fails with a one-line error naming it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx_ir as ir

from spa_opt.errors import InputError
from spa_opt.inputs import LAYOUT_AXES, image_layout, model_inputs
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.instruments import progress
from spa_opt.passes._infra.registry import register

if TYPE_CHECKING:
    import torch

    from spa_opt.autodiff.graph import TorchGraph
    from spa_opt.calibration import Calibration

_SOFTMAX = ("Softmax", "LogSoftmax")


@dataclasses.dataclass
class SynthesizeOptions:
    """Options of ``synthesize``."""

    method: Literal["auto", "bn", "inversion"] = option(
        "auto", "bn: match BatchNorm running statistics; inversion: class-conditional "
        "inversion of the outputs; auto: bn when the graph has BatchNormalization nodes")
    samples: int = option(128, "inputs to synthesize")
    steps: int = option(100, "optimisation steps per batch")
    batch: int = option(128, "samples optimised together (BatchNorm statistics are per batch)")
    lr: float = option(0.05, "Adam learning rate on the inputs (cosine decay to 0)")
    ce: float = option(1.0, "weight of the cross-entropy of the target classes")
    first_bn: float = option(1.0, "weight of the first BatchNorm's statistics (bn method)")
    tv: float = option(20.0, "weight of total variation: mean squared neighbour difference")
    l2: float = option(0.01, "weight of the mean square of the inputs (over std^2)")
    input_stats: float = option(
        1.0, "weight of matching each channel's batch mean and std to mean and std")
    jitter: int = option(2, "largest random shift of images per step, in pixels")
    resolution: int = option(1, "optimise images at 1/resolution of their size, upsampled")
    mean: float = option(0.0, "per-channel mean of the (normalised) inputs")
    std: float = option(1.0, "per-channel standard deviation of the (normalised) inputs")
    low: float = option(float("-inf"), "smallest input value (inputs are clipped)")
    high: float = option(float("inf"), "largest input value (inputs are clipped)")
    jobs: int = option(0, "torch threads (0: torch's default)")
    max_seconds: float = option(
        0.0, "give up (an input error) when the first steps say the whole run would take "
        "longer than this (0: no limit); obspa's data-free default sets one and falls back "
        "to noise")


@register
class SynthesizePass(SpaPass):
    """Synthesize calibration inputs from the model alone: BN statistics or inversion (analysis)."""

    name = "synthesize"
    Options = SynthesizeOptions
    preserves_analyses = True

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Optimise inputs; store them as the context's calibration; report."""
        o = self.options
        if min(o.samples, o.batch, o.resolution) < 1 or min(o.steps, o.jitter, o.jobs) < 0 \
                or not o.max_seconds >= 0:
            raise InputError("synthesize: samples, batch and resolution must be >= 1; steps, "
                             "jitter, jobs and max-seconds >= 0")
        if o.lr <= 0 or o.std <= 0 or min(o.ce, o.first_bn, o.tv, o.l2, o.input_stats) < 0 \
                or not o.low < o.high or not math.isfinite(o.mean):
            raise InputError("synthesize: lr and std must be positive, weights >= 0, low < high")
        import spa_opt.autodiff as autodiff

        autodiff.require("synthesize")
        started = time.perf_counter()
        calibration, facts = synthesize(model, context, o)
        facts["seconds"] = time.perf_counter() - started
        context.calibration = calibration
        context.report["synthesize"] = facts
        self.count("samples", calibration.samples)
        self.count("seconds", facts["seconds"])
        for term, value in facts["loss"].items():
            self.count(f"loss[{term}]", value)
        return ir.passes.PassResult(model, False)


def synthesize(model: ir.Model, context: PipelineContext, options: SynthesizeOptions
               ) -> tuple[Calibration, dict[str, Any]]:
    """Synthesized calibration inputs for ``model`` and the report's facts about them.

    Raises:
        InputError: integer inputs, no BatchNormalization for ``method=bn``, no
            ``(N, classes)`` output for ``method=inversion``, too few samples for a fixed
            batch, or an operator the autodiff backend cannot run.
    """
    import torch

    from spa_opt.autodiff.graph import TorchGraph
    from spa_opt.calibration import Calibration
    from spa_opt.noise import noise_calibration

    o = options
    inputs = model_inputs(model)
    if ints := [i.name for i in inputs if i.kind == "int"]:
        raise InputError(f"synthesize: input(s) {', '.join(ints)} take integer ids, and only "
                         "float inputs can be synthesized: give --calib, or use "
                         "obspa<hessian=noise>")
    method = o.method
    if method == "auto":
        method = "bn" if _bn_nodes(model) else "inversion"
    if method == "bn" and not _bn_nodes(model):
        raise InputError("synthesize<method=bn>: the graph has no BatchNormalization node with "
                         "constant running statistics (exporters fold them): use "
                         "method=inversion")
    fixed = {i.declared[0] for i in inputs if i.declared and isinstance(i.declared[0], int)}
    chunk = min(fixed) if fixed else o.batch
    samples = o.samples - o.samples % chunk if fixed else o.samples
    if samples < 1:
        raise InputError(f"synthesize: the model takes batches of exactly {chunk}; ask for at "
                         f"least that many samples")
    seed = context.targets.seed
    start = noise_calibration(model, samples, kind="pink", mean=(o.mean,), std=(o.std,),
                              seed=seed, dims=context.input_dims, exponent=(1.0, 3.0))
    threads = torch.get_num_threads()
    if o.jobs:
        torch.set_num_threads(o.jobs)
    try:
        graph = TorchGraph(model).eval()
        for parameter in graph.parameters():
            parameter.requires_grad_(False)
        logits, classes = _logits(model, graph, start.feeds, chunk if fixed else 2)
        if method == "inversion" and logits is None:
            raise InputError("synthesize<method=inversion> needs a (batch, classes) output: "
                             "use obspa<hessian=noise>")
        objective = _Objective(graph, model, method, o, logits, classes)
        generator = torch.Generator().manual_seed(seed)
        feeds, terms, hit = _optimise(objective, start.feeds, o, chunk, generator, context)
    finally:
        torch.set_num_threads(threads)
    labels = np.arange(samples, dtype=np.int64) % classes if classes else None
    source = f"synthesized:{method} ({samples} samples, {o.steps} steps)"
    facts: dict[str, Any] = {"method": method, "samples": samples, "steps": o.steps,
                             "batch": chunk, "classes": classes, "source": source,
                             "loss": terms, "target_hit": hit}
    return Calibration(feeds, source, labels=labels), facts


def _bn_nodes(model: ir.Model) -> list[ir.Node]:
    """BatchNormalization nodes whose running mean and variance are constants."""
    return [n for n in model.graph if n.op_type == "BatchNormalization" and len(n.inputs) >= 5
            and all(v is not None and v.const_value is not None for v in n.inputs[3:5])
            and n.inputs[0] is not None and n.inputs[0].name]


def _logits(model: ir.Model, graph: TorchGraph, feeds: dict[str, np.ndarray], probe: int
            ) -> tuple[str | None, int]:
    """The first ``(N, classes)`` output (before a final Softmax) and its class count."""
    import torch

    batch = {k: (a[:probe] if a.ndim else a) for k, a in feeds.items()}
    names = []
    for value in model.graph.outputs:
        producer = value.producer()
        if producer is not None and producer.op_type in _SOFTMAX and producer.inputs[0]:
            names.append(producer.inputs[0].name)
        else:
            names.append(value.name)
    with torch.no_grad():
        found = graph.run(batch, capture=names)
    rows = next((a.shape[0] for a in batch.values() if a.ndim), None)
    for name in names:
        tensor = found[name]
        if tensor.is_floating_point() and tensor.ndim == 2 and tensor.shape[0] == rows \
                and tensor.shape[1] > 1:
            return name, int(tensor.shape[1])
    return None, 0


class _Objective:
    """The loss of one chunk of inputs, with its terms."""

    def __init__(self, graph: TorchGraph, model: ir.Model, method: str,
                 options: SynthesizeOptions, logits: str | None, classes: int) -> None:
        self.graph, self.o = graph, options
        self.logits, self.classes = logits, classes
        self.bn: list[tuple[str, torch.Tensor, torch.Tensor]] = []
        if method == "bn":
            for node in _bn_nodes(model):
                mean = graph.initializer(node.inputs[3].name).detach()
                var = graph.initializer(node.inputs[4].name).detach()
                self.bn.append((node.inputs[0].name, mean, var))
        self.capture = [name for name, _, _ in self.bn] + ([logits] if logits else [])

    def __call__(self, feeds: dict[str, torch.Tensor], floats: list[str],
                 targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, float], torch.Tensor]:
        """Total loss, its terms, and the outputs' class scores (or an empty tensor)."""
        import torch

        o = self.o
        found = self.graph.run(feeds, capture=self.capture)
        terms: dict[str, torch.Tensor] = {}
        if self.bn:
            total = torch.zeros(())
            for index, (name, mean, var) in enumerate(self.bn):
                x = found[name]
                axes = [a for a in range(x.ndim) if a != 1]
                batch_var, batch_mean = torch.var_mean(x, dim=axes, unbiased=False)
                term = torch.linalg.vector_norm(batch_mean - mean) + \
                    torch.linalg.vector_norm(batch_var - var)
                total = total + term * (o.first_bn if index == 0 else 1.0)
            terms["bn"] = total
        scores = found[self.logits] if self.logits is not None else torch.zeros(0)
        if self.logits is not None and o.ce:
            terms["ce"] = o.ce * torch.nn.functional.cross_entropy(scores, targets)
        tv = l2 = stats = torch.zeros(())
        for name in floats:
            x = feeds[name]
            tv = tv + _tv(x)
            l2 = l2 + x.pow(2).mean() / o.std ** 2
            stats = stats + _stats(x, o.mean, o.std)
        terms.update(tv=o.tv * tv, l2=o.l2 * l2, input_stats=o.input_stats * stats)
        loss = sum(terms.values(), torch.zeros(()))
        return loss, {k: float(v.detach()) for k, v in terms.items()}, scores.detach()


def _spatial(x: torch.Tensor) -> tuple[int, ...]:
    """The image axes of a rank-4 input (NCHW or NHWC), else none."""
    layout = image_layout(tuple(x.shape))
    return () if layout is None else LAYOUT_AXES[layout][1:]


def _tv(x: torch.Tensor) -> torch.Tensor:
    import torch

    total = torch.zeros(())
    for axis in _spatial(x):
        if x.shape[axis] > 1:
            total = total + torch.diff(x, dim=axis).pow(2).mean()
    return total


def _stats(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Squared distance of per-channel batch mean and std from ``mean`` and ``std``."""
    import torch

    spatial = _spatial(x)
    channel = None if not spatial else 1 if spatial == (2, 3) else 3
    axes = [a for a in range(x.ndim) if a != channel]
    var, avg = torch.var_mean(x, dim=axes, unbiased=False)
    return ((avg - mean).pow(2).mean() + (var.clamp_min(1e-12).sqrt() - std).pow(2).mean()) \
        / std ** 2


def _jitter(x: torch.Tensor, jitter: int, generator: torch.Generator) -> torch.Tensor:
    import torch

    spatial = _spatial(x)
    if not jitter or not spatial:
        return x
    shifts = torch.randint(-jitter, jitter + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=shifts, dims=spatial)


class _Image:
    """One chunk of an input as the optimiser sees it.

    The parameter holds the values, images at 1/resolution of their size (upsampled
    bilinearly); values outside [low, high] saturate (clipped, with no gradient), as
    pixels do at black and white.
    """

    def __init__(self, x: torch.Tensor, resolution: int, low: float, high: float) -> None:
        import torch.nn.functional as F

        self.bounds = (low, high) if math.isfinite(low) or math.isfinite(high) else None

        spatial = _spatial(x)
        self.nhwc = spatial == (1, 2)
        self.size: tuple[int, int] | None = None
        if spatial and resolution > 1:
            nchw = x.permute(0, 3, 1, 2) if self.nhwc else x
            self.size = (nchw.shape[2], nchw.shape[3])
            small = (max(1, self.size[0] // resolution), max(1, self.size[1] // resolution))
            x = F.interpolate(nchw, size=small, mode="area")
            x = x.permute(0, 2, 3, 1) if self.nhwc else x
        self.param = x.detach().clone().requires_grad_(True)

    def value(self) -> torch.Tensor:
        """The input the parameter stands for."""
        import torch.nn.functional as F

        x = self.param
        if self.size is not None:
            nchw = x.permute(0, 3, 1, 2) if self.nhwc else x
            up = F.interpolate(nchw, size=self.size, mode="bilinear", align_corners=False)
            x = up.permute(0, 2, 3, 1) if self.nhwc else up
        return x if self.bounds is None else x.clamp(*self.bounds)


class _Budget:
    """``max_seconds`` against an estimate from the first steps' pace.

    The first step builds the graph's kernels, so the pace is taken over the next
    :data:`PACE_STEPS`; checked once, then never again. A model with a fixed batch of 1
    optimises its samples one at a time: the golden HF MobileViT (32x32 inputs) took
    472 s of 12,800 single-sample steps where a digits model takes 15-35 s.
    """

    PACE_STEPS = 2

    def __init__(self, limit: float, total: int) -> None:
        self.limit, self.total = limit, total
        self.done = 0
        self.since: float | None = None

    def step(self) -> None:
        if not self.limit or self.done > self.PACE_STEPS:
            return
        self.done += 1
        now = time.perf_counter()
        if self.done == 1:
            self.since = now
        elif self.done == 1 + self.PACE_STEPS and self.since is not None:
            pace = (now - self.since) / self.PACE_STEPS
            estimate = pace * self.total
            if estimate > self.limit:
                raise InputError(
                    f"synthesize: {self.total} steps at {pace:.2f} s each would take about "
                    f"{estimate:.0f} s, over max-seconds={self.limit:g}")


def _optimise(objective: _Objective, start: dict[str, np.ndarray], o: SynthesizeOptions,
              chunk: int, generator: torch.Generator, context: PipelineContext
              ) -> tuple[dict[str, np.ndarray], dict[str, float], float | None]:
    """Optimise the float inputs chunk by chunk.

    Returns:
        The inputs, the final loss terms (mean over chunks), and the fraction of samples
        scored highest for their target class (None without classes).
    """
    import torch

    samples = next((a.shape[0] for a in start.values() if a.ndim), 1)
    floats = [k for k, a in start.items() if a.ndim and a.dtype.kind == "f"]
    out = {k: a.copy() for k, a in start.items()}
    chunks = [(s, min(s + chunk, samples)) for s in range(0, samples, chunk)]
    sums: dict[str, float] = {}
    hits = 0
    budget = _Budget(o.max_seconds, o.steps * len(chunks))
    with progress(context.show_progress, o.steps * len(chunks), "synthesize",
                  "step") as advance:
        for begin, end in chunks:
            fixed = {k: torch.from_numpy(np.ascontiguousarray(a[begin:end] if a.ndim else a))
                     for k, a in start.items() if k not in floats}
            images = {k: _Image(torch.from_numpy(start[k][begin:end]).float(), o.resolution,
                                o.low, o.high) for k in floats}
            targets = torch.arange(begin, end) % max(objective.classes, 1)
            adam = torch.optim.Adam([image.param for image in images.values()], lr=o.lr)
            for index in range(o.steps):
                for group in adam.param_groups:
                    group["lr"] = o.lr * 0.5 * (1 + math.cos(math.pi * index / o.steps))
                adam.zero_grad(set_to_none=True)
                feeds = {**fixed, **{k: _jitter(image.value(), o.jitter, generator)
                                     for k, image in images.items()}}
                loss, _, _ = objective(feeds, floats, targets)
                loss.backward()
                adam.step()
                advance(1)
                budget.step()
            with torch.no_grad():
                final = {k: image.value().detach() for k, image in images.items()}
                _, terms, scores = objective({**fixed, **final}, floats, targets)
            if scores.numel():
                hits += int((scores.argmax(dim=1) == targets).sum())
            for term, value in terms.items():
                sums[term] = sums.get(term, 0.0) + value * (end - begin) / samples
            for k, value in final.items():
                out[k][begin:end] = value.numpy().astype(out[k].dtype)
    return out, sums, (hits / samples if objective.classes else None)
