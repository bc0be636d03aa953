"""Quality: what a version's data looks like, whether it is good enough to publish, and how it moved.

In: a view's normalized record batches (from the load's own passes) and the checks declared in
features.yaml. Out: STATISTICS_FILE (statistics.json) beside the manifest, the manifest's check records
(snapshot/manifest.py CheckSummary), and for a person the `quiver diff` table and the `quiver report` page.

    checks.py       parse the checks in features.yaml; evaluate them on a view's statistics
    statistics.py   per-feature statistics accumulated over record batches, merged across workers; the one
                    writer and the one reader of statistics.json (_sketches.py: hashing and mergeable
                    sketches behind them, private)
    evaluate.py     the load stage: statistics of every view -> checks -> statistics.json, or the refusal
    drift.py        compare two versions' statistics (population stability index, row and null changes)
    report.py       the self-contained HTML page of one version
    commands.py     `quiver diff` and `quiver report`

**The version compared against** is the one CURRENT named before it, everywhere (drift.compared_against):

- a load's drift checks (max_row_change, max_null_fraction_change) compare the new version with CURRENT,
  which it is about to replace (the plan reads CURRENT once, under the load lock, for reuse and checks);
- `quiver diff` and `quiver report` compare CURRENT with ROOT/PREVIOUS, the version CURRENT replaced (after
  a rollback, the version rolled back from), which retention keeps;
- any other version is compared with nothing unless one is named (`quiver diff A B`, `quiver report
  VERSION --against A`): which version was served before it is not recorded.
"""
