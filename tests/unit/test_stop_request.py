"""SIGINT and SIGTERM stop the foreground commands whatever the main thread is doing: the handler
may run at any line of ``wait`` (``chargewatch run`` once hung there, its handler waiting for a lock
the interrupted ``threading.Event.wait`` held)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

from chargewatch.locks import StopRequest

# In a process of its own (it installs signal handlers): a SIGTERM raised at every line the main
# thread runs inside ``wait``, one line per round, each round with a fresh stop request.
CHILD = textwrap.dedent("""
    import signal, sys
    from chargewatch.locks import run_once_in_foreground

    for target in range(1, 40):
        _, stopping = run_once_in_foreground(lambda: -1)
        seen = 0

        def trace(frame, event, arg):
            global seen
            if frame.f_code.co_name == "wait" and event == "line":
                seen += 1
                if seen == target:
                    signal.raise_signal(signal.SIGTERM)
            return trace

        sys.settrace(trace)
        result = stopping.wait(0.01) or stopping.wait(0.01)
        sys.settrace(None)
        if seen < target:  # every line of wait has had its signal
            break
        assert result, f"the signal at line {target} of wait did not stop it"
    print("all stopped", target)
""")


def test_a_signal_at_any_line_of_wait_stops_it() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("all stopped"), done.stdout


def test_a_set_wakes_every_waiting_thread() -> None:
    stopping = StopRequest()
    woken: list[bool] = []
    waiters = [threading.Thread(target=lambda: woken.append(stopping.wait(30))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.05)
    assert not stopping.is_set() and woken == []
    stopping.set()
    stopping.set()  # twice: the pipe already holds its byte
    for waiter in waiters:
        waiter.join(5)
    assert woken == [True, True, True]
    assert stopping.wait(0) is True


def test_wait_times_out_false_until_set() -> None:
    stopping = StopRequest()
    assert stopping.wait(0.01) is False
    assert stopping.is_set() is False
