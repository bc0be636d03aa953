"""Per-feature statistics of a view, accumulated over its normalized record batches inside the load's
own passes (Arrow kernels and numpy, no per-row Python), partial results merged across workers.

What is exact and what is estimated:
- exact: rows, nulls, count, NaN/inf, min, max, mean and std (population, ddof 0; Chan's parallel
  merge of per-batch count/mean/M2), true counts of bools, empty lists, and every row-level check's
  count of offending rows (with up to EXAMPLE_KEYS of their keys);
- quantiles, percentiles and the fixed-bin histogram: computed at the end from a sample of rows chosen
  by key hash (_sketches.py), at most about SAMPLE_ROWS rows per view. With every row sampled (views of
  up to SAMPLE_ROWS rows) they equal numpy/pyarrow on the data; above that a quantile's rank is off by
  about sqrt(q(1-q)/n), 0.22% at the median for 50k sampled rows, and histogram counts are the sample's
  scaled to the count;
- strings: a distinct-count estimate (HyperLogLog, 0.8% standard error) and the top values,
  exact while a task sees at most TOP_KEPT distinct values; beyond that, values that drop out of the
  kept set between compactions, and values seen only once in a batch, are undercounted.

The measured value is the value itself for numbers, the L2 norm for list<float32> embeddings and the
length for list<int64> and bytes; checks and drift read the statistics of that measure.
"""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from quiver.quality._sketches import HyperLogLog, hash64, sample_threshold, sampled_rows
from quiver.quality.checks import EXAMPLE_KEYS, row_checks
from quiver.snapshot.layout import SnapshotRoot
from quiver.snapshot.schema import FeatureDef, ViewDef

# A version's statistics, beside its manifest (which lists and checksums it like any data file):
# {"views": {view: ViewAccumulator.to_json()}}. write_statistics and read_statistics are its one writer
# and one reader.
STATISTICS_FILE = "statistics.json"
SAMPLE_ROWS = 50_000
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
PERCENTILES = 101          # 0%, 1%, ..., 100%: drift compares distributions through them
HISTOGRAM_BINS = 20
TOP_VALUES = 50           # recorded; `top_complete` says whether they are all the values there are
TOP_KEPT = 1000
_COMPACT_ROWS = 1 << 16


def sample_rate(expected_rows: int) -> float:
    return 1.0 if expected_rows <= SAMPLE_ROWS else SAMPLE_ROWS / expected_rows


