"""Tiny random-init Hugging Face ``transformers`` models of the HF golden models (see make_hf.py).

Every model is built from a config object (no hub access: no weights, no configs, no
tokenizers are downloaded), with the attention implementation the library picks by default
(``sdpa`` where it is the default), except ``bert_eager`` which asks for ``eager`` to compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers as tf
from torch import Tensor, nn

SEQ = 16
VOCAB = 100
IMAGE = (1, 3, 32, 32)
NUM_LABELS = 10


def text_input() -> tuple[Tensor, ...]:
    """Random token ids and an attention mask with the last 4 positions padded (right padding).

    Returns:
        ``(input_ids, attention_mask)``, both (1, 16) int64.
    """
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[:, -4:] = 0
    return torch.randint(0, VOCAB, (1, SEQ)), mask


def image_input() -> tuple[Tensor, ...]:
    """A random image batch.

    Returns:
        ``(pixel_values,)`` of shape (1, 3, 32, 32).
    """
    return (torch.randn(IMAGE),)


TEXT = {"vocab_size": VOCAB}
BERT = dict(TEXT, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=128, max_position_embeddings=32, type_vocab_size=2)
GPT2 = dict(TEXT, n_embd=64, n_layer=2, n_head=4, n_positions=32, pad_token_id=0)
LLAMA = dict(TEXT, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
             use_cache=False, pad_token_id=0)
QWEN2 = dict(LLAMA)
VIT = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "num_hidden_layers": 2,
       "num_attention_heads": 4, "intermediate_size": 128}
SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 32, "depths": [2, 2],
        "num_heads": [2, 4], "window_size": 4}
RESNET = {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
          "layer_type": "bottleneck"}
CONVNEXT = {"image_size": 32, "patch_size": 4, "num_stages": 2, "hidden_sizes": [16, 32],
            "depths": [1, 1]}
MOBILENETV2 = {"image_size": 32, "depth_multiplier": 0.35, "finegrained_output": False}
EFFICIENTNET = {"image_size": 32, "width_coefficient": 0.5, "depth_coefficient": 0.5,
                "kernel_sizes": [3, 3, 5], "in_channels": [32, 16, 24],
                "out_channels": [16, 24, 40], "strides": [1, 2, 2],
                "num_block_repeats": [1, 2, 2], "expand_ratios": [1, 6, 6],
                "hidden_dim": 640}
REGNET = {"embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1],
          "groups_width": 8, "layer_type": "y"}
SEGFORMER = {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1],
             "hidden_sizes": [16, 32], "patch_sizes": [7, 3], "strides": [4, 2],
             "num_attention_heads": [1, 2], "mlp_ratios": [2, 2], "decoder_hidden_size": 32}
MOBILEVIT = {"image_size": 32, "hidden_sizes": [24, 32, 48],
             "neck_hidden_sizes": [8, 16, 16, 24, 32, 40, 64], "num_attention_heads": 2,
             "expand_ratio": 2.0}


@dataclass(frozen=True)
class Spec:
    """One HF golden model: its family, class, config and I/O."""

    family: str
    cls: str
    config: str
    kwargs: dict[str, Any]
    inputs: Callable[[], tuple[Tensor, ...]]
    input_names: tuple[str, ...]
    output: str
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def config_text(self) -> str:
        """The config kwargs as short text (for the README), without the vocabulary.

        Returns:
            ``key=value`` pairs.
        """
        skip = {"vocab_size", "pad_token_id", "use_cache"}
        text = ", ".join(f"{k}={v}" for k, v in self.kwargs.items() if k not in skip)
        if self.extra:
            text += ", " + ", ".join(f"{k}={v!r}" for k, v in self.extra.items())
        return text


def _classifier(kwargs: dict[str, Any]) -> dict[str, Any]:
    return dict(kwargs, num_labels=NUM_LABELS)


TXT = (text_input, ("input_ids", "attention_mask"))
IMG = (image_input, ("pixel_values",))
HID, LOG = "last_hidden_state", "logits"

MODELS: dict[str, Spec] = {
    "bert": Spec("BERT", "BertModel", "BertConfig", BERT, *TXT, HID, 21),
    "bert_eager": Spec("BERT", "BertModel", "BertConfig", BERT, *TXT, HID, 21,
                       {"attn_implementation": "eager"}),
    "bert_cls": Spec("BERT", "BertForSequenceClassification", "BertConfig",
                     _classifier(BERT), *TXT, LOG, 22),
    "gpt2": Spec("GPT-2", "GPT2Model", "GPT2Config", GPT2, *TXT, HID, 23),
    "gpt2_cls": Spec("GPT-2", "GPT2ForSequenceClassification", "GPT2Config",
                     _classifier(GPT2), *TXT, LOG, 24),
    "llama": Spec("Llama", "LlamaModel", "LlamaConfig", LLAMA, *TXT, HID, 25),
    "llama_cls": Spec("Llama", "LlamaForSequenceClassification", "LlamaConfig",
                      _classifier(LLAMA), *TXT, LOG, 26),
    "qwen2": Spec("Qwen2", "Qwen2Model", "Qwen2Config", QWEN2, *TXT, HID, 27),
    "qwen2_cls": Spec("Qwen2", "Qwen2ForSequenceClassification", "Qwen2Config",
                      _classifier(QWEN2), *TXT, LOG, 28),
    "vit": Spec("ViT", "ViTModel", "ViTConfig", VIT, *IMG, HID, 29),
    "vit_cls": Spec("ViT", "ViTForImageClassification", "ViTConfig", _classifier(VIT),
                    *IMG, LOG, 30),
    "swin": Spec("Swin", "SwinModel", "SwinConfig", SWIN, *IMG, HID, 31),
    "swin_cls": Spec("Swin", "SwinForImageClassification", "SwinConfig", _classifier(SWIN),
                     *IMG, LOG, 32),
    "resnet": Spec("ResNet", "ResNetModel", "ResNetConfig", RESNET, *IMG, HID, 33),
    "resnet_cls": Spec("ResNet", "ResNetForImageClassification", "ResNetConfig",
                       _classifier(RESNET), *IMG, LOG, 34),
    "convnext": Spec("ConvNeXt", "ConvNextModel", "ConvNextConfig", CONVNEXT, *IMG, HID, 35),
    "convnext_cls": Spec("ConvNeXt", "ConvNextForImageClassification", "ConvNextConfig",
                         _classifier(CONVNEXT), *IMG, LOG, 36),
    "mobilenetv2": Spec("MobileNetV2", "MobileNetV2Model", "MobileNetV2Config", MOBILENETV2,
                        *IMG, HID, 37),
    "mobilenetv2_cls": Spec("MobileNetV2", "MobileNetV2ForImageClassification",
                            "MobileNetV2Config", _classifier(MOBILENETV2), *IMG, LOG, 38),
    "efficientnet": Spec("EfficientNet", "EfficientNetModel", "EfficientNetConfig",
                         EFFICIENTNET, *IMG, HID, 39),
    "efficientnet_cls": Spec("EfficientNet", "EfficientNetForImageClassification",
                             "EfficientNetConfig", _classifier(EFFICIENTNET), *IMG, LOG, 40),
    "regnet": Spec("RegNet", "RegNetModel", "RegNetConfig", REGNET, *IMG, HID, 41),
    "regnet_cls": Spec("RegNet", "RegNetForImageClassification", "RegNetConfig",
                       _classifier(REGNET), *IMG, LOG, 42),
    "segformer": Spec("SegFormer", "SegformerModel", "SegformerConfig", SEGFORMER, *IMG,
                      HID, 43),
    "segformer_cls": Spec("SegFormer", "SegformerForImageClassification", "SegformerConfig",
                          _classifier(SEGFORMER), *IMG, LOG, 44),
    "mobilevit": Spec("MobileViT", "MobileViTModel", "MobileViTConfig", MOBILEVIT, *IMG,
                      HID, 45),
    "mobilevit_cls": Spec("MobileViT", "MobileViTForImageClassification", "MobileViTConfig",
                          _classifier(MOBILEVIT), *IMG, LOG, 46),
}


class Select(nn.Module):
    """Call a HF model with positional inputs and return one named output."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...], output: str) -> None:
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output = output

    def forward(self, *args: Tensor) -> Tensor:
        """Run the wrapped model.

        Args:
            *args: The inputs, in ``input_names`` order.

        Returns:
            The selected output tensor.
        """
        out = self.model(**dict(zip(self.input_names, args, strict=True)), return_dict=True)
        return getattr(out, self.output)


