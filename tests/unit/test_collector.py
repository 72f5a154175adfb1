"""The cyclic collector is paused while any thread does bulk work, and restored after."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from rewards.collector import collector_paused, freeze_startup_objects


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


def test_objects_made_at_start_up_are_left_out_of_later_collections() -> None:
    class Made:
        pass

    at_start_up = Made()
    assert any(o is at_start_up for o in gc.get_objects())  # walked by every full pass
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(at_start_up)
        assert not any(o is at_start_up for o in gc.get_objects())  # no longer walked
    finally:
        gc.unfreeze()