class _Violations:
    """Count of offending rows per check, and a few of their keys."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[Any]] = {}

    def add(self, check: str, keys: pa.Array, mask: np.ndarray | pa.Array) -> None:
        if isinstance(mask, pa.Array):
            mask = mask.fill_null(False).to_numpy(zero_copy_only=False)
        n = int(np.count_nonzero(mask))
        if not n:
            return
        self.counts[check] = self.counts.get(check, 0) + n
        have = self.examples.setdefault(check, [])
        if len(have) < EXAMPLE_KEYS:
            have += keys.take(pa.array(np.flatnonzero(mask)[:EXAMPLE_KEYS - len(have)])).to_pylist()

    def merge(self, other: "_Violations") -> None:
        for check, n in other.counts.items():
            self.counts[check] = self.counts.get(check, 0) + n
            have = self.examples.setdefault(check, [])
            have += other.examples.get(check, [])[:EXAMPLE_KEYS - len(have)]

    def to_json(self) -> dict[str, Any]:
        return {c: {"count": n, "examples": self.examples.get(c, [])} for c, n in sorted(self.counts.items())}


class _Moments:
    """count, min, max, mean and M2 of finite values, plus NaN/inf counts and the sampled values."""

    def __init__(self) -> None:
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min: Any = None
        self.max: Any = None
        self.nan = 0
        self.inf = 0
        self.sample: list[np.ndarray] = []
        self.batch_min: Any = None
        self.batch_max: Any = None

    def add(self, values: pa.Array, sample: np.ndarray | None) -> None:
        """One batch (nulls allowed). Leaves the batch's own min and max in batch_min/batch_max, so
        the row checks build a mask only for a batch that breaks a limit. numpy, not Arrow kernels,
        for the passes over values: Arrow's min_max on floats runs about 100x slower than numpy's."""
        self.batch_min = self.batch_max = None
        if values.null_count:
            x = values.drop_null().to_numpy(zero_copy_only=False)
            taken = None if sample is None else values.take(pa.array(sample)).drop_null().to_numpy(
                zero_copy_only=False)
        else:
            x = values.to_numpy(zero_copy_only=False)
            taken = None if sample is None else x[sample]
        if not len(x):
            return
        with np.errstate(invalid="ignore", over="ignore"):
            total = x.sum() if x.dtype.kind == "f" else 0.0
        if not np.isfinite(total):   # one cheap pass decides: most batches hold no NaN/inf
            finite = np.isfinite(x)
            nan = int(np.count_nonzero(np.isnan(x)))
            self.nan += nan
            self.inf += len(x) - int(np.count_nonzero(finite)) - nan
            x = x[finite]
            if taken is not None:
                taken = taken[np.isfinite(taken)]
            if not len(x):
                return
        lo, hi = x.min(), x.max()
        self.batch_min, self.batch_max = lo.item(), hi.item()
        self.min = self.batch_min if self.min is None else min(self.min, self.batch_min)
        self.max = self.batch_max if self.max is None else max(self.max, self.batch_max)
        x64 = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            mean = float(x64.mean())   # pairwise summation, as Arrow's
            d = x64 - mean             # two passes: the centred sum of squares loses nothing to a large mean
            m2 = float(np.einsum("i,i->", d, d))   # not d @ d: BLAS threads contend in a busy worker
        self._combine(len(x64), mean, m2)
        self.sample.append((x64 if taken is None else taken).astype(np.float64, copy=False))

    def _combine(self, n: int, mean: float, m2: float) -> None:
        total = self.n + n
        with np.errstate(over="ignore", invalid="ignore"):
            delta = mean - self.mean
            self.m2 += m2 + delta * delta * (self.n * n / total)
            self.mean = self.mean * (self.n / total) + mean * (n / total)   # weighted: no overflow near the limits
        self.n = total

    def merge(self, o: "_Moments") -> None:
        if o.n:
            self.min = o.min if self.min is None else min(self.min, o.min)
            self.max = o.max if self.max is None else max(self.max, o.max)
            self._combine(o.n, o.mean, o.m2)
        self.nan += o.nan
        self.inf += o.inf
        self.sample += o.sample

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nan": self.nan, "inf": self.inf, "min": self.min, "max": self.max,
                               "mean": None, "std": None, "quantiles": {}, "percentiles": [],
                               "histogram": {"edges": [], "counts": []}, "sampled": 0}
        if not self.n:
            return out
        sample = np.concatenate(self.sample) if self.sample else np.empty(0)
        out["mean"] = _finite(self.mean)   # None when values near the float64 limits overflow the sums
        out["std"] = _finite(np.sqrt(max(self.m2, 0.0) / self.n)) if np.isfinite(self.m2) else None
        out["sampled"] = int(len(sample))
        if len(sample):
            ordered = np.sort(sample)   # one sort serves every quantile and the histogram
            out["quantiles"] = {f"{q:g}": x for q, x in zip(QUANTILES, _quantiles(ordered, QUANTILES), strict=True)}
            out["percentiles"] = _quantiles(ordered, np.linspace(0, 1, PERCENTILES))
            edges = _edges(float(self.min), float(self.max))
            cuts = np.searchsorted(ordered, edges[1:-1], side="left")
            counts = np.diff(np.concatenate([[0], cuts, [len(ordered)]]))
            scale = self.n / len(sample)
            out["histogram"] = {"edges": edges.tolist(),
                                "counts": [float(c * scale) for c in counts] if scale != 1 else counts.tolist()}
        return out


def _quantiles(ordered: np.ndarray, qs: Any) -> list[float]:
    """numpy's default ("linear") quantiles of sorted values, without a partition per quantile; the
    weighted form cannot overflow between two finite values."""
    pos = np.asarray(qs, dtype=np.float64) * (len(ordered) - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, len(ordered) - 1)
    t = pos - lo
    return (ordered[lo] * (1 - t) + ordered[hi] * t).tolist()


def _edges(lo: float, hi: float) -> np.ndarray:
    """np.histogram's bin edges, or (when hi - lo overflows a double) the same points without overflow."""
    with np.errstate(over="ignore", invalid="ignore"):
        edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
    if np.isfinite(edges).all():
        return edges
    t = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    return lo * (1 - t) + hi * t


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


