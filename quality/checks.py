"""Feature checks: what good values look like, declared in features.yaml and evaluated on a version's
statistics (quality/statistics.py) before it is published.

    feature checks   min, max, allowed, max_null_fraction, finite, norm_between, length_between
    view checks      min_rows, max_row_change, max_null_fraction_change (both against CURRENT, which the
                     version replaces: the rule in quality/__init__.py)

`warn: true` in a checks mapping makes all of its checks warn instead of refusing the version;
`warn: [min, max]` makes those only. Row-level checks (min, max, allowed, finite, norm_between,
length_between, and the nulls of max_null_fraction) count offending rows and keep a few of their keys
while the statistics are accumulated, so a failure names examples without another read.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quiver.snapshot.manifest import CheckResult
from quiver.snapshot.schema import FeatureDef, ViewDef

NUMERIC = ("int32", "int64", "float32", "float64")
FLOATS = ("float32", "float64", "list<float32>")
EXAMPLE_KEYS = 5      # offending keys kept per check and feature


class CheckDefinitionError(ValueError):
    """A checks mapping that cannot be used; loader/definitions.py adds file, view and feature."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _fraction(name: str, v: Any) -> None:
    if not _number(v) or not 0 <= v <= 1:
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be a fraction between 0 and 1")


def _non_negative(name: str, v: Any) -> None:
    if not _number(v) or v < 0:
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be a number >= 0")


def _bound(name: str, v: Any) -> None:
    if not _number(v):
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be a number")


def _pair(name: str, v: Any) -> None:
    if not (isinstance(v, list) and len(v) == 2 and all(_number(x) and x >= 0 for x in v)):
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be [low, high], two numbers >= 0")
    if v[0] > v[1]:
        raise CheckDefinitionError(f"check {name!r}: low {v[0]} is greater than high {v[1]}")


def _true(name: str, v: Any) -> None:
    if v is not True:
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be true (leave the check out to allow NaN/inf)")


