"""The run report, written as JSON by ``--report``.

Schema (every key always present; ``null`` until a pass provides it)::

    {
      "spa_opt_version": "0.1.0",
      "pipeline": "canonical pipeline text",
      "targets": {"ratio": null, "target_flops": 0.5, "target_latency": null, ...},
      "passes": [{"name": "dce", "seconds": 0.01, "modified": true,
                  "stats": {"nodes-removed": 3}}],
      "params": {"before": 25557032, "after": 12000000},
      "macs":   {"before": ..., "after": ...},
      "flops":  {"before": ..., "after": ...},
      "coupling": {"groups": N, "prunable": N, "pinned": N,
                   "coverage": {"channels": N, "prunable": N, "share": x}} | null,
      "groups":   [{"id": "g0", "primary": "conv.weight:0", "units": N, "block": N,
                    "channels": N, "prunable": bool, "pinned_units": N,
                    "reasons": [...], "why_not": [...],
                    "members": [{"name", "axis", "kind", "roles", "extent",
                                 "block", "map", "first_unit"}],
                    "patches": [{"node", "kind", "detail"}]}] | null,
      "channels": {"total": N, "removed": N} | null,
      "load":     {"nodes-reordered": N, "value-info-dropped": N},
      "io":       {"policy": "keep" | "rewrite",
                   "changed": [{"kind": "input" | "output", "name",
                                "before": [dims], "after": [dims]}]} | null
                  (null when the IO is kept and nothing changed),
      "verify":   {"inputs": N, "max_abs_err": x, "rel_err": x,
                   "per_output": {"name": x}, "reshaped": [names],
                   "source": "random" | "calibration (held back)" | "calibration (in-sample)",
                   "top1_agreement": x | null, "kl": x | null,
                   "perplexity_ratio": x | null} | null
    }

``coupling`` and ``groups`` come from the ``group`` pass, ``channels`` from pruning, through
``PipelineContext.report``; passes may add further keys there, which appear at
the top level of the report.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import re
from typing import Any

from spa_opt.ir.cost import Cost
from spa_opt.passes._infra.manager import PassRecord
from spa_opt.verify import VerifyResult


@dataclasses.dataclass
class Report:
    """What a pipeline run did; see the module docstring for its JSON form."""

    pipeline: str
    targets: dict[str, Any]
    passes: list[PassRecord]
    cost_before: Cost
    cost_after: Cost
    verify: VerifyResult | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary."""
        from spa_opt._version import __version__

        def pair(field: str) -> dict[str, int]:
            return {"before": getattr(self.cost_before, field),
                    "after": getattr(self.cost_after, field)}

        return json_ready({
            "spa_opt_version": __version__,
            "pipeline": self.pipeline,
            "targets": self.targets,
            "passes": [record.to_dict() for record in self.passes],
            "params": pair("params"),
            "macs": pair("macs"),
            "flops": pair("flops"),
            "coupling": self.extra.get("coupling"),
            "groups": self.extra.get("groups"),
            "channels": self.extra.get("channels"),
            "io": self.extra.get("io"),
            "verify": self.verify.to_dict() if self.verify else None,
            **{k: v for k, v in self.extra.items()
               if k not in ("coupling", "groups", "channels", "io")},
        })


    def metadata_props(self) -> dict[str, str]:
        """The run's summary as ``metadata_props`` entries (what Netron shows).

        ``spa_opt.version``, ``spa_opt.pipeline``, ``spa_opt.targets`` (the targets that
        were set, as JSON), ``spa_opt.params`` and ``spa_opt.flops`` (before, after and
        the fraction kept) and, when latency was measured, ``spa_opt.latency``.
        """
        import json

        from spa_opt._version import __version__

        def kept(field: str) -> str:
            before, after = getattr(self.cost_before, field), getattr(self.cost_after, field)
            share = f" ({after / before:.1%} kept)" if before else ""
            return f"{before} -> {after}{share}"

        given = given_targets(self.targets)
        props = {"spa_opt.version": __version__, "spa_opt.pipeline": self.pipeline,
                 "spa_opt.targets": json.dumps(given, sort_keys=True),
                 "spa_opt.params": kept("params"), "spa_opt.flops": kept("flops")}
        target = (self.extra.get("prune") or {}).get("target") or {}
        latency = target.get("latency_model") or {}
        if "measured_after" in latency:
            props["spa_opt.latency"] = (
                f"{latency['measured_before'] * 1e3:.3g} ms -> "
                f"{latency['measured_after'] * 1e3:.3g} ms ({latency['measured_kept']:.1%} "
                "kept, measured in onnxruntime)")
        return props


