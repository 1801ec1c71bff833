"""Coupling coverage of every golden model: how many channels land in a prunable group.

For each model in ``golden_models/**/*.onnx`` (the handmade, digits, Keras and torch
models, the Hugging Face exports of both exporters and the Flax CNN in
``golden_models/hf/``) and each model-zoo graph the onnx package ships
(``onnx/backend/test/data/light/light_*.onnx``) the script runs
``spa_opt.optimize(path, "fold-constants,couple,group")``, then prints one row: groups,
prunable groups, producing channels (output channels of Conv/Gemm/MatMul weights),
channels in a prunable group and their share (the report's
``coupling.coverage.share``), the share recorded in ``golden_models/expected/`` for
comparison, whether every attention block's heads are their own prunable group with
block = head size, whether every MLP is its own group, the goal verdict (a share of at
least 90% for models that end in a classifier head), and the most frequent reason
among the model's pinned groups. It
then counts why groups are pinned over all models: pin codes (from ``PinReason``) for
groups that cannot be pruned at all and for partly pinned groups, and the most
common reasons in words, with tensor and node names replaced by ``<name>``.

Run from the repository root::

    python bench/coverage.py               # every golden model
    python bench/coverage.py torch/vit     # models whose key contains a filter
    python bench/coverage.py light keras   # several filters
    python bench/coverage.py hf/ --markdown  # the HF table for docs/benchmarks.md
    python bench/coverage.py deploy/ --io rewrite --markdown  # deployment graphs, KV IO free
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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnx_ir as ir

    from spa_opt.passes.coupling.groups import Group

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
PIPELINE = "fold-constants,couple,group"
GOAL = 0.9
"""Share of produced channels a model ending in a classifier head must have prunable."""


def golden_models() -> dict[str, Path]:
    """Every golden model by key, as ``golden_models/scripts/update_expected.py`` lists them."""
    spec = importlib.util.spec_from_file_location(
        "update_expected", GOLDEN / "scripts" / "update_expected.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.golden_models()


SCORES_PATH = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity"}
"""Ops between an attention's q.k^T MatMul and its Softmax (scale, mask, bias)."""
UNARY = {"Relu", "Gelu", "Erf", "Sigmoid", "Tanh", "Softplus", "HardSigmoid", "HardSwish",
         "Mish", "Elu", "Selu", "LeakyRelu", "Neg", "Identity", "Clip", "Pow", "Sqrt",
         "FastGelu", "QuickGelu", "Cast", "Dropout"}
