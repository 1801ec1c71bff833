"""Fold constant subgraphs and turn every constant weight into an initializer.

Pruning reads weights from initializers, but real graphs hide them behind nodes.
Rules, applied in order:

1. Initializers that are also graph inputs (the IR < 4 convention) become plain
   initializers: every exporter of that era meant them as weights, and a value
   that may be overridden at run time can never be folded or pruned. The IR
   version is raised to 4, the first that allows initializers outside the inputs.
2. ``ConstantOfShape`` with a constant shape becomes an initializer, computed
   lazily so a large filled weight costs no memory until saved. onnxscript skips
   this op by design; the model-zoo graphs in the onnx package store every
   weight this way.
3. onnxscript's constant folder folds the remaining constant subgraphs. Layout
   ops on weights (Reshape, Transpose, Squeeze, Unsqueeze, Flatten, Identity,
   Cast) are folded whatever their size when nothing else reads their input:
   that moves a weight without duplicating it (model-zoo graphs reshape their
   classifier weight that way). A widening Cast of a float16/bfloat16 weight to a
   wider float is never folded: folding would store the weight in the wider type
   (a bf16 model read through ``Cast(to=FLOAT)`` would double in size); the coupling
   rules see through the Cast instead. ``DequantizeLinear`` is never folded either
   (onnxscript keeps it), so a QDQ model stays quantized.
   ``ConstantOfShape`` nodes whose shape became constant in a round are lifted
   before the next one, so chains such as TensorFlow-style "same" padding
   (``Shape -> Sub -> ConstantOfShape -> Concat -> ... -> Pad``) fold completely.
4. ``Constant`` nodes become initializers (onnx_ir's lifting pass).
5. A float constant that several nodes read as a per-channel operand (a bias added,
   a scale multiplied, a normalization's parameters, Gemm's ``C``) gets one copy per
   reader. Exporters deduplicate identical initializers (torch's dynamo exporter
   merges the all-zero biases of every Linear layer into one tensor); read through
   one shared tensor, the channels of unrelated layers would have to be removed
   together. Constants some reader uses as a contraction weight or a lookup table
   (tied embeddings) stay shared: that tying is the model's, and so are constants of
   more than ``untie-size-limit`` elements. A ``DequantizeLinear`` of constants or a
   widening Cast of a half-precision constant whose output several nodes read that
   way (a QDQ or bf16 graph's shared zero bias) is copied per reader with its
   inputs. Nothing changes numerically.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass, RemoveInitializersFromInputsPass

from spa_opt.ir.ops import CONTRIB_OPERANDS, WEIGHTED
from spa_opt.ir.shapes import temporary_shapes
from spa_opt.ir.tensors import NameAllocator
from spa_opt.passes._infra.base import SpaPass, option
from spa_opt.passes._infra.context import PipelineContext
from spa_opt.passes._infra.registry import register

_LAYOUT_OPS = frozenset(
    ["Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Cast"]
)


def _fold_weight_layout(node: ir.Node) -> bool | None:
    """Onnxscript's should_fold hook: True forces folding past the size limits."""
    if node.domain != "" or node.op_type not in _LAYOUT_OPS:
        return None
    data = node.inputs[0] if node.inputs else None
    if node.op_type == "Cast" and data is not None and _widens_half(node, data):
        return False
    if data is None or len(data.uses()) != 1:
        return None
    return True


def _widens_half(node: ir.Node, data: ir.Value) -> bool:
    """A Cast of a float16/bfloat16 tensor to a wider float type."""
    half = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
    target = node.attributes.get_int("to", 0)
    return data.dtype in half and target in (ir.DataType.FLOAT, ir.DataType.DOUBLE)


def _untie_candidate(value: ir.Value, uses: list[Any]) -> bool:
    """Rule 5's filter: a float constant with a channel axis, read as an operand only."""
    tensor = value.const_value
    if tensor is None or value.is_graph_input() or not tensor.dtype.is_floating_point():
        return False
    if all(int(d) == 1 for d in tensor.shape):
        return False  # a scalar broadcasts over every channel: nothing to couple
    return _operand_uses(uses)


