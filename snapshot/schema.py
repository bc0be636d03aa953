"""Feature definitions as the snapshot records them: entity, views, features, and where each
feature sits in a stored ViewRow (proto/quiver/v1/quiver.proto)."""

from dataclasses import dataclass, field
from typing import Any

# type name -> ViewRow field number of its group
FEATURE_TYPES: dict[str, int] = {
    "bool": 2,
    "int32": 3,
    "int64": 4,
    "float32": 5,
    "float64": 6,
    "string": 7,
    "bytes": 8,
    "list<float32>": 9,
    "list<int64>": 10,
}
KEY_TYPES = ("int64", "string")
DEFAULT_GROUP = "default"   # the storage group of every view that names none


@dataclass(frozen=True)
class Aggregation:
    """A feature computed over a view's events in the window (T - window, T], T the version's as-of time
    (loader/transform.py)."""

    fn: str            # count, sum, min, max, avg, last, count_distinct
    of: str            # a SQL expression over one event; "" for count: the events themselves
    window: str        # a duration: 7d, 12h, 90m, 2w

    def to_json(self) -> dict[str, Any]:
        return {"fn": self.fn, **({"of": self.of} if self.of else {}), "window": self.window}


@dataclass(frozen=True)
class FeatureDef:
    name: str
    type: str
    length: int = 0            # list<float32> only: the fixed embedding size
    default: Any = None        # stored in place of a null source value; None: keep the null
    source_column: str = ""    # Parquet column; defaults to the feature's name
    # what good values look like (quality/checks.py); not part of the encoding, so a new check reuses the data
    checks: dict[str, Any] = field(default_factory=dict, hash=False)
    expr: str = ""             # computed: a SQL expression over one source row
    agg: Aggregation | None = None   # computed: an aggregation over the view's events in a window

    @property
    def computed(self) -> bool:
        return bool(self.expr) or self.agg is not None

    @property
    def column(self) -> str:
        return self.source_column or self.name

    @property
    def group_field(self) -> int:
        return FEATURE_TYPES[self.type]

    def definition_json(self) -> dict[str, Any]:
        """What decides the encoded bytes of this feature (checks do not)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.length:
            out["length"] = self.length
        if self.default is not None:
            out["default"] = self.default
        if self.source_column:
            out["source_column"] = self.source_column
        if self.expr:
            out["expr"] = self.expr
        if self.agg is not None:
            out["agg"] = self.agg.to_json()
        return out

    def to_json(self) -> dict[str, Any]:
        return {**self.definition_json(), **({"checks": self.checks} if self.checks else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureDef":
        agg = d.get("agg")
        return cls(d["name"], d["type"], d.get("length", 0), d.get("default"), d.get("source_column", ""),
                   d.get("checks") or {}, d.get("expr", ""),
                   Aggregation(agg["fn"], agg.get("of", ""), agg["window"]) if agg else None)


@dataclass(frozen=True)
class ViewDef:
    name: str
    source: str                         # path or glob, relative to the definitions file
    features: tuple[FeatureDef, ...]
    event_timestamp: str = ""           # column; when set, duplicate keys keep the latest row
    entity_column: str = ""             # source column of the entity key; defaults to the entity's name
    group: str = DEFAULT_GROUP          # storage group: one RocksDB, one stored value per entity for all its views
    checks: dict[str, Any] = field(default_factory=dict, hash=False)  # view checks: min_rows, max_row_change...
    filter: str = ""                    # computed: a SQL boolean; source rows it is not true for are not read
    time_column: str = ""               # an event table's time column: the windows of its `agg` features
    window_end: str = ""                # an aggregated view: the as-of time its windows end at (set by the load)

    @property
    def computed(self) -> bool:
        """Its rows are computed from its source (loader/derive.py) before they are encoded."""
        return bool(self.filter) or any(f.computed for f in self.features)

    @property
    def aggregated(self) -> bool:
        """One row per entity, aggregated over the events of the source."""
        return any(f.agg is not None for f in self.features)

    def feature(self, name: str) -> FeatureDef:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def layout(self) -> list[tuple[FeatureDef, int, int]]:
        """(feature, group field, index in group) for each feature, in schema order."""
        counts: dict[int, int] = {}
        out = []
        for f in self.features:
            g = f.group_field
            out.append((f, g, counts.get(g, 0)))
            counts[g] = counts.get(g, 0) + 1
        return out

    def definition_json(self) -> dict[str, Any]:
        """What decides the encoded bytes of this view: equal JSON means reusable data."""
        out: dict[str, Any] = {
            "name": self.name,
            "event_timestamp": self.event_timestamp,
            "entity_column": self.entity_column,
            "features": [f.definition_json() for f in self.features],
        }
        for k in ("filter", "time_column", "window_end"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out

    def to_json(self) -> dict[str, Any]:
        """definition_json plus where the rows come from, the storage group and the checks they must pass."""
        out = {**self.definition_json(), "source": self.source, "group": self.group,
               "features": [f.to_json() for f in self.features]}
        if self.checks:
            out["checks"] = self.checks
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "ViewDef":
        return cls(
            d["name"],
            d.get("source", ""),
            tuple(FeatureDef.from_json(f) for f in d["features"]),
            d.get("event_timestamp", ""),
            d.get("entity_column", ""),
            d.get("group", DEFAULT_GROUP),
            d.get("checks") or {},
            d.get("filter", ""),
            d.get("time_column", ""),
            d.get("window_end", ""),
        )


@dataclass(frozen=True)
class EntityDef:
    name: str
    key_type: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "key_type": self.key_type}


@dataclass(frozen=True)
class FeatureSet:
    entity: EntityDef
    views: tuple[ViewDef, ...]
    source_file: str = field(default="", compare=False)

    def view(self, name: str) -> ViewDef:
        for v in self.views:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def view_names(self) -> list[str]:
        return [v.name for v in self.views]

    def groups(self) -> dict[str, list[ViewDef]]:
        """Storage group -> its views in schema order (the order of the ViewRows in its stored value),
        groups in the order of their first view."""
        out: dict[str, list[ViewDef]] = {}
        for v in self.views:
            out.setdefault(v.group, []).append(v)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"entity": self.entity.to_json(), "views": [v.to_json() for v in self.views]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FeatureSet":
        e = d["entity"]
        return cls(EntityDef(e["name"], e["key_type"]), tuple(ViewDef.from_json(v) for v in d["views"]))
