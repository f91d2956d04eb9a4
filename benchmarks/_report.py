"""Presenting results: the terminal table, ``results.json`` and ``results.png``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from pathlib import Path

    from ._harness import GroupResult

ROLE_ORDER = {"floor": 0, "asyncbridge": 1, "stdlib": 2, "peer": 3}
ROLE_COLOUR = {"floor": "#7f7f7f", "asyncbridge": "#1f77b4", "stdlib": "#bcbd22", "peer": "#ff7f0e"}


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "B":
        return f"{value:,.0f} B"
    if value < 1e-6:
        return f"{value * 1e9:.0f} ns"
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    return f"{value * 1e3:.2f} ms"


def _ordered(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(summaries, key=lambda s: ROLE_ORDER[s["role"]])


def table(result: GroupResult) -> Table:
    g = result.group
    # Texts go in escaped: rich would take "asyncbridge[celery]" in a reason for a markup tag.
    caption = f"{g.rounds} rounds x {g.ops:,} {'objects' if g.kind == 'memory' else 'ops'}"
    if g.note:
        caption += f"; {g.note}"
    t = Table(title=escape(f"{result.family}: {g.title}"), caption=escape(caption), title_justify="left")
    t.add_column("candidate")
    t.add_column("median", justify="right")
    t.add_column("p90", justify="right")
    t.add_column("ratio", justify="right")
    t.add_column("block medians min-max", justify="right")
    t.add_column("note")
    for s in _ordered(result.summaries()):
        name = escape(s["name"])
        if s["role"] == "asyncbridge":
            name = f"[bold]{name}[/bold]"
        if s["status"] != "ok":
            why = escape(f"{s['status']}: {s.get('reason', '')}")
            t.add_row(name, "", "", "", "", f"[dim]{why}[/dim]")
            continue
        ratio = s["ratio"]
        ratio_text = ("-" if g.floor else "n/a") if ratio is None else f"{ratio:.2f}x"
        if s["role"] == "floor":
            ratio_text += " (floor)"
        t.add_row(
            name,
            fmt(s["median"], g.unit),
            fmt(s["p90"], g.unit),
            ratio_text,
            f"{fmt(s['block_median_min'], g.unit)} - {fmt(s['block_median_max'], g.unit)}",
            escape(s.get("note", "")),
        )
    return t


def write_json(path: Path, meta: dict[str, Any], results: list[GroupResult]) -> None:
    doc = {"meta": meta, "groups": [r.to_json() for r in results]}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def write_plot(path: Path, meta: dict[str, Any], results: list[GroupResult]) -> None:
    """One horizontal bar chart of ratios per group (each against its own floor, drawn at 1.0)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = []
    for r in results:
        ok = [s for s in _ordered(r.summaries()) if s["status"] == "ok" and s.get("ratio") is not None]
        if ok:
            rows.append((r, ok))
    if not rows:
        return
    heights = [0.9 + 0.32 * len(ok) for _, ok in rows]
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(10, sum(heights) + 0.8), gridspec_kw={"height_ratios": heights}, squeeze=False
    )
    for ax, (r, ok) in zip(axes[:, 0], rows, strict=True):
        names = [s["name"] for s in ok][::-1]
        ratios = [s["ratio"] for s in ok][::-1]
        colours = [ROLE_COLOUR[s["role"]] for s in ok][::-1]
        ax.barh(names, ratios, color=colours)
        ax.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
        if max(ratios) / min(ratios) > 20:
            ax.set_xscale("log")
        for y, v in enumerate(ratios):
            ax.annotate(f" {v:.2f}x", (v, y), va="center", fontsize=8)
        floor_median = r.floor_median
        ax.set_title(
            f"{r.family}: {r.group.title} (floor = {fmt(floor_median, r.group.unit)})", fontsize=9, loc="left"
        )
        ax.tick_params(axis="y", labelsize=8)
        ax.tick_params(axis="x", labelsize=8)
        ax.margins(x=0.15)
    axes[-1, 0].set_xlabel("ratio to the stdlib floor's median (lower is better)")
    fig.suptitle(
        f"asyncbridge benchmarks: Python {meta['environment']['python'].split()[0]}, "
        f"{meta['environment']['cpu_count']} CPUs, {meta['config']['name']} run",
        fontsize=10,
        x=0.02,
        ha="left",
    )
    handles = [Patch(color=c, label=role) for role, c in ROLE_COLOUR.items()]
    fig.legend(handles=handles, loc="upper right", ncols=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / fig.get_figheight()))
    fig.savefig(path, dpi=110)
    plt.close(fig)
