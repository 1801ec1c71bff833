"""The optional autodiff backend: ONNX models as differentiable torch modules.

Installed with ``pip install 'spa-opt[autodiff]'`` (PyTorch; the CPU build is enough).
Nothing in the core install or the obspa path imports this package's torch modules;
passes that need gradients call :func:`require` first, which turns a missing extra
into a one-line error (exit code 2). See docs/autodiff.md for how the backend was
chosen and how to use it, including taking a pruned model back to training.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from spa_opt.errors import InputError

if TYPE_CHECKING:
    from spa_opt.autodiff.graph import TorchGraph

EXTRA = "autodiff"
INSTALL_HINT = "pip install 'spa-opt[autodiff]'"


def available() -> bool:
    """Whether the extra is installed (PyTorch importable).

    False as well when ``sys.modules["torch"]`` is None (an import blocked on purpose,
    as tests simulate a missing extra) or holds a module without a spec.
    """
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def require(who: str) -> None:
    """Raise a one-line :class:`InputError` naming the extra unless it is installed."""
    if not available():
        raise InputError(f"{who} needs the '{EXTRA}' extra (PyTorch), which is not "
                         f"installed: {INSTALL_HINT}")


def __getattr__(name: str) -> Any:
    if name == "TorchGraph":
        require("the autodiff backend")
        from spa_opt.autodiff.graph import TorchGraph

        return TorchGraph
    raise AttributeError(name)


__all__ = ["EXTRA", "INSTALL_HINT", "TorchGraph", "available", "require"]
