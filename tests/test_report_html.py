"""The HTML report: ``--report-html`` during a run and ``spa-opt report`` afterwards.

The page is checked as HTML (one bar per layer, every section, hostile names escaped)
and, in a real headless Chromium driven by Playwright, as a page: it loads with no
console error, requests nothing but itself (every other request is refused), and
shows one width bar per weighted layer. CI installs Debian's Chromium (.ci/run); on a
machine without it the browser test is skipped, except under .ci/run (``SPA_OPT_CI``
set), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import GOLDEN

from spa_opt.cli import main
from spa_opt.report_html import render_html

DIGITS = GOLDEN / "digits"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """One obspa run on the digits ResNet with both report files."""
    folder = tmp_path_factory.mktemp("html")
    report, page = folder / "run.json", folder / "run.html"
    code = main(["-p", "couple,group,obspa<propagate=original>,prune", "--target-flops", "0.5",
                 "--calib",
                 str(DIGITS / "calib.npz"), "--verify", "2", "--no-progress",
                 "--report", str(report), "--report-html", str(page),
                 str(DIGITS / "resnet.onnx"), str(folder / "pruned.onnx")])
    assert code == 0
    return report, page, json.loads(report.read_text())


def test_page_has_a_bar_per_layer_and_every_section(run):
    _, page, report = run
    text = page.read_text()
    layers = report["prune"]["layers"]
    assert len(layers) == 21
    assert text.count('<div class="layer">') == len(layers)
    for heading in ("Targets", "Layers", "Groups", "Pinned channels by reason", "Passes"):
        assert f">{heading}</h" in text
    assert ">met<" in text  # the FLOPs target
    assert "layers.7.conv2.0.weight" in text and "reaches graph output" in text
    # obspa's per-layer errors are shown: one error bar per reconstructed layer
    assert text.count('class="error"') == len(report["obspa"]["layers"])
    # per-layer FLOPs sum to (nearly) the model's: the layers carry the cost
    assert sum(layer["flops"]["before"] for layer in layers) <= report["flops"]["before"]
    assert sum(layer["flops"]["after"] for layer in layers) > 0.9 * report["flops"]["after"]
    assert "<script" not in text and "http" not in text


def test_report_subcommand_gives_the_same_page(run, tmp_path):
    report, page, _ = run
    out = tmp_path / "again.html"
    assert main(["report", str(report), "-o", str(out), "--title", "resnet.onnx"]) == 0
    assert out.read_text() == page.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # as readable as any file written


def test_names_are_escaped_and_missing_sections_render():
    report = {"spa_opt_version": "0", "pipeline": "dce", "passes": [],
              "params": {"before": 1, "after": 1}, "flops": {"before": 0, "after": 0},
              "targets": {}, "groups": None,
              "prune": {"layers": [{"node": "<script>alert(1)</script>", "op": "Conv",
                                    "weight": "w&<b>", "before": [4, 2], "after": None}]}}
    text = render_html(report, title="<i>t</i>")
    assert "<script>alert" not in text and "&lt;script&gt;" in text
    assert "<i>t</i>" not in text and "w&amp;&lt;b&gt;" in text
    assert ">removed<" in text and "no groups" in text


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"pipeline": "dce"}', "is not a spa-opt run report: no 'spa_opt_version'"),
    ('{"spa_opt_version": "0", "pipeline": "dce", "passes": 5, "params": {},'
     ' "flops": {}}', "not a readable spa-opt run report"),
    ('{"spa_opt_version": "0", "pipeline": "dce", "passes": [], "params": {},'
     ' "flops": {}, "x": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
])
def test_report_subcommand_bad_input_exit_2(tmp_path, capsys, content, message):
    source = tmp_path / "r.json"
    if content is not None:
        source.write_text(content)
    out = tmp_path / "out.html"
    assert main(["report", str(source), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == (
        ["r.json"] if content is not None else [])


def test_report_html_refuses_bad_paths(tmp_path, capsys):
    model, out = DIGITS / "resnet.onnx", tmp_path / "p.onnx"
    same = tmp_path / "r.txt"
    assert main(["-p", "dce", "--report", str(same), "--report-html", str(same),
                 str(model), str(out)]) == 2
    assert "(--report-html): --report also writes it" in capsys.readouterr().err
    assert main(["-p", "dce", "--report-html", str(tmp_path / "no" / "r.html"),
                 str(model), str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["-p", "dce", "--report-html", str(out), str(model), str(out)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_numbers_from_a_report_are_escaped_too():
    """A report handed over by someone else: every field is text to the page."""
    report = {"spa_opt_version": "0", "pipeline": "dce", "passes": [],
              "params": {"before": 1, "after": 1}, "flops": {"before": 0, "after": 0},
              "channels": {"removed": "<img src=x onerror=alert(1)>", "total": 3},
              "groups": [{"id": "g0", "primary": "w:0", "units": "<script>x()</script>",
                          "block": 1, "channels": "<b>4</b>", "prunable": True,
                          "pinned_units": 0}]}
    text = render_html(report)
    assert "<script>x()" not in text and "<img" not in text and "<b>4" not in text
    assert "&lt;script&gt;" in text and "&lt;img" in text


def test_missing_figures_show_a_dash():
    """verify writes null where an error is not finite (NaN outputs, a missing output)."""
    report = {"spa_opt_version": "0", "pipeline": "dce", "passes": [{"name": "dce",
              "seconds": None, "modified": False}], "params": {"before": 10, "after": None},
              "flops": {"before": 1e12, "after": 999_600},
              "verify": {"inputs": 1, "source": "random", "max_abs_err": None,
                         "rel_err": None}}
    text = render_html(report)
    assert "\u2013 max abs" in text and "rel err \u2013" in text
    assert "1T → 1M" in text  # the suffix is chosen after rounding


def test_a_run_whose_outputs_are_nan_still_gets_its_page(tmp_path):
    """Log of a negative input: NaN in both models, so verify's KL divergence is NaN."""
    import onnx_ir as ir

    x = ir.val("x", ir.DataType.FLOAT, [1, 4])
    node = ir.node("Log", [x], num_outputs=1)
    node.outputs[0].name, node.outputs[0].dtype = "y", ir.DataType.FLOAT
    node.outputs[0].shape = ir.Shape([1, 4])
    node.name = "log"
    graph = ir.Graph([x], node.outputs, nodes=[node], opset_imports={"": 21}, name="g")
    source = tmp_path / "log.onnx"
    ir.save(ir.Model(graph, ir_version=10), source)
    page, report = tmp_path / "log.html", tmp_path / "log.json"
    calib = tmp_path / "neg.npz"
    import numpy as np

    np.savez(calib, x=-np.ones((1, 4), np.float32))
    code = main(["-p", "dce", "--verify", "1", "--calib", str(calib), "--no-progress",
                 "--report", str(report), "--report-html", str(page), str(source),
                 str(tmp_path / "out.onnx")])
    assert code == 0
    data = json.loads(report.read_text())
    assert data["verify"]["kl"] is None  # NaN logits: no KL divergence, and no crash
    assert "verify on 1" in page.read_text()


