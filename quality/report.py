"""`quiver report`: one self-contained HTML page of a version's statistics and checks, each feature's
histogram drawn against the version it is compared against (the rule in quality/__init__.py). No network:
the data sits in the page as JSON and a short inline script draws SVG. The script records what it drew in
<body data-charts="N"> and any error in data-script-errors, which the browser test reads."""

import html
import json
from typing import Any

import numpy as np

from quiver.quality.drift import Shift, compare, masses
from quiver.snapshot.manifest import CheckResult, Manifest

BINS = 20
TOP_DRIFT = 12
_STAT_KEYS = ("rows", "nulls", "count", "nan", "inf", "empty", "min", "max", "mean", "std", "distinct", "length")


def chart(current: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The series a feature's chart draws: fractions per bin (numbers) or per value (categories), the
    previous version's on the same bins."""
    if current.get("measure") == "category":
        labels: dict[str, Any] = {}
        for v, _ in current.get("top", []) + (previous or {}).get("top", []):
            labels.setdefault(json.dumps(v), v)
        keys = list(labels)[:BINS]

        def fractions(s: dict[str, Any] | None) -> list[float] | None:
            if not s or not s.get("count"):
                return None
            top = {json.dumps(v): c for v, c in s.get("top", [])}
            return [top.get(k, 0) / s["count"] for k in keys]
        return {"kind": "categories", "labels": [str(labels[k]) for k in keys], "current": fractions(current),
                "previous": fractions(previous)}
    if current.get("min") is None:
        return {"kind": "empty"}
    lo, hi = current["min"], current["max"]
    if previous and previous.get("percentiles") and previous.get("min") is not None:
        lo, hi = min(lo, previous["min"]), max(hi, previous["max"])
    if hi == lo:
        return {"kind": "bins", "edges": [lo, hi], "current": [1.0], "previous": [1.0] if previous else None}
    edges = np.linspace(lo, hi, BINS + 1)
    if previous and previous.get("percentiles") and current.get("percentiles"):
        now = masses(current["percentiles"], edges[1:-1]).tolist()
        before: list[float] | None = masses(previous["percentiles"], edges[1:-1]).tolist()
    else:
        counts = np.asarray(current["histogram"]["counts"], dtype=np.float64)
        now = (counts / max(counts.sum(), 1.0)).tolist()
        edges = np.asarray(current["histogram"]["edges"])
        before = None
    return {"kind": "bins", "edges": edges.tolist(), "current": now, "previous": before}


def _table(s: dict[str, Any]) -> list[list[Any]]:
    rows = [[k, s[k]] for k in _STAT_KEYS if s.get(k) is not None]
    rows += [[f"p{float(q) * 100:g}", v] for q, v in s.get("quantiles", {}).items()]
    if s.get("top") and s.get("measure") == "category":
        rows.append(["top", ", ".join(f"{v}: {c}" for v, c in s["top"][:5])])
    return rows


def page_data(manifest: Manifest, stats: dict[str, Any], previous: str | None,
              previous_stats: dict[str, Any] | None) -> dict[str, Any]:
    results = manifest.checks.results
    shifts: list[Shift] = compare(previous_stats, stats) if previous_stats else []
    psi = {(s.view, s.feature): s.psi for s in shifts}
    views = []
    for view in manifest.schema.views:
        vs = stats["views"].get(view.name, {"rows": 0, "features": {}})
        prev_view = (previous_stats or {}).get("views", {}).get(view.name)
        features = []
        for f in view.features:
            fs = vs["features"].get(f.name)
            if fs is None:
                continue
            ps = (prev_view or {}).get("features", {}).get(f.name)
            features.append({"name": f.name, "type": f.type, "measure": fs.get("measure"), "table": _table(fs),
                             "psi": psi.get((view.name, f.name)), "chart": chart(fs, ps),
                             "checks": [_check(r) for r in results if (r.view, r.feature) == (view.name, f.name)],
                             "declared": sorted(k for k in f.checks if k != "warn")})
        views.append({"name": view.name, "rows": vs["rows"], "previous_rows": prev_view["rows"] if prev_view else None,
                      "checks": [_check(r) for r in results if r.view == view.name and not r.feature],
                      "declared": sorted(k for k in view.checks if k != "warn"), "features": features})
    return {"version": manifest.version, "as_of": manifest.as_of, "created": manifest.created,
            "previous": previous, "accepted_failures": manifest.checks.accepted_failures,
            "failed": manifest.checks.failed, "warned": manifest.checks.warned, "passed": manifest.checks.passed,
            "drift": [{"view": s.view, "feature": s.feature or "(rows)", "psi": s.psi, "score": s.score,
                       "note": s.note} for s in shifts[:TOP_DRIFT]],
            "views": views}


def _check(r: CheckResult) -> dict[str, Any]:
    return {"check": r.check, "status": r.status, "text": r.describe()}


def render(data: dict[str, Any]) -> str:
    payload = json.dumps(data, allow_nan=False).replace("</", "<\\/")
    title = html.escape(f"quiver {data['version']}")
    return _PAGE.replace("{{title}}", title).replace("{{data}}", payload).replace("{{script}}", _SCRIPT)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{title}}</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1f24;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ccc}
