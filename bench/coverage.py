"""Coupling coverage of every golden model: how many channels land in a prunable group.

For each model in ``golden_models/**/*.onnx`` and each model-zoo graph the onnx
package ships (``onnx/backend/test/data/light/light_*.onnx``) the script runs
fold-constants, couple and group, then prints one row: groups, prunable groups,
producing channels (output channels of Conv/Gemm/MatMul weights), channels in a
prunable group and their share, the share recorded in ``golden_models/expected/``
for comparison, and the most frequent reason among the model's pinned groups. It
then counts why groups are pinned over all models: pin codes (from ``PinReason``) for
groups that cannot be pruned at all and for partly pinned groups, and the most
common reasons in words, with tensor and node names replaced by ``<name>``.

Run from the repository root::

    python bench/coverage.py               # every golden model
    python bench/coverage.py torch/vit     # models whose key contains a filter
    python bench/coverage.py light keras   # several filters
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import format_table, generalize  # noqa: E402

GOLDEN = ROOT / "golden_models"
EXPECTED = GOLDEN / "expected"
TOP_REASONS = 12
SINGLE_UNIT = "a single unit: removing it would empty the layer"
NO_WEIGHT = "no weight produces or consumes these channels"


def golden_models() -> dict[str, Path]:
    """Every golden model by key, as ``golden_models/scripts/update_expected.py`` lists them."""
    spec = importlib.util.spec_from_file_location(
        "update_expected", GOLDEN / "scripts" / "update_expected.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.golden_models()


@dataclass
class Row:
    """What the analysis found on one model."""

    key: str
    nodes: int = 0
    groups: int = 0
    prunable: int = 0
    partly: int = 0
    channels: int = 0
    free: int = 0
    share: float = 0.0
    expected: float | None = None
    seconds: float = 0.0
    codes: Counter[str] = field(default_factory=Counter)
    partly_codes: Counter[str] = field(default_factory=Counter)
    words: Counter[str] = field(default_factory=Counter)
    error: str | None = None


def analyse(key: str, path: Path) -> Row:
    """Fold constants, couple and group one model; count its pin reasons.

    Args:
        key: The model's key (as in ``golden_models/expected/``).
        path: The model file.

    Returns:
        The model's row; ``error`` is set when a pass raised.
    """
    from spa_opt.ir import load_model
    from spa_opt.passes.couple import couple_model
    from spa_opt.passes.coupling.groups import build_groups
    from spa_opt.passes.fold_constants import FoldConstantsPass
    from spa_opt.passes.group import coverage

    row = Row(key)
    expected = EXPECTED / f"{key}.json"
    if expected.exists():
        row.expected = json.loads(expected.read_text())["coupling"]["coverage"]["share"]
    start = time.perf_counter()
    try:
        model = load_model(path)
        FoldConstantsPass()(model)
        coupling = couple_model(model)
        groups = build_groups(coupling, model.graph)
    except Exception as error:  # one broken model must not hide the others
        row.error = f"{type(error).__name__}: {error}".splitlines()[0]
        return row
    row.seconds = time.perf_counter() - start
    row.nodes = coupling.stats["nodes"]
    row.groups = len(groups)
    row.prunable = sum(group.prunable for group in groups)
    cover = coverage(groups)
    row.channels, row.free, row.share = cover["channels"], cover["prunable"], cover["share"]
    for group in groups:
        if group.prunable:
            if group.pinned.any():
                row.partly += 1
                row.partly_codes.update({reason.code for reason in group.reasons})
            continue
        codes = {reason.code for reason in group.reasons} if group.pinned.all() else set()
        why = group.why_not()
        if SINGLE_UNIT in why:
            codes.add("single-unit")
        if NO_WEIGHT in why:
            codes.add("no-weight")
        row.codes.update(codes)
        row.words.update({generalize(reason, numbers=True) for reason in why})
    return row


def table(rows: list[Row]) -> str:
    """One line per model, then a total line."""
    header = (
        "model",
        "nodes",
        "groups",
        "prunable",
        "partly",
        "channels",
        "in prunable",
        "share",
        "expected",
        "seconds",
        "top pin reasons (pinned groups)",
    )
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        if row.error:
            lines.append((row.key, *("-" * 1 for _ in header[1:-1]), f"FAILED: {row.error}"))
            continue
        expected = "-" if row.expected is None else f"{row.expected:.2%}"
        if row.expected is not None and row.expected != round(row.share, 4):
            expected += " !"
        top = ", ".join(f"{code} x{count}" for code, count in row.codes.most_common(3))
        lines.append(
            (
                row.key,
                str(row.nodes),
                str(row.groups),
                str(row.prunable),
                str(row.partly),
                str(row.channels),
                str(row.free),
                f"{row.share:.2%}",
                expected,
                f"{row.seconds:.2f}",
                top or "-",
            )
        )
    done = [row for row in rows if not row.error]
    channels = sum(row.channels for row in done)
    free = sum(row.free for row in done)
    lines.append(
        (
            f"total ({len(done)} models)",
            str(sum(row.nodes for row in done)),
            str(sum(row.groups for row in done)),
            str(sum(row.prunable for row in done)),
            str(sum(row.partly for row in done)),
            str(channels),
            str(free),
            f"{free / channels:.2%}" if channels else "-",
            "",
            f"{sum(row.seconds for row in done):.2f}",
            "",
        )
    )
    return format_table(lines, {0, len(header) - 1})


def reasons(rows: list[Row]) -> str:
    """Pin reasons counted over all models: codes, then the commonest reasons in words."""
    codes: Counter[str] = Counter()
    partly: Counter[str] = Counter()
    words: Counter[str] = Counter()
    models_with: Counter[str] = Counter()
    for row in rows:
        codes.update(row.codes)
        partly.update(row.partly_codes)
        words.update(row.words)
        models_with.update(row.codes.keys())
    lines: list[tuple[str, ...]] = [("pin code", "pinned groups", "models", "partly pinned groups")]
    for code in sorted(set(codes) | set(partly), key=lambda c: (-codes[c], -partly[c], c)):
        lines.append((code, str(codes[code]), str(models_with[code]), str(partly[code])))
    out = [format_table(lines, {0})]
    out.append("")
    lines = [("pinned groups", "reason (names as <name>, numbers as <n>)")]
    for text, count in words.most_common(TOP_REASONS):
        lines.append((str(count), text))
    out.append(format_table(lines, {1}))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Parse the filters, analyse every matching model, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("filters", nargs="*", help="only models whose key contains one")
    args = parser.parse_args(argv)
    shown = ["python", "bench/coverage.py", *(argv if argv is not None else sys.argv[1:])]
    print(f"Reproduce (from the repo root): {shlex.join(shown)}")
    wanted = [f.lower() for f in args.filters]
    models = {
        key: path
        for key, path in golden_models().items()
        if not wanted or any(f in key.lower() for f in wanted)
    }
    if not models:
        print("no model matched")
        return 1
    rows = []
    for key, path in models.items():
        print(f"  {key}", file=sys.stderr, flush=True)
        rows.append(analyse(key, path))
    print()
    print(table(rows))
    print()
    print(reasons(rows))
    print()
    print(
        "groups: all groups; prunable: groups with a unit that can go; partly: prunable "
        "groups with some units pinned. channels: output channels of producing weights "
        "(Conv/Gemm/MatMul, extent > 1); in prunable: those in a prunable group's free "
        "units; share = in prunable / channels (spa_opt.passes.group.coverage). expected: "
        "the share in golden_models/expected/ ('!' when it differs after rounding to 4 "
        "decimals). Pin codes count "
        "groups that cannot be pruned at all, once per code per group (single-unit and "
        "no-weight are group.why_not() reasons, not pins). seconds: load + fold + couple + "
        "group, one run."
    )
    return 0 if all(not row.error for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
