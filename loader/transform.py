"""Computed features: features.yaml's `expr`, `filter` and `agg`, parsed once (sqlglot), held to an
allow-list of SQL constructs, and rendered for each engine from the one parsed tree: DuckDB for the local
engine, Spark SQL for the Spark engine.

What differs between the two engines is pinned here, in the text each one runs, so that both compute
the same values (README "Computed features"):
  - `x / y` and `x % y` are NULL when y is 0 (DuckDB's `/` gives inf, Spark's ANSI mode raises);
  - CAST of a fractional value to an integer type truncates toward zero (DuckDB would round);
  - CAST of a fractional value to a string is refused (the engines print floats differently);
  - sums accumulate in DECIMAL(38, 0) for integer features, DECIMAL(38, 9) otherwise: exact, so the
    result does not depend on the order the rows were added in; `avg` is that sum over the count,
    divided once in Arrow (loader/derive.py), as is every conversion to the declared type;
  - `last` is the value of the latest event, the greater value among events at the same instant;
  - windows compare event times as integer microseconds since the epoch, UTC: (T - w, T].
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from quiver.loader.errors import DefinitionError
from quiver.snapshot.schema import Aggregation, EntityDef, FeatureDef, ViewDef

DIALECTS = ("duckdb", "spark")
AGG_FNS = ("count", "sum", "min", "max", "avg", "last", "count_distinct")
WINDOW = re.compile(r"^([1-9][0-9]*)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
SUM_SCALE = 9   # decimal places a fractional sum keeps

# Constructs an expression may use. Anything else (subqueries, window functions, aggregates inside an
# expression, star, qualified columns, functions not named here) is refused before any data is read.
_NODES: tuple[type[exp.Expr], ...] = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.DataType,
    exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod, exp.Neg,
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Is, exp.Not, exp.And, exp.Or,
    exp.Case, exp.If, exp.Coalesce, exp.Cast, exp.In, exp.Like, exp.Between, exp.DPipe,
)
# The named scalar functions, by the name users write.
FUNCTIONS: dict[type[exp.Expr], str] = {
    exp.Abs: "abs", exp.Floor: "floor", exp.Ceil: "ceil", exp.Sqrt: "sqrt", exp.Greatest: "greatest",
    exp.Least: "least", exp.Nullif: "nullif", exp.Lower: "lower", exp.Upper: "upper", exp.Length: "length",
}
CAST_TYPES = {
    exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT, exp.DataType.Type.BIGINT,
    exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE, exp.DataType.Type.BOOLEAN, exp.DataType.Type.VARCHAR,
    exp.DataType.Type.TEXT,
}
_INTEGER_TYPES = {exp.DataType.Type.TINYINT, exp.DataType.Type.SMALLINT, exp.DataType.Type.INT,
                  exp.DataType.Type.BIGINT}
_STRING_TYPES = {exp.DataType.Type.VARCHAR, exp.DataType.Type.TEXT}


def window_seconds(text: str) -> int:
    m = WINDOW.match(text)
    assert m, text
    return int(m.group(1)) * _UNIT_SECONDS[m.group(2)]


def parse(text: str, where: str) -> exp.Expr:
    """One expression, parsed and checked against the allow-list; DefinitionError (exit 2) names `where`,
    the expression and what is wrong."""
    if not isinstance(text, str) or not text.strip():
        raise DefinitionError(f"{where}: expected a SQL expression, got {text!r}")
    try:
        tree = sqlglot.parse_one(text)
    except SqlglotError as e:
        raise DefinitionError(f"{where}: {text!r} does not parse: {_first_line(e)}") from None
    for node in tree.walk():
        _allowed(node, text, where)
    return tree


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0]


def _allowed(node: exp.Expr, text: str, where: str) -> None:
    if isinstance(node, exp.Anonymous):
        raise DefinitionError(f"{where}: {text!r}: unknown function {node.name}(); allowed: "
                              f"{sorted(FUNCTIONS.values())}")
    if type(node) in FUNCTIONS:
        return
    if isinstance(node, exp.Column) and node.table:
        raise DefinitionError(f"{where}: {text!r}: {node.sql()}: name columns without a table")
    if isinstance(node, exp.Cast) and node.to.this not in CAST_TYPES:
        raise DefinitionError(f"{where}: {text!r}: CAST to {node.to.sql()} is not allowed; allowed: BIGINT, INT, "
                              f"SMALLINT, TINYINT, DOUBLE, FLOAT, BOOLEAN, VARCHAR")
    if isinstance(node, exp.Like) and "\\" in node.expression.sql():
        raise DefinitionError(f"{where}: {text!r}: a LIKE pattern with a backslash (the engines escape differently)")
    if isinstance(node, exp.Like) and not isinstance(node.expression, exp.Literal):
        raise DefinitionError(f"{where}: {text!r}: a LIKE pattern must be a string literal")
    if not isinstance(node, _NODES):
        what = node.key.upper() if isinstance(node, exp.Func) else type(node).__name__
        kind = "function" if isinstance(node, exp.Func) else "construct"
        raise DefinitionError(f"{where}: {text!r}: {kind} {what} is not allowed in a feature expression; allowed: "
                              f"arithmetic, comparisons, AND/OR/NOT, IS [NOT] NULL, CASE, IF, COALESCE, CAST, "
                              f"IN, LIKE, BETWEEN, ||, and {sorted(FUNCTIONS.values())}")


def columns(tree: exp.Expr) -> list[str]:
    return sorted({c.name for c in tree.find_all(exp.Column)})


def _fractional(node: exp.Expr, types: dict[str, pa.DataType]) -> bool:
    """Whether the value may be fractional (float or decimal): enough type inference to pin CAST."""
    if isinstance(node, exp.Column):
        t = types.get(node.name)
        return t is not None and (pa.types.is_floating(t) or pa.types.is_decimal(t))
    if isinstance(node, exp.Literal):
        return not node.is_string and any(ch in node.this for ch in ".eE")
    if isinstance(node, (exp.Div, exp.Sqrt)):
        return True
    if isinstance(node, exp.Cast):
        return node.to.this in (exp.DataType.Type.FLOAT, exp.DataType.Type.DOUBLE, exp.DataType.Type.DECIMAL)
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Mod, exp.Neg, exp.Abs, exp.Floor, exp.Ceil, exp.Paren,
                         exp.Greatest, exp.Least, exp.Coalesce, exp.Nullif, exp.Case, exp.If)):
        return any(_fractional(c, types) for c in node.iter_expressions() if not isinstance(c, exp.DataType))
    return False


def check_columns(tree: exp.Expr, text: str, types: dict[str, pa.DataType], where: str) -> None:
    """Against a source's columns: every column exists, no CAST prints a fractional value."""
    missing = [c for c in columns(tree) if c not in types]
    if missing:
        raise DefinitionError(f"{where}: {text!r}: unknown column(s) {missing}; the source has {sorted(types)}")
    for cast in tree.find_all(exp.Cast):
        if cast.to.this in _STRING_TYPES and _fractional(cast.this, types):
            raise DefinitionError(f"{where}: {text!r}: {cast.sql()}: a fractional value cast to a string (the "
                                  f"engines print floats differently); cast to an integer type first")


