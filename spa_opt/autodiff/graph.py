"""An ONNX graph as a torch module: the autodiff backend's one moving part.

:class:`TorchGraph` runs the onnx_ir graph node by node in torch eager mode with the
rules of :mod:`spa_opt.autodiff.ops`. Every float initializer is an ``nn.Parameter``
known by its ONNX name, so gradients come back keyed the way every spa-opt pass names
weights, training updates the very tensors the ONNX file holds, and
:meth:`TorchGraph.write_back` puts them into the model without a re-export. Integer
initializers and BatchNorm running statistics are buffers; in training mode
BatchNormalization uses batch statistics and updates its running buffers in place.

Shapes are computed eagerly, so dynamic shapes work as they do in onnxruntime; the
price is Python overhead per node, small beside the convolutions of a real model.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import onnx_ir as ir
import torch

from spa_opt.autodiff.ops import RULES, NodeCall
from spa_opt.autodiff.ops.shape import constant_tensor
from spa_opt.errors import InputError
from spa_opt.ir.tensors import set_constant

_DOMAINS = ("", "ai.onnx")


def unsupported_ops(model: ir.Model) -> list[str]:
    """Operators of ``model``'s main graph the backend has no rule for, sorted."""
    return sorted({f"{n.domain + '::' if n.domain not in _DOMAINS else ''}{n.op_type}"
                   for n in model.graph
                   if n.domain not in _DOMAINS or n.op_type not in RULES})


def _statistics(graph: ir.Graph) -> set[str]:
    """Names of BatchNorm running statistics: state, not weights."""
    return {node.inputs[i].name for node in graph if node.op_type == "BatchNormalization"
            for i in (3, 4) if len(node.inputs) > i and node.inputs[i] is not None}


class TorchGraph(torch.nn.Module):
    """An ONNX model as a differentiable torch module.

    Args:
        model: The model; it is read, never changed (until :meth:`write_back`).
        dtype: The working float type: float initializers, float inputs and casts to
            any float type use it (float64 for SynFlow's products of many weights).

    Raises:
        InputError: the graph has operators without a rule (all are named).
    """

    def __init__(self, model: ir.Model, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if missing := unsupported_ops(model):
            raise InputError(f"the autodiff backend has no rule for {', '.join(missing)}")
        graph = model.graph
        self.float_dtype = dtype
        opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 18))
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self._calls = [NodeCall(node, False, dtype, {}, opset) for node in graph]
        self._keys: dict[str, str] = {}
        self._dtypes: dict[str, np.dtype] = {}
        self.weights = torch.nn.ParameterDict()
        state = _statistics(graph)
        for index, (name, value) in enumerate(graph.initializers.items()):
            if value.const_value is None:
                continue
            tensor = constant_tensor(value.const_value, self._calls[0] if self._calls else
                                     NodeCall(None, False, dtype, {}, opset))  # type: ignore[arg-type]
            key = f"t{index}"
            self._keys[name] = key
            self._dtypes[name] = value.const_value.numpy().dtype
            if tensor.is_floating_point() and name not in state:
                self.weights[key] = torch.nn.Parameter(tensor)
            else:
                self.register_buffer(key, tensor)
        self._last_use = self._last_uses(graph)

    def _last_uses(self, graph: ir.Graph) -> dict[int, list[str]]:
        """Per node index, the values no later node reads (freed after it runs)."""
        last: dict[str, int] = {}
        for index, node in enumerate(graph):
            for value in node.inputs:
                if value is not None and value.name and value.name not in self._keys:
                    last[value.name] = index
        keep = set(self.output_names)
        frees: dict[int, list[str]] = {}
        for name, index in last.items():
            if name not in keep:
                frees.setdefault(index, []).append(name)
        return frees

    def initializer(self, name: str) -> torch.Tensor:
        """The parameter or buffer holding ONNX initializer ``name``."""
        key = self._keys[name]
        return self.weights[key] if key in self.weights else getattr(self, key)

    def named_initializers(self, trainable: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        """``(onnx_name, tensor)`` of the parameters (``trainable``) or of every initializer."""
        for name, key in self._keys.items():
            if key in self.weights or not trainable:
                yield name, self.initializer(name)

    def _feed(self, value: torch.Tensor | np.ndarray) -> torch.Tensor:
        tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
        return tensor.to(self.float_dtype) if tensor.is_floating_point() else tensor

    def run(self, feeds: Mapping[str, torch.Tensor | np.ndarray],
            capture: Iterable[str] = ()) -> dict[str, torch.Tensor]:
        """Run the graph; return its outputs and the intermediate values named in ``capture``."""
        if missing := [n for n in self.input_names if n not in feeds]:
            raise InputError(f"no value for graph input(s) {', '.join(missing)}")
        keep = set(capture)
        env: dict[str, torch.Tensor] = {n: self.initializer(n) for n in self._keys}
        env.update({n: self._feed(feeds[n]) for n in self.input_names})
        captured: dict[str, torch.Tensor] = {n: env[n] for n in keep if n in env}
        for index, call in enumerate(self._calls):
            call.training = self.training
            node = call.node
            args = [env[v.name] if v is not None and v.name else None for v in node.inputs]
            while args and args[-1] is None:
                args.pop()
            out = RULES[node.op_type](call, *args)
            outs = out if isinstance(out, tuple) else (out,)
            for value, tensor in zip(node.outputs, outs, strict=False):
                if value.name:
                    env[value.name] = tensor
                    if value.name in keep:
                        captured[value.name] = tensor
            for name in self._last_use.get(index, ()):
                env.pop(name, None)
        captured.update({n: env[n] for n in self.output_names})
        return captured

    def forward(self, *inputs: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, ...]:
        """The graph's outputs for positional inputs in graph-input order."""
        outputs = self.run(dict(zip(self.input_names, inputs, strict=False)))
        return tuple(outputs[n] for n in self.output_names)

    @torch.no_grad()
    def write_back(self, model: ir.Model) -> None:
        """Put every initializer's current value (weights and running statistics) into ``model``.

        ``model`` must have the initializers this module was built from, with the same
        shapes; each keeps its ONNX dtype.

        Raises:
            InputError: an initializer is missing or changed shape.
        """
        for name, tensor in self.named_initializers(trainable=False):
            value = model.graph.initializers.get(name)
            if value is None or tuple(value.shape or ()) != tuple(tensor.shape):
                raise InputError(f"initializer '{name}' is missing from the model or has "
                                 f"another shape")
            set_constant(value, tensor.detach().cpu().numpy().astype(self._dtypes[name]))
