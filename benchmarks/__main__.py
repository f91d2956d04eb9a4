"""``python -m benchmarks [--quick] [--only FAMILY ...] [--out DIR]``.

Runs the families, shows progress, prints a table of medians and ratios per group, and writes
``results.json`` and ``results.png`` to ``DIR`` (default ``benchmarks/results``). Exits 1 if a
floor or an asyncbridge candidate failed (a peer that fails is reported and does not count).
"""

from __future__ import annotations

import argparse
import datetime
import faulthandler
import random
import sys
import time
from contextlib import ExitStack
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import (
    _report,
    cancel_latency,
    celery_results,
    cf_await,
    compose,
    create_memory,
    dask_results,
    hop_latency,
    hop_throughput,
    process_hop,
    store_results,
    sync_to_coro,
)
from ._harness import FULL, QUICK, Family, GroupResult, blocks_in, environment, run_group

FAMILIES: dict[str, Family] = {
    m.FAMILY.key: m.FAMILY
    for m in (
        hop_latency,
        hop_throughput,
        sync_to_coro,
        cf_await,
        create_memory,
        process_hop,
        cancel_latency,
        compose,
        celery_results,
        dask_results,
        store_results,
    )
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="a smoke run: few rounds, small blocks (~30 s)")
    p.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=list(FAMILIES),
        metavar="FAMILY",
        help=f"run only these families: {', '.join(FAMILIES)}",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results", help="output dir")
    p.add_argument("--seed", type=int, default=None, help="seed of the round shuffles (default: random)")
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=None,
        help="dump every thread's stack and exit 1 after this many seconds (default 900, quick 120)",
    )
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    cfg = QUICK if args.quick else FULL
    faulthandler.dump_traceback_later(args.hang_timeout or (120 if args.quick else 900), exit=True)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    console = Console(width=None if sys.stdout.isatty() else 150)
    families = [FAMILIES[k] for k in FAMILIES if not args.only or k in args.only]
    started = time.time()
    results: list[GroupResult] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        for fam in families:
            with ExitStack() as stack:
                groups = fam.build(cfg, stack)
                for g in groups:
                    task = progress.add_task(f"{fam.key}: {g.title}", total=blocks_in(g))
                    results.append(run_group(fam.key, g, rng, partial(progress.advance, task)))
    faulthandler.cancel_dump_traceback_later()

    for r in results:
        console.print(_report.table(r))
        console.print()
    for fam in families:
        extra = fam.summary([r for r in results if r.family == fam.key]) if fam.summary else None
        if extra is not None:
            console.print(extra)
            console.print()

    meta: dict[str, Any] = {
        "started": datetime.datetime.fromtimestamp(started, datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1),
        "seed": seed,
        "config": asdict(cfg),
        "families": [f.key for f in families],
        "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(args.out / "results.json", meta, results)
    _report.write_plot(args.out / "results.png", meta, results)
    env = meta["environment"]
    console.print(
        f"Python {sys.version.split()[0]}, {env['cpu_count']} CPUs, seed {seed}, {meta['seconds']} s; "
        f"wrote {args.out / 'results.json'} and {args.out / 'results.png'}"
    )

    failed = [
        f"{r.family}: {c.name}: {c.reason}"
        for r in results
        for c in r.results
        if c.status == "error" and c.role in ("floor", "asyncbridge")
    ]
    for line in failed:
        console.print(f"[red]FAILED[/red] {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
