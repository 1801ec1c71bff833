"""The candidates of bench/autodiff_backends.py: one adapter per autodiff backend.

Each turns an ONNX model into something that gives outputs and gradients by initializer
name: onnx2torch (with a stub torchvision, measurement only), jaxonnxruntime (plain, with
its dynamic-shape flag, with x64) and spa-opt's TorchGraph.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from autodiff_reference import bn_statistics, graph_inputs, short  # noqa: E402


def available_backends() -> list[str]:
    """The backends whose packages import here (``spa`` only once ``spa_opt.autodiff`` does)."""
    found = []
    if importlib.util.find_spec("onnx2torch") is not None:
        found += ["onnx2torch", "onnx2torch-op17"]
    if importlib.util.find_spec("jaxonnxruntime") is not None:
        found += ["jax", "jax-dynshape", "jax-x64"]
    try:
        importlib.import_module("spa_opt.autodiff")
        found.append("spa")
    except ImportError:
        pass
    return found

BACKENDS = ("onnx2torch", "onnx2torch-op17", "jax", "jax-dynshape", "jax-x64", "spa")


def stub_torchvision() -> bool:
    """Put a stub ``torchvision`` into ``sys.modules`` unless the real one imports.

    Returns:
        Whether the stub was installed.
    """
    try:
        import torchvision  # noqa: F401
        return False
    except Exception:  # not installed, or the CUDA-only wheel failing beside CPU torch
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]

    def missing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("torchvision stub (bench/autodiff_backends.py): op not available")

    package = types.ModuleType("torchvision")
    package.__stub__ = True  # type: ignore[attr-defined]
    ops = types.ModuleType("torchvision.ops")
    for name in ("nms", "roi_align", "box_convert", "batched_nms"):
        setattr(ops, name, missing)
    package.ops = ops  # type: ignore[attr-defined]
    sys.modules["torchvision"] = package
    sys.modules["torchvision.ops"] = ops
    return True


# --------------------------------------------------------------------------- inputs



class Backend:
    """What the child asks of a backend after ``convert``."""

    keys = "name"
    note = ""

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Build the differentiable function (timed as *convert s*)."""
        raise NotImplementedError

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays."""
        raise NotImplementedError

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients of ``sum(output0 * weight)`` by initializer name and by input name."""
        raise NotImplementedError


class TorchBackend(Backend):
    """A torch module called with the graph inputs in order; ``self.tensors`` maps names."""

    def __init__(self) -> None:
        import torch

        torch.set_num_threads(1)
        self.module: Any = None
        self.tensors: dict[str, list[tuple[Any, Callable[[Any], Any]]]] = {}
        self.inputs: list[str] = []

    def _args(self, feeds: dict[str, Any], grad: bool) -> list[Any]:
        import torch

        args = []
        for name in self.inputs:
            tensor = torch.from_numpy(feeds[name].copy())
            if grad and tensor.is_floating_point():
                tensor.requires_grad_(True)
            args.append(tensor)
        return args

    def _outputs(self, args: list[Any]) -> list[Any]:
        outs = self.module(*args)
        if not isinstance(outs, list | tuple):
            outs = [outs]
        return list(outs)

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays (no autograd)."""
        import torch

        with torch.no_grad():
            return [o.detach().numpy() for o in self._outputs(self._args(feeds, False))]

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients w.r.t. every mapped float initializer and every float input."""
        import numpy as np
        import torch

        args = self._args(feeds, True)
        leaves = list({id(t): t for copies in self.tensors.values() for t, _ in copies
                       if t.requires_grad}.values())
        float_args = [a for a in args if a.requires_grad]
        out0 = self._outputs(args)[0]
        loss = (out0 * torch.from_numpy(weight)).sum()
        got = torch.autograd.grad(loss, leaves + float_args, allow_unused=True)
        by_id = {id(t): g for t, g in zip(leaves, got[: len(leaves)], strict=True)}
        weights = {}
        for name, copies in self.tensors.items():
            total = None
            for tensor, back in copies:
                if not tensor.requires_grad:
                    continue
                g = by_id.get(id(tensor))  # None: unused by the loss, a zero gradient
                g = back(np.zeros(tuple(tensor.shape), np.float32) if g is None
                         else g.detach().numpy())
                total = g if total is None else total + g
            if total is not None:
                weights[name] = total
        names = [n for n, a in zip(self.inputs, args, strict=True) if a.requires_grad]
        inputs = {n: None if g is None else g.detach().numpy()
                  for n, g in zip(names, got[len(leaves):], strict=True)}
        return weights, inputs


