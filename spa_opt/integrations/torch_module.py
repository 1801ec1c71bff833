"""A pruning plan applied to the PyTorch module an ONNX model was exported from.

Prune in ONNX, fine-tune in PyTorch with the same channels removed::

    spa-opt -p couple,group,obspa,prune --target-flops 0.5 --save-plan plan.json m.onnx out.onnx

    from spa_opt.integrations.torch_module import prune_module
    result = prune_module(net, "plan.json", "m.onnx", example=(images,))
    # net now has the pruned widths; result.max_abs_err compares it with out.onnx

How it works (docs/autodiff.md, "Back to training with a plan"):

1. The plan is replayed onto the ONNX model exactly as ``--plan`` does (``couple,group``
   and :func:`spa_opt.passes.pruning.replay.replay`), which gives, for every
   initializer, the positions each axis keeps.
2. Each pruned initializer is mapped to a module parameter or buffer: by ``names``
   (a dictionary the caller gives), else by the same name (the dynamo exporter and the
   TorchScript exporter without constant folding keep ``state_dict`` names; a ``p_``
   or ``b_`` prefix is dropped, and torch.export's ``p_layers_0_conv_weight`` finds
   ``layers.0.conv.weight``), else by values (the only tensor of that shape, or of
   its transpose for a 2-D weight, equal to it; or, for a weight that an exporter
   folded a BatchNorm into, the only one whose output-channel slices are parallel to
   it). A pruned weight (2-D or more) that maps to nothing is an error naming it.
3. BatchNorm modules an exporter folded into the convolution or linear layer before
   them (so the ONNX graph has no tensor of theirs) follow that layer's output
   channels; the layer is found with ``torch.fx`` (or, where the module cannot be
   traced, as the last convolution or linear layer registered before the BatchNorm,
   of matching width).
4. Every mapped tensor is sliced (``index_select`` per axis, ``requires_grad`` kept),
   and the widths stored on standard modules are updated (``Conv*d`` channels and
   depthwise ``groups``, ``Linear`` features, ``BatchNorm*d``/``LayerNorm`` sizes,
   ``Embedding`` dimension). Widths a module keeps in its own Python attributes (a
   hand-written attention's ``num_heads``) are the caller's to update: with
   ``example`` given, the pruned module is run and compared with the pruned ONNX model
   in onnxruntime, so a mismatch shows at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spa_opt.autodiff import require
from spa_opt.errors import InputError

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

#: Cosine above which two output-channel slices count as parallel (a folded scale).
PARALLEL = 0.999


@dataclasses.dataclass
class ModulePruning:
    """What :func:`prune_module` did."""

    #: ONNX initializer name -> (module tensor name, how it was matched).
    mapped: dict[str, tuple[str, str]]
    #: Module tensor name -> the layer tensor whose output channels it followed.
    followed: dict[str, str]
    #: Pruned 1-D ONNX initializers with no module counterpart (folded biases).
    derived: list[str]
    #: Module tensor name -> shape before -> after.
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]
    #: Largest absolute difference to the pruned ONNX model in onnxruntime (with example).
    max_abs_err: float | None = None


def kept_positions(model: str | Path | ir.Model | onnx.ModelProto,
                   plan: Mapping[str, Any] | str | Path,
                   analysis: str = "couple,group") -> dict[str, dict[int, np.ndarray]]:
    """Initializer name -> {axis: kept positions} of the plan replayed on ``model``."""
    from spa_opt.api import optimize
    from spa_opt.passes._infra.context import PipelineContext
    from spa_opt.passes.group import groups_of
    from spa_opt.passes.pruning.removal import Removal
    from spa_opt.passes.pruning.replay import load_plan, replay

    document = load_plan(plan) if isinstance(plan, str | Path) else plan
    analysed, _ = optimize(_fresh(model), analysis)
    groups = groups_of(analysed, PipelineContext.of(analysed))
    selection, _ = replay(document, groups)
    kept: dict[str, dict[int, np.ndarray]] = {}
    for value, axes in Removal(groups, selection).by_value().values():
        if value.const_value is None or not value.name:
            continue
        entry = kept.setdefault(value.name, {})
        for removal in axes:
            if removal.positions.size:
                entry[removal.axis] = removal.kept
    return {name: axes for name, axes in kept.items() if axes}


def _fresh(model: str | Path | ir.Model | onnx.ModelProto) -> ir.Model:
    """A model of our own: the passes work in place, the caller's model stays as it was."""
    import onnx
    import onnx_ir

    from spa_opt.ir.io import load_model

    if isinstance(model, str | Path):
        return load_model(model)
    if isinstance(model, onnx.ModelProto):
        return onnx_ir.from_proto(model)
    if isinstance(model, onnx_ir.Model):
        return onnx_ir.from_proto(onnx_ir.to_proto(model))
    raise InputError(f"prune_module: model must be a path, an onnx_ir.Model or an "
                     f"onnx.ModelProto, not {type(model).__name__}")


