"""``python -m benchmarks [--full | --quick] [--only FAMILY ...] [--out DIR]``.

Runs the families, shows progress, prints a table of medians and ratios per group, and writes
``results.json`` and ``results.png`` to ``DIR`` (default ``benchmarks/results``). Exits 1 if a
floor or an asyncbridge candidate failed (a peer that fails is reported and does not count).

Three sizes of run (``_harness.Config``), each with the same method: the default, about 3 minutes
on 2 cores (every family and its headline groups, fewer rounds and smaller blocks); ``--full``,
about 10 minutes (every group, the most rounds: the figures the README quotes); ``--quick``, a smoke
run of about a minute. The plan (families, groups, estimated time) is printed first.
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
from ._harness import (
    DEFAULT,
    FULL,
    QUICK,
    Config,
    Family,
    GroupResult,
    blocks_in,
    environment,
    run_group,
)

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
    description = (
        f"{__doc__.split(chr(10) * 2)[1]} Without --full or --quick: the default run ({_about(DEFAULT)})."
    )
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--full",
        action="store_const",
        const=FULL,
        dest="config",
        help=f"every group with the most rounds: the figures the README quotes ({_about(FULL)})",
    )
    size.add_argument(
        "--quick",
        action="store_const",
        const=QUICK,
        dest="config",
        help=f"a smoke run: few rounds, small blocks ({_about(QUICK)})",
    )
    p.set_defaults(config=DEFAULT)
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
        help=(
            "dump every thread's stack and exit 1 after this many seconds (default "
            f"{DEFAULT.hang_timeout:.0f}, full {FULL.hang_timeout:.0f}, quick {QUICK.hang_timeout:.0f})"
        ),
    )
    return p.parse_args(argv)


def _about(cfg: Config) -> str:
    """ "~N min on 2 cores", for every family run with ``cfg``."""
    _, seconds = _estimate(list(FAMILIES.values()), cfg)
    return "" if seconds is None else f"~{_duration(seconds)} on 2 cores"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _estimate(families: list[Family], cfg: Config) -> tuple[int, float | None]:
    """Groups, and estimated seconds (None if a family has no estimate for ``cfg``)."""
    groups = sum(f.estimate.groups_in(cfg) for f in families)
    seconds = [f.estimate.seconds_in(cfg) for f in families]
    return groups, None if None in seconds else sum(s or 0.0 for s in seconds)


def plan(console: Console, families: list[Family], cfg: Config) -> None:
    """Say what will run, and about how long it takes, before it starts."""
    groups, seconds = _estimate(families, cfg)
    about = f", about {_duration(seconds)} on 2 cores" if seconds is not None else ""
    console.print(
        f"[bold]{cfg.name} run[/bold]: {len(families)} famil{'y' if len(families) == 1 else 'ies'}, "
        f"{groups} groups{about} ({cfg.about})"
    )
    for fam in families:
        n = fam.estimate.groups_in(cfg)
        s = fam.estimate.seconds_in(cfg)
        extra = fam.estimate.groups - n
        more = f", {extra} more with --full" if extra else ""
        console.print(
            f"  {fam.key:<15} {n} group{'' if n == 1 else 's'}{more}"
            + (f", ~{_duration(s)}" if s is not None else "")
        )
    others = [c for c in (FULL, DEFAULT, QUICK) if c is not cfg]
    hints = []
    for other in others:
        g, s = _estimate(families, other)
        flag = "no flag" if other is DEFAULT else f"--{other.name}"
        took = f", ~{_duration(s)}" if s is not None else ""
        hints.append(f"{flag} for the {other.name} run ({g} groups{took})")
    console.print(f"  [dim]{'; '.join(hints)}; --only FAMILY ... for some families[/dim]")


def main(argv: list[str]) -> int:
    args = parse(argv)
    cfg: Config = args.config
    faulthandler.dump_traceback_later(args.hang_timeout or cfg.hang_timeout, exit=True)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    console = Console(width=None if sys.stdout.isatty() else 150)
    families = [FAMILIES[k] for k in FAMILIES if not args.only or k in args.only]
    plan(console, families, cfg)
    started = time.time()
    results: list[GroupResult] = []
    family_seconds: dict[str, float] = {}
    left_out: list[str] = []  # the full-only groups this config does not run
    stale: list[str] = []  # families whose Estimate no longer matches what they make
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        for fam in families:
            fam_started = time.perf_counter()
            with ExitStack() as stack:
                groups = []
                built = fam.build(cfg, stack)
                if built and len(built) != fam.estimate.groups:
                    stale.append(
                        f"{fam.key} made {len(built)} groups, its Estimate says {fam.estimate.groups}"
                    )
                for g in built:
                    if g.full_only and not cfg.full_groups:
                        left_out.append(f"{fam.key}: {g.title}")
                    else:
                        groups.append(g)
                # one task per group, all shown from the start: the family's remaining work is in view
                tasks = [progress.add_task(f"{fam.key}: {g.title}", total=blocks_in(g)) for g in groups]
                for g, task in zip(groups, tasks, strict=True):
                    results.append(run_group(fam.key, g, rng, partial(progress.advance, task)))
            family_seconds[fam.key] = round(time.perf_counter() - fam_started, 1)
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
        "family_seconds": family_seconds,
        "full_only_left_out": left_out,
        "environment": environment(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_json(args.out / "results.json", meta, results)
    _report.write_plot(args.out / "results.png", meta, results)
    env = meta["environment"]
    _, estimated = _estimate(families, cfg)
    against = f" (estimated {estimated:.0f} s)" if estimated is not None else ""
    console.print(
        f"Python {sys.version.split()[0]}, {env['cpu_count']} CPUs, seed {seed}, {cfg.name} run, "
        f"{meta['seconds']} s{against}; wrote {args.out / 'results.json'} and {args.out / 'results.png'}"
    )
    if left_out:
        console.print(f"[dim]Not run ({len(left_out)} groups of the full run only): --full runs them.[/dim]")
    for line in stale:
        console.print(f"[yellow]Update the plan:[/yellow] {line} (see _harness.Estimate)")

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
