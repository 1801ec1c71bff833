"""Make the deployment golden models: what optimum and onnxruntime's offline tools produce.

The deployment golden models (issue 15), in ``golden_models/deploy/``, from tiny random-init
Hugging Face models (hidden 64, 2 layers, 4 heads, 2 kv heads for Llama/Qwen2/Phi-3,
intermediate 128, vocab 256, 128 positions; built from config objects, seeded, no hub) and
from two committed CNNs of ``golden_models/hf``:

- ``<m>.optimum.onnx``: optimum's export (``onnx_export_from_model``, default opset); the
  decoders with task ``text-generation-with-past`` (one file taking ``past_key_values.N.*``,
  past length 0 included; outputs ``logits`` and ``present.N.*``), BERT ``text-classification``;
- ``<m>.ortopt.onnx``: ``onnxruntime.transformers.optimizer.optimize_model`` (CPU, opt_level 1,
  ``bert`` / ``gpt2`` model type) on the export: com.microsoft fused ops;
- ``<m>.fp16.onnx``: ``onnxruntime.transformers.float16.convert_float_to_float16
  (keep_io_types=True)``, saved as it comes out (its input Casts stay at the end of the node
  list: the graph is not topologically sorted, onnx.checker rejects it, onnxruntime runs it);
- ``bert_cls.bf16.onnx``: written here (deploy_models.to_bf16): float32 initializers stored as
  bfloat16 and read through ``Cast(to=FLOAT)``; the arithmetic stays float32 because
  onnxruntime's CPU provider lacks bf16 kernels for MatMul, LayerNormalization, Softmax and
  most elementwise ops, so a torch bf16 export would not run there;
- ``*.qdq.onnx`` / ``*.qdq_tensor.onnx`` / ``*.qop.onnx``: ``quant_pre_process`` then
  ``quantize_static`` (int8, MinMax, 8 seeded random calibration batches) in QDQ format
  (per-channel, or per-tensor) and QOperator format; ``bert_cls.dynq.onnx``:
  ``quantize_dynamic``; ``llama_kv.nbits.onnx``: ``MatMulNBitsQuantizer`` (4 bits, block 32).

Files are normalised (IR version capped at 10, torch stack-trace metadata dropped, weights
inline), go through the full ONNX checker (or the plain one, or are recorded as rejected when
the toolchain's output is not valid as produced, see fp16), run in this venv's onnxruntime and
are compared with PyTorch (optimum exports; decoders run twice: 8 tokens with an empty cache,
then 1 token with the returned ``present.*``, against PyTorch on all 9 tokens) or with their
float ONNX source (conversions; the tolerance is per toolchain). Then every file is run again
with the project's onnxruntime (``--project-python``, default /work/venv/bin/python, through
this script's ``--run`` mode, which imports only numpy and onnxruntime) and must give the same
outputs; a file that fails anywhere is reported, deleted and skipped.

The exporters need ``transformers`` versions that optimum accepts, so the script runs in its
own virtual environment::

    python3 -m venv /work/optvenv
    /work/optvenv/bin/pip install torch==2.13.0
    /work/optvenv/bin/pip install -r golden_models/scripts/requirements-deploy.txt
    /work/optvenv/bin/python golden_models/scripts/make_deploy.py [FILE ...] [--table]

``FILE`` selects targets by file name (their sources are made first when missing);
``--table`` prints the README table rows; the summary is also written to
/tmp/make_deploy_last.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from golden_files import normalise

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "deploy"
HF_DIR = HERE.parent / "hf"
PROJECT_PYTHON = Path("/work/venv/bin/python")
DECODER_TOKENS = 9  # 8 with an empty cache, then 1 with the returned cache
TEXT_SEQ = 16
BF16 = "make_deploy.py: bf16 weights + Cast to float"
NOTABLE = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
           "MatMulInteger", "DynamicQuantizeLinear", "Cast")


@dataclass(frozen=True)
class Target:
    """One output file.

    Attributes:
        file: File name in ``golden_models/deploy``.
        source: The model it is made from (an HF model name or another target's file).
        toolchain: How it is made (README text).
        kind: Runner protocol: ``decoder``, ``encoder`` or ``image``.
        make: ``make(src, path)`` writes the file (``src`` is the source file or None).
        tol: Allowed ``max|out - ref| / max|ref|`` against the reference.
        feeds: Feed set name (an HF model name or ``image``).
    """

    file: str
    source: str
    toolchain: str
    kind: str
    make: Callable[[Path | None, Path], None]
    tol: float
    feeds: str


def targets() -> list[Target]:
    """All targets in priority order (sources before the files made from them)."""
    import deploy_models as dm

    def optimum(name: str) -> Callable[[Path | None, Path], None]:
        return lambda _src, path: dm.export_optimum(dm.build_hf(name), dm.HF[name].task, path)

    def image(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}

    def text(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return text_feeds(rng)

    opt = "optimum export"
    out: list[Target] = [
        Target("llama_kv.optimum.onnx", "llama_kv", opt, "decoder", optimum("llama_kv"), 1e-4,
               "llama_kv"),
        Target("gpt2_kv.optimum.onnx", "gpt2_kv", opt, "decoder", optimum("gpt2_kv"), 1e-4,
               "gpt2_kv"),
        Target("bert_cls.optimum.onnx", "bert_cls", opt, "encoder", optimum("bert_cls"), 1e-4,
               "bert_cls"),
        Target("qwen2_kv.optimum.onnx", "qwen2_kv", opt, "decoder", optimum("qwen2_kv"), 1e-4,
               "qwen2_kv"),
        Target("phi3_kv.optimum.onnx", "phi3_kv", opt, "decoder", optimum("phi3_kv"), 1e-4,
               "phi3_kv"),
    ]
    ortopt = "onnxruntime.transformers.optimizer (CPU, opt_level 1, model_type {})"
    for stem, model_type, kind in (("bert_cls", "bert", "encoder"), ("gpt2_kv", "gpt2", "decoder"),
                                   ("llama_kv", "gpt2", "decoder")):
        out.append(Target(f"{stem}.ortopt.onnx", f"{stem}.optimum.onnx",
                          ortopt.format(model_type), kind,
                          lambda s, p, t=model_type: dm.ort_optimize(s, p, t), 1e-3, stem))
    fp16 = "onnxruntime.transformers.float16.convert_float_to_float16(keep_io_types=True)"
    out += [
        Target("bert_cls.fp16.onnx", "bert_cls.optimum.onnx", fp16, "encoder", dm.to_fp16, 2e-2,
               "bert_cls"),
        Target("llama_kv.fp16.onnx", "llama_kv.optimum.onnx", fp16, "decoder", dm.to_fp16, 2e-2,
               "llama_kv"),
        Target("bert_cls.bf16.onnx", "bert_cls.optimum.onnx", BF16, "encoder", dm.to_bf16, 5e-2,
               "bert_cls"),
    ]
    qs = "quant_pre_process{} + quantize_static({}, per_channel={}, int8 MinMax)"
    for stem, fmt, per_channel, suffix, kind, make in (
            ("resnet_cls", "QDQ", True, "qdq", "image", image),
            ("mobilenetv2_cls", "QDQ", True, "qdq", "image", image),
            ("bert_cls", "QDQ", True, "qdq", "encoder", text),
            ("resnet_cls", "QDQ", False, "qdq_tensor", "image", image),
            ("resnet_cls", "QOperator", True, "qop", "image", image)):
        src = (f"hf/{stem}.torchscript.onnx" if kind == "image" else f"{stem}.optimum.onnx")
        pre = "" if kind == "image" else "(skip_symbolic_shape)"
        out.append(Target(f"{stem}.{suffix}.onnx", src, qs.format(pre, fmt, per_channel), kind,
                          lambda s, p, f=fmt, c=per_channel, m=make: dm.quant_static(s, p, m, f, c),
                          0.5, "image" if kind == "image" else stem))
    out += [
        Target("bert_cls.dynq.onnx", "bert_cls.optimum.onnx",
               "quant_pre_process(skip_symbolic_shape) + quantize_dynamic(QInt8)", "encoder",
               dm.quant_dynamic, 0.5, "bert_cls"),
        Target("llama_kv.nbits.onnx", "llama_kv.optimum.onnx",
               "MatMulNBitsQuantizer(bits=4, block_size=32, symmetric)", "decoder",
               dm.quant_nbits, 0.5, "llama_kv"),
    ]
    return out


def text_feeds(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """BERT inputs: random ids, a mask with the last 4 positions padded, segment ids 0.

    Args:
        rng: The generator.

    Returns:
        ``input_ids``, ``attention_mask``, ``token_type_ids``, each (1, 16) int64.
    """
    mask = np.ones((1, TEXT_SEQ), np.int64)
    mask[:, -4:] = 0
    return {"input_ids": rng.integers(1, 256, (1, TEXT_SEQ)).astype(np.int64),
            "attention_mask": mask, "token_type_ids": np.zeros((1, TEXT_SEQ), np.int64)}


def make_feeds(name: str) -> dict[str, np.ndarray]:
    """The seeded feeds of one feed set (decoders store only the 9-token id window)."""
    rng = np.random.default_rng(1500)
    if name == "image":
        return {"pixel_values": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)}
    if name == "bert_cls":
        return text_feeds(rng)
    return {"input_ids": rng.integers(1, 256, (1, DECODER_TOKENS)).astype(np.int64)}


def _np_type(ort_type: str) -> type:
    return {"tensor(float)": np.float32, "tensor(float16)": np.float16,
            "tensor(int64)": np.int64, "tensor(int32)": np.int32}[ort_type]


def run(path: Path, kind: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one file in onnxruntime (CPU) with the runner protocol of its kind.

    A decoder gets ``input_ids[:, :8]`` with an empty cache (past length 0), then the last
    token with the returned ``present.*`` as ``past_key_values.*``; ``attention_mask`` is all
    ones over past + new tokens and ``position_ids`` count from the past length.

    Args:
        path: The model.
        kind: ``decoder``, ``encoder`` or ``image``.
        feeds: The stored feeds.

    Returns:
        ``{"logits": ...}`` (a decoder's two steps concatenated along the sequence axis).
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = sess.get_inputs()
    if kind != "decoder":
        got = sess.run(["logits"], {i.name: feeds[i.name].astype(_np_type(i.type))
                                    for i in inputs})
        return {"logits": got[0]}
    ids = feeds["input_ids"]
    past: dict[str, np.ndarray] = {}
    for i in inputs:
        if i.name.startswith("past_key_values."):
            shape = [d if isinstance(d, int) else (1 if n == 0 else 0)
                     for n, d in enumerate(i.shape)]
            past[i.name] = np.zeros(shape, _np_type(i.type))
    logits = []
    names = [o.name for o in sess.get_outputs()]
    for start, stop in ((0, ids.shape[1] - 1), (ids.shape[1] - 1, ids.shape[1])):
        step = {"input_ids": ids[:, start:stop],
                "attention_mask": np.ones((1, stop), np.int64),
                "position_ids": np.arange(start, stop, dtype=np.int64)[None]}
        step.update(past)
        outs = dict(zip(names, sess.run(None, {i.name: step[i.name].astype(_np_type(i.type))
                                               for i in inputs}), strict=True))
        logits.append(outs["logits"])
        past = {k.replace("present.", "past_key_values."): v for k, v in outs.items()
                if k.startswith("present.")}
    return {"logits": np.concatenate(logits, axis=1)}


def rel_err(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """``max|got - ref| / max|ref|`` of the logits (shapes must agree)."""
    g, r = got["logits"].astype(np.float64), ref["logits"].astype(np.float64)
    assert g.shape == r.shape, f"logits shape {g.shape} != {r.shape}"
    return float(np.max(np.abs(g - r)) / max(float(np.max(np.abs(r))), 1e-12))


def checker(model: onnx.ModelProto) -> str:
    """The strongest onnx.checker level the model passes (``full``, ``plain``) or why not."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return "full"
    except Exception as exc:  # contrib ops have no schemas for shape inference, etc.
        full_err = str(exc).strip().splitlines()[0][:120]
    try:
        onnx.checker.check_model(model)
        return "plain"
    except Exception as exc:
        return f"rejected: {str(exc).strip().splitlines()[0][:160]} (full: {full_err})"


def op_summary(model: onnx.ModelProto) -> str:
    """Counts of the schema-less, quantisation and cast ops (README text).

    Schema-less: com.microsoft, and onnxruntime's contrib ops registered in the ONNX domain
    such as SimplifiedLayerNormalization.
    """
    ops = Counter((n.domain or "", n.op_type) for n in model.graph.node)
    parts = [f"{dom + ':' if dom not in ('', 'ai.onnx', 'com.microsoft') else ''}{op}\u00d7{c}"
             for (dom, op), c in sorted(ops.items(), key=lambda kv: kv[0][1])
             if not onnx.defs.has(op, dom) or op in NOTABLE]
    return ", ".join(parts) or "standard ops only"


def io_summary(model: onnx.ModelProto) -> str:
    """Inputs -> outputs with shapes, past/present layers folded into one entry each."""

    def one(v: onnx.ValueInfoProto) -> str:
        dims = [str(d.dim_value or d.dim_param) for d in v.type.tensor_type.shape.dim]
        dtype = onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()
        return f"{v.name} [{','.join(dims)}] {dtype}"

    def fold(vs: list[onnx.ValueInfoProto]) -> list[str]:
        seen: list[str] = []
        for v in vs:
            text = one(v)
            for prefix in ("past_key_values.", "present."):
                if v.name.startswith(prefix):
                    text = prefix + "N.key/value " + text.split(" ", 1)[1]
            if text not in seen:
                seen.append(text)
        return seen
    ins, outs = fold(list(model.graph.input)), fold(list(model.graph.output))
    return "; ".join(ins) + " \u2192 " + "; ".join(outs)


def project_check(python: Path, done: list[tuple[Target, Path, dict[str, np.ndarray]]],
                  tmp: Path) -> dict[str, str]:
    """Run every file with the project's onnxruntime; compare with this venv's outputs.

    Returns:
        File name -> ``ok`` or the reason it failed.
    """
    result: dict[str, str] = {}
    for target, path, outputs in done:
        feeds = tmp / f"{target.file}.in.npz"
        got = tmp / f"{target.file}.out.npz"
        np.savez(feeds, **make_feeds(target.feeds))
        proc = subprocess.run([str(python), str(Path(__file__).resolve()), "--run", str(path),
                               target.kind, str(feeds), str(got)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            result[target.file] = f"project onnxruntime failed: {lines[-1] if lines else '?'}"
            continue
        err = rel_err(dict(np.load(got)), outputs)
        result[target.file] = "ok" if err <= 1e-4 else f"project onnxruntime differs: {err:.2g}"
    return result


def make_one(target: Target, by_file: dict[str, Target],
             ) -> tuple[Path, dict[str, np.ndarray], dict[str, object]]:
    """Make, normalise, check and compare one target (its float source must exist)."""
    import deploy_models as dm

    path = OUT / target.file
    src: Path | None = None
    if target.source.startswith("hf/"):
        src = HF_DIR / target.source[3:]
    elif target.source in by_file:
        src = OUT / target.source
        assert src.exists(), f"source {target.source} was not made"
    target.make(src, path)
    model = normalise(path)
    level = checker(model)
    if level.startswith("rejected") and target.toolchain in ("optimum export", BF16):
        raise AssertionError(f"onnx.checker {level}")  # third-party tools' output is recorded
    feeds = make_feeds(target.feeds)
    got = run(path, target.kind, feeds)
    if src is None:
        ref, against = dm.torch_reference(target.source, feeds), "torch"
    else:
        ref, against = run(src, by_file[target.source].kind if target.source in by_file
                           else target.kind, feeds), target.source
    err = rel_err(got, ref)
    assert np.all(np.isfinite(got["logits"])), "non-finite logits"
    assert err <= target.tol, f"relative error {err:.3g} > {target.tol} against {against}"
    row = {"file": target.file, "source": target.source, "toolchain": target.toolchain,
           "checker": level, "against": against, "err": err, "ops": op_summary(model),
           "io": io_summary(model), "nodes": len(model.graph.node),
           "opset": ",".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
           "bytes": path.stat().st_size}
    return path, got, row


def versions() -> str:
    """The toolchain versions of this venv (README text)."""
    from importlib.metadata import version

    names = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime")
    return ", ".join(f"{n} {version(n)}" for n in names)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--run"]:  # the project-venv check: numpy + onnxruntime only
        path, kind, feeds, out = argv[1:5]
        np.savez(out, **run(Path(path), kind, dict(np.load(feeds))))
        return
    warnings.filterwarnings("ignore")
    import logging

    for name in ("torch.onnx", "transformers", "optimum", "onnxruntime", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    python = PROJECT_PYTHON
    if "--project-python" in argv:
        python = Path(argv[argv.index("--project-python") + 1])
    wanted = [a for a in argv if a.endswith(".onnx")]
    all_targets = targets()
    by_file = {t.file: t for t in all_targets}
    selected = set(wanted or by_file)
    for name in list(selected):  # make missing sources first
        src = by_file[name].source
        if src in by_file and not (OUT / src).exists():
            selected.add(src)
    OUT.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    skipped: list[dict[str, str]] = []
    done: list[tuple[Target, Path, dict[str, np.ndarray]]] = []
    for target in all_targets:
        if target.file not in selected:
            continue
        try:
            path, got, row = make_one(target, by_file)
        except Exception as exc:  # a toolchain that cannot handle a model is reported
            (OUT / target.file).unlink(missing_ok=True)
            lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
            skipped.append({"file": target.file, "why": lines[0][:300]})
            if "--debug" in argv:
                traceback.print_exc()
            continue
        rows.append(row)
        done.append((target, path, got))
    if python.exists():
        with tempfile.TemporaryDirectory() as tmp:
            status = project_check(python, done, Path(tmp))
        for row in list(rows):
            if status[str(row["file"])] != "ok":
                (OUT / str(row["file"])).unlink(missing_ok=True)
                skipped.append({"file": str(row["file"]), "why": status[str(row["file"])]})
                rows.remove(row)
    else:
        print(f"note: {python} not found, the project-onnxruntime check was not run")
    print(f"{'file':<28} {'checker':<9} {'against':<22} {'rel err':>8} {'nodes':>6} {'bytes':>8}")
    for r in rows:
        print(f"{r['file']:<28} {str(r['checker'])[:9]:<9} {r['against']:<22} {r['err']:>8.1e} "
              f"{r['nodes']:>6} {r['bytes']:>8}  {r['ops']}")
    print(f"{len(rows)} files, {sum(int(r['bytes']) for r in rows)} bytes in {OUT}")
    for s in skipped:
        print(f"skipped {s['file']}: {s['why']}")
    if "--table" in argv:
        print(f"\nToolchain: {versions()}\n")
        print("| file | source | toolchain | checker | rel. err (vs) | notable operators | "
              "inputs → outputs |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| `{r['file']}` | {r['source']} | {r['toolchain']} | {r['checker']} | "
                  f"{r['err']:.1e} ({r['against']}) | {r['ops']} | {r['io']} |")
    Path("/tmp/make_deploy_last.json").write_text(json.dumps(
        {"versions": versions(), "rows": rows, "skipped": skipped}, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main(sys.argv[1:])
