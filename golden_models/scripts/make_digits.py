"""Train small CNNs and a ViT on scikit-learn's digits: the trained golden models.

The other golden models carry random weights: good for checking that pruning keeps a graph
valid and its index maps exact, useless for judging what pruning costs in accuracy. These
are trained, so a pruning criterion (L1, FPGM, structured OBS, ...) can be compared by the
test accuracy it keeps, and data-driven criteria have calibration images.

Data: ``sklearn.datasets.load_digits`` (1,797 8x8 grey images with 17 levels, 0..16, shipped
inside scikit-learn; nothing is downloaded), split by ``train_test_split(test_size=0.2,
random_state=0, stratify=labels)`` into 1,437 training and 360 test images.

Preprocessing, exactly, for a float image ``p`` of shape (N, 8, 8):

1. ``x = p / 16`` (range [0, 1]), shape (N, 1, 8, 8);
2. ``x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)``;
3. ``x = (x - MEAN) / STD`` with MEAN and STD the scalar mean and (population) standard
   deviation over all pixels of the upsampled TRAINING images, written to accuracy.json.

Models, input ``image`` (batch, 1, 32, 32), output ``logits`` (batch, 10), seeded:

- ``resnet``: basic-block ResNet, stem 3x3 16, stages 16/32/64/128 of 2 blocks (stride 2 at
  stages 2-4, 1x1 conv + BN projection shortcuts), global average pool, Linear;
- ``mobilenetv2``: stride-2 stem conv 3x3 16, then MobileNetV2 inverted residuals (x6
  expansion, ReLU6, depthwise 3x3, linear 1x1 projection, residual at stride 1 and equal
  width) in stages 16/24/32/64 of 1/2/2/2 blocks (stride 2 at stages 2-4), 1x1 conv to
  256, pool, Linear;
- ``vit``: ViT with a 4x4 conv patch embedding (64 tokens), class token, learned positions,
  dim 64, depth 4, 4 heads with explicit q/k/v/out Linear projections, MLP 128 with GELU,
  pre-norm LayerNorm.

Training: AdamW with a linear warm-up and cosine decay (per step), label smoothing 0.1,
batch 64, augmentation by random integer shifts of up to ``SHIFT`` pixels (at 32x32, i.e.
up to half an original pixel) in both axes, zero (background) padding, applied before the
normalisation. Seeded, ``torch.use_deterministic_algorithms(True)`` and one thread (one
reduction order whatever the core count); another CPU or torch build can still change the
last bits and so the trained weights.

Outputs in ``golden_models/digits/``:

- ``resnet.onnx``, ``mobilenetv2.onnx``, ``vit.onnx``: ``torch.onnx.export(...,
  dynamo=True)``, opset 20, dynamic batch; the exporter folds BatchNorm into the convs;
- ``resnet_bn.onnx``: the same ResNet through the TorchScript exporter (``dynamo=False``,
  opset 17, ``training=TrainingMode.EVAL``, ``do_constant_folding=False``, which skips the
  eval peephole that fuses Conv+BN), so it keeps its ``BatchNormalization`` nodes with the
  scale, bias and running statistics as initializers (the exporter's deduplication of
  equal initializers is undone, see ``untie_initializers``);
- ``test.npz``: ``image`` (360, 1, 32, 32) float32, preprocessed, and ``label`` int64;
- ``calib.npz``: ``image`` (128, 1, 32, 32) float32: preprocessed training images without
  labels, drawn with ``np.random.default_rng(CALIB_SEED)``, for calibration;
- ``accuracy.json``: per file the onnxruntime test accuracy, parameter counts and training
  settings, plus the preprocessing constants and seeds.

Every file is normalised by ``make_torch.normalise`` (IR version capped at 10, stack-trace
metadata dropped, weights inline), must pass the full ONNX checker and match PyTorch within
1e-4 on the whole test batch in onnxruntime; the script asserts this.

Regenerate (5-8 minutes on one CPU core) with::

    pip install torch==2.13.0 && pip install ".[golden]"
    python golden_models/scripts/make_digits.py

then rewrite the expected groups of the four models with ``python
golden_models/scripts/update_expected.py digits/resnet digits/mobilenetv2 digits/vit
digits/resnet_bn``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from digits_models import SIZE, MobileNetV2, ResNet, ViT
from make_torch import ATOL, DYNAMO_OPSET, TORCHSCRIPT_OPSET, normalise, param_count
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import Tensor, nn

OUT = Path(__file__).resolve().parent.parent / "digits"
SPLIT_SEED = 0
TEST_SIZE = 0.2
CALIB_SEED = 0
CALIB_SIZE = 128
SHIFT = 2
BATCH = 64
LABEL_SMOOTHING = 0.1
THREADS = 1


# --------------------------------------------------------------------------- data


def upsample(pixels: np.ndarray) -> Tensor:
    """Scale digits to [0, 1] and upsample them to 32x32.

    Args:
        pixels: Images (N, 8, 8) or (N, 64) with values 0..16.

    Returns:
        Float tensor (N, 1, 32, 32) in [0, 1], before normalisation.
    """
    x = torch.from_numpy(np.asarray(pixels, dtype=np.float32).reshape(-1, 1, 8, 8)) / 16.0
    return F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class Data:
    """The split in [0, 1] (before normalisation) with the training statistics."""

    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor
    mean: float
    std: float

    def normalise(self, x: Tensor) -> Tensor:
        """Apply the training-set normalisation.

        Args:
            x: Upsampled images in [0, 1].

        Returns:
            ``(x - mean) / std``.
        """
        return (x - self.mean) / self.std


def load() -> Data:
    """Load, split and upsample the digits; measure the training mean and std.

    Returns:
        The data.
    """
    digits = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        digits.images, digits.target, test_size=TEST_SIZE, random_state=SPLIT_SEED,
        stratify=digits.target)
    train = upsample(x_train)
    mean = float(train.double().mean())
    std = float(train.double().std(unbiased=False))
    return Data(train, torch.from_numpy(y_train.astype(np.int64)), upsample(x_test),
                torch.from_numpy(y_test.astype(np.int64)), mean, std)


def shift(x: Tensor, generator: torch.Generator) -> Tensor:
    """Shift every image by its own random integer offset, padding with zeros.

    Args:
        x: Images (N, 1, H, W) in [0, 1].
        generator: The seeded generator.

    Returns:
        Shifted images of the same shape.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT))
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, 1, h, w + 2 * SHIFT)
    cropped = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, 1, h, w)
    return cropped.gather(3, cols)


