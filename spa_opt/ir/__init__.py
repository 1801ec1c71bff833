"""What pruning needs on top of onnx_ir: IO, tensor edits, cost, channel-space types."""

from spa_opt.ir.cost import Cost, count_cost, node_cost
from spa_opt.ir.io import ModelSource, external_data_files, load_model, save_model
from spa_opt.ir.lattice import IndexMap, PinReason
from spa_opt.ir.tensors import lazy_take, set_constant

__all__ = [
    "Cost",
    "IndexMap",
    "ModelSource",
    "PinReason",
    "count_cost",
    "external_data_files",
    "lazy_take",
    "load_model",
    "node_cost",
    "save_model",
    "set_constant",
]