def render(tree: exp.Expr, dialect: str, types: dict[str, pa.DataType]) -> str:
    """The expression in one engine's SQL, with the differences between engines pinned (module doc)."""

    def pin(node: exp.Expr) -> exp.Expr:
        if isinstance(node, (exp.Div, exp.Mod)):
            node.set("expression", exp.Nullif(this=exp.Paren(this=node.expression), expression=exp.Literal.number(0)))
        elif (isinstance(node, exp.Cast) and node.to.this in _INTEGER_TYPES and dialect == "duckdb"
              and _fractional(node.this, types)):
            node.set("this", exp.Anonymous(this="trunc", expressions=[node.this]))
        return node

    return f"({tree.copy().transform(pin).sql(dialect=dialect, identify=True)})"


@dataclass(frozen=True)
class Parsed:
    """A view's expressions, parsed: filter, and per feature its expr or its agg's `of`."""

    view: ViewDef
    filter: exp.Expr | None
    trees: dict[str, exp.Expr]   # feature -> expr or agg.of

    def texts(self) -> list[tuple[str, str, exp.Expr]]:
        """(where, text, tree) of every expression."""
        out = [("filter", self.view.filter, self.filter)] if self.filter is not None else []
        for f in self.view.features:
            if f.name in self.trees:
                text = f.expr or (f.agg.of if f.agg else "")
                out.append((f"feature {f.name!r}", text, self.trees[f.name]))
        return out


def parse_view(view: ViewDef, where: str) -> Parsed:
    trees = {}
    for f in view.features:
        if f.expr:
            trees[f.name] = parse(f.expr, f"{where}, feature {f.name!r}: expr")
        elif f.agg is not None and f.agg.of:
            trees[f.name] = parse(f.agg.of, f"{where}, feature {f.name!r}: agg.of")
    return Parsed(view, parse(view.filter, f"{where}: filter") if view.filter else None, trees)


