"""Train three more digits classifiers of other shapes: HF ResNet and ConvNeXt, a DenseNet.

Issue 17 asks that the data-free defaults hold on models they were not tuned on. The
first three digits models (make_digits.py) are the ones obspa's defaults were chosen on;
these add architectures of other shapes, trained with the same data, preprocessing,
split, augmentation and training loop (``make_digits.fit``), exported the same way
(``make_digits.export``: dynamo, opset 20, dynamic batch) and checked the same way
(``make_digits.check``: full ONNX checker, onnxruntime within 1e-4 of PyTorch on the
whole test batch and at batch 1):

- ``hf_resnet``: ``transformers.ResNetForImageClassification`` as a new user would
  build it, ``ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32, 48,
  96], depths=[2, 2, 2, 2], layer_type="basic", num_labels=10)``: 7x7 stride-2 stem and
  3x3 stride-2 max pool (8x8 maps from 32x32 inputs), four stages of two basic blocks
  (stride 2 at stages 2-4, down to 1x1), 1x1 conv + BN projection shortcuts, pool,
  Linear. HF's default initialisation;
- ``convnext``: ``transformers.ConvNextForImageClassification``, ``ConvNextConfig(
  num_channels=1, patch_size=2, num_stages=3, hidden_sizes=[32, 64, 128], depths=[2, 2,
  2], image_size=32, num_labels=10)``: 2x2 patchify stem (16x16 maps), blocks of
  depthwise 7x7, channels-last LayerNorm, Linear x4 with GELU, Linear back, layer scale
  (init 1e-6) and residual; LayerNorm + 2x2 stride-2 conv between stages; final
  LayerNorm on the pooled features. No BatchNorm at all;
- ``densenet``: ``digits_models.DenseNet``, DenseNet-BC with pre-activation BatchNorms
  over concatenations (three dense blocks of 4 layers, growth 12), which the exporter
  cannot fold, so the file keeps ``BatchNormalization`` nodes.

The Hugging Face models are wrapped to take ``image`` and return ``logits`` only.

Outputs: ``golden_models/digits/{hf_resnet,convnext,densenet}.onnx``, and their entries
in ``accuracy.json`` (``files``; every other entry is kept). ``test.npz`` and
``calib.npz`` are not rewritten: they are make_digits.py's, and the data here is the same.

Regenerate (about 4 minutes on one CPU core: 8 s, 60 s and 165 s of training) in a venv
with ``requirements-digits-more.txt`` (/work/venv-llm has it)::

    python3 -m venv /work/venv-digits && . /work/venv-digits/bin/activate
    pip install torch==2.13.0 && pip install -r golden_models/scripts/requirements-digits-more.txt
    python golden_models/scripts/make_digits_more.py            # or: ... hf_resnet convnext

then rewrite their expected groups (in the spa-opt venv) with ``python
golden_models/scripts/update_expected.py digits/hf_resnet digits/convnext digits/densenet``.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import numpy as np
import onnx
import torch
import transformers as tf
from digits_models import NUM_CLASSES, DenseNet
from make_digits import (
    OUT,
    THREADS,
    Recipe,
    check,
    export,
    file_entry,
    fit,
    load,
    untie_initializers,
)
from make_torch import normalise
from torch import Tensor, nn

HF_RESNET = {"num_channels": 1, "embedding_size": 16, "hidden_sizes": [16, 32, 48, 96],
             "depths": [2, 2, 2, 2], "layer_type": "basic", "num_labels": NUM_CLASSES}
HF_CONVNEXT = {"num_channels": 1, "patch_size": 2, "num_stages": 3,
               "hidden_sizes": [32, 64, 128], "depths": [2, 2, 2], "image_size": 32,
               "num_labels": NUM_CLASSES}


class Logits(nn.Module):
    """A Hugging Face image classifier taking ``image`` and returning only its logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        """Classify.

        Args:
            image: Images (B, 1, 32, 32).

        Returns:
            Logits (B, 10).
        """
        return self.model(pixel_values=image).logits


def hf_resnet() -> nn.Module:
    """The Hugging Face basic-block ResNet (HF's initialisation)."""
    return Logits(tf.ResNetForImageClassification(tf.ResNetConfig(**HF_RESNET)))


def hf_convnext() -> nn.Module:
    """The Hugging Face ConvNeXt (HF's initialisation)."""
    return Logits(tf.ConvNextForImageClassification(tf.ConvNextConfig(**HF_CONVNEXT)))


MODELS: dict[str, Recipe] = {
    "hf_resnet": Recipe(hf_resnet, seed=4, epochs=20, lr=3e-3, weight_decay=0.05,
                        warmup_epochs=1),
    "densenet": Recipe(DenseNet, seed=5, epochs=30, lr=3e-3, weight_decay=0.05,
                       warmup_epochs=1),
    "convnext": Recipe(hf_convnext, seed=6, epochs=60, lr=2e-3, weight_decay=0.05,
                       warmup_epochs=5),
}
CONFIGS = {"hf_resnet": ("ResNetForImageClassification", HF_RESNET),
           "convnext": ("ConvNextForImageClassification", HF_CONVNEXT)}


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    names = [a for a in argv if not a.startswith("--")] or list(MODELS)
    data = load()
    test = data.normalise(data.test)
    labels = data.test_labels.numpy()
    stored = np.load(OUT / "test.npz")
    assert np.array_equal(stored["label"], labels), "test.npz is not this split"
    assert np.allclose(stored["image"], test.numpy(), atol=1e-6), "test.npz differs"
    summary_path = OUT / "accuracy.json"
    summary = json.loads(summary_path.read_text())
    for name in names:
        recipe = MODELS[name]
        torch.manual_seed(recipe.seed)
        model, seconds = fit(recipe.build(), recipe, data, name)
        with torch.no_grad():
            expected = model(test)
        torch_acc = float((expected.argmax(1).numpy() == labels).mean())
        print(f"{name}: trained in {seconds:.0f} s, torch test accuracy {torch_acc:.4f}")
        path = OUT / f"{name}.onnx"
        export(model, test[:2], path)
        proto = normalise(path)
        if untie_initializers(proto):
            onnx.save(proto, str(path), save_as_external_data=False)
        logits = check(path, proto, test, expected)
        entry = file_entry(name, "dynamo", path, proto, model, recipe, logits, labels)
        entry["train_seconds"] = round(seconds, 1)
        entry["script"] = "make_digits_more.py"
        if name in CONFIGS:
            cls, config = CONFIGS[name]
            entry["hf"] = {"class": cls, "config": config, "transformers": tf.__version__}
        summary["files"][path.name] = entry
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(sys.argv[1:])
