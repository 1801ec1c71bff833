"""What re-quantizing a MatMulNBits weight would cost: the measurement behind pruning K in blocks.

spa-opt removes MatMulNBits input channels only in whole quantization blocks, which
keeps every other block's codes, scale and zero point (exact). The alternative for units
smaller than a block is to dequantize, drop single channels, and re-quantize the rest
into new blocks (the channels shift, so each new block mixes channels of old blocks with
other scales). This script measures that alternative on ``llama_kv.nbits`` against its
float source ``llama_kv.optimum``: for every MatMulNBits, ``--drop`` of its input
channels (lowest L1 of the dequantized columns) go, the rest are re-quantized (4-bit
symmetric, ``max|w| / 7`` per block of 32, as the quantizer's symmetric mode), and the
relative error it adds to the kept weights is compared with the error the quantization
already had on them.

    python bench/nbits_requant.py [--drop 0.25]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1] / "golden_models" / "deploy"


def _dequantize(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    codes = np.stack([packed & 15, packed >> 4], axis=-1).reshape(packed.shape[0], -1)
    return ((codes.astype(np.float64) - 8) * np.repeat(scales, 32, axis=1))[:, :k]


def _requantize(weight: np.ndarray, block: int = 32) -> np.ndarray:
    rows, k = weight.shape
    padded = np.zeros((rows, -(-k // block) * block))
    padded[:, :k] = weight
    blocks = padded.reshape(rows, -1, block)
    scale = np.abs(blocks).max(axis=2, keepdims=True) / 7
    scale[scale == 0] = 1
    codes = np.clip(np.rint(blocks / scale), -8, 7)
    return (codes * scale).reshape(rows, -1)[:, :k]


def main() -> None:
    """Print one line per MatMulNBits and the totals."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--drop", type=float, default=0.25)
    args = parser.parse_args()
    quantized = onnx.load(ROOT / "llama_kv.nbits.onnx")
    floats = {i.name: numpy_helper.to_array(i)
              for i in onnx.load(ROOT / "llama_kv.optimum.onnx").graph.initializer}
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    added_total = had_total = 0.0
    for node in quantized.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        k = next(a.i for a in node.attribute if a.name == "K")
        real = _dequantize(inits[node.input[1]], inits[node.input[2]], k)  # [N, K]
        source = floats[node.input[1].removesuffix("_Q4")].T  # [N, K]
        kept = np.sort(np.argsort(np.abs(real).sum(axis=0))[int(args.drop * k):])
        exact, truth = real[:, kept], source[:, kept]
        added = np.linalg.norm(_requantize(exact) - exact) / np.linalg.norm(exact)
        had = np.linalg.norm(exact - truth) / np.linalg.norm(truth)
        added_total += added
        had_total += had
        print(f"{node.name:45s} K {k:4d} -> {kept.size:4d}  quantization error {had:.3f}  "
              f"re-quantization adds {added:.3f} ({added / had:.0%})")
    print(f"mean: re-quantization adds {added_total / had_total:.0%} of the quantization error")


if __name__ == "__main__":
    main()
