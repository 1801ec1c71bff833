"""The run report as one self-contained HTML page (``--report-html``, ``spa-opt report``).

Why a page: the JSON report answers every question, but what a user looks at after a
run is where the widths went, which layers lost the most, what reconstruction cost and
why the groups that stayed whole are pinned. The page shows, from the report alone:

- the summary: params, FLOPs and channels before and after, the verify figures;
- the targets and whether each was met (measured latency beside the prediction);
- one row per weighted layer in graph order: its output width before and after as a
  bar, its FLOPs and params before and after, obspa's relative reconstruction error;
- the groups: removed units per prunable group, and the pinned channels by reason
  with each pinned group's reason;
- the latency model's per-group shares, when latency was measured; the passes' times.

The page is plain HTML with inline CSS and inline SVG bars: no script, no font, no
image or style sheet from anywhere, so it opens offline and from a mail attachment
alike (``tests/test_report_html.py`` loads it in headless Chromium with every network
request refused). Every text from the model is escaped.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from spa_opt.report import given_targets, pinned_by_reason

#: Output-channel axis of each weighted operator's weight (input 1), for the bars.
_OUT_AXIS = {"Conv": 0, "ConvTranspose": 1, "MatMul": -1, "Gemm": 0}
_BAR_WIDTH = 160
#: What an empty cell shows (an en dash) and the units-by-block sign.
_NONE, _TIMES = "\u2013", "\u00d7"

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1d2330;
background:#fafbfc}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dde6}
code,.mono{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.sub{color:#5b6475;margin:0 0 16px;word-break:break-all}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #d8dde6;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#5b6475;font-size:12px}
table{border-collapse:collapse;background:#fff;border:1px solid #d8dde6}
th,td{padding:3px 8px;border-bottom:1px solid #eef0f4;text-align:left;vertical-align:middle}
th{background:#f0f2f6;font-weight:600;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}
.met{color:#137333;font-weight:600}.missed{color:#b3261e;font-weight:600}
svg.bar{display:block}.bar .before{fill:#dfe3ea}.bar .after{fill:#3b6fd8}
.bar .error{fill:#d8843b}.pair{display:flex;gap:8px;align-items:center}.pinned{color:#8a5a00}
"""


class _Html(str):
    """Markup built here from escaped parts: table cells pass it through as it is."""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _cell(value: Any) -> str:
    """A table cell: markup as it is, anything else (numbers from the report too) escaped."""
    return value if isinstance(value, _Html) else _e(value)


def _fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``, or a dash when the report has no number there.

    A report holds ``null`` where a figure is not finite (verify's error when an output
    went missing or NaN) and may come from an older version or from hand edits.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _NONE
    try:
        return format(value, spec)
    except (ValueError, OverflowError):
        return _NONE


