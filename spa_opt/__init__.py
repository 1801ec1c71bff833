"""spa-opt: structured pruning as compiler passes over ONNX graphs.

Load a model, run a pipeline of passes (folding and dead code, coupling and grouping,
criteria, OBSPA, input synthesis and pruning; ``spa-opt --list-passes`` shows them all),
save the result::

    import spa_opt

    model, report = spa_opt.optimize("in.onnx", "couple,group,obspa,prune",
                                     target_flops=0.5)
    spa_opt.save_model(model, "out.onnx")

The public names are imported on first use (PEP 562), not here: importing a light
submodule such as the graph-free OBS kernels :mod:`spa_opt.obs` must not pull in
onnx_ir, onnxruntime and every pass, so that a worker process can import it alone.
``spa_opt.optimize`` (or any name below) imports :mod:`spa_opt.passes`, which registers
every pass, exactly as ``import spa_opt`` used to.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

from spa_opt._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from spa_opt import passes
    from spa_opt.api import make_session, optimize
    from spa_opt.errors import InputError, SpaOptError, VerificationError
    from spa_opt.ir import count_cost, load_model, save_model
    from spa_opt.ort import session_from_model
    from spa_opt.report import Report

_LAZY: dict[str, str] = {
    "InputError": "spa_opt.errors",
    "Report": "spa_opt.report",
    "SpaOptError": "spa_opt.errors",
    "VerificationError": "spa_opt.errors",
    "count_cost": "spa_opt.ir",
    "load_model": "spa_opt.ir",
    "make_session": "spa_opt.api",
    "optimize": "spa_opt.api",
    "passes": "spa_opt.passes",
    "save_model": "spa_opt.ir",
    "session_from_model": "spa_opt.ort",
}
"""Public name -> the module that defines it (``passes`` is that module itself)."""

__all__ = [
    "InputError",
    "Report",
    "SpaOptError",
    "VerificationError",
    "__version__",
    "count_cost",
    "load_model",
    "make_session",
    "optimize",
    "passes",
    "save_model",
    "session_from_model",
]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and cache the name here.

    Every public name also imports :mod:`spa_opt.passes`, so that the passes are
    registered before anything can build a pipeline, whichever name came first.
    """
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    importlib.import_module("spa_opt.passes")
    module = importlib.import_module(module_name)
    value = module if module_name == f"{__name__}.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names (imported yet or not), the dunders and the loaded subpackages.

    Not the helpers this module imports for itself (``importlib``, ``Any``), which are
    no part of the API.
    """
    loaded = {name for name, value in globals().items()
              if isinstance(value, ModuleType) and value.__name__.startswith(f"{__name__}.")}
    return sorted({*__all__, *loaded, *(name for name in globals() if name.startswith("__"))})