def check_source(entity: EntityDef, view: ViewDef, schema: pa.Schema, path: str) -> None:
    """inspect()'s check of a computed view's source file: the key, the timestamp and every column an
    expression names are there (DefinitionError for an expression, DataError for the key or timestamp)."""
    from quiver.loader.errors import DataError

    types = {f.name: f.type for f in schema}
    key = view.entity_column or entity.name
    wanted = [key] + ([view.time_column] if view.time_column else [])
    missing = [c for c in wanted if c not in types]
    if missing:
        raise DataError(f"{path}: view {view.name!r}: missing column(s) {missing}; the file has {schema.names}")
    if view.time_column and not pa.types.is_timestamp(types[view.time_column]):
        raise DataError(f"{path}: view {view.name!r}: timestamp column {view.time_column!r} is "
                        f"{types[view.time_column]}, expected a timestamp")
    parsed = parse_view(view, f"view {view.name!r}")
    for what, text, tree in parsed.texts():
        check_columns(tree, text, types, f"{path}: view {view.name!r}, {what}")
    for f in view.features:
        if not f.expr and f.agg is None and f.column not in types:
            raise DataError(f"{path}: view {view.name!r}: missing column {f.column!r} (feature {f.name!r}); "
                            f"the file has {schema.names}")


# -- the query of a view -------------------------------------------------------------------------

FILE, ROW = "__file", "__row"   # the source position of a row of a per-row view: the order it is loaded in


def _ts(dialect: str, column: str) -> str:
    q = f'"{column}"' if dialect == "duckdb" else f"`{column}`"
    return f"epoch_us({q})" if dialect == "duckdb" else f"unix_micros({q})"


def quote(dialect: str, name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect=dialect)


def sum_scale(f: FeatureDef) -> int:
    return 0 if f.type in ("int32", "int64") else SUM_SCALE


def avg_parts(f: FeatureDef) -> tuple[str, str]:
    return f"__sum_{f.name}", f"__count_{f.name}"


def view_query(entity: EntityDef, view: ViewDef, dialect: str, relation: str, types: dict[str, pa.DataType],
               as_of_us: int) -> str:
    """The SELECT computing a view's raw columns (loader/derive.py finishes them). A per-row view keeps its
    rows in source order ((FILE, ROW), which `relation` must provide); an aggregated view has one row per
    entity with an event at or before the as-of time, in key order."""
    parsed = parse_view(view, f"view {view.name!r}")
    q = lambda name: quote(dialect, name)  # noqa: E731
    key = view.entity_column or entity.name
    where = render(parsed.filter, dialect, types) if parsed.filter is not None else "TRUE"
    if not view.aggregated:
        cols = [q(key)] + ([q(view.event_timestamp)] if view.event_timestamp else [])
        for f in view.features:
            value = render(parsed.trees[f.name], dialect, types) if f.name in parsed.trees else q(f.column)
            cols.append(f"{value} AS {q(f.column)}")
        return (f"SELECT {', '.join(cols)} FROM {relation} WHERE {where} "
                f"ORDER BY {q(FILE)}, {q(ROW)}")
    ts = _ts(dialect, view.time_column)
    cols = [q(key)]
    for f in view.features:
        agg = f.agg
        assert agg is not None
        start = as_of_us - window_seconds(agg.window) * 1_000_000
        of = render(parsed.trees[f.name], dialect, types) if f.name in parsed.trees else ""
        cond = f"{ts} > {start} AND ({where})"
        if agg.fn == "count":
            cols.append(f"count({of or '*'}) FILTER (WHERE {cond}) AS {q(f.name)}")
        elif agg.fn == "count_distinct":
            cols.append(f"count(DISTINCT {of}) FILTER (WHERE {cond}) AS {q(f.name)}")
        elif agg.fn in ("min", "max"):
            cols.append(f"{agg.fn}({of}) FILTER (WHERE {cond}) AS {q(f.name)}")
        elif agg.fn == "sum":
            cols.append(f"sum(CAST({of} AS DECIMAL(38, {sum_scale(f)}))) FILTER (WHERE {cond}) AS {q(f.name)}")
        elif agg.fn == "avg":
            s, n = avg_parts(f)
            cols.append(f"sum(CAST({of} AS DECIMAL(38, {SUM_SCALE}))) FILTER (WHERE {cond}) AS {q(s)}")
            cols.append(f"count({of}) FILTER (WHERE {cond}) AS {q(n)}")
        else:   # last: the latest event's value; at one instant, the greatest value
            latest = (f"max(struct_pack(t := {ts}, v := {of}))" if dialect == "duckdb"
                      else f"max(named_struct('t', {ts}, 'v', {of}))")
            pick = f"{latest} FILTER (WHERE {cond} AND {of} IS NOT NULL)"
            cols.append((f"struct_extract({pick}, 'v')" if dialect == "duckdb" else f"({pick}).v") + f" AS {q(f.name)}")
    return (f"SELECT {', '.join(cols)} FROM {relation} WHERE {ts} <= {as_of_us} "
            f"GROUP BY {q(key)} ORDER BY {q(key)}")


def validate_features(view: ViewDef, where: str) -> None:
    """The definition-time rules of a computed view (no source needed): every expression parses and is
    allowed."""
    parse_view(view, where)


__all__ = ["AGG_FNS", "Aggregation", "DIALECTS", "check_source", "parse", "render", "view_query", "window_seconds"]
