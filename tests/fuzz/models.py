"""The models the fuzzer mutates: every golden model, and optionally the light zoo."""

from __future__ import annotations

from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden_models"
LIGHT = Path(onnx.__path__[0]) / "backend" / "test" / "data" / "light"


def golden_models(light: bool = False) -> dict[str, Path]:
    """Model files by key (path under ``golden_models/`` without ``.onnx``).

    ``light`` adds the onnx package's light model zoo as ``light/NAME``: big graphs
    (AlexNet, VGG-19, ResNet-50) that cost seconds a run, so only long runs take them.
    """
    models = {str(p.relative_to(GOLDEN).with_suffix("")): p
              for p in sorted(GOLDEN.rglob("*.onnx"))}
    if light:
        models.update({f"light/{p.stem.removeprefix('light_')}": p
                       for p in sorted(LIGHT.glob("light_*.onnx"))})
    return models
