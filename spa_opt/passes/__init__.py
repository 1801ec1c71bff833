"""spa-opt passes: one per module, registered by name, composable with onnx_ir passes.

Importing this package registers every pass. Build pipelines from text with
:func:`build_pipeline`, or instantiate pass classes directly.
"""

import spa_opt.passes.criteria  # noqa: F401  (registers the criteria)
from spa_opt.passes._infra.base import NoOptions, OptionInfo, SpaPass, option
from spa_opt.passes._infra.context import PipelineContext, Targets
from spa_opt.passes._infra.manager import Instrument, PassManager, PassRecord
from spa_opt.passes._infra.pipeline import PassSpec, build_pipeline, format_pipeline, parse_pipeline
from spa_opt.passes._infra.registry import all_passes, get_pass, register
from spa_opt.passes.check import CheckPass, check_model
from spa_opt.passes.couple import CouplePass
from spa_opt.passes.dce import DeadCodeEliminationPass
from spa_opt.passes.dead import DeadPass
from spa_opt.passes.fold_constants import FoldConstantsPass
from spa_opt.passes.group import GroupPass
from spa_opt.passes.obspa import ObspaPass
from spa_opt.passes.precrop import PrecropPass  # noqa: F401
from spa_opt.passes.prune import PrunePass
from spa_opt.passes.shape_infer import ShapeInferPass
from spa_opt.passes.synthesize import SynthesizePass
from spa_opt.passes.topo_sort import TopoSortPass

__all__ = [
    "CheckPass",
    "CouplePass",
    "DeadCodeEliminationPass",
    "DeadPass",
    "FoldConstantsPass",
    "GroupPass",
    "Instrument",
    "NoOptions",
    "ObspaPass",
    "OptionInfo",
    "PassManager",
    "PassRecord",
    "PassSpec",
    "PipelineContext",
    "PrunePass",
    "ShapeInferPass",
    "SpaPass",
    "SynthesizePass",
    "Targets",
    "TopoSortPass",
    "all_passes",
    "build_pipeline",
    "check_model",
    "format_pipeline",
    "get_pass",
    "option",
    "parse_pipeline",
    "register",
]
