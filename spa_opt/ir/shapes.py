"""Shapes inferred for a moment: analyses need them, outputs should not gain them.

Counting FLOPs or checking channel consistency needs every intermediate shape,
but writing inferred shapes into the model would change what a plain ``dce`` run
saves. :func:`temporary_shapes` infers them, yields, and puts back exactly what
the model had, including the initializer order onnx_ir's inference disturbs.

ONNX's own inference stops at shapes computed at run time (optimum's exports build
``Expand`` and ``Reshape`` targets from ``Shape`` of dynamic inputs, ``Where`` on
``-1`` entries, rotary halves sliced at ``size // 2``), and every dim after such a
node is unknown, which pins the channels there. When dims stay unknown and the caller
asks (the coupling analysis does), onnxruntime's symbolic shape inference
(``onnxruntime.tools.symbolic_shape_infer``, the one its transformer optimizer uses),
which carries dims as expressions, fills in the static dims it finds. It runs on the
graph with every large weight turned into a graph input of the same type, so no
weight data is copied; if it fails (an operator it does not know), the ONNX result
stands. Contrib ops neither inference knows are shaped by the rows of
:mod:`spa_opt.ir.contrib_shapes`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from spa_opt.ir.contrib_shapes import fill as fill_contrib_shapes


@contextlib.contextmanager
def temporary_shapes(model: ir.Model, symbolic: bool = False) -> Iterator[ir.Model]:
    """Infer shapes for the duration of the block, then restore the model's own.

    ``symbolic``: also fill the dims ONNX leaves unknown with onnxruntime's symbolic
    inference (see the module docstring). The coupling analysis, the cost count and
    the planners that predict it (prune, obspa, precrop) ask for it, so a plan and its
    recount see the same dims; it also runs whenever the graph has operators of other
    domains (onnxruntime's contrib ops, which ONNX's inference does not know). Checks
    and folding skip it: it costs a serialization of the graph.
    """
    values = [v for node in model.graph.all_nodes() for v in node.outputs]
    saved = [(v, v.shape, v.type) for v in values]
    # onnx_ir's inference detaches big initializers and re-adds them at the end.
    order = list(model.graph.initializers)
    try:
        ShapeInferencePass(strict_mode=False)(model)
        foreign = any(node.domain not in ("", "ai.onnx") for node in model.graph)
        if (symbolic or foreign) and _has_unknown_dims(model):
            _refine_symbolically(model)
        if foreign and _has_unknown_dims(model):
            _fill_contrib(model)
        yield model
    finally:
        for value, shape, type_ in saved:
            value.type = type_
            value.shape = shape
        current = model.graph.initializers
        kept = [name for name in order if name in current]
        if list(current)[: len(kept)] != kept:
            added = [name for name in current if name not in set(kept)]
            for name in [*kept, *added]:
                model.graph.register_initializer(current.pop(name))


_SMALL_WEIGHT = 64
"""Initializers up to this many elements stay constants for symbolic inference (shape
arguments are among them); larger ones become inputs."""


def _has_unknown_dims(model: ir.Model) -> bool:
    return any(v.shape is None or not all(isinstance(d, int) for d in v.shape)
               for node in model.graph for v in node.outputs)


_FILL_ROUNDS = 8
"""Rounds of contrib shape rules and ONNX inference (each round crosses one unknown op)."""


def _fill_contrib(model: ir.Model) -> None:
    """Contrib ops no inference knows get their shapes from :mod:`.contrib_shapes`.

    After each round ONNX's inference runs again, so default-domain ops behind a
    filled value (the ``Flatten`` after a ``QLinearGlobalAveragePool``) are shaped and
    the next row can use them.
    """
    for _ in range(_FILL_ROUNDS):
        if not fill_contrib_shapes(model):
            return
        ShapeInferencePass(strict_mode=False)(model)


def _refine_symbolically(model: ir.Model) -> None:
    """Give values the static dims onnxruntime's symbolic inference finds (see above)."""
    dims, types = _symbolic_dims(model)
    if not dims:
        return
    for node in model.graph:
        for value in node.outputs:
            found = dims.get(value.name or "")
            if found is None:
                continue
            elem_type = types.get(value.name or "")
            if value.type is None and elem_type:  # a shape without a type is not serialized
                value.type = ir.TensorType(ir.DataType(elem_type))
            known = None if value.shape is None else list(value.shape.dims)
            if known is not None and len(known) != len(found):
                continue
            # Static dims win; among symbolic ones the symbolic inference's names do,
            # since they say which dims are equal (ONNX's ``unk__N`` names do not).
            merged = [known[i] if known is not None and (isinstance(known[i], int)
                                                         or f is None) else f
                      for i, f in enumerate(found)]
            if known is None or merged != known:
                value.shape = ir.Shape(merged)


