"""Train the small byte-level Llama LM that measures pruning quality on a real model (issue 17).

Random weights say nothing about which units matter; a trained model does. This trains
a Hugging Face ``LlamaForCausalLM`` (RoPE, RMSNorm, SwiGLU, GQA) on text every machine
has offline, the Python standard library's own sources, for a few minutes on CPU,
and writes under ``golden_models/llm/``:

- ``llama_bytes.onnx``: ``input_ids`` (batch, 128) int64 -> ``logits`` (batch, 128, 256),
  ``torch.onnx.export(..., dynamo=True)``, no KV cache, weights inline;
- ``llama_bytes.safetensors`` + ``config.json``: the same weights for Torch-Pruning's
  baseline in ``bench/llm.py`` (it prunes the torch model);
- ``heldout.npz``: ``input_ids`` (256, 128) windows from held-out files (split by file,
  so no held-out text was seen in training);
- ``calib.npz``: ``input_ids`` (128, 128) windows from the training split;
- ``README.md``: the recipe and the dense held-out perplexity (torch and onnxruntime).

Everything is seeded; the run is deterministic on one machine (torch threads fixed).
Run from the venv of ``requirements-llm.txt``: ``nice -n 10 python make_llm.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

OUT = Path(__file__).resolve().parent.parent / "llm"
SEQ = 128
SEED = 17
CONFIG = {
    "vocab_size": 256, "hidden_size": 256, "intermediate_size": 688,
    "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 2,
    "max_position_embeddings": SEQ, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "tie_word_embeddings": False, "attention_bias": False, "mlp_bias": False,
    "use_cache": False, "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
}
HELDOUT_EVERY = 10
"""Every tenth source file (in sorted order) is held out."""
HELDOUT_WINDOWS = 256
CALIB_WINDOWS = 128
EXCLUDED_DIRS = ("site-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo")
"""Test suites and vendored trees are left out: they are mostly data, not prose-like code."""


def source_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted, without tests and third-party trees."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py")
             if not set(p.relative_to(root).parts[:-1]) & set(EXCLUDED_DIRS)]
    return sorted(files, key=lambda p: str(p.relative_to(root)))


def split_bytes(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out byte streams, split by file (every ``HELDOUT_EVERY``-th)."""
    train, held = [], []
    for i, path in enumerate(files):
        data = path.read_bytes() + b"\n\n"
        (held if i % HELDOUT_EVERY == HELDOUT_EVERY - 1 else train).append(data)
    as_array = lambda chunks: np.frombuffer(b"".join(chunks), dtype=np.uint8)  # noqa: E731
    return as_array(train), as_array(held)


