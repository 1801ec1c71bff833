"""Loading and saving models without surprises.

Rules this module enforces, because users feed us files they did not write:

- A model can come as a path, bytes, an ``onnx.ModelProto`` or an ``onnx_ir.Model``.
- External data is memory-mapped by onnx_ir, never read eagerly. Every external
  location is checked up front: an absolute path, a path that leaves the model's
  folder (``..`` or a symlink), a missing file or a range past the end of the file
  is refused with one clear :class:`~spa_opt.errors.InputError`, not at the first
  weight access deep inside a pass.
- Saving never touches the input: the output and its external data are written in
  a temporary folder beside the destination and renamed into place, so a failed
  run leaves neither a partial file nor a half-replaced one. An output that would
  overwrite the input model or a data file it maps is refused.
- Past the 2 GB protobuf limit, external data is chosen automatically.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from spa_opt.errors import InputError

#: Serialized protobuf messages cannot exceed 2 GiB; keep a margin for the graph itself.
PROTOBUF_LIMIT_BYTES = 2**31 - 1
_AUTO_EXTERNAL_BYTES = int(PROTOBUF_LIMIT_BYTES * 0.9)

ModelSource = str | os.PathLike | bytes | onnx.ModelProto | ir.Model


_LOADED_FILES = "spa_opt.external_data_files"


def load_model(source: ModelSource, *, base_dir: str | os.PathLike | None = None) -> ir.Model:
    """Load a model from any supported source into onnx_ir.

    Args:
        source: A path, serialized bytes, an ``onnx.ModelProto`` or an ``ir.Model``
            (returned as is).
        base_dir: Folder that external data locations are relative to, for bytes and
            protos. Paths use their own folder.

    Returns:
        The model, with external tensors memory-mapped lazily.

    Raises:
        InputError: The source is unreadable, not ONNX, or its external data is unsafe.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        proto = _read_proto(path)
        base_dir = path.parent
        label = str(path)
    elif isinstance(source, bytes):
        proto = _parse_proto(source, "the given bytes")
        label = "the given bytes"
    elif isinstance(source, onnx.ModelProto):
        proto = source
        label = "the given ModelProto"
    else:
        raise InputError(f"cannot load a model from a {type(source).__name__}")
    _require_model(proto, label)
    from spa_opt.ir.validate import check_unique_names

    check_unique_names(proto, label)
    try:
        model = ir.from_proto(proto)
    except Exception as error:  # onnx_ir's deserializer names only the graph it was in
        cause = error.__cause__ or error
        detail = " ".join(str(cause).split()) or type(cause).__name__
        raise InputError(f"{label} cannot be read as an ONNX graph: {detail}") from None
    if base_dir is not None:
        ir.external_data.set_base_dir(model.graph, str(base_dir))
    check_external_data(model, base_dir)
    # Pruning replaces mapped tensors with lazy slices of them; remember the layout and
    # the files read, so saving keeps external data and never overwrites its source.
    model.meta[_LOADED_FILES] = external_data_files(model)
    return model


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise InputError(f"cannot read '{path}': no such file")
    if not path.is_file():
        raise InputError(f"cannot read '{path}': not a file")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read '{path}': {error.strerror or error}") from None
    return _parse_proto(data, f"'{path}'")


def _parse_proto(data: bytes, label: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeWarning, ValueError) as error:
        raise InputError(f"{label} is not an ONNX model ({error})") from None
    return proto


def _require_model(proto: onnx.ModelProto, label: str) -> None:
    # Protobuf happily parses many non-ONNX byte strings into an empty message.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise InputError(f"{label} is not an ONNX model (no IR version or no graph)")


