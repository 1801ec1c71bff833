"""The Python API: one call runs a pipeline and returns the model and its report.

Example::

    import spa_opt

    model, report = spa_opt.optimize("model.onnx", "fold-constants,dce", verify=4)
    spa_opt.save_model(model, "out.onnx")
    print(report.to_dict()["verify"])

The passes themselves are ``onnx_ir`` passes; see :mod:`spa_opt.passes` to compose
them with other onnx_ir passes directly.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import onnx_ir as ir
import onnxruntime as ort

from spa_opt.errors import InputError, OptionError, VerificationError
from spa_opt.ir.check import check_model
from spa_opt.ir.cost import count_cost
from spa_opt.ir.io import ModelSource, load_model, tensor_bytes
from spa_opt.ir.repair import repair_model
from spa_opt.ir.validate import check_input, known_invalidity, unknown_operator
from spa_opt.latency.timer import LatencySpec
from spa_opt.ort import describe_error, quiet_session_options, session_from_model
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.context import PipelineContext, Targets
from spa_opt.passes._infra.manager import Instrument, PassManager
from spa_opt.passes._infra.pipeline import PassSpec, parse_pipeline
from spa_opt.report import Report
from spa_opt.verify import calibration_inputs, compare, random_inputs, run_all

Pipeline = str | Sequence[SpaPass | PassSpec]


def resolve_pipeline(pipeline: Pipeline) -> tuple[list[SpaPass], str]:
    """Passes to run and their canonical text, from text, specs or pass instances."""
    items = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
    if not items:
        raise InputError("the pipeline is empty")
    passes = [item.build() if isinstance(item, PassSpec) else item for item in items]
    return passes, ",".join(p.pipeline_text() for p in passes)


def check_ignore_patterns(model: ir.Model, patterns: Sequence[str]) -> None:
    """Refuse ``--ignore`` globs that match no node: a typo would silently prune a layer."""
    names = [node.name or "" for node in model.graph.all_nodes()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise OptionError("ignore", f"'{pattern}' matches no node name")


#: Past this many bytes of weights the input is not loaded in onnxruntime just to
#: validate it (it would cost a copy of the weights); ``verify`` still loads it.
VALIDATE_SESSION_BYTES = 1 << 30


def _input_session(source: ModelSource, model: ir.Model,
                   verify: int) -> ort.InferenceSession | None:
    """An onnxruntime session of the input, made before any pass: what it refuses is bad input.

    None when it was not needed (no ``verify`` and over :data:`VALIDATE_SESSION_BYTES`)
    or when onnxruntime only lacks an operator (the analysis pins it; ``verify`` then
    cannot run and says so).
    """
    if verify <= 0 and tensor_bytes(model) > VALIDATE_SESSION_BYTES:
        return None
    try:
        if isinstance(source, (str, os.PathLike)):
            return ort.InferenceSession(str(source), quiet_session_options(),
                                        providers=["CPUExecutionProvider"])
        return session_from_model(model, quiet_session_options())
    except Exception as error:  # onnxruntime raises its own untyped failures
        message = describe_error(error)
        if verify <= 0 and unknown_operator(message):
            return None
        raise InputError(f"the input model does not run in onnxruntime: {message}") from None


def _reference_run(session: ort.InferenceSession, feeds: list[dict]) -> list[dict]:
    """The input's outputs on ``feeds``; a failure there is the input's, so bad input."""
    try:
        return run_all(session, feeds)
    except Exception as error:  # onnxruntime raises its own untyped failures
        raise InputError(f"the input model does not run in onnxruntime: "
                         f"{describe_error(error)}") from None


def optimize(
    model: ModelSource,
    pipeline: Pipeline,
    *,
    ratio: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    scope: Literal["local", "global"] = "local",
    round_to: int | Literal["auto"] = 1,
    ignore: Sequence[str] = (),
    seed: int = 0,
    verify: int = 0,
    instruments: Sequence[Instrument] = (),
    show_progress: bool = False,
    base_dir: str | os.PathLike | None = None,
    calibration: Any = None,
    input_dims: Mapping[str, int] | None = None,
    io: Literal["keep", "rewrite"] = "keep",
    scratch_dir: str | os.PathLike | None = None,
    executor: str = "threads",
    target_latency: float | None = None,
    latency: LatencySpec | None = None,
    plan: Mapping[str, Any] | str | os.PathLike | None = None,
    record_plan: bool = False,
) -> tuple[ir.Model, Report]:
    """Run ``pipeline`` on ``model``.

    Args:
        model: A path, bytes, ``onnx.ModelProto`` or ``onnx_ir.Model``. Files are
            never modified; an ``onnx_ir.Model`` is transformed in place and returned.
        pipeline: Pipeline text (``"fold-constants,dce"``), or pass instances / specs.
        ratio: Fraction of prunable channels to remove.
        target_flops: Fraction of the original FLOPs to keep.
        target_params: Fraction of the original parameters to keep.
        scope: Rank channels per group (``local``) or across groups (``global``).
        round_to: Keep channel counts multiples of this; ``"auto"``: per group, the
            step the measured latency model finds fast (see :mod:`spa_opt.latency`).
        ignore: Glob patterns of node names never pruned; each must match a node.
        seed: Seed of every random choice.
        verify: Compare outputs before and after on this many inputs: the last
            calibration inputs when there are any (and ``io`` is ``keep``), held back
            from the passes when there are more than ``verify`` of them (else all are
            used, and the report says ``in-sample``), else random ones (symbolic dims
            from ``input_dims``, else 1; see :mod:`spa_opt.verify`).
        instruments: Pass-manager instruments (timing, printing, checking).
        show_progress: Let long passes draw progress bars on stderr.
        base_dir: Folder of external data, for bytes and protos.
        calibration: Calibration inputs for passes that need activations (``obspa``):
            a path (``.npz``, ``.npy`` or a folder of images, see
            :mod:`spa_opt.calibration`), a :class:`~spa_opt.calibration.CalibrationSpec`
            or a :class:`~spa_opt.calibration.Calibration`.
        input_dims: Sizes of symbolic input dims (by name or ``"input:axis"``), kept as
            the context's ``input_dims``: the one place calibration files, noise and
            synthesized inputs, synflow and ``verify``'s random inputs read them from.
        io: ``keep`` the graph's inputs and outputs as they are, or ``rewrite``: let
            key/value-cache inputs and outputs lose heads, with the new shapes written
            and listed in the report's ``io`` entry (see ``PipelineContext.io``).
        scratch_dir: Folder for arrays passes spill to disk (obspa past its memory
            budget; the CLI gives the output's folder); the system's temporary folder
            when None. Spilled files are removed when the pass ends.
        executor: Where obspa's per-layer work and Hessian shards run: ``threads``,
            ``ray`` (a local cluster, or the one in ``RAY_ADDRESS``) or
            ``ray://HOST:PORT`` (the ``distributed`` extra; see docs/distributed.md).
        target_latency: Fraction of the latency measured on the target runtime to keep
            (see docs/latency.md); the pruned model is timed the same way at the end.
        latency: How latency is measured (execution provider, threads, cache folder);
            None: the CPU provider on every core and the default cache.
        plan: A saved pruning plan (a path, or the loaded document) for ``prune`` to
            apply instead of planning from targets (:mod:`spa_opt.passes.pruning.replay`);
            the plan of this run is ``PipelineContext.of(model).plan_document``.
        record_plan: Have ``prune`` record its plan (``--save-plan``) in
            ``PipelineContext.of(model).plan_document``.

    Returns:
        The transformed model and the :class:`~spa_opt.report.Report` of the run.

    Raises:
        InputError: Bad input or options (the CLI exits 2).
        VerificationError: A pass left a model onnxruntime cannot run.
    """
    passes, canonical = resolve_pipeline(pipeline)
    targets = Targets(ratio, target_flops, target_params, scope, round_to, tuple(ignore), seed,
                      target_latency)
    loaded = load_model(model, base_dir=base_dir)
    check_ignore_patterns(loaded, targets.ignore)
    if io not in ("keep", "rewrite"):
        raise InputError(f"io must be 'keep' or 'rewrite', got {io!r}")
    context = PipelineContext(targets=targets, show_progress=show_progress, io=io).attach(loaded)
    context.report["load"] = {"nodes-reordered": 0, "value-info-dropped": 0,
                              **repair_model(loaded)}
    check_input(loaded)
    session = _input_session(model, loaded, verify)
    context.input_dims = dict(input_dims or {})
    context.scratch_dir = str(scratch_dir) if scratch_dir is not None else ""
    context.executor = _checked_executor(executor)
    context.latency = latency
    context.record_plan = record_plan
    if plan is not None:
        from spa_opt.passes.pruning.replay import load_plan

        context.replay_plan = dict(plan) if isinstance(plan, Mapping) else load_plan(plan)
    if calibration is not None:
        from spa_opt.calibration import Calibration, CalibrationSpec, load_calibration

        if isinstance(calibration, CalibrationSpec):
            calibration = calibration.load(loaded, dims=context.input_dims)
        elif not isinstance(calibration, Calibration):
            calibration = load_calibration(calibration, loaded, dims=context.input_dims)
        context.calibration = calibration
    before = count_cost(loaded)

    feeds, reference = [], []
    past_length = 0 if io == "rewrite" else 1  # see spa_opt.verify: feeds per model
    interface = _interface(loaded)
    source = "random"
    if verify > 0:
        if context.calibration is not None and io == "keep":
            from spa_opt.calibration import hold_back

            context.calibration, held = hold_back(context.calibration, verify)
            feeds = calibration_inputs(held or context.calibration, loaded, verify)
            source = "calibration (held back)" if held is not None else \
                "calibration (in-sample)"
        else:
            feeds = random_inputs(loaded, verify, seed, dims=context.input_dims,
                                  past_length=past_length)
        assert session is not None  # made whenever verify > 0, or InputError
        reference = _reference_run(session, feeds)
    del session

    manager = PassManager(passes, instruments)
    manager(loaded)
    _check_result(passes, manager.records, loaded)
    after = count_cost(loaded)
    changed = _interface_changes(interface, loaded)
    if changed or io == "rewrite":
        context.report["io"] = {"policy": io, "changed": changed}

    verified = None
    if verify > 0:
        if changed:
            feeds = random_inputs(loaded, verify, seed, dims=context.input_dims,
                                  past_length=past_length)
            source = "random"
        try:
            result = run_all(session_from_model(loaded, quiet_session_options()), feeds)
        except Exception as error:  # the result must run; anything else is our bug
            raise VerificationError("the result does not run in onnxruntime: "
                                    f"{describe_error(error)}") from error
        verified = compare(reference, result,
                           [c["name"] for c in changed if c["kind"] == "output"], feeds, source)

    report = Report(canonical, _targets_dict(targets), manager.records, before, after,
                    verified, dict(context.report))
    if any(record.modified for record in manager.records):  # analyses leave it as it was
        loaded.metadata_props.update(report.metadata_props())  # the summary Netron shows
    return loaded, report


def _check_result(passes: Sequence[SpaPass], records: Sequence[Any], model: ir.Model) -> None:
    """A result is valid whatever the pipeline: the invariant behind exit code 0.

    The input passed these checks on load (:mod:`spa_opt.ir.validate`), so a result
    that fails them was broken by a pass: a :class:`VerificationError` naming the last
    pass that changed the model. Skipped when that pass was ``prune`` (it checks its
    result) or a ``check`` ran after it.
    """
    changed = [i for i, record in enumerate(records) if record.modified]
    if not changed:
        return
    last = passes[changed[-1]]
    if last.name == "prune" and getattr(last.options, "check", False):
        return
    if any(p.name == "check" for p in passes[changed[-1] + 1:]):
        return
    try:
        check_model(model)
    except VerificationError as error:
        message = known_invalidity(error)
        if message is None:
            return
        raise VerificationError(f"pass '{last.name}' left an invalid model: {message}") from error


def _interface(model: ir.Model) -> dict[tuple[str, str], list]:
    """Declared shapes of the graph's inputs and outputs, by kind and name."""
    shapes = {}
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            dims = None if value.shape is None else [
                d if isinstance(d, int) else str(d) for d in value.shape]
            shapes[(kind, value.name or "")] = dims
    return shapes


def _interface_changes(before: dict[tuple[str, str], list], model: ir.Model) -> list[dict]:
    """Every graph input or output whose declared shape differs from ``before``."""
    after = _interface(model)
    return [{"kind": kind, "name": name, "before": dims, "after": after[(kind, name)]}
            for (kind, name), dims in before.items()
            if (kind, name) in after and after[(kind, name)] != dims]


def _targets_dict(targets: Targets) -> dict:
    import dataclasses

    values = dataclasses.asdict(targets)
    values["ignore"] = list(values["ignore"])
    return values


def make_session(
    model: Any,
    pipeline: str,
    *,
    sess_options: ort.SessionOptions | None = None,
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    **targets: Any,
) -> ort.InferenceSession:
    """Run a spa-opt pipeline in memory and return an onnxruntime session of the result.

    Args:
        model: Anything :func:`spa_opt.optimize` accepts (path, bytes, proto, ir.Model).
        pipeline: Pipeline text, e.g. ``"fold-constants,dce"``.
        sess_options: onnxruntime session options, passed through.
        providers: onnxruntime execution providers, passed through.
        **targets: Pruning targets, as for :func:`spa_opt.optimize`.

    Returns:
        The session; use :func:`optimize` and :func:`~spa_opt.ort.session_from_model`
        directly when you also want the report.
    """
    optimized, _ = optimize(model, pipeline, **targets)
    return session_from_model(optimized, sess_options, providers)


def _checked_executor(spec: str) -> str:
    from spa_opt.obs.executor import ExecutorError, check_executor

    try:
        return check_executor(spec)
    except ExecutorError as error:
        raise InputError(f"--executor: {error}") from None
