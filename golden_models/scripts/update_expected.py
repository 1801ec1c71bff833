"""Rewrite the expected groups of every golden model (``golden_models/expected/``).

Run after a change to the coupling rules that is meant to change grouping, then read
the diff: ``python golden_models/scripts/update_expected.py && git diff golden_models``.
The tests (``tests/test_golden_groups.py``) compare against these files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx

from spa_opt.api import optimize
from spa_opt.passes._infra.context import PipelineContext

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden_models"
EXPECTED = GOLDEN / "expected"
LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"
PIPELINE = "fold-constants,couple,group"


def golden_models() -> dict[str, Path]:
    """Every golden model by its key: path under golden_models/, or ``light/<name>``."""
    models = {
        str(p.relative_to(GOLDEN).with_suffix("")): p
        for p in sorted(GOLDEN.rglob("*.onnx"))
    }
    for path in sorted(LIGHT.glob("light_*.onnx")):
        models[f"light/{path.stem.removeprefix('light_')}"] = path
    return models


def expectation(path: Path) -> dict:
    """The groups of one model as the expectation files record them."""
    model, report = optimize(str(path), PIPELINE)
    groups = PipelineContext.of(model).analyses.groups
    coupling = report.to_dict()["coupling"]
    coupling["coverage"]["share"] = round(coupling["coverage"]["share"], 4)
    return {
        "pipeline": PIPELINE,
        "coupling": coupling,
        "groups": [group.summary() for group in groups],
    }


def main(argv: list[str]) -> int:
    """Rewrite the files of the models named in ``argv`` (all when empty)."""
    for key, path in golden_models().items():
        if argv and key not in argv:
            continue
        target = EXPECTED / f"{key}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(expectation(path), indent=1) + "\n")
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
