"""Replayable pruning plans: what was removed, by stable names, applied to another export.

``--save-plan PLAN.json`` writes, for every group ``prune`` removed units from, the
group's primary member (weight initializer name and axis), its unit count and block,
the removed unit indices, the names of its weight members, and a *signature* of its
values: the L2 norm of every unit's slice of its primary weight (dequantized when it
is stored quantized). A *fingerprint* of the coupling structure (units, blocks and
weight shapes of every prunable group) tells whether two graphs group alike.

``--plan PLAN.json`` applies exactly that selection to a model, matching each planned
group to one of the model's groups:

1. **by name**: a group with a weight member of the planned primary's name and axis
   (or, failing that, of any planned weight name), with the same units and block: the
   same export, or a conversion that kept the names (fp16, bf16);
2. **by structure and values**: among the groups not matched yet with the same units
   and block, the one whose per-unit norms correlate best with the planned signature
   (Pearson r of at least :data:`MIN_CORRELATION`, and ahead of the runner-up by
   :data:`MIN_MARGIN`): a conversion that renamed the weights (QDQ's ``*_quantized``
   codes, dequantized first), the other torch exporter. Norms survive fp16 rounding and
   int8 quantization; a permutation of the units would not (it is not the same plan).

A planned group that matches nothing, or whose removed units the model pins, is an
error naming it (exit 2): the plan is applied whole or not at all. Groups of the model
the plan does not name keep every unit. The report's ``prune.replay`` says per group
how it was matched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spa_opt.errors import InputError
from spa_opt.ir.quant import dequantize, quantization_of
from spa_opt.passes.coupling.groups import Group, Member

FORMAT = "spa-opt-plan"
VERSION = 1
#: Least correlation of per-unit norms for a match by values.
MIN_CORRELATION = 0.98
#: Least lead of the best candidate's correlation over the runner-up's.
MIN_MARGIN = 0.005


def _weight_array(member: Member) -> np.ndarray | None:
    """The member's values as float (dequantized when stored quantized), or None.

    A float weight is returned as stored (a memory-mapped array stays one): the norms
    are taken slice by slice, so a multi-gigabyte weight is never copied whole.
    """
    tensor = member.value.const_value
    if tensor is None:
        return None
    data = tensor.numpy()
    if tensor.dtype.is_floating_point():  # bfloat16 and float8 come as ml_dtypes arrays
        return data if np.issubdtype(data.dtype, np.floating) else data.astype(np.float32)
    quantization = quantization_of(member.value)
    if quantization is None or quantization.scale is None:
        return None
    return np.asarray(dequantize(data, quantization), np.float64)


def _signed_member(group: Group) -> Member | None:
    """The weight member the signature is taken from: the primary, else the first weight."""
    weights = [m for m in group.members if m.kind == "weight"]
    if group.primary.kind == "weight" and _readable(group.primary):
        return group.primary
    return next((m for m in weights if _readable(m)), None)


def _readable(member: Member) -> bool:
    """Whether the member's values can be read as float (without reading them)."""
    tensor = member.value.const_value
    if tensor is None:
        return False
    if tensor.dtype.is_floating_point():
        return True
    found = quantization_of(member.value)
    return found is not None and found.scale is not None


def unit_norms(group: Group) -> list[float] | None:
    """Per unit, the L2 norm of its slice of the group's signature weight."""
    member = _signed_member(group)
    if member is None:
        return None
    data = _weight_array(member)
    positions = member.index_map.positions
    moved = np.moveaxis(data, member.axis, 0)
    return [float(np.linalg.norm(moved[positions[u]].astype(np.float64)))
            for u in range(group.units)]


def fingerprint(groups: Sequence[Group]) -> str:
    """A hash of the coupling structure: units, blocks and weight shapes per group."""
    rows = sorted(
        (g.units, g.block, tuple(sorted(
            (m.axis, tuple(int(d) for d in m.value.const_value.shape))
            for m in g.members if m.kind == "weight" and m.value.const_value is not None)))
        for g in groups if g.prunable)
    return hashlib.sha1(repr(rows).encode()).hexdigest()[:16]


def plan_document(groups: Sequence[Group], selection: Mapping[str, np.ndarray],
                  pipeline: str) -> dict[str, Any]:
    """The plan file's content for ``selection`` (group id -> removed units)."""
    from spa_opt._version import __version__

    entries = []
    for group in groups:
        removed = selection.get(group.id)
        if removed is None or not len(removed):
            continue
        entries.append({
            "id": group.id, "primary": {"name": group.primary.name, "axis": group.primary.axis},
            "units": group.units, "block": group.block,
            "removed": [int(u) for u in np.sort(removed)],
            "weights": sorted({m.name for m in group.members if m.kind == "weight"}),
            "norms": [round(v, 6) for v in unit_norms(group) or []],
        })
    return {"format": FORMAT, "version": VERSION, "spa_opt_version": __version__,
            "pipeline": pipeline, "fingerprint": fingerprint(groups), "groups": entries}


