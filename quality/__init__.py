"""Quality: what a version's data looks like, whether it is good enough to publish, and how it moved.

In: a view's normalized record batches (from the load's own passes) and the checks declared in
features.yaml. Out: statistics.json beside the manifest, the manifest's check records
(snapshot/manifest.py), and for a person the `quiver diff` table and the `quiver report` page.

    checks.py       parse the checks in features.yaml; evaluate them on a view's statistics
    statistics.py   per-feature statistics accumulated over record batches, merged across workers
                    (_sketches.py: the hashing and mergeable sketches behind them, private)
    evaluate.py     the load stage: statistics of every view -> checks -> statistics.json
    drift.py        read statistics.json; compare two versions (population stability index, row counts)
    report.py       the self-contained HTML page of one version
    commands.py     `quiver diff` and `quiver report`
"""