_TARGET_DEFAULTS: dict[str, Any] = {"scope": "local", "round_to": 1, "seed": 0, "ignore": []}


def json_ready(value: Any) -> Any:
    """``value`` as JSON can hold it: non-finite floats as ``null``, numpy scalars as numbers.

    Passes put their figures in the report as they compute them; a NaN (from a model
    whose outputs are NaN) or a numpy scalar must not turn a finished run into an
    internal error when the report is written.
    """
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if hasattr(value, "tolist"):  # a numpy array
        return json_ready(value.tolist())
    return value


def given_targets(targets: dict[str, Any]) -> dict[str, Any]:
    """The targets a run set: neither unset nor at their defaults."""
    return {k: v for k, v in targets.items()
            if v is not None and v != _TARGET_DEFAULTS.get(k, object())}


_QUOTED = re.compile(r"`[^`]*`")


def _pin_text(pin: dict[str, Any]) -> str:
    """``reason at node `n` (and at 3 more)``: one line per kind of reason."""
    if not pin["first_node"]:
        return pin["reason"]
    more = f" (and {pin['nodes'] - 1} more)" if pin["nodes"] > 1 else ""
    return f"{pin['reason']} at node `{pin['first_node']}`{more}"


def pinned_by_reason(groups: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    """``(reason, pinned channels, groups)`` over all groups, most channels first.

    Reasons that differ only in the names they quote (the same rule at every layer)
    count as one, written with the names elided unless only one was seen. A group
    pinned for several reasons counts under each: lifting one of them alone would
    not free it, but the totals say which constraint holds back the most.
    """
    channels: dict[str, int] = {}
    count: dict[str, int] = {}
    texts: dict[str, set[str]] = {}
    for g in groups:
        pinned = g["pinned_units"] * g["block"] or g["channels"]
        found = {pin["reason"] for pin in g.get("pins", ())}
        if not found and not g["prunable"]:
            found = set(g["why_not"])
        for key in {_QUOTED.sub("`…`", reason) for reason in found}:
            channels[key] = channels.get(key, 0) + pinned
            count[key] = count.get(key, 0) + 1
        for reason in found:
            texts.setdefault(_QUOTED.sub("`…`", reason), set()).add(reason)
    shown = {key: next(iter(t)) if len(t) == 1 else key for key, t in texts.items()}
    return sorted(((shown[k], channels[k], count[k]) for k in channels),
                  key=lambda row: (-row[1], row[0]))


def format_groups(groups: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> str:
    """The ``--print-groups`` table, from the report's ``groups`` entries."""
    header = ("group", "units x block", "channels", "status", "first weight", "members", "why")
    rows = []
    for g in groups:
        if not g["prunable"]:
            status = "pinned"
        elif g["pinned_units"]:
            status = f"{g['pinned_units']} pinned"
        else:
            status = "prunable"
        pins = g.get("pins") if not g["prunable"] else None
        why = "; ".join(map(_pin_text, pins)) if pins else "; ".join(g["why_not"] or g["reasons"])
        rows.append((g["id"], f"{g['units']} x {g['block']}", str(g["channels"]), status,
                     g["primary"], str(len(g["members"])), why))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    totals = pinned_by_reason(groups)
    if totals:
        lines.append("pinned channels by reason (a group pinned for several counts under each):")
        width = max(len(str(c)) for _, c, _ in totals)
        lines += [f"  {c:>{width}}  in {n} group{'s' if n > 1 else ''}: {reason}"
                  for reason, c, n in totals[:12]]
        if len(totals) > 12:
            lines.append(f"  ... and {len(totals) - 12} more reasons (see the report's groups)")
    if summary:
        cov = summary["coverage"]
        lines.append(
            f"{summary['groups']} groups, {summary['prunable']} prunable; "
            f"{cov['prunable']} of {cov['channels']} produced channels prunable "
            f"({cov['share']:.0%})"
        )
    return "\n".join(lines)


def format_io_changes(io: dict[str, Any] | None) -> str:
    """What ``--io rewrite`` changed, one line per graph input or output, for stderr.

    Each line names the tensor and the axes whose length changed (for a cache, the
    head axis: the new head count a generation loop must allocate).
    """
    if not io or not io.get("changed"):
        return ""
    lines = []
    for change in io["changed"]:
        before, after = change["before"] or [], change["after"] or []
        pairs = enumerate(zip(before, after, strict=False))
        axes = [f"dim {axis}: {b} -> {a}" for axis, (b, a) in pairs if b != a]
        lines.append(f"io: {change['kind']} {change['name']} {'; '.join(axes)}")
    return "\n".join(lines)
