"""spa-opt: structured pruning as compiler passes over ONNX graphs.

Load a model, run a pipeline of passes (``fold-constants,dce`` today; coupling,
grouping, criteria, OBSPA and pruning as they land), save the result::

    import spa_opt

    model, report = spa_opt.optimize("in.onnx", "fold-constants,dce")
    spa_opt.save_model(model, "out.onnx")
"""

from spa_opt import passes  # registers every pass
from spa_opt._version import __version__
from spa_opt.api import make_session, optimize
from spa_opt.errors import InputError, SpaOptError, VerificationError
from spa_opt.ir import count_cost, load_model, save_model
from spa_opt.ort import session_from_model
from spa_opt.report import Report

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
