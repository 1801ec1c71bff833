"""Pipeline text, in the style of LLVM's new pass manager.

Grammar::

    pipeline := spec ("," spec)*
    spec     := name ("<" option (";" option)* ">")?
    option   := key "=" value

``fold-constants<size-limit=1000000>,dce`` runs two passes. :meth:`PassSpec.text`
with ``defaults=True`` writes every option with its value, and that canonical text
parses back to the same pipeline (``--print-pipeline``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from spa_opt.errors import InputError, did_you_mean
from spa_opt.passes._infra.base import SpaPass
from spa_opt.passes._infra.registry import get_pass


@dataclasses.dataclass(frozen=True)
class PassSpec:
    """One pass of a pipeline: its name and the options given explicitly."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, pass_: SpaPass) -> PassSpec:
        """The spec of an existing pass instance, every option explicit."""
        values = tuple(
            (key, getattr(pass_.options, info.field))
            for key, info in pass_.option_infos().items()
        )
        return cls(pass_.name, values)

    def canonical(self) -> PassSpec:
        """The same spec with every option present, defaults filled in."""
        return PassSpec.of(self.build())

    def build(self) -> SpaPass:
        """Instantiate the pass."""
        return get_pass(self.name)(**dict(self.options))

    def text(self, defaults: bool = False) -> str:
        """Pipeline text for this spec; with ``defaults``, the canonical form."""
        if defaults:
            return self.build().pipeline_text()
        if not self.options:
            return self.name
        infos = get_pass(self.name).option_infos()
        body = ";".join(f"{key}={infos[key].format(value)}" for key, value in self.options)
        return f"{self.name}<{body}>"


def _split_top_level(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "<":
            depth += 1
            if depth > 1:
                raise InputError(f"nested '<' in pipeline at position {i}: '{text}'")
        elif char == ">":
            depth -= 1
            if depth < 0:
                raise InputError(f"unmatched '>' in pipeline at position {i}: '{text}'")
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise InputError(f"unclosed '<' in pipeline: '{text}'")
    parts.append(text[start:])
    return parts


def _parse_spec(text: str) -> PassSpec:
    text = text.strip()
    if not text:
        raise InputError("empty pass name in pipeline (a stray ',')")
    name, _, rest = text.partition("<")
    name = name.strip()
    pass_cls = get_pass(name)
    if not rest:
        return PassSpec(name)
    if not rest.endswith(">"):
        raise InputError(f"text after '>' in '{text}'")
    infos = pass_cls.option_infos()
    values: dict[str, Any] = {}
    for item in rest[:-1].split(";"):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise InputError(f"option '{key}' of pass '{name}' needs a value: '{key}=...'")
        if key not in infos:
            raise InputError(f"pass '{name}' has no option '{key}'{did_you_mean(key, infos)}")
        if key in values:
            raise InputError(f"option '{key}' of pass '{name}' is given twice")
        values[key] = infos[key].parse(value, name)
    return PassSpec(name, tuple(values.items()))


def parse_pipeline(text: str) -> list[PassSpec]:
    """Parse pipeline text into specs; every error is a one-line InputError."""
    if not text or not text.strip():
        raise InputError("the pipeline is empty: give passes with -p, e.g. -p dce")
    return [_parse_spec(part) for part in _split_top_level(text)]


def format_pipeline(specs: list[PassSpec], defaults: bool = True) -> str:
    """Pipeline text for ``specs``; canonical (every option) by default."""
    return ",".join(spec.text(defaults) for spec in specs)


def build_pipeline(text_or_specs: str | list[PassSpec]) -> list[SpaPass]:
    """Instantiate the passes of a pipeline."""
    specs = parse_pipeline(text_or_specs) if isinstance(text_or_specs, str) else text_or_specs
    return [spec.build() for spec in specs]
