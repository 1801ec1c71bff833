"""The base class of every spa-opt pass, and its typed options.

A pass is an ``onnx_ir.passes.InPlacePass`` with three additions:

- ``name``: the short kebab-case name used in pipeline text and ``--list-passes``;
- ``Options``: a dataclass of typed, documented options (``bool``, ``int``,
  ``float``, ``str`` or a ``Literal`` of strings), built with :func:`option`;
- ``stats``: counters the pass fills while it runs, collected by the pass manager.

Subclasses implement :meth:`SpaPass.run`, which also receives the model's
:class:`~spa_opt.passes._infra.context.PipelineContext`. Because the base class keeps the
``InPlacePass`` contract, every spa-opt pass runs inside ``onnx_ir.passes.Sequential``
or any toolchain that already runs onnx_ir passes.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

import onnx_ir as ir

from spa_opt.errors import InputError, did_you_mean
from spa_opt.passes._infra.context import PipelineContext

_FORBIDDEN_IN_VALUES = ",;<>="


def option(default: Any, doc: str) -> Any:
    """Declare a pass option with its default and one line of documentation."""
    return dataclasses.field(default=default, metadata={"doc": doc})


@dataclasses.dataclass
class NoOptions:
    """Options of a pass that has none."""


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """One option as the user sees it: kebab-case key, type, default and doc."""

    key: str
    field: str
    type: Any
    default: Any
    doc: str

    @property
    def type_name(self) -> str:
        """The type as written in ``--list-passes``."""
        if get_origin(self.type) is Literal:
            return "|".join(get_args(self.type))
        return self.type.__name__

    def parse(self, text: str, pass_name: str) -> Any:
        """Convert pipeline text to a typed value, or raise a one-line InputError."""
        where = f"option '{self.key}' of pass '{pass_name}'"
        text = text.strip()
        if get_origin(self.type) is Literal:
            choices = get_args(self.type)
            if text not in choices:
                raise InputError(f"{where} must be one of {', '.join(choices)}; got '{text}'")
            return text
        if self.type is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise InputError(f"{where} takes true or false; got '{text}'")
        try:
            return self.type(text)
        except ValueError:
            raise InputError(
                f"{where} takes a value of type {self.type_name}; got '{text}'"
            ) from None

    def format(self, value: Any) -> str:
        """Render a value so that :meth:`parse` reads it back identically."""
        if isinstance(value, bool):
            return "true" if value else "false"
        return repr(value) if isinstance(value, float) else str(value)

    def validate(self, value: Any, pass_name: str) -> Any:
        """Check a Python value given for this option (API callers skip the parser)."""
        where = f"option '{self.key}' of pass '{pass_name}'"
        if get_origin(self.type) is Literal:
            if value not in get_args(self.type):
                choices = ", ".join(get_args(self.type))
                raise InputError(f"{where} must be one of {choices}; got {value!r}")
            return value
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise InputError(f"{where} takes a value of type {self.type_name}; got {value!r}")
        if isinstance(value, str) and any(c in value for c in _FORBIDDEN_IN_VALUES):
            raise InputError(f"{where} may not contain any of {_FORBIDDEN_IN_VALUES!r}")
        return value


def options_of(options_cls: type) -> dict[str, OptionInfo]:
    """The options of an ``Options`` dataclass, keyed by their kebab-case names."""
    hints = typing.get_type_hints(options_cls)
    infos = {}
    for field in dataclasses.fields(options_cls):
        key = field.name.replace("_", "-")
        infos[key] = OptionInfo(
            key, field.name, hints[field.name], field.default, field.metadata.get("doc", "")
        )
    return infos


class SpaPass(ir.passes.InPlacePass):
    """Base class of spa-opt passes; see the module docstring."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    preserves_analyses: ClassVar[bool] = False
    """True for analyses and for passes that never change the graph's structure."""

    def __init__(self, options: Any = None, /, **values: Any) -> None:
        super().__init__()
        if options is not None and values:
            raise TypeError("give an Options instance or keyword options, not both")
        if options is None:
            options = self.make_options(values)
        self.options = options
        self.stats: dict[str, int | float] = {}

    @classmethod
    def option_infos(cls) -> dict[str, OptionInfo]:
        """This pass's options keyed by kebab-case name."""
        return options_of(cls.Options)

    @classmethod
    def summary(cls) -> str:
        """The first line of the pass's docstring."""
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def make_options(cls, values: Mapping[str, Any]) -> Any:
        """Build ``Options`` from Python values keyed by field or kebab-case name."""
        infos = cls.option_infos()
        by_field = {info.field: info for info in infos.values()}
        kwargs = {}
        for key, value in values.items():
            info = infos.get(key) or by_field.get(key)
            if info is None:
                raise InputError(
                    f"pass '{cls.name}' has no option '{key}'{did_you_mean(key, infos)}"
                )
            kwargs[info.field] = info.validate(value, cls.name)
        return cls.Options(**kwargs)

    def count(self, key: str, amount: int | float = 1) -> None:
        """Add ``amount`` to the counter ``key`` of this run's statistics."""
        self.stats[key] = self.stats.get(key, 0) + amount

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        """Run the pass with fresh statistics, then invalidate stale analyses."""
        self.stats = {}
        context = PipelineContext.of(model)
        result = self.run(model, context)
        if result.modified and not self.preserves_analyses:
            context.invalidate_analyses()
        return result

    def run(self, model: ir.Model, context: PipelineContext) -> ir.passes.PassResult:
        """Transform or analyse ``model``; subclasses implement this."""
        raise NotImplementedError

    def pipeline_text(self) -> str:
        """Canonical pipeline text of this instance, every option written out."""
        infos = self.option_infos()
        if not infos:
            return self.name
        body = ";".join(
            f"{key}={info.format(getattr(self.options, info.field))}"
            for key, info in infos.items()
        )
        return f"{self.name}<{body}>"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.pipeline_text()}>"
