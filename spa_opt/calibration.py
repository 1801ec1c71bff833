"""Calibration inputs: the model inputs a data-aware pass (``obspa``) runs the model on.

``obspa`` estimates each layer's Hessian ``H = 2 X Xᵀ / N`` from activations that
onnxruntime computes on these inputs, so they must be valid feeds for the model: the
right names, dtypes and shapes, token ids inside the embedding table. Rules:

- The inputs are ``model.graph.inputs`` minus initializers. Every array is stacked
  along axis 0, the batch axis, with the input's declared rank; a rank-0 input has no
  batch axis and its one value goes into every batch.
- Dim 0 may have any size. When it is a fixed ``k``, :meth:`Calibration.batches` feeds
  exactly ``k`` samples at a time (``k = 1``: one at a time, each keeping its leading
  axis of 1) and drops a remainder of fewer than ``k``. Other symbolic dims take their
  size from ``dims`` (the run's ``input_dims``, from ``--input-dim``), keyed by dim name
  (``{"seq": 128}``) or by ``"input:axis"`` (``{"x:2": 224}``, for unnamed dims); a size
  needed and not given is an error (see :mod:`spa_opt.inputs`).
- ``.npz``: keys are the input names (a one-input model also takes one array saved
  positionally, ``np.savez(f, x)``'s ``arr_0``; a key naming something else is refused:
  the file was most likely made for another model); rank, dtype kind and static dims
  are checked, floats cast to the input's float type (must stay finite), integers to
  its integer type (must stay in range); every array has the same number of samples.
  ``.npy``: the same, one-input models only. Arrays are fed as stored: ``mean``/``std``
  are refused (normalise before saving).
- Decoders with a key/value cache: ``input_ids`` alone is enough; the cache (empty,
  past length 0), ``attention_mask`` (ones), ``position_ids`` (from 0) and the other
  inputs of :mod:`spa_opt.decoder_inputs` that the file leaves out are built for every
  batch. Arrays in the file override them.
- Image folder: ``*.png, *.jpg, *.jpeg, *.bmp, *.webp, *.tif, *.tiff`` (any case),
  sorted by name, for a model with exactly one float input of rank 4. Layout: NCHW when
  dim 1 is 1 or 3, else NHWC when the last dim is 1 or 3. Each image is decoded with
  Pillow (first frame, 8-bit), converted to ``"L"`` (1 channel) or ``"RGB"`` (3; alpha
  dropped), resized to the declared ``(H, W)`` with Pillow's bilinear filter (which
  antialiases when shrinking), divided by 255, then ``(x - mean) / std`` per channel.
  Defaults ``mean=0, std=1`` (no normalisation); ImageNet models usually want
  ``mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)``.
- ``mean``/``std`` hold one value per channel, or one for all; the channel axis is the
  image one (NCHW dim 1, NHWC last); any other float input takes single values only.
- Noise, float inputs: ``white`` is i.i.d. normal, then ``mean + std * z`` per channel.
  ``pink`` (rank 4 with a layout found as for images): per sample and channel a field
  with a 1/f amplitude spectrum (random phases, amplitude ``1 / max(f, 1 / max(H, W))``,
  ``f`` in cycles per pixel over the 2-D spatial frequencies of ``numpy.fft``),
  standardised over its positions to zero mean and unit std, then ``mean + std * z``;
  other ranks, other rank-4 inputs and 1x1 images get white noise.
- Noise, integer inputs: uniform ids in ``[0, rows)`` when an embedding ``Gather`` reads
  them, directly or through Cast, Reshape and other ops that keep values (the smallest
  table wins), else 0 or 1 (masks, flags), the bound ``--verify`` uses too
  (:func:`spa_opt.inputs.token_id_bound`); bool inputs: all True. One
  ``numpy.random.default_rng(seed)`` draws everything, inputs in graph order, so a seed
  reproduces the data exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx_ir as ir

from spa_opt.decoder_inputs import TOKEN_IDS, buildable, complete_feeds
from spa_opt.errors import InputError
from spa_opt.inputs import (
    LAYOUT_AXES,
    InputSpec,
    format_dims,
    given_size,
    image_layout,
    model_inputs,
    per_channel_values,
    required_size,
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


@dataclasses.dataclass
class Calibration:
    """Model inputs for calibration, stacked along axis 0 (the batch axis).

    Attributes:
        feeds: Graph input name -> array ``(samples, ...)`` in the input's dtype.
        source: Where the data came from, for reports: ``"npz:calib.npz"``,
            ``"images:dir (64 files)"``, ``"noise:pink"``, ``"noise:white"``.
        labels: Integer class labels ``(samples,)`` when the data has them (a ``.npz``
            member named ``label``, ``labels``, ``target`` or ``targets``), for the
            criteria that need a supervised loss (taylor, snip, grasp, crop).
    """

    feeds: dict[str, np.ndarray]
    source: str
    labels: np.ndarray | None = None
    dims: dict[str, int] = dataclasses.field(default_factory=dict)
    """Sizes of symbolic dims (``--input-dim``), for the inputs built per batch."""

    @property
    def samples(self) -> int:
        """Length of axis 0 (1 when every input is a rank-0 scalar)."""
        return next((a.shape[0] for a in self.feeds.values() if a.ndim), 1)

    def batches(self, model: ir.Model, size: int) -> Iterator[dict[str, np.ndarray]]:
        """Feeds of at most ``size`` samples each, as views of the stored arrays.

        A fixed declared batch dim ``k`` overrides ``size``: onnxruntime refuses any
        other batch, so batches hold exactly ``k`` samples (``k = 1``: each sample keeps
        its leading axis of 1) and a remainder of fewer than ``k`` is dropped.

        Raises:
            InputError: ``size < 1``, an input of ``model`` has no data, inputs fix
                different batch sizes, or fewer samples than the fixed batch.
        """
        if size < 1:
            raise InputError(f"calibration batch size must be at least 1, got {size}")
        inputs = model_inputs(model)
        built = buildable(inputs) if TOKEN_IDS in self.feeds else set()
        if missing := [i.name for i in inputs if i.name not in self.feeds and i.name not in built]:
            raise InputError(f"calibration data ({self.source}) has no data for input(s) "
                             f"{', '.join(missing)}")
        fixed = _fixed_batch(inputs)
        step = fixed or size
        if fixed and step > self.samples:
            raise InputError(f"the model takes batches of exactly {step}; calibration data "
                             f"({self.source}) has {self.samples} samples")
        feeds = {i.name: self.feeds[i.name] for i in inputs if i.name in self.feeds}
        for start in range(0, self.samples - (self.samples % step if fixed else 0), step):
            batch = {k: a[start:start + step] if a.ndim else a for k, a in feeds.items()}
            yield complete_feeds(inputs, batch, self.dims) if built else batch

    def batch_step(self, model: ir.Model, size: int) -> int:
        """Samples in each of :meth:`batches`' feeds: a fixed declared batch, else ``size``."""
        return _fixed_batch(model_inputs(model)) or size

    def subset(self, count: int, seed: int) -> Calibration:
        """The first ``count`` samples, copied so the full arrays can be freed.

        ``seed`` is accepted for a stable signature and unused: sources are already in
        a fixed order (names sorted, noise seeded), so the first samples are reproducible.

        Raises:
            InputError: ``count < 1``.
        """
        del seed
        if count < 1:
            raise InputError(f"calibration sample count must be at least 1, got {count}")
        total = self.samples
        if count >= total:
            return Calibration(dict(self.feeds), self.source, self.labels, dict(self.dims))
        feeds = {k: a[:count].copy() if a.ndim else a for k, a in self.feeds.items()}
        labels = None if self.labels is None else self.labels[:count].copy()
        return Calibration(feeds, f"{self.source} (first {count} of {total})", labels,
                           dict(self.dims))