def _count(value: Any) -> str:
    """12.3M-style: counts span nine orders of magnitude in one table.

    The suffix is chosen after rounding, so 999,600 shows as 1M, not 1e+03k.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        return _NONE
    for scale, suffix in ((1, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T")):
        text = f"{value / scale:.3g}"
        if abs(float(text)) < 1000 or suffix == "T":
            return text + suffix
    return _NONE  # not reached: the last scale always returns


def _kept(before: Any, after: Any) -> str:
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  for v in (before, after))
    return _fmt(after / before, ".1%") if numbers and before else _NONE


def _bar(fraction: float, label: str, kind: str = "after") -> _Html:
    """An SVG bar: a grey track (before) and a filled share (after), with a title."""
    fraction = min(max(fraction, 0.0), 1.0) if fraction == fraction else 0.0
    filled = round(_BAR_WIDTH * fraction, 1)
    return _Html(f'<svg class="bar" width="{_BAR_WIDTH}" height="12" role="img" '
            f'aria-label="{_e(label)}"><title>{_e(label)}</title>'
            f'<rect class="before" width="{_BAR_WIDTH}" height="12" rx="2"/>'
            f'<rect class="{kind}" width="{filled}" height="12" rx="2"/></svg>')


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int],
           css: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{_cell(c)}</td>' if i in numeric
                         else f"<td>{_cell(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in rows)
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _width(layer: dict[str, Any], key: str) -> int | None:
    """The layer's output channels ``key`` (before, after) the run, when known.

    Reports since the ``width`` field carry it (the prune pass reads Gemm's ``transB``
    and ConvTranspose's groups); for older ones it is read off the weight's shape.
    """
    recorded = layer.get("width")
    if isinstance(recorded, dict) and key in recorded:
        value = recorded[key]
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    shape = layer.get(key)
    if not isinstance(shape, list) or not shape:
        return None
    axis = _OUT_AXIS.get(layer.get("op"), 0)
    value = shape[axis] if -len(shape) <= axis < len(shape) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _summary(report: dict[str, Any]) -> str:
    cards = []
    for key, name in (("params", "params"), ("flops", "FLOPs")):
        pair = report.get(key) or {}
        cards.append((f"{_count(pair.get('before'))} → {_count(pair.get('after'))}",
                      f"{name}, {_kept(pair.get('before'), pair.get('after'))} kept"))
    channels = report.get("channels")
    if channels:
        cards.append((f"{channels.get('removed')} of {channels.get('total')}",
                      "prunable channels removed"))
    verify = report.get("verify")
    if verify:
        agreement = verify.get("top1_agreement")
        figure = (f"{_fmt(agreement, '.1%')} top-1" if agreement is not None
                  else f"{_fmt(verify.get('max_abs_err'), '.3g')} max abs")
        cards.append((figure, f"verify on {verify.get('inputs')} {verify.get('source', '')} "
                              f"inputs, rel err {_fmt(verify.get('rel_err'), '.3g')}"))
    latency = _latency_model(report)
    if latency and "measured_after" in latency:
        cards.append((f"{_ms(latency.get('measured_before'))} → "
                      f"{_ms(latency.get('measured_after'))} ms",
                      f"latency measured, {_fmt(latency.get('measured_kept'), '.1%')} kept"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{_e(big)}</b><span>{_e(small)}</span></div>'
        for big, small in cards) + "</div>"


def _ms(seconds: Any) -> str:
    return _fmt(seconds * 1e3, ".3g") if isinstance(seconds, (int, float)) else _NONE


def _latency_model(report: dict[str, Any]) -> dict[str, Any] | None:
    target = (report.get("prune") or {}).get("target") or {}
    return target.get("latency_model")


def _targets(report: dict[str, Any]) -> str:
    given = given_targets(report.get("targets") or {})
    target = (report.get("prune") or {}).get("target")
    lines = [f"<p>options: <code>{_e(json.dumps(given, sort_keys=True))}</code></p>"]
    if not target:
        lines.append("<p>no FLOPs, params or latency target was set.</p>")
        return "".join(lines)
    rows = []
    for kind in ("flops", "params", "latency"):
        entry = target.get(kind)
        if not entry:
            continue
        achieved = entry.get("measured_achieved", entry.get("achieved"))
        reached = entry.get("measured_reached", entry.get("reached"))
        how = "measured" if "measured_achieved" in entry else "counted"
        rows.append((kind, _fmt(entry.get("keep"), ".1%"),
                     f"{_fmt(achieved, '.1%')} ({how})" if achieved is not None else _NONE,
                     _Html('<span class="met">met</span>' if reached
                           else '<span class="missed">not met</span>')))
    lines.append(_table(("target", "keep", "achieved", "result"), rows, {1, 2}))
    if target.get("why_not"):
        lines.append(f'<p class="missed">{_e(target["why_not"])}</p>')
    latency = _latency_model(report)
    if latency and "measured_after" in latency:
        lines.append(_e(
            f"latency: {_ms(latency.get('measured_before'))} ms before, "
            f"{_ms(latency.get('measured_after'))} ms after (measured in onnxruntime), "
            f"predicted {_fmt(latency.get('predicted_kept'), '.1%')} kept, "
            f"measured {_fmt(latency.get('measured_kept'), '.1%')}: prediction error "
            f"{_fmt(latency.get('prediction_error'), '+.1%')}.").join(("<p>", "</p>")))
    return "".join(lines)


def _layers(report: dict[str, Any]) -> str:
    layers = (report.get("prune") or {}).get("layers") or []
    if not layers:
        return "<p>no weighted layers (the run had no prune pass).</p>"
    errors = {row.get("layer"): row for row in (report.get("obspa") or {}).get("layers") or []
              if isinstance(row, dict)}
    worst = max((row.get("relative_error") for row in errors.values()
                 if isinstance(row.get("relative_error"), (int, float))), default=0.0)
    rows = []
    for index, layer in enumerate(layers):
        before, after = _width(layer, "before"), _width(layer, "after")
        if after is None:
            width_bar, width_text = _bar(0.0, "removed"), "removed"
        elif before:
            width_text = f"{before} → {after}"
            width_bar = _bar(after / before, f"{layer['node']}: width {width_text}")
        else:
            width_bar, width_text = "", _NONE
        flops, params = layer.get("flops") or {}, layer.get("params") or {}
        error = errors.get(layer.get("node"))
        relative = error.get("relative_error") if error else None
        if not isinstance(relative, (int, float)):
            relative = None
        error_cell = (_NONE if relative is None else _Html(
            '<div class="pair">' + _bar(relative / worst if worst else 0.0,
                                        f"relative error {_fmt(relative, '.3g')}", "error")
            + f"<span>{_fmt(relative, '.3g')}</span></div>"))
        rows.append((str(index), _Html(f'<span class="mono">{_e(layer.get("node"))}</span>'),
                     layer.get("op"),
                     _Html(f'<span class="mono">{_e(layer.get("weight"))}</span>'),
                     _Html(f'<div class="layer">{width_bar}</div>'), width_text,
                     f"{_count(flops.get('before'))} → {_count(flops.get('after'))}",
                     f"{_count(params.get('before'))} → {_count(params.get('after'))}",
                     error_cell))
    header = ("#", "node", "op", "weight", "width kept", "width", "FLOPs", "params",
              "obspa relative error")
    return _table(header, rows, {0, 5, 6, 7}, "layers")


def _groups(report: dict[str, Any]) -> str:
    groups = report.get("groups") or []
    if not groups:
        return "<p>no groups (the run had no group pass).</p>"
    removed = {row["group"]: row for row in (report.get("prune") or {}).get("groups") or []}
    rows = []
    for g in groups:
        cut = removed.get(g["id"])
        if not g["prunable"]:
            status = _Html('<span class="pinned">pinned</span>')
        elif g["pinned_units"]:
            status = _Html(f'<span class="pinned">{_e(g["pinned_units"])} units pinned</span>')
        else:
            status = "prunable"
        why = "; ".join(map(str, g.get("why_not") or [])) \
            if not g["prunable"] or g["pinned_units"] else ""
        rows.append((g["id"], _Html(f'<span class="mono">{_e(g["primary"])}</span>'),
                     f"{g['units']} {_TIMES} {g['block']}", g["channels"],
                     cut["channels_removed"] if cut else 0, status, why))
    parts = [_table(("group", "primary", f"units {_TIMES} block", "channels", "removed", "status",
                     "why pinned"), rows, {3, 4}, "groups")]
    totals = pinned_by_reason(groups)
    if totals:
        parts.append("<h3>Pinned channels by reason</h3>")
        parts.append(_table(("channels", "groups", "reason"),
                            ((c, n, reason) for reason, c, n in totals), {0, 1}))
    coupling = report.get("coupling")
    if coupling:
        cov = coupling.get("coverage") or {}
        parts.append("<p>" + _e(
            f"{coupling.get('groups')} groups, {coupling.get('prunable')} prunable; "
            f"{cov.get('prunable')} of {cov.get('channels')} produced channels prunable "
            f"({_fmt(cov.get('share'), '.0%')}).") + "</p>")
    return "".join(parts)


def _latency(report: dict[str, Any]) -> str:
    latency = _latency_model(report)
    if not latency:
        return ""
    before = latency.get("measured_before")
    if not isinstance(before, (int, float)) or not before:
        before = 1.0

    def share(seconds: Any) -> str:
        return _fmt(seconds / before, ".2%") if isinstance(seconds, (int, float)) else _NONE

    rows = [(g.get("group"), f"{g.get('channels')} → {g.get('kept')}", g.get("step"),
             share(g.get("predicted_before")), share(g.get("predicted_after")),
             share(g.get("measured_after")))
            for g in latency.get("groups") or []]
    chosen = latency.get("scheme")
    schemes = "".join(
        "<li>" + _e(f"{s.get('scheme')}{' (chosen)' if s.get('scheme') == chosen else ''}: "
                    f"measured latency {_fmt(s.get('measured_kept'), '.1%')} kept, FLOPs "
                    f"{_fmt(s.get('flops_kept'), '.1%')} kept") + "</li>"
        for s in latency.get("schemes") or [])
    return ("<h2>Latency model</h2>"
            f"<p>{_e(latency.get('layers_measured'))} layer shapes measured; shares of the "
            "original model's measured latency per group.</p>"
            + (f"<ul>{schemes}</ul>" if schemes else "")
            + _table(("group", "channels", "step", "predicted before", "predicted after",
                      "measured after"), rows, {2, 3, 4, 5}))


def _passes(report: dict[str, Any]) -> str:
    rows = [(p.get("name"), _fmt(p.get("seconds"), ".3f"), "yes" if p.get("modified") else "no")
            for p in report.get("passes") or []]
    return _table(("pass", "seconds", "changed the model"), rows, {1})


def render_html(report: dict[str, Any], title: str = "spa-opt run") -> str:
    """The page for one run's report dictionary (the ``--report`` JSON, loaded)."""
    prune = report.get("prune") or {}
    message = f'<p class="missed">{_e(prune["message"])}</p>' if prune.get("message") else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)} · spa-opt</title><style>{_STYLE}</style></head><body>"
        f"<h1>{_e(title)}</h1>"
        f'<p class="sub">spa-opt {_e(report.get("spa_opt_version", "?"))} · '
        f'<code>{_e(report.get("pipeline", ""))}</code></p>'
        f"{_summary(report)}{message}"
        f"<h2>Targets</h2>{_targets(report)}"
        f"<h2>Layers</h2>{_layers(report)}"
        f"<h2>Groups</h2>{_groups(report)}"
        f"{_latency(report)}"
        f"<h2>Passes</h2>{_passes(report)}"
        "</body></html>\n")
