"""The HTML report: ``--report-html`` during a run and ``spa-opt report`` afterwards.

The page is checked as HTML (one bar per layer, every section, hostile names escaped)
and, in a real headless Chromium driven by Playwright, as a page: it loads with no
console error, requests nothing but itself (every other request is refused), and
shows one width bar per weighted layer. CI installs Debian's Chromium (.ci/run); on a
machine without it the browser test is skipped, except under CI, where it fails.
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
    code = main(["-p", "couple,group,obspa,prune", "--target-flops", "0.5", "--calib",
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
    assert out.stat().st_mode & 0o044  # readable like any file the user writes


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
    ('{"spa_opt_version": "0", "pipeline": "dce", "passes": [{"x": 1}], "params": {},'
     ' "flops": {}}', "not a readable spa-opt run report"),
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
    assert "name the same file" in capsys.readouterr().err
    assert main(["-p", "dce", "--report-html", str(tmp_path / "no" / "r.html"),
                 str(model), str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["-p", "dce", "--report-html", str(out), str(model), str(out)]) == 2
    assert list(tmp_path.iterdir()) == []


def _require_browser() -> None:
    if CHROMIUM is None or not _has_playwright():
        if os.environ.get("CI"):
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
