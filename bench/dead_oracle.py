"""The dead-channel oracle (issue 14): zero units by hand, confirm, and ask ``dead`` to find them.

For every golden model (``golden_models/**/*.onnx``) the script runs
``fold-constants,couple,group``, and for each prunable group with at least two free
units it zeroes one or two of them with ``tests.dead_units.kill`` (every weight member
but consumers and statistics: producer rows and biases, BatchNorm scale and shift, a
SwiGLU's gate rows). It then *confirms* in onnxruntime, on random inputs, that every
node where the group's channels leave it (a reader none of whose outputs carries the
group; ``Shape`` and nodes no output depends on aside) reads exact zeros at those
positions and that one of them is a contraction (Conv, ConvTranspose, Gemm, MatMul: a
weighted consumer, or q.k^T contracting the channels). A group whose
channels are averaged on the way (LayerNorm, RMSNorm's mean, Softmax over channels)
is not counted: its zero channels are not removable without changing the model, so
``dead`` must leave them (column *normalized*). The oracle uses neither the zero
lattice nor the coupling's normalizer list, only the group's members and onnxruntime.

Each confirmed case must then come out of
``spa_opt.optimize(killed, "fold-constants,couple,group,dead,prune", verify=2)`` with
the killed units among the report's ``dead`` units of that group, outputs within
1e-5 of the killed model's, and parameters down by at least the zeroed slices. Every
case, confirmed or not, must keep the outputs (``dead`` may find more than the oracle
confirms, never something that is not dead).

Run from the repository root::

    python bench/dead_oracle.py                 # every golden model
    python bench/dead_oracle.py hf/ --groups 3  # filters; at most 3 groups per model
    python bench/dead_oracle.py --markdown      # the table for docs/benchmarks.md

Exit status 1 when a confirmed unit is missed, an output moved, parameters did not
fall, or a run raised.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

    from spa_opt.passes.coupling.groups import Group

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # spa_opt from the tree, and tests.dead_units
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, machine, revision  # noqa: E402

GOLDEN = ROOT / "golden_models"
PIPELINE = "fold-constants,couple,group"
PRUNE = "fold-constants,couple,group,dead,prune"
TOLERANCE = 1e-5
FEEDS = 3
CONTRACTIONS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
SHAPE_ONLY = {"Shape", "Size"}
LOSSLESS_REDUCE = {"ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"}
"""Reductions a zero channel does not change: they only read it, like a contraction."""


@dataclass
class Case:
    """One group of one model: what was zeroed, confirmed and found."""

    group: str
    primary: str
    units: list[int]
    confirmed: bool = False
    normalized: bool = False
    why: str = ""
    """Why the case is not confirmed (the first reader that is not zero, or the norm)."""
    found: bool | None = None
    extra: int = 0
    """Units ``dead`` found beyond the killed ones, over all groups."""
    err: float | None = None
    zeroed: int = 0
    params_drop: int | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        """Missed, moved, kept parameters or crashed: what makes the run exit 1."""
        if self.error or (self.err is not None and self.err > TOLERANCE):
            return True
        if self.confirmed and not self.found:
            return True
        return bool(self.found and (self.params_drop or 0) < self.zeroed)


@dataclass
class ModelResult:
    """Every case of one model."""

    key: str
    candidates: int = 0
    cases: list[Case] = field(default_factory=list)
    sampled: bool = False
    seconds: float = 0.0
    error: str | None = None


def golden_models() -> dict[str, Path]:
    """Golden model files by key (path under ``golden_models/`` without ``.onnx``)."""
    return {str(p.relative_to(GOLDEN).with_suffix("")): p for p in sorted(GOLDEN.rglob("*.onnx"))}


def analyse(path: Path) -> tuple[ir.Model, list[Group]]:
    """``fold-constants,couple,group`` on one model: the folded model and its groups."""
    import spa_opt
    from spa_opt.passes import PipelineContext

    model, _ = spa_opt.optimize(str(path), PIPELINE)
    return model, PipelineContext.of(model).analyses.groups


def candidates(groups: list[Group]) -> list[Group]:
    """Prunable groups with at least two free units: one can die and one stay."""
    return [g for g in groups if g.prunable and int((~g.pinned).sum()) >= 2]


def pick_units(group: Group, rng: np.random.Generator) -> np.ndarray:
    """One unit when two are free, else two: always leave a free unit alive."""
    free = np.flatnonzero(~group.pinned)
    return np.sort(rng.choice(free, size=min(2, free.size - 1), replace=False))


def zeroed_elements(group: Group, units: np.ndarray) -> int:
    """Weight elements ``kill`` sets to zero (each counted once): what prune must remove."""
    from tests.dead_units import KEEP_ROLES

    masks: dict[str, np.ndarray] = {}
    for member in group.weights:
        if set(member.roles) & KEEP_ROLES:
            continue
        shape = tuple(member.value.const_value.shape)
        mask = masks.setdefault(member.name, np.zeros(shape, dtype=bool))
        index = [slice(None)] * len(shape)
        index[member.axis] = member.index_map.take(units)
        mask[tuple(index)] = True
    return int(sum(mask.sum() for mask in masks.values()))


def _axes(node: ir.Node, rank: int, default: list[int]) -> list[int]:
    """A reduction's axes from its attribute or constant input, made non-negative."""
    axes = None
    if "axes" in node.attributes:
        axes = list(node.attributes.get_ints("axes"))
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        const = node.inputs[1].const_value
        if const is None:
            return list(range(rank))  # run-time axes: assume the worst
        axes = const.numpy().reshape(-1).tolist()
    if not axes:
        axes = default
    return [int(a) % rank for a in axes]