class FeatureAccumulator:
    def __init__(self, feature: FeatureDef) -> None:
        self.feature = feature
        self.checks = row_checks(feature)
        self.rows = 0
        self.nulls = 0
        self.violations = _Violations()
        self.moments = _Moments() if feature.type not in ("bool", "string") else None
        self.trues = 0
        self.empty = 0
        self.hll = HyperLogLog() if feature.type == "string" else None
        self.top: list[pa.Table] = []
        self.pruned = False    # some values were dropped from the kept set

    def add(self, keys: pa.Array, col: pa.Array, sample: np.ndarray | None) -> None:
        self.rows += len(col)
        if col.null_count:
            self.nulls += col.null_count
            self.violations.add("nulls", keys, col.is_null())
        t = self.feature.type
        if t == "bool":
            self.trues += pc.sum(col).as_py() or 0
        elif t == "string":
            self._add_values(keys, col)
        elif t == "bytes":
            # blobs (avatars, hashes): their lengths, not their values, say whether a day looks right;
            # hashing every unique blob cost as much as the rest of the view's statistics
            assert self.moments is not None
            self.moments.add(pc.binary_length(col), sample)
        elif t == "list<float32>":
            self._add_embedding(keys, col, sample)
        elif t == "list<int64>":
            lengths = pc.list_value_length(col)
            self.empty += pc.sum(pc.equal(lengths, 0)).as_py() or 0
            assert self.moments is not None
            self.moments.add(lengths, sample)
            self._outside("length_between", keys, lengths)
        else:
            assert self.moments is not None
            nan, inf = self.moments.nan, self.moments.inf
            self.moments.add(col, sample)
            if "finite" in self.checks and (self.moments.nan, self.moments.inf) != (nan, inf):
                self.violations.add("finite", keys, pc.invert(pc.is_finite(col)))
            self._bounds(keys, col)
            if "allowed" in self.checks:
                bad = pc.invert(pc.is_in(col, pa.array(self.checks["allowed"], col.type)))
                self.violations.add("allowed", keys, bad)

    def _bounds(self, keys: pa.Array, col: pa.Array) -> None:
        if "min" not in self.checks and "max" not in self.checks:
            return
        assert self.moments is not None   # its batch min and max: most batches pass without building a mask
        lo, hi = self.moments.batch_min, self.moments.batch_max
        if "min" in self.checks and lo is not None and lo < self.checks["min"]:
            self.violations.add("min", keys, self._finite(col, pc.less(col, self.checks["min"])))
        if "max" in self.checks and hi is not None and hi > self.checks["max"]:
            self.violations.add("max", keys, self._finite(col, pc.greater(col, self.checks["max"])))

    @staticmethod
    def _finite(col: pa.Array, mask: pa.Array) -> pa.Array:
        """NaN and inf are the finite check's to count, as min and max are of finite values."""
        return pc.and_(mask, pc.is_finite(col)) if pa.types.is_floating(col.type) else mask

    def _outside(self, check: str, keys: pa.Array, measure: pa.Array) -> None:
        if check not in self.checks:
            return
        lo, hi = self.checks[check]
        mm = pc.min_max(measure)
        if mm["min"].as_py() is not None and (mm["min"].as_py() < lo or mm["max"].as_py() > hi):
            self.violations.add(check, keys, pc.or_(pc.less(measure, lo), pc.greater(measure, hi)))

    def _add_values(self, keys: pa.Array, col: pa.Array) -> None:
        encoded = col.dictionary_encode()
        values = encoded.dictionary
        assert self.hll is not None
        self.hll.add(hash64(values))
        indices = encoded.indices
        valid = indices.drop_null().to_numpy(zero_copy_only=False)
        counts = np.bincount(valid, minlength=len(values))
        batch_top = pa.table({"value": values, "count": pa.array(counts, pa.int64())})
        if self.pruned:
            # more distinct values than are kept: a value seen once in a batch is too rare to be a top
            # value, and dropping those keeps a column of unique values (ids, hashes) cheap
            batch_top = batch_top.filter(pa.array(counts >= 2))
        if batch_top.num_rows:
            self.top.append(batch_top)
        if sum(t.num_rows for t in self.top) > _COMPACT_ROWS:
            self._compact()
        if "allowed" in self.checks:
            bad = pc.invert(pc.is_in(values, pa.array(self.checks["allowed"], values.type)))
            if pc.any(bad).as_py():
                bad_index = pc.indices_nonzero(bad)
                self.violations.add("allowed", keys, pc.is_in(indices, bad_index))

    def _compact(self) -> None:
        t = pa.concat_tables(self.top).group_by("value").aggregate([("count", "sum")])
        t = t.rename_columns(["value", "count"]) if t.column_names[0] == "value" else \
            t.select(["value", "count_sum"]).rename_columns(["value", "count"])
        if t.num_rows > TOP_KEPT:
            t = t.take(pc.select_k_unstable(t, TOP_KEPT, [("count", "descending")]))
            self.pruned = True
        self.top = [t]

    def _add_embedding(self, keys: pa.Array, col: pa.Array, sample: np.ndarray | None) -> None:
        size = self.feature.length
        flat = col.values.slice(col.offset * size, len(col) * size).to_numpy(zero_copy_only=False)
        matrix = flat.reshape(len(col), size)
        with np.errstate(over="ignore", invalid="ignore"):
            norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix)).astype(np.float64)   # float32: 5x faster
            overflowed = ~np.isfinite(norms)
            if overflowed.any():   # large finite elements: again in doubles
                norms[overflowed] = np.sqrt(np.einsum("ij,ij->i", matrix[overflowed], matrix[overflowed],
                                                      dtype=np.float64))
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        bad_rows = ~np.isfinite(norms) & valid
        assert self.moments is not None
        if bad_rows.any():
            bad = matrix[bad_rows]
            self.moments.nan += int(np.count_nonzero(np.isnan(bad)))
            self.moments.inf += int(np.count_nonzero(np.isinf(bad)))
            bad_rows[bad_rows] = ~np.isfinite(bad).all(axis=1)
            if "finite" in self.checks:
                self.violations.add("finite", keys, bad_rows)
            valid = valid & ~bad_rows
        measure = pa.array(norms, mask=~valid)
        nan, inf = self.moments.nan, self.moments.inf
        self.moments.add(measure, sample)
        self.moments.nan, self.moments.inf = nan, inf   # counted per element above, not per norm
        self._outside("norm_between", keys, measure)

    def merge(self, o: "FeatureAccumulator") -> None:
        self.rows += o.rows
        self.nulls += o.nulls
        self.violations.merge(o.violations)
        self.trues += o.trues
        self.empty += o.empty
        if self.moments is not None and o.moments is not None:
            self.moments.merge(o.moments)
        if self.hll is not None and o.hll is not None:
            self.hll.merge(o.hll)
        self.top += o.top
        self.pruned = self.pruned or o.pruned

    def to_json(self) -> dict[str, Any]:
        t = self.feature.type
        measure = {"list<float32>": "norm", "list<int64>": "length", "bool": "category", "string": "category",
                   "bytes": "length"}.get(t, "value")
        out: dict[str, Any] = {"type": t, "measure": measure, "rows": self.rows, "nulls": self.nulls,
                               "count": self.rows - self.nulls}
        if self.moments is not None:
            out |= self.moments.to_json()
        if t == "bool":
            count = self.rows - self.nulls
            out["mean"] = self.trues / count if count else None
            out["top"] = [[True, self.trues], [False, count - self.trues]]
        if self.hll is not None:
            out["distinct"] = self.hll.estimate()
            top = self._top_values()
            # every value is listed (drift can read a value missing from the list as a count of 0)
            out["top_complete"] = len(top) <= TOP_VALUES and not self.pruned
            out["top"] = top[:TOP_VALUES]
        if t == "list<int64>":
            out["empty"] = self.empty
        if t == "list<float32>":
            out["length"] = self.feature.length
        out["violations"] = self.violations.to_json()
        out["counted"] = self.checks    # the limits the violations were counted under
        return out

    def _top_values(self) -> list[list[Any]]:
        if not self.top:
            return []
        self._compact()
        t = self.top[0]
        t = t.take(pc.sort_indices(t, [("count", "descending"), ("value", "ascending")]))[:TOP_VALUES + 1]
        values = t.column("value").to_pylist()
        return [[v, c] for v, c in zip(values, t.column("count").to_pylist(), strict=True)]


