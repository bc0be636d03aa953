"""features.yaml -> FeatureSet, with every mistake reported by file, view and feature."""

import math
import re
from pathlib import Path
from typing import Any

import yaml

from quiver.loader.errors import DefinitionError
from quiver.quality.checks import CheckDefinitionError, parse_feature_checks, parse_view_checks
from quiver.snapshot.schema import (
    DEFAULT_GROUP,
    FEATURE_TYPES,
    KEY_TYPES,
    Aggregation,
    EntityDef,
    FeatureDef,
    FeatureSet,
    ViewDef,
)

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


def load_definitions(path: str | Path) -> FeatureSet:
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DefinitionError(f"{path}: cannot be read: {getattr(e, 'strerror', None) or e}") from None
    except yaml.YAMLError as e:
        raise DefinitionError(f"{path}: not valid YAML: {e}") from None
    return parse_definitions(doc, str(path))


def parse_definitions(doc: Any, where: str) -> FeatureSet:
    if not isinstance(doc, dict):
        raise DefinitionError(f"{where}: expected a mapping with 'entity' and 'views'")
    _no_unknown_keys(doc, {"entity", "views"}, where)
    entity = _entity(doc.get("entity"), where)
    raw_views = doc.get("views")
    if not isinstance(raw_views, list) or not raw_views:
        raise DefinitionError(f"{where}: 'views' must be a non-empty list")
    views = []
    seen: set[str] = set()
    for i, rv in enumerate(raw_views):
        view = _view(rv, f"{where}: views[{i}]", entity)
        if view.name in seen:
            raise DefinitionError(f"{where}: view {view.name!r} is defined twice")
        seen.add(view.name)
        views.append(view)
    return FeatureSet(entity, tuple(views), source_file=where)


