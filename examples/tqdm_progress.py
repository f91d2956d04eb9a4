"""A tqdm progress bar driven by asyncbridge progress reports, from a worker process.

    pip install asyncbridge tqdm
    python examples/tqdm_progress.py

The work reports with ``asyncbridge.report_progress(done=..., total=...)``; the caller reads the
reports with ``async for meta in handle.progress()`` and moves the bar. A slow reader skips
intermediate reports but always sees the latest, so the bar never lags behind the work.
"""

from __future__ import annotations

import asyncio
import hashlib

from tqdm import tqdm

import asyncbridge as ab


def crunch(blocks: int) -> str:
    digest = hashlib.sha256()
    for i in range(blocks):
        ab.checkpoint()  # stop promptly if the caller cancels
        digest.update(i.to_bytes(8, "little") * 50_000)
        ab.report_progress(done=i + 1, total=blocks)
    return digest.hexdigest()


async def main() -> None:
    h = ab.run_in_process(crunch, 200)
    with tqdm(total=200, unit="block") as bar:
        async for meta in h.progress():
            bar.update(meta["done"] - bar.n)
    print("sha256:", await h)


if __name__ == "__main__":
    asyncio.run(main())
