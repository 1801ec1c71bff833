"""The jobs of bench/any_time.py: what each (setting, model, method, ratio) runs.

A job is one process (``bench/any_time.py --child``, one thread): it exports the model at
initialisation or takes the trained golden model, prunes it with the real ``spa-opt``
CLI, trains or fine-tunes it through the autodiff backend when the setting says so,
and measures test accuracy in onnxruntime. The driver (queue, workers, tables, goals)
is bench/any_time.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if importlib.util.find_spec("spa_opt") is None:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))


DIGITS = ROOT / "golden_models" / "digits"
SCRIPTS = ROOT / "golden_models" / "scripts"
CALIB = DIGITS / "calib.npz"
MODELS = ("resnet", "mobilenetv2", "vit")
RATIOS = (0.5, 0.35)
LABELLED_SIZE = 256
LABELLED_SEED = 0
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}
GOAL_BEFORE = 1.0  # points
GOAL_FINETUNE = 0.5
GOAL_DATA_FREE = 2.0
GOAL_RATIO = 0.5
FLOPS_SLACK = 0.02


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method prunes: its pipeline (None: not pruned) and calibration inputs."""

    pipeline: str | None
    calib: str | None = None  # None, "labelled" (train256.npz) or "real" (calib.npz)


SETTINGS: dict[str, dict[str, Method]] = {  # display order
    "no-fine-tune": {
        "l1": Method("couple,group,l1,prune"),
        "obspa-synth": Method("couple,group,synthesize,obspa,prune"),
        "obspa-noise": Method("couple,group,obspa<hessian=noise>,prune"),
        "obspa": Method("couple,group,obspa,prune", "real"),
    },
    "fine-tune": {
        "l1": Method("couple,group,l1,prune"),
        "taylor": Method("couple,group,taylor,prune", "labelled"),
        "obspa": Method("couple,group,obspa,prune", "real"),
    },
    "before-training": {
        "unpruned": Method(None),
        "random": Method("couple,group,random,prune"),
        "l1": Method("couple,group,l1,prune"),
        "snip": Method("couple,group,snip,prune", "labelled"),
        "grasp": Method("couple,group,grasp,prune", "labelled"),
        "synflow": Method("couple,group,synflow,prune"),
        "crop": Method("couple,group,crop,prune", "labelled"),
        "precrop": Method("couple,group,precrop,prune"),
    },
}
QUEUE_FIRST = ("precrop", "synflow")  # before-training: the goal's methods first
DATA_FREE = ("obspa-synth", "obspa-noise")


@dataclasses.dataclass(frozen=True)
class Job:
    """One cell of a table."""

    setting: str
    model: str
    method: str
    ratio: float

    @property
    def key(self) -> str:
        """``setting/model/method/ratio``: the job's name in the results file."""
        return f"{self.setting}/{self.model}/{self.method}/{self.ratio:g}"

    @property
    def slug(self) -> str:
        """The key as a file name."""
        return self.key.replace("/", "_")


def job_config(job: Job, args: argparse.Namespace) -> dict[str, Any]:
    """The options a job's result depends on: a cached result is reused only if they match."""
    config: dict[str, Any] = {"scope": args.scope}
    if job.setting != "no-fine-tune":
        config["epochs_scale"] = args.epochs_scale
    if job.setting == "fine-tune":
        config["finetune_epochs"] = args.finetune_epochs
    return config


def scaled(epochs: int, scale: float) -> int:
    """Epochs of a schedule shortened by ``scale`` (at least 1; ``scale`` 1: unchanged)."""
    return max(1, round(epochs * scale))


# --------------------------------------------------------------------------- child


