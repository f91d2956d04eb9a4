"""asyncbridge's benchmarks: ``python -m benchmarks`` (see ``__main__.py``).

Every figure is reported as a ratio to a stdlib floor measured in the same run (absolute times
swing several-fold between runs on shared machines; ratios hold). The default run (about 3 minutes
on 2 cores) measures every family's headline groups with fewer rounds and smaller blocks;
``--full`` every group with the most rounds (about 10 minutes); ``--quick`` is the smoke run (see
``_harness.Config``). Families:

- ``hop-latency``: ``await ab.run_in_thread(noop)`` vs ``asyncio.to_thread`` and peers, and vs
  the raw two-wake-up round trip of a bare thread (the physical limit of a thread hop).
- ``hop-throughput``: 10,000 of them under one ``asyncio.gather``.
- ``sync-to-coro``: ``ab.spawn(coro()).get()`` from a plain thread vs ``run_coroutine_threadsafe``.
- ``cf-await``: awaiting wrapped ``cf.Future``s, done handles and tasks vs ``asyncio.wrap_future``.
- ``memory``: creation time and bytes per pending object vs ``cf.Future`` + ``asyncio.Future``;
  and what wrapping an existing pending ``cf.Future`` alone costs, in time and bytes.
- ``process-hop``: ``await ab.run_in_process(noop)``, singly and 2,000 at once, vs a raw
  ``ProcessPoolExecutor`` through ``asyncio.wrap_future``; pebble and loky beside it.
- ``cancel-latency``: ``cancel()`` on running process and thread work until REVOKED.
- ``compose``: ``ab.gather`` / ``ab.as_completed`` over 1,000 and 10,000 handles (and 100,000 in
  the full run) vs ``asyncio.gather`` and ``concurrent.futures.as_completed``.
- ``celery``: with a real Redis server and prefork worker it starts itself, one awaited round trip
  vs Celery's ``r.get()``, and 1,000 concurrently awaited results (time and threads) vs
  ``asyncio.to_thread(r.get)`` and a sync loop.
- ``dask``: with an in-process ``distributed.LocalCluster`` it starts itself, one awaited round trip
  vs ``await future``, and 1,000 concurrently awaited futures (time and threads) vs
  ``client.gather``, on the loop and from a thread.
- ``store``: the result store across processes (a helper process it starts, a SQLite file, a
  Redis server it starts): write a result and read it by id elsewhere vs Celery's SQLAlchemy and
  Redis backends, the wake-up of a waiter in another process, and the CPU of an idle waiter.
"""