@torch.no_grad()
def randomize_norms(model: nn.Module) -> None:
    """Give every norm non-trivial statistics and affine parameters so none is an identity.

    Args:
        model: The model, modified in place.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            if m.weight is not None:
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
        elif type(m).__name__.endswith(("LayerNorm", "RMSNorm")):
            weight = getattr(m, "weight", None)
            if isinstance(weight, nn.Parameter):
                weight.uniform_(0.5, 1.5)
            bias = getattr(m, "bias", None)
            if isinstance(bias, nn.Parameter):
                bias.normal_(0.0, 0.1)
        scale = getattr(m, "layer_scale_parameter", None)  # ConvNeXt layer scale, 1e-6 at init
        if isinstance(scale, nn.Parameter):
            scale.uniform_(0.2, 1.0)


def build_hf(spec: Spec) -> nn.Module:
    """Build one seeded, random-init, eval-mode HF model wrapped to return one output.

    Args:
        spec: The model's spec.

    Returns:
        The wrapped model.
    """
    torch.manual_seed(spec.seed)
    config = getattr(tf, spec.config)(**spec.kwargs, **spec.extra)
    model = getattr(tf, spec.cls)(config)
    randomize_norms(model)
    model.eval()
    return Select(model, spec.input_names, spec.output).eval()
