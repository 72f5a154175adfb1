"""Batches of work on a few threads, each batch in a transaction of its own.

For a large sync on PostgreSQL: a batch is about half database time (reading the
ledger, writing lots and their indexes), during which its thread waits and releases
the interpreter lock, and half Python time (the replay). Two threads overlap one's
database time with the other's Python time, in one process's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def run_in_threads(
    batches: Iterator[Batch],
    work: Callable[[Batch], Result],
    done: Callable[[Result], None],
    *,
    threads: int,
) -> None:
    """``work`` each batch, ``threads`` at a time; ``done`` with each result, in this thread,
    as they finish.

    At most ``threads`` batches are in flight (memory stays bounded), and ``batches``
    is asked for the next one only when there is room. If a batch or ``done`` raises,
    no more batches start; those in flight finish first, then the error is raised.
    """
    in_flight: set[Future[Result]] = set()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="batch") as pool:
        try:
            for batch in batches:
                in_flight.add(pool.submit(work, batch))
                while len(in_flight) >= threads:
                    in_flight = _finish_one(in_flight, done)
            while in_flight:
                in_flight = _finish_one(in_flight, done)
        except BaseException:
            wait(in_flight)
            raise


def _finish_one(
    in_flight: set[Future[Result]], done: Callable[[Result], None]
) -> set[Future[Result]]:
    finished, pending = wait(in_flight, return_when=FIRST_COMPLETED)
    for future in finished:
        done(future.result())
    return pending
