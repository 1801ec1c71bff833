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
   or ``b_`` prefix is dropped), else by values (the only tensor of that shape, or of
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
from typing import Any

import numpy as np

from spa_opt.autodiff import require
from spa_opt.errors import InputError

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


def kept_positions(model: Any, plan: Mapping[str, Any] | str | Path,
                   analysis: str = "couple,group") -> dict[str, dict[int, np.ndarray]]:
    """Initializer name -> {axis: kept positions} of the plan replayed on ``model``."""
    from spa_opt.api import optimize
    from spa_opt.passes._infra.context import PipelineContext
    from spa_opt.passes.group import groups_of
    from spa_opt.passes.pruning.removal import Removal
    from spa_opt.passes.pruning.replay import load_plan, replay

    document = load_plan(plan) if isinstance(plan, str | Path) else plan
    analysed, _ = optimize(model, analysis)
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


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from spa_opt.ir.io import load_model

    loaded = load_model(model) if isinstance(model, str | Path) else model
    return {name: value.const_value.numpy() for name, value in
            loaded.graph.initializers.items() if value.const_value is not None}


def _match_by_values(array: np.ndarray, tensors: Mapping[str, Any], taken: set[str]
                     ) -> tuple[str, str] | None:
    """The one module tensor equal to ``array`` (or its transpose, or folded-scaled)."""
    import torch

    def unique(found: list[str], how: str) -> tuple[str, str] | None:
        return (found[0], how) if len(found) == 1 else None

    candidates = {n: t.detach().cpu().numpy() for n, t in tensors.items()
                  if n not in taken and t.is_floating_point() and t.dtype != torch.bool}
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
            if np.all(cosine[norms > 0] > PARALLEL):
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


def _set_tensor(module: Any, name: str, data: Any) -> None:
    import torch

    prefix, _, leaf = name.rpartition(".")
    owner = module.get_submodule(prefix) if prefix else module
    old = getattr(owner, leaf)
    if isinstance(old, torch.nn.Parameter):
        setattr(owner, leaf, torch.nn.Parameter(data, requires_grad=old.requires_grad))
    else:
        owner._buffers[leaf] = data


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


def prune_module(module: Any, plan: Mapping[str, Any] | str | Path, model: Any, *,
                 names: Mapping[str, str] | None = None, analysis: str = "couple,group",
                 example: Sequence[Any] | None = None, atol: float = 1e-4) -> ModulePruning:
    """Remove from ``module`` the channels ``plan`` removes from ``model``, in place.

    Args:
        module: The ``torch.nn.Module`` that ``model`` was exported from (its trained or
            initial weights: only shapes and, for matching by values, values are read).
        plan: A plan file or dictionary (``--save-plan``).
        model: The ONNX model the plan replays onto (a path or ``onnx_ir.Model``).
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
    mapped: dict[str, tuple[str, str]] = {}
    derived: list[str] = []
    taken: set[str] = set()
    for onnx_name in kept:
        target: tuple[str, str] | None = None
        stripped = onnx_name.removeprefix("p_").removeprefix("b_")
        if names and onnx_name in names:
            target = (names[onnx_name], "names")
        elif onnx_name in tensors:
            target = (onnx_name, "name")
        elif stripped in tensors:
            target = (stripped, "name")
        elif onnx_name in arrays:
            target = _match_by_values(arrays[onnx_name], tensors, taken)
        if target is None:
            if arrays.get(onnx_name, np.zeros((1, 1))).ndim < 2:
                derived.append(onnx_name)
                continue
            raise InputError(f"prune_module: ONNX weight '{onnx_name}' matches no parameter of "
                             "the module by name or values; give names={onnx_name!r: ...}")
        if target[0] not in tensors:
            raise InputError(f"prune_module: names maps '{onnx_name}' to '{target[0]}', which "
                             "the module does not have")
        mapped[onnx_name] = target
        taken.add(target[0])

    slices: dict[str, dict[int, np.ndarray]] = {}
    for onnx_name, (name, how) in mapped.items():
        axes = kept[onnx_name]
        if how == "values (transposed)":
            axes = {1 - axis: positions for axis, positions in axes.items()}
        slices[name] = axes
    producers = {name.rpartition(".")[0]: axes[0] for name, axes in slices.items()
                 if name.endswith(".weight") and 0 in axes and tensors[name].dim() >= 2}
    followed: dict[str, str] = {}
    widths = {prefix: int(tensors[f"{prefix}.weight"].shape[0]) for prefix in producers}
    for norm, (producer, _) in _followers(module, widths).items():
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            name = f"{norm}.{leaf}"
            if name in tensors and tensors[name] is not None and name not in slices:
                slices[name] = {0: producers[producer]}
                followed[name] = f"{producer}.weight"

    shapes = {}
    with torch.no_grad():
        for name, axes in slices.items():
            data = tensors[name].detach()
            before = tuple(data.shape)
            for axis, positions in axes.items():
                if positions.size and int(positions.max()) >= data.shape[axis]:
                    raise InputError(f"prune_module: '{name}' has {data.shape[axis]} entries "
                                     f"on axis {axis}; the plan keeps position "
                                     f"{int(positions.max())}")
                data = data.index_select(axis, torch.as_tensor(positions, dtype=torch.long))
            _set_tensor(module, name, data.clone())
            shapes[name] = (before, tuple(data.shape))
    _update_widths(module)
    result = ModulePruning(mapped, followed, derived, shapes)
    if example is not None:
        result.max_abs_err = _compare(module, plan, model, analysis, example, atol)
    return result


def _compare(module: Any, plan: Mapping[str, Any] | str | Path, model: Any, analysis: str,
             example: Sequence[Any], atol: float) -> float:
    """Run the pruned module and the pruned ONNX model on ``example``; the largest gap."""
    import torch

    from spa_opt.api import optimize
    from spa_opt.ort import session_from_model

    pruned, _ = optimize(model, f"{analysis},prune",
                         plan=plan if not isinstance(plan, str | Path) else str(plan))
    session = session_from_model(pruned)
    feeds = {i.name: (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x))
             for i, x in zip(session.get_inputs(), example, strict=False)}
    expected = session.run(None, feeds)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        got = module(*example)
    module.train(was_training)
    outputs = got if isinstance(got, list | tuple) else [got]
    gap = max(float(np.abs(o.detach().cpu().numpy() - e).max())
              for o, e in zip(outputs, expected, strict=False))
    if gap > atol:
        raise InputError(f"prune_module: the pruned module differs from the pruned ONNX model "
                         f"by {gap:.3g} (> {atol:g}): a width the module keeps in its own "
                         "attributes was not updated, or a tensor was mapped wrongly")
    return gap
