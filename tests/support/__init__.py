"""Test support for quiver's suite (importable as `support`: pytest puts tests/ on sys.path).

- `support.oracle`: THE independent ViewRow decoder (written from snapshot/FORMAT.md, sharing no code with
  quiver.client, quiver.verify or the loader); every test that decodes stored or sent values uses it.
- `support.canon`: the canonical value form tests compare in (floats as bits).
- `support.datasets`: source data sets (features.yaml + Parquet) and the values a reader must find.
- `support.stored`: a version's online RocksDB and offline Parquet read back, files found via the manifest.
- `support.processes`: the real CLI and `quiver serve` as processes, and waiting on conditions.
"""