def averages_channels(node: ir.Node, axis: int, rank: int) -> bool:
    """Whether ``node`` mixes the channels of ``axis`` so that a zero one still counts.

    A mean, a norm's statistics, a softmax, a max or an arg-max over the channels
    change when a zero channel is removed, so such channels are not removable.
    """
    op, attrs = node.op_type, node.attributes
    if op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
        return axis >= attrs.get_int("axis", -1) % rank
    if op == "GroupNormalization":
        return axis == 1
    if op == "MeanVarianceNormalization":
        return axis in [a % rank for a in attrs.get_ints("axes", [0, 2, 3])]
    if op in ("Softmax", "LogSoftmax", "Hardmax", "LpNormalization", "ArgMax", "ArgMin",
              "TopK", "CumSum"):
        return axis == attrs.get_int("axis", -1) % rank
    if op.startswith("Reduce") and op not in LOSSLESS_REDUCE:
        if attrs.get_int("noop_with_empty_axes", 0) and not _axes(node, rank, [-1]):
            return False
        return axis in _axes(node, rank, list(range(rank)))
    return False


def _live(model: ir.Model) -> set[int]:
    """Nodes some graph output depends on: a node outside it reads nothing that matters.

    fold-constants can leave such nodes (an Identity whose output nothing reads);
    prune's dce removes them, so whatever they read may go.
    """
    live: set[int] = set()
    stack = [v.producer() for v in model.graph.outputs]
    while stack:
        node = stack.pop()
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(v.producer() for v in node.inputs if v is not None)
    return live


def confirm(group: Group, units: np.ndarray, killed: onnx.ModelProto, feeds: list[dict],
            live: set[int]) -> tuple[bool, bool, str]:
    """Whether the killed units read as exact zeros wherever the group's channels leave it.

    Returns:
        ``(confirmed, normalized, why)``: confirmed when every exit reader (a node none
        of whose outputs is a member of the group; shape queries and nodes no output
        depends on aside) reads exact zeros at the units' positions on every feed, one
        of them is a contraction (Conv, ConvTranspose, Gemm, MatMul: the weighted
        consumer), and no reader averages over the channels (then ``normalized``).
    """
    from tests.dead_units import expose, run

    activations = [m for m in group.members if m.kind != "weight"]
    names = {m.name for m in activations}
    outputs = run(expose(killed, sorted(names)), feeds)
    weighted = False
    for member in activations:
        positions = member.index_map.take(units)
        for node in member.value.consumers():
            if node.op_type in SHAPE_ONLY or id(node) not in live:
                continue
            rank = outputs[0][member.name].ndim
            if averages_channels(node, member.axis, rank):
                return False, True, f"`{node.name}` ({node.op_type}) averages the channels"
            if any(out.name in names for out in node.outputs):
                continue  # carries the group on: not where the channels leave it
            for values in outputs:
                if np.any(np.take(values[member.name], positions, axis=member.axis) != 0):
                    return False, False, f"`{member.name}` is not zero at `{node.name}`"
            weighted |= node.op_type in CONTRACTIONS
    return weighted, False, "" if weighted else "no contraction reads the channels"


