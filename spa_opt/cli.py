"""``spa-opt``: run a pass pipeline on an ONNX file, in the manner of LLVM's ``opt``.

Exit codes: 0 success; 2 bad input (one line on stderr, no traceback, nothing
written); 1 internal error (a bug: one line, the traceback with ``--debug``).

Nothing heavy is imported at module level: ``--version`` and ``--help`` import only the
standard library, and a run imports onnx_ir, onnxruntime and the passes its pipeline
names once the arguments are parsed (``bench/startup.py`` measures it; the module sets
are checked by ``tests/test_startup.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import stat
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from spa_opt.cli_support import Content, Parser, check_distinct, check_side_file, stage
from spa_opt.errors import InputError, OptionError, SpaOptError, did_you_mean

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT = 0, 1, 2


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got '{text}'") from None


def _dim(text: str) -> tuple[str, int]:
    name, _, size = text.partition("=")
    try:
        value = int(size)
    except ValueError:
        value = 0
    if not name or value < 1:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE with SIZE >= 1, got '{text}'")
    return name, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def _round_to(text: str) -> int | str:
    return "auto" if text.strip().lower() == "auto" else _positive_int(text)


def _latency_fraction(text: str) -> float:
    value = _fraction(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be above 0: no model runs in no time, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = Parser(
        prog="spa-opt",
        allow_abbrev=False,
        description="Structured pruning as compiler passes over ONNX graphs.",
        epilog="Example: spa-opt -p fold-constants,dce --verify 4 in.onnx out.onnx",
    )
    parser.add_argument("input", nargs="?", help="input .onnx model (never modified)")
    parser.add_argument("output", nargs="?", help="output .onnx model (written atomically)")
    parser.add_argument("-p", "--passes", metavar="PIPELINE",
                        help="pipeline text: name,name<key=value;key=value>,...")
    info = parser.add_argument_group("information")
    info.add_argument("--list-passes", action="store_true",
                      help="list every pass with its options and exit")
    info.add_argument("--print-pipeline", action="store_true",
                      help="print the canonical pipeline (all defaults filled in) and exit")
    info.add_argument("--version", action="store_true", help="print the version and exit")
    targets = parser.add_argument_group("pruning targets (read by the selection passes)")
    targets.add_argument("--ratio", type=_fraction, help="fraction of prunable channels to remove")
    targets.add_argument("--target-flops", type=_fraction, metavar="F",
                         help="fraction of the original FLOPs to keep")
    targets.add_argument("--target-params", type=_fraction, metavar="P",
                         help="fraction of the original parameters to keep")
    targets.add_argument("--scope", choices=("local", "global"), default="local",
                         help="rank channels within each group or across all (default: local)")
    targets.add_argument("--target-latency", type=_latency_fraction, metavar="F",
                         help="fraction of the latency measured on the target runtime "
                              "(--ep, --threads) to keep; the pruned model is timed the "
                              "same way and the report gives predicted vs measured")
    targets.add_argument("--round-to", type=_round_to, default=1, metavar="N|auto",
                         help="keep channel counts multiples of N (default: 1); auto: per "
                              "group, the step the measured latency model finds fast")
    targets.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                         help="node names never pruned (repeatable; must match a node)")
    targets.add_argument("--seed", type=int, default=0, help="seed of random choices")
    targets.add_argument("--io", choices=("keep", "rewrite"), default="keep",
                         help="keep the graph's input/output shapes (default), or rewrite "
                              "key/value-cache inputs and outputs (past*, present*) so "
                              "attention heads can go; the report lists each change")
    plans = parser.add_argument_group("pruning plans (docs/pruning.md, 'Plans')")
    plans.add_argument("--save-plan", metavar="PLAN.json",
                       help="write what prune removed, keyed by weight names and unit "
                            "indices with a value signature, to replay on another export")
    plans.add_argument("--plan", metavar="PLAN.json",
                       help="apply a saved plan instead of targets: each planned group "
                            "matched by weight name, else by structure and values (fp16, "
                            "bf16, QDQ, the other exporter); a group that matches nothing "
                            "is exit 2")
    runtime = parser.add_argument_group(
        "latency measurement (read by --target-latency and --round-to auto)")
    runtime.add_argument("--ep", default="CPUExecutionProvider", metavar="PROVIDER",
                         help="onnxruntime execution provider to time on "
                              "(default: CPUExecutionProvider)")
    runtime.add_argument("--threads", type=_positive_int, metavar="N",
                         help="intra-op threads to time with (default: one per core)")
    runtime.add_argument("--latency-cache", default="", metavar="DIR|none",
                         help="folder of measured latency tables (default: "
                              "~/.cache/spa-opt/latency); none: measure every run")
    calib = parser.add_argument_group("calibration inputs (read by obspa)")
    calib.add_argument("--calib", metavar="FILE.npz|DIR",
                       help="unlabeled calibration inputs: an .npz/.npy of input arrays keyed "
                            "by input name, or a folder of images")
    calib.add_argument("--save-calib", metavar="FILE.npz",
                       help="save the calibration inputs the pipeline used or made (--calib, "
                            "synthesize, obspa's synthesized default) to FILE.npz")
    calib.add_argument("--executor", default="threads", metavar="threads|ray|ray://HOST:PORT",
                       help="where obspa's per-layer work and Hessian shards run: this "
                            "machine's threads (default), a local Ray cluster or RAY_ADDRESS's "
                            "(ray), or an existing cluster (ray://HOST:PORT); needs the "
                            "distributed extra")
    calib.add_argument("--calib-limit", type=_positive_int, metavar="N",
                       help="use at most the first N calibration inputs")
    calib.add_argument("--calib-mean", type=_floats, metavar="M[,M...]",
                       help="per-channel mean subtracted from images scaled to [0, 1]")
    calib.add_argument("--calib-std", type=_floats, metavar="S[,S...]",
                       help="per-channel std images are divided by, after the mean")
    calib.add_argument("--input-dim", type=_dim, action="append", default=[],
                       metavar="NAME=SIZE",
                       help="size of a symbolic input dim (by name or INPUT:AXIS) for "
                            "calibration, generated and --verify inputs (repeatable)")
    debug = parser.add_argument_group("instrumentation")
    debug.add_argument("--time-passes", action="store_true", help="print seconds per pass")
    debug.add_argument("--stats", action="store_true", help="print per-pass counters")
    debug.add_argument("--verify-each", action="store_true",
                       help="check the model after every pass that changed it")
    debug.add_argument("--print-ir-after", action="append", default=[], metavar="PASS|all",
                       help="print the model as text after PASS (repeatable) or every pass")
    debug.add_argument("--verify", type=_positive_int, metavar="N",
                       help="compare outputs before/after in onnxruntime on N random inputs "
                            "(symbolic dims from --input-dim, else 1)")
    debug.add_argument("--print-groups", action="store_true",
                       help="print the channel groups as a table (needs the group pass)")
    debug.add_argument("--report", metavar="FILE.json", help="write the run report as JSON")
    debug.add_argument("--report-html", metavar="FILE.html",
                       help="write the run report as one self-contained HTML page (also: "
                            "spa-opt report FILE.json -o FILE.html)")
    debug.add_argument("--external-data", action="store_true",
                       help="save weights to OUTPUT.data (automatic past 2 GB)")
    debug.add_argument("--no-progress", action="store_true", help="never draw progress bars")
    debug.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def list_passes() -> str:
    """The text of ``--list-passes``."""
    from spa_opt.passes import all_passes

    lines = []
    for name, pass_cls in all_passes().items():
        lines.append(f"{name}: {pass_cls.summary()}")
        for key, info in pass_cls.option_infos().items():
            default = info.format(info.default)
            lines.append(f"    {key}: {info.type_name} = {default}  -- {info.doc}")
    return "\n".join(lines)


def _instruments(args: argparse.Namespace) -> list[Any]:
    from spa_opt.passes._infra.instruments import (
        PrintIRAfterInstrument,
        ProgressInstrument,
        StatsInstrument,
        TimingInstrument,
        VerifyEachInstrument,
    )
    from spa_opt.passes._infra.registry import pass_names

    known = pass_names()  # names only: importing every pass would cost scipy, onnxscript
    for name in args.print_ir_after:
        if name != "all" and name not in known:
            raise InputError(f"--print-ir-after: unknown pass '{name}'"
                             f"{did_you_mean(name, known)}")
    instruments: list[Any] = [ProgressInstrument(False if args.no_progress else None)]
    if args.verify_each:
        instruments.append(VerifyEachInstrument())
    if args.print_ir_after:
        instruments.append(PrintIRAfterInstrument(args.print_ir_after))
    if args.time_passes:
        instruments.append(TimingInstrument())
    if args.stats:
        instruments.append(StatsInstrument())
    return instruments


def _check_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if not args.input or not args.output:
        raise InputError("give an input and an output model: spa-opt -p PIPELINE IN.onnx OUT.onnx")
    source, destination = Path(args.input), Path(args.output)
    if source.is_dir():
        raise InputError(f"cannot read '{source}': it is a folder, not a model file")
    if not source.is_file():
        raise InputError(f"cannot read '{source}': no such file")
    if destination.exists() and destination.resolve() == source.resolve():
        raise InputError(f"refused to write '{destination}': it is the input model")
    if not destination.parent.resolve().is_dir():
        raise InputError(f"cannot write '{destination}': no folder '{destination.parent}'")
    if not os.access(destination.parent.resolve(), os.W_OK | os.X_OK):
        raise InputError(f"cannot write '{destination}': the folder '{destination.parent}' "
                         "is not writable")
    models = {source.resolve(), destination.resolve(),
              destination.resolve().with_name(destination.name + ".data")}
    outputs = _side_outputs(args)
    for flag, path in outputs.items():
        check_side_file(path, models, _SIDE_KIND[flag])
    check_distinct(outputs, {flag: path for flag, path in (("--calib", args.calib),
                                                           ("--plan", args.plan)) if path})
    return source, destination


#: What each side file is, for the one-line errors.
_SIDE_KIND = {"--report": "report", "--report-html": "report", "--save-plan": "plan",
              "--save-calib": "calibration file"}


def _side_outputs(args: argparse.Namespace) -> dict[str, str]:
    """The side files this run writes beside the model, by flag."""
    return {flag: path for flag, path in (
        ("--report", args.report), ("--report-html", args.report_html),
        ("--save-plan", args.save_plan), ("--save-calib", args.save_calib)) if path}


def _save_outputs(model: Any, destination: Path, side_files: dict[str, tuple[str, Content]],
                  external_data: bool | None, source: Path) -> None:
    """Save the model and its side files together: either all land or none does.

    ``side_files`` maps each path (report, page, plan, calibration) to what it is and
    its content; they are staged beside their destinations first, so a full disk or a
    refused folder leaves nothing behind.
    """
    from spa_opt.ir.io import save_model

    staged: dict[str, Path] = {}
    try:
        for path, (what, content) in side_files.items():
            staged[path] = stage(Path(path), content, what)
        save_model(model, destination, external_data=external_data, protected=[source])
        placed: list[str] = []
        for path, staging in staged.items():
            try:
                # mkstemp makes the file 0600; the report is as readable as the model
                os.chmod(staging, stat.S_IMODE(destination.stat().st_mode))
                os.replace(staging, path)
                placed.append(path)
            except OSError as error:
                destination.unlink(missing_ok=True)
                for done in placed:
                    Path(done).unlink(missing_ok=True)
                raise InputError(f"cannot write {side_files[path][0]} '{path}': "
                                 f"{error.strerror or error}") from None
    finally:
        for staging in staged.values():
            staging.unlink(missing_ok=True)


def _side_files(args: argparse.Namespace, model: Any, report: dict[str, Any], source: Path
                ) -> dict[str, tuple[str, Content]]:
    """What each side file will hold, by path, made before anything is written.

    ``--report`` (JSON), ``--report-html`` (the page), ``--save-plan`` (the plan's JSON)
    and ``--save-calib`` (the calibration, written when staged): a failure to make any
    of them (no plan, no calibration) is found while nothing is on disk yet.
    """
    files: dict[str, tuple[str, Content]] = {}
    if args.report:
        files[args.report] = ("report", json.dumps(report, indent=2, allow_nan=False) + "\n")
    if args.report_html:
        from spa_opt.report_html import render_html

        files[args.report_html] = ("report", render_html(report, title=source.name))
    if args.save_plan or args.save_calib:
        from spa_opt.passes._infra.context import PipelineContext

        context = PipelineContext.of(model)
    if args.save_plan:
        from spa_opt.passes.pruning.replay import plan_text

        if context.plan_document is None:  # prune ran (checked up front) but made no plan
            raise InputError("--save-plan: prune made no plan")
        files[args.save_plan] = ("plan", plan_text(context.plan_document))
    if args.save_calib:
        from spa_opt.calibration import write_calibration

        calibration = context.calibration
        if calibration is None:
            raise InputError("--save-calib: the pipeline made no calibration inputs (obspa "
                             "used noise); add synthesize or give --calib")
        files[args.save_calib] = ("calibration file",
                                  lambda stream: write_calibration(calibration, stream))
    return files


def prune_summary(report: dict[str, Any]) -> str:
    """One or two lines on what ``prune`` did, for stderr; empty when it did not run."""
    prune = report.get("prune")
    if not prune:
        return ""
    channels, groups = report.get("channels") or {}, prune["groups"]
    params, flops = report["params"], report["flops"]

    def kept(pair: dict[str, int]) -> str:
        return f"{pair['after'] / pair['before']:.1%}" if pair["before"] else "n/a"

    lines = [f"prune: removed {channels.get('removed', 0)} of {channels.get('total', 0)} "
             f"prunable channels in {len(groups)} groups; params kept {kept(params)}, "
             f"FLOPs kept {kept(flops)}; {len(prune['skipped'])} groups skipped"]
    target = prune.get("target")
    if target and not target.get("reached"):
        lines.append(f"prune: target not reached: {target.get('why_not')}")
    if target and (latency := target.get("latency_model")) and "measured_after" in latency:
        goal = target.get("latency")
        wanted = f", target {goal['keep']:.1%}" if goal else ""
        verdict = ""
        if goal:
            verdict = ("; met" if goal["measured_reached"] else
                       f"; NOT met within {goal['tolerance']:.0%}")
        lines.append(
            f"prune: latency {latency['measured_before'] * 1e3:.3g} ms -> "
            f"{latency['measured_after'] * 1e3:.3g} ms measured, kept "
            f"{latency['measured_kept']:.1%} (predicted "
            f"{latency['predicted_kept']:.1%}{wanted}){verdict}")
    if prune.get("message"):
        lines.append(f"prune: {prune['message']}")
    return "\n".join(lines)


def _check_plans(args: argparse.Namespace, pass_names: set[str]) -> dict | None:
    """Refuse plan options that cannot work, before the model is loaded; load ``--plan``."""
    if (args.save_plan or args.plan) and "prune" not in pass_names:
        flag = "--save-plan" if args.save_plan else "--plan"
        raise InputError(f"{flag} needs the prune pass in the pipeline (-p couple,group,prune)")
    if args.save_plan and not args.save_plan.lower().endswith(".json"):
        raise InputError(f"--save-plan: '{args.save_plan}' must end in .json")
    if not args.plan:
        return None
    given = [flag for flag, value in (("--ratio", args.ratio), ("--target-flops",
                                      args.target_flops), ("--target-params",
                                      args.target_params), ("--target-latency",
                                      args.target_latency)) if value is not None]
    if given:
        raise InputError(f"--plan applies a saved selection; it takes no {given[0]}")
    selecting = pass_names & {"obspa", "precrop", "synflow"}
    if selecting:
        raise InputError(f"--plan: {sorted(selecting)[0]} chooses its own selection; replay "
                         "a plan with -p couple,group,prune")
    from spa_opt.passes.pruning.replay import load_plan

    return load_plan(args.plan)


def _check_save_calib(args: argparse.Namespace, pass_names: set[str]) -> None:
    """Refuse ``--save-calib`` up front when nothing could make calibration inputs."""
    if not args.save_calib:
        return
    if not args.save_calib.lower().endswith(".npz"):
        raise InputError(f"--save-calib: '{args.save_calib}' must end in .npz")
    if args.calib is None and not pass_names & {"synthesize", "obspa"}:
        raise InputError("--save-calib needs calibration inputs: give --calib or put "
                         "synthesize (or obspa's data-free default) in the pipeline")


def _calibration_spec(args: argparse.Namespace) -> Any:
    from spa_opt.calibration import CalibrationSpec

    given = (args.calib_limit, args.calib_mean, args.calib_std)
    if args.calib is None:
        if any(v is not None for v in given):
            raise InputError("--calib-limit, --calib-mean and --calib-std need --calib")
        return None
    return CalibrationSpec(args.calib, args.calib_mean, args.calib_std, args.calib_limit)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit code instead of exiting.

    ``spa-opt report REPORT.json -o FILE.html`` is the one subcommand
    (:mod:`spa_opt.cli_report`); a model file named ``report`` is read as ``./report``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from spa_opt.cli_report import run_report

        return run_report(argv[1:])
    args = build_parser().parse_args(argv)
    if args.version:
        from spa_opt._version import __version__

        print(f"spa-opt {__version__}")
        return EXIT_OK
    if args.list_passes:
        print(list_passes())
        return EXIT_OK
    if not args.passes:
        raise InputError("no pipeline: give passes with -p, e.g. -p fold-constants,dce")

    from spa_opt.api import resolve_pipeline

    passes, canonical = resolve_pipeline(args.passes)
    if args.print_pipeline:
        print(canonical)
        return EXIT_OK
    if args.print_groups and "group" not in {p.name for p in passes}:
        raise InputError("--print-groups needs the group pass in the pipeline (-p couple,group)")
    source, destination = _check_paths(args)
    _check_executor(args.executor)
    latency = _latency_spec(args)
    _check_save_calib(args, {p.name for p in passes})
    replay_plan = _check_plans(args, {p.name for p in passes})
    instruments = _instruments(args)

    import onnxruntime

    # Sessions made before ours (the environment's telemetry, provider notes) log to
    # onnxruntime's default logger; spa-opt's own sessions log nothing below fatal.
    onnxruntime.set_default_logger_severity(1 if args.debug else 4)
    from spa_opt.api import optimize

    model, report = optimize(
        source, passes, ratio=args.ratio, target_flops=args.target_flops,
        target_params=args.target_params, scope=args.scope, round_to=args.round_to,
        ignore=args.ignore, seed=args.seed, verify=args.verify or 0,
        instruments=instruments, show_progress=not args.no_progress and sys.stderr.isatty(),
        calibration=_calibration_spec(args), input_dims=dict(args.input_dim), io=args.io,
        scratch_dir=destination.parent, executor=args.executor,
        target_latency=args.target_latency, latency=latency, plan=replay_plan,
        record_plan=bool(args.save_plan),
    )
    _save_outputs(model, destination, _side_files(args, model, report.to_dict(), source),
                  True if args.external_data else None, source)
    if args.print_groups:
        from spa_opt.report import format_groups

        data = report.to_dict()
        print(format_groups(data.get("groups") or [], data.get("coupling")))
    summary = prune_summary(report.to_dict())
    if summary:
        print(summary, file=sys.stderr)
    from spa_opt.report import format_io_changes

    if changes := format_io_changes(report.to_dict().get("io")):
        print(changes, file=sys.stderr)
    if report.verify is not None:
        print(report.verify.summary(), file=sys.stderr)
    return EXIT_OK


@contextlib.contextmanager
def _library_logs(debug: bool) -> Iterator[None]:
    """Keep the libraries' log records (onnx_ir's shape inference tracebacks) off stderr.

    Without a handler, Python's last-resort handler prints every warning a library
    logs, traceback included; a run prints what spa-opt says and nothing else, unless
    ``--debug`` asks for everything.
    """
    if debug:
        yield
        return
    root, handler = logging.getLogger(), logging.NullHandler()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point: map errors to exit codes and one-line messages."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    with _library_logs(debug):
        return _main(argv, debug)


def _main(argv: Sequence[str] | None, debug: bool) -> int:
    try:
        return run(argv)
    except InputError as error:
        if debug:
            traceback.print_exc()
        message = error.as_flag() if isinstance(error, OptionError) else str(error)
        print(f"spa-opt: error: {message}", file=sys.stderr)
        return EXIT_INPUT
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    except KeyboardInterrupt:
        print("spa-opt: interrupted; nothing written", file=sys.stderr)
        return 130
    except (SpaOptError, Exception) as error:
        if debug:
            traceback.print_exc()
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"spa-opt: internal error: {message} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL


def _latency_spec(args: argparse.Namespace) -> Any:
    """The latency measurement settings, checked before the model is loaded."""
    from spa_opt.latency import LatencySpec

    if args.target_latency is None and args.round_to != "auto":
        given = [flag for flag, value in (("--ep", args.ep != "CPUExecutionProvider"),
                                          ("--threads", args.threads is not None),
                                          ("--latency-cache", bool(args.latency_cache)))
                 if value]
        if given:
            raise InputError(f"{given[0]} sets how latency is measured: it needs "
                             "--target-latency or --round-to auto")
        return None
    import onnxruntime

    if args.ep not in onnxruntime.get_available_providers():
        raise InputError(f"--ep: '{args.ep}' is not available in this onnxruntime (available:"
                         f" {', '.join(onnxruntime.get_available_providers())})")
    return LatencySpec(ep=args.ep, threads=args.threads or 0, cache_dir=args.latency_cache)


def _check_executor(spec: str) -> None:
    """Refuse a misspelt ``--executor`` before the model is loaded."""
    from spa_opt.obs.executor import ExecutorError, check_executor

    try:
        check_executor(spec)
    except ExecutorError as error:
        raise InputError(f"--executor: {error}") from None


if __name__ == "__main__":
    sys.exit(main())

