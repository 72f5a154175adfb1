"""Batches of work on a few workers, each batch in a transaction of its own.

For a large sync on PostgreSQL a batch is about half database time (reading the
ledger, writing lots and their indexes) and half Python time (the replay). The sync
runs its batches in worker processes (:func:`worker_processes`), so the Python half
of one batch runs beside another's, each on a core of its own; threads share one
interpreter lock, and the Python halves of two batches queue for it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import (
    FIRST_COMPLETED,
    Executor,
    Future,
    ProcessPoolExecutor,
    wait,
)
from typing import Any, TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def worker_processes(
    processes: int, initializer: Callable[..., None], initargs: tuple[Any, ...]
) -> ProcessPoolExecutor:
    """``processes`` fresh interpreters, each set up by ``initializer(*initargs)``.

    Started with ``spawn``, never ``fork``: the caller may be a server with threads and
    open connections, which a forked child would inherit half-way through their use.
    """
    return ProcessPoolExecutor(
        max_workers=processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=initializer,
        initargs=initargs,
    )


def run_in_pool(
    pool: Executor,
    batches: Iterator[Batch],
    work: Callable[[Batch], Result],
    done: Callable[[Result], None],
    *,
    at_once: int,
) -> None:
    """``work`` each batch on ``pool``, ``at_once`` at a time; ``done`` with each result, in
    this thread, as they finish.

    At most ``at_once`` batches are in flight (memory stays bounded), and ``batches``
    is asked for the next one only when there is room. If a batch or ``done`` raises,
    no more batches start; those in flight finish first, then the error is raised.
    """
    in_flight: set[Future[Result]] = set()
    try:
        for batch in batches:
            in_flight.add(pool.submit(work, batch))
            while len(in_flight) >= at_once:
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