def windows(stream: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` windows of ``SEQ`` bytes at random offsets, as int64 token ids."""
    starts = rng.integers(0, stream.size - SEQ, size=count)
    return np.stack([stream[s:s + SEQ] for s in starts]).astype(np.int64)


class LogitsOnly(nn.Module):
    """``input_ids -> logits``: the graph bench/llm.py prunes (no cache, no loss)."""

    def __init__(self, model: LlamaForCausalLM) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        """The logits alone."""
        return self.model(input_ids=input_ids, use_cache=False).logits


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """Exp of the mean next-byte negative log-likelihood over every window position."""
    shifted = logits[:, :-1].astype(np.float64)
    shifted -= shifted.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    target = ids[:, 1:]
    nll = -np.take_along_axis(logp, target[..., None], axis=-1).mean()
    return float(math.exp(nll))


def train(model: LlamaForCausalLM, stream: np.ndarray, steps: int, batch: int,
          lr: float) -> list[float]:
    """AdamW with warmup and cosine decay on random training windows; returns the losses."""
    rng = np.random.default_rng(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1,
                                  betas=(0.9, 0.95))
    warmup = max(steps // 20, 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0)))))
    losses = []
    model.train()
    start = time.time()
    for step in range(steps):
        ids = torch.from_numpy(windows(stream, batch, rng))
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} {time.time() - start:6.1f} s", flush=True)
    model.eval()
    return losses


def torch_logits(model: nn.Module, ids: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits of ``ids`` in eval mode, in batches."""
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(ids[i:i + batch])).numpy()
                               for i in range(0, len(ids), batch)])


def onnx_logits(path: Path, ids: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits of ``ids`` from onnxruntime (one thread: the machine is shared)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input_ids": ids[i:i + batch]})[0]
                           for i in range(0, len(ids), batch)])


def export(model: LlamaForCausalLM, path: Path) -> None:
    """Dynamo export, opset 18, batch dynamic, sequence fixed at ``SEQ``."""
    example = (torch.zeros(2, SEQ, dtype=torch.int64),)
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.onnx.export(LogitsOnly(model), example, str(path), dynamo=True, opset_version=18,
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: batch}}, external_data=False,
                      verbose=False)


def main() -> None:
    """Train, export, check, write the data files and the README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    OUT.mkdir(parents=True, exist_ok=True)

    files = source_files()
    train_stream, held_stream = split_bytes(files)
    rng = np.random.default_rng(SEED + 1)
    heldout = windows(held_stream, HELDOUT_WINDOWS, rng)
    calib = windows(train_stream, CALIB_WINDOWS, rng)
    print(f"{len(files)} files: {train_stream.size} training bytes, {held_stream.size} held out")

    model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa"))
    params = sum(p.numel() for p in model.parameters())
    print(f"{params} parameters")
    start = time.time()
    losses = train(model, train_stream, args.steps, args.batch, args.lr)
    seconds = time.time() - start
    # sdpa trains faster; eager exports to plain MatMul/Softmax that spa-opt reads op by op.
    eager = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="eager"))
    eager.load_state_dict(model.state_dict())
    model = eager.eval()

    onnx_path = OUT / "llama_bytes.onnx"
    export(model, onnx_path)
    torch_ppl = perplexity(torch_logits(LogitsOnly(model), heldout), heldout)
    onnx_ppl = perplexity(onnx_logits(onnx_path, heldout), heldout)
    print(f"held-out perplexity: torch {torch_ppl:.6f}, onnxruntime {onnx_ppl:.6f}")
    if abs(onnx_ppl / torch_ppl - 1) > 1e-4:
        raise SystemExit("the ONNX perplexity differs from torch's")

    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(OUT / "llama_bytes.safetensors"))
    (OUT / "config.json").write_text(json.dumps(CONFIG, indent=1) + "\n")
    np.savez_compressed(OUT / "heldout.npz", input_ids=heldout)
    np.savez_compressed(OUT / "calib.npz", input_ids=calib)
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    write_readme(args, len(files), train_stream.size, held_stream.size, params, seconds,
                 losses, torch_ppl, onnx_ppl, digest)


def write_readme(args: argparse.Namespace, files: int, train_bytes: int, held_bytes: int,
                 params: int, seconds: float, losses: list[float], torch_ppl: float,
                 onnx_ppl: float, digest: str) -> None:
    """The README: recipe, data, and the dense perplexity the tests check against."""
    config = ", ".join(f"{k}={v}" for k, v in CONFIG.items())
    final = float(np.mean(losses[-20:]))
    (OUT / "README.md").write_text(f"""# A small trained byte-level Llama (issue 17)

Written by `golden_models/scripts/make_llm.py` (`nice -n 10 python make_llm.py
--steps {args.steps} --batch {args.batch} --lr {args.lr} --threads {args.threads}`, from the venv
of `golden_models/scripts/requirements-llm.txt`). It exists to measure pruning quality on
a model whose units differ in importance: `bench/llm.py`, `tests/test_golden_llm.py`.

- Model: `LlamaForCausalLM` ({config}; trained with sdpa attention, exported with
  eager), {params} parameters.
- Data: the Python {'.'.join(map(str, __import__('sys').version_info[:3]))} standard library's
  `.py` sources ({files} files, tests and vendored trees left out), as bytes; every
  {HELDOUT_EVERY}th file in sorted order is held out ({train_bytes} training bytes,
  {held_bytes} held out).
- Training: {args.steps} steps of {args.batch} random windows of {SEQ} bytes, AdamW (lr {args.lr},
  warmup then cosine, weight decay 0.1, clip 1.0), seed {SEED}; {seconds:.0f} s on
  {args.threads} CPU threads (shared machine); final training loss {final:.4f}.
- `llama_bytes.onnx` (sha256 {digest}...): `input_ids` (batch, {SEQ}) int64 -> `logits`
  (batch, {SEQ}, 256), dynamo exporter, opset 18, no KV cache.
- `llama_bytes.safetensors`, `config.json`: the same weights (Torch-Pruning's baseline).
- `heldout.npz`: `input_ids` ({HELDOUT_WINDOWS}, {SEQ}) windows of held-out files.
- `calib.npz`: `input_ids` ({CALIB_WINDOWS}, {SEQ}) windows of the training split.

Perplexity is exp of the mean next-byte negative log-likelihood over positions 1..{SEQ - 1}
of every held-out window.

| dense held-out perplexity | value |
|---|---|
| torch | {torch_ppl:.6f} |
| onnxruntime | {onnx_ppl:.6f} |
""")


if __name__ == "__main__":
    main()
