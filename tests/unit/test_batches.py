"""Batches on a few workers: every result comes back, few at a time, errors after the rest;
worker processes set up once each, apart from this one."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from rewards.ledger.batches import run_in_pool, worker_processes


def run_in_threads(
    batches: Iterator[Any], work: Callable[[Any], Any], done: Callable[[Any], None], threads: int
) -> None:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        run_in_pool(pool, batches, work, done, at_once=threads)


def test_every_batch_is_done_once_and_its_result_handed_back() -> None:
    results: list[int] = []
    run_in_threads(iter(range(20)), lambda n: n * n, results.append, threads=3)
    assert sorted(results) == [n * n for n in range(20)]


def test_no_more_batches_are_in_flight_than_threads() -> None:
    lock = threading.Lock()
    running = 0
    most = 0

    def work(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.01)
        with lock:
            running -= 1
        return n

    run_in_threads(iter(range(12)), work, lambda _: None, threads=2)
    assert most == 2


def test_batches_are_asked_for_only_when_there_is_room() -> None:
    handed_out: list[int] = []

    def batches() -> Iterator[int]:
        for n in range(6):
            handed_out.append(n)
            yield n

    seen: list[int] = []

    def done(n: int) -> None:
        # When a result comes back, at most one batch beyond it has been started.
        assert len(handed_out) <= len(seen) + 2
        seen.append(n)

    run_in_threads(batches(), lambda n: n, done, threads=2)
    assert sorted(seen) == list(range(6))


def test_a_failing_batch_stops_the_rest_after_those_in_flight_finish() -> None:
    finished: list[int] = []

    def work(n: int) -> int:
        if n == 3:
            raise ValueError("batch 3")
        time.sleep(0.01)
        finished.append(n)
        return n

    with pytest.raises(ValueError, match="batch 3"):
        run_in_threads(iter(range(100)), work, lambda _: None, threads=2)
    assert len(finished) < 10  # stopped early, not after all hundred


_greeting = ""


def _set_up(greeting: str) -> None:
    global _greeting
    _greeting = greeting


def _greet(n: int) -> tuple[str, int, int]:
    return _greeting, n, os.getpid()


def test_worker_processes_are_set_up_once_and_run_apart_from_this_one() -> None:
    results: list[tuple[str, int, int]] = []
    with worker_processes(2, _set_up, ("hello",)) as pool:
        run_in_pool(pool, iter(range(8)), _greet, results.append, at_once=2)
    assert sorted(n for _, n, _ in results) == list(range(8))
    assert {greeting for greeting, _, _ in results} == {"hello"}
    pids = {pid for _, _, pid in results}
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def _fail_on_three(n: int) -> int:
    if n == 3:
        raise ValueError("batch 3")
    return n


def test_an_error_in_a_worker_process_reaches_the_caller() -> None:
    with (
        worker_processes(2, _set_up, ("hello",)) as pool,
        pytest.raises(ValueError, match="batch 3"),
    ):
        run_in_pool(pool, iter(range(6)), _fail_on_three, lambda _: None, at_once=2)
