"""Computed features' definitions (loader/transform.py, loader/definitions.py): what is refused before any
work, with which words, in `quiver load` and `quiver validate`; and the SQL each engine is given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from quiver.loader.definitions import parse_definitions
from quiver.loader.errors import DefinitionError
from quiver.loader.transform import parse, render
from support.processes import run_quiver


def doc(features: list[dict[str, Any]], **view: Any) -> dict[str, Any]:
    v = {"name": "activity", "source": {"path": "events/*.parquet", "timestamp": "ts"}, "features": features, **view}
    return {"entity": {"name": "user_id", "key_type": "int64"}, "views": [v]}


COUNT = {"name": "n_7d", "type": "int64", "agg": {"fn": "count", "window": "7d"}}

REFUSED = [
    ("a parse error", [{"name": "f", "type": "float64", "agg": {"fn": "sum", "of": "price *", "window": "7d"}}], {},
     ["feature 'f'", "'price *'", "does not parse"]),
    ("a subquery", [{"name": "f", "type": "int64", "agg": {"fn": "max", "of": "(select 1)", "window": "7d"}}], {},
     ["feature 'f'", "not allowed"]),
    ("an unknown function",
     [{"name": "f", "type": "float64", "agg": {"fn": "sum", "of": "foo(price)", "window": "1d"}}], {},
     ["unknown function foo()", "'foo(price)'"]),
    ("a function outside the list", [{"name": "f", "type": "string", "expr": "substring(country, 1, 2)"}],
     {"source": "p/*.parquet"}, ["function SUBSTRING is not allowed", "feature 'f'"]),
    ("an aggregate inside an expression", [{"name": "f", "type": "float64", "expr": "sum(price)"}],
     {"source": "p/*.parquet"}, ["SUM is not allowed"]),
    ("a qualified column", [{"name": "f", "type": "float64", "expr": "t.price + 1"}], {"source": "p/*.parquet"},
     ["t.price", "without a table"]),
    ("a cast to a date", [{"name": "f", "type": "string", "expr": "cast(x as date)"}], {"source": "p/*.parquet"},
     ["CAST to DATE is not allowed"]),
    ("expr and agg on one feature",
     [{"name": "f", "type": "int64", "expr": "1", "agg": {"fn": "count", "window": "1d"}}], {},
     ["feature 'f'", "both 'expr' and 'agg'"]),
    ("a window that is not a duration", [{"name": "f", "type": "int64", "agg": {"fn": "count", "window": "7 days"}}],
     {}, ["feature 'f'", "'7 days' is not a duration"]),
    ("a zero window", [{"name": "f", "type": "int64", "agg": {"fn": "count", "window": "0d"}}], {},
     ["'0d' is not a duration"]),
    ("an unknown fn", [{"name": "f", "type": "int64", "agg": {"fn": "median", "of": "x", "window": "7d"}}], {},
     ["agg fn 'median'"]),
    ("sum without of", [{"name": "f", "type": "int64", "agg": {"fn": "sum", "window": "7d"}}], {}, ["needs 'of'"]),
    ("a count declared float", [{"name": "f", "type": "float64", "agg": {"fn": "count", "window": "7d"}}], {},
     ["agg count gives int32 or int64, declared float64"]),
    ("an avg declared int", [{"name": "f", "type": "int64", "agg": {"fn": "avg", "of": "x", "window": "7d"}}], {},
     ["agg avg gives float32 or float64"]),
    ("agg and plain features in one view", [COUNT, {"name": "age", "type": "int32"}], {},
     ["['age'] are not aggregations"]),
    ("agg without the events' time", [COUNT], {"source": "events/*.parquet"}, ["need the events' time"]),
    ("agg with an event_timestamp", [COUNT], {"event_timestamp": "ts"}, ["'event_timestamp' with 'agg'"]),
    ("a filter that does not parse", [COUNT], {"filter": "event_type = "}, ["filter", "does not parse"]),
    ("a LIKE pattern that is not a literal", [{"name": "f", "type": "bool", "expr": "a like b"}],
     {"source": "p/*.parquet"}, ["must be a string literal"]),
]


@pytest.mark.parametrize("what,features,view,words", REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_definitions_are_refused_with_where_and_why(what: str, features: list[dict[str, Any]],
                                                        view: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(DefinitionError) as e:
        parse_definitions(doc(features, **view), "features.yaml")
    message = str(e.value)
    assert message.startswith("features.yaml: view 'activity'"), message
    for w in words:
        assert w in message, (w, message)


def test_every_allowed_construct_parses() -> None:
    text = ("case when abs(a) > 1 and not (b is null) or c in (1, 2) then floor(a) / nullif(b, 0) + ceil(a) "
            "when lower(s) like 'x%' or upper(s) = 'Y' then sqrt(greatest(a, b, 0)) - least(a, 1) % 3 "
            "else coalesce(cast(a as bigint), -1) * length(s || 'z') end between 0 and 10")
    parse(text, "here")
    parse("if(a > 1, 1, 0) = 1", "here")


def test_division_and_casts_are_pinned_in_each_engines_sql() -> None:
    types = {"price": pa.float64(), "qty": pa.int64(), "s": pa.string()}
    tree = parse("cast(price as bigint) + cast(qty as bigint) + cast(s as int) + price / qty + qty % 2", "here")
    duck, spark = render(tree, "duckdb", types), render(tree, "spark", types)
    assert 'CAST(TRUNC("price") AS BIGINT)' in duck and 'CAST("qty" AS BIGINT)' in duck
    assert 'CAST("s" AS INT)' in duck
    assert "CAST(`price` AS BIGINT)" in spark and "TRUNC" not in spark
    assert duck.count("NULLIF") == 2 and spark.count("NULLIF") == 2


def _write_sources(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()),
                             "ts": pa.array([0], pa.timestamp("us", tz="UTC")),
                             "price": [1.5], "event_type": ["click"]}), tmp_path / "events" / "a.parquet")


def test_validate_and_load_refuse_an_unknown_column_before_any_work(tmp_path: Path) -> None:
    _write_sources(tmp_path)
    features = tmp_path / "features.yaml"
    features.write_text(yaml.safe_dump(doc([{"name": "spend", "type": "float64",
                                             "agg": {"fn": "sum", "of": "price * qty", "window": "7d"}}])))
    for cmd in (["validate", "--features", features], ["load", "--features", features, "--root", tmp_path / "root"]):
        r = run_quiver(*cmd)
        assert r.returncode == 2, r.stderr
        assert "view 'activity', feature 'spend'" in r.stderr and "unknown column(s) ['qty']" in r.stderr
        assert "'price * qty'" in r.stderr and "a.parquet" in r.stderr
        assert ("nothing was published" in r.stderr) == (cmd[0] == "load")
    assert not (tmp_path / "root" / "versions").exists() or not any((tmp_path / "root" / "versions").iterdir())
    # without the sources: the definitions alone are valid
    r = run_quiver("validate", "--features", features, "--no-sources")
    assert r.returncode == 0 and "(sources not opened)" in r.stdout


def test_validate_names_what_each_view_computes(tmp_path: Path) -> None:
    _write_sources(tmp_path)
    features = tmp_path / "features.yaml"
    features.write_text(yaml.safe_dump(doc([COUNT], filter="event_type = 'click'")))
    r = run_quiver("validate", "--features", features, check=True)
    assert "view activity: 1 features (1 agg, a filter)" in r.stdout and r.stdout.strip().endswith("valid")
    r = run_quiver("validate", "--features", features.with_name("nope.yaml"))
    assert r.returncode == 2 and "no such file" in r.stderr