def check_group(model: ir.Model, group: Group, feeds: list[dict], rng: np.random.Generator,
                confirm_only: bool = False, live: set[int] | None = None) -> Case:
    """Kill units of one group, confirm them, and run the dead pipeline on the result.

    Args:
        model: The folded model the groups were built on.
        group: A candidate group.
        feeds: Random inputs for the confirmation.
        rng: Chooses the units.
        confirm_only: Stop after the confirmation when it fails (to find one confirmed
            group quickly); the pipeline still runs on confirmed cases.
        live: :func:`_live` of ``model`` (computed when not given).
    """
    import spa_opt
    from tests.dead_units import kill

    units = pick_units(group, rng)
    case = Case(group.id, f"{group.primary.name}:{group.primary.axis}", units.tolist())
    killed = kill(model, group, units)
    case.zeroed = zeroed_elements(group, units)
    try:
        case.confirmed, case.normalized, case.why = confirm(
            group, units, killed, feeds, _live(model) if live is None else live)
    except Exception as error:  # a model that no longer runs is a finding, not a crash
        case.error = f"confirmation: {type(error).__name__}: {error}".splitlines()[0]
        return case
    if confirm_only and not case.confirmed:
        return case
    try:
        _, report = spa_opt.optimize(killed, PRUNE, verify=2)
    except Exception as error:  # one failing group must not hide the others
        case.error = f"{type(error).__name__}: {error}".splitlines()[0]
        return case
    data = report.to_dict()
    # Group ids are stable across runs; the primary guards against a renumbering
    # (several groups may share one, e.g. the two halves of a split conv output).
    primaries = {g["id"]: g["primary"] for g in data["groups"] or ()}
    same = [gid for gid, primary in primaries.items() if primary == case.primary]
    gid = group.id if primaries.get(group.id) == case.primary or len(same) != 1 else same[0]
    dead = {d["group"]: set(d["units"]) for d in (data.get("dead") or {}).get("groups", ())}
    case.found = set(case.units) <= dead.get(gid, set())
    case.extra = sum(len(u) for u in dead.values()) - len(set(case.units) & dead.get(gid, set()))
    case.err = data["verify"]["max_abs_err"] if data["verify"] else None
    case.params_drop = data["params"]["before"] - data["params"]["after"]
    return case


def check_model(key: str, path: Path, limit: int | None = None, budget: float = 60.0,
                seed: int = 0, first_confirmed: bool = False) -> ModelResult:
    """Every case of one model (or a sample of them when they would exceed ``budget``).

    Args:
        key: The model's name in the table.
        path: The model file.
        limit: At most this many groups (evenly spread over the model).
        budget: Seconds per model; past it the remaining groups are sampled evenly.
        seed: Seed of the units and the random inputs.
        first_confirmed: Stop at the first confirmed group (the quick test).
    """
    from spa_opt.verify import random_inputs

    result = ModelResult(key)
    start = time.perf_counter()
    try:
        model, groups = analyse(path)
    except Exception as error:
        result.error = f"{type(error).__name__}: {error}".splitlines()[0]
        return result
    todo = candidates(groups)
    result.candidates = len(todo)
    if limit is not None and len(todo) > limit:
        todo = [todo[i] for i in np.linspace(0, len(todo) - 1, limit).round().astype(int)]
        result.sampled = True
    feeds = random_inputs(model, FEEDS, seed=seed + 1)
    rng = np.random.default_rng(seed)
    live = _live(model)
    index = 0
    while index < len(todo):
        case = check_group(model, todo[index], feeds, rng, first_confirmed, live)
        result.cases.append(case)
        index += 1
        if first_confirmed and case.confirmed:
            break
        spent = time.perf_counter() - start
        left = len(todo) - index
        if not first_confirmed and left and spent / index * len(todo) > budget:
            keep = max(1, int((budget - spent) / (spent / index)))
            if keep < left:  # sample the rest evenly rather than stopping
                rest = todo[index:]
                todo = todo[:index] + [rest[i] for i in np.linspace(
                    0, len(rest) - 1, keep).round().astype(int)]
                result.sampled = True
    result.seconds = time.perf_counter() - start
    return result


