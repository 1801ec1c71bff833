"""Pass infrastructure, kept apart from the passes (as onnx_ir keeps ``_pass_infra.py``).

- :mod:`.base`: :class:`~.base.SpaPass` and its typed options;
- :mod:`.registry`: pass names to classes;
- :mod:`.context`: the pipeline context (targets, analyses, report facts);
- :mod:`.pipeline`: pipeline text, parsed and printed;
- :mod:`.manager` and :mod:`.instruments`: running passes with instruments around them.

Nothing here imports a pass statically: the registry loads a pass's module by name
(its table) only when that pass is asked for, so a run imports what it runs.
"""
