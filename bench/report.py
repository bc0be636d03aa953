"""Renders a results JSON of bench/harness.py as markdown, into bench/README.md between markers, and
draws its charts as PNG files beside the JSON.

    python bench/report.py bench/results/DATE-NAME.json [--readme bench/README.md] [--title TEXT]

A serve result replaces the text between `<!-- results:start -->` and `<!-- results:end -->`, a load
result the text between `<!-- load:start -->` and `<!-- load:end -->`. Without --readme the markdown is
printed. Charts: a serve result's P99 against the achieved request rate for every series
(`DATE-NAME-p99.png`), a load result's time per loader phase (`DATE-NAME-phases.png`); the markdown
embeds them by a path relative to bench/.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MARKERS = {"serve": ("<!-- results:start -->", "<!-- results:end -->"),
           "load": ("<!-- load:start -->", "<!-- load:end -->"),
           "verify": ("<!-- verify:start -->", "<!-- verify:end -->")}


def f(x: Any, digits: int = 0, scale: float = 1.0) -> str:
    if x is None:
        return "–"
    if isinstance(x, (int, float)):
        v = x / scale
        return f"{v:,.{digits}f}"
    return str(x)


def ms(us: Any) -> str:
    return f(us, 3, 1000)


def value(x: Any) -> str:
    """A target's figure: whole numbers as such, small fractions (ms, ratios) with 3 decimals."""
    if isinstance(x, float) and not x.is_integer():
        return f(x, 3 if abs(x) < 100 else 0)
    return f(x)


def met(t: dict[str, Any]) -> str:
    return {True: "met", False: "**missed**", None: "see note"}[t["met"]]


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def machine(res: dict[str, Any]) -> list[str]:
    m, v = res["machine"], res["versions"]
    mem = next((line.split()[1] for line in m["free_g"].splitlines() if line.startswith("Mem:")), "?")
    return [f"Machine: {m['nproc']} CPUs ({m['cpu_model']}), {mem} GB RAM, kernel {m['kernel']}; "
            f"load average at start `{m['loadavg_start']}`, at end `{m.get('loadavg_end', '?')}`.",
            f"Versions: quiver {v['quiver']} ({v['git_commit'][:10]}), {v['redis']}, ghz {v['ghz']}, "
            f"{v['rustc']}, {v['go']}, Python {v['python']}.", ""]


def targets(res: dict[str, Any]) -> list[str]:
    return table(["issue", "target", "goal", "this run", "", "note"],
                 [[f"#{t['issue']}", t["what"], t["target"], value(t["value"]), met(t), t["note"]]
                  for t in res["targets"]])


