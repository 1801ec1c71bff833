"""Passes that misbehave on purpose, for the CLI and report tests.

Nothing is registered at import: pytest imports every test module before running
any test, so import-time registration would show these passes to every module.
Tests register them with :func:`registered` for as long as they need them; the
executable under test registers them through a ``sitecustomize`` that calls
:func:`register_all`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import onnx_ir as ir

from spa_opt.ir import set_constant
from spa_opt.passes import SpaPass, all_passes, register
from spa_opt.passes._infra import registry


def _first_conv_weight(model: ir.Model) -> ir.Value:
    conv = next(node for node in model.graph if node.op_type == "Conv")
    return conv.inputs[1]


class ExplodePass(SpaPass):
    """Raise an unexpected exception (a stand-in for a bug in a pass)."""

    name = "test-explode"

    def run(self, model, context):
        raise RuntimeError("test-explode went off")


class BreakConvOutPass(SpaPass):
    """Give the first Conv weight more output channels than its consumers take."""

    name = "test-break-conv-out"

    def run(self, model, context):
        weight = _first_conv_weight(model)
        out_channels, *rest = weight.shape
        set_constant(weight, np.zeros((out_channels + 3, *rest), np.float32))
        return ir.passes.PassResult(model, True)


class BreakConvInPass(SpaPass):
    """Give the first Conv weight more input channels than its input has."""

    name = "test-break-conv-in"

    def run(self, model, context):
        weight = _first_conv_weight(model)
        out_channels, in_channels, *kernel = weight.shape
        set_constant(weight, np.zeros((out_channels, in_channels + 5, *kernel), np.float32))
        return ir.passes.PassResult(model, True)


MISBEHAVING = (ExplodePass, BreakConvOutPass, BreakConvInPass)

#: The executable's sitecustomize: registers the passes above in the subprocess.
SITECUSTOMIZE = "import misbehaving_passes\nmisbehaving_passes.register_all()\n"


def register_all(classes: tuple[type[SpaPass], ...] = MISBEHAVING) -> list[str]:
    """Register the passes not registered yet; returns the names added."""
    added = [cls for cls in classes if cls.name not in all_passes()]
    for cls in added:
        register(cls)
    return [cls.name for cls in added]


@contextlib.contextmanager
def registered(*classes: type[SpaPass]) -> Iterator[None]:
    """Register ``classes`` (default: the misbehaving ones) for the block only."""
    added = register_all(classes or MISBEHAVING)
    try:
        yield
    finally:
        for name in added:
            registry._PASSES.pop(name)  # no public unregister; tests only
