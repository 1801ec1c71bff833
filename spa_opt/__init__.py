"""spa-opt: structured pruning as compiler passes over ONNX graphs.

Load a model, run a pipeline of passes (``fold-constants,dce`` today; coupling,
grouping, criteria, OBSPA and pruning as they land), save the result::

    import spa_opt

    model, report = spa_opt.optimize("in.onnx", "fold-constants,dce")
    spa_opt.save_model(model, "out.onnx")
"""

__version__ = "0.1.0"

from spa_opt import passes  # registers every pass
from spa_opt.api import optimize
from spa_opt.errors import InputError, SpaOptError, VerificationError
from spa_opt.ir import count_cost, load_model, save_model
from spa_opt.ort import make_session, session_from_model
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