def serve(res: dict[str, Any], title: str) -> list[str]:
    ql, rl = res["load_quiver"], res["load_redis"]
    sq, sp, mem = res["serve_quiver"], res["serve_quiver_pinned"], res["ratios"]["memory"]
    out = [f"### {title}", "",
           f"{res['users']:,} users; {res['seconds']:g} s measured after {res['warmup_s']:g} s warm-up per run, "
           f"median of {res['runs']} run(s); quiver `--workers {res['workers']} --cache-mb {res['cache_mb']}`; "
           f"result file `{res.get('file', '')}`.", ""]
    out += machine(res)
    hop = res["hop"]
    out += [f"Network hop for the status-quo Redis rows: **{hop['method']}** ({hop['detail']})"
            + (f"; netns+netem was not possible: `{hop['netns_failure']}`." if hop.get("netns_failure") else "."),
            "", "**Targets**", ""]
    out += targets(res)
    out += ["", "**Loading**", ""]
    out += table(["system", "wall s", "users/s", "MB/s (source Parquet)", "peak RSS MB", "size"], [
        ["quiver load", f(ql["wall_s"], 1), f(ql["users_per_s"]), f(ql["source_mb_per_s"], 1),
         f"{f(ql['peak_rss_mb'])} (PSS {f(ql['peak_pss_mb'])})",
         f"source Parquet {f(ql['source_mb'], 1)} MB; online {f(ql['online_mb'], 1)} MB "
         f"({f(ql['online_vs_source'], 2)}x); offline {f(ql['offline_mb'], 1)} MB ({f(ql['offline_vs_source'], 2)}x)"],
        ["Redis (redis-cli --pipe, 2 views at a time)", f(rl["load_s"], 1), f(rl["users_per_s"]), "–", "–",
         f"used_memory {f(rl['used_memory_mb'], 1)} MB, RSS {f(rl['used_memory_rss_mb'], 1)} MB, "
         f"{f(rl['bytes_per_user'])} B/user ({f(rl['keys'])} keys)"]])
    out += ["", "**Memory while serving**", ""]
    out += table(["", "RSS MB (sum of processes)", "PSS MB (shared pages split)", "note"], [
        [f"quiver, {sq['workers']} workers, peak under load", f(sq["under_load"]["peak_rss_mb"]),
         f(sq["under_load"]["peak_pss_mb"]), f"{sq['under_load']['processes']} processes; idle RSS "
         f"{f(sq['idle']['rss_mb'])} MB; online data on disk {f(sq['online_disk_mb'], 1)} MB"],
        ["quiver, 1 worker (pinned), peak under load", f(sp["under_load"]["peak_rss_mb"]),
         f(sp["under_load"]["peak_pss_mb"]), ""],
        ["Redis", f(mem["redis_rss_mb"]), "–", f"used_memory {f(mem['redis_used_memory_mb'])} MB"],
        ["ratio quiver / Redis used_memory", f(mem["quiver_rss_vs_redis_used_memory"], 3),
         f(mem["quiver_pss_vs_redis_used_memory"], 3), "target <= 0.10 (10M users)"]])
    out += ["", "**Latency** (ms; Rust generator: from each request's scheduled time; ghz: from the actual send, "
            "no p99.9)", ""]
    rows = []
    for r in res["rows"]:
        rate = "max" if r["rate"] is None else f(r["rate"])
        rows.append([r["label"], str(r["entities"]), rate, f(r["achieved_rate"]), ms(r["p50_us"]),
                     ms(r["p90_us"]), ms(r["p99_us"]), ms(r["p99_9_us"]), ms(r["max_us"]),
                     f"{r['errors']}" + (f" ({r['failed_runs']} failed runs)" if r["failed_runs"] else "")])
    out += table(["system, path (generator)", "entities", "rate/s", "achieved/s", "P50", "P90", "P99", "P99.9",
                  "max", "errors"], rows)
    out += ["", "**Sub-millisecond capacity** (highest swept rate with P99 <= 1 ms, no errors, rate achieved)", ""]
    out += table(["series", "req/s"], [[k.replace("|", " · "), f(v["rate"]) + (" (top of sweep)" if
                                        v["at_top_of_sweep"] else "")] for k, v in res["capacity"].items()])
    out += ["", "**quiver / Redis P99 at the same rate** (< 1: quiver faster)", ""]
    out += table(["entities", "rate/s", "quiver TCP", "quiver UDS", "Redis loopback", "Redis hop",
                  "TCP / hop", "UDS / hop", "TCP / loopback"],
                 [[str(p["entities"]), f(p["rate"]), ms(p["quiver_tcp_p99_us"]), ms(p["quiver_uds_p99_us"]),
                   ms(p["redis_loopback_p99_us"]), ms(p["redis_hop_p99_us"]), f(p["quiver_tcp_vs_redis_hop"], 2),
                   f(p["quiver_uds_vs_redis_hop"], 2), f(p["quiver_tcp_vs_redis_loopback"], 2)]
                  for p in res["ratios"]["p99"]])
    return out


def load(res: dict[str, Any], title: str) -> list[str]:
    out = [f"### {title}", "", f"`quiver load --workers {res['workers']} --no-reuse` into an empty root; "
           f"result file `{res.get('file', '')}`.", ""]
    out += machine(res)
    out += table(["users", "wall s", "users/s", "source MB", "MB/s", "peak RSS MB (tree)", "peak PSS MB",
                  "online MB (x source)", "offline MB (x source)"],
                 [[f(s["users"]), f(s["wall_s"], 1), f(s["users_per_s"]), f(s["source_mb"], 1),
                   f(s["source_mb_per_s"], 1), f(s["peak_rss_mb"]), f(s["peak_pss_mb"]),
                   f"{f(s['online_mb'], 1)} ({f(s['online_vs_source'], 2)}x)",
                   f"{f(s['offline_mb'], 1)} ({f(s['offline_vs_source'], 2)}x)"] for s in res["sizes"]])
    phased = [s for s in res["sizes"] if s.get("phases_s")]
    if phased:
        names = list(dict.fromkeys(n for s in phased for n in s["phases_s"]))
        out += ["", "Loader phases, seconds (from its log):", ""]
        out += table(["users", *names], [[f(s["users"]), *(f(s["phases_s"].get(n), 1) for n in names)]
                                          for s in phased])
    out += ["", "**Targets**", ""]
    out += targets(res)
    return out


def verify(res: dict[str, Any], title: str) -> list[str]:
    out = [f"### {title}", "", f"`quiver load --workers {res['workers']} --no-reuse` into an empty root, then "
           f"`quiver verify --workers {res['workers']}` of that version, one after the other in one run; "
           f"result file `{res.get('file', '')}`.", ""]
    out += machine(res)
    out += table(["users", "load wall s", "load CPU s", "verify wall s", "verify CPU s", "verify / load (wall)",
                  "verify / load (CPU)", "peak RSS MB load / verify"],
                 [[f(s["users"]), f(s["load"]["wall_s"], 1), f(s["load"]["cpu_s"], 1), f(s["verify"]["wall_s"], 1),
                   f(s["verify"]["cpu_s"], 1), f(s["verify_vs_load_wall"], 2), f(s["verify_vs_load_cpu"], 2),
                   f"{f(s['load']['peak_rss_mb'])} / {f(s['verify']['peak_rss_mb'])}"] for s in res["sizes"]])
    for s in res["sizes"]:
        c = s.get("changed_value")
        if c:
            out += ["", f"One offline value changed at {s['users']:,} users (view `{c['view']}`, key {c['key']}, "
                    f"feature `{c['feature']}`): {'found' if c['found'] else '**not found**'} in "
                    f"{c['wall_s']:.1f} s; verify reported:", "", *(f"    {line}" for line in c["reported"])]
    return out