# --------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Recipe:
    """How one model is built and trained."""

    build: Callable[[], nn.Module]
    seed: int
    epochs: int
    lr: float
    weight_decay: float
    warmup_epochs: int


MODELS: dict[str, Recipe] = {
    "resnet": Recipe(ResNet, seed=1, epochs=20, lr=3e-3, weight_decay=0.05, warmup_epochs=1),
    "mobilenetv2": Recipe(MobileNetV2, seed=2, epochs=40, lr=3e-3, weight_decay=0.05,
                          warmup_epochs=1),
    "vit": Recipe(ViT, seed=3, epochs=80, lr=1e-3, weight_decay=0.05, warmup_epochs=5),
}


def schedule(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor: linear warm-up, then cosine decay to zero.

    Args:
        step: The current optimiser step.
        total: All steps.
        warmup: Warm-up steps.

    Returns:
        The factor of the base learning rate.
    """
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Eval-mode accuracy on one batch.

    Args:
        model: The model (left in eval mode).
        images: Normalised images.
        labels: Class labels.

    Returns:
        The fraction classified correctly.
    """
    model.eval()
    return float((model(images).argmax(1) == labels).float().mean())


def train(name: str, data: Data) -> tuple[nn.Module, float]:
    """Build and train one seeded model.

    Args:
        name: Key in ``MODELS``.
        data: The digits.

    Returns:
        ``(eval-mode model, seconds spent training)``.
    """
    recipe = MODELS[name]
    torch.manual_seed(recipe.seed)
    return fit(recipe.build(), recipe, data, name)


def fit(model: nn.Module, recipe: Recipe, data: Data, name: str) -> tuple[nn.Module, float]:
    """Train ``model`` with ``recipe``'s schedule (``recipe.build`` is not called).

    Any module mapping normalised images to logits works, e.g. a pruned ONNX graph as a
    torch module: the benchmark bench/any_time.py trains its pruned models with this loop.

    Args:
        model: The module to train, in place.
        recipe: Epochs, learning rate, weight decay, warm-up and the seed of the batch
            order and augmentation.
        data: The digits.
        name: Shown in the progress lines.

    Returns:
        ``(eval-mode model, seconds spent training)``.
    """
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=recipe.lr)
    steps_per_epoch = math.ceil(len(data.train) / BATCH)
    total = recipe.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: schedule(s, total, recipe.warmup_epochs * steps_per_epoch))
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    generator = torch.Generator().manual_seed(recipe.seed)
    test = data.normalise(data.test)
    start = time.perf_counter()
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(data.train), generator=generator)
        total_loss = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i:i + BATCH]
            x = data.normalise(shift(data.train[idx], generator))
            loss = loss_fn(model(x), data.train_labels[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            total_loss += float(loss) * len(idx)
        if (epoch + 1) % 5 == 0 or epoch + 1 == recipe.epochs:
            acc = accuracy(model, test, data.test_labels)
            print(f"  {name} epoch {epoch + 1:3d}: loss {total_loss / len(order):.4f}, "
                  f"test accuracy {acc:.4f}", flush=True)
    seconds = time.perf_counter() - start
    model.eval()
    return model, seconds


# --------------------------------------------------------------------------- export


def export(model: nn.Module, x: Tensor, path: Path, keep_batchnorm: bool = False) -> None:
    """Export with a dynamic batch dimension, input ``image``, output ``logits``.

    Args:
        model: Eval-mode model.
        x: Example batch (size > 1).
        path: Output file.
        keep_batchnorm: False: the dynamo exporter (folds BatchNorm into the convs). True:
            the TorchScript exporter without constant folding, which keeps
            ``BatchNormalization`` nodes.
    """
    names = {"input_names": ["image"], "output_names": ["logits"]}
    if keep_batchnorm:
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          do_constant_folding=False, training=torch.onnx.TrainingMode.EVAL,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
                          **names)
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=DYNAMO_OPSET,
                          external_data=False, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch")},), **names)


def check(path: Path, proto: onnx.ModelProto, x: Tensor, expected: Tensor) -> np.ndarray:
    """Full checker, dynamic batch and agreement with PyTorch in onnxruntime.

    Args:
        path: The saved file.
        proto: The loaded model.
        x: The test batch.
        expected: The PyTorch logits on it.

    Returns:
        The onnxruntime logits.

    Raises:
        AssertionError: If the batch is not dynamic or the logits differ by more than ATOL.
    """
    onnx.checker.check_model(proto, full_check=True)
    for value in (*proto.graph.input, *proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        assert dim.dim_param and not dim.HasField("dim_value"), f"{path.name}: static batch"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"image": x.numpy()})
    err = float(np.max(np.abs(got - expected.numpy())))
    assert err <= ATOL, f"{path.name}: max abs error {err:.3g} > {ATOL}"
    (single,) = sess.run(None, {"image": x[:1].numpy()})
    assert np.allclose(single, got[:1], atol=ATOL), f"{path.name}: batch 1 differs"
    return got