.meta{color:#555} .banner{padding:8px 12px;border-radius:4px;margin:10px 0;font-weight:600}
.bad{background:#fde2e1;color:#8a1c13} .warn{background:#fff2cc;color:#6b4f00} .ok{background:#e3f4e1;color:#1e5b18}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px;width:340px}
.card.failed{border:2px solid #c62828} .card.warned{border:2px solid #e0a800}
.card h3{font-size:14px;margin:0 0 4px} .type{color:#777;font-weight:400}
table{border-collapse:collapse;font-size:12px} td{padding:1px 8px 1px 0;vertical-align:top}
.checks div{font-size:12px;margin:2px 0} .failed-t{color:#c62828} .warned-t{color:#a07700}
.skipped-t{color:#777} .passed-t{color:#2e7d32}
.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
</style></head>
<body>
<script type="application/json" id="data">{{data}}</script>
<div id="page"></div>
<script>{{script}}</script>
</body></html>
"""

_SCRIPT = r"""
window.addEventListener('error', function (e) {
  document.body.setAttribute('data-script-errors', String(e.message));
});
(function () {
  var NS = 'http://www.w3.org/2000/svg';
  var data = JSON.parse(document.getElementById('data').textContent);
  var page = document.getElementById('page');
  var charts = 0;
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    for (var k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs) {
    var e = document.createElementNS(NS, tag);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(v) {
    if (typeof v === 'number') return Math.abs(v) >= 1e5 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(3)
      : (Number.isInteger(v) ? String(v) : v.toFixed(4));
    return String(v);
  }
  function draw(c) {
    var W = 320, H = 130, P = 18;
    var s = svg('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, 'class': 'chart'});
    if (c.kind === 'empty' || !c.current) { var t = svg('text', {x: 10, y: 60}); t.textContent = 'no values';
      s.appendChild(t); return s; }
    var n = c.current.length, max = 0;
    c.current.concat(c.previous || []).forEach(function (v) { max = Math.max(max, v); });
    max = max || 1;
    var bw = (W - 2) / n;
    for (var i = 0; i < n; i++) {
      var h = (H - P - 4) * c.current[i] / max;
      s.appendChild(svg('rect', {x: 1 + i * bw + 1, y: H - P - h, width: Math.max(bw - 2, 1), height: h,
        fill: '#4a90d9', 'class': 'bar'}));
      if (c.previous) {
        var ph = (H - P - 4) * c.previous[i] / max;
        s.appendChild(svg('rect', {x: 1 + i * bw + 1, y: H - P - ph, width: Math.max(bw - 2, 1), height: ph,
          fill: 'none', stroke: '#333', 'stroke-dasharray': '3,2', 'class': 'previous'}));
      }
    }
    s.appendChild(svg('line', {x1: 0, y1: H - P, x2: W, y2: H - P, stroke: '#999'}));
    var left = svg('text', {x: 2, y: H - 4, 'font-size': 10});
    var right = svg('text', {x: W - 2, y: H - 4, 'font-size': 10, 'text-anchor': 'end'});
    if (c.kind === 'bins') { left.textContent = fmt(c.edges[0]); right.textContent = fmt(c.edges[c.edges.length - 1]); }
    else { left.textContent = c.labels.slice(0, 4).join(' | ').slice(0, 50); }
    s.appendChild(left); s.appendChild(right);
    charts++;
    return s;
  }
  function checks(list, box) {
    list.forEach(function (r) {
      box.appendChild(el('div', {'class': r.status + '-t'}, r.status.toUpperCase() + ': ' + r.text));
    });
  }
  var head = el('div');
  head.appendChild(el('h1', {}, 'quiver version ' + data.version));
  head.appendChild(el('div', {'class': 'meta'}, 'as of ' + data.as_of + ', created ' + data.created +
    (data.previous ? '; compared with ' + data.previous : '; nothing to compare with')));
  var cls = data.failed ? 'bad' : (data.warned ? 'warn' : 'ok');
  var text = data.failed + ' failed, ' + data.warned + ' warned, ' + data.passed + ' passed check(s)';
  if (data.accepted_failures) text += ' - PUBLISHED WITH FAILED CHECKS (--accept-failed-checks)';
  head.appendChild(el('div', {'class': 'banner ' + cls, id: 'summary'}, text));
  var legend = el('div', {'class': 'legend'});
  legend.innerHTML = '<span style="background:#4a90d9"></span>this version' +
    '<span style="border:1px dashed #333"></span>previous version';
  head.appendChild(legend);
  page.appendChild(head);
  if (data.drift.length) {
    page.appendChild(el('h2', {}, 'Biggest shifts'));
    var t = el('table', {id: 'drift'});
    t.appendChild(el('tr')).innerHTML = '<td><b>view</b></td><td><b>feature</b></td><td><b>PSI</b></td>' +
      '<td><b>shift</b></td><td></td>';
    data.drift.forEach(function (d) {
      var tr = el('tr');
      [d.view, d.feature, d.psi === null ? '-' : d.psi.toFixed(4), d.score.toFixed(4), d.note].forEach(function (x) {
        tr.appendChild(el('td', {}, x)); });
      t.appendChild(tr);
    });
    page.appendChild(t);
  }
  data.views.forEach(function (v) {
    page.appendChild(el('h2', {id: 'view-' + v.name}, 'view ' + v.name + ': ' + v.rows + ' rows' +
      (v.previous_rows === null ? '' : ' (previous ' + v.previous_rows + ')')));
    var vc = el('div', {'class': 'checks'}); checks(v.checks, vc); page.appendChild(vc);
    var grid = el('div', {'class': 'grid'});
    v.features.forEach(function (f) {
      var worst = f.checks.some(function (r) { return r.status === 'failed'; }) ? ' failed'
        : (f.checks.some(function (r) { return r.status === 'warned'; }) ? ' warned' : '');
      var card = el('div', {'class': 'card' + worst, 'data-feature': v.name + '.' + f.name});
      var h = el('h3', {}, f.name + ' ');
      h.appendChild(el('span', {'class': 'type'}, f.type + (f.measure === 'norm' ? ' (L2 norm)' :
        f.measure === 'length' ? ' (length)' : '') + (f.psi === null ? '' : ', PSI ' + f.psi.toFixed(4))));
      card.appendChild(h);
      card.appendChild(draw(f.chart));
      var tb = el('table');
      f.table.forEach(function (r) { var tr = el('tr'); tr.appendChild(el('td', {}, r[0]));
        tr.appendChild(el('td', {}, fmt(r[1]))); tb.appendChild(tr); });
      card.appendChild(tb);
      if (f.declared.length) card.appendChild(el('div', {'class': 'meta'}, 'checks: ' + f.declared.join(', ')));
      var cb = el('div', {'class': 'checks'}); checks(f.checks, cb); card.appendChild(cb);
      grid.appendChild(card);
    });
    page.appendChild(grid);
  });
  document.body.setAttribute('data-charts', String(charts));
})();
"""
