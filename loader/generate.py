"""`quiver generate`: a synthetic data set shaped like monthly-active-user features.

Four views over `user_id` (int64), about 200 features: profile scalars (categorical strings,
bools, some nulls, an event timestamp), 120 float32 activity counters, a 64-dim embedding, and ad
interaction integers with a variable-length list. Vectorised: columns come from numpy in chunks.

With `events_per_user` (the CLI's default: 10), also an event table, events/ (clicks and views with
timestamps, items and prices over the 30 days before `events_end`), and a fifth view computed from it,
`engagement` (window aggregations, in its own storage group), plus an expression feature of `profile`
(README "Computed features").
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

CHUNK = 1_000_000
ROW_GROUP = 1 << 17
COUNTRIES = np.array(["US", "IN", "BR", "DE", "FR", "GB", "JP", "MX", "ID", "NG", "Ελλάδα", "日本"])
LANGS = np.array(["en", "hi", "pt", "de", "fr", "ja", "es", "id", "el"])
DEVICES = np.array(["android", "ios", "web", "tv"])
PLANS = np.array(["free", "plus", "pro", "family"])
ACTIVITY = 120
AD_COUNTS = 46
EMBEDDING = 64


def definitions() -> dict[str, Any]:
    profile = [{"name": "country", "type": "string"}, {"name": "language", "type": "string"},
               {"name": "device", "type": "string"}, {"name": "plan", "type": "string", "default": "free"},
               {"name": "age", "type": "int32"}, {"name": "is_premium", "type": "bool"},
               {"name": "email_verified", "type": "bool"}, {"name": "signup_days", "type": "int32"},
               {"name": "lifetime_value", "type": "float64"}, {"name": "churn_score", "type": "float32"},
               {"name": "sessions_total", "type": "int64"}, {"name": "avatar", "type": "bytes"}]
    profile += [{"name": f"pref_{i:02d}", "type": "float32"} for i in range(12)]
    activity = [{"name": f"act_{i:03d}", "type": "float32"} for i in range(ACTIVITY)]
    embedding = [{"name": "user_embedding", "type": "list<float32>", "length": EMBEDDING},
                 {"name": "embedding_norm", "type": "float32"}]
    ads: list[dict[str, Any]] = [{"name": f"ad_{i:02d}", "type": "int32" if i % 2 else "int64"}
                                 for i in range(AD_COUNTS)]
    ads += [{"name": "ctr_7d", "type": "float64"}, {"name": "recent_ad_ids", "type": "list<int64>"},
            {"name": "opted_out", "type": "bool", "default": False}]
    return {
        "entity": {"name": "user_id", "key_type": "int64"},
        "views": [
            {"name": "profile", "source": "profile/*.parquet", "event_timestamp": "updated_at", "features": profile},
            {"name": "activity", "source": "activity/*.parquet", "features": activity},
            {"name": "embedding", "source": "embedding/*.parquet", "features": embedding},
            {"name": "ads", "source": "ads/*.parquet", "features": ads},
        ],
    }


EVENTS_GROUP = "events"
EVENT_DAYS = 30
EVENT_TYPES = np.array(["click", "view"])


def computed_definitions(doc: dict[str, Any]) -> dict[str, Any]:
    """The generated definitions with the computed features: `engagement` over events/, `is_mobile`."""
    doc["views"][0]["features"].append(
        {"name": "is_mobile", "type": "bool", "expr": "coalesce(device in ('ios', 'android'), false)"})
    doc["views"].append({
        "name": "engagement", "group": EVENTS_GROUP,
        "source": {"path": "events/*.parquet", "timestamp": "event_ts"},
        "filter": "event_type = 'click'",
        "features": [
            {"name": "clicks_7d", "type": "int64", "agg": {"fn": "count", "window": "7d"}},
            {"name": "clicks_30d", "type": "int32", "agg": {"fn": "count", "window": "30d"}},
            {"name": "spend_30d", "type": "float64", "agg": {"fn": "sum", "of": "price * qty", "window": "30d"}},
            {"name": "avg_price_7d", "type": "float64", "agg": {"fn": "avg", "of": "price", "window": "7d"}},
            {"name": "last_item", "type": "int64", "agg": {"fn": "last", "of": "item_id", "window": "30d"}},
            {"name": "items_30d", "type": "int64", "agg": {"fn": "count_distinct", "of": "item_id", "window": "30d"}},
        ]})
    return doc


def default_events_end() -> datetime:
    """Today's midnight, UTC: a load with the default as-of time (now) sees the whole 30 days."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def events(rng: np.random.Generator, ids: np.ndarray, per_user: float, end: datetime) -> pa.Table:
    """About `per_user` events per user (Poisson; some users have none) in the 30 days before `end`, in
    time order; 80% clicks. Prices in cents, some missing; a user's items come from a small range."""
    counts = rng.poisson(per_user, len(ids))
    users = np.repeat(ids, counts)
    n = len(users)
    span = EVENT_DAYS * 86_400_000_000
    start = np.datetime64(end.replace(tzinfo=None) - timedelta(days=EVENT_DAYS), "us")
    offsets = np.sort(rng.integers(1, span + 1, n))    # (end - 30d, end]
    price = np.round(rng.exponential(20.0, n), 2)
    return pa.table({
        "user_id": users[rng.permutation(n)],
        "event_ts": pa.array(start + offsets.astype("timedelta64[us]"), pa.timestamp("us", tz="UTC")),
        "event_type": pa.array(EVENT_TYPES[(rng.random(n) < 0.2).astype(np.int64)]),
        "item_id": rng.integers(0, 500, n) + (users % 1000) * 100,
        "price": pa.array(price, mask=_nulls(rng, n, 0.05)),
        "qty": rng.integers(1, 4, n).astype(np.int32),
    })


