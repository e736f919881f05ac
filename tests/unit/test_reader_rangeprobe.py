"""The gate that sends one ranged request ahead of the others until the server's answer to Range
is known (``reader/rangeprobe.py``), with threads and no network."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from xnatfs.errors import ServerTimeout
from xnatfs.reader.rangeprobe import RangeProbe


def far() -> float:
    return time.monotonic() + 10


def test_the_first_caller_goes_at_once_and_the_others_wait_for_its_answer() -> None:
    probe = RangeProbe()
    order: list[str] = []

    def waiter() -> None:
        with probe.turn(far()):
            order.append("waiter")

    with probe.turn(far()):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.1)  # the waiter reaches the gate meanwhile (or later: the same order)
        order.append("probe")
        probe.answered()
        thread.join(5)
    assert order == ["probe", "waiter"]
    assert probe.known


def test_once_known_nobody_waits_even_inside_another_turn() -> None:
    probe = RangeProbe()
    with probe.turn(far()):
        probe.answered()
        with probe.turn(time.monotonic() - 1):  # past its deadline, yet not refused
            pass


def test_a_probe_that_fails_hands_the_turn_to_the_next_caller() -> None:
    probe = RangeProbe()
    went = threading.Event()

    def next_caller() -> None:
        with probe.turn(far()):
            went.set()  # it is the probe now: nobody answered

    with pytest.raises(ConnectionError), probe.turn(far()):
        thread = threading.Thread(target=next_caller)
        thread.start()
        assert not went.wait(0.1)
        raise ConnectionError("refused")
    thread.join(5)
    assert went.is_set() and not probe.known


def test_a_waiter_gives_up_at_its_deadline_with_a_transient_error() -> None:
    probe = RangeProbe()
    with probe.turn(far()):
        errors: list[BaseException] = []

        def late() -> None:
            try:
                with probe.turn(time.monotonic() + 0.05):
                    pass
            except ServerTimeout as exc:
                errors.append(exc)

        thread = threading.Thread(target=late)
        thread.start()
        thread.join(5)
    assert len(errors) == 1 and errors[0].transient


def test_many_callers_go_one_at_a_time_until_the_answer_then_all_together() -> None:
    probe = RangeProbe()
    lock = threading.Lock()
    inside = most_before = most_after = 0
    failures = 2  # the first two probes get no answer; the third does

    def caller() -> None:
        nonlocal inside, most_before, most_after, failures
        with probe.turn(far()):
            with lock:
                inside += 1
                known = probe.known
            time.sleep(0.02)  # a request out: others arrive meanwhile
            with lock:
                if known:
                    most_after = max(most_after, inside)
                else:
                    most_before = max(most_before, inside)
                inside -= 1
                if not known:
                    if failures:
                        failures -= 1
                        raise ConnectionError("no answer")
                    probe.answered()

    def run() -> None:
        with contextlib.suppress(ConnectionError):
            caller()

    threads = [threading.Thread(target=run) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert probe.known and failures == 0
    assert most_before == 1  # one probe out at a time
    assert most_after > 1  # then no gate
