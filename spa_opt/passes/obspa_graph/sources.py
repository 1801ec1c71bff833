"""Where obspa's activations come from when the user gives none: synthesized or noise."""

from __future__ import annotations

from typing import Any

import onnx_ir as ir


def can_synthesize(model: ir.Model) -> bool:
    """Whether the data-free default can synthesize inputs: the extra, float inputs only."""
    import spa_opt.autodiff as autodiff

    inputs = [v for v in model.graph.inputs if v.name not in model.graph.initializers]
    return autodiff.available() and bool(inputs) and all(
        v.dtype is not None and v.dtype.is_floating_point() for v in inputs)


DEFAULT_SYNTH_SECONDS = 120.0
"""How long the data-free default may spend synthesizing, estimated from its first steps,
before it falls back to noise: 3-8x what the digits models take (15-35 s on one thread),
a fraction of what a model with a fixed batch of 1 can (the golden HF MobileViT, 472 s)."""


def synthesize(model: ir.Model, context: Any, explicit: bool, samples: int) -> str:
    """Run ``synthesize`` (its defaults, ``samples`` inputs) into the context; why not, or ''.

    Asked for explicitly (``hessian=synth``) a failure is the user's error and there is
    no time limit; as the data-free default it falls back to noise, the report says why,
    and it gives up when its first steps say it would take over
    :data:`DEFAULT_SYNTH_SECONDS`.
    """
    from spa_opt.passes.synthesize import SynthesizePass

    options: dict[str, Any] = {"samples": samples} if samples else {}
    if not explicit:
        options["max_seconds"] = DEFAULT_SYNTH_SECONDS
    synthesizer = SynthesizePass(**options)
    synthesizer.stats = {}
    try:
        synthesizer.run(model, context)
    except Exception as error:  # the data-free default must not fail where noise works
        if explicit:
            raise
        return f"synthesize failed, noise used: {type(error).__name__}: {error}"
    return ""