def _symbolic_dims(model: ir.Model) -> tuple[dict[str, list[int | str | None]], dict[str, int]]:
    """Dims and element types by value name from onnxruntime's symbolic inference.

    Both empty when it fails or cannot be loaded.
    """
    inference_class = _symbolic_inference_class()
    if inference_class is None:
        return {}, {}
    graph = model.graph
    large = [v for v in graph.initializers.values()
             if v.const_value is not None and v.const_value.size > _SMALL_WEIGHT]
    tensors = [v.const_value for v in large]
    try:
        for value in large:
            graph.initializers.pop(value.name)
            value.const_value = None
            graph.inputs.append(value)
        proto = ir.serde.serialize_model(model)
    finally:
        for _ in large:
            graph.inputs.pop()
        for value, tensor in zip(large, tensors, strict=True):
            value.const_value = tensor
            graph.register_initializer(value)
    try:
        # The steps of ``SymbolicShapeInference.infer_shapes``, without its last one: when
        # some shape stays unknown it saves the model to ``sym_shape_infer_temp.onnx`` in
        # the working directory and raises; the partial result is what is wanted here.
        with contextlib.redirect_stdout(None), _quiet_logging():
            inference = inference_class(2**31 - 1, True, False, 0)
            inference._preprocess(proto)
            while inference.run_:
                inference._infer_impl()
            inferred = inference.out_mp_
    except Exception:  # any failure leaves the ONNX inference result
        return {}, {}
    found: dict[str, list[int | str | None]] = {}
    types: dict[str, int] = {}
    for info in inferred.graph.value_info:
        if not info.type.HasField("tensor_type") or \
                not info.type.tensor_type.HasField("shape"):
            continue
        found[info.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in info.type.tensor_type.shape.dim]
        types[info.name] = info.type.tensor_type.elem_type
    return found, types


_INFERENCE: list[Any] = []


def _symbolic_inference_class() -> Any:
    """The ``SymbolicShapeInference`` of onnxruntime, loaded from its file alone.

    ``import onnxruntime.tools.symbolic_shape_infer`` would run ``onnxruntime.tools``'
    ``__init__``, which imports torch whenever it is installed (a second of start-up,
    and a framework the core path must not load); the module itself needs only onnx,
    numpy, sympy and packaging. None when it cannot be loaded.
    """
    if _INFERENCE:
        return _INFERENCE[0]
    import importlib.util
    import sys
    from pathlib import Path

    found = None
    name = "spa_opt._ort_symbolic_shape_infer"
    try:
        package = importlib.util.find_spec("onnxruntime")
        if package is not None and package.origin is not None:
            path = Path(package.origin).parent / "tools" / "symbolic_shape_infer.py"
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is not None and spec.loader is not None and path.exists():
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
                found = module.SymbolicShapeInference
    except Exception:  # an onnxruntime without the tool: ONNX's inference stands
        sys.modules.pop(name, None)
        found = None
    _INFERENCE.append(found)
    return found


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """Silence the symbolic inference's logger (it warns about ops it skips)."""
    import logging

    logger = logging.getLogger("spa_opt._ort_symbolic_shape_infer")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate
