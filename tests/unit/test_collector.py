"""The cyclic collector is paused while any thread does bulk work, and restored after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from rewards.collector import collector_paused


@pytest.fixture(autouse=True)
def collector_enabled() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()  # a test below disables it
    else:
        gc.disable()


def test_paused_inside_and_running_again_after() -> None:
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError), collector_paused():
        raise RuntimeError("bulk work failed")
    assert gc.isenabled()


def test_stays_paused_until_the_last_thread_leaves() -> None:
    first_inside = threading.Event()
    let_first_leave = threading.Event()

    def first() -> None:
        with collector_paused():
            first_inside.set()
            let_first_leave.wait(5)

    worker = threading.Thread(target=first)
    worker.start()
    assert first_inside.wait(5)
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still inside
    let_first_leave.set()
    worker.join(5)
    assert gc.isenabled()


def test_a_collector_disabled_before_stays_disabled() -> None:
    gc.disable()
    with collector_paused():
        pass
    assert not gc.isenabled()