def untie_initializers(proto: onnx.ModelProto) -> int:
    """Replace every Identity of an initializer by a copy of that initializer.

    The TorchScript exporter deduplicates initializers with equal values and reads the
    duplicates through Identity nodes. Here that happens to the BatchNorm biases of a
    residual block's second conv and of its projection shortcut: both are added before
    the same ReLU, so they receive identical gradients, start at zero and stay bit-equal.
    Giving each BatchNorm its own bias keeps every parameter an initializer of its node.

    Args:
        proto: The model, modified in place.

    Returns:
        The number of Identity nodes replaced.
    """
    inits = {t.name: t for t in proto.graph.initializer}
    tied = [n for n in proto.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    for node in tied:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[node.input[0]])
        copy.name = node.output[0]
        proto.graph.initializer.append(copy)
        proto.graph.node.remove(node)
    return len(tied)


def batchnorm_count(proto: onnx.ModelProto) -> int:
    """Count BatchNormalization nodes whose scale, bias, mean and variance are initializers.

    Args:
        proto: The model.

    Returns:
        The number of such nodes.
    """
    inits = {t.name for t in proto.graph.initializer}
    return sum(1 for n in proto.graph.node
               if n.op_type == "BatchNormalization" and set(n.input[1:5]) <= inits)


def file_entry(name: str, exporter: str, path: Path, proto: onnx.ModelProto, model: nn.Module,
               recipe: Recipe, logits: np.ndarray, labels: np.ndarray) -> dict:
    """The accuracy.json entry of one exported model, printed as one line too.

    Shared with make_digits_more.py so every digits model is described the same way.
    """
    acc = float((logits.argmax(1) == labels).mean())
    bn = batchnorm_count(proto)
    print(f"  {path.name}: {len(proto.graph.node)} nodes, {param_count(proto)} params, "
          f"{bn} BatchNormalization, onnxruntime test accuracy {acc:.4f}, "
          f"{path.stat().st_size} bytes", flush=True)
    return {
        "model": name,
        "exporter": exporter,
        "opset": proto.opset_import[0].version,
        "test_accuracy": round(acc, 6),
        "test_correct": int((logits.argmax(1) == labels).sum()),
        "onnx_params": param_count(proto),
        "torch_params": sum(p.numel() for p in model.parameters()),
        "batchnorm_nodes": bn,
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "build"},
    }