def load_plan(path: str | Path) -> dict[str, Any]:
    """Read and check a plan file; a bad one is an :class:`InputError` naming it."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"--plan: cannot read '{path}': {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"--plan: '{path}' is not a spa-opt plan (no format '{FORMAT}')")
    if data.get("version") != VERSION:
        raise InputError(f"--plan: '{path}' has plan version {data.get('version')}; this "
                         f"spa-opt reads version {VERSION}")
    for entry in data.get("groups", []):
        if not {"id", "primary", "units", "block", "removed"} <= set(entry):
            raise InputError(f"--plan: '{path}': a group entry lacks id, primary, units, "
                             "block or removed")
    return data


def _by_name(entry: Mapping[str, Any], groups: Sequence[Group], used: set[str]) -> Group | None:
    primary = entry["primary"]
    names = [(primary["name"], primary["axis"])]
    names += [(name, None) for name in entry.get("weights", ())]
    for name, axis in names:
        for group in groups:
            if group.id in used or (group.units, group.block) != (entry["units"],
                                                                  entry["block"]):
                continue
            if any(m.name == name and (axis is None or m.axis == axis)
                   for m in group.members):
                return group
    return None


def _correlation(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, float), np.asarray(b, float)
    if x.size != y.size or x.size < 2 or x.std() == 0 or y.std() == 0:
        return float(x.size == y.size and np.allclose(x, y, rtol=1e-2))
    return float(np.corrcoef(x, y)[0, 1])


def _by_values(entry: Mapping[str, Any], groups: Sequence[Group], used: set[str]
               ) -> tuple[Group | None, str]:
    norms = entry.get("norms") or []
    if not norms:
        return None, "the plan holds no value signature for it"
    scored = []
    for group in groups:
        if group.id in used or (group.units, group.block) != (entry["units"], entry["block"]):
            continue
        found = unit_norms(group)
        if found is not None:
            scored.append((_correlation(norms, found), group))
    if not scored:
        return None, f"no unmatched group of {entry['units']} units (block {entry['block']})"
    scored.sort(key=lambda item: -item[0])
    best, group = scored[0]
    runner = scored[1][0] if len(scored) > 1 else -1.0
    if best < MIN_CORRELATION:
        return None, (f"the closest group of {entry['units']} units, {group.id} "
                      f"({group.primary.name}), has unit norms correlating at {best:.3f} < "
                      f"{MIN_CORRELATION}")
    if best - runner < MIN_MARGIN:
        return None, (f"groups {group.id} and {scored[1][1].id} match its values equally "
                      f"well (r {best:.4f} and {runner:.4f})")
    return group, f"values (r {best:.4f})"


def replay(plan: Mapping[str, Any], groups: Sequence[Group]
           ) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The plan's selection on ``groups`` (group id -> units), and how each matched.

    Raises:
        InputError: A planned group matches no group of the model, or the model pins
            units the plan removes.
    """
    used: set[str] = set()
    selection: dict[str, np.ndarray] = {}
    rows = []
    for entry in plan.get("groups", []):
        label = f"{entry['id']} ({entry['primary']['name']}:{entry['primary']['axis']})"
        group, how = _by_name(entry, groups, used), "name"
        if group is None:
            group, how = _by_values(entry, groups, used)
            if group is None:
                raise InputError(f"--plan: group {label} matches no group of this model: no "
                                 f"weight of that name; {how}")
        removed = np.asarray(entry["removed"], dtype=np.int64)
        if removed.size and (removed.max() >= group.units or group.pinned[removed].any()):
            raise InputError(f"--plan: group {label} removes units that group {group.id} of "
                             "this model pins or does not have")
        if removed.size >= group.units:
            raise InputError(f"--plan: group {label} removes every unit")
        used.add(group.id)
        selection[group.id] = np.sort(removed)
        rows.append({"plan_group": entry["id"], "group": group.id,
                     "primary": f"{group.primary.name}:{group.primary.axis}",
                     "matched_by": how, "removed": int(removed.size)})
    return selection, rows


def plan_text(document: Mapping[str, Any]) -> str:
    """A plan file's text (for a caller that stages it with other outputs)."""
    return json.dumps(document, indent=1) + "\n"
