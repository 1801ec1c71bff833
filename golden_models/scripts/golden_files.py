"""What every generator does to a file before committing it: one place, so the golden models agree.

The committed files are read by the project's onnxruntime, which may be older than the
exporter that wrote them: the IR version is capped at ``IR_VERSION``. Exporters record
machine-specific metadata (torch's stack traces name the paths of the machine that
exported), which would make every regeneration a diff: it is dropped. Weights are inlined,
so each golden model is one file.
"""

from __future__ import annotations

from pathlib import Path

import onnx

IR_VERSION = 10
"""The newest IR version the project's onnxruntime loads."""
DROPPED_METADATA = ("pkg.torch.onnx.stack_trace",)
"""Node metadata keys that depend on the exporting machine."""


def normalise(path: Path) -> onnx.ModelProto:
    """Cap the IR version, drop machine-specific metadata and re-save with inline weights.

    Args:
        path: The exported file, rewritten in place; a ``<name>.data`` file of external
            weights beside it is removed once the weights are inline.

    Returns:
        The normalised model.
    """
    model = onnx.load(str(path))
    model.ir_version = min(model.ir_version, IR_VERSION)
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DROPPED_METADATA]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(model, str(path), save_as_external_data=False)
    path.with_name(path.name + ".data").unlink(missing_ok=True)
    return model