def one_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created) for the block: one builder per file."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def untie_shared(proto: Any) -> int:
    """Give every extra reader of a shared float initializer (not a scalar) its own copy.

    At initialisation many weights are equal (zero biases, unit LayerNorm scales) and the
    dynamo exporter stores equal initializers once; trained as one tensor they would stay
    tied, and pruning would couple every layer that reads them. make_digits'
    ``untie_initializers`` does the same for the TorchScript exporter's Identity nodes.
    """
    from onnx import TensorProto

    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
    inits = {t.name: t for t in proto.graph.initializer}
    seen: set[str] = set()
    copies = 0
    for node in proto.graph.node:
        for index, name in enumerate(node.input):
            tensor = inits.get(name)
            if tensor is None or tensor.data_type not in floats or math.prod(tensor.dims) <= 1:
                continue
            if name not in seen:
                seen.add(name)
                continue
            copies += 1
            copy = TensorProto()
            copy.CopyFrom(tensor)
            copy.name = f"{name}.untied{copies}"
            proto.graph.initializer.append(copy)
            node.input[index] = copy.name
    return copies


def init_model(model: str, work: Path, md: Any, data: Any) -> Path:
    """The architecture at initialisation as ONNX (built once, shared by all jobs)."""
    import onnx
    import torch
    from make_torch import normalise

    path = work / "init" / f"{model}.onnx"
    with locked(path.with_suffix(".lock")):
        if path.exists():
            return path
        recipe = md.MODELS[model]
        torch.manual_seed(recipe.seed)
        net = recipe.build().eval()
        test = data.normalise(data.test)
        with torch.no_grad():
            expected = net(test)
        tmp = path.with_name(f"{model}.tmp.onnx")
        md.export(net, test[:2], tmp, keep_batchnorm=model != "vit")
        proto = normalise(tmp)
        if md.untie_initializers(proto) + untie_shared(proto):
            onnx.save(proto, str(tmp), save_as_external_data=False)
        md.check(tmp, proto, test, expected)  # full checker, dynamic batch, matches torch
        assert (md.batchnorm_count(proto) > 0) == (model != "vit"), "BatchNorm not kept"
        tmp.replace(path)
    return path


def labelled_calib(work: Path, md: Any, data: Any) -> Path:
    """256 preprocessed training images with labels: ``image`` and ``label``."""
    import numpy as np

    path = work / f"train{LABELLED_SIZE}.npz"
    with locked(path.with_suffix(".lock")):
        if not path.exists():
            index = np.sort(np.random.default_rng(LABELLED_SEED).choice(
                len(data.train), LABELLED_SIZE, replace=False))
            tmp = path.with_name("train.tmp.npz")
            np.savez_compressed(tmp, image=data.normalise(data.train[index]).numpy(),
                                label=data.train_labels[index].numpy().astype(np.int64))
            tmp.replace(path)
    return path


class PruneError(RuntimeError):
    """spa-opt failed; the message is its exit code and its one-line error."""


def spa_opt_command() -> list[str]:
    """The installed ``spa-opt`` entry point of this interpreter, else the same via -c."""
    script = Path(sys.executable).parent / "spa-opt"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from spa_opt.cli import main; sys.exit(main())"]


