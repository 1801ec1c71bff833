"""spa-opt as an Olive pass: structured pruning inside an Olive workflow.

Olive (``olive-ai``, extra ``olive``) finds a workflow's passes through a *package
config*: a JSON of pass names to module paths. :func:`package_config` returns Olive's
own, with ``SpaOptPruning`` added, so a workflow JSON can name it beside Olive's passes::

    {"input_model": {"type": "ONNXModel", "model_path": "model.onnx"},
     "passes": {"prune": {"type": "SpaOptPruning", "pipeline": "couple,group,obspa,prune",
                          "target_flops": 0.5, "calibration": "calib.npz"},
                "peephole": {"type": "OnnxPeepholeOptimizer"}},
     "output_dir": "out"}

    from spa_opt.integrations.olive import run_workflow
    run_workflow("workflow.json")          # olive.workflows.run with the package config

(``olive run --config workflow.json --package-config PKG.json`` works the same with the
file :func:`write_package_config` writes.) The pass takes an ``ONNXModelHandler`` and
returns one: the pruned model saved by Olive's own helper (external data as the pass's
``save_as_external_data`` options say), with spa-opt's run report as
``spa_opt_report.json`` beside it. Its options are :func:`spa_opt.optimize`'s: the
pipeline text, the targets, the calibration source, symbolic input sizes, a plan to
replay, and how latency is measured. Bad options or a model spa-opt refuses raise
Olive's error with spa-opt's one-line message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from olive.hardware.accelerator import AcceleratorSpec
from olive.model import ONNXModelHandler
from olive.model.utils import resolve_onnx_path
from olive.package_config import OlivePackageConfig
from olive.passes import Pass
from olive.passes.onnx.common import get_external_data_config, model_proto_to_olive_model
from olive.passes.pass_config import BasePassConfig, PassConfigParam

PASS_NAME = "SpaOptPruning"


class SpaOptPruning(Pass):
    """Structured pruning of an ONNX model with a spa-opt pipeline."""

    @classmethod
    def _default_config(cls, accelerator_spec: AcceleratorSpec) -> dict[str, PassConfigParam]:
        def param(type_: Any, default: Any, description: str) -> PassConfigParam:
            return PassConfigParam(type_=type_, default_value=default, description=description)

        return {
            "pipeline": param(str, "couple,group,obspa,prune",
                              "spa-opt pipeline text (spa-opt --list-passes)"),
            "ratio": param(float | None, None, "fraction of prunable channels to remove"),
            "target_flops": param(float | None, None, "fraction of the FLOPs to keep"),
            "target_params": param(float | None, None, "fraction of the parameters to keep"),
            "target_latency": param(float | None, None,
                                    "fraction of the latency measured on onnxruntime to keep"),
            "scope": param(str, "local", "rank channels per group (local) or across (global)"),
            "round_to": param(str, "1", "keep channel counts multiples of this, or 'auto'"),
            "calibration": param(str | None, None,
                                 "calibration inputs for obspa (.npz/.npy or a folder of images)"),
            "input_dims": param(dict | None, None, "sizes of symbolic input dims, by name"),
            "plan": param(str | None, None, "a saved spa-opt plan to replay (--plan)"),
            "verify": param(int, 0, "compare outputs before and after on this many inputs"),
            "seed": param(int, 0, "seed of every random choice"),
            **get_external_data_config(),
        }

    def _run_for_config(self, model: ONNXModelHandler, config: type[BasePassConfig],
                        output_model_path: str) -> ONNXModelHandler:
        """Prune ``model`` with spa-opt and save the result where Olive asks."""
        import onnx_ir as ir

        from spa_opt.api import optimize
        from spa_opt.errors import InputError

        output = resolve_onnx_path(output_model_path, Path(model.model_path).name)
        round_to: int | str = (config.round_to if str(config.round_to) == "auto"
                               else int(config.round_to))
        try:
            pruned, report = optimize(
                model.model_path, config.pipeline, ratio=config.ratio,
                target_flops=config.target_flops, target_params=config.target_params,
                target_latency=config.target_latency, scope=config.scope, round_to=round_to,
                calibration=config.calibration, input_dims=config.input_dims or None,
                plan=config.plan, verify=config.verify, seed=config.seed)
        except InputError as error:
            raise ValueError(f"SpaOptPruning: {error}") from None
        result = model_proto_to_olive_model(ir.to_proto(pruned), output, config)
        (Path(output).parent / "spa_opt_report.json").write_text(
            json.dumps(report.to_dict(), indent=1, default=str) + "\n")
        return result


def package_config() -> dict[str, Any]:
    """Olive's default package config with ``SpaOptPruning`` added."""
    with open(OlivePackageConfig.get_default_config_path()) as handle:
        data = json.load(handle)
    data["passes"][PASS_NAME] = {
        "module_path": f"{__name__}.{SpaOptPruning.__name__}",
        "supported_providers": ["*"], "supported_accelerators": ["*"],
        "supported_precisions": ["*"], "supported_algorithms": [],
        "supported_quantization_encodings": [],
    }
    return data


def write_package_config(path: str | Path) -> Path:
    """Write :func:`package_config` to ``path`` (for ``olive run --package-config``)."""
    target = Path(path)
    target.write_text(json.dumps(package_config(), indent=1) + "\n")
    return target


def run_workflow(workflow: str | Path | Mapping[str, Any]) -> Any:
    """Run an Olive workflow (a JSON/YAML path or a dict) that may name ``SpaOptPruning``."""
    from olive.workflows import run

    config = dict(workflow) if isinstance(workflow, Mapping) else str(workflow)
    return run(config, package_config=package_config())