def _operand_uses(uses: list[Any]) -> bool:
    """Whether every use reads the value as a per-channel operand (rule 5)."""
    for use in uses:
        node = use.node
        if node.domain == "com.microsoft":  # onnxruntime's fused ops: biases, gammas only
            if use.idx not in CONTRIB_OPERANDS.get(node.op_type, ()):
                return False
            continue
        if node.domain not in ("", "ai.onnx"):
            return False
        if node.op_type in WEIGHTED and use.idx < 2:
            return False  # a contraction weight: tied on purpose
        if node.op_type == "Gather" and use.idx == 0:
            return False  # a lookup table (tied embeddings)
    return True


@register
class FoldConstantsPass(SpaPass):
    """Fold constant subgraphs and lift Constant/ConstantOfShape weights to initializers."""

    name = "fold-constants"

    @dataclasses.dataclass
    class Options:
        """Options of fold-constants."""

        input_size_limit: int = option(
            8192, "largest input (elements) a folded node may read; bigger ones stay"
        )
        output_size_limit: int = option(
            2**24, "largest result (elements) folding may create"
        )
        lift_size_limit: int = option(
            1, "smallest Constant (elements) lifted to an initializer"
        )
        rounds: int = option(
            4, "at most this many rounds of whole-graph shape inference and folding"
        )
        initializer_inputs: bool = option(
            True, "treat initializers also listed as graph inputs (IR < 4) as weights"
        )
        untie_size_limit: int = option(
            1 << 20, "largest shared per-channel constant (elements) given a copy per "
            "reader (0: never untie)"
        )

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Apply the four rules of the module docstring."""
        import onnxscript.optimizer  # here, not at the top: 100 ms of start-up otherwise

        # The folder may give a graph output a new producer whose value has no type;
        # the output's declared type is the model's interface, so it is put back.
        declared = {v.name: (v.type, v.shape) for v in model.graph.outputs}
        modified = False
        if self.options.initializer_inputs:
            modified |= self._lift_initializer_inputs(model)
        lift = LiftConstantsToInitializersPass(
            lift_all_constants=True, size_limit=self.options.lift_size_limit
        )
        modified |= lift(model).modified
        modified |= self._materialize_all(model)
        before = sum(1 for _ in model.graph.all_nodes())
        for _ in range(self.options.rounds):
            # Shapes inferred over the whole graph let Shape -> Gather -> Div chains
            # fold that the folder's node-local inference leaves alone.
            with temporary_shapes(model):
                folded = onnxscript.optimizer.fold_constants(
                    model,
                    input_size_limit=self.options.input_size_limit,
                    output_size_limit=self.options.output_size_limit,
                    should_fold=_fold_weight_layout,
                )
            lifted = self._materialize_all(model)
            modified |= folded.modified or lifted
            if not (folded.modified or lifted):
                break
        self.count("nodes-folded", before - sum(1 for _ in model.graph.all_nodes()))
        modified |= lift(model).modified
        if self.options.untie_size_limit > 0:
            for graph in model.graphs():
                modified |= self._untie_shared_operands(graph)
                modified |= self._untie_shared_views(graph)
        for value in model.graph.outputs:
            type_, shape = declared.get(value.name, (None, None))
            if value.type is None and type_ is not None:
                value.type = type_
                value.shape = shape
                self.count("output-types-restored")
        for graph in model.graphs():
            for value in graph.initializers.values():
                self._sync_shape(value)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _sync_shape(value: ir.Value) -> None:
        """A folded value keeps the shape inferred before folding, which may be stale."""
        tensor = value.const_value
        if tensor is None:
            return
        if value.shape is None or tuple(value.shape) != tuple(tensor.shape):
            value.shape = ir.Shape(tensor.shape)
        if value.dtype != tensor.dtype:
            value.dtype = tensor.dtype

    def _lift_initializer_inputs(self, model: ir.Model) -> bool:
        names = set(model.graph.initializers)
        lifted = sum(1 for value in model.graph.inputs if value.name in names)
        if not lifted:
            return False
        RemoveInitializersFromInputsPass()(model)
        model.ir_version = max(model.ir_version or 0, 4)
        self.count("initializer-inputs-lifted", lifted)
        return True

    def _materialize_all(self, model: ir.Model) -> bool:
        """Rule 2 over every graph; True if any ConstantOfShape was lifted."""
        lifted = False
        for graph in model.graphs():
            for node in list(graph):
                lifted |= self._materialize_constant_of_shape(graph, node)
        return lifted

    def _untie_shared_operands(self, graph: ir.Graph) -> bool:
        """Rule 5: one copy of a shared per-channel float constant per reader."""
        names: NameAllocator | None = None
        untied = False
        for value in list(graph.initializers.values()):
            uses = list(value.uses())
            if len(uses) < 2 or not _untie_candidate(value, uses):
                continue
            tensor = value.const_value
            assert tensor is not None
            if tensor.size > self.options.untie_size_limit:
                self.count("shared-constants-kept")
                continue
            names = names or NameAllocator(graph)
            data = tensor.numpy()
            for use in uses[1:]:
                copy = ir.Value(name=names(f"{value.name}_use"), shape=ir.Shape(data.shape),
                                type=ir.TensorType(tensor.dtype))
                copy.const_value = ir.tensor(data, dtype=tensor.dtype, name=copy.name)
                graph.register_initializer(copy)
                use.node.replace_input_with(use.idx, copy)
            self.count("shared-constants-untied")
            self.count("constant-copies", len(uses) - 1)
            untied = True
        return untied

    def _untie_shared_views(self, graph: ir.Graph) -> bool:
        """Rule 5 for weights read through a node: one node (and constants) per reader.

        The node is a ``DequantizeLinear`` of constants (QDQ) or a widening ``Cast`` of
        a half-precision constant (bf16 storage), which folding keeps.
        """
        names: NameAllocator | None = None
        untied = False
        for node in list(graph):
            if node.domain not in ("", "ai.onnx") or not (
                    node.op_type == "DequantizeLinear" or (
                        node.op_type == "Cast" and _widens_half(node, node.inputs[0]))):
                continue
            output = node.outputs[0]
            uses = list(output.uses())
            constants = [v for v in node.inputs if v is not None]
            tensors = [v.const_value for v in constants]
            if len(uses) < 2 or output.is_graph_output() or any(
                    t is None or v.is_graph_input() for v, t in zip(constants, tensors,
                                                                    strict=True)):
                continue
            shape = tensors[0].shape if tensors[0] is not None else ()
            if all(int(d) == 1 for d in shape) or not _operand_uses(uses):
                continue
            if sum(int(t.size) for t in tensors if t is not None) > self.options.untie_size_limit:
                self.count("shared-constants-kept")
                continue
            names = names or NameAllocator(graph)
            for use in uses[1:]:
                inputs: list[ir.Value | None] = []
                for value in node.inputs:
                    if value is None or value.const_value is None:
                        inputs.append(value)
                        continue
                    data = value.const_value.numpy()
                    inputs.append(names.initializer(data, f"{value.name}_use"))
                copy = ir.Node(node.domain, node.op_type, inputs,
                               attributes=list(node.attributes.values()),
                               name=names(f"{node.name or node.op_type}_use"),
                               num_outputs=1)
                copy.outputs[0].name = names(f"{output.name}_use")
                copy.outputs[0].type = output.type
                copy.outputs[0].shape = output.shape
                graph.insert_after(node, copy)
                use.node.replace_input_with(use.idx, copy.outputs[0])
            self.count("shared-constants-untied")
            self.count("constant-copies", len(uses) - 1)
            untied = True
        return untied

    def _materialize_constant_of_shape(self, graph: ir.Graph, node: ir.Node) -> bool:
        if node.op_type != "ConstantOfShape" or node.domain != "":
            return False
        shape_value = node.inputs[0]
        if shape_value is None or shape_value.const_value is None:
            return False
        if shape_value.is_graph_input():
            return False
        dims = tuple(int(d) for d in shape_value.const_value.numpy().reshape(-1))
        fill_attr = node.attributes.get("value")
        fill = fill_attr.value.numpy().reshape(-1) if fill_attr else np.zeros(1, np.float32)

        def make() -> ir.TensorProtocol:
            return ir.tensor(np.full(dims, fill[0], dtype=fill.dtype))

        output = node.outputs[0]
        tensor = ir.LazyTensor(
            make, dtype=ir.DataType.from_numpy(fill.dtype), shape=ir.Shape(dims), name=output.name
        )
        weight = ir.Value(name=output.name, shape=ir.Shape(dims), const_value=tensor)
        weight.dtype = tensor.dtype
        output.replace_all_uses_with(weight, replace_graph_outputs=True)
        graph.remove(node, safe=True)
        graph.register_initializer(weight)
        self.count("constant-of-shape-lifted")
        return True