def _rows(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise CheckDefinitionError(f"check {name!r}: {v!r} must be a whole number >= 0")


@dataclass(frozen=True)
class CheckSpec:
    types: tuple[str, ...]           # feature types it applies to; () for view checks
    validate: Callable[[str, Any], None]
    needs_previous: bool = False     # drift checks: skipped without a current version to compare against


FEATURE_CHECKS: dict[str, CheckSpec] = {
    "min": CheckSpec(NUMERIC, _bound),
    "max": CheckSpec(NUMERIC, _bound),
    "allowed": CheckSpec(("string", "int32", "int64"), lambda n, v: None),   # validated against the type below
    "max_null_fraction": CheckSpec(tuple(), _fraction),                     # every type
    "finite": CheckSpec(FLOATS, _true),
    "norm_between": CheckSpec(("list<float32>",), _pair),
    "length_between": CheckSpec(("list<int64>",), _pair),
}
VIEW_CHECKS: dict[str, CheckSpec] = {
    "min_rows": CheckSpec((), _rows),
    "max_row_change": CheckSpec((), _non_negative, needs_previous=True),
    "max_null_fraction_change": CheckSpec((), _fraction, needs_previous=True),
}


def _warn_names(raw: dict[str, Any], known: set[str]) -> None:
    w = raw.get("warn", False)
    if isinstance(w, bool):
        return
    if not isinstance(w, list) or not all(isinstance(x, str) for x in w):
        raise CheckDefinitionError(f"'warn' {w!r} must be true, false or a list of check names")
    unknown = [x for x in w if x not in known]
    if unknown:
        raise CheckDefinitionError(f"'warn' names check(s) {unknown} that the mapping does not declare")


def _parse(raw: Any, table: dict[str, CheckSpec], kind: str, feature: FeatureDef | None) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise CheckDefinitionError(f"'checks' must be a mapping of check name to limit, got {raw!r}")
    other, other_kind = (VIEW_CHECKS, "view") if kind == "feature" else (FEATURE_CHECKS, "feature")
    names = set(raw) - {"warn"}
    for name in sorted(names):
        spec = table.get(name)
        if spec is None:
            hint = f" (a {other_kind} check: put it under the {other_kind}'s checks)" if name in other else ""
            raise CheckDefinitionError(f"unknown check {name!r}{hint}; {kind} checks: {sorted(table)}")
        if feature is not None and spec.types and feature.type not in spec.types:
            raise CheckDefinitionError(f"check {name!r} does not apply to type {feature.type} "
                                       f"(it applies to {', '.join(spec.types)})")
        spec.validate(name, raw[name])
    _warn_names(raw, names)
    return dict(raw)


def parse_feature_checks(raw: Any, feature: FeatureDef) -> dict[str, Any]:
    """The validated checks mapping of one feature; raises CheckDefinitionError naming the check."""
    checks = _parse(raw, FEATURE_CHECKS, "feature", feature)
    if "allowed" in checks:
        _allowed(checks["allowed"], feature.type)
    if "min" in checks and "max" in checks and checks["min"] > checks["max"]:
        raise CheckDefinitionError(f"check 'min' {checks['min']} is greater than 'max' {checks['max']}")
    return checks


def _allowed(v: Any, ftype: str) -> None:
    if not isinstance(v, list) or not v:
        raise CheckDefinitionError(f"check 'allowed': {v!r} must be a non-empty list of values")
    if ftype == "string":
        ok = all(isinstance(x, str) for x in v)
    else:
        ok = all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if not ok:
        raise CheckDefinitionError(f"check 'allowed': every value must be a {ftype}, got {v!r}")


def parse_view_checks(raw: Any) -> dict[str, Any]:
    return _parse(raw, VIEW_CHECKS, "view", None)


def warns(checks: dict[str, Any], name: str) -> bool:
    w = checks.get("warn", False)
    return w is True or (isinstance(w, list) and name in w)


def declared(checks: dict[str, Any]) -> list[str]:
    return [n for n in checks if n != "warn"]


# ---- evaluation --------------------------------------------------------------------------------


@dataclass
class _Outcome:
    view: str
    results: list[CheckResult] = field(default_factory=list)

    def add(self, checks: dict[str, Any], feature: str, check: str, ok: bool, measured: Any, limit: Any,
            examples: list[Any] | None = None, detail: str = "") -> None:
        status = "passed" if ok else ("warned" if warns(checks, check) else "failed")
        self.results.append(CheckResult(self.view, feature, check, status, measured, limit,
                                        list(examples or [])[:EXAMPLE_KEYS], detail))

    def skip(self, feature: str, check: str, limit: Any, why: str) -> None:
        self.results.append(CheckResult(self.view, feature, check, "skipped", None, limit, [], why))


def _violations(fs: dict[str, Any], check: str) -> tuple[int, list[Any]]:
    v = fs.get("violations", {}).get(check, {})
    return int(v.get("count", 0)), list(v.get("examples", []))


def _null_fraction(fs: dict[str, Any]) -> float:
    return fs["nulls"] / fs["rows"] if fs["rows"] else 0.0


CARRIED = "statistics carried from a version whose rows were counted under other limits (no example keys)"


def _row_check(out: _Outcome, f: FeatureDef, fs: dict[str, Any], name: str, limit: Any) -> None:
    """A check counted row by row while accumulating; from the aggregates when the statistics were
    counted under other limits (a reused view whose checks changed: its data is not read again)."""
    c = f.checks
    counted = fs.get("counted", {}).get(name) == limit
    n, ex = _violations(fs, name)
    if name in ("min", "max"):
        measured = fs.get(name)
        if not counted:
            bad = measured is not None and (measured < limit if name == "min" else measured > limit)
            out.add(c, f.name, name, not bad, measured, limit, [], CARRIED if bad else "")
            return
        out.add(c, f.name, name, n == 0, measured, limit, ex,
                f"{n} row(s) {'below' if name == 'min' else 'above'} the limit" if n else "")
    elif name == "allowed":
        if not counted:
            out.skip(f.name, name, limit, CARRIED + "; load with --no-reuse to check it")
            return
        out.add(c, f.name, name, n == 0, n, limit, ex, f"{n} row(s) hold a value not allowed" if n else "")
    elif name == "finite":
        what = "element(s)" if f.type == "list<float32>" else "value(s)"
        if not counted:
            n, ex = fs.get("nan", 0) + fs.get("inf", 0), []
        out.add(c, f.name, name, n == 0, n, True, ex,
                f"{fs.get('nan', 0)} NaN and {fs.get('inf', 0)} infinite {what}" if n else "")
    else:   # norm_between, length_between
        measured = [fs.get("min"), fs.get("max")]
        if not counted:
            bad = measured[0] is not None and (measured[0] < limit[0] or measured[1] > limit[1])
            out.add(c, f.name, name, not bad, measured, limit, [], CARRIED if bad else "")
            return
        what = "norm" if name == "norm_between" else "length"
        out.add(c, f.name, name, n == 0, measured, limit, ex,
                f"{n} row(s) with a {what} outside the range" if n else "")


def evaluate_view(view: ViewDef, stats: dict[str, Any], previous: dict[str, Any] | None,
                  previous_version: str = "") -> list[CheckResult]:
    """Every declared check of one view against its statistics (statistics.ViewAccumulator JSON) and,
    for drift checks, the current version's statistics of the same view (None: there is none)."""
    out = _Outcome(view.name)
    rows = int(stats["rows"])
    for f in view.features:
        fs = stats["features"][f.name]
        for name in declared(f.checks):
            limit = f.checks[name]
            if rows == 0 and name != "max_null_fraction":
                out.skip(f.name, name, limit, "the view has no rows")
            elif name == "max_null_fraction":
                _, ex = _violations(fs, "nulls")
                frac = _null_fraction(fs)
                out.add(f.checks, f.name, name, frac <= limit, round(frac, 6), limit, ex,
                        f"{fs['nulls']} null(s) in {rows} row(s)")
            else:
                _row_check(out, f, fs, name, limit)
    c = view.checks
    for name in declared(c):
        limit = c[name]
        if name == "min_rows":
            out.add(c, "", name, rows >= limit, rows, limit)
            continue
        if previous is None:
            out.skip("", name, limit, "no current version to compare against (first version or new view)")
            continue
        prev_rows = int(previous["rows"])
        if prev_rows == 0 or rows == 0:
            empty = "the current version" if prev_rows == 0 else "this load"
            out.skip("", name, limit, f"the view has no rows in {empty}")
            continue
        if name == "max_row_change":
            change = abs(rows - prev_rows) / prev_rows
            out.add(c, "", name, change <= limit, round(change, 6), limit,
                    detail=f"{prev_rows} rows in {previous_version or 'the current version'}, {rows} now")
        elif name == "max_null_fraction_change":
            for f in view.features:
                old = previous["features"].get(f.name)
                if old is None:
                    out.skip(f.name, name, limit, "the feature is new in this version")
                    continue
                fs = stats["features"][f.name]
                now, before = _null_fraction(fs), _null_fraction(old)
                _, ex = _violations(fs, "nulls")
                out.add(c, f.name, name, abs(now - before) <= limit, round(now - before, 6), limit,
                        ex if now > before else [],
                        f"null fraction {before:.4f} in {previous_version or 'the current version'}, {now:.4f} now")
    return out.results


def row_checks(f: FeatureDef) -> dict[str, Any]:
    """The checks whose offending rows the accumulator counts (with example keys)."""
    return {k: v for k, v in f.checks.items() if k in ("min", "max", "allowed", "finite", "norm_between",
                                                       "length_between")}
