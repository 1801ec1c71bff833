"""Held-out perplexity of the trained byte-level Llama after pruning, no fine-tuning (issue 17).

For each ``--target-params`` value the script prunes ``golden_models/llm/llama_bytes.onnx``
(a 2.9M-parameter ``LlamaForCausalLM`` trained on the Python standard library's sources,
``golden_models/scripts/make_llm.py``) with

- ``l1``: ``couple,group,l1,prune`` (in ``--scope``, local by default);
- ``l1 share global``: ``couple,group,l1<norm=share;agg=sum>,prune --scope global``, the
  cross-group normalisation of :mod:`spa_opt.passes.criteria.base`;
- ``l1 sensitivity`` (``... calib``): ``couple,group,l1,sensitivity,prune --scope global``,
  l1's order within groups and the measured output error of removing units across
  groups (:mod:`spa_opt.passes.sensitivity`), on random token ids (on 8 of the
  calibration windows); ``... r3``: ``sensitivity<rounds=3>``, the budget in three chunks,
  each measured on top of the last;
- ``obspa original`` / ``obspa pruned``: ``couple,group,obspa<propagate=P>,prune`` with the
  128 calibration windows of ``golden_models/llm/calib.npz``;
- ``obspa data-free``: ``couple,group,obspa<hessian=noise>,prune`` (no calibration: integer
  inputs get uniform token ids);
- ``tp mlp-l2``: Torch-Pruning's L2 magnitude pruning of the MLP channels only (attention,
  embeddings, norms and ``lm_head`` ignored; the same ratio in every layer, as its LLM
  example does), on the same trained torch weights, with the ratio that keeps the same
  parameter fraction. It runs in the venv that has transformers and torch-pruning
  (``--tp-python``, default ``/work/venv-llm/bin/python``), as a subprocess of this run;

and prints the perplexity on the held-out windows (``heldout.npz``, in onnxruntime for
the ONNX models, in torch for Torch-Pruning's), its ratio to dense, the parameter fraction
kept, what each spa-opt run removed per group kind (residual stream, attention heads as
GQA groups, MLP channels), and the issue's goals as met / NOT MET.

Run from the repository root (spa-opt's venv)::

    nice -n 10 python bench/llm.py
    python bench/llm.py --targets 0.6 --methods l1,tp --windows 64
    python bench/llm.py --scope global --l1 "l1<norm=share;agg=sum>"
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLM = ROOT / "golden_models" / "llm"
TARGETS = (0.8, 0.6, 0.45)
METHODS = ("l1", "l1-share", "l1-sensitivity", "l1-sensitivity-calib", "l1-sensitivity3",
           "l1-sensitivity3-calib", "obspa-original",
           "obspa-pruned", "obspa-data-free", "tp")
LABELS = {"l1": "l1", "l1-share": "l1 share global",
          "l1-sensitivity": "l1 sensitivity", "l1-sensitivity-calib": "l1 sensitivity calib",
          "l1-sensitivity3": "l1 sensitivity r3", "l1-sensitivity3-calib": "l1 sens. r3 calib",
          "obspa-original": "obspa original",
          "obspa-pruned": "obspa pruned", "obspa-data-free": "obspa data-free",
          "tp": "tp mlp-l2"}
SHARE = "l1<norm=share;agg=sum>"
"""The cross-group normalisation (spa_opt/passes/criteria/base.py), always global scope."""


def perplexity(logits: np.ndarray, ids: np.ndarray) -> float:
    """Exp of the mean next-byte negative log-likelihood (as make_llm.py computes it)."""
    shifted = logits[:, :-1].astype(np.float64)
    shifted -= shifted.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    nll = -np.take_along_axis(logp, ids[:, 1:, None], axis=-1).mean()
    return float(math.exp(nll))


def onnx_perplexity(model: ir.Model | Path, ids: np.ndarray, threads: int = 1,
                    batch: int = 32) -> float:
    """Held-out perplexity of an ONNX model in onnxruntime."""
    source = str(model) if isinstance(model, Path) else ir.to_proto(model).SerializeToString()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    logits = np.concatenate([session.run(None, {"input_ids": ids[i:i + batch]})[0]
                             for i in range(0, len(ids), batch)])
    return perplexity(logits, ids)


def group_kind(entry: dict[str, Any]) -> str:
    """``heads`` (several channels per unit: a GQA group), ``residual`` or ``mlp``."""
    if entry["block"] > 1:
        return "heads"
    return "residual" if "embed_tokens" in entry["primary"] else "mlp"


def removed_by_kind(report: dict[str, Any]) -> dict[str, str]:
    """Units removed of units in total, per group kind, from the report's prune section."""
    removed: dict[str, list[int]] = {}
    pruned = {g["group"]: g["removed"] for g in (report.get("prune") or {}).get("groups", [])}
    for entry in report["groups"]:
        if entry["prunable"]:
            counts = removed.setdefault(group_kind(entry), [0, 0])
            counts[0] += pruned.get(entry["id"], 0)
            counts[1] += entry["units"]
    return {kind: f"{r}/{u}" for kind, (r, u) in sorted(removed.items())}


