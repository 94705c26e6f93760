"""SIGINT / SIGTERM as a request every process agrees on: the loop helpers of deeplab/engine/stops.py (one process
here; tests/test_predict_files.py stops two under torchrun)."""

import signal
import threading

import pytest

from deeplab.engine.stops import Stop, in_lockstep, read_stop, stop_on_signals


def test_a_signal_stops_the_loop_after_the_item_it_came_during_and_the_handlers_come_back():
    done = []

    def work(item):
        done.append(item)
        if item == 2:
            signal.raise_signal(signal.SIGTERM)  # would end the process without the handler

    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as requested:
        stop = in_lockstep(range(5), work, rounds=5, requested=requested)
    assert done == [0, 1, 2] and stop == Stop("SIGTERM", 1, 1) and stop.exit_status == 143
    assert stop.describe() == "SIGTERM received by 1 of 1 process(es)"
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_failing_item_raises_its_own_error_and_a_short_share_keeps_step():
    def work(item):
        if item == 1:
            raise OSError("No space left on device")

    with stop_on_signals() as requested, pytest.raises(OSError, match="No space left"):
        in_lockstep(range(3), work, rounds=3, requested=requested)
    with stop_on_signals() as requested:  # fewer items than rounds: the rounds still run, nothing is stopped
        assert in_lockstep([0], lambda item: None, rounds=3, requested=requested) is None


def test_sigterm_wins_over_sigint_when_processes_got_different_ones():
    assert read_stop(1.0, 1.0, 2) == Stop("SIGTERM", 1, 2) and read_stop(2.0, 0.0, 2) == Stop("SIGINT", 2, 2)
    assert read_stop(0.0, 0.0, 2) is None


def test_outside_the_main_thread_the_handlers_are_left_alone():
    seen = []

    def loop():
        with stop_on_signals() as requested:
            seen.append((requested, signal.getsignal(signal.SIGINT)))

    before = signal.getsignal(signal.SIGINT)
    worker = threading.Thread(target=loop)
    worker.start()
    worker.join()
    assert seen == [({"signal": None}, before)]
