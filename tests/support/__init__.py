"""Test support for quiver's suite (importable as `support`: pytest puts tests/ on sys.path).

- `support.oracle`: THE independent ViewRow decoder (written from snapshot/FORMAT.md, sharing no code with
  quiver.client, quiver.verify or the loader); every test that decodes stored or sent values uses it.
- `support.canon`: the canonical value form tests compare in (floats as bits).
- `support.datasets`: source data sets (features.yaml + Parquet) and the values a reader must find.
- `support.stored`: a version's online RocksDB and offline Parquet read back, files found via the manifest.
- `support.processes`: the real CLI (`run_quiver`) and `quiver serve` as processes, ports from the OS
  (`free_port`), and waiting on conditions (`wait_for`): the one copy of each.
- `support.inprocess`: the CLI's main() in the test process (`run_in_process`), for failures found before a
  command starts any work; it refuses a case that would start a process, a thread or a signal handler.
- `support.loads`: a small published root, and the checks that a refused load changed nothing.
"""