def spa_pipeline(method: str, l1: str, folder: Path = LLM) -> tuple[str, Path | None]:
    """The pipeline text and the calibration file of a spa-opt method."""
    calib = folder / "calib.npz"
    return {
        "l1": (f"couple,group,{l1},prune", None),
        "l1-share": (f"couple,group,{SHARE},prune", None),
        "l1-sensitivity": ("couple,group,l1,sensitivity,prune", None),
        "l1-sensitivity-calib": ("couple,group,l1,sensitivity,prune", calib),
        "l1-sensitivity3": ("couple,group,l1,sensitivity<rounds=3>,prune", None),
        "l1-sensitivity3-calib": ("couple,group,l1,sensitivity<rounds=3>,prune", calib),
        "obspa-original": ("couple,group,obspa<propagate=original>,prune", calib),
        "obspa-pruned": ("couple,group,obspa<propagate=pruned>,prune", calib),
        "obspa-data-free": ("couple,group,obspa<hessian=noise>,prune", None),
    }[method]


def spa_run(method: str, target: float, ids: np.ndarray, args: argparse.Namespace
            ) -> dict[str, Any]:
    """Prune with spa-opt and measure: perplexity, params kept, removals, seconds."""
    from spa_opt.api import optimize

    pipeline, calib = spa_pipeline(method, args.l1, args.dir)
    started = time.perf_counter()
    scope = "global" if method.startswith(("l1-share", "l1-sensitivity")) else args.scope
    model, report = optimize(args.dir / "llama_bytes.onnx", pipeline, target_params=target,
                             scope=scope, calibration=calib)
    seconds = time.perf_counter() - started
    data = report.to_dict()
    kept = data["params"]["after"] / data["params"]["before"]
    return {"ppl": onnx_perplexity(model, ids, args.threads), "kept": kept,
            "seconds": seconds, "removed": removed_by_kind(data), "pipeline": pipeline}


def torch_pruning_results(targets: list[float], windows: int, folder: Path
                          ) -> dict[str, dict[str, Any]]:
    """Torch-Pruning's MLP-only L2 magnitude pruning per target (needs transformers, tp)."""
    import torch
    import torch_pruning as tp
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(1)
    ids = np.load(folder / "heldout.npz")["input_ids"][:windows]
    config = LlamaConfig(**json.loads((folder / "config.json").read_text()),
                         attn_implementation="eager")
    state = load_file(str(folder / "llama_bytes.safetensors"))
    results = {}
    for target in targets:
        model = LlamaForCausalLM(config)
        model.load_state_dict(state)
        model.eval()
        total = sum(p.numel() for p in model.parameters())
        mlps = [layer.mlp for layer in model.model.layers]
        mlp_params = sum(p.numel() for mlp in mlps for p in mlp.parameters())
        ratio = (1 - target) * total / mlp_params
        ignored = [m for m in model.modules()
                   if isinstance(m, torch.nn.Linear) and not any(m is mlp.gate_proj or
                                                                 m is mlp.up_proj
                                                                 for mlp in mlps)]
        ignored += [model.model.embed_tokens, model.model.norm]
        pruner = tp.pruner.MetaPruner(
            model, torch.zeros(1, ids.shape[1], dtype=torch.int64),
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            pruning_ratio=min(ratio, 0.999), ignored_layers=ignored, global_pruning=False,
            root_module_types=[torch.nn.Linear])
        pruner.step()
        for layer in model.model.layers:  # only the MLP channels may have moved
            assert layer.self_attn.q_proj.weight.shape == (config.hidden_size,) * 2
        with torch.no_grad():
            logits = np.concatenate([model(input_ids=torch.from_numpy(ids[i:i + 32]),
                                           use_cache=False).logits.numpy()
                                     for i in range(0, len(ids), 32)])
        kept = sum(p.numel() for p in model.parameters()) / total
        widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
        results[f"{target:g}"] = {"ppl": perplexity(logits, ids), "kept": kept,
                                  "ratio": ratio, "widths": widths}
    return results