def _err(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def table(results: list[ModelResult], markdown: bool) -> str:
    """One row per model and a total row."""
    header = ("model", "candidates", "checked", "confirmed", "found", "normalized",
              "not confirmed", "extra dead", "max abs err", "failures", "seconds")
    lines: list[tuple[str, ...]] = [header]
    totals = np.zeros(8, dtype=int)
    worst = 0.0
    for r in results:
        cases = r.cases
        errs = [c.err for c in cases if c.err is not None]
        failed = [c for c in cases if c.failed]
        counts = [r.candidates, len(cases), sum(c.confirmed for c in cases),
                  sum(bool(c.confirmed and c.found) for c in cases),
                  sum(c.normalized for c in cases),
                  sum(not c.confirmed and not c.normalized for c in cases),
                  sum(c.extra for c in cases), len(failed) + bool(r.error)]
        totals += counts
        worst = max([worst, *errs])
        checked = f"{len(cases)}{' (sampled)' if r.sampled else ''}"
        lines.append((r.key, str(r.candidates), checked, *map(str, counts[2:7]),
                      _err(max(errs, default=None)), str(counts[7]), f"{r.seconds:.1f}"))
    lines.append((f"total ({len(results)} models)", *map(str, totals[:7]), _err(worst),
                  str(totals[7]), f"{sum(r.seconds for r in results):.0f}"))
    if not markdown:
        return format_table(lines, {0})
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines[1:]]
    return "\n".join(out)


def failures(results: list[ModelResult]) -> list[str]:
    """One line per failing case: model, group, primary, what went wrong."""
    lines = []
    for r in results:
        if r.error:
            lines.append(f"{r.key}: analysis failed: {r.error}")
        for c in r.cases:
            if not c.failed:
                continue
            what = c.error or ("MISSED" if c.confirmed and not c.found else
                               f"output moved by {_err(c.err)}" if (c.err or 0) > TOLERANCE
                               else f"params fell by {c.params_drop} < zeroed {c.zeroed}")
            lines.append(f"{r.key} {c.group} ({c.primary}) units {c.units}: {what}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse the options, check every matching model, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="only models whose key contains one")
    parser.add_argument("--groups", type=int, default=None, help="at most N groups per model")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds per model before its groups are sampled (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="the table in markdown")
    parser.add_argument("--verbose", action="store_true", help="why each case is unconfirmed")
    args = parser.parse_args(argv)
    shown = ["python", "bench/dead_oracle.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    print(f"{machine()}; {revision(ROOT, 'spa_opt', 'bench', 'tests')}")
    wanted = [f.lower() for f in args.filters]
    models = {k: p for k, p in golden_models().items()
              if not wanted or any(f in k.lower() for f in wanted)}
    results = []
    for key, path in models.items():
        print(f"  {key}", file=sys.stderr, flush=True)
        result = check_model(key, path, args.groups, args.budget, args.seed)
        results.append(result)
        if args.verbose:
            for c in result.cases:
                state = "confirmed" if c.confirmed else c.why
                print(f"    {c.group} {c.primary} {c.units}: {state}; found {c.found}, "
                      f"err {_err(c.err)}, params -{c.params_drop} (zeroed {c.zeroed})",
                      file=sys.stderr)
    print()
    print(table(results, args.markdown))
    bad = failures(results)
    print()
    print("\n".join(bad) if bad else "no failures: every confirmed unit found, outputs kept")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