def iter_tensors(model: ir.Model) -> Iterator[ir.TensorProtocol]:
    """Yield every tensor the model stores: initializers and tensor attributes, in all graphs."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            if value.const_value is not None:
                yield value.const_value
        for node in graph:
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.TENSOR:
                    yield attr.value
                elif attr.type == ir.AttributeType.TENSORS:
                    yield from attr.value


def external_data_files(model: ir.Model) -> set[Path]:
    """Resolved paths of every external data file the model reads."""
    return {
        Path(tensor.path).resolve()
        for tensor in iter_tensors(model)
        if isinstance(tensor, ir.ExternalTensor)
    }


def check_external_data(model: ir.Model, base_dir: str | os.PathLike | None) -> None:
    """Refuse external data that is outside the model's folder, missing or too short.

    onnx_ir checks containment only when a weight is first mapped, deep inside a
    pass; checking here turns that into one clear error before any work starts.
    """
    root = Path(base_dir).resolve() if base_dir is not None else None
    for tensor in iter_tensors(model):
        if not isinstance(tensor, ir.ExternalTensor):
            continue
        location = str(tensor.location)
        where = f"external data '{location}' of tensor '{tensor.name}'"
        if os.path.isabs(location):
            raise InputError(f"refused {where}: absolute paths are not allowed")
        if root is None:
            raise InputError(f"{where} needs a base folder: load the model from its path")
        # resolve() removes ".." and follows symlinks, so both escapes are caught here.
        path = (root / location).resolve()
        if not path.is_relative_to(root):
            raise InputError(f"refused {where}: it points outside the model's folder")
        if not path.is_file():
            raise InputError(f"{where} is missing: no file '{path}'")
        status = path.stat()
        if status.st_nlink > 1:
            # onnx_ir refuses hard links at first read; say so before any work starts.
            raise InputError(f"refused {where}: the data file has other hard links")
        # onnx_ir reads the tensor's full size whatever `length` claims.
        end = (tensor.offset or 0) + max(tensor.length or 0, tensor.nbytes)
        if end > status.st_size:
            raise InputError(
                f"{where} is truncated: needs {end} bytes, the file has {status.st_size}"
            )


def tensor_bytes(model: ir.Model) -> int:
    """Bytes of tensor data the model holds (what its protobuf would carry inline)."""
    return sum(tensor.nbytes for tensor in iter_tensors(model))


@contextlib.contextmanager
def _inline_external_tensors(model: ir.Model, initializers: bool) -> Iterator[None]:
    """Hold mapped tensors in memory while saving, then restore them.

    onnx_ir writes external references it does not re-home unchanged, and the saved
    model would point at a data file that is not beside it. Tensor attributes
    (``Constant`` nodes) are never re-homed, so they are always inlined; initializers
    only when saving without external data.
    """
    swapped_values = [
        (value, value.const_value)
        for graph in model.graphs()
        for value in graph.initializers.values()
        if initializers and isinstance(value.const_value, ir.ExternalTensor)
    ]
    swapped_attrs = [
        (node, name, attr)
        for node in model.graph.all_nodes()
        for name, attr in node.attributes.items()
        if attr.type == ir.AttributeType.TENSOR and isinstance(attr.value, ir.ExternalTensor)
    ]
    try:
        for value, tensor in swapped_values:
            value.const_value = ir.Tensor(tensor.numpy(), name=tensor.name)
        for node, name, attr in swapped_attrs:
            node.attributes[name] = ir.AttrTensor(
                name, ir.Tensor(attr.value.numpy(), name=attr.value.name)
            )
        yield
    finally:
        for value, tensor in swapped_values:
            value.const_value = tensor
        for node, name, attr in swapped_attrs:
            node.attributes[name] = attr


def _replace_pair(staging: Path, folder: Path, model_name: str, data_name: str | None) -> None:
    """Move the staged model (and data) into place; on failure restore the previous pair.

    The data goes first, so an existing model file never meets a half-written data
    file; the previous data is kept as a hard link (or copy) until the model is in.
    """
    if data_name is None:
        os.replace(staging / model_name, folder / model_name)
        return
    target = folder / data_name
    backup = staging / f"{data_name}.previous"
    had_previous = target.exists()
    if had_previous:
        try:
            os.link(target, backup)
        except OSError:
            shutil.copy2(target, backup)
    os.replace(staging / data_name, target)
    try:
        os.replace(staging / model_name, folder / model_name)
    except BaseException:
        if had_previous:
            os.replace(backup, target)
        else:
            target.unlink(missing_ok=True)
        raise


def save_model(
    model: ir.Model,
    path: str | os.PathLike,
    *,
    external_data: bool | None = None,
    protected: Iterable[str | os.PathLike] = (),
) -> None:
    """Write ``model`` to ``path`` atomically.

    Args:
        model: The model to save; it is not modified.
        path: Destination ``.onnx`` file. Its external data, if any, goes beside it
            as ``<name>.data``.
        external_data: Force (True) or forbid (False) external data; None chooses it
            when the tensors would not fit in one protobuf message or when the
            model already reads external data.
        protected: Files that must not be overwritten (the input model).

    Raises:
        InputError: The destination is unusable or would overwrite a protected file,
            or the model cannot be saved without external data.
    """
    destination = Path(path)
    folder = destination.parent.resolve()
    if not folder.is_dir():
        raise InputError(f"cannot write '{destination}': no folder '{destination.parent}'")
    size = tensor_bytes(model)
    mapped = external_data_files(model) | model.meta.get(_LOADED_FILES, set())
    if external_data is None:
        # A model that came with external data keeps that layout.
        external_data = size > _AUTO_EXTERNAL_BYTES or bool(mapped)
    elif not external_data and size > _AUTO_EXTERNAL_BYTES:
        raise InputError(
            f"the model holds {size / 2**30:.2f} GiB of tensors, over protobuf's 2 GiB limit: "
            "save it with external data"
        )
    data_name = destination.name + ".data"
    written = [folder / destination.name] + ([folder / data_name] if external_data else [])
    forbidden = {Path(p).resolve() for p in protected} | mapped
    for target in written:
        if target.resolve() in forbidden:
            raise InputError(f"refused to write '{target}': it would overwrite the input")

    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=folder))
    except OSError as error:  # a read-only folder, a full disk: the user's environment
        raise InputError(f"cannot write '{destination}': {error.strerror or error}") from None
    try:
        staged_model = staging / destination.name
        with _inline_external_tensors(model, initializers=not external_data):
            ir.save(model, staged_model, external_data=data_name if external_data else None)
        _replace_pair(staging, folder, destination.name, data_name if external_data else None)
    except OSError as error:
        raise InputError(f"cannot write '{destination}': {error.strerror or error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