class Onnx2Torch(TorchBackend):
    """``onnx2torch.convert``; weights found by value (see the module docstring)."""

    def __init__(self, opset: int | None = None) -> None:
        super().__init__()
        self.opset = opset
        stub_torchvision()
        if getattr(sys.modules["torchvision"], "__stub__", False):
            self.note = "torchvision stubbed"
        importlib.import_module("onnx2torch")  # imported here, not in the timed convert

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Version-convert (``-op17``) and convert to a ``GraphModule``."""
        import onnx
        from onnx2torch import convert

        if self.opset is not None:
            model = onnx.version_converter.convert_version(model, self.opset)
        self.module = convert(model).eval()
        self.inputs = [v.name for v in graph_inputs(model)]

    def map_weights(self, model: Any) -> None:
        """Map float ONNX initializers to the module's tensors holding equal values."""
        import numpy as np
        from onnx import helper, numpy_helper

        pool = {}
        for _, t in [*self.module.named_parameters(), *self.module.named_buffers()]:
            if t.is_floating_point():
                pool[id(t)] = t
        arrays = {t_id: t.detach().numpy() for t_id, t in pool.items()}
        floats = [i for i in model.graph.initializer
                  if np.issubdtype(helper.tensor_dtype_to_np_dtype(i.data_type), np.floating)]
        claimed: dict[int, int] = {}
        for init in floats:
            value = numpy_helper.to_array(init)
            same, transposed, reshaped = [], [], []
            for t_id, array in arrays.items():
                if array.size != value.size:
                    continue
                if array.shape == value.shape and np.array_equal(array, value):
                    same.append((t_id, lambda g: g))
                elif (value.ndim == 2 and array.shape == value.T.shape
                      and np.array_equal(array, value.T)):
                    transposed.append((t_id, lambda g: g.T))
                elif np.array_equal(array.reshape(-1), value.reshape(-1)):
                    reshaped.append((t_id, (lambda shape: lambda g: g.reshape(shape))(value.shape)))
            copies = same or transposed or reshaped  # as is first: a transposed copy of a
            for t_id, _ in copies:                   # weight (an untied head) is another one
                claimed[t_id] = claimed.get(t_id, 0) + 1
            if copies:
                self.tensors[init.name] = [(pool[t_id], back) for t_id, back in copies]
        ambiguous = sum(1 for count in claimed.values() if count > 1)
        for t_id in claimed:
            if not pool[t_id].requires_grad:
                pool[t_id].requires_grad_(True)
        self.keys = f"value {len(self.tensors)}/{len(floats)}"
        if ambiguous:
            self.keys += f", {ambiguous} ambiguous"
        self.statistics = [t for name, t in self.module.named_buffers()
                           if name.endswith(("running_mean", "running_var"))]

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """As ``TorchBackend.grads``, without the BatchNorm statistics if autograd refuses.

        ``native_batch_norm`` is not differentiable w.r.t. its running mean and var; when
        the call fails for that reason those buffers stop requiring grad (and get no
        gradient) and the call is repeated.
        """
        try:
            return super().grads(feeds, weight)
        except RuntimeError as error:
            if "not differentiable" not in str(error) or not self.statistics:
                raise
            for tensor in self.statistics:
                tensor.requires_grad_(False)
            self.statistics = []
            self.note = ", ".join(filter(None, [
                self.note, "no grad w.r.t. BatchNorm running mean/var (autograd refuses)"]))
            return super().grads(feeds, weight)