LAYOUT = {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten"}


def ends_in_classifier(key: str) -> bool:
    """The HF ``*_cls`` exports: the golden models whose goal is a 90% share.

    The Flax CNN ends in a head too, but its 10 logits are 13.5% of its 74 channels,
    so 86.5% is its ceiling; it is left out of the goal and shown beside it.
    """
    name = key.rsplit("/", 1)[-1].split(".", 1)[0]
    return key.startswith("hf/") and name.endswith("_cls")


def _const(value: ir.Value | None) -> bool:
    return value is not None and value.const_value is not None


def _scores_matmul(softmax: ir.Node) -> ir.Node | None:
    """The activation MatMul (q.k^T) behind a Softmax, through scaling and masking."""
    queue, seen = [softmax.inputs[0]], set()
    while queue:
        value = queue.pop()
        node = value.producer() if value is not None else None
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul" and not any(_const(v) for v in node.inputs):
            return node
        if node.op_type in SCORES_PATH:
            queue.extend(v for v in node.inputs if v is not None and not _const(v))
    return None


def _groups_on(groups: list[Group], name: str) -> list[Group]:
    return [g for g in groups if any(m.name == name for m in g.members)]


def _whole_heads(group: Group, scores: str, heads: int, size: int | None) -> int:
    """Heads per unit when each unit of ``group`` is whole heads of one block, else 0.

    The scores tensor carries the heads on its third axis from the end; a unit there
    spans ``block`` heads (1, or the query heads sharing a key/value head under GQA).
    The output projection reading the heads must then take ``block * head size``
    columns per unit (on a fused q/k/v weight the producer's block is three times
    that, so the consumer is the member to look at).
    """
    if not group.prunable:
        return 0
    on_scores = [m for m in group.members if m.name == scores]
    per_unit = on_scores[0].index_map.block if on_scores else 0
    if per_unit < 1 or group.units * per_unit != heads:
        return 0
    readers = [m for m in group.weights if "in" in m.roles and len(m.value.shape or ()) >= 2]
    if not readers or size is None:
        return per_unit if readers else 0
    return per_unit if all(_channels(m) == per_unit * size for m in readers) else 0


def _quant_block(value: ir.Value) -> int:
    """``block_size`` of the MatMulNBits reading ``value`` as its packed weight, else 1."""
    for node, index in value.uses():
        if node.op_type == "MatMulNBits" and index == 1:
            return node.attributes.get_int("block_size", 1)
    return 1


def _channels(member) -> int:
    """Input channels per unit of a reading weight: a MatMulNBits unit is whole blocks."""
    return member.index_map.block * (_quant_block(member.value) if member.axis == 1 else 1)


def attention_heads(model: ir.Model, groups: list[Group]) -> tuple[int, int, int]:
    """``(ok, blocks, gqa)``: attention blocks whose heads are their own prunable group.

    An attention block is a Softmax fed by a MatMul of two activations (q.k^T). It is
    ok when the scores tensor is in a prunable group whose units are whole heads (see
    :func:`_whole_heads`) and no other attention block shares that group; ``gqa``
    counts the ok blocks whose unit is a key/value head with its query heads. Blocks
    with a single head are not counted: their one head cannot go.
    """
    from spa_opt.ir.shapes import temporary_shapes

    found: list[tuple[Group | None, int]] = []
    with temporary_shapes(model):
        for node in model.graph:
            if node.op_type != "Softmax" or (matmul := _scores_matmul(node)) is None:
                continue
            q, scores = matmul.inputs[0].shape, matmul.outputs[0].shape
            heads = scores[-3] if scores is not None and len(scores) >= 3 else None
            if not isinstance(heads, int) or heads == 1:
                continue
            size = q[-1] if q is not None and isinstance(q[-1], int) else None
            name = matmul.outputs[0].name
            ok = [(g, n) for g in _groups_on(groups, name)
                  if (n := _whole_heads(g, name, heads, size))]
            found.append(ok[0] if ok else (None, 0))
    owners = Counter(id(g) for g, _ in found if g is not None)
    good = [n for g, n in found if g is not None and owners[id(g)] == 1]
    return len(good), len(found), sum(n > 1 for n in good)


def _linear(node: ir.Node | None) -> bool:
    return node is not None and node.op_type in ("MatMul", "Gemm", "MatMulNBits") and \
        _const(node.inputs[1])


def _mlp_chain(value: ir.Value, memo: dict[int, set[str] | None]) -> set[str] | None:
    """Weights of the Linear layers (and depthwise convs) ``value`` is computed from.

    Only through activations, bias and scale constants, products of such values (GELU,
    SwiGLU), layout ops and depthwise convs; None when anything else is on the way (a
    norm, a residual from the embedding, an attention MatMul).
    """
    if id(value) in memo:
        return memo[id(value)]
    memo[id(value)] = None  # cycles cannot happen in a DAG; this guards the recursion
    node, chain = value.producer(), None
    if _linear(node):
        chain = {node.inputs[1].name}
    elif node is not None and node.op_type in UNARY | LAYOUT:
        chain = _mlp_chain(node.inputs[0], memo)
    elif node is not None and node.op_type in ("Add", "Sub", "Mul", "Div"):
        parts = [_mlp_chain(v, memo) for v in node.inputs if v is not None and not _const(v)]
        if parts and all(p is not None for p in parts):
            chain = set().union(*parts)
    elif node is not None and node.op_type == "Conv" and node.attributes.get_int("group", 1) > 1:
        inner = _mlp_chain(node.inputs[0], memo)
        chain = None if inner is None else inner | {node.inputs[1].name}
    memo[id(value)] = chain
    return chain


def mlp_groups(model: ir.Model, groups: list[Group]) -> tuple[int, int]:
    """``(ok, mlps)``: MLPs whose hidden channels form their own prunable group.

    An MLP is a Linear (MatMul/Gemm/MatMulNBits with a constant weight) whose input is
    computed from other Linears through activations only (see :func:`_mlp_chain`). It is
    ok when a prunable group of single-channel units (whole quantization blocks for a
    MatMulNBits, which prunes its input in blocks) holds its hidden tensor, and the group's
    matrix weights are exactly the MLP's: nothing from another layer is coupled in.
    """
    memo: dict[int, set[str] | None] = {}
    ok = total = 0
    for node in model.graph:
        if not _linear(node) or (chain := _mlp_chain(node.inputs[0], memo)) is None:
            continue
        total += 1
        own = chain | {node.inputs[1].name}
        for group in _groups_on(groups, node.inputs[0].name):
            matrices = {m.name for m in group.weights if len(m.value.shape or ()) >= 2
                        and {"out", "in"} & set(m.roles)}  # not [N, blocks] scales
            # single channels, or whole quantization blocks of a MatMulNBits (exact)
            if group.prunable and group.block == _quant_block(node.inputs[1]) and \
                    matrices == own:
                ok += 1
                break
    return ok, total


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
    heads: tuple[int, int, int] = (0, 0, 0)
    """Attention blocks whose heads are their own prunable group of whole heads, of all,
    and how many of the good ones have GQA units (a key/value head and its query heads)."""
    mlps: tuple[int, int] = (0, 0)
    """MLPs whose hidden channels are their own prunable group, of all."""
    error: str | None = None

    @property
    def goal(self) -> str:
        """``met``/``MISSED`` for models that end in a classifier head, else ``-``."""
        if not ends_in_classifier(self.key) or self.error:
            return "-"
        return "met" if self.share >= GOAL else "MISSED"


def analyse(key: str, path: Path, io: str = "keep") -> Row:
    """Run ``fold-constants,couple,group`` on one model; count its pin reasons.

    Args:
        key: The model's key (as in ``golden_models/expected/``).
        path: The model file.
        io: ``keep`` or ``rewrite`` the model's key/value-cache IO (``--io``).

    Returns:
        The model's row; ``error`` is set when a pass raised.
    """
    import spa_opt
    from spa_opt.passes import PipelineContext

    row = Row(key)
    expected = EXPECTED / f"{key}.json"
    if expected.exists():
        row.expected = json.loads(expected.read_text())["coupling"]["coverage"]["share"]
    start = time.perf_counter()
    try:
        model, report = spa_opt.optimize(str(path), PIPELINE, io=io)
    except Exception as error:  # one broken model must not hide the others
        row.error = f"{type(error).__name__}: {error}".splitlines()[0]
        return row
    row.seconds = time.perf_counter() - start
    analyses = PipelineContext.of(model).analyses
    groups = analyses.groups
    row.nodes = analyses.couplings.stats["nodes"]
    row.groups = len(groups)
    row.prunable = sum(group.prunable for group in groups)
    cover = report.to_dict()["coupling"]["coverage"]
    row.channels, row.free, row.share = cover["channels"], cover["prunable"], cover["share"]
    row.heads = attention_heads(model, groups)
    row.mlps = mlp_groups(model, groups)
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


def _ratio(pair: tuple[int, ...]) -> str:
    if not pair[1]:
        return "-"
    return f"{pair[0]}/{pair[1]}" + (f" ({pair[2]} GQA)" if len(pair) > 2 and pair[2] else "")


def table(rows: list[Row], markdown: bool = False) -> str:
    """One line per model, then a total line (a markdown table with ``markdown``)."""
    header = ("model", "nodes", "groups", "prunable", "partly", "channels", "in prunable",
              "share", "expected", "heads", "mlps", "goal", "seconds",
              "top pin reasons (pinned groups)")
    lines: list[tuple[str, ...]] = [header]
    for row in rows:
        if row.error:
            lines.append((row.key, *("-" for _ in header[1:-1]), f"FAILED: {row.error}"))
            continue
        expected = "-" if row.expected is None else f"{row.expected:.2%}"
        if row.expected is not None and row.expected != round(row.share, 4):
            expected += " !"
        top = ", ".join(f"{code} x{count}" for code, count in row.codes.most_common(3))
        lines.append((row.key, str(row.nodes), str(row.groups), str(row.prunable),
                      str(row.partly), str(row.channels), str(row.free), f"{row.share:.2%}",
                      expected, _ratio(row.heads), _ratio(row.mlps), row.goal,
                      f"{row.seconds:.2f}", top or "-"))
    done = [row for row in rows if not row.error]
    channels = sum(row.channels for row in done)
    free = sum(row.free for row in done)
    heads = tuple(sum(r.heads[i] for r in done) for i in range(3))
    mlps = (sum(r.mlps[0] for r in done), sum(r.mlps[1] for r in done))
    goals = [r.goal for r in done if r.goal != "-"]
    lines.append((f"total ({len(done)} models)", str(sum(row.nodes for row in done)),
                  str(sum(row.groups for row in done)), str(sum(row.prunable for row in done)),
                  str(sum(row.partly for row in done)), str(channels), str(free),
                  f"{free / channels:.2%}" if channels else "-", "", _ratio(heads),
                  _ratio(mlps), f"{goals.count('met')}/{len(goals)} met" if goals else "",
                  f"{sum(row.seconds for row in done):.2f}", ""))
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(out + ["| " + " | ".join(line) + " |" for line in lines[1:]])
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
    parser.add_argument("--markdown", action="store_true", help="the model table in markdown")
    parser.add_argument("--io", choices=("keep", "rewrite"), default="keep",
                        help="as spa-opt's --io: rewrite lets heads go through KV caches")
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
        rows.append(analyse(key, path, args.io))
    print()
    print(table(rows, args.markdown))
    print()
    print(reasons(rows))
    print()
    print(
        "groups: all groups; prunable: groups with a unit that can go; partly: prunable "
        "groups with some units pinned. channels: output channels of producing weights "
        "(Conv/Gemm/MatMul, extent > 1); in prunable: those in a prunable group's free "
        "units; share = in prunable / channels (spa_opt.passes.group.coverage). expected: "
        "the share in golden_models/expected/ ('!' when it differs after rounding to 4 "
        "decimals). heads: attention blocks (a Softmax fed by q.k^T, single-head ones "
        "aside) whose heads are their own prunable group with units of whole heads (block "
        "= head size on the output projection; GQA: a key/value head and its query heads), "
        "of all; "
        "mlps: MLPs (Linear, activations, Linear) whose hidden channels are their own "
        f"prunable group, of all. goal: share >= {GOAL:.0%} on models that end in a "
        "classifier head (hf/*_cls). Pin codes count "
        "groups that cannot be pruned at all, once per code per group (single-unit and "
        "no-weight are group.why_not() reasons, not pins). seconds: load + "
        f"{PIPELINE}, one run."
    )
    return 0 if all(not row.error for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