def test_gemm_widths_follow_trans_b(tmp_path):
    """Gemm's output channels are B's columns without transB, its rows with it."""
    import numpy as np
    import onnx_ir as ir

    from spa_opt.api import optimize

    rng = np.random.default_rng(0)
    x = ir.val("x", ir.DataType.FLOAT, [2, 6])
    w1 = ir.val("w1", const_value=ir.tensor(rng.standard_normal((6, 8)).astype(np.float32)))
    w2 = ir.val("w2", const_value=ir.tensor(rng.standard_normal((3, 8)).astype(np.float32)))
    first = ir.node("Gemm", [x, w1], num_outputs=1)  # transB=0: (K, N) = (6, 8)
    relu = ir.node("Relu", first.outputs, num_outputs=1)
    second = ir.node("Gemm", [relu.outputs[0], w2], {"transB": 1}, num_outputs=1)
    for index, node in enumerate((first, relu, second)):
        node.name = f"n{index}"
    second.outputs[0].name = "y"
    graph = ir.Graph([x], second.outputs, nodes=[first, relu, second],
                     initializers=[w1, w2], opset_imports={"": 21}, name="g")
    _, report = optimize(ir.Model(graph, ir_version=10), "couple,group,l1,prune", ratio=0.5)
    widths = {row["node"]: row["width"] for row in report.to_dict()["prune"]["layers"]}
    assert widths == {"n0": {"before": 8, "after": 4}, "n2": {"before": 3, "after": 3}}


def _require_browser() -> None:
    if CHROMIUM is None or not _has_playwright():
        if os.environ.get("SPA_OPT_CI"):
            pytest.fail("CI must run the browser test: .ci/run installs chromium and the "
                        "test extra installs playwright")
        pytest.skip("needs Chromium (Debian package chromium) and playwright")


def _has_playwright() -> bool:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return False
    return True


def test_page_in_headless_chromium(run, tmp_path):
    _require_browser()
    from playwright.sync_api import sync_playwright

    _, page_path, report = run
    url = page_path.resolve().as_uri()
    problems: list[str] = []
    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))

            def only_the_page(route) -> None:
                requested.append(route.request.url)
                if route.request.url == url:
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", only_the_page)
            page.goto(url)
            bars = page.locator("div.layer svg.bar")
            assert bars.count() == len(report["prune"]["layers"])
            box = bars.first.bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 5
            assert page.locator("h1").inner_text() == "resnet.onnx"
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert requested == [url]
    assert (tmp_path / "page.png").stat().st_size > 10_000


@pytest.mark.parametrize("flags, message", [
    (["--save-plan", "{d}/same.json", "--report", "{d}/same.json"],
     "(--save-plan): --report also writes it"),
    (["--calib", "{digits}/calib.npz", "--save-calib", "{digits}/calib.npz"],
     "(--save-calib): --calib reads it"),
])
def test_side_files_never_overwrite_each_other_or_an_input(tmp_path, capsys, flags, message):
    args = [f.format(d=tmp_path, digits=DIGITS) for f in flags]
    before = (DIGITS / "calib.npz").stat().st_mtime_ns
    code = main(["-p", "couple,group,l1,prune", "--ratio", "0.3", *args,
                 str(DIGITS / "resnet.onnx"), str(tmp_path / "out.onnx")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    assert (DIGITS / "calib.npz").stat().st_mtime_ns == before


def test_plan_and_calibration_land_with_the_model(tmp_path):
    """--save-plan and --save-calib are staged with the model and renamed with it."""
    out = tmp_path / "out.onnx"
    code = main(["-p", "couple,group,obspa<propagate=original>,prune", "--target-flops", "0.7",
                 "--no-progress", "--calib", str(DIGITS / "calib.npz"), "--calib-limit", "8",
                 "--save-plan", str(tmp_path / "plan.json"),
                 "--save-calib", str(tmp_path / "c.npz"), str(DIGITS / "resnet.onnx"), str(out)])
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz", "out.onnx", "plan.json"]
    import numpy as np

    assert np.load(tmp_path / "c.npz")["image"].shape[0] == 8
    assert json.loads((tmp_path / "plan.json").read_text())["groups"]
