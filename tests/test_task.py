"""@task: the one door for per-call options (engine, time limit, retries), with one handle."""
# mypy: disable-error-code="comparison-overlap,unreachable,func-returns-value"
# (tests read h.state again after the handle moved on, which mypy narrows to the first value read)

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import pathlib
import threading
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import workers

import asyncbridge as ab


@ab.task
def add(a: int, b: int = 0) -> int:
    """Add two numbers."""
    return a + b


@ab.task
async def add_later(a: int, b: int) -> int:
    await anyio.lowlevel.checkpoint()
    return a + b


def test_a_task_still_calls_inline_and_keeps_its_identity() -> None:
    assert add(2, b=3) == 5
    assert add.__name__ == "add" and add.__doc__ == "Add two numbers."
    assert isinstance(add, ab.Task) and add.engine == "auto"
    assert "engine=auto" in repr(add)


def test_delay_runs_on_a_thread_and_returns_one_handle() -> None:
    h = add.delay(2, b=40)
    assert h.get(10) == 42
    assert h.state is ab.State.SUCCESS and h.attempts == 1
    assert repr(h).endswith("SUCCESS thread add()>")


def test_an_async_task_gives_its_coroutine_inline_and_spawns_on_delay() -> None:
    coro = add_later(1, 2)
    assert asyncio.run(coro) == 3
    assert isinstance(add_later, ab.AsyncTask)
    assert add_later.delay(20, 22).get(10) == 42  # from sync code: the background loop


@pytest.mark.anyio
async def test_await_task_handles_on_both_backends() -> None:
    assert await add.delay(1, 1) == 2
    assert await add_later.delay(2, 2) == 4


def test_process_engine_runs_in_a_worker_process() -> None:
    h = workers.process_square.delay(9)
    assert h.get(60) == 81
    assert repr(h).endswith("SUCCESS process process_square()>")


def test_an_ad_hoc_task_on_the_process_engine() -> None:
    crunch = ab.task(engine="process")(workers.square)
    assert crunch.delay(12).get(60) == 144


def test_a_local_function_on_the_process_engine_fails_at_the_call() -> None:
    def local(x: int) -> int:
        return x

    with pytest.raises(TypeError, match="cannot send the function"):
        ab.task(engine="process")(local).delay(1)


def test_an_unpicklable_argument_on_the_process_engine_fails_at_the_call() -> None:
    with pytest.raises(TypeError, match="cannot send argument 0"):
        workers.process_square.delay(threading.Lock())  # type: ignore[arg-type]


def test_an_executor_engine() -> None:
    with cf.ThreadPoolExecutor(1, thread_name_prefix="test-exec") as pool:
        on_pool = ab.task(engine=pool)(lambda: threading.current_thread().name)
        assert on_pool.delay().get(10).startswith("test-exec")


def test_an_asyncbridge_process_pool_engine_keeps_time_limits() -> None:
    pool = ab.ProcessPool(1)
    try:
        limited = ab.task(engine=pool, timeout=0.2)(workers.sleeps_forever)
        exc = limited.delay().exception(60)
        assert isinstance(exc, ab.TimeLimitExceeded) and isinstance(exc, TimeoutError)
        assert pool.submit(workers.square, 3).get(60) == 9
    finally:
        pool.shutdown()


# -- time limits ---------------------------------------------------------------------------------


def test_thread_work_past_its_time_limit_stops_at_a_checkpoint() -> None:
    h = ab.task(timeout=0.05)(workers.checks_forever).delay()
    exc = h.exception(30)
    assert isinstance(exc, ab.TimeLimitExceeded)
    assert "exceeded its time limit of 0.05 s" in str(exc)
    assert h.state is ab.State.FAILURE


def test_process_work_past_its_time_limit_is_terminated() -> None:
    h = workers.process_sleeps_past_its_limit.delay()
    assert isinstance(h.exception(60), ab.TimeLimitExceeded)
    assert workers.process_square.delay(4).get(60) == 16  # the pool replaced the worker


def test_a_coroutine_past_its_time_limit_is_cancelled() -> None:
    h = ab.spawn(asyncio.sleep(60), timeout=0.05)
    exc = h.exception(30)
    assert isinstance(exc, ab.TimeLimitExceeded) and h.state is ab.State.FAILURE


@pytest.mark.anyio
async def test_a_coroutine_time_limit_on_both_backends() -> None:
    h = ab.spawn(anyio.sleep_forever(), timeout=0.05)
    with pytest.raises(ab.TimeLimitExceeded):
        await h


def test_get_timeout_is_not_a_time_limit() -> None:
    gate = threading.Event()
    h = add.delay(1)
    with pytest.raises(TimeoutError) as info:
        ab.run_in_thread(gate.wait, 10).get(timeout=0.01)
    assert not isinstance(info.value, ab.TimeLimitExceeded)
    gate.set()
    assert h.get(10) == 1


# -- retries -------------------------------------------------------------------------------------


def test_retry_keeps_one_handle_and_counts_attempts(tmp_path: pathlib.Path) -> None:
    flaky = ab.task(retry=ab.Retry(attempts=3))(workers.fail_times)
    h = flaky.delay(str(tmp_path / "count"), 2)
    ident = h.id
    assert h.get(30) == "succeeded on attempt 3"
    assert h.attempts == 3 and h.id == ident


def test_retry_ends_with_the_last_error_when_attempts_run_out(tmp_path: pathlib.Path) -> None:
    flaky = ab.task(retry=ab.Retry(attempts=2))(workers.fail_times)
    h = flaky.delay(str(tmp_path / "count"), 5)
    with pytest.raises(ValueError, match="attempt 2 failed"):
        h.get(30)
    assert h.attempts == 2 and h.state is ab.State.FAILURE
    assert "fail_times" in (h.traceback or "")


