"""How one version's data differs from another's, from the statistics each version recorded
(quality/statistics.py STATISTICS_FILE): a population stability index per feature, and the changes of
row counts and null rates. `quiver diff` prints it, `quiver report` draws it.

PSI = sum over bins of (b - a) * ln(b / a), a and b the two versions' fractions per bin (floored at
1e-4). Numbers (values, embedding norms, list lengths) are binned at the older version's deciles and
each version's fractions read off its recorded percentiles; bools, strings and bytes use their top
values plus one bin for all others. Identical data gives 0; by the usual reading, under 0.1 is
stable, 0.1 to 0.25 a moderate shift, above 0.25 a large one.
"""

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from quiver.snapshot.layout import SnapshotRoot

EPSILON = 1e-4
DECILES = 10


def cdf(percentiles: list[float], x: np.ndarray) -> np.ndarray:
    """P(X <= x) read off percentiles 0..100, linear between them."""
    p = np.asarray(percentiles, dtype=np.float64)
    step = 1.0 / (len(p) - 1)
    i = np.searchsorted(p, x, side="right")
    out = np.ones(len(x))
    out[i == 0] = 0.0
    mid = (i > 0) & (i < len(p))
    lo, hi = p[i[mid] - 1], p[i[mid]]
    with np.errstate(over="ignore", invalid="ignore"):   # values near the float64 limits
        within = np.nan_to_num((x[mid] - lo) / (hi - lo), nan=0.5, posinf=1.0, neginf=0.0)
    out[mid] = (i[mid] - 1 + np.clip(within, 0.0, 1.0)) * step
    return out


