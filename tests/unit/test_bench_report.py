"""bench/report.py draws its charts from result JSON: the PNG files exist, are images with something
drawn on them (many colours, not one flat fill), and the markdown embeds them."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def report() -> Any:
    spec = importlib.util.spec_from_file_location("bench_report", BENCH / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drawn(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400, pixels.shape
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 20, f"{path}: {len(colours)} colours: an empty chart"


@pytest.mark.parametrize("result,suffix", [("2026-11-27-quick-200000.json", "-p99.png"),
                                           ("2026-11-27-load.json", "-phases.png")])
def test_charts_are_drawn_and_embedded(tmp_path: Path, result: str, suffix: str) -> None:
    import json

    r = report()
    src = tmp_path / result
    shutil.copy(BENCH / "results" / result, src)
    res = json.loads(src.read_text())
    (chart,) = r.charts(res, src)
    assert chart == tmp_path / (src.stem + suffix)
    drawn(chart)
    assert f"![{chart.stem}](results/{chart.name})" in r.render(res, "title", [chart])


def test_a_load_result_without_phases_draws_nothing(tmp_path: Path) -> None:
    import json

    r = report()
    src = tmp_path / "load.json"
    shutil.copy(BENCH / "results" / "2026-11-27-load-quick.json", src)
    assert r.charts(json.loads(src.read_text()), src) == []


def test_a_verify_result_renders_both_times_and_the_changed_value() -> None:
    r = report()
    res = {"kind": "verify", "name": "verify", "date": "2026-12-01", "workers": 2, "file": "x.json",
           "machine": {"nproc": 2, "cpu_model": "cpu", "kernel": "k", "free_g": "Mem: 23", "loadavg_start": "1"},
           "versions": {"quiver": "0", "git_commit": "0123456789ab", "redis": "", "ghz": "", "rustc": "", "go": "",
                        "python": "3.11"},
           "sizes": [{"users": 1000, "load": {"wall_s": 10.0, "cpu_s": 8.0, "peak_rss_mb": 100},
                      "verify": {"wall_s": 5.0, "cpu_s": 6.0, "peak_rss_mb": 200},
                      "verify_vs_load_wall": 0.5, "verify_vs_load_cpu": 0.75,
                      "changed_value": {"view": "ads", "key": 7, "feature": "ad_01", "wall_s": 4.0, "found": True,
                                        "reported": ["MISMATCH view 'ads' key 7 feature 'ad_01': online 1"]}}]}
    text = r.render(res, "title")
    assert "| 1,000 | 10.0 | 8.0 | 5.0 | 6.0 | 0.50 | 0.75 | 100 / 200 |" in text
    assert "found in 4.0 s" in text and "MISMATCH view 'ads' key 7" in text