def _initializers(model: str | Path | ir.Model | onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every initializer's values, read without changing ``model``."""
    import onnx
    import onnx_ir

    from spa_opt.ir.io import load_model

    if isinstance(model, str | Path):
        model = load_model(model)
    elif isinstance(model, onnx.ModelProto):
        model = onnx_ir.from_proto(model)
    return {name: value.const_value.numpy() for name, value in
            model.graph.initializers.items() if value.const_value is not None}


def _match_by_values(array: np.ndarray, tensors: Mapping[str, Any], taken: set[str]
                     ) -> tuple[str, str] | None:
    """The one module tensor equal to ``array`` (or its transpose, or folded-scaled)."""
    import torch

    def unique(found: list[str], how: str) -> tuple[str, str] | None:
        return (found[0], how) if len(found) == 1 else None

    seen: set[int] = set()  # a tied tensor (several names, one tensor) is one candidate
    candidates = {}
    for n, t in tensors.items():
        if n in taken or not isinstance(t, torch.Tensor) or not t.is_floating_point() or \
                id(t) in seen:
            continue
        seen.add(id(t))
        candidates[n] = t.detach().float().cpu().numpy()
    same = [n for n, t in candidates.items()
            if t.shape == array.shape and np.allclose(t, array, rtol=1e-3, atol=1e-5)]
    if match := unique(same, "values"):
        return match
    if array.ndim == 2:
        flipped = [n for n, t in candidates.items() if t.shape == array.T.shape
                   and np.allclose(t, array.T, rtol=1e-3, atol=1e-5)]
        if match := unique(flipped, "values (transposed)"):
            return match
    if array.ndim >= 2:
        rows = array.reshape(array.shape[0], -1)
        parallel = []
        for name, tensor in candidates.items():
            if tensor.shape != array.shape:
                continue
            other = tensor.reshape(tensor.shape[0], -1)
            norms = np.linalg.norm(rows, axis=1) * np.linalg.norm(other, axis=1)
            cosine = np.abs((rows * other).sum(1)) / np.maximum(norms, 1e-30)
            if (norms > 0).any() and np.all(cosine[norms > 0] > PARALLEL):  # not all zero
                parallel.append(name)
        return unique(parallel, "values (scaled per output channel: a folded norm)")
    return None


def _followers(module: Any, producers: Mapping[str, int]) -> dict[str, tuple[str, str]]:
    """Norm module prefix -> (producer module prefix, how) for norms of pruned outputs.

    ``producers``: prefix of each layer whose output channels the plan prunes -> its
    output width before pruning.
    """
    import torch
    from torch import nn

    norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    found: dict[str, tuple[str, str]] = {}
    try:
        graph = torch.fx.symbolic_trace(module).graph
    except Exception:  # any module fx cannot trace: fall back below
        graph = None
    if graph is not None:
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(module.get_submodule(node.target),
                                                          norms):
                continue
            source = node.args[0] if node.args else None
            if getattr(source, "op", None) == "call_module" and source.target in producers:
                found[node.target] = (source.target, "fx")
        return found
    previous: str | None = None
    for name, sub in module.named_modules():
        if (isinstance(sub, norms) and previous in producers
                and sub.num_features == producers[previous]):
            found[name] = (previous, "registration order")
        if isinstance(sub, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear):
            previous = name
    return found


def _set_tensor(module: Any, names: Sequence[str], data: Any) -> None:
    """Give every name in ``names`` (one tensor, tied where there are several) ``data``."""
    import torch

    new = None
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        owner = module.get_submodule(prefix) if prefix else module
        old = getattr(owner, leaf)
        if isinstance(old, torch.nn.Parameter):
            if new is None:
                new = torch.nn.Parameter(data, requires_grad=old.requires_grad)
            setattr(owner, leaf, new)
        else:
            owner._buffers[leaf] = data if new is None else new


def _update_widths(module: Any) -> None:
    """Make the standard modules' width attributes agree with their sliced tensors."""
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            depthwise = sub.groups > 1 and sub.groups == sub.in_channels == sub.out_channels
            sub.out_channels = sub.weight.shape[0]
            if depthwise:
                sub.groups = sub.out_channels
            sub.in_channels = sub.weight.shape[1] * sub.groups
        elif isinstance(sub, nn.ConvTranspose1d | nn.ConvTranspose2d | nn.ConvTranspose3d):
            sub.in_channels = sub.weight.shape[0]
            sub.out_channels = sub.weight.shape[1] * sub.groups
        elif isinstance(sub, nn.Linear):
            sub.out_features, sub.in_features = sub.weight.shape
        elif isinstance(sub, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
            source = sub.weight if sub.weight is not None else sub.running_mean
            if source is not None:
                sub.num_features = source.shape[0]
        elif isinstance(sub, nn.LayerNorm) and sub.weight is not None:
            sub.normalized_shape = tuple(sub.weight.shape)
        elif isinstance(sub, nn.Embedding):
            sub.num_embeddings, sub.embedding_dim = sub.weight.shape


def prune_module(module: Any, plan: Mapping[str, Any] | str | Path,
                 model: str | Path | ir.Model | onnx.ModelProto, *,
                 names: Mapping[str, str] | None = None, analysis: str = "couple,group",
                 example: Sequence[Any] | None = None, atol: float = 1e-4) -> ModulePruning:
    """Remove from ``module`` the channels ``plan`` removes from ``model``, in place.

    Args:
        module: The ``torch.nn.Module`` that ``model`` was exported from (its trained or
            initial weights: only shapes and, for matching by values, values are read).
        plan: A plan file or dictionary (``--save-plan``).
        model: The ONNX model the plan replays onto (a path, an ``onnx_ir.Model`` or an
            ``onnx.ModelProto``); it is read, never changed.
        names: ONNX initializer name -> module ``state_dict`` name, for names that
            neither match nor can be found by values (see the module docstring).
        analysis: The analysis passes the plan was made with (add ``fold-constants``
            first when the pruning pipeline had it).
        example: Inputs to check the pruned module on: it must match the pruned ONNX
            model in onnxruntime within ``atol``, else :class:`InputError`.
        atol: Tolerance of that check.
    """
    require("prune_module")
    import torch

    kept = kept_positions(model, plan, analysis)
    arrays = _initializers(model)
    tensors = dict(module.state_dict(keep_vars=True))
    mapped = _map_names(kept, arrays, tensors, names or {})
    derived = [name for name in kept if name not in mapped]

    slices: dict[str, dict[int, np.ndarray]] = {}
    for onnx_name, (name, how) in mapped.items():
        axes = kept[onnx_name]
        if how.endswith("(transposed)"):
            axes = {1 - axis: positions for axis, positions in axes.items()}
        if name in slices and not _same_slices(slices[name], axes):
            raise InputError(f"prune_module: two ONNX weights map to '{name}' but the plan "
                             f"keeps different channels of them (one is '{onnx_name}')")
        slices[name] = axes
    producers = {}
    for name, axes in slices.items():
        prefix = name.rpartition(".")[0]
        axis = _output_axis(module, prefix)
        if name.endswith(".weight") and axis in axes and tensors[name].dim() >= 2:
            producers[prefix] = (axes[axis], int(tensors[name].shape[axis]) * (
                module.get_submodule(prefix).groups if axis == 1 else 1))
    followed: dict[str, str] = {}
    widths = {prefix: width for prefix, (_, width) in producers.items()}
    for norm, (producer, _) in _followers(module, widths).items():
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            name = f"{norm}.{leaf}"
            if name in tensors and tensors[name] is not None and name not in slices:
                slices[name] = {0: producers[producer][0]}
                followed[name] = f"{producer}.weight"

    ties: dict[int, list[str]] = {}
    for name, tensor in tensors.items():
        if tensor is not None:
            ties.setdefault(id(tensor), []).append(name)
    new_data, shapes = {}, {}
    with torch.no_grad():  # every slice is checked before the module is touched
        for name, axes in slices.items():
            data = tensors[name].detach()
            before = tuple(data.shape)
            for axis, positions in axes.items():
                if positions.size and int(positions.max()) >= data.shape[axis]:
                    raise InputError(f"prune_module: '{name}' has {data.shape[axis]} entries "
                                     f"on axis {axis}; the plan keeps position "
                                     f"{int(positions.max())}")
                data = data.index_select(axis, torch.as_tensor(positions, dtype=torch.long))
            new_data[name] = data.clone()
            shapes[name] = (before, tuple(data.shape))
        for name, data in new_data.items():
            _set_tensor(module, ties.get(id(tensors[name]), [name]), data)
    _update_widths(module)
    result = ModulePruning(mapped, followed, derived, shapes)
    if example is not None:
        result.max_abs_err = _compare(module, plan, model, analysis, example, atol)
    return result


def _map_names(kept: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
               tensors: Mapping[str, Any], names: Mapping[str, str]
               ) -> dict[str, tuple[str, str]]:
    """ONNX initializer -> (module tensor, how), for every pruned initializer that has one.

    A pruned 1-D initializer with no counterpart is a folded bias (left out); a pruned
    weight with none, or one whose shape differs from its counterpart's (a module of
    other widths), is an error naming it.
    """
    dotted = {}
    for name in tensors:  # torch.export's p_layers_0_conv_weight for layers.0.conv.weight
        dotted.setdefault(name.replace(".", "_"), []).append(name)
    mapped: dict[str, tuple[str, str]] = {}
    taken: set[str] = set()
    for onnx_name in kept:
        array = arrays.get(onnx_name)
        stripped = onnx_name.removeprefix("p_").removeprefix("b_")
        target: tuple[str, str] | None = None
        if onnx_name in names:
            target = (names[onnx_name], "names")
        elif onnx_name in tensors:
            target = (onnx_name, "name")
        elif stripped in tensors:
            target = (stripped, "name")
        elif len(dotted.get(stripped, [])) == 1:
            target = (dotted[stripped][0], "name")
        elif array is not None:  # an untaken tensor first; else a tied one taken before
            target = _match_by_values(array, tensors, taken) or \
                _match_by_values(array, tensors, set())
        if target is None:
            if array is None or array.ndim < 2:
                continue
            raise InputError(f"prune_module: ONNX weight '{onnx_name}' matches no parameter "
                             f"of the module by name or values; give names={{{onnx_name!r}: "
                             "'<module state_dict name>'}")
        if target[0] not in tensors:
            raise InputError(f"prune_module: names maps '{onnx_name}' to '{target[0]}', which "
                             "the module does not have")
        if array is not None:
            target = _checked_shape(onnx_name, array, target, tuple(tensors[target[0]].shape))
        mapped[onnx_name] = target
        taken.add(target[0])
    return mapped


def _checked_shape(onnx_name: str, array: np.ndarray, target: tuple[str, str],
                   shape: tuple[int, ...]) -> tuple[str, str]:
    """``target``, marked transposed when only the transpose fits; an error when neither."""
    name, how = target
    if tuple(array.shape) == shape:
        return target
    if array.ndim == 2 and tuple(array.shape[::-1]) == shape:
        return name, how if how.endswith("(transposed)") else f"{how} (transposed)"
    raise InputError(f"prune_module: '{name}' has shape {list(shape)} but the ONNX weight "
                     f"'{onnx_name}' it maps to has {list(array.shape)}: the module is not "
                     "the network the model was exported from")


def _same_slices(a: Mapping[int, np.ndarray], b: Mapping[int, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _output_axis(module: Any, prefix: str) -> int:
    """The output-channel axis of a layer's weight: 1 for ConvTranspose, else 0."""
    from torch import nn

    try:
        layer = module.get_submodule(prefix) if prefix else module
    except AttributeError:
        return 0
    transposed = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if isinstance(layer, transposed) else 0


def _compare(module: Any, plan: Mapping[str, Any] | str | Path,
             model: str | Path | ir.Model | onnx.ModelProto, analysis: str,
             example: Sequence[Any], atol: float) -> float:
    """Run the pruned module and the pruned ONNX model on ``example``; the largest gap."""
    import torch

    from spa_opt.api import optimize
    from spa_opt.ort import session_from_model

    pruned, _ = optimize(_fresh(model), f"{analysis},prune",
                         plan=plan if not isinstance(plan, str | Path) else str(plan))
    session = session_from_model(pruned)
    inputs = session.get_inputs()
    if len(inputs) != len(example):
        raise InputError(f"prune_module: example has {len(example)} inputs, the model takes "
                         f"{len(inputs)} ({', '.join(i.name for i in inputs)})")
    feeds = {i.name: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
             for i, x in zip(inputs, example, strict=True)}
    expected = session.run(None, feeds)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            got = module(*example)
    finally:
        module.train(was_training)
    outputs = _tensors(got)
    if len(outputs) < len(expected):
        raise InputError(f"prune_module: the module gives {len(outputs)} outputs, the model "
                         f"{len(expected)}")
    gap = max(float(np.abs(o.detach().float().cpu().numpy() - e).max())
              for o, e in zip(outputs, expected, strict=False))
    if gap > atol:
        raise InputError(f"prune_module: the pruned module differs from the pruned ONNX model "
                         f"by {gap:.3g} (> {atol:g}): a width the module keeps in its own "
                         "attributes was not updated, or a tensor was mapped wrongly")
    return gap


def _tensors(output: Any) -> list[Any]:
    """A module's output as a flat list of tensors (a tensor, a tuple, a ModelOutput)."""
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if hasattr(output, "to_tuple"):  # transformers' ModelOutput
        output = output.to_tuple()
    elif isinstance(output, Mapping):
        output = list(output.values())
    found: list[Any] = []
    for item in output if isinstance(output, list | tuple) else [output]:
        if isinstance(item, torch.Tensor):
            found.append(item)
        elif isinstance(item, list | tuple | Mapping) or hasattr(item, "to_tuple"):
            found.extend(_tensors(item))
    return found