def torch_pruning_subprocess(targets: list[float], args: argparse.Namespace
                             ) -> dict[str, dict[str, Any]] | str:
    """Run the Torch-Pruning baseline in its venv; the results, or why it did not run."""
    if not Path(args.tp_python).exists():
        return f"{args.tp_python} not found (see golden_models/scripts/requirements-llm.txt)"
    command = [args.tp_python, __file__, "--torch-pruning-worker", "--windows",
               str(args.windows), "--dir", str(args.dir),
               "--targets", ",".join(f"{t:g}" for t in targets)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(done.stdout.strip().splitlines()[-1])


def goals(table: dict[tuple[str, float], float], dense: float) -> list[str]:
    """The issue's goals as met / NOT MET lines (cells missing from the run are skipped)."""
    lines = []

    def check(text: str, ok: bool | None) -> None:
        if ok is not None:
            lines.append(f"{'met    ' if ok else 'NOT MET'}  {text}")

    def ratio(method: str, target: float) -> float | None:
        value = table.get((method, target))
        return None if value is None else value / dense

    for method in ("obspa-original", "obspa-pruned"):
        for target, bound in ((0.6, 1.03), (0.45, 1.08)):
            r = ratio(method, target)
            check(f"{LABELS[method]} at {target:g}: {r and f'{r:.3f}'}x <= {bound}x",
                  None if r is None else r <= bound)
        for target in TARGETS:
            r, base = ratio(method, target), ratio("tp", target)
            check(f"{LABELS[method]} at {target:g} better than tp mlp-l2",
                  None if r is None or base is None else r < base)
    r = ratio("obspa-data-free", 0.6)
    check(f"obspa data-free at 0.6: {r and f'{r:.3f}'}x <= 1.10x", None if r is None else r <= 1.10)
    for method in ("l1", "l1-share", "l1-sensitivity", "l1-sensitivity-calib", "l1-sensitivity3",
                   "l1-sensitivity3-calib"):
        for target in TARGETS:
            r, base = ratio(method, target), ratio("tp", target)
            check(f"{LABELS[method]} at {target:g} no worse than tp mlp-l2",
                  None if r is None or base is None else r <= base)
    return lines


def main() -> None:
    """Print the table (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--windows", type=int, default=256, help="held-out windows used")
    parser.add_argument("--scope", choices=("local", "global"), default="local")
    parser.add_argument("--l1", default="l1", help="the l1 row's criterion pass text")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads")
    parser.add_argument("--dir", type=Path, default=LLM, help="the model's folder")
    parser.add_argument("--tp-python", default="/work/venv-llm/bin/python")
    parser.add_argument("--torch-pruning-worker", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    targets = [float(t) for t in args.targets.split(",")]
    if args.torch_pruning_worker:
        print(json.dumps(torch_pruning_results(targets, args.windows, args.dir)))
        return

    from bench.common import format_table, machine, revision
    from spa_opt.passes._infra.registry import get_pass

    ids = np.load(args.dir / "heldout.npz")["input_ids"][:args.windows]
    dense = onnx_perplexity(args.dir / "llama_bytes.onnx", ids, args.threads)
    methods = args.methods.split(",")
    has_propagate = "propagate" in {f.name for f in
                                    __import__("dataclasses").fields(get_pass("obspa").Options)}
    print(f"dense held-out perplexity {dense:.4f} ({len(ids)} windows of {ids.shape[1]} bytes),"
          f" scope {args.scope}", flush=True)
    table: dict[tuple[str, float], float] = {}
    rows = [["method", "target", "params kept", "ppl", "x dense", "s", "removed"]]
    if "tp" in methods:
        found = torch_pruning_subprocess(targets, args)
        if isinstance(found, str):
            print(f"tp mlp-l2: {found}")
        else:
            for key, cell in found.items():
                table["tp", float(key)] = cell["ppl"]
                rows.append(["tp mlp-l2", key, f"{cell['kept']:.3f}", f"{cell['ppl']:.4f}",
                             f"{cell['ppl'] / dense:.3f}", "",
                             f"mlp ratio {cell['ratio']:.3f} widths {cell['widths']}"])
                print(format_table(rows, {0, 6}).splitlines()[-1], flush=True)
    for method in (m for m in methods if m != "tp"):
        if method.startswith("obspa-") and method != "obspa-data-free" and not has_propagate:
            print(f"{LABELS[method]}: propagate not available at {revision(ROOT, 'spa_opt')}")
            continue
        for target in targets:
            cell = spa_run(method, target, ids, args)
            table[method, target] = cell["ppl"]
            rows.append([LABELS[method], f"{target:g}", f"{cell['kept']:.3f}",
                         f"{cell['ppl']:.4f}", f"{cell['ppl'] / dense:.3f}",
                         f"{cell['seconds']:.1f}", " ".join(f"{k} {v}" for k, v in
                                                            cell["removed"].items())])
            print(format_table(rows, {0, 6}).splitlines()[-1], flush=True)
    print()
    print(format_table(rows, {0, 6}))
    print()
    print("\n".join(goals(table, dense)))
    print(f"l1 row: {spa_pipeline('l1', args.l1)[0]}, scope {args.scope}, model {args.dir}")
    print(machine())
    print(revision(ROOT, "spa_opt"))
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