def main() -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)
    data = load()
    test = data.normalise(data.test)
    labels = data.test_labels.numpy()
    calib_idx = np.sort(np.random.default_rng(CALIB_SEED).choice(
        len(data.train), CALIB_SIZE, replace=False))
    np.savez_compressed(OUT / "test.npz", image=test.numpy().astype(np.float32),
                        label=labels.astype(np.int64))
    np.savez_compressed(OUT / "calib.npz",
                        image=data.normalise(data.train[calib_idx]).numpy().astype(np.float32))
    print(f"train {len(data.train)}, test {len(data.test)}, mean {data.mean:.6f}, "
          f"std {data.std:.6f}")

    files: dict[str, dict] = {}
    for name in MODELS:
        model, seconds = train(name, data)
        with torch.no_grad():
            expected = model(test)
        torch_acc = float((expected.argmax(1).numpy() == labels).mean())
        print(f"{name}: trained in {seconds:.0f} s, torch test accuracy {torch_acc:.4f}")
        variants = [(name, False)] + ([("resnet_bn", True)] if name == "resnet" else [])
        for stem, keep_bn in variants:
            path = OUT / f"{stem}.onnx"
            export(model, test[:2], path, keep_batchnorm=keep_bn)
            proto = normalise(path)
            if untie_initializers(proto):
                onnx.save(proto, str(path), save_as_external_data=False)
            logits = check(path, proto, test, expected)
            bn = batchnorm_count(proto)
            assert (bn > 0) == keep_bn, f"{path.name}: {bn} BatchNormalization nodes"
            exporter = ("torchscript (dynamo=False, do_constant_folding=False, "
                        "training=EVAL)" if keep_bn else "dynamo")
            files[path.name] = file_entry(name, exporter, path, proto, model, MODELS[name],
                                          logits, labels)

    summary = {
        "dataset": "sklearn.datasets.load_digits",
        "split": {"test_size": TEST_SIZE, "random_state": SPLIT_SEED, "stratify": True,
                  "train": len(data.train), "test": len(data.test)},
        "preprocessing": {"scale": "pixel / 16", "resize": [SIZE, SIZE],
                          "interpolate": "bilinear, align_corners=False",
                          "mean": data.mean, "std": data.std,
                          "formula": "(upsampled - mean) / std"},
        "calibration": {"file": "calib.npz", "size": CALIB_SIZE, "seed": CALIB_SEED,
                        "from": "training split"},
        "training": {"optimizer": "AdamW, warm-up + cosine", "batch": BATCH,
                     "label_smoothing": LABEL_SMOOTHING, "shift_pixels": SHIFT,
                     "threads": THREADS, "torch": torch.__version__},
        "files": files,
    }
    (OUT / "accuracy.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
