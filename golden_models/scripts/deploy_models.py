"""Sources and conversions of the deployment golden models (see make_deploy.py).

Everything that needs ``torch``, ``transformers``, ``optimum`` or ``onnxruntime``'s offline tools
lives here, so that make_deploy.py's ``--run`` mode (used to re-check every file with the
project's own onnxruntime) imports only numpy, onnx and onnxruntime.

- the tiny random-init Hugging Face models (built from config objects, seeded, eval mode) and
  their optimum exports;
- the onnxruntime transformer optimizer, fp16 and bf16 conversions;
- onnxruntime.quantization: QDQ / QOperator static, dynamic, MatMulNBits.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
VOCAB = 256
POSITIONS = 128
SEED = 15


@dataclass(frozen=True)
class HFSpec:
    """One tiny random-init Hugging Face model and its optimum task.

    Attributes:
        config: ``transformers`` config class name.
        cls: Model class name.
        task: optimum task.
        kwargs: Config arguments.
        kind: Input protocol of make_deploy.py's runner (``decoder`` or ``encoder``).
    """

    config: str
    cls: str
    task: str
    kwargs: dict[str, Any]
    kind: str

    def config_text(self) -> str:
        """The config arguments as one short line for the README."""
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


_DEC = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
            num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
            max_position_embeddings=POSITIONS, pad_token_id=0)
HF: dict[str, HFSpec] = {
    "llama_kv": HFSpec("LlamaConfig", "LlamaForCausalLM", "text-generation-with-past",
                       dict(_DEC), "decoder"),
    "gpt2_kv": HFSpec("GPT2Config", "GPT2LMHeadModel", "text-generation-with-past",
                      dict(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                           n_inner=INTERMEDIATE, n_positions=POSITIONS, pad_token_id=0),
                      "decoder"),
    "qwen2_kv": HFSpec("Qwen2Config", "Qwen2ForCausalLM", "text-generation-with-past",
                       dict(_DEC), "decoder"),
    "phi3_kv": HFSpec("Phi3Config", "Phi3ForCausalLM", "text-generation-with-past",
                      dict(_DEC, bos_token_id=1, eos_token_id=2, rope_scaling=None,
                           original_max_position_embeddings=POSITIONS), "decoder"),
    "bert_cls": HFSpec("BertConfig", "BertForSequenceClassification", "text-classification",
                       dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                            num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
                            max_position_embeddings=POSITIONS, type_vocab_size=2,
                            num_labels=3), "encoder"),
}


def build_hf(name: str) -> Any:
    """Build one seeded random-init eval-mode model.

    Args:
        name: Key in ``HF``.

    Returns:
        The ``transformers`` model.
    """
    import torch
    import transformers as tf

    spec = HF[name]
    torch.manual_seed(SEED)
    config = getattr(tf, spec.config)(**spec.kwargs)
    return getattr(tf, spec.cls)(config).eval()


def export_optimum(model: Any, task: str, path: Path) -> None:
    """Export with optimum (default opset, no optimisation, optimum's own validation).

    For ``text-generation-with-past`` optimum exports one decoder (``model.onnx``) that takes
    the cache as inputs, past length 0 included: no merged/with-past split.

    Args:
        model: The eval-mode model.
        task: The optimum task.
        path: Output file.
    """
    from optimum.exporters.onnx import onnx_export_from_model

    with tempfile.TemporaryDirectory() as tmp:
        onnx_export_from_model(model, tmp, task=task, do_validation=True)
        files = sorted(Path(tmp).glob("*.onnx"))
        assert [f.name for f in files] == ["model.onnx"], f"optimum wrote {[f.name for f in files]}"
        model_proto = onnx.load(str(files[0]))  # external data, if any, is read here
    onnx.save(model_proto, str(path), save_as_external_data=False)


def torch_reference(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The PyTorch logits on the runner's inputs (a decoder sees the whole id window at once).

    Args:
        name: Key in ``HF``.
        feeds: The stored feeds of make_deploy.py's runner.

    Returns:
        ``{"logits": ...}``.
    """
    import torch

    model = build_hf(name)
    with torch.no_grad():
        args = {k: torch.from_numpy(v) for k, v in feeds.items()}
        if HF[name].kind == "decoder":
            args["attention_mask"] = torch.ones_like(args["input_ids"])
        out = model(**args)
    return {"logits": out.logits.numpy()}


def ort_optimize(src: Path, path: Path, model_type: str) -> None:
    """Onnxruntime's transformer optimizer, CPU, opt_level 1 (portable ORT rewrites only).

    Args:
        src: The optimum export.
        path: Output file.
        model_type: ``bert`` or ``gpt2`` (the optimizer's name for GPT-2/Llama-style decoders).
    """
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(src), model_type=model_type, num_heads=HEADS, hidden_size=HIDDEN,
                         opt_level=1, use_gpu=False)
    opt.save_model_to_file(str(path), use_external_data_format=False)


