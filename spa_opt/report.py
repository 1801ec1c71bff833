"""The run report, written as JSON by ``--report``.

Schema (every key always present; ``null`` until a pass provides it)::

    {
      "spa_opt_version": "0.1.0",
      "pipeline": "canonical pipeline text",
      "targets": {"ratio": null, "target_flops": 0.5, ...},
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
      "verify":   {"inputs": N, "max_abs_err": x, "rel_err": x,
                   "per_output": {"name": x}} | null
    }

``coupling`` and ``groups`` come from the ``group`` pass, ``channels`` from pruning, through
``PipelineContext.report``; passes may add further keys there, which appear at
the top level of the report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spa_opt.ir.cost import Cost
from spa_opt.passes.manager import PassRecord
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
        from spa_opt import __version__

        def pair(field: str) -> dict[str, int]:
            return {"before": getattr(self.cost_before, field),
                    "after": getattr(self.cost_after, field)}

        return {
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
            "verify": self.verify.to_dict() if self.verify else None,
            **{k: v for k, v in self.extra.items() if k not in ("coupling", "groups", "channels")},
        }