def _nulls(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return rng.random(n) < rate


def _profile(rng: np.random.Generator, ids: np.ndarray) -> pa.Table:
    n = len(ids)
    cols: dict[str, Any] = {"user_id": ids}
    cols["updated_at"] = pa.array(np.datetime64("2026-11-01T00:00:00", "us")
                                  + rng.integers(0, 86_400_000_000 * 20, n).astype("timedelta64[us]"),
                                  pa.timestamp("us", tz="UTC"))
    cols["country"] = pa.array(COUNTRIES[rng.integers(0, len(COUNTRIES), n)]).dictionary_encode()
    cols["language"] = pa.array(LANGS[rng.integers(0, len(LANGS), n)], mask=_nulls(rng, n, 0.05))
    cols["device"] = pa.array(DEVICES[rng.integers(0, len(DEVICES), n)])
    cols["plan"] = pa.array(PLANS[rng.integers(0, len(PLANS), n)], mask=_nulls(rng, n, 0.1))
    cols["age"] = pa.array(rng.integers(13, 90, n).astype(np.int32), mask=_nulls(rng, n, 0.2))
    cols["is_premium"] = pa.array(rng.random(n) < 0.15)
    cols["email_verified"] = pa.array(rng.random(n) < 0.8, mask=_nulls(rng, n, 0.02))
    cols["signup_days"] = pa.array(rng.integers(0, 4000, n).astype(np.int32))
    cols["lifetime_value"] = pa.array(rng.exponential(40.0, n), mask=_nulls(rng, n, 0.1))
    churn = rng.random(n).astype(np.float32)
    churn[rng.random(n) < 0.01] = np.nan
    cols["churn_score"] = pa.array(churn)
    cols["sessions_total"] = pa.array(rng.integers(0, 1 << 40, n))
    avatar = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    cols["avatar"] = pa.FixedSizeBinaryArray.from_buffers(pa.binary(8), n, [None, pa.py_buffer(avatar)]).cast(
        pa.binary())
    for i in range(12):
        cols[f"pref_{i:02d}"] = pa.array(rng.random(n).astype(np.float32))
    return pa.table(cols)


def _activity(rng: np.random.Generator, ids: np.ndarray) -> pa.Table:
    counts = rng.integers(0, 64, (len(ids), ACTIVITY), dtype=np.uint8).astype(np.float32)
    cols: dict[str, Any] = {"user_id": ids}
    for i in range(ACTIVITY):
        cols[f"act_{i:03d}"] = counts[:, i]
    return pa.table(cols)


def _embedding(rng: np.random.Generator, ids: np.ndarray) -> pa.Table:
    emb = rng.standard_normal((len(ids), EMBEDDING), dtype=np.float32)
    return pa.table({"user_id": ids,
                     "user_embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), EMBEDDING),
                     "embedding_norm": np.linalg.norm(emb, axis=1).astype(np.float32)})


def _ads(rng: np.random.Generator, ids: np.ndarray) -> pa.Table:
    n = len(ids)
    cols: dict[str, Any] = {"user_id": ids}
    for i in range(AD_COUNTS):
        v = rng.integers(0, 1000, n)
        cols[f"ad_{i:02d}"] = v.astype(np.int32) if i % 2 else v
    cols["ctr_7d"] = rng.random(n) * 0.1
    lens = rng.integers(0, 9, n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lens, out=offsets[1:])
    cols["recent_ad_ids"] = pa.ListArray.from_arrays(pa.array(offsets),
                                                     pa.array(rng.integers(1, 10**9, int(offsets[-1]))))
    cols["opted_out"] = pa.array(rng.random(n) < 0.03, mask=_nulls(rng, n, 0.05))
    return pa.table(cols)


VIEWS = {"profile": _profile, "activity": _activity, "embedding": _embedding, "ads": _ads}
AD_COVERAGE = 0.85  # ads only knows users who saw an ad: the rest are 'not found' there

def checks(users: int) -> dict[str, dict[str, Any]]:
    """A realistic set of checks for the generated data, about one per feature, all passing on it
    except churn_score's warn-only `finite` (1% NaN): feature name or view name -> checks."""
    out: dict[str, dict[str, Any]] = {
        "country": {"allowed": COUNTRIES.tolist()}, "language": {"max_null_fraction": 0.1},
        "device": {"allowed": DEVICES.tolist()}, "plan": {"allowed": PLANS.tolist()},
        "age": {"min": 0, "max": 120, "max_null_fraction": 0.3}, "is_premium": {"max_null_fraction": 0},
        "email_verified": {"max_null_fraction": 0.05}, "signup_days": {"min": 0}, "lifetime_value": {"min": 0},
        "churn_score": {"min": 0, "max": 1, "finite": True, "warn": ["finite"]}, "sessions_total": {"min": 0},
        "avatar": {"max_null_fraction": 0}, "user_embedding": {"norm_between": [1, 20], "finite": True},
        "embedding_norm": {"min": 0}, "ctr_7d": {"min": 0, "max": 1}, "recent_ad_ids": {"length_between": [0, 50]},
        "opted_out": {"max_null_fraction": 0.1},
    }
    out |= {f"pref_{i:02d}": {"min": 0, "max": 1} for i in range(12)}
    out |= {f"act_{i:03d}": {"min": 0, "max": 1000} for i in range(ACTIVITY)}
    out |= {f"ad_{i:02d}": {"min": 0, "max": 100_000} for i in range(AD_COUNTS)}
    view = {"min_rows": users // 2, "max_row_change": 0.5, "max_null_fraction_change": 0.1}
    out |= {v: dict(view) for v in VIEWS}
    out |= {"is_mobile": {"max_null_fraction": 0}, "clicks_7d": {"min": 0}, "clicks_30d": {"min": 0},
            "spend_30d": {"min": 0}, "avg_price_7d": {"min": 0}, "last_item": {"min": 0}, "items_30d": {"min": 0},
            "engagement": {"min_rows": users // 2, "max_row_change": 0.5}}
    return out


def with_checks(doc: dict[str, Any], users: int) -> dict[str, Any]:
    table = checks(users)
    for v in doc["views"]:
        v["checks"] = table[v["name"]]
        for f in v["features"]:
            f["checks"] = table[f["name"]]
    return doc


def generate(users: int, out: str | Path, seed: int = 0, checked: bool = False, events_per_user: float = 0,
             events_end: datetime | None = None) -> Path:
    """Writes OUT/features.yaml (with checks() when checked) and OUT/<view>/part-*.parquet; with
    `events_per_user`, also OUT/events/part-*.parquet and the computed features over it; returns the
    features.yaml path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    end = events_end or default_events_end()
    for chunk, start in enumerate(range(0, users, CHUNK)):
        rng = np.random.default_rng([seed, chunk])
        ids = np.arange(start, min(users, start + CHUNK), dtype=np.int64)
        rng.shuffle(ids)  # sources are rarely sorted by key
        for name, make in VIEWS.items():
            view_ids = ids[rng.random(len(ids)) < AD_COVERAGE] if name == "ads" else ids
            table = make(rng, view_ids)
            (out / name).mkdir(exist_ok=True)
            pq.write_table(table, out / name / f"part-{chunk:05d}.parquet", row_group_size=ROW_GROUP,
                           compression="zstd")
        if events_per_user:
            (out / "events").mkdir(exist_ok=True)
            pq.write_table(events(np.random.default_rng([seed, chunk, 1]), ids, events_per_user, end),
                           out / "events" / f"part-{chunk:05d}.parquet", row_group_size=ROW_GROUP,
                           compression="zstd")
    doc = computed_definitions(definitions()) if events_per_user else definitions()
    path = out / "features.yaml"
    path.write_text(yaml.safe_dump(with_checks(doc, users) if checked else doc, sort_keys=False))
    return path