def hold_back(calibration: Calibration, count: int) -> tuple[Calibration, Calibration | None]:
    """``(the rest, the last count samples)``: inputs the passes never see, for checking.

    ``(calibration, None)`` when there are not more than ``count`` samples: holding all
    of them back would leave the passes nothing.
    """
    total = calibration.samples
    if count < 1 or total <= count:
        return calibration, None

    def part(start: int, stop: int, label: str) -> Calibration:
        feeds = {k: a[start:stop].copy() if a.ndim else a for k, a in calibration.feeds.items()}
        labels = None if calibration.labels is None else calibration.labels[start:stop].copy()
        return Calibration(feeds, f"{calibration.source} ({label})", labels,
                           dict(calibration.dims))

    kept = total - count
    return (part(0, kept, f"first {kept} of {total}; last {count} held back"),
            part(kept, total, f"last {count} of {total}, held back"))


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass(frozen=True)
class CalibrationSpec:
    """Where calibration inputs come from, before there is a model to check them against.

    What the CLI's ``--calib``, ``--calib-mean``, ``--calib-std`` and ``--calib-limit``
    say. The sizes of symbolic dims (``--input-dim``) are not part of it: they are the
    run's ``input_dims``, which :meth:`load` takes, so that calibration files, noise,
    synthesis and ``--verify`` read the same sizes from one place.
    """

    path: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    limit: int | None = None

    def load(self, model: ir.Model, dims: Mapping[str, int] | None = None) -> Calibration:
        """Read the inputs for ``model`` (see :func:`load_calibration`).

        Args:
            model: The model the inputs are for.
            dims: Sizes of symbolic dims, by name or ``"input:axis"`` (the run's
                ``input_dims``).
        """
        return load_calibration(self.path, model, limit=self.limit, mean=self.mean,
                                std=self.std, dims=dims)


