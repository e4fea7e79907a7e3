"""The deadline of one graded pair, in any thread: a watchdog thread raises an exception in the
grading thread through CPython's ``PyThreadState_SetAsyncExc`` (no signals). What it bounds and
what it cannot is in the package docstring ("What bounds time"); without ``ctypes.pythonapi``
there is no deadline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_local = threading.local()  # per-thread: the current pair's watchdog


class _Deadline(BaseException):
    """Raised in the grading thread when its pair runs out of time; a BaseException so that
    the except-Exception blocks of math-verify and sympy do not swallow it."""


def _find_set_async_exc():
    try:
        import ctypes  # CPython only; without it there is no deadline

        return ctypes.pythonapi.PyThreadState_SetAsyncExc, ctypes.c_ulong, ctypes.py_object
    except (ImportError, AttributeError):
        return None


_SET_ASYNC_EXC = _find_set_async_exc()


class _Watchdog:
    """Raises _Deadline in the thread that made it once `deadline` (time.monotonic()) has
    passed, and again every 50 ms while that thread is still grading, in case something
    swallows it. It works in any thread (CPython's PyThreadState_SetAsyncExc; no signals),
    and like a signal handler it can only interrupt between bytecodes, which is why expensive
    C-level arithmetic is screened out before sympy sees it. Armed lazily: only pairs that
    reach sympy pay for the helper thread.

    The grading thread leaves through grade_within, which marks the watchdog done under its
    lock without making a call first (calls are where an async exception lands) and, if it
    had fired, makes one call inside its try so that a pending exception lands there and not
    in the caller. It never clears a pending exception with a NULL PyThreadState_SetAsyncExc:
    on CPython 3.11 that leaves the interpreter's async-exception flag set, which makes every
    later call take the slow path and loops forever under a profiler."""

    RUNNING, FIRED, DONE = range(3)

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.target = threading.get_ident()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.state = self.RUNNING
        self.thread = None

    def arm(self) -> None:
        if self.thread is None and _SET_ASYNC_EXC is not None:
            self.thread = threading.Thread(target=self._run, name="grading-watchdog", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        set_async_exc, c_ulong, py_object = _SET_ASYNC_EXC
        if self.stop.wait(max(self.deadline - time.monotonic(), 0.0)):
            return
        while True:
            with self.lock:
                if self.state == self.DONE:
                    return
                set_async_exc(c_ulong(self.target), py_object(_Deadline))
                self.state = self.FIRED
            if self.stop.wait(0.05):
                return


def arm_deadline() -> None:
    """Start the current pair's watchdog, if this thread is grading one under grade_within;
    called by the stage that may run long (sympy)."""
    watchdog = getattr(_local, "watchdog", None)
    if watchdog is not None:
        watchdog.arm()


def _land_pending_deadline() -> None:
    """Calling this is enough: a pending async exception is raised on entry."""


def grade_within(grade: Callable[[str, str], bool], a: str, b: str, seconds: float) -> bool:
    """grade(a, b) under a deadline of `seconds`; False on timeout or on any error."""
    watchdog = _Watchdog(time.monotonic() + seconds)
    try:
        try:
            _local.watchdog = watchdog
            return grade(a, b)
        finally:
            _local.watchdog = None
            with watchdog.lock:  # no call before this: nothing can land in between
                fired = watchdog.state == watchdog.FIRED
                watchdog.state = watchdog.DONE
            watchdog.stop.set()
            if fired:
                _land_pending_deadline()
    except _Deadline:
        return False
    except Exception:  # noqa: BLE001 - garbage in, False out
        return False