def test_retry_only_on_the_named_exceptions(tmp_path: pathlib.Path) -> None:
    flaky = ab.task(retry=ab.Retry(attempts=3, on=KeyError))(workers.fail_times)
    h = flaky.delay(str(tmp_path / "count"), 1)
    with pytest.raises(ValueError, match="attempt 1 failed"):
        h.get(30)
    assert h.attempts == 1


def test_retry_on_the_process_engine(tmp_path: pathlib.Path) -> None:
    flaky = ab.task(engine="process", retry=ab.Retry(attempts=3))(workers.fail_times)
    h = flaky.delay(str(tmp_path / "count"), 2)
    assert h.get(60) == "succeeded on attempt 3" and h.attempts == 3


def test_the_handle_shows_retry_between_attempts_and_cancel_drops_the_retry(tmp_path: pathlib.Path) -> None:
    flaky = ab.task(retry=ab.Retry(attempts=3, backoff=60))(workers.fail_times)
    h = flaky.delay(str(tmp_path / "count"), 5)
    seen: list[Any] = []
    retried = threading.Event()
    h._watch(lambda _h, st, info: (seen.append((st, info)), retried.set()) if st is ab.State.RETRY else None)
    # the first attempt may already have failed before the watcher was in place
    assert retried.wait(10) or h.state is ab.State.RETRY
    assert h.state is ab.State.RETRY
    assert isinstance(h.info, ValueError) and "attempt 1 failed" in str(h.info)
    assert h.cancel()
    assert h.state is ab.State.REVOKED  # nothing runs while waiting to retry: revoked at once
    assert h.attempts == 1


def test_retry_backoff_doubles() -> None:
    policy = ab.Retry(attempts=4, backoff=0.5)
    assert [policy.delay_before(n) for n in (2, 3, 4)] == [0.5, 1.0, 2.0]


@pytest.mark.anyio
async def test_an_async_task_retries(tmp_path: pathlib.Path) -> None:
    calls: list[int] = []

    async def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ValueError("not yet")
        return len(calls)

    h = ab.task(retry=ab.Retry(attempts=3))(flaky).delay()
    assert await h == 3 and h.attempts == 3


# -- cancellation --------------------------------------------------------------------------------


def test_cancel_reaches_the_running_attempt() -> None:
    started = threading.Event()

    def work() -> None:
        started.set()
        workers.checks_forever()

    h = ab.task(retry=ab.Retry(attempts=5))(work).delay()
    assert started.wait(30)
    assert h.cancel()
    with pytest.raises(cf.CancelledError):
        h.get(30)
    assert h.state is ab.State.REVOKED and h.attempts == 1  # a cancelled attempt is not retried


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"engine": "gpu"}, ValueError, "engine must be 'auto', 'thread', 'process'"),
        ({"timeout": -1}, ValueError, "timeout must be a number of seconds > 0"),
        ({"timeout": "5"}, TypeError, "timeout must be a number of seconds or None, not str"),
        ({"retry": 3}, TypeError, "retry must be an asyncbridge.Retry"),
        ({"name": ""}, TypeError, "name must be a non-empty str"),
        ({"name": b"x"}, TypeError, "name must be a non-empty str"),
    ],
)
def test_bad_options_are_clear_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ab.task(**kwargs)


def test_a_timeout_on_an_executor_that_cannot_stop_work_is_refused() -> None:
    with cf.ThreadPoolExecutor(1) as pool, pytest.raises(ValueError, match="cannot"):
        ab.task(engine=pool, timeout=1)


def test_an_async_function_on_a_thread_engine_is_refused() -> None:
    async def job() -> None:
        pass

    with pytest.raises(TypeError, match="is an async function"):
        ab.task(engine="thread")(job)


def test_task_needs_a_function() -> None:
    with pytest.raises(TypeError, match="task\\(\\) needs a function, not int"):
        ab.task(3)  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"attempts": 0}, r"Retry\(attempts=\) must be an int >= 1, not 0"),
        ({"backoff": -1}, r"Retry\(backoff=\) must be a number of seconds >= 0"),
        ({"on": int}, r"Retry\(on=\) must be an exception class"),
        ({"on": ()}, r"Retry\(on=\) must be an exception class"),
    ],
)
def test_bad_retry_policies_are_clear_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        ab.Retry(**kwargs)


# -- names, and Celery's calling shapes on local engines -----------------------------------------


def test_a_task_is_named_by_its_module_and_qualified_name_or_by_name() -> None:
    assert add.name == f"{add.__module__}.add"
    named = ab.task(engine="thread", name="nightly report")(workers.square)
    assert named.name == "nightly report" and named.__name__ == "square"
    h = named.delay(3)
    assert h.get(10) == 9
    assert repr(h).endswith("SUCCESS thread nightly report()>")  # the name labels its handles


def test_apply_async_on_a_local_engine_is_delay() -> None:
    assert add.apply_async((1,), {"b": 2}).get(10) == 3
    assert add.apply_async(kwargs={"a": 4}).get(10) == 4


def test_celery_only_shapes_on_a_local_engine_are_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"countdown=.*needs a Celery engine"):
        add.apply_async((1, 2), countdown=1)
    with pytest.raises(TypeError, match=r"is not a Celery task: .* need a Celery engine"):
        add.s(1, 2)
    with pytest.raises(TypeError, match="is not a Celery task"):
        add.si(1, 2)
    with pytest.raises(TypeError, match="is not a Celery task"):
        _ = add.celery_task