def load_calibration(path: str | os.PathLike, model: ir.Model, *, limit: int | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                     dims: Mapping[str, int] | None = None) -> Calibration:
    """Calibration inputs from a folder of images, a ``.npz`` or a ``.npy`` file.

    Args:
        path: A folder (images) or a ``.npz``/``.npy`` file; see the module rules.
        model: The model the inputs are for; its declared inputs decide the checks.
        limit: Keep only the first ``limit`` samples (images in name order).
        mean: Per-channel mean subtracted from images in [0, 1]; images only.
        std: Per-channel std images are divided by; images only.
        dims: Sizes of symbolic dims, by name or ``"input:axis"``.

    Raises:
        InputError: The path or its content does not fit the model (one line).
    """
    path = Path(path)
    dims = dict(dims or {})
    if limit is not None and limit < 1:
        raise InputError(f"calibration limit must be at least 1, got {limit}")
    if path.is_dir():
        return _load_images(path, model, limit, mean, std, dims)
    if not path.exists():
        raise InputError(f"calibration data '{path}' does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".npy"):
        raise InputError(f"calibration data '{path}': expected a folder of images, a .npz "
                         "or a .npy file")
    if mean is not None or std is not None:
        raise InputError(f"mean/std apply to image folders; arrays in '{path.name}' are fed "
                         "as stored (normalise them before saving)")
    inputs = model_inputs(model)
    if suffix == ".npy" and len(inputs) != 1:
        raise InputError(f"'{path.name}' holds one array but the model has {len(inputs)} "
                         f"inputs ({', '.join(i.name for i in inputs)}): use a .npz keyed by "
                         "input name")
    feeds: dict[str, np.ndarray] = {}
    seen: dict[str, int] = {}  # named dim -> size in the first array that has it
    labels: np.ndarray | None = None
    try:
        if suffix == ".npy":  # memory-mapped: only the kept samples are read
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            feeds[inputs[0].name] = _check(path.name, "array", inputs[0], array, limit, dims, seen)
        else:
            with np.load(path, allow_pickle=False) as npz:  # members read one by one
                keys = list(npz.files)
                names = {i.name for i in inputs}
                label_key = next((k for k in LABEL_KEYS if k in keys and k not in names), None)
                if label_key is not None:
                    keys.remove(label_key)
                    labels = _labels(path.name, label_key, npz[label_key], limit)
                optional = buildable(inputs) if TOKEN_IDS in keys else set()
                for inp, key in _match_keys(path.name, inputs, keys, optional):
                    feeds[inp.name] = _check(path.name, key, inp, npz[key], limit, dims, seen)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise InputError(f"cannot read calibration data '{path}': {_line(error)}") from None
    counts = {name: a.shape[0] for name, a in feeds.items() if a.ndim}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{k}={n}" for k, n in counts.items())
        raise InputError(f"{path.name}: arrays differ in samples along axis 0 ({listed})")
    if 0 in counts.values():
        raise InputError(f"{path.name}: arrays hold no samples")
    if labels is not None and counts and len(labels) != next(iter(counts.values())):
        raise InputError(f"{path.name}: {len(labels)} labels for "
                         f"{next(iter(counts.values()))} samples")
    return Calibration(feeds, f"{suffix[1:]}:{path}", labels, dims)


LABEL_KEYS = ("label", "labels", "target", "targets")
"""``.npz`` members read as class labels rather than model inputs (unless an input has
that name)."""


def _labels(label: str, key: str, array: np.ndarray, limit: int | None) -> np.ndarray:
    """Class labels: a 1-D integer array (a float array of whole numbers is accepted)."""
    array = np.asarray(array)
    if array.ndim != 1 or (array.dtype.kind == "f" and not np.all(array == np.round(array))) \
            or array.dtype.kind not in "iuf":
        raise InputError(f"{label}: '{key}' must be a 1-D array of integer class labels, got "
                         f"{array.dtype} {array.shape}")
    array = array.astype(np.int64)
    return array[:limit] if limit is not None else array


POSITIONAL_KEY = "arr_0"
"""The key ``np.savez`` gives an array passed without a name."""


def _match_keys(label: str, inputs: list[InputSpec], keys: list[str],
                optional: set[str] | None = None) -> list[tuple[InputSpec, str]]:
    """Pair inputs with keys; ``optional`` inputs may be missing (they are built)."""
    names = [i.name for i in inputs]
    if len(inputs) == 1 and keys == [POSITIONAL_KEY]:
        return [(inputs[0], keys[0])]
    if not set(keys) & set(names):
        raise InputError(f"{label}: no key matches an input name: keys {keys}, the model's "
                         f"inputs {names}")
    optional = optional or set()
    missing = [n for n in names if n not in keys and n not in optional]
    extra = [k for k in keys if k not in names]
    if missing or extra:
        parts = [f"{what} {found}" for what, found in (("missing", missing), ("extra", extra))
                 if found]
        raise InputError(f"{label}: keys must be the model's input names {names}; "
                         f"{'; '.join(parts)}")
    return [(i, i.name) for i in inputs if i.name in keys]


_KINDS = {"float": ("f", "a float array"), "int": ("iu", "an integer array"),
          "bool": ("b", "a bool array")}


def _check(label: str, key: str, inp: InputSpec, array: np.ndarray, limit: int | None,
           dims: Mapping[str, int], seen: dict[str, int]) -> np.ndarray:
    """``array`` checked against ``inp``, cut to ``limit`` samples, cast to its dtype."""
    where = f"{label}: '{key}'"
    got = tuple(array.shape)
    if array.ndim != len(inp.declared):
        raise InputError(f"{where} has shape {got}, expected rank {len(inp.declared)} "
                         f"{format_dims(inp.declared)} for input '{inp.name}'")
    for axis in range(1, array.ndim):
        dim, want = inp.declared[axis], given_size(inp, axis, dims)
        if want is None and dim is not None:  # a named dim: the same size in every array
            want = seen.setdefault(dim, got[axis])
        if want is not None and got[axis] != want:
            raise InputError(f"{where} has shape {got}, expected {format_dims(inp.declared)} "
                             f"with dim {axis} = {want}")
    allowed, wanted = _KINDS[inp.kind]
    if array.dtype.kind not in allowed:
        raise InputError(f"{where} has dtype {array.dtype}, expected {wanted} for input "
                         f"'{inp.name}' ({inp.dtype})")
    if array.ndim and limit is not None:
        array = array[:limit]
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(inp.dtype)
    if inp.kind == "float" and not np.isfinite(cast).all():
        raise InputError(f"{where} has NaN or inf values as {inp.dtype}")
    if inp.kind == "int" and not np.array_equal(cast, array):
        raise InputError(f"{where} has values outside the range of {inp.dtype}")
    return cast


def _load_images(folder: Path, model: ir.Model, limit: int | None,
                 mean: Sequence[float] | None, std: Sequence[float] | None,
                 dims: Mapping[str, int]) -> Calibration:
    inputs = model_inputs(model)
    if len(inputs) != 1 or inputs[0].kind != "float" or len(inputs[0].declared) != 4:
        shown = ", ".join(f"{i.name} {i.dtype} {format_dims(i.declared)}" for i in inputs)
        raise InputError(f"an image folder needs a model with one float input of rank 4; "
                         f"this one has: {shown or 'no inputs'}")
    inp = inputs[0]
    layout = image_layout([given_size(inp, axis, dims) for axis in range(4)])
    if layout is None:
        raise InputError(f"input '{inp.name}' {format_dims(inp.declared)}: cannot tell the "
                         "channel axis (dim 1 or the last dim must be 1 or 3)")
    c_axis, h_axis, w_axis = LAYOUT_AXES[layout]
    channels = required_size(inp, c_axis, dims)
    height, width = required_size(inp, h_axis, dims), required_size(inp, w_axis, dims)
    shift = per_channel_values((0.0,) if mean is None else mean, channels, "mean", inp.name,
                               True)
    scale = per_channel_values((1.0,) if std is None else std, channels, "std", inp.name, True)
    files = sorted((p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name)
    if not files:
        raise InputError(f"calibration folder '{folder}' has no images "
                         f"({', '.join('*' + s for s in IMAGE_SUFFIXES)})")
    files = files[:limit]
    sample = (channels, height, width) if layout == "NCHW" else (height, width, channels)
    out = np.empty((len(files), *sample), dtype=inp.dtype)
    for index, file in enumerate(files):
        pixels = _read_image(file, "L" if channels == 1 else "RGB", width, height)
        pixels = (pixels / np.float32(255) - shift) / scale
        out[index] = pixels.transpose(2, 0, 1) if layout == "NCHW" else pixels
    return Calibration({inp.name: out}, f"images:{folder} ({len(files)} files)")


def _read_image(file: Path, mode: str, width: int, height: int) -> np.ndarray:
    """``file`` as float32 ``(H, W, C)`` in [0, 255]."""
    from PIL import Image  # only image folders need Pillow; keep start-up fast

    bilinear = getattr(Image, "Resampling", Image).BILINEAR  # Pillow < 9.1 has no Resampling
    try:
        with Image.open(file) as opened:
            image = opened.convert(mode)
        if image.size != (width, height):
            image = image.resize((width, height), bilinear)
        pixels = np.asarray(image, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise InputError(f"cannot read image '{file}': {_line(error)}") from None
    return pixels[..., None] if pixels.ndim == 2 else pixels


def save_calibration(calibration: Calibration, path: str | os.PathLike) -> None:
    """Write ``calibration.feeds`` (and ``labels`` as ``label``) to a ``.npz``, atomically.

    The file is np.savez's format, written member by member with ``zipfile`` so that
    any input name works as a key (``np.savez(**feeds)`` breaks on a name like
    ``file``). Floats numpy cannot store natively (bfloat16, float8) are saved as
    float32 and other such types as int64; loading casts them back to the input's type.
    A temporary file beside ``path`` is renamed into place, so readers never see a
    partial file.

    Raises:
        InputError: ``path`` is not ``.npz`` or its folder does not exist.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise InputError(f"calibration file '{path}' must end in .npz")
    if not path.parent.is_dir():
        raise InputError(f"cannot write '{path}': no such folder")
    handle, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write_calibration(calibration, stream)
        os.replace(staging, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(staging)
        raise


def write_calibration(calibration: Calibration, stream: BinaryIO) -> None:
    """Write ``calibration`` to an open binary stream in :func:`save_calibration`'s format.

    For a caller that stages several files and renames them together (the CLI writes
    ``--save-calib`` with the model: all of them land or none does).
    """
    with zipfile.ZipFile(stream, "w") as archive:
        members = dict(calibration.feeds)
        if calibration.labels is not None and "label" not in members:
            members["label"] = calibration.labels
        for name, array in members.items():
            array = np.asarray(array)
            if array.dtype.kind == "V":
                array = array.astype(np.float32 if "float" in array.dtype.name else np.int64)
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def _fixed_batch(inputs: list[InputSpec]) -> int:
    """The batch size the model's inputs fix (0: none fixed).

    Raises:
        InputError: inputs fix different batch sizes.
    """
    fixed = {i.declared[0] for i in inputs if i.declared and isinstance(i.declared[0], int)}
    if len(fixed) > 1:
        raise InputError(f"the model's inputs fix different batch sizes {sorted(fixed)}")
    return next(iter(fixed)) if fixed else 0