class Spa(TorchBackend):
    """``spa_opt.autodiff.TorchGraph``, parameters keyed by initializer name."""

    def __init__(self) -> None:
        super().__init__()
        importlib.import_module("spa_opt.autodiff")  # not in the timed convert

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Build ``TorchGraph`` from the onnx_ir model."""
        import onnx_ir as ir

        from spa_opt.autodiff import TorchGraph

        self.module = TorchGraph(ir.from_proto(model))
        self.module.eval()
        self.inputs = [v.name for v in graph_inputs(model)]

    def map_weights(self, model: Any) -> None:
        """``named_initializers()`` when the module has it, else its named parameters."""
        import numpy as np
        from onnx import helper

        if hasattr(self.module, "named_initializers"):
            found = self.module.named_initializers()
            items = found.items() if isinstance(found, dict) else found
        else:
            items = self.module.named_parameters()
        for name, tensor in items:
            if tensor.is_floating_point():
                tensor.requires_grad_(True)
                self.tensors[name] = [(tensor, lambda g: g)]
        floats = [i.name for i in model.graph.initializer
                  if np.issubdtype(helper.tensor_dtype_to_np_dtype(i.data_type), np.floating)]
        missing = {n for n in floats if n not in self.tensors}
        self.keys = "name" if not missing else f"name {len(floats) - len(missing)}/{len(floats)}"
        if missing and missing <= bn_statistics(model):
            self.keys += " (rest: BN stats)"


class Jax(Backend):
    """``jaxonnxruntime.call_onnx.call_onnx_model``; params keyed by initializer name."""

    def __init__(self, static_inputs: bool = False, x64: bool = False) -> None:
        import jax

        if x64:
            jax.config.update("jax_enable_x64", True)
        self.static_inputs = static_inputs
        self.step: Any = None
        importlib.import_module("jaxonnxruntime.call_onnx")  # not in the timed convert

    def _config(self) -> Any:
        from jaxonnxruntime import config_class

        return config_class.jaxort_only_allow_initializers_as_static_args(
            not self.static_inputs)

    def convert(self, model: Any, feeds: dict[str, Any]) -> None:
        """Trace the model on ``feeds``; split params into float (differentiated) and rest."""
        import jax
        import numpy as np
        from jaxonnxruntime import call_onnx

        self.inputs = [v.name for v in graph_inputs(model)]
        with self._config():
            self.fn, params = call_onnx.call_onnx_model(model, [feeds[n] for n in self.inputs])
        self.floats = {k: v for k, v in params.items()
                       if np.issubdtype(np.asarray(v).dtype, np.floating)}
        self.rest = {k: v for k, v in params.items() if k not in self.floats}
        self.floats = jax.device_put(self.floats)  # held as jax arrays, as in training

    def forward(self, feeds: dict[str, Any]) -> list[Any]:
        """All outputs as numpy arrays (eager)."""
        import numpy as np

        with self._config():
            outs = self.fn({**self.floats, **self.rest}, [feeds[n] for n in self.inputs])
        return [np.asarray(o) for o in outs]

    def _make_step(self, feeds: dict[str, Any]) -> Callable[..., Any]:
        import jax
        import jax.numpy as jnp
        import numpy as np

        float_inputs = [n for n in self.inputs if np.issubdtype(feeds[n].dtype, np.floating)]

        def loss(floats: dict[str, Any], xs: dict[str, Any], others: dict[str, Any],
                 weight: Any) -> Any:
            merged = {**others, **xs}
            outs = self.fn({**floats, **self.rest}, [merged[n] for n in self.inputs])
            return jnp.sum(outs[0] * weight)

        eager = jax.value_and_grad(loss, argnums=(0, 1))
        jitted = jax.jit(eager)

        def call(floats: dict[str, Any], all_feeds: dict[str, Any], weight: Any) -> Any:
            xs = {n: all_feeds[n] for n in float_inputs}
            others = {n: all_feeds[n] for n in self.inputs if n not in xs}
            with self._config():
                if self.step is None:
                    try:
                        result = jax.block_until_ready(jitted(floats, xs, others, weight))
                        self.step = jitted
                        return result
                    except Exception as error:  # jit refused: fall back to eager
                        self.note = f"no jit ({short(error, 60)})"
                        self.step = eager
                return jax.block_until_ready(self.step(floats, xs, others, weight))

        return call

    def grads(self, feeds: dict[str, Any], weight: Any
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Gradients w.r.t. every float initializer and every float input."""
        import numpy as np

        if not hasattr(self, "call"):
            self.call = self._make_step(feeds)
        _, (g_weights, g_inputs) = self.call(self.floats, feeds, weight)
        return ({k: np.asarray(v) for k, v in g_weights.items()},
                {k: np.asarray(v) for k, v in g_inputs.items()})


def make_backend(name: str) -> Backend:
    """A fresh backend object by its command-line name."""
    if name == "onnx2torch":
        return Onnx2Torch()
    if name == "onnx2torch-op17":
        return Onnx2Torch(opset=17)
    if name == "jax":
        return Jax()
    if name == "jax-dynshape":
        return Jax(static_inputs=True)
    if name == "jax-x64":
        return Jax(static_inputs=True, x64=True)
    if name == "spa":
        return Spa()
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------- child