def masses(percentiles: list[float], edges: np.ndarray) -> np.ndarray:
    """Fraction of the values in each bin: (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    c = np.concatenate([[0.0], cdf(percentiles, edges), [1.0]])
    return np.diff(c)


def psi(a: np.ndarray, b: np.ndarray) -> float:
    a = np.maximum(a, EPSILON)
    b = np.maximum(b, EPSILON)
    return float(np.sum((b - a) * np.log(b / a)))


def category_fractions(stats: dict[str, Any], labels: list[Any]) -> np.ndarray:
    count = stats.get("count") or 0
    if not count:
        return np.zeros(len(labels) + 1)
    top = {json.dumps(v): c for v, c in stats.get("top", [])}
    known = np.array([top.get(json.dumps(v), 0) for v in labels], dtype=np.float64) / count
    return np.concatenate([known, [max(0.0, 1.0 - known.sum())]])


def feature_psi(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """None when either side has no values to compare."""
    if a.get("measure") == "category":
        if not a.get("count") or not b.get("count"):
            return None
        labels = _labels(a, b)
        return psi(category_fractions(a, labels), category_fractions(b, labels))
    if not a.get("percentiles") or not b.get("percentiles"):
        return None
    edges = np.unique(np.quantile(np.asarray(a["percentiles"]), np.linspace(0, 1, DECILES + 1)[1:-1]))
    return psi(masses(a["percentiles"], edges), masses(b["percentiles"], edges))


def _labels(a: dict[str, Any], b: dict[str, Any]) -> list[Any]:
    """Values whose count both versions know: listed by both, or listed by one while the other's list is
    complete (absent there means none). The rest fall into one bin for all other values."""
    in_a = {json.dumps(v): v for v, _ in a.get("top", [])}
    in_b = {json.dumps(v): v for v, _ in b.get("top", [])}
    keys = [k for k in in_a if k in in_b or b.get("top_complete")]
    keys += [k for k in in_b if k not in in_a and a.get("top_complete")]
    return [in_a.get(k, in_b.get(k)) for k in keys]


def null_rate(s: dict[str, Any] | None) -> float | None:
    if s is None or not s.get("rows"):
        return None
    return float(s["nulls"]) / float(s["rows"])


@dataclass(frozen=True)
class Shift:
    view: str
    feature: str                 # "" for the view's row count
    psi: float | None
    rows: tuple[int | None, int | None]
    null_rate: tuple[float | None, float | None]
    note: str = ""

    @property
    def score(self) -> float:
        """What orders the table: the largest of PSI, the null-rate change and the relative row change."""
        parts = [self.psi or 0.0]
        a, b = self.null_rate
        if a is not None and b is not None:
            parts.append(abs(b - a))
        ra, rb = self.rows
        if not self.feature and ra and rb is not None:
            parts.append(abs(rb - ra) / ra)
        return max(parts)


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[Shift]:
    """Shifts from statistics a (older) to b, biggest first."""
    out = []
    views_a, views_b = a.get("views", {}), b.get("views", {})
    for name in list(views_b) + [v for v in views_a if v not in views_b]:
        va, vb = views_a.get(name), views_b.get(name)
        ra = va["rows"] if va else None
        rb = vb["rows"] if vb else None
        note = "new view" if va is None else "view removed" if vb is None else ""
        out.append(Shift(name, "", None, (ra, rb), (None, None), note))
        fa, fb = (va or {}).get("features", {}), (vb or {}).get("features", {})
        for f in list(fb) + [f for f in fa if f not in fb]:
            sa, sb = fa.get(f), fb.get(f)
            if sa is None or sb is None:
                out.append(Shift(name, f, None, (ra, rb), (null_rate(sa), null_rate(sb)),
                                 "new feature" if sa is None else "feature removed"))
                continue
            if sa.get("type") != sb.get("type"):
                out.append(Shift(name, f, None, (ra, rb), (null_rate(sa), null_rate(sb)),
                                 f"type changed: {sa.get('type')} -> {sb.get('type')}"))
                continue
            value = feature_psi(sa, sb)
            out.append(Shift(name, f, value, (ra, rb), (null_rate(sa), null_rate(sb)),
                             "" if value is not None else "no values to compare"))
    return sorted(out, key=lambda s: (-s.score, s.view, s.feature))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def format_table(shifts: list[Shift], a: str, b: str) -> str:
    lines = [f"drift from {a} to {b} (biggest first; PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 large)",
             f"{'view':<14}{'feature':<22}{'PSI':>9}  {'nulls':>17}  {'rows':>23}  note"]
    for s in shifts:
        value = "-" if s.psi is None else f"{s.psi:.4f}"
        nulls = "" if not s.feature else f"{_pct(s.null_rate[0])} -> {_pct(s.null_rate[1])}"
        ra, rb = s.rows
        rows = "" if s.feature else f"{'-' if ra is None else ra} -> {'-' if rb is None else rb}"
        if not s.feature and ra and rb is not None:
            rows += f" ({(rb - ra) / ra:+.1%})"
        lines.append(f"{s.view:<14}{s.feature or '(rows)':<22}{value:>9}  {nulls:>17}  {rows:>23}  {s.note}".rstrip())
    return "\n".join(lines)


def compared_against(root: SnapshotRoot, version: str | None) -> str | None:
    """The version `version` is compared against, by the one rule (quality/__init__.py): the version CURRENT
    named before it. For a load (version None, not published yet): CURRENT, which it is about to replace.
    For CURRENT: ROOT/PREVIOUS, the version it replaced. For any other version: none."""
    current = root.current()
    if version is None:
        return current
    return root.previous() if version == current else None


def versions_to_compare(root: SnapshotRoot, a: str | None, b: str | None) -> tuple[str, str]:
    """Defaults: B is CURRENT, A the version B is compared against (`compared_against`)."""
    versions = root.versions()
    if b is None:
        b = root.current()
        if b is None:
            raise FileNotFoundError(f"{root.path}: no CURRENT version")
    if b not in versions:
        raise FileNotFoundError(f"{root.path}: no version {b}")
    if a is None:
        a = compared_against(root, b)
        if a is None:
            if b == root.current():
                raise FileNotFoundError(f"{root.path}: {b} replaced no version (no ROOT/PREVIOUS: the first "
                                        f"version?); nothing to compare it with")
            raise FileNotFoundError(f"{root.path}: {b} is not CURRENT, so nothing is compared with it by default; "
                                    f"name the older version: quiver diff A {b}")
    if a not in versions:
        raise FileNotFoundError(f"{root.path}: no version {a}")
    return a, b
