from __future__ import annotations

import dataclasses

import pytest

import spa_opt  # noqa: F401  (registers passes)
from spa_opt.errors import InputError
from spa_opt.passes import (
    FoldConstantsPass,
    PassSpec,
    SpaPass,
    all_passes,
    build_pipeline,
    format_pipeline,
    get_pass,
    option,
    parse_pipeline,
    register,
)

LIBRARY_PASSES = {"fold-constants", "shape-infer", "dce", "topo-sort", "check"}


def test_library_passes_are_registered():
    assert set(all_passes()) >= LIBRARY_PASSES


@pytest.mark.parametrize("name", sorted(LIBRARY_PASSES))
def test_every_pass_has_a_summary_and_documented_options(name):
    pass_cls = get_pass(name)
    assert pass_cls.summary()
    for info in pass_cls.option_infos().values():
        assert info.doc, f"{name}: option {info.key} has no doc"
        assert info.parse(info.format(info.default), name) == info.default


def test_canonical_text_round_trips_for_every_pass():
    text = ",".join(sorted(all_passes()))
    canonical = format_pipeline(parse_pipeline(text))
    assert format_pipeline(parse_pipeline(canonical)) == canonical
    assert "fold-constants<input-size-limit=8192;" in canonical


def test_options_parse_to_their_types():
    (spec,) = parse_pipeline(" fold-constants< input-size-limit = 12 ; initializer-inputs=no > ")
    built = spec.build()
    assert built.options.input_size_limit == 12
    assert built.options.initializer_inputs is False
    assert PassSpec.of(built).text() == (
        "fold-constants<input-size-limit=12;output-size-limit=16777216;"
        "lift-size-limit=1;rounds=4;initializer-inputs=false;untie-size-limit=1048576>"
    )


def test_non_canonical_text_keeps_only_given_options():
    specs = parse_pipeline("dce,fold-constants<lift-size-limit=4>")
    assert format_pipeline(specs, defaults=False) == "dce,fold-constants<lift-size-limit=4>"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("fold-constnts", "did you mean 'fold-constants'"),
        ("dce,,check", "stray ','"),
        ("fold-constants<input-size-limt=3>", "did you mean 'input-size-limit'"),
        ("fold-constants<input-size-limit=abc>", "type int"),
        ("fold-constants<initializer-inputs=maybe>", "true or false"),
        ("fold-constants<input-size-limit>", "needs a value"),
        ("fold-constants<input-size-limit=1;input-size-limit=2>", "given twice"),
        ("fold-constants<input-size-limit=1", "unclosed"),
        ("dce>", "unmatched"),
        ("fold-constants<a<b>>", "nested"),
        ("fold-constants<input-size-limit=1>x", "text after"),
    ],
)
def test_pipeline_errors_are_one_line_input_errors(text, message):
    with pytest.raises(InputError, match=message) as error:
        parse_pipeline(text)
    assert "\n" not in str(error.value)


def test_python_options_are_validated():
    assert FoldConstantsPass(input_size_limit=5).options.input_size_limit == 5
    assert FoldConstantsPass(**{"input-size-limit": 6}).options.input_size_limit == 6
    with pytest.raises(InputError, match="did you mean"):
        FoldConstantsPass(input_size_limt=5)
    with pytest.raises(InputError, match="type int"):
        FoldConstantsPass(input_size_limit="5")
    with pytest.raises(InputError, match="type int"):
        FoldConstantsPass(input_size_limit=True)


def test_registering_a_pass_with_literal_and_float_options():
    @register
    class ToyPass(SpaPass):
        """A toy pass for the registry test."""

        name = "test-toy-literal"
        preserves_analyses = True

        @dataclasses.dataclass
        class Options:
            mode: str = option("a", "a string option")
            level: float = option(0.5, "a float option")

    try:
        (spec,) = parse_pipeline("test-toy-literal<level=0.25;mode=b>")
        assert spec.build().options.level == 0.25
        text = spec.text(defaults=True)
        assert parse_pipeline(text) == parse_pipeline(text)
        assert build_pipeline(text)[0].options.mode == "b"
        with pytest.raises(InputError, match="may not contain"):
            ToyPass(mode="x;y")
    finally:
        from spa_opt.passes._infra import registry

        registry._PASSES.pop("test-toy-literal")


def test_names_must_be_kebab_case_and_unique():
    class Bad(SpaPass):
        """Bad."""

        name = "Not_Kebab"

    with pytest.raises(ValueError, match="kebab-case"):
        register(Bad)

    class Clash(SpaPass):
        """Clash."""

        name = "dce"

    with pytest.raises(ValueError, match="taken"):
        register(Clash)


def test_help_returns_zero(capsys):
    from spa_opt.cli import main

    assert main(["--help"]) == 0
    assert "--list-passes" in capsys.readouterr().out