def _no_unknown_keys(d: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise DefinitionError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not NAME.match(value):
        raise DefinitionError(f"{where}: name {value!r} must match {NAME.pattern}")
    return value


def _entity(d: Any, where: str) -> EntityDef:
    if not isinstance(d, dict):
        raise DefinitionError(f"{where}: 'entity' must be a mapping with name and key_type")
    _no_unknown_keys(d, {"name", "key_type"}, f"{where}: entity")
    name = _name(d.get("name"), f"{where}: entity")
    key_type = d.get("key_type")
    if key_type not in KEY_TYPES:
        raise DefinitionError(f"{where}: entity {name!r}: key_type {key_type!r} must be one of {list(KEY_TYPES)}")
    return EntityDef(name, key_type)


def _view(d: Any, where: str, entity: EntityDef) -> ViewDef:
    if not isinstance(d, dict):
        raise DefinitionError(f"{where}: a view must be a mapping")
    name = _name(d.get("name"), where)
    where = f"{where.rsplit(':', 1)[0]}: view {name!r}"
    _no_unknown_keys(d, {"name", "source", "features", "event_timestamp", "entity_column", "group", "checks",
                         "filter"}, where)
    group = _group(d, where)
    source, time_column = _source(d.get("source"), where)
    ts = d.get("event_timestamp") or ""
    if not isinstance(ts, str):
        raise DefinitionError(f"{where}: 'event_timestamp' must be a column name")
    filter_ = d.get("filter") or ""
    if not isinstance(filter_, str):
        raise DefinitionError(f"{where}: 'filter' must be a SQL boolean expression, got {filter_!r}")
    entity_column = d.get("entity_column") or ""
    if not isinstance(entity_column, str):
        raise DefinitionError(f"{where}: 'entity_column' must be a column name")
    raw = d.get("features")
    if not isinstance(raw, list) or not raw:
        raise DefinitionError(f"{where}: 'features' must be a non-empty list")
    features = []
    seen: set[str] = set()
    for rf in raw:
        f = _feature(rf, where)
        if f.name in seen:
            raise DefinitionError(f"{where}: feature {f.name!r} is defined twice")
        if f.column in (entity_column or entity.name, ts):
            raise DefinitionError(f"{where}: feature {f.name!r} reads the key or timestamp column {f.column!r}")
        seen.add(f.name)
        features.append(f)
    checks = _checks(d, where, parse_view_checks)
    aggregated = [f.name for f in features if f.agg is not None]
    if aggregated:
        plain = [f.name for f in features if f.agg is None]
        if plain:
            raise DefinitionError(f"{where}: features {plain} are not aggregations, but {aggregated} are: a view "
                                  f"with 'agg' features holds one row per entity, so every feature is an 'agg'")
        if not time_column:
            raise DefinitionError(f"{where}: 'agg' features need the events' time: write the source as "
                                  f"{{path: ..., timestamp: COLUMN}}")
        if ts:
            raise DefinitionError(f"{where}: 'event_timestamp' with 'agg' features: an aggregated view has one row "
                                  f"per entity; the events' time is the source's 'timestamp'")
    elif time_column:
        if ts and ts != time_column:
            raise DefinitionError(f"{where}: source timestamp {time_column!r} and event_timestamp {ts!r} differ")
        ts, time_column = time_column, ""
    view = ViewDef(name, source, tuple(features), ts, entity_column, group, checks, filter_, time_column)
    if view.computed:
        from quiver.loader.transform import validate_features

        validate_features(view, where)
    return view


def _source(raw: Any, where: str) -> tuple[str, str]:
    """`source`: a Parquet path or glob, or {path, timestamp} for an event table -> (path, timestamp column)."""
    if isinstance(raw, dict):
        _no_unknown_keys(raw, {"path", "timestamp"}, f"{where}: source")
        path, ts = raw.get("path"), raw.get("timestamp") or ""
        if not isinstance(ts, str):
            raise DefinitionError(f"{where}: source 'timestamp' must be a column name, got {ts!r}")
    else:
        path, ts = raw, ""
    if not isinstance(path, str) or not path:
        raise DefinitionError(f"{where}: 'source' must be a Parquet path or glob, or {{path: ..., timestamp: ...}}")
    return path, ts


def _group(d: dict[str, Any], where: str) -> str:
    """A view's storage group: one name, or the default group when the key is absent."""
    if "group" not in d:
        return DEFAULT_GROUP
    g = d["group"]
    if isinstance(g, list):
        raise DefinitionError(f"{where}: 'group' lists {g!r}; a view belongs to exactly one storage group")
    if g is None or g == "":
        raise DefinitionError(f"{where}: 'group' names nothing; give a group name, or drop the key for the "
                              f"default group {DEFAULT_GROUP!r}")
    return _name(g, f"{where}: group")


def _checks(d: dict[str, Any], where: str, parse: Any) -> dict[str, Any]:
    if "checks" not in d:
        return {}
    try:
        checks: dict[str, Any] = parse(d["checks"])
    except CheckDefinitionError as e:
        raise DefinitionError(f"{where}: checks: {e}") from None
    return checks


def _feature(d: Any, where: str) -> FeatureDef:
    if not isinstance(d, dict):
        raise DefinitionError(f"{where}: a feature must be a mapping with name and type")
    name = _name(d.get("name"), f"{where}: feature")
    where = f"{where}, feature {name!r}"
    _no_unknown_keys(d, {"name", "type", "length", "default", "source_column", "checks", "expr", "agg"}, where)
    ftype = d.get("type")
    if ftype not in FEATURE_TYPES:
        raise DefinitionError(f"{where}: type {ftype!r} must be one of {list(FEATURE_TYPES)}")
    length = d.get("length", 0)
    if ftype == "list<float32>":
        if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
            raise DefinitionError(f"{where}: list<float32> needs a positive integer 'length' (embedding size)")
    elif "length" in d:
        raise DefinitionError(f"{where}: 'length' applies to list<float32> only")
    column = d.get("source_column") or ""
    if not isinstance(column, str):
        raise DefinitionError(f"{where}: 'source_column' must be a column name")
    default = d.get("default")
    if default is not None:
        _check_default(ftype, length, default, where)
    expr, agg = _computed(d, str(ftype), column, where)
    f = FeatureDef(name, ftype, length, default, column, {}, expr, agg)
    checks = _checks(d, where, lambda raw: parse_feature_checks(raw, f))
    return FeatureDef(name, ftype, length, default, column, checks, expr, agg)


_AGG_TYPES = {"count": ("int32", "int64"), "count_distinct": ("int32", "int64"), "avg": ("float32", "float64"),
              "sum": ("int32", "int64", "float32", "float64")}
_SCALAR = ("bool", "int32", "int64", "float32", "float64", "string", "bytes")


def _computed(d: dict[str, Any], ftype: str, column: str, where: str) -> tuple[str, Aggregation | None]:
    """A feature's `expr` or `agg` (the expressions are parsed with their view, transform.validate_features)."""
    from quiver.loader.transform import AGG_FNS, WINDOW

    if "expr" in d and "agg" in d:
        raise DefinitionError(f"{where}: both 'expr' and 'agg': a feature is one or the other")
    if ("expr" in d or "agg" in d) and column:
        raise DefinitionError(f"{where}: 'source_column' with a computed feature: it reads no column by itself")
    if "expr" in d:
        if ftype not in _SCALAR[:-1]:
            raise DefinitionError(f"{where}: 'expr' computes a scalar: bool, int32, int64, float32, float64 or "
                                  f"string, not {ftype}")
        return d["expr"], None
    if "agg" not in d:
        return "", None
    a = d["agg"]
    if not isinstance(a, dict):
        raise DefinitionError(f"{where}: 'agg' must be a mapping {{fn, of, window}}")
    _no_unknown_keys(a, {"fn", "of", "window"}, f"{where}: agg")
    fn, of, window = a.get("fn"), a.get("of", ""), a.get("window")
    if fn not in AGG_FNS:
        raise DefinitionError(f"{where}: agg fn {fn!r} must be one of {list(AGG_FNS)}")
    if not isinstance(of, str) or (not of and fn != "count"):
        raise DefinitionError(f"{where}: agg {fn} needs 'of', a SQL expression over one event")
    if not isinstance(window, str) or not WINDOW.match(window):
        raise DefinitionError(f"{where}: agg window {window!r} is not a duration: a positive whole number and a "
                              f"unit, s, m, h, d or w (e.g. 7d, 12h)")
    allowed = _AGG_TYPES.get(str(fn), _SCALAR[:-1])
    if ftype not in allowed:
        raise DefinitionError(f"{where}: agg {fn} gives {' or '.join(allowed)}, declared {ftype}")
    return "", Aggregation(fn, of, window)


def _check_default(ftype: Any, length: int, value: Any, where: str) -> None:
    ok: bool
    if ftype == "bool":
        ok = isinstance(value, bool)
    elif ftype in _INT_RANGE:
        lo, hi = _INT_RANGE[ftype]
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
    elif ftype in ("float32", "float64"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    elif ftype in ("string", "bytes"):
        ok = isinstance(value, str)
    elif ftype == "list<float32>":
        ok = isinstance(value, list) and len(value) == length and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    else:  # list<int64>
        ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    if not ok:
        raise DefinitionError(f"{where}: default {value!r} is not a valid {ftype}"
                              + (f" of length {length}" if ftype == "list<float32>" else ""))
