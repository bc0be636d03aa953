"""A data set for computed features (features.yaml expr, filter, agg) and its independent oracle: the
expected value of every computed feature for every entity, worked out in plain Python over the raw rows,
not by any SQL engine. Used by tests/e2e/test_computed.py (local engine) and test_spark_engine.py."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

T = datetime(2026, 11, 1, tzinfo=UTC)      # the loads' as-of time
US = timedelta(microseconds=1)
DAY = timedelta(days=1)
LABELS = ["alpha", "beta", "gamma", None]
NAMES = ["user", "Ursula", "café", "bob", None, "日本"]
COUNTRIES = ["US", "IN", "XX", "DE", None]

# (name, type, window, fn, of, python value of `of` for an event or None)
AGGS: list[tuple[str, str, str, str, str, Any]] = [
    ("clicks_7d", "int64", "7d", "count", "", None),
    ("clicks_1h", "int32", "1h", "count", "", None),
    ("priced_30d", "int64", "30d", "count", "price", lambda e: e["price"]),
    ("spend_30d", "float64", "30d", "sum", "price * qty",
     lambda e: None if e["price"] is None else e["price"] * e["qty"]),
    ("qty_30d", "int64", "30d", "sum", "qty", lambda e: e["qty"]),
    ("min_price_30d", "float64", "30d", "min", "price", lambda e: e["price"]),
    ("max_price_7d", "float32", "7d", "max", "price", lambda e: e["price"]),
    ("avg_price_30d", "float64", "30d", "avg", "price", lambda e: e["price"]),
    ("last_item", "int64", "30d", "last", "item_id", lambda e: e["item_id"]),
    ("last_label", "string", "30d", "last", "label", lambda e: e["label"]),
    ("items_30d", "int32", "30d", "count_distinct", "item_id", lambda e: e["item_id"]),
]
SPEND_DEFAULT = 0.0
WINDOWS = {"1h": timedelta(hours=1), "7d": 7 * DAY, "30d": 30 * DAY}

# (name, type, expression, python over one row)
EXPRS: list[tuple[str, str, str, Any]] = [
    ("is_adult", "bool", "age >= 18", lambda r: None if r["age"] is None else r["age"] >= 18),
    ("age_next", "int32", "age + 1", lambda r: None if r["age"] is None else r["age"] + 1),
    ("ratio", "float64", "price / qty",
     lambda r: None if r["price"] is None or not r["qty"] else r["price"] / r["qty"]),
    ("qty_mod", "int64", "qty % 3", lambda r: int(math.fmod(r["qty"], 3))),
    ("price_int", "int64", "cast(price as bigint)", lambda r: None if r["price"] is None else math.trunc(r["price"])),
    ("bucket", "string", "case when price > 10 then 'high' when price > 0 then 'low' else 'none' end",
     lambda r: "none" if r["price"] is None else "high" if r["price"] > 10 else "low" if r["price"] > 0 else "none"),
    ("country_or", "string", "coalesce(country, 'unknown')", lambda r: r["country"] or "unknown"),
    ("mobile", "bool", "coalesce(country in ('US', 'IN'), false)", lambda r: r["country"] in ("US", "IN")),
    ("like_u", "bool", "name like 'u%'", lambda r: None if r["name"] is None else r["name"].startswith("u")),
    ("twenties", "bool", "age between 20 and 30", lambda r: None if r["age"] is None else 20 <= r["age"] <= 30),
    ("shout", "string", "upper(name) || '!'", lambda r: None if r["name"] is None else r["name"].upper() + "!"),
    ("name_len", "int32", "length(lower(name))", lambda r: None if r["name"] is None else len(r["name"])),
    ("funcs", "float64", "abs(price) + floor(price) + ceil(price) + sqrt(abs(price))",
     lambda r: None if r["price"] is None else
     abs(r["price"]) + math.floor(r["price"]) + math.ceil(r["price"]) + math.sqrt(abs(r["price"]))),
    ("spread", "float64", "greatest(price, 0) - least(price, 0)",
     lambda r: 0.0 if r["price"] is None else max(r["price"], 0) - min(r["price"], 0)),
    ("twice", "float64", "nullif(price, 0) * 2", lambda r: None if not r["price"] else r["price"] * 2),
    ("old", "int32", "if(age > 50, 1, 0)", lambda r: 1 if r["age"] is not None and r["age"] > 50 else 0),
    ("young_or_unknown", "bool", "not (age > 30) or age is null", lambda r: r["age"] is None or not r["age"] > 30),
]
ROW_FILTER = "country is null or country <> 'XX'"


@dataclass
class Computed:
    features_path: Path
    events: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    expected_activity: dict[int, dict[str, Any]]
    expected_profile: dict[int, dict[str, Any]]


def _event(user: int, ts: datetime, rng: random.Random, **over: Any) -> dict[str, Any]:
    e = {"user_id": user, "ts": ts, "event_type": rng.choice(["click", "click", "view", None]),
         "price": rng.choice([None, round(rng.uniform(-5, 60), 2)] + [round(rng.uniform(0, 60), 2)] * 4),
         "qty": rng.randint(0, 3), "item_id": rng.choice([None] + list(range(40))), "label": rng.choice(LABELS)}
    return e | over


def make_events(users: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out = []
    for u in range(users):
        for _ in range(rng.randint(0, 12)):   # (T - 40d, T + 2d]: some too old, some after T
            out.append(_event(u, T - timedelta(microseconds=rng.randint(-2 * 86_400_000_000, 40 * 86_400_000_000)),
                              rng))
    # the edges, by hand
    click = {"event_type": "click", "price": 2.5, "qty": 1}
    out += [_event(10_000, T - 7 * DAY, rng, **click, item_id=1),        # exactly T - 7d: out of 7d
            _event(10_000, T, rng, **click, item_id=2),                  # exactly T: in every window
            _event(10_000, T + US, rng, **click, item_id=3),             # after T: not read
            _event(10_000, T - 30 * DAY, rng, **click, item_id=4),       # exactly T - 30d: out of 30d
            _event(10_000, T - 30 * DAY + US, rng, **click, item_id=5),  # just inside 30d
            _event(10_001, T + DAY, rng, **click),                       # only after T: no row at all
            _event(10_002, T - 31 * DAY, rng, **click),                  # only too old: a row of defaults
            _event(10_003, T - timedelta(hours=2), rng, **click, item_id=5, label="beta"),   # a tie at one instant:
            _event(10_003, T - timedelta(hours=2), rng, **click, item_id=9, label="alpha"),  # the greater value wins
            _event(10_003, T - timedelta(minutes=5), rng, **click, item_id=None, label=None),  # null: not a value
            _event(10_004, T - DAY, rng, event_type="view", price=1.0, qty=1)]   # filtered out: counts 0
    rng.shuffle(out)
    return out


def _decimal9(x: float) -> Decimal:
    return Decimal(x).quantize(Decimal("1e-9"))


def expected_activity(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    by_user: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["ts"] <= T:
            by_user.setdefault(e["user_id"], []).append(e)
    out = {}
    for u, es in by_user.items():
        row: dict[str, Any] = {}
        for name, ftype, window, fn, _, of in AGGS:
            inside = [e for e in es if T - WINDOWS[window] < e["ts"] and e["event_type"] == "click"]
            values = [v for v in (of(e) for e in inside)] if of else []
            present = [v for v in values if v is not None]
            if fn == "count":
                row[name] = len(present) if of else len(inside)
            elif fn == "count_distinct":
                row[name] = len(set(present))
            elif not present:
                row[name] = SPEND_DEFAULT if name == "spend_30d" else None
            elif fn == "sum":
                total = sum((_decimal9(v) for v in present), Decimal(0))
                row[name] = int(total) if ftype == "int64" else float(total)
            elif fn == "avg":
                row[name] = float(sum((_decimal9(v) for v in present), Decimal(0))) / len(present)
            elif fn in ("min", "max"):
                v = min(present) if fn == "min" else max(present)
                row[name] = float(np.float32(v)) if ftype == "float32" else v
            else:   # last: the latest event's value, the greater one at one instant
                row[name] = max((e["ts"], of(e)) for e in inside if of(e) is not None)[1]
        out[u] = row
    return out


def make_rows(users: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed + 1)
    rows = []
    for u in range(users):
        rows.append({"user_id": u, "age": rng.choice([None, rng.randint(0, 90)]),
                     "price": rng.choice([None, 0.0, round(rng.uniform(-20, 20), 3), round(rng.uniform(-20, 20), 3)]),
                     "qty": rng.randint(-5, 5), "country": rng.choice(COUNTRIES), "name": rng.choice(NAMES)})
    return rows


def expected_profile(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out = {}
    for r in rows:
        if r["country"] == "XX":   # the filter
            continue
        values = {name: fn(r) for name, _, _, fn in EXPRS}
        values["age"] = r["age"]
        out[r["user_id"]] = values
    return out


def definitions(events_path: str = "events/*.parquet", extra: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    aggs = []
    for name, ftype, window, fn, of, _ in AGGS:
        agg = {"fn": fn, "window": window, **({"of": of} if of else {})}
        aggs.append({"name": name, "type": ftype, "agg": agg, **({"default": SPEND_DEFAULT}
                                                                   if name == "spend_30d" else {})})
    exprs = [{"name": n, "type": t, "expr": e} for n, t, e, _ in EXPRS] + [{"name": "age", "type": "int32"}]
    return {"entity": {"name": "user_id", "key_type": "int64"},
            "views": [{"name": "activity", "group": "events", "source": {"path": events_path, "timestamp": "ts"},
                       "filter": "event_type = 'click'", "features": aggs},
                      {"name": "profile", "source": "profile/*.parquet", "filter": ROW_FILTER,
                       "features": exprs + (extra or [])}]}


def write(folder: Path, users: int = 3000, seed: int = 5) -> Computed:
    events = make_events(users, seed)
    rows = make_rows(users, seed)
    (folder / "events").mkdir(parents=True)
    (folder / "profile").mkdir()
    schema = pa.schema([("user_id", pa.int64()), ("ts", pa.timestamp("us", tz="UTC")), ("event_type", pa.string()),
                        ("price", pa.float64()), ("qty", pa.int32()), ("item_id", pa.int64()), ("label", pa.string())])
    half = len(events) // 2
    for i, part in enumerate((events[:half], events[half:])):   # two files, small row groups
        pq.write_table(pa.Table.from_pylist(part, schema), folder / "events" / f"part-{i}.parquet", row_group_size=997)
    pschema = pa.schema([("user_id", pa.int64()), ("age", pa.int32()), ("price", pa.float64()), ("qty", pa.int64()),
                         ("country", pa.string()), ("name", pa.string())])
    third = len(rows) // 3
    for i, part in enumerate((rows[:third], rows[third:])):
        pq.write_table(pa.Table.from_pylist(part, pschema), folder / "profile" / f"part-{i}.parquet",
                       row_group_size=500)
    path = folder / "features.yaml"
    path.write_text(yaml.safe_dump(definitions(), sort_keys=False))
    return Computed(path, events, rows, expected_activity(events), expected_profile(rows))


def differences(expected: dict[int, dict[str, Any]], table: pa.Table, key: str = "user_id") -> list[str]:
    """Where the offline rows of a view differ from the oracle (at most ten)."""
    got = {r[key]: {k: v for k, v in r.items() if k != key} for r in table.to_pylist()}
    problems = [f"key {k}: missing" for k in sorted(set(expected) - set(got))[:5]]
    problems += [f"key {k}: unexpected" for k in sorted(set(got) - set(expected))[:5]]
    for k in sorted(set(expected) & set(got)):
        diff = {f: (v, got[k][f]) for f, v in expected[k].items() if not _same(v, got[k][f])}
        if diff:
            problems.append(f"key {k}: (expected, got) {diff}")
        if len(problems) >= 10:
            break
    return problems


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)