def to_fp16(src: Path, path: Path) -> None:
    """Onnxruntime's ``convert_float_to_float16(keep_io_types=True)``, saved as it comes out.

    Args:
        src: The float model.
        path: Output file.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    onnx.save(model, str(path), save_as_external_data=False)


def to_bf16(src: Path, path: Path) -> None:
    """bf16 weight storage, float32 arithmetic.

    Every float32 initializer with more than one element becomes bfloat16, read through a
    ``Cast(to=FLOAT)`` node at the head of the graph.

    onnxruntime's CPU provider has no bfloat16 kernels for MatMul, Gemm, LayerNormalization,
    Softmax, Erf and most elementwise ops (a torch bf16 export does not run there), so the
    arithmetic stays float32 and only the stored weights (and the model file) are bf16.

    Args:
        src: The float model.
        path: Output file.
    """
    import ml_dtypes

    model = onnx.load(str(src))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) <= 1:
            continue
        name = init.name
        array = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(array.astype(ml_dtypes.bfloat16), name + "_bf16"))
        casts.append(helper.make_node("Cast", [name + "_bf16"], [name],
                                      name=f"{name}/cast_bf16", to=TensorProto.FLOAT))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    onnx.save(model, str(path), save_as_external_data=False)


class RandomReader:
    """A seeded calibration reader: ``count`` random batches shaped like the model inputs.

    Args:
        make: Returns one feed dict from a generator.
        count: Number of batches.
    """

    def __init__(self, make: Callable[[np.random.Generator], dict[str, np.ndarray]],
                 count: int = 8) -> None:
        rng = np.random.default_rng(SEED)
        self._data = iter([make(rng) for _ in range(count)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch, or None at the end."""
        return next(self._data, None)


def _reader(make: Callable[[np.random.Generator], dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(RandomReader, CalibrationDataReader):  # quantize_static checks the base
        pass

    return Reader(make)


def pre_process(src: Path, path: Path) -> None:
    """``quant_pre_process``, with symbolic shape inference where it completes.

    onnxruntime's symbolic shape inference completes on the CNNs; on the optimum BERT export
    it stops ("Incomplete symbolic shape inference"), so there only the ONNX shape inference
    and the optimizer run.

    Args:
        src: The float model.
        path: Output file.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    # It writes ``sym_shape_infer_temp.onnx`` and external-data files into the working
    # directory: run it in a scratch one, so nothing stray lands in the repository.
    src, path = src.resolve(), path.resolve()
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
        try:
            quant_pre_process(str(src), str(path))
        except Exception:
            quant_pre_process(str(src), str(path), skip_symbolic_shape=True)


def quant_static(src: Path, path: Path, make: Callable[[np.random.Generator],
                 dict[str, np.ndarray]], fmt: str, per_channel: bool) -> None:
    """``quant_pre_process`` then ``quantize_static`` (int8 weights and activations, MinMax).

    Args:
        src: The float model.
        path: Output file.
        make: Calibration batch maker.
        fmt: ``QDQ`` or ``QOperator``.
        per_channel: Per-channel weight scales.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        pre_process(src, pre)
        quantize_static(str(pre), str(path), _reader(make), quant_format=QuantFormat[fmt],
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8)
    _inline(path)


def quant_dynamic(src: Path, path: Path) -> None:
    """``quant_pre_process`` then ``quantize_dynamic`` (int8 weights; MatMulInteger).

    Args:
        src: The float model.
        path: Output file.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        pre_process(src, pre)
        quantize_dynamic(str(pre), str(path), weight_type=QuantType.QInt8)
    _inline(path)


def quant_nbits(src: Path, path: Path) -> None:
    """4-bit blockwise weight-only quantisation of every MatMul with a constant weight.

    ``MatMulNBits``, block size 32, symmetric, RTN (the default quantizer).

    Args:
        src: The float model.
        path: Output file.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(onnx.load(str(src)), bits=4, block_size=32, is_symmetric=True)
    quant.process()
    quant.model.save_model_to_file(str(path), use_external_data_format=False)


def _inline(path: Path) -> None:
    """Re-save with weights inline (the quantizers may write external data)."""
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=False)
    path.with_name(path.name + ".data").unlink(missing_ok=True)


def copy_source(src: Path, path: Path) -> None:
    """Use a committed golden model as the float source (CNNs from golden_models/hf)."""
    shutil.copyfile(src, path)