def prune(job: Job, method: Method, source: Path, out: Path, calib: Path | None, scope: str
          ) -> dict[str, Any]:
    """Run ``spa-opt`` on ``source``; return the command and the FLOPs/params kept."""
    report = out.with_suffix(".report.json")
    options = ["-p", method.pipeline, "--target-flops", f"{job.ratio:g}", "--scope", scope]
    if calib is not None:
        options += ["--calib", str(calib)]
    command = [*spa_opt_command(), *options, "--no-progress", "--report", str(report),
               str(source), str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    (out.parent / "spa-opt.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        last = lines[-1].strip().removeprefix("spa-opt: error: ") if lines else "no message"
        raise PruneError(f"spa-opt exit {done.returncode}: {last}")
    data = json.loads(report.read_text())
    shown = ["spa-opt", *options[:6], *(["--calib", calib.name] if calib else []),
             f"{source.parent.name}/{source.name}", "out.onnx"]
    return {"command": shlex.join(shown), "prune_seconds": seconds,
            "flops_kept": data["flops"]["after"] / data["flops"]["before"],
            "params_kept": data["params"]["after"] / data["params"]["before"]}


def ort_logits(path: Path, images: Any) -> Any:
    """Logits of the ONNX file at ``path`` in onnxruntime, one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"image": images})[0]


def train_onnx(source: Path, out: Path, recipe: Any, md: Any, data: Any, name: str
               ) -> dict[str, Any]:
    """Train the ONNX model at ``source`` as a TorchGraph with ``recipe``; save it to ``out``."""
    import numpy as np
    import torch

    from spa_opt.autodiff.graph import TorchGraph
    from spa_opt.ir.io import load_model, save_model

    class Logits(torch.nn.Module):
        """The graph's one output, as make_digits' loop expects."""

        def __init__(self, graph: TorchGraph) -> None:
            super().__init__()
            self.graph = graph

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.graph(x)[0]

    model = load_model(source)
    graph = TorchGraph(model)
    frozen = []
    for onnx_name, tensor in graph.named_initializers():
        if tensor.numel() <= 1:  # constants the exporter lifted (attention scale), not weights
            tensor.requires_grad_(False)
            frozen.append(onnx_name)
    net, seconds = md.fit(Logits(graph), recipe, data, name)
    graph.write_back(model)
    save_model(model, out)
    test = data.normalise(data.test)
    with torch.no_grad():
        expected = net(test).numpy()
    got = ort_logits(out, test.numpy())
    return {"train_seconds": seconds, "frozen": frozen,
            "ort_vs_torch": float(np.max(np.abs(got - expected)))}


def run_job(job: Job, config: dict[str, Any], work: Path) -> dict[str, Any]:
    """Prune (and train) one job; return its measurements."""
    import numpy as np
    import torch

    sys.path.insert(0, str(SCRIPTS))
    import make_digits as md

    torch.set_num_threads(1)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    method = SETTINGS[job.setting][job.method]
    recipe = md.MODELS[job.model]
    data = md.load()
    folder = work / "jobs" / job.slug
    folder.mkdir(parents=True, exist_ok=True)
    source = (init_model(job.model, work, md, data) if job.setting == "before-training"
              else DIGITS / f"{job.model}.onnx")
    calib = (None if method.calib is None else CALIB if method.calib == "real"
             else labelled_calib(work, md, data))
    out: dict[str, Any] = {}
    if method.pipeline is None:
        pruned = source
        out.update(flops_kept=1.0, params_kept=1.0, command="(not pruned)")
    else:
        pruned = folder / "pruned.onnx"
        out.update(prune(job, method, source, pruned, calib, config["scope"]))
    test = np.load(DIGITS / "test.npz")
    correct = ort_logits(pruned, test["image"]).argmax(1) == test["label"]
    out["pruned_accuracy"] = float(correct.mean())
    if job.setting == "no-fine-tune":
        out["accuracy"] = out["pruned_accuracy"]
        return out
    if job.setting == "before-training":
        epochs = scaled(recipe.epochs, config["epochs_scale"])
        warmup = min(round(recipe.warmup_epochs * config["epochs_scale"]), epochs - 1)
        schedule = dataclasses.replace(recipe, epochs=epochs, warmup_epochs=max(0, warmup))
    else:
        epochs = scaled(config["finetune_epochs"], config["epochs_scale"])
        schedule = dataclasses.replace(recipe, epochs=epochs, lr=recipe.lr / 10,
                                       warmup_epochs=0)
    out["schedule"] = {"epochs": schedule.epochs, "lr": schedule.lr,
                       "warmup_epochs": schedule.warmup_epochs}
    trained = folder / "trained.onnx"
    out.update(train_onnx(pruned, trained, schedule, md, data, job.key))
    correct = ort_logits(trained, test["image"]).argmax(1) == test["label"]
    out["accuracy"] = float(correct.mean())
    return out


def child(spec: dict[str, Any]) -> int:
    """Run the job in ``spec`` and write its record to ``spec["out"]``."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    job = Job(**spec["job"])
    record: dict[str, Any] = {**dataclasses.asdict(job), "key": job.key,
                              "config": spec["config"], "error": None}
    start = time.perf_counter()
    try:
        record.update(run_job(job, spec["config"], Path(spec["work"])))
    except Exception as error:  # one line in the table, the traceback in the log
        import traceback

        traceback.print_exc()
        record["error"] = one_line(error)
    record["seconds"] = time.perf_counter() - start
    record["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    Path(spec["out"]).write_text(json.dumps(record))
    return 0


# --------------------------------------------------------------------------- parent