class ViewAccumulator:
    """Statistics of one view's normalized batches (key first, then the event timestamp if any, then
    the features by name). Picklable: encode workers return theirs to be merged in the parent."""

    def __init__(self, view: ViewDef, expected_rows: int = 0) -> None:
        self.view = view
        self.rows = 0
        self.threshold = sample_threshold(sample_rate(expected_rows))
        self.features = {f.name: FeatureAccumulator(f) for f in view.features}

    def add(self, batch: pa.RecordBatch) -> None:
        keys = batch.column(0)
        self.rows += batch.num_rows
        sample = sampled_rows(keys, self.threshold)
        for name, acc in self.features.items():
            acc.add(keys, batch.column(name), sample)

    def merge(self, other: "ViewAccumulator") -> "ViewAccumulator":
        self.rows += other.rows
        for name, acc in self.features.items():
            acc.merge(other.features[name])
        return self

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "features": {n: a.to_json() for n, a in self.features.items()}}


class StatisticsMissing(FileNotFoundError):
    """A version without recorded statistics (loaded before they were, or not a version)."""


def write_statistics(version_dir: Path, views: dict[str, dict[str, Any]],
                     delta: dict[str, dict[str, Any]] | None = None) -> None:
    """`delta`: a delta version's statistics of each changed view's changed rows (loader/delta.py)."""
    data: dict[str, Any] = {"views": views} if delta is None else {"views": views, "delta": delta}
    (version_dir / STATISTICS_FILE).write_text(json.dumps(data, allow_nan=False, sort_keys=True) + "\n")


def read_statistics(root: SnapshotRoot, version: str) -> dict[str, Any]:
    """A published version's STATISTICS_FILE; StatisticsMissing if it has none."""
    path = root.version_dir(version) / STATISTICS_FILE
    try:
        data: dict[str, Any] = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise StatisticsMissing(f"{path}: no statistics (a version loaded before quiver recorded them?)") from None
    return data