def render(res: dict[str, Any], title: str, images: Sequence[Path] = ()) -> str:
    body = {"serve": serve, "load": load, "verify": verify}[res["kind"]](res, title)
    # charts sit beside the result JSON in bench/results/; the README that embeds them is bench/README.md
    body += ["", *(f"![{c.stem}](results/{c.name})" for c in images)] if images else []
    return "\n".join(body) + "\n"


# ---------------------------------------------------------------------------------------------
# Charts
# ---------------------------------------------------------------------------------------------

def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def p99_chart(res: dict[str, Any], path: Path) -> Path:
    """P99 against achieved request rate, one line per series, one panel per batch size (entities)."""
    plt = _pyplot()
    sizes = sorted({r["entities"] for r in res["rows"]})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6.5 * len(sizes), 4.8), squeeze=False)
    for ax, k in zip(axes[0], sizes, strict=True):
        series: dict[str, list[dict[str, Any]]] = {}
        for r in res["rows"]:
            if r["entities"] == k and r["p99_us"] is not None and r["achieved_rate"]:
                pinned = " pinned" if r["pinned"] and "pinned" not in r["label"] else ""
                series.setdefault(r["label"] + pinned, []).append(r)
        for label, rows in sorted(series.items()):
            paced = sorted((r for r in rows if r["rate"] is not None), key=lambda r: r["achieved_rate"])
            unpaced = [r for r in rows if r["rate"] is None]
            line = ax.plot([r["achieved_rate"] for r in paced], [r["p99_us"] / 1000 for r in paced],
                           marker="o", markersize=3, label=label) if paced else None
            if unpaced:
                color = line[0].get_color() if line else None
                ax.scatter([r["achieved_rate"] for r in unpaced], [r["p99_us"] / 1000 for r in unpaced],
                           marker="x", color=color, label=f"{label}, unpaced" if line else f"{label} (unpaced)")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("achieved request rate (req/s)")
        ax.set_ylabel("P99 latency (ms, log scale)")
        ax.set_title(f"{k} entit{'y' if k == 1 else 'ies'} per request")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{res['date']} {res['name']}: P99 against request rate ({res['users']:,} users)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def phases_chart(res: dict[str, Any], path: Path) -> Path | None:
    """The loader's phases, stacked, one bar per size; None when the result has no phases."""
    phased = [s for s in res["sizes"] if s.get("phases_s")]
    if not phased:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(n for s in phased for n in s["phases_s"]))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.9 * len(phased)))
    labels = [f"{s['users']:,} users" for s in phased]
    left = [0.0] * len(phased)
    for name in names:
        widths = [float(s["phases_s"].get(name) or 0) for s in phased]
        ax.barh(labels, widths, left=left, label=name)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, s in enumerate(phased):
        ax.text(left[i], i, f" {s['wall_s']:.1f} s wall", va="center", fontsize=8)
    ax.set_xlabel("seconds, from the loader's log (wall time also counts start-up and publishing)")
    ax.set_xlim(0, max(max(left), max(s["wall_s"] for s in phased)) * 1.25)
    ax.legend(fontsize=8, ncols=len(names), loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(phased) < 3
                                                                                    else -0.2))
    ax.set_title(f"{res['date']} {res['name']}: loader phases ({res['workers']} workers)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def charts(res: dict[str, Any], results: Path) -> list[Path]:
    """Draws the result's charts beside its JSON; returns their paths."""
    if res["kind"] == "serve":
        return [p99_chart(res, results.with_name(f"{results.stem}-p99.png"))]
    drawn = phases_chart(res, results.with_name(f"{results.stem}-phases.png"))
    return [drawn] if drawn else []


def splice(readme: Path, kind: str, body: str) -> None:
    start, end = MARKERS[kind]
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: markers {start} ... {end} missing")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{body}{end}{tail}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results")
    p.add_argument("--readme")
    p.add_argument("--title", default="")
    a = p.parse_args()
    res = json.loads(Path(a.results).read_text())
    res["file"] = str(Path(a.results).name)
    title = a.title or f"{res['date']} {res['name'] or res['kind']}"
    body = render(res, title, charts(res, Path(a.results)))
    if a.readme:
        splice(Path(a.readme), res["kind"], body)
    else:
        sys.stdout.write(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
